// --objective vdm end to end on a tiny model (the trainer's other objectives: train_test.cpp): the
// learned schedule's parameters in the checkpoint, their gradient, monotonicity after training,
// exact resume, the fixed schedule, the configuration checks, and sample / eval through the CLI.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/safetensors.h"
#include "models/nn/snr_net.h"
#include "models/train/trainer.h"
#include "tests/test_util.h"
#include "tests/tools/cli_util.h"
#include "tests/tools/train_util.h"

using namespace diffuse;
using namespace diffuse::test::train_util;
namespace fs = std::filesystem;

TEST_CASE("--objective vdm: the learned schedule trains with the model (snr.* in the checkpoint, gradient, monotone); "
          "sample and eval use it", "[cpu][tools]") {
  TempDir dir;
  const std::string data = make_idx(dir, 12);
  train::TrainConfig c = tiny_config(data, dir / "run");
  c.objective = train::Objective::vdm;
  c.schedule = train::ScheduleKind::learned;
  const std::string path = train::train(c, false);
  SafeTensors st = read_safetensors(path);
  // The SNR net's parameters, their EMA and their AdamW moments, all under the documented names.
  const std::shared_ptr<nn::SNRNet> fresh = train::make_snr_net(c);
  REQUIRE(fresh != nullptr);
  size_t snr_tensors = 0;
  for (auto& [name, init] : fresh->named_parameters()) {
    INFO(name);
    REQUIRE(st.tensors.count("snr." + name));
    CHECK(st.tensors.count("ema.snr." + name));
    CHECK(st.tensors.count("opt.m.snr." + name));
    CHECK(st.tensors.count("opt.v.snr." + name));
    const Tensor& trained = st.tensors.at("snr." + name);
    REQUIRE(trained.shape() == init.value().shape());
    // Every parameter moved: the loss's gradient reaches each of them (gamma_min through the
    // decoder, gamma_max through the prior, the rest through gamma'(t) and z_t), and six AdamW
    // steps of lr 2e-4 move any parameter with a gradient by far more than an f32 ulp.
    CHECK(std::memcmp(trained.raw(), init.value().raw(), trained.nbytes()) != 0);
    ++snr_tensors;
  }
  CHECK(snr_tensors == 7);
  CHECK(nlohmann::json::parse(st.metadata.at("config"))["schedule"] == "learned");
  // The logged loss is the VDM bound in bits per dim: finite, positive, and at init dominated by
  // 0.5 gamma' ||eps - eps_hat||^2 / (N ln 2) with gamma' ~ 18.3, so of order 10, not 1000.
  const std::vector<double> losses = logged_losses(dir / "run/log.csv");
  CHECK(losses.size() == 3);
  for (double loss : losses) {
    CHECK(std::isfinite(loss));
    CHECK(loss > 0);
    CHECK(loss < 200);
  }

  // The loaded schedule (EMA and live) is still monotone, pinned at its learned ends.
  for (bool ema : {true, false}) {
    INFO("ema " << ema);
    train::LoadedModel m = train::load_checkpoint(path, Device::cpu(), ema);
    REQUIRE(m.snr != nullptr);
    const auto sched = train::model_schedule(m);
    CHECK(sched->name() == "learned");
    const float gmin = st.tensors.at(std::string(ema ? "ema." : "") + "snr.gamma_min").to_vector()[0];
    const float gmax = st.tensors.at(std::string(ema ? "ema." : "") + "snr.gamma_max").to_vector()[0];
    CHECK(sched->gamma(0.0) == Approx(gmin).margin(1e-4));
    CHECK(sched->gamma(1.0) == Approx(gmax).margin(1e-4));
    double prev = -1e9;
    for (int i = 0; i <= 64; ++i) {
      const double g = sched->gamma(i / 64.0);
      INFO("t = " << i / 64.0);
      CHECK(g > prev);
      CHECK(sched->dgamma_dt(i / 64.0) > 0);
      prev = g;
    }
  }
  CHECK_THROWS_WITH(train::make_schedule(c), Catch::Contains("continuous"));

  // The CLI end to end: VDM's ancestral sampler, DDIM and DDPM on the learned schedule; eval's
  // VDM bound.
  const std::string out = dir / "cli.log";
  std::string text;
  for (const char* sampler : {"vdm", "ddim", "ddpm"}) {
    INFO(sampler);
    const int code = test::run({test::cli_path(), "sample", path, "--sampler", sampler, "--steps", "4", "--count", "3",
                                "--grid", dir / (std::string(sampler) + ".png"), "--device", "cpu"},
                               out, &text);
    INFO(text);
    CHECK(code == 0);
    CHECK(fs::exists(dir / (std::string(sampler) + ".png")));
  }
  const int code = test::run({test::cli_path(), "eval", path, "--count", "4", "--t-samples", "2", "--inversion-count",
                              "2", "--inversion-steps", "3", "--device", "cpu", "--json", dir / "eval.json"},
                             out, &text);
  INFO(text);
  REQUIRE(code == 0);
  CHECK_THAT(text, Catch::Contains("VDM bound"));
  const nlohmann::json e = nlohmann::json::parse(test::slurp_text(dir / "eval.json"));
  CHECK(e["bound"] == "vdm");
  CHECK(e["schedule"] == "learned");
  CHECK(e["t_samples"] == 2);
  CHECK(std::isfinite(e["bits_per_dim"].get<double>()));
  CHECK(e["bits_per_dim"].get<double>() > 0);
  CHECK(e["bits_per_dim"].get<double>() == Approx(e["prior_bpd"].get<double>() + e["diffusion_bpd"].get<double>() +
                                                  e["decoder_bpd"].get<double>()).epsilon(1e-6));
}

TEST_CASE("--objective vdm: a stopped and resumed run equals the uninterrupted run bit for bit", "[cpu][tools]") {
  TempDir dir;
  const std::string data = make_idx(dir, 12);
  train::TrainConfig a = tiny_config(data, dir / "a");
  a.objective = train::Objective::vdm;
  a.schedule = train::ScheduleKind::learned;
  a.steps = 5;
  const std::string ca = train::train(a, false);
  train::TrainConfig b = a;
  b.out_dir = dir / "b";
  b.steps = 2;  // stops between checkpoints: the final checkpoint at step 2 is the resume point
  train::train(b, false);
  b.steps = 5;
  const std::string cb = train::train(b, true);
  auto ta = require_identical_checkpoints(ca, cb);
  size_t snr = 0;
  for (auto& [name, t] : ta) snr += name.find("snr.") != std::string::npos;
  CHECK(snr == 4 * 7);  // snr.*, ema.snr.*, opt.m.snr.*, opt.v.snr.*
  CHECK(ta["trainer.state"].to_vector_i64()[0] == 5);
}

TEST_CASE("--objective vdm: the fixed linear log-SNR schedule, config checks, the CLI default and --help",
          "[cpu][tools]") {
  TempDir dir;
  const std::string data = make_idx(dir, 8);
  train::TrainConfig c = tiny_config(data, dir / "run");
  c.objective = train::Objective::vdm;
  c.schedule = train::ScheduleKind::linear;
  c.steps = 2;
  const std::string path = train::train(c, false);
  for (auto& [name, t] : tensors_of(path)) CHECK(name.find("snr.") == std::string::npos);
  train::LoadedModel m = train::load_checkpoint(path, Device::cpu());
  CHECK(m.snr == nullptr);
  const auto sched = train::model_schedule(m);
  CHECK(sched->name() == "linear_logsnr");
  CHECK(sched->gamma(0.0) == Approx(train::kVdmGammaMin));
  CHECK(sched->gamma(1.0) == Approx(train::kVdmGammaMax));

  CHECK_THROWS_WITH(train::TrainConfig::from_json({{"objective", "vdm"}, {"schedule", "cosine"}}),
                    Catch::Contains("linear, VDM's fixed linear log-SNR, or learned"));
  CHECK_THROWS_WITH(train::TrainConfig::from_json({{"objective", "eps"}, {"schedule", "learned"}}),
                    Catch::Contains("needs objective vdm"));
  CHECK_THROWS_WITH(train::TrainConfig::from_json({{"objective", "vdm"}, {"loss_weight", "min-snr"}}),
                    Catch::Contains("likelihood bound"));

  // `diffuse train --objective vdm` learns the schedule unless --schedule says otherwise.
  std::string text;
  const int code = test::run({test::cli_path(), "train", "--objective", "vdm", "--dataset", data, "--model",
                              R"({"base_channels": 8, "channel_mult": [1], "num_res_blocks": 1, "attention_resolutions": [], "groups": 4})",
                              "--batch", "4", "--steps", "1", "--sample-count", "1", "--sample-steps", "1", "--out",
                              dir / "cli", "--device", "cpu"},
                             dir / "train.log", &text);
  INFO(text);
  REQUIRE(code == 0);
  SafeTensors st = read_safetensors(dir / "cli/checkpoint.safetensors");
  CHECK(nlohmann::json::parse(st.metadata.at("config"))["schedule"] == "learned");
  CHECK(st.tensors.count("snr.gamma_min"));
  CHECK(test::run({test::cli_path(), "train", "--help"}, dir / "help.log", &text) == 0);
  CHECK_THAT(text, Catch::Contains("vdm"));
  CHECK_THAT(text, Catch::Contains("learned"));
}
