// A cross-attention model end to end: the trainer on a Fashion-MNIST-named folder (so the class
// names come from the data set) with exact resume, the checkpoint's config and names, and the CLI:
// train, then `sample --prompt`, whose prompt equal to a class name draws that class's images.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include "core/safetensors.h"
#include "models/data/dataset.h"
#include "models/nn/unet.h"
#include "models/train/trainer.h"
#include "tests/test_util.h"
#include "tests/tools/cli_util.h"
#include "tests/tools/train_util.h"

using namespace diffuse;
using namespace diffuse::test::train_util;
namespace fs = std::filesystem;

namespace {

// n random 8x8 images, labels 0..9, as Fashion-MNIST's training files in `dir`: loaded as
// fashion-mnist:<dir>, the set has Fashion-MNIST's class names.
std::string write_fashion_folder(const fs::path& dir, int n, uint64_t seed) {
  fs::create_directories(dir);
  test::write_idx_files((dir / "train-images-idx3-ubyte").string(), (dir / "train-labels-idx1-ubyte").string(), n, 8,
                        seed, /*cycle_labels=*/true);
  return "fashion-mnist:" + dir.string();
}

// 8x8 images: levels at 8 and 4, a SpatialTransformer at 4 and in the middle, no self-attention
// blocks; a context of 2 tokens of 8 channels.
const char* kContextModel =
    R"({"base_channels":8,"channel_mult":[1,2],"groups":4,"attention_resolutions":[],)"
    R"("context_dim":8,"context_resolutions":[4],"context_tokens":2})";

}  // namespace

TEST_CASE("a cross-attention model trains; a stopped and resumed run equals the uninterrupted one",
          "[cpu][tools]") {
  TempDir dir;
  const std::string data = write_fashion_folder(dir / "data", 24, test::next_seed());
  auto config = [&](const std::string& out) {
    train::TrainConfig c = tiny_config(data, (dir / out));
    c.model = nlohmann::json::parse(kContextModel);
    return c;
  };
  train::TrainConfig a = config("a");
  a.steps = 7;
  const std::string ca = train::train(a, false);
  train::TrainConfig b = config("b");
  b.steps = 3;
  train::train(b, false);
  b.steps = 7;
  const std::string cb = train::train(b, true);
  auto t = require_identical_checkpoints(ca, cb);
  for (const char* n : {"model.context.tokens.weight", "model.context.positions", "model.mid.xattn.proj_out.weight",
                        "model.down.1.xattn.0.block.attn2.to_k.weight", "ema.up.1.xattn.1.block.ff.out.weight"}) {
    CAPTURE(n);
    CHECK(t.count(n) == 1);
  }
  CHECK_FALSE(t.count("model.label_emb.weight"));
  CHECK(t.at("model.context.tokens.weight").shape() == Shape{13, 8});  // the pad and 12 words
  // The loss moved the context: the word embeddings are not where they started.
  const train::LoadedModel m = train::load_checkpoint(ca, Device::cpu(), /*ema=*/false);
  const nn::UNetConfig& u = m.unet->config();
  CHECK(u.class_names == data::fashion_mnist_class_names());
  CHECK(u.vocabulary == nn::context_vocabulary(data::fashion_mnist_class_names()));
  CHECK(u.context_tokens == 2);
  nn::UNet fresh(u, a.seed);
  CHECK(fresh.state().at("context.tokens.weight").to_vector() != m.unet->state().at("context.tokens.weight").to_vector());
}

TEST_CASE("a cross-attention model needs class names and labels", "[cpu][tools]") {
  TempDir dir;
  train::TrainConfig c = tiny_config(make_idx(dir, 10), (dir / "run"));  // IDX: labels 0..9, no names
  c.model = nlohmann::json::parse(kContextModel);
  c.steps = 1;
  CHECK_THROWS_WITH(train::train(c, false), Catch::Contains("names no classes"));
  c.class_cond = false;
  CHECK_THROWS_WITH(train::train(c, false), Catch::Contains("--class-cond"));
  // The GPU training step takes class-conditional models, so cross-attention ones too: auto with
  // a GPU trains there.
  c.class_cond = true;
  c.device = "auto";
  CHECK(train::device_step_unsupported(c).empty());
  const train::TrainingDevice d = train::choose_training_device(c, /*cuda_available=*/true);
  CHECK(d.device == Device::cuda(0));
  CHECK(d.note.empty());
  c.device = "cpu";
  // Names given as model keys instead.
  c.out_dir = (dir / "named");
  c.model["class_names"] = {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"};
  CHECK_NOTHROW(train::train(c, false));
}

TEST_CASE("CLI: train a cross-attention model, sample --prompt", "[cpu][tools]") {
  TempDir dir;
  const std::string data = write_fashion_folder(dir / "data", 32, test::next_seed());
  const std::string run = (dir / "run"), log = (dir / "log.txt");
  std::string out;
  std::vector<std::string> args = test::train_args(data, run, 4, 0);
  for (size_t i = 0; i + 1 < args.size(); ++i)
    if (args[i] == "--model") args[i + 1] = kContextModel;
  args.push_back("--class-cond");
  REQUIRE(test::run(args, log, &out) == 0);
  const std::string ckpt = run + "/checkpoint.safetensors";
  auto sample = [&](const std::string& grid, std::vector<std::string> extra) {
    std::vector<std::string> a = {test::cli_path(), "sample", ckpt, "--steps", "2", "-n", "4", "--seed", "3",
                                  "--grid", (dir / grid)};
    a.insert(a.end(), extra.begin(), extra.end());
    return test::run(a, log, &out);
  };
  // A prompt that is a class name draws what that class label draws, with and without guidance.
  REQUIRE(sample("prompt.png", {"--prompt", "Ankle boot"}) == 0);
  INFO(out);
  REQUIRE(sample("class.png", {"--class", "9"}) == 0);
  CHECK(test::slurp_text((dir / "prompt.png")) == test::slurp_text((dir / "class.png")));
  REQUIRE(sample("prompt_cfg.png", {"--prompt", "ankle boot", "--guidance", "2"}) == 0);
  REQUIRE(sample("class_cfg.png", {"--class", "9", "--guidance", "2"}) == 0);
  CHECK(test::slurp_text((dir / "prompt_cfg.png")) == test::slurp_text((dir / "class_cfg.png")));
  // Words of other classes, in an order no class has; the empty prompt (the null context).
  CHECK(sample("mixed.png", {"--prompt", "boot/top"}) == 0);
  CHECK(sample("null.png", {"--prompt", ""}) == 0);
  CHECK(fs::exists(dir / "null.png"));
  // Refusals.
  CHECK(sample("x.png", {"--prompt", "red boot"}) != 0);
  CHECK_THAT(out, Catch::Contains("does not know the word 'red'") && Catch::Contains("ankle, boot"));
  CHECK(sample("x.png", {"--prompt", "ankle boot top"}) != 0);
  CHECK_THAT(out, Catch::Contains("at most 2"));
  CHECK(sample("x.png", {"--prompt", "boot", "--class", "1"}) != 0);
  CHECK_THAT(out, Catch::Contains("--prompt or --class, not both"));
  // A class-conditional model without cross-attention takes no prompt.
  const std::string plain = (dir / "plain");
  std::vector<std::string> pargs = test::train_args(data, plain, 1, 0);
  pargs.push_back("--class-cond");
  REQUIRE(test::run(pargs, log, &out) == 0);
  CHECK(test::run({test::cli_path(), "sample", plain + "/checkpoint.safetensors", "--steps", "1", "-n", "1", "--grid",
                   (dir / "p.png"), "--prompt", "boot"},
                  log, &out) != 0);
  CHECK_THAT(out, Catch::Contains("--prompt needs a cross-attention model"));
}
