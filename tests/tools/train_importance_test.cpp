// --t-sampling importance (improved DDPM's loss-aware sampling of t) end to end on a tiny model:
// the loss history in the checkpoint, warm-up then importance draws, exact resume across both
// phases, the configuration checks, the device choice and the CLI flag. The resampler's math is
// tested in tests/diffusion/objective_test.cpp.
#include <catch2/catch.hpp>

#include <cmath>
#include <filesystem>

#include "core/safetensors.h"
#include "models/train/trainer.h"
#include "tests/test_util.h"
#include "tests/tools/cli_util.h"
#include "tests/tools/train_util.h"

using namespace diffuse;
using namespace diffuse::test::train_util;
namespace fs = std::filesystem;

namespace {

// T = 5 steps, batch 4: every step has its 10 losses after 13 training steps at the earliest
// (about 25 on average), so a run of 60 spends most of its steps on importance draws.
train::TrainConfig importance_config(const std::string& data, const std::string& out) {
  train::TrainConfig c = tiny_config(data, out);
  c.objective = train::Objective::hybrid;
  c.schedule = train::ScheduleKind::cosine;
  c.timesteps = 5;
  c.t_sampling = train::TSampling::importance;
  c.checkpoint_every = 0;
  return c;
}

std::vector<int64_t> history_counts(const std::string& ckpt) {
  return read_safetensors(ckpt).tensors.at("trainer.t_sampler.counts").to_vector_i64();
}

}  // namespace

TEST_CASE("--t-sampling importance: the loss history is checkpointed and a resumed run equals the uninterrupted "
          "run bit for bit, across the warm-up and after it",
          "[cpu][tools]") {
  TempDir dir;
  const std::string data = make_idx(dir, 24);
  train::TrainConfig a = importance_config(data, dir / "a");
  a.steps = 60;
  const std::string ca = train::train(a, false);

  train::TrainConfig b = importance_config(data, dir / "b");
  b.steps = 4;  // in the warm-up: 16 losses over 5 steps
  const std::string cb = train::train(b, false);
  {
    const std::vector<int64_t> counts = history_counts(cb);
    REQUIRE(counts.size() == 5);
    int64_t total = 0;
    for (int64_t n : counts) total += n;
    CHECK(total == 16);  // each sample's loss, every step taken
  }
  b.steps = 40;
  train::train(b, true);
  b.steps = 60;
  train::train(b, true);

  auto ta = require_identical_checkpoints(ca, cb);
  const Tensor& losses = ta.at("trainer.t_sampler.losses");
  CHECK(losses.dtype() == DType::f64);
  CHECK(losses.shape() == Shape{5, 10});
  // Warmed up: every step holds its last 10 losses, all positive (L_simple + the VLB term).
  for (int64_t n : ta.at("trainer.t_sampler.counts").to_vector_i64()) CHECK(n == 10);
  for (int64_t i = 0; i < losses.numel(); ++i) {
    CHECK(std::isfinite(losses.data<double>()[i]));
    CHECK(losses.data<double>()[i] > 0);
  }
  const nlohmann::json cfg = nlohmann::json::parse(read_safetensors(ca).metadata.at("config"));
  CHECK(cfg["t_sampling"] == "importance");
  // The logged loss, L_simple + L_t reweighted by 1 / (T p_t), stays finite and of a sane size.
  for (double loss : logged_losses(dir / "a/log.csv")) {
    CHECK(std::isfinite(loss));
    CHECK(loss > 0);
    CHECK(loss < 100);
  }
  // A checkpoint without the history cannot resume an importance run.
  SafeTensors st = read_safetensors(ca);
  st.tensors.erase("trainer.t_sampler.counts");
  std::vector<std::pair<std::string, Tensor>> kept(st.tensors.begin(), st.tensors.end());
  write_safetensors_atomic(ca, kept, st.metadata);
  a.steps = 61;
  CHECK_THROWS_WITH(train::train(a, true), Catch::Contains("trainer.t_sampler.counts") &&
                                               Catch::Contains("cannot resume"));
}

TEST_CASE("--t-sampling: uniform by default and not written; importance only with objective hybrid", "[cpu][tools]") {
  train::TrainConfig c;
  CHECK(c.t_sampling == train::TSampling::uniform);
  CHECK_FALSE(c.to_json().contains("t_sampling"));
  c.objective = train::Objective::hybrid;
  c.t_sampling = train::TSampling::importance;
  CHECK(train::TrainConfig::from_json(c.to_json()).t_sampling == train::TSampling::importance);
  CHECK_THROWS_WITH(train::TrainConfig::from_json({{"objective", "hybrid"}, {"t_sampling", "loss-aware"}}),
                    Catch::Contains("unknown t_sampling 'loss-aware'") && Catch::Contains("uniform or importance"));
  CHECK_THROWS_WITH(train::TrainConfig::from_json({{"objective", "eps"}, {"t_sampling", "importance"}}),
                    Catch::Contains("no VLB term"));
  CHECK_THROWS_WITH(train::TrainConfig::from_json({{"objective", "vdm"}, {"t_sampling", "importance"}}),
                    Catch::Contains("continuous t"));
  // The GPU step draws its steps on the host from the same sampler: auto and cuda both take it.
  c.device = "auto";
  const train::TrainingDevice d = train::choose_training_device(c, true);
  CHECK(d.device == Device::cuda(0));
  CHECK(d.note.empty());
}

TEST_CASE("CLI: train --t-sampling importance runs; a bad value or objective is refused", "[cpu][tools]") {
  TempDir dir;
  const std::string data = test::write_idx_dataset(dir.path, 16, test::next_seed());
  const std::string log = dir / "cli.log";
  std::string text;
  std::vector<std::string> args = test::train_args(data, dir / "run", 3, 0);
  for (const char* extra : {"--objective", "hybrid", "--t-sampling", "importance", "--timesteps", "50"})
    args.push_back(extra);
  int code = test::run(args, log, &text);
  INFO(text);
  REQUIRE(code == 0);
  CHECK(history_counts(dir / "run/checkpoint.safetensors").size() == 50);

  code = test::run({test::cli_path(), "train", "--t-sampling", "importance", "--dataset", data, "--out", dir / "eps",
                    "--device", "cpu"},
                   log, &text);
  CHECK(code != 0);
  CHECK_THAT(text, Catch::Contains("no VLB term"));
  CHECK_FALSE(fs::exists(dir / "eps"));
  code = test::run({test::cli_path(), "train", "--t-sampling", "adaptive", "--out", dir / "bad"}, log, &text);
  CHECK(code != 0);
  CHECK_THAT(text, Catch::Contains("uniform or importance"));
  code = test::run({test::cli_path(), "train", "--help"}, log, &text);
  CHECK_THAT(text, Catch::Contains("--t-sampling"));
}
