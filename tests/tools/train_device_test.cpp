// `diffuse train --device cuda` and `diffuse sample --device cuda`: the GPU fast path behind the
// CLI (models/train/device_trainer.h, device_sampling.h). On the cpu ([cpu]): the --cuda-graph
// flag and config key, and the clear start-up errors (no GPU: a non-zero exit naming it, and no
// output folder). On a GPU ([cuda]): a short run writes a loadable checkpoint with the cpu
// trainer's names, graph on equals graph off bit for bit, a resumed run equals the uninterrupted
// one (also for objective hybrid with importance-sampled steps), the refused options fail before
// anything is written, and sampling on the device.
#include <catch2/catch.hpp>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/device.h"
#include "core/safetensors.h"
#include "models/train/trainer.h"
#include "tests/test_util.h"
#include "tests/tools/cli_util.h"

using namespace diffuse;
namespace fs = std::filesystem;

namespace {

// Elements whose bits differ; -1 when the shapes differ.
[[maybe_unused]] int64_t mismatches(const Tensor& a, const Tensor& b) {
  if (!(a.shape() == b.shape())) return -1;
  const std::vector<float> x = a.to(DType::f32).to_vector(), y = b.to(DType::f32).to_vector();
  int64_t bad = 0;
  for (size_t i = 0; i < x.size(); ++i) bad += std::memcmp(&x[i], &y[i], sizeof(float)) != 0;
  return bad;
}

// 16x16 images, batch 4: the simulated device runs every kernel thread by thread on one core, and
// these runs are most of the sim tier's time (this file: 135 s against 397 s at 28x28, batch 8).
constexpr int kSize = 16;

// A device name this machine does not have: no GPU at all, or one past the last.
std::string missing_gpu() { return cuda_available() ? "cuda:" + std::to_string(cuda_device_count()) : "cuda"; }

[[maybe_unused]] train::TrainConfig tiny_gpu_config(const std::string& dataset, const std::string& out) {
  train::TrainConfig c;
  c.dataset = dataset;
  c.out_dir = out;
  c.model = nlohmann::json::parse(test::kTinyModel);
  c.batch = 4;
  c.steps = 6;
  c.warmup = 2;
  c.log_every = 1;
  c.checkpoint_every = 0;
  c.sample_every = 0;
  c.sample_count = 4;
  c.sample_steps = 2;
  c.seed = 5;
  c.device = "cuda";
  return c;
}

}  // namespace

TEST_CASE("train --device on a missing GPU: one clear error, nothing written", "[cpu][tools]") {
  test::TempDir dir;
  const std::string data = test::write_idx_dataset(dir.path, 16, 3);
  const std::string out = dir / "run";
  std::vector<std::string> args = test::train_args(data, out, 2, 0);
  for (size_t i = 0; i + 1 < args.size(); ++i)
    if (args[i] == "--device") args[i + 1] = missing_gpu();
  std::string log;
  const int code = test::run(args, dir / "log.txt", &log);
  INFO(log);
  CHECK(code != 0);
  CHECK(log.find("requested but") != std::string::npos);
  CHECK(log.find(missing_gpu()) != std::string::npos);
  CHECK_FALSE(fs::exists(out));
  // The same through the library, and for sample.
  train::TrainConfig c;
  c.device = missing_gpu();
  c.out_dir = dir / "lib";
  CHECK_THROWS_WITH(train::train(c, false), Catch::Contains("requested but"));
  CHECK_FALSE(fs::exists(dir / "lib"));
}

TEST_CASE("train and sample --cuda-graph: on or off, a config key, in --help; the cpu ignores it", "[cpu][tools]") {
  test::TempDir dir;
  std::string help;
  REQUIRE(test::run({test::cli_path(), "train", "--help"}, dir / "h1.txt", &help) == 0);
  CHECK(help.find("--cuda-graph") != std::string::npos);
  REQUIRE(test::run({test::cli_path(), "sample", "--help"}, dir / "h2.txt", &help) == 0);
  CHECK(help.find("--cuda-graph") != std::string::npos);
  CHECK(help.find("ddpm, ddim and vdm") != std::string::npos);

  const std::string data = test::write_idx_dataset(dir.path, 16, 4);
  std::vector<std::string> args = test::train_args(data, dir / "bad", 2, 0);
  args.insert(args.end(), {"--cuda-graph", "maybe"});
  std::string log;
  CHECK(test::run(args, dir / "bad.txt", &log) != 0);
  CHECK(log.find("--cuda-graph") != std::string::npos);
  CHECK_FALSE(fs::exists(dir / "bad"));

  // off on the cpu: the cpu trainer, the same bits as the default; the key is stored.
  std::vector<std::string> on = test::train_args(data, dir / "on", 2, 0);
  std::vector<std::string> off = test::train_args(data, dir / "off", 2, 0);
  off.insert(off.end(), {"--cuda-graph", "off"});
  REQUIRE(test::run(on, dir / "on.txt") == 0);
  REQUIRE(test::run(off, dir / "off.txt", &log) == 0);
  INFO(log);
  const SafeTensors a = read_safetensors(dir / "on/checkpoint.safetensors");
  const SafeTensors b = read_safetensors(dir / "off/checkpoint.safetensors");
  CHECK(nlohmann::json::parse(a.metadata.at("config")).at("cuda_graph") == true);
  CHECK(nlohmann::json::parse(b.metadata.at("config")).at("cuda_graph") == false);
  for (const auto& [name, t] : a.tensors) CHECK(mismatches(t, b.tensors.at(name)) == 0);

  // The JSON config key, with the flag winning over the file.
  const std::string cfg = dir / "cfg.json";
  std::ofstream(cfg) << R"({"cuda_graph": false})";
  CHECK(train::TrainConfig::from_json(nlohmann::json::parse(R"({"cuda_graph": false})")).cuda_graph == false);
  CHECK_THROWS_WITH(train::TrainConfig::from_json(nlohmann::json::parse(R"({"cuda_graph": "off"})")),
                    Catch::Contains("cuda_graph"));
  std::vector<std::string> with_file = test::train_args(data, dir / "file", 1, 0);
  with_file.insert(with_file.end(), {"--config", cfg, "--cuda-graph", "on"});
  REQUIRE(test::run(with_file, dir / "file.txt") == 0);
  CHECK(nlohmann::json::parse(read_safetensors(dir / "file/checkpoint.safetensors").metadata.at("config"))
            .at("cuda_graph") == true);

  // sample takes the flag too; on the cpu the host-driven samplers run.
  REQUIRE(test::run({test::cli_path(), "sample", dir / "on/checkpoint.safetensors", "--device", "cpu", "-n", "2",
                     "--steps", "2", "--cuda-graph", "off", "--grid", dir / "s.png"},
                    dir / "s.txt", &log) == 0);
  CHECK(fs::exists(dir / "s.png"));
}

TEST_CASE("train --device cuda refuses what the device step lacks before writing anything", "[cuda][tools]") {
  if (!cuda_available()) return;
  test::TempDir dir;
  const std::string data = test::write_idx_dataset(dir.path, 16, 5);
  struct Case {
    std::vector<std::string> extra;
    const char* names;
  };
  const Case cases[] = {{{"--objective", "vdm"}, "--objective vdm"}};
  int k = 0;
  for (const Case& c : cases) {
    const std::string out = dir / ("run" + std::to_string(k++));
    std::vector<std::string> args = test::train_args(data, out, 2, 0);
    for (size_t i = 0; i + 1 < args.size(); ++i)
      if (args[i] == "--device") args[i + 1] = "cuda";
    if (c.extra[0] == "--model") {
      for (size_t i = 0; i + 1 < args.size(); ++i)
        if (args[i] == "--model") args[i + 1] = c.extra[1];
    } else {
      args.insert(args.end(), c.extra.begin(), c.extra.end());
    }
    std::string log;
    const int code = test::run(args, dir / "log.txt", &log);
    INFO(log);
    CHECK(code != 0);
    CHECK(log.find(c.names) != std::string::npos);
    CHECK(log.find("GPU training step") != std::string::npos);
    CHECK_FALSE(fs::exists(out));
  }
}

TEST_CASE("train --device cuda: a loadable checkpoint; graph on == graph off; resume == uninterrupted",
          "[cuda][tools]") {
  if (!cuda_available()) return;
  test::TempDir dir;
  const std::string data = test::write_idx_dataset(dir.path, 32, 6, kSize);
  // In one process, so both runs see the same cuDNN algorithm choices.
  train::TrainConfig on = tiny_gpu_config(data, dir / "on");
  train::TrainConfig off = on;
  off.out_dir = dir / "off";
  off.cuda_graph = false;
  const std::string ckpt = train::train(on, false);
  train::train(off, false);

  const SafeTensors a = read_safetensors(ckpt);
  const SafeTensors b = read_safetensors(dir / "off/checkpoint.safetensors");
  // The cpu trainer's names: model.*, ema.*, opt.m.*, opt.v.*, opt.step, ema.num_updates.
  REQUIRE(a.tensors.count("opt.step"));
  CHECK(a.tensors.at("opt.step").to_vector_i64().at(0) == 6);
  CHECK(a.tensors.at("ema.num_updates").to_vector_i64().at(0) == 6);
  CHECK(a.tensors.at("trainer.state").to_vector_i64().at(0) == 6);
  int64_t models = 0;
  for (const auto& [name, t] : a.tensors) {
    INFO(name);
    REQUIRE(b.tensors.count(name));
    CHECK(mismatches(t, b.tensors.at(name)) == 0);
    models += name.rfind("model.", 0) == 0;
    if (name.rfind("model.", 0) == 0) {
      const std::string base = name.substr(6);
      CHECK(a.tensors.count("ema." + base));
      CHECK(a.tensors.count("opt.m." + base));
      CHECK(a.tensors.count("opt.v." + base));
    }
  }
  CHECK(models > 0);
  // The CLI says which step runs.
  {
    std::string log;
    std::vector<std::string> args = test::train_args(data, dir / "cli", 2, 0);
    for (size_t i = 0; i + 1 < args.size(); ++i)
      if (args[i] == "--device") args[i + 1] = "cuda";
    CHECK(test::run(args, dir / "cli.txt", &log) == 0);
    INFO(log);
    CHECK(log.find("the whole step on cuda:0, captured as a CUDA graph") != std::string::npos);
    CHECK(fs::exists(dir / "cli/checkpoint.safetensors"));
  }
  // Loadable, for sampling on either device; the log has a row per step; a final grid.
  train::LoadedModel m = train::load_checkpoint(ckpt, Device::cpu());
  CHECK(m.step == 6);
  CHECK(fs::exists(dir / "on/samples_final.png"));
  std::ifstream log(dir / "on/log.csv");
  int rows = 0;
  for (std::string line; std::getline(log, line);) ++rows;
  CHECK(rows == 7);
  // The weights moved from their initialisation and stayed finite.
  train::TrainConfig init = on;
  init.out_dir = dir / "init";
  init.steps = 1;
  init.lr = 1e-30;
  train::train(init, false);
  const SafeTensors i = read_safetensors(dir / "init/checkpoint.safetensors");
  int64_t moved = 0;
  for (const auto& [name, t] : a.tensors)
    if (name.rfind("model.", 0) == 0) moved += mismatches(t, i.tensors.at(name)) > 0;
  CHECK(moved > 0);

  // Resume: 3 steps, then on to 6, against the uninterrupted run above.
  train::TrainConfig part = on;
  part.out_dir = dir / "part";
  part.steps = 3;
  train::train(part, false);
  part.steps = 6;
  train::train(part, true);
  const SafeTensors r = read_safetensors(dir / "part/checkpoint.safetensors");
  for (const auto& [name, t] : a.tensors) {
    INFO(name);
    CHECK(mismatches(t, r.tensors.at(name)) == 0);
  }
}

TEST_CASE("train --device cuda, objective hybrid with importance-sampled steps: graph on == graph off; resume == "
          "uninterrupted, the loss history in the checkpoint",
          "[cuda][tools]") {
  if (!cuda_available()) return;
  test::TempDir dir;
  const std::string data = test::write_idx_dataset(dir.path, 32, 6, kSize);
  // T = 2 and one loss kept per step: the uniform warm-up ends once both steps have been drawn
  // (checked below at the resume point), so the steps after it draw from the history.
  train::TrainConfig on = tiny_gpu_config(data, dir / "on");
  on.objective = train::Objective::hybrid;
  on.schedule = train::ScheduleKind::cosine;
  on.timesteps = 2;
  on.t_sampling = train::TSampling::importance;
  on.t_sampling_history = 1;
  on.steps = 4;
  train::TrainConfig off = on;
  off.out_dir = dir / "off";
  off.cuda_graph = false;
  const std::string ckpt = train::train(on, false);
  train::train(off, false);
  const SafeTensors a = read_safetensors(ckpt);
  const SafeTensors b = read_safetensors(dir / "off/checkpoint.safetensors");
  REQUIRE(a.tensors.count("trainer.t_sampler.counts"));
  CHECK(a.tensors.at("trainer.t_sampler.counts").to_vector_i64() == std::vector<int64_t>{1, 1});
  REQUIRE(a.tensors.size() == b.tensors.size());
  for (const auto& [name, t] : a.tensors) {
    INFO(name);
    REQUIRE(b.tensors.count(name));
    CHECK(mismatches(t, b.tensors.at(name)) == 0);
  }
  // Resume from step 2, past the warm-up, on to 4, against the uninterrupted run.
  train::TrainConfig part = on;
  part.out_dir = dir / "part";
  part.steps = 2;
  train::train(part, false);
  {
    const SafeTensors p = read_safetensors(dir / "part/checkpoint.safetensors");
    INFO("the warm-up must be over at the resume point, or the importance draw is not exercised");
    for (int64_t n : p.tensors.at("trainer.t_sampler.counts").to_vector_i64()) REQUIRE(n >= 1);
  }
  part.steps = 4;
  train::train(part, true);
  const SafeTensors r = read_safetensors(dir / "part/checkpoint.safetensors");
  for (const auto& [name, t] : a.tensors) {
    INFO(name);
    REQUIRE(r.tensors.count(name));
    CHECK(mismatches(t, r.tensors.at(name)) == 0);
  }
}

TEST_CASE("train --device cuda on class-conditional, cross-attention, super-resolution and latent models: graph on "
          "== graph off; resume == uninterrupted",
          "[cuda][tools]") {
  if (!cuda_available()) return;
  test::TempDir dir;
  // Labels cycling through 0..9: ten classes, whatever the seed (the class names are ten).
  const std::string ip = dir / "images-idx3-ubyte", lp = dir / "labels-idx1-ubyte";
  test::write_idx_files(ip, lp, 32, kSize, 11, /*cycle_labels=*/true);
  const std::string data = "idx:" + ip + "," + lp;
  std::string log;
  REQUIRE(test::run({test::cli_path(), "train-autoencoder", "--model", R"({"base_channels": 8})", "--dataset", data,
                     "--batch", "4", "--steps", "1", "--eval-count", "0", "--device", "cpu", "--out", dir / "ae"},
                    dir / "ae.txt", &log) == 0);
  struct Case {
    const char* name;
    train::TrainConfig cfg;
  };
  const train::TrainConfig base = tiny_gpu_config(data, "");
  train::TrainConfig cond = base, xattn = base, sr = base, latent = base;
  cond.class_cond = true;
  cond.label_dropout = 0.5;
  xattn.class_cond = true;
  xattn.model["context_dim"] = 8;
  xattn.model["context_resolutions"] = nlohmann::json::array({8});
  xattn.model["context_tokens"] = 2;
  xattn.model["class_names"] = {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"};
  sr.super_res = 8;
  sr.super_res_aug = 0.3;
  latent.autoencoder = dir / "ae/autoencoder.safetensors";
  latent.model["channel_mult"] = nlohmann::json::array({1});  // 4x4 latents
  for (const Case& c : {Case{"class", cond}, Case{"xattn", xattn}, Case{"sr", sr}, Case{"latent", latent}}) {
    INFO(c.name);
    // In one process, so every run sees the same cuDNN algorithm choices.
    train::TrainConfig on = c.cfg;
    on.steps = 4;
    on.out_dir = dir / (std::string(c.name) + "_on");
    train::TrainConfig off = on;
    off.out_dir = dir / (std::string(c.name) + "_off");
    off.cuda_graph = false;
    const std::string ckpt = train::train(on, false);
    train::train(off, false);
    train::TrainConfig part = on;
    part.out_dir = dir / (std::string(c.name) + "_part");
    part.steps = 2;
    train::train(part, false);
    part.steps = 4;
    train::train(part, true);
    const SafeTensors a = read_safetensors(ckpt);
    const SafeTensors b = read_safetensors(dir / (std::string(c.name) + "_off/checkpoint.safetensors"));
    const SafeTensors r = read_safetensors(dir / (std::string(c.name) + "_part/checkpoint.safetensors"));
    CHECK(a.tensors.at("opt.step").to_vector_i64().at(0) == 4);
    for (const auto& [name, t] : a.tensors) {
      INFO(name);
      REQUIRE(b.tensors.count(name));
      REQUIRE(r.tensors.count(name));
      CHECK(mismatches(t, b.tensors.at(name)) == 0);
      CHECK(mismatches(t, r.tensors.at(name)) == 0);
    }
    CHECK(fs::exists(dir / (std::string(c.name) + "_on/samples_final.png")));
  }
}

TEST_CASE("sample --device cuda: the device loop, graph on == off, and the host-driven samplers", "[cuda][tools]") {
  if (!cuda_available()) return;
  test::TempDir dir;
  const std::string data = test::write_idx_dataset(dir.path, 16, 7, kSize);
  REQUIRE(test::run(test::train_args(data, dir / "run", 2, 0), dir / "train.txt") == 0);
  const std::string ckpt = dir / "run/checkpoint.safetensors";
  // Which path ran is in the summary line. Graph on against off, bit for bit, is checked in one
  // process (tests/models/device_sampling_test.cpp): two processes may pick other cuDNN algorithms.
  auto sample = [&](const std::string& sampler, const std::string& graph, const std::string& png) {
    std::string log;
    const int code = test::run({test::cli_path(), "sample", ckpt, "--device", "cuda", "--sampler", sampler, "-n", "5",
                                "--batch", "2", "--steps", "4", "--cuda-graph", graph, "--grid", dir / png},
                               dir / "log.txt", &log);
    INFO(log);
    CHECK(code == 0);
    CHECK(!test::slurp_text(dir / png).empty());
    return log;
  };
  for (const char* s : {"ddim", "ddpm", "vdm"}) {
    INFO(s);
    CHECK(sample(s, "on", std::string(s) + "_on.png").find("device loop, CUDA graph") != std::string::npos);
    const std::string off = sample(s, "off", std::string(s) + "_off.png");
    CHECK(off.find("device loop") != std::string::npos);
    CHECK(off.find("CUDA graph") == std::string::npos);
  }
  CHECK(sample("dpm++2m", "on", "dpm.png").find("host-driven") != std::string::npos);
}
