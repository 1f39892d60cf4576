// tests/tools/train_util.h: what the trainer's tests share: a temporary folder, a tiny IDX
// dataset of random 8x8 images written on the spot, and a tiny training configuration.
#pragma once

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "core/safetensors.h"
#include "models/train/trainer.h"
#include "tests/test_util.h"

namespace diffuse::test::train_util {

namespace fs = std::filesystem;

using diffuse::test::TempDir;

inline void put_be32(std::ofstream& f, uint32_t v) {
  unsigned char b[4] = {static_cast<unsigned char>(v >> 24), static_cast<unsigned char>(v >> 16),
                        static_cast<unsigned char>(v >> 8), static_cast<unsigned char>(v)};
  f.write(reinterpret_cast<const char*>(b), 4);
}

// n random 8x8 grey images and labels 0..9 as raw IDX files.
inline std::string make_idx(const TempDir& dir, int n) {
  std::ofstream im(dir / "img.idx", std::ios::binary), lb(dir / "lbl.idx", std::ios::binary);
  put_be32(im, 0x803);
  put_be32(im, n);
  put_be32(im, 8);
  put_be32(im, 8);
  put_be32(lb, 0x801);
  put_be32(lb, n);
  uint64_t s = diffuse::test::next_seed();
  for (int i = 0; i < n * 64; ++i) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    im.put(static_cast<char>(s >> 56));
  }
  for (int i = 0; i < n; ++i) lb.put(static_cast<char>(i % 10));
  return "idx:" + (dir / "img.idx") + "," + (dir / "lbl.idx");
}

inline train::TrainConfig tiny_config(const std::string& dataset, const std::string& out) {
  train::TrainConfig c;
  c.dataset = dataset;
  c.out_dir = out;
  c.model = {{"base_channels", 8}, {"channel_mult", {1, 2}}, {"num_res_blocks", 1},
             {"attention_resolutions", {4}}, {"groups", 4}};
  c.batch = 4;
  c.steps = 6;
  c.warmup = 2;
  c.log_every = 2;
  c.checkpoint_every = 3;
  c.sample_every = 0;
  c.sample_count = 4;
  c.sample_steps = 2;
  c.seed = 11;
  c.device = "cpu";
  c.class_cond = true;
  return c;
}

inline std::map<std::string, Tensor> tensors_of(const std::string& path) { return read_safetensors(path).tensors; }

// Checks that two checkpoints hold the same tensors, byte for byte (a resumed run against an
// uninterrupted one); returns the first one's tensors for further checks.
inline std::map<std::string, Tensor> require_identical_checkpoints(const std::string& a, const std::string& b) {
  auto ta = tensors_of(a), tb = tensors_of(b);
  REQUIRE(ta.size() == tb.size());
  for (auto& [name, t] : ta) {
    INFO(name);
    REQUIRE(tb.count(name));
    REQUIRE(t.nbytes() == tb[name].nbytes());
    CHECK(std::memcmp(t.raw(), tb[name].raw(), t.nbytes()) == 0);
  }
  return ta;
}

// The loss column of a run's log.csv (step,loss,grad_norm,...), one value a row after the header.
inline std::vector<double> logged_losses(const std::string& log_csv) {
  std::ifstream log(log_csv);
  std::vector<double> losses;
  std::string line;
  std::getline(log, line);
  while (std::getline(log, line)) losses.push_back(std::stod(line.substr(line.find(',') + 1)));
  return losses;
}


}  // namespace diffuse::test::train_util
