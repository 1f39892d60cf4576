// Cascades (models/train/super_res.h): a super-resolution model trained a few steps and resumed
// bit for bit, `diffuse sample --cascade BASE SR` from the CLI as docs/training.md runs it (a
// 14x14 base from `--dataset ...@14`, a 28x28 super-resolution model), and every bad pairing or
// misplaced super-resolution model refused with a message that says what to do.
#include <catch2/catch.hpp>

#include <filesystem>

#include "core/image_io.h"
#include "core/safetensors.h"
#include "models/train/config.h"
#include "models/train/super_res.h"
#include "models/train/trainer.h"
#include "tests/test_util.h"
#include "tests/tools/cli_util.h"
#include "tests/tools/train_util.h"

using namespace diffuse;
using namespace diffuse::test::train_util;
using Catch::Matchers::Contains;
namespace fs = std::filesystem;

namespace {

train::TrainConfig sr_config(const std::string& data, const std::string& out) {
  train::TrainConfig c = tiny_config(data, out);  // 8x8 images
  c.class_cond = false;
  c.super_res = 4;
  c.super_res_aug = 0.3;
  return c;
}

}  // namespace

TEST_CASE("super-resolution training: the conditioning in the checkpoint, and a resumed run equals the "
          "uninterrupted one bit for bit",
          "[cpu][tools]") {
  TempDir dir;
  const std::string data = make_idx(dir, 24);
  train::TrainConfig a = sr_config(data, dir / "a");
  a.steps = 7;
  a.sample_every = 5;  // a grid mid-run, conditioned on training images
  const std::string ca = train::train(a, false);
  train::TrainConfig b = sr_config(data, dir / "b");
  b.steps = 4;
  train::train(b, false);
  b.steps = 7;
  const std::string cb = train::train(b, true);
  auto t = require_identical_checkpoints(ca, cb);
  CHECK(t.at("model.conv_in.weight").shape() == Shape{8, 3, 3, 2});  // x and the upsampled 4x4 image
  CHECK(t.count("model.aug.fc1.weight") == 1);
  CHECK(t.count("ema.aug.fc2.weight") == 1);
  CHECK(fs::exists(dir / "a/samples_5.png"));
  CHECK(fs::exists(dir / "a/samples_final.png"));
  const SafeTensors st = read_safetensors(ca);
  const auto unet = nlohmann::json::parse(st.metadata.at("unet"));
  CHECK(unet.at("low_res_channels") == 1);
  CHECK(unet.at("low_res_size") == 4);
  const auto cfg = nlohmann::json::parse(st.metadata.at("config"));
  CHECK(cfg.at("super_res") == 4);
  CHECK(cfg.at("super_res_aug") == 0.3);
  for (double loss : logged_losses(dir / "a/log.csv")) CHECK(std::isfinite(loss));

  // The augmentation draws of a step are its own: another augmentation range, other weights.
  train::TrainConfig other = sr_config(data, dir / "c");
  other.steps = 2;
  other.super_res_aug = 0.0;
  train::TrainConfig same = sr_config(data, dir / "d");
  same.steps = 2;
  const auto to = tensors_of(train::train(other, false)), ts = tensors_of(train::train(same, false));
  CHECK(to.at("model.conv_in.weight").to_vector() != ts.at("model.conv_in.weight").to_vector());

  // A checkpoint whose UNet and training config disagree about the low resolution is refused.
  SafeTensors bad = read_safetensors(ca);
  auto j = nlohmann::json::parse(bad.metadata.at("config"));
  j["super_res"] = 2;
  bad.metadata["config"] = j.dump();
  std::vector<std::pair<std::string, Tensor>> tensors(bad.tensors.begin(), bad.tensors.end());
  write_safetensors_atomic(dir / "bad.safetensors", tensors, bad.metadata);
  CHECK_THROWS_WITH(train::load_checkpoint(dir / "bad.safetensors", Device::cpu()), Contains("super_res"));
}

TEST_CASE("super-resolution: config checks, and the GPU step takes it", "[cpu][tools]") {
  train::TrainConfig c;
  c.super_res = 14;
  const nn::UNetConfig u = c.unet_config(28, 1, 0);
  CHECK(u.low_res_channels == 1);
  CHECK(u.low_res_size == 14);
  CHECK(u.in_channels == 1);
  CHECK_THROWS_WITH(c.unet_config(30, 1, 0), Contains("--super-res 15"));  // 30 / 14
  c.super_res = 7;
  CHECK(c.unet_config(28, 1, 0).low_res_factor() == 4);
  c.model = {{"low_res_size", 7}};
  CHECK_THROWS_WITH(c.unet_config(28, 1, 0), Contains("set by super_res"));
  // --device cuda is accepted when the step supports the config (choosing it also asks CUDA for a
  // device, which a cpu-tier test cannot count on); --device auto picks the GPU where one answers.
  CHECK(train::device_step_unsupported(sr_config("x", "y")).empty());
  train::TrainConfig automatic = sr_config("x", "y");
  automatic.device = "auto";
  CHECK(train::choose_training_device(automatic, true).device == Device::cuda(0));
  CHECK(train::choose_training_device(automatic, true).note.empty());
  CHECK_THROWS_WITH(train::TrainConfig::from_json({{"super_res", 14}, {"objective", "vdm"}}), Contains("super_res"));
  CHECK_THROWS_WITH(train::TrainConfig::from_json({{"super_res_aug", 0.5}}), Contains("goes with super_res"));
  CHECK_THROWS_WITH(train::TrainConfig::from_json({{"super_res", 14}, {"super_res_aug", 1.5}}),
                    Contains("super_res_aug"));
  CHECK_THROWS_WITH(train::TrainConfig::from_json({{"super_res", -1}}), Contains("super_res"));
  // Written only when set: an ordinary config's JSON is as before.
  CHECK_FALSE(train::TrainConfig{}.to_json().contains("super_res"));
  CHECK_FALSE(train::TrainConfig{}.to_json().contains("super_res_aug"));
  const nlohmann::json j = {{"super_res", 14}, {"super_res_aug", 0.5}};
  const nlohmann::json back = train::TrainConfig::from_json(j).to_json();
  CHECK(back.at("super_res") == 14);
  CHECK(back.at("super_res_aug") == 0.5);
}

TEST_CASE("datasets at a smaller size: @size area-averages fixed-size sources by powers of two", "[cpu][tools]") {
  TempDir dir;
  const std::string data = make_idx(dir, 6);  // 8x8
  const data::Dataset full = train::load_dataset(data, "train");
  const data::Dataset half = train::load_dataset(data + "@4", "train");
  CHECK(half.images.shape() == Shape{6, 4, 4, 1});
  CHECK(half.images.to_vector() == nn::area_downsample(full.images, 2).to_vector());
  CHECK(half.labels.to_vector_i64() == full.labels.to_vector_i64());
  CHECK(train::load_dataset(data + "@8", "train").images.to_vector() == full.images.to_vector());
  CHECK(train::load_dataset(data + "@2", "train").images.shape() == Shape{6, 2, 2, 1});
  CHECK_THROWS_WITH(train::load_dataset(data + "@3", "train"), Contains("power of two"));
  CHECK_THROWS_WITH(train::load_dataset(data + "@16", "train"), Contains("power of two"));
  CHECK_THROWS_WITH(train::load_dataset(data + "@x", "train"), Contains("whole number"));
  CHECK_THROWS_WITH(train::load_dataset("fashion-mnist@0", "train"), Contains("whole number"));
}

TEST_CASE("diffuse sample --cascade: a 14x14 base, then a 28x28 super-resolution model, from the CLI",
          "[cpu][tools]") {
  TempDir dir;
  const std::string data = test::write_idx_dataset(dir.path, 16, 5);  // 28x28
  const std::string log = dir / "cli.log";
  std::string text;
  auto train_run = [&](const std::string& dataset, const std::string& out, std::vector<std::string> extra) {
    std::vector<std::string> args = test::train_args(dataset, out, 3, 0);
    args.insert(args.end(), extra.begin(), extra.end());
    const int code = test::run(args, log, &text);
    INFO(text);
    REQUIRE(code == 0);
    return out + "/checkpoint.safetensors";
  };
  const std::string base = train_run(data + "@14", dir / "base", {});
  const std::string sr = train_run(data, dir / "sr", {"--super-res", "14", "--super-res-aug", "0.25"});
  const std::string base28 = train_run(data, dir / "base28", {});

  // The cascade: 5 images in batches of 2 (a partial last batch), both grids and one PNG each.
  int code = test::run({test::cli_path(), "sample", "--cascade", base, sr, "--steps", "3", "--count", "5", "--batch",
                        "2", "--upscale", "1", "--grid", dir / "cascade.png", "--low-res-grid", dir / "low.png",
                        "--image-dir", dir / "imgs", "--device", "cpu"},
                       log, &text);
  INFO(text);
  REQUIRE(code == 0);
  CHECK_THAT(text, Contains("28x28 from 14x14, cascade"));
  const Image8 grid = read_image_u8(dir / "cascade.png"), low = read_image_u8(dir / "low.png");
  CHECK(grid.width == low.width);  // the low-resolution grid at the final grid's pixel size
  CHECK(grid.height == low.height);
  const Image8 one = read_image_u8(dir / "imgs/00004.png");
  CHECK(one.width == 28);
  CHECK(one.height == 28);
  // Same seed, same images; another --aug-level, other images.
  code = test::run({test::cli_path(), "sample", "--cascade", base, sr, "--steps", "3", "--count", "5", "--batch", "2",
                    "--upscale", "1", "--grid", dir / "again.png", "--device", "cpu"},
                   log, &text);
  REQUIRE(code == 0);
  CHECK(test::slurp_text(dir / "again.png") == test::slurp_text(dir / "cascade.png"));
  code = test::run({test::cli_path(), "sample", "--cascade", base, sr, "--steps", "3", "--count", "5", "--upscale",
                    "1", "--grid", dir / "aug.png", "--aug-level", "0.5", "--sampler", "ddpm", "--device", "cpu"},
                   log, &text);
  INFO(text);
  REQUIRE(code == 0);
  CHECK(test::slurp_text(dir / "aug.png") != test::slurp_text(dir / "cascade.png"));

  // Refused, each with what to do, writing nothing.
  struct Bad {
    std::vector<std::string> args;
    std::string says;
  };
  const std::vector<Bad> bad = {
      {{"sample", sr}, "super-resolution model"},
      {{"sample", sr}, "--cascade BASE.safetensors"},
      {{"sample", "--cascade", sr, base}, "must be an ordinary"},
      {{"sample", "--cascade", base, base}, "is not a super-resolution model"},
      {{"sample", "--cascade", base28, sr}, "draws 28x28x1 images but"},
      {{"sample", "--cascade", base28, sr}, "fashion-mnist@14"},
      {{"sample", "--cascade", base}, "two checkpoints"},
      {{"sample", base, sr}, "needs --cascade"},
      {{"sample", base, "--aug-level", "0.1"}, "go with --cascade"},
      {{"sample", "--cascade", base, sr, "--aug-level", "2"}, "--aug-level 2"},
      {{"eval", sr}, "diffuse eval (but for --fd JUDGE --samples DIR"},
      {{"export-diffusers", sr, dir / "exported"}, "super-resolution model"},
  };
  for (const Bad& b : bad) {
    std::vector<std::string> args = {test::cli_path()};
    args.insert(args.end(), b.args.begin(), b.args.end());
    args.insert(args.end(), {"--grid", dir / "refused.png"});
    if (b.args[0] != "sample") args.resize(args.size() - 2);
    code = test::run(args, log, &text);
    INFO(text);
    CHECK(code != 0);
    CHECK_THAT(text, Contains(b.says));
    CHECK_FALSE(fs::exists(dir / "refused.png"));
  }
  // Training refuses a low resolution that is not the image size over a power of two.
  std::vector<std::string> args = test::train_args(data, dir / "bad-sr2", 1, 0);
  args.insert(args.end(), {"--super-res", "10"});
  code = test::run(args, log, &text);
  INFO(text);
  CHECK(code != 0);
  CHECK_THAT(text, Contains("super_res 10 with 28x28 images"));
  CHECK_FALSE(fs::exists(dir / "bad-sr2"));
}
