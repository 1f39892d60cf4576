// The trainer end to end on a tiny model and a dataset written by the test: exact resume,
// checkpoint contents, configuration errors and non-finite handling.
#include <catch2/catch.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "core/safetensors.h"
#include "models/train/trainer.h"
#include "tests/test_util.h"
#include "tests/tools/cli_util.h"
#include "tests/tools/train_util.h"

using namespace diffuse;
using namespace diffuse::test::train_util;
namespace fs = std::filesystem;

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

  auto ta = require_identical_checkpoints(ca, cb);
  CHECK(ta.size() > 20);
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

TEST_CASE("--objective hybrid trains a learned variance (2C output channels); sample and eval use it", "[cpu][tools]") {
  TempDir dir;
  const std::string data = make_idx(dir, 12);
  train::TrainConfig c = tiny_config(data, dir / "run");
  c.objective = train::Objective::hybrid;
  std::string path = train::train(c, false);
  SafeTensors st = read_safetensors(path);
  // The output conv has 2C = 2 channels: eps, then the raw variance (NHWC weights: Cout first).
  CHECK(st.tensors.at("model.out_conv.weight").shape() == Shape{2, 3, 3, 8});
  CHECK(st.tensors.at("ema.out_conv.bias").shape() == Shape{2});
  CHECK(nlohmann::json::parse(st.metadata.at("unet"))["learn_sigma"] == true);
  // Every logged loss is finite: L_simple plus the VLB term, both of a sane size at init.
  const std::vector<double> losses = logged_losses(dir / "run/log.csv");
  CHECK(losses.size() == 3);
  for (double loss : losses) {
    CHECK(std::isfinite(loss));
    CHECK(loss > 0);
    CHECK(loss < 100);
  }

  // The samplers get the eps channels; with_variance keeps all 2C.
  train::LoadedModel m = train::load_checkpoint(path, Device::cpu());
  CHECK(train::learned_variance(m.config));
  CHECK(train::prediction_of(m.config) == diffusion::Prediction::eps);
  const Tensor z = test::random_normal({2, 8, 8, 1}), t = Tensor::from_vector({0.5f, 1.f}, {2});
  const Tensor y = Tensor::from_vector_i64({3, 10}, {2});
  CHECK(train::make_denoiser(m.unet, m.config.timesteps, Device::cpu())(z, t, y).shape() == Shape{2, 8, 8, 1});
  CHECK(train::make_denoiser(m.unet, m.config.timesteps, Device::cpu(), true)(z, t, y).shape() == Shape{2, 8, 8, 2});

  // The CLI end to end: DDPM with the learned variance, DDIM with eps, eval's VLB with the
  // learned variance.
  const std::string out = dir / "cli.log";
  std::string text;
  for (const char* sampler : {"ddpm", "ddim"}) {
    INFO(sampler);
    const int code = test::run({test::cli_path(), "sample", path, "--sampler", sampler, "--steps", "4", "--count", "3",
                                "--grid", dir / (std::string(sampler) + ".png"), "--device", "cpu"},
                               out, &text);
    INFO(text);
    CHECK(code == 0);
    CHECK(fs::exists(dir / (std::string(sampler) + ".png")));
  }
  const int code = test::run({test::cli_path(), "eval", path, "--count", "4", "--strata", "3", "--inversion-count", "2",
                              "--inversion-steps", "3", "--device", "cpu", "--json", dir / "eval.json"},
                             out, &text);
  INFO(text);
  REQUIRE(code == 0);
  const nlohmann::json e = nlohmann::json::parse(test::slurp_text(dir / "eval.json"));
  CHECK(e["variance"] == "learned");
  CHECK(std::isfinite(e["bits_per_dim"].get<double>()));
  CHECK(e["bits_per_dim"].get<double>() > 0);
}

TEST_CASE("hybrid: config checks and the --help text", "[cpu][tools]") {
  train::TrainConfig c;
  c.objective = train::Objective::hybrid;
  CHECK(c.unet_config(8, 1, 0).learn_sigma);
  CHECK(c.unet_config(8, 1, 0).output_channels() == 2);
  c.objective = train::Objective::eps;
  c.preset = "imagenet64";  // a learned-sigma preset follows the objective
  CHECK_FALSE(c.unet_config(64, 3, 0).learn_sigma);
  c.preset = "tiny";
  c.model = {{"learn_sigma", true}};
  CHECK_THROWS_WITH(c.unet_config(8, 1, 0), Catch::Contains("objective hybrid"));
  CHECK_THROWS_WITH(train::TrainConfig::from_json({{"objective", "vlb"}}), Catch::Contains("eps, x0, v, hybrid or vdm"));
  TempDir dir;
  std::string text;
  CHECK(test::run({test::cli_path(), "train", "--help"}, dir / "help.log", &text) == 0);
  CHECK_THAT(text, Catch::Contains("hybrid"));
}
