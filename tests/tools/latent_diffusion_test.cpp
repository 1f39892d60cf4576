// Latent diffusion end to end at tiny sizes: `train-autoencoder` and `train --autoencoder` each
// resume bit for bit, the latent checkpoint holds the autoencoder and the measured scale, and the
// CLI goes from the autoencoder to decoded sample PNGs of the image size.
#include <catch2/catch.hpp>

#include <cmath>
#include <filesystem>

#include "core/image_io.h"
#include "core/safetensors.h"
#include "models/train/autoencoder_trainer.h"
#include "models/train/trainer.h"
#include "tests/test_util.h"
#include "tests/tools/cli_util.h"
#include "tests/tools/train_util.h"

using namespace diffuse;
using namespace diffuse::test::train_util;
namespace fs = std::filesystem;

namespace {

// 8x8x1 images -> 4x4x2 latents (one halving), 4 and 8 channels in 2 groups.
const nlohmann::json kTinyAutoencoder = {{"base_channels", 4}, {"channel_mult", {1, 2}}, {"latent_channels", 2},
                                         {"groups", 2}};

train::AutoencoderTrainConfig tiny_autoencoder(const std::string& data, const std::string& out) {
  train::AutoencoderTrainConfig c;
  c.dataset = data;
  c.out_dir = out;
  c.device = "cpu";
  c.model = kTinyAutoencoder;
  c.batch = 4;
  c.steps = 7;
  c.warmup = 2;
  c.log_every = 2;
  c.checkpoint_every = 3;
  c.eval_count = 8;
  c.seed = 3;
  c.kl_weight = 1e-2;  // large enough that the KL term moves the weights at this size
  return c;
}

}  // namespace

TEST_CASE("a stopped and resumed autoencoder run equals the uninterrupted run bit for bit", "[cpu][tools][autoencoder]") {
  TempDir dir;
  const std::string data = make_idx(dir, 20);  // 5 batches of 4: the resume crosses an epoch boundary
  const std::string ca = train::train_autoencoder(tiny_autoencoder(data, dir / "a"), false);
  train::AutoencoderTrainConfig b = tiny_autoencoder(data, dir / "b");
  b.steps = 4;
  train::train_autoencoder(b, false);
  b.steps = 7;
  const std::string cb = train::train_autoencoder(b, true);
  auto ta = require_identical_checkpoints(ca, cb);
  CHECK(ta.count("model.encoder.conv_in.weight"));
  CHECK(ta.count("model.decoder.conv_out.weight"));
  CHECK(ta.count("opt.step"));
  CHECK(ta["trainer.state"].to_vector_i64()[0] == 7);
  CHECK(fs::exists(dir / "a/reconstructions_3.png"));
  CHECK(fs::exists(dir / "a/reconstructions_7.png"));
  // The reconstruction grid: 8 inputs above their 8 reconstructions, twice (16 pairs of 8x8 at
  // scale 2 with a 2-pixel border): 8 columns, 4 rows.
  const Image8 grid = read_image_u8(dir / "a/reconstructions_7.png");
  CHECK(grid.width == 8 * 16 + 9 * 2);
  CHECK(grid.height == 4 * 16 + 5 * 2);
  CHECK(test::slurp_text(dir / "a/autoencoder_eval.csv").rfind("step,images,split,mse,psnr\n7,8,", 0) == 0);
  train::LoadedAutoencoder la = train::load_autoencoder(ca);
  CHECK(la.step == 7);
  CHECK(la.net->config().latent_size() == 4);
  const train::ReconstructionError r = train::reconstruction_error(*la.net, train::load_dataset(data, "test").images);
  CHECK(r.images == 20);
  CHECK(std::isfinite(r.mse));
  CHECK(r.psnr == Approx(10 * std::log10(4 / r.mse)));
  // Not a classifier or diffusion checkpoint, and the other way round.
  CHECK_THROWS_WITH(train::load_checkpoint(ca, Device::cpu()), Catch::Contains(ca));
}

TEST_CASE("a latent diffusion run resumes bit for bit and its checkpoint decodes without the autoencoder file",
          "[cpu][tools][autoencoder]") {
  TempDir dir;
  const std::string data = make_idx(dir, 20);
  train::AutoencoderTrainConfig ac = tiny_autoencoder(data, dir / "ae");
  ac.steps = 3;
  const std::string ae = train::train_autoencoder(ac, false);

  auto latent_config = [&](const std::string& out) {
    train::TrainConfig c = tiny_config(data, out);  // a two-level UNet: 4x4 latents -> 2x2
    c.autoencoder = ae;
    c.sample_count = 2;
    return c;
  };
  train::TrainConfig a = latent_config(dir / "a");
  a.steps = 7;
  const std::string ca = train::train(a, false);
  train::TrainConfig b = latent_config(dir / "b");
  b.steps = 4;
  train::train(b, false);
  b.steps = 7;
  const std::string cb = train::train(b, true);
  auto ta = require_identical_checkpoints(ca, cb);
  CHECK(ta.count("autoencoder.encoder.conv_in.weight"));
  CHECK(ta.count("autoencoder.decoder.conv_out.weight"));
  CHECK(ta.at("model.conv_in.weight").shape() == Shape{8, 3, 3, 2});  // the UNet reads the 2 latent channels
  const SafeTensors st = read_safetensors(ca);
  CHECK(st.metadata.at("latent_scale") == read_safetensors(cb).metadata.at("latent_scale"));

  // The factor: 1 / std of the posterior means over the whole training set.
  train::LoadedAutoencoder la = train::load_autoencoder(ae);
  const Tensor z = train::encode_means(*la.net, train::load_dataset(data, "train").images);
  const std::vector<float> zv = z.to_vector();
  double mean = 0, sq = 0;
  for (float v : zv) mean += v;
  mean /= static_cast<double>(zv.size());
  for (float v : zv) sq += (v - mean) * (v - mean);
  const double sd = std::sqrt(sq / static_cast<double>(zv.size() - 1));

  fs::remove(ae);  // the latent checkpoint is self-contained
  train::LoadedModel m = train::load_checkpoint(ca, Device::cpu());
  REQUIRE(m.autoencoder != nullptr);
  CHECK(m.latent_scale == Approx(1 / sd).epsilon(1e-6));
  CHECK(m.unet->config().image_size == 4);
  CHECK(m.unet->config().in_channels == 2);
  const Tensor images = train::decode_latents(*m.autoencoder, Tensor::randn({3, 4, 4, 2}, 1), m.latent_scale);
  CHECK(images.shape() == Shape{3, 8, 8, 1});
  CHECK(fs::exists(dir / "a/samples_final.png"));

  // A config that names an autoencoder with no autoencoder stored, and the other way round.
  SafeTensors no_ae = st;
  no_ae.metadata.erase("autoencoder");
  std::vector<std::pair<std::string, Tensor>> list(no_ae.tensors.begin(), no_ae.tensors.end());
  const std::string broken = dir / "broken.safetensors";
  write_safetensors_atomic(broken, list, no_ae.metadata);
  CHECK_THROWS_WITH(train::load_checkpoint(broken, Device::cpu()), Catch::Contains("none is stored"));
}

TEST_CASE("latent diffusion settings the trainer refuses", "[cpu][tools][autoencoder]") {
  TempDir dir;
  const std::string data = make_idx(dir, 8);
  train::AutoencoderTrainConfig ac = tiny_autoencoder(data, dir / "ae");
  ac.steps = 1;
  ac.eval_count = 0;
  const std::string ae = train::train_autoencoder(ac, false);
  train::TrainConfig c = tiny_config(data, dir / "run");
  c.autoencoder = ae;
  c.flip = true;
  CHECK_THROWS_WITH(train::train(c, false), Catch::Contains("--flip"));
  c.flip = false;
  c.model["channel_mult"] = {1, 2, 2, 2};  // 4x4 latents cannot be halved three times
  CHECK_THROWS_WITH(train::train(c, false), Catch::Contains("--preset latent"));
  CHECK_FALSE(fs::exists(dir / "run"));  // refused during setup: nothing left behind
  c.model = tiny_config(data, "").model;
  c.autoencoder = dir / "missing.safetensors";
  CHECK_THROWS_AS(train::train(c, false), Error);
}

TEST_CASE("CLI: train-autoencoder, train --autoencoder, and sample decodes to images", "[cpu][tools][autoencoder]") {
  TempDir dir;
  const std::string data = test::write_idx_dataset(dir.path, 16, test::next_seed());  // 28x28
  const std::string ae = dir / "ae", model = dir / "model", imgs = dir / "imgs", log = dir / "log.txt";
  std::string out;
  // The default autoencoder shape at a small width: 28x28 -> 7x7x4.
  REQUIRE(test::run({test::cli_path(), "train-autoencoder", "--model", R"({"base_channels": 8})", "--dataset", data,
                     "--batch", "8", "--steps", "2", "--eval-count", "8", "--device", "cpu", "--out", ae},
                    log, &out) == 0);
  CHECK(out.find("PSNR") != std::string::npos);
  REQUIRE(test::run({test::cli_path(), "train", "--autoencoder", ae + "/autoencoder.safetensors", "--preset", "latent",
                     "--model", R"({"base_channels": 32, "num_res_blocks": 1})", "--dataset", data, "--batch", "8",
                     "--steps", "2", "--sample-every", "0", "--sample-count", "2", "--sample-steps", "2", "--device",
                     "cpu", "--out", model},
                    log, &out) == 0);
  CHECK(out.find("7x7x4 latents") != std::string::npos);
  const std::string ckpt = model + "/checkpoint.safetensors";
  for (const char* sampler : {"ddim", "dpm++2m", "heun", "ddpm"}) {
    INFO(sampler);
    fs::remove_all(imgs);
    REQUIRE(test::run({test::cli_path(), "sample", ckpt, "--sampler", sampler, "--steps", "2", "-n", "2", "--grid",
                       dir / "grid.png", "--image-dir", imgs, "--device", "cpu"},
                      log, &out) == 0);
    const Image8 img = read_image_u8(imgs + "/00001.png");
    CHECK(img.width == 28);
    CHECK(img.height == 28);
    CHECK(img.channels == 1);
  }
  // eval refuses a latent model's bits/dim, naming why...
  CHECK(test::run({test::cli_path(), "eval", ckpt, "--count", "2", "--device", "cpu"}, log, &out) == 1);
  CHECK(out.find("latent diffusion model") != std::string::npos);
  // ... and judges its samples decoded: a 28x28 judge (the autoencoder's images, not the 7x7
  // latents) scores samples eval draws and decodes, and a folder that sample wrote.
  const std::string judge = dir / "judge";
  REQUIRE(test::run({test::cli_path(), "train-classifier", "--model", test::kTinyModel, "--dataset", data, "--batch",
                     "8", "--steps", "2", "--eval-count", "0", "--device", "cpu", "--noise", "none", "--out", judge},
                    log, &out) == 0);
  REQUIRE(test::run({test::cli_path(), "eval", ckpt, "--fd", judge + "/classifier.safetensors", "--fd-count", "4",
                     "--fd-steps", "2", "--device", "cpu"},
                    log, &out) == 0);
  CHECK(out.find("feature distance") != std::string::npos);
  REQUIRE(test::run({test::cli_path(), "eval", ckpt, "--fd", judge + "/classifier.safetensors", "--samples", imgs,
                     "--device", "cpu"},
                    log, &out) == 0);
  CHECK(out.find("feature distance") != std::string::npos);
}
