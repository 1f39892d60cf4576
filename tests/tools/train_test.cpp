// The trainer end to end on a tiny model and a dataset written by the test: exact resume,
// checkpoint contents, configuration errors and non-finite handling.
#include <catch2/catch.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "core/safetensors.h"
#include "models/train/trainer.h"
#include "tests/test_util.h"

using namespace diffuse;
namespace fs = std::filesystem;

namespace {

struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() / ("diffuse-train-test-" + std::to_string(test::next_seed()));
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string operator/(const std::string& s) const { return (path / s).string(); }
};

void put_be32(std::ofstream& f, uint32_t v) {
  unsigned char b[4] = {static_cast<unsigned char>(v >> 24), static_cast<unsigned char>(v >> 16),
                        static_cast<unsigned char>(v >> 8), static_cast<unsigned char>(v)};
  f.write(reinterpret_cast<const char*>(b), 4);
}

// n random 8x8 grey images and labels 0..9 as raw IDX files.
std::string make_idx(const TempDir& dir, int n) {
  std::ofstream im(dir / "img.idx", std::ios::binary), lb(dir / "lbl.idx", std::ios::binary);
  put_be32(im, 0x803);
  put_be32(im, n);
  put_be32(im, 8);
  put_be32(im, 8);
  put_be32(lb, 0x801);
  put_be32(lb, n);
  uint64_t s = test::next_seed();
  for (int i = 0; i < n * 64; ++i) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    im.put(static_cast<char>(s >> 56));
  }
  for (int i = 0; i < n; ++i) lb.put(static_cast<char>(i % 10));
  return "idx:" + (dir / "img.idx") + "," + (dir / "lbl.idx");
}

train::TrainConfig tiny_config(const std::string& dataset, const std::string& out) {
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

std::map<std::string, Tensor> tensors_of(const std::string& path) { return read_safetensors(path).tensors; }

}  // namespace

TEST_CASE("a stopped and resumed run equals the uninterrupted run bit for bit", "[cpu][tools]") {
  TempDir dir;
  std::string data = make_idx(dir, 24);  // 6 batches of 4: the resume crosses an epoch boundary
  train::TrainConfig a = tiny_config(data, dir / "a");
  a.steps = 9;
  std::string ca = train::train(a, false);

  train::TrainConfig b = tiny_config(data, dir / "b");
  b.steps = 4;  // stops between checkpoints: the final checkpoint at step 4 is the resume point
  train::train(b, false);
  b.steps = 9;
  std::string cb = train::train(b, true);

  auto ta = tensors_of(ca), tb = tensors_of(cb);
  REQUIRE(ta.size() == tb.size());
  size_t compared = 0;
  for (auto& [name, t] : ta) {
    INFO(name);
    REQUIRE(tb.count(name));
    REQUIRE(t.nbytes() == tb[name].nbytes());
    CHECK(std::memcmp(t.raw(), tb[name].raw(), t.nbytes()) == 0);
    ++compared;
  }
  CHECK(compared > 20);
  CHECK(ta.count("model.conv_in.weight"));
  CHECK(ta.count("ema.conv_in.weight"));
  CHECK(ta["trainer.state"].to_vector_i64()[0] == 9);
  // The log tells the whole run, appended across the resume.
  std::ifstream log(dir / "b/log.csv");
  std::string line, last;
  int rows = 0;
  while (std::getline(log, line)) { ++rows; last = line; }
  CHECK(rows >= 5);
  CHECK(last.rfind("9,", 0) == 0);
  CHECK(fs::exists(dir / "a/samples_final.png"));
}

TEST_CASE("a checkpoint holds the documented names, shapes and config", "[cpu][tools]") {
  TempDir dir;
  train::TrainConfig c = tiny_config(make_idx(dir, 10), dir / "run");  // labels 0..9
  c.steps = 2;
  std::string path = train::train(c, false);
  SafeTensors st = read_safetensors(path);
  CHECK(st.metadata.at("format") == "diffuse-checkpoint-1");
  CHECK(st.metadata.at("step") == "2");
  auto cfg = nlohmann::json::parse(st.metadata.at("unet"));
  CHECK(cfg["base_channels"] == 8);
  CHECK(st.tensors.at("model.conv_in.weight").shape() == Shape{8, 3, 3, 1});
  train::LoadedModel m = train::load_checkpoint(path, Device::cpu());
  CHECK(m.step == 2);
  CHECK(m.unet->config().num_classes == 10);
  // A denoiser from the checkpoint runs on a batch.
  auto f = train::make_denoiser(m.unet, m.config.timesteps, Device::cpu());
  Tensor out = f(test::random_normal({2, 8, 8, 1}), Tensor::from_vector({0.5f, 1.f}, {2}),
                 Tensor::from_vector_i64({3, 10}, {2}));
  CHECK(out.shape() == Shape{2, 8, 8, 1});
}

TEST_CASE("bad training settings and files give one clear error", "[cpu][tools]") {
  TempDir dir;
  std::string data = make_idx(dir, 8);
  CHECK_THROWS_WITH(train::TrainConfig::from_json({{"objective", "eps"}, {"stepz", 3}}),
                    Catch::Contains("unknown key 'stepz'"));
  CHECK_THROWS_WITH(train::TrainConfig::from_json({{"objective", "score"}}), Catch::Contains("objective 'score'"));
  CHECK_THROWS_WITH(train::TrainConfig::from_json({{"batch", "many"}}), Catch::Contains("'batch' has the wrong type"));
  train::TrainConfig c = tiny_config(data, dir / "run");
  c.batch = 100;
  CHECK_THROWS_WITH(train::train(c, false), Catch::Contains("fewer than --batch"));
  c = tiny_config("idx:" + (dir / "missing") + "," + (dir / "lbl.idx"), dir / "run");
  CHECK_THROWS_WITH(train::train(c, false), Catch::Contains("missing"));
  c = tiny_config(data, (dir / "img.idx") + "/sub");  // the output folder would be under a file
  CHECK_THROWS_WITH(train::train(c, false), Catch::Contains("cannot create the output folder"));
  CHECK_THROWS_WITH(train::load_checkpoint(dir / "img.idx", Device::cpu()), Catch::Contains("img.idx"));
}

TEST_CASE("non-finite steps are skipped, counted, and stop the run; no non-finite checkpoint", "[cpu][tools]") {
  TempDir dir;
  train::TrainConfig c = tiny_config(make_idx(dir, 10), dir / "run");  // labels 0..9
  const std::string path = dir / "run/checkpoint.safetensors";
  // A learning rate this large sends the weights to inf within a few steps.
  c.lr = 1e30;
  c.grad_clip = 0;
  c.warmup = 0;
  c.steps = 40;
  c.max_nonfinite = 3;
  c.checkpoint_every = 1;
  CHECK_THROWS_WITH(train::train(c, false), Catch::Contains("not finite"));
  // Whatever checkpoint is on disk loads and holds finite weights.
  if (fs::exists(path)) {
    for (auto& [name, t] : tensors_of(path)) {
      if (t.dtype() != DType::f32) continue;
      INFO(name);
      for (float v : t.to_vector()) REQUIRE(std::isfinite(v));
    }
  }
}

TEST_CASE("--epochs trains whole passes over the dataset", "[cpu][tools]") {
  TempDir dir;
  train::TrainConfig c = tiny_config(make_idx(dir, 10), dir / "run");
  c.epochs = 1.5;  // 15 images at batch 4: 4 steps
  c.steps = 1000;  // ignored while epochs is set
  std::string path = train::train(c, false);
  CHECK(read_safetensors(path).tensors.at("trainer.state").to_vector_i64()[0] == 4);
  c.epochs = -1;
  CHECK_THROWS_WITH(train::TrainConfig::from_json(c.to_json()), Catch::Contains("epochs"));
}
