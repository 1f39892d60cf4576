// `diffuse train --device cuda` (CUDA graph on and off) and `diffuse sample --device cuda` against
// the same commands on the cpu, run as a user runs them: the tiny preset for a few steps, f32 on
// both sides (--bf16 false), and every number compared within a tolerance argued below. On a GPU
// this is the cuda tier; in a DIFFUSE_CUDA=SIM build, the simulated device's (sim tier).
//
// Training. Both steps draw from the same Philox streams (models/train/train_step.h): the same
// batches, timesteps, noise and dropout masks, so the two are compared number for number with the
// noise at full strength: objective v (its target mixes the noise and the clean batch), DDPM's
// linear betas over T = 1000 (sigma_t from 0.01 to 1) and dropout 0.1. What remains between the two is
// rounding: the same f32 math summed in other orders (cuBLASLt and cuDNN without TF32, the
// device's reductions), about 1e-6 relative per result.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "core/device.h"
#include "core/image_io.h"
#include "core/safetensors.h"
#include "tests/test_util.h"
#include "tests/tools/cli_util.h"

using namespace diffuse;

namespace {

struct LogRow {
  double loss = 0, grad_norm = 0;
};

// log.csv: step,loss,grad_norm,lr,images_per_s,nonfinite_skipped
std::vector<LogRow> read_log(const std::string& path) {
  std::ifstream f(path);
  std::vector<LogRow> rows;
  std::string line;
  std::getline(f, line);  // header
  while (std::getline(f, line)) {
    std::stringstream ss(line);
    std::string step, loss, norm;
    std::getline(ss, step, ',');
    std::getline(ss, loss, ',');
    std::getline(ss, norm, ',');
    rows.push_back({std::stod(loss), std::stod(norm)});
  }
  return rows;
}

constexpr int kSteps = 3;
// 16x16 images, batch 4: the simulated device runs every kernel thread by thread on one core, and
// these runs are most of the sim tier's time (this file: 66 s against 197 s at 28x28, batch 8).
constexpr int kSize = 16;
constexpr double kLr = 1e-3;
// The tiny test model with dropout, whose masks both devices draw alike.
constexpr const char* kModel = R"({"base_channels":8,"channel_mult":[1,2],"groups":4,"attention_resolutions":[],)"
                               R"("dropout":0.1})";

std::vector<std::string> train_args(const std::string& data, const std::string& out, const std::string& device,
                                    const std::string& graph, const std::vector<std::string>& extra = {},
                                    const std::string& model = kModel, int steps = kSteps) {
  std::vector<std::string> a = {test::cli_path(), "train", "--preset", "tiny", "--model", model, "--dataset", data,
                                "--batch", "4", "--steps", std::to_string(steps), "--checkpoint-every", "0",
                                "--sample-every", "0", "--sample-count", "4", "--sample-steps", "2", "--log-every", "1",
                                "--seed", "7", "--bf16", "false", "--objective", "v", "--schedule", "linear",
                                "--timesteps", "1000", "--warmup", "0", "--lr", std::to_string(kLr), "--device", device,
                                "--cuda-graph", graph, "--out", out};
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}

// A device run (out) against the cpu's (ref_dir), both of kSteps steps: the tolerances are argued
// where the first test below calls it.
void check_agreement(const std::string& ref_dir, const std::string& out) {
  const std::vector<LogRow> want = read_log(ref_dir + "/log.csv");
  const SafeTensors ref = read_safetensors(ref_dir + "/checkpoint.safetensors");
  REQUIRE(want.size() == kSteps);
  // Loss and gradient norm of every step: rounding (~1e-6 relative); 1e-4 relative leaves a
  // margin of 30 and more and is a thousand times below what a wrong formula, batch, timestep,
  // noise draw, dropout mask, dropped label or augmentation gives (losses of different draws
  // differ by percents).
  const std::vector<LogRow> got = read_log(out + "/log.csv");
  REQUIRE(got.size() == want.size());
  for (size_t s = 0; s < got.size(); ++s) {
    INFO("step " << s + 1 << ": loss " << got[s].loss << " vs " << want[s].loss << ", grad norm " << got[s].grad_norm
                 << " vs " << want[s].grad_norm);
    CHECK(std::fabs(got[s].loss - want[s].loss) <= 1e-4 * std::fabs(want[s].loss));
    CHECK(std::fabs(got[s].grad_norm - want[s].grad_norm) <= 1e-4 * std::fabs(want[s].grad_norm));
  }
  // The weights (live, EMA, Adam's moments) after the steps. An AdamW step moves a weight by
  // lr m/(sqrt(v) + eps), a ratio of the gradient's moments, so rounding in a gradient changes it
  // by a relative amount of the same order, except where a gradient cancels to the size of its
  // own rounding (near eps = 1e-8), where the step may differ by a fraction of lr. A wrong
  // gradient or update moves weights by O(lr) a step. So every live or EMA weight within
  // 2% of lr per step (observed on the simulated device: 0.1% per step at worst), and the
  // moments to 1e-3 of their largest value in the tensor.
  const SafeTensors got_ck = read_safetensors(out + "/checkpoint.safetensors");
  int64_t compared = 0;
  for (const auto& [name, t] : ref.tensors) {
    const bool weights = name.rfind("model.", 0) == 0 || name.rfind("ema.", 0) == 0;
    const bool moments = name.rfind("opt.m.", 0) == 0 || name.rfind("opt.v.", 0) == 0;
    if (!weights && !moments) continue;
    INFO(name);
    REQUIRE(got_ck.tensors.count(name));
    const Tensor& g = got_ck.tensors.at(name);
    if (t.dtype() != DType::f32) continue;  // ema.num_updates and the like: compared below
    const std::vector<float> a = t.to_vector(), b = g.to_vector();
    REQUIRE(a.size() == b.size());
    double scale = 0;
    for (float v : a) scale = std::max(scale, static_cast<double>(std::fabs(v)));
    const double tol = weights ? 0.02 * kLr * kSteps : 1e-3 * scale;
    double worst = 0;
    for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::fabs(static_cast<double>(a[i]) - b[i]));
    INFO("largest difference " << worst << ", tolerance " << tol);
    CHECK(worst <= tol);
    ++compared;
  }
  CHECK(compared > 0);
  CHECK(got_ck.tensors.at("opt.step").to_vector_i64() == ref.tensors.at("opt.step").to_vector_i64());
  // What travels with the model: a latent model's autoencoder and scale, bit for bit (both runs
  // encode on the cpu).
  for (const auto& [name, t] : ref.tensors)
    if (name.rfind("autoencoder.", 0) == 0) CHECK(got_ck.tensors.at(name).to_vector() == t.to_vector());
  CHECK(got_ck.metadata.count("latent_scale") == ref.metadata.count("latent_scale"));
  if (ref.metadata.count("latent_scale")) CHECK(got_ck.metadata.at("latent_scale") == ref.metadata.at("latent_scale"));
}

// Every f32 tensor of two checkpoints, bit for bit.
void check_identical(const std::string& a_path, const std::string& b_path) {
  const SafeTensors a = read_safetensors(a_path);
  const SafeTensors b = read_safetensors(b_path);
  REQUIRE(a.tensors.size() == b.tensors.size());
  for (const auto& [name, t] : a.tensors) {
    INFO(name);
    REQUIRE(b.tensors.count(name));
    if (t.dtype() == DType::f32) CHECK(t.to_vector() == b.tensors.at(name).to_vector());
    if (t.dtype() == DType::i64) CHECK(t.to_vector_i64() == b.tensors.at(name).to_vector_i64());
  }
}

}  // namespace

TEST_CASE("train --device cuda agrees with train on the cpu, graph on and off", "[cuda][tools]") {
  if (!cuda_available()) return;
  test::TempDir dir;
  const std::string data = test::write_idx_dataset(dir.path, 32, 6, kSize);
  std::string log;
  REQUIRE(test::run(train_args(data, dir / "cpu", "cpu", "on"), dir / "cpu.txt", &log) == 0);
  for (const char* graph : {"on", "off"}) {
    INFO("--cuda-graph " << graph);
    const std::string out = dir / (std::string("cuda_") + graph);
    REQUIRE(test::run(train_args(data, out, "cuda", graph), out + ".txt", &log) == 0);
    INFO(log);
    CHECK(log.find(std::string("the whole step on cuda:0") + (graph[1] == 'n' ? ", captured as a CUDA graph" : "")) !=
          std::string::npos);
    check_agreement(dir / "cpu", out);
  }
  // Graph on and off are the same kernels with the same arguments: the same bits.
  const SafeTensors on = read_safetensors(dir / "cuda_on/checkpoint.safetensors");
  const SafeTensors off = read_safetensors(dir / "cuda_off/checkpoint.safetensors");
  for (const auto& [name, t] : on.tensors) {
    INFO(name);
    if (t.dtype() == DType::f32) CHECK(t.to_vector() == off.tensors.at(name).to_vector());
  }
}

namespace {

// Two PNGs of the same samples drawn on two devices, within the tolerance argued in the test below.
void check_same_images(const Image8& got, const Image8& want) {
  REQUIRE(got.width == want.width);
  REQUIRE(got.height == want.height);
  REQUIRE(got.pixels.size() == want.pixels.size());
  int64_t differ = 0, worst = 0;
  for (size_t i = 0; i < got.pixels.size(); ++i) {
    const int64_t d = std::abs(static_cast<int>(got.pixels[i]) - static_cast<int>(want.pixels[i]));
    differ += d > 0;
    worst = std::max(worst, d);
  }
  INFO(differ << " of " << got.pixels.size() << " pixels differ, by at most " << worst);
  CHECK(worst <= 1);
  CHECK(differ <= static_cast<int64_t>(got.pixels.size()) / 100);
}
void check_same_images(const std::string& got_png, const std::string& want_png) {
  check_same_images(read_image_u8(got_png), read_image_u8(want_png));
}

// kModel with cross-attention at 8x8 to a context of 2 tokens, its words from ten class names.
const std::string kContextModel =
    std::string(kModel).substr(0, std::string(kModel).size() - 1) +
    R"(,"context_dim":8,"context_resolutions":[8],"context_tokens":2,"class_names":["t shirt","trouser",)"
    R"("pullover","dress","coat","sandal","shirt","sneaker","bag","ankle boot"]})";
// At the 4x4x4 latents of the autoencoder below: one level.
constexpr const char* kLatentModel = R"({"base_channels":8,"channel_mult":[1],"groups":4,"attention_resolutions":[],)"
                                     R"("dropout":0.1})";

}  // namespace

TEST_CASE("train --device cuda agrees with the cpu on conditional and latent models, graph on and off; so does "
          "sample --device cuda",
          "[cuda][tools]") {
  if (!cuda_available()) return;
  test::TempDir dir;
  // 16x16, labels cycling through 0..9: ten classes, whatever the seed (the class names are ten).
  const std::string ip = dir / "images-idx3-ubyte", lp = dir / "labels-idx1-ubyte";
  test::write_idx_files(ip, lp, 32, kSize, 9, /*cycle_labels=*/true);
  const std::string data = "idx:" + ip + "," + lp;
  std::string log;
  // A first stage for the latent model (the cpu's; both runs encode their batches with it on the cpu).
  REQUIRE(test::run({test::cli_path(), "train-autoencoder", "--model", R"({"base_channels": 8})", "--dataset", data,
                     "--batch", "4", "--steps", "1", "--eval-count", "0", "--device", "cpu", "--out", dir / "ae"},
                    dir / "ae.txt", &log) == 0);
  // An 8x8 base for the super-resolution model's cascade.
  REQUIRE(test::run(train_args(data + "@8", dir / "base", "cpu", "off", {}, kModel, 1), dir / "base.txt", &log) == 0);
  struct Case {
    const char* name;
    std::vector<std::string> extra;
    std::string model;
    std::vector<std::string> sample;  // the `diffuse sample` arguments before the common ones
  };
  // The label dropout high enough that each step drops some labels to the null class (and keeps
  // some), so a wrong draw of the drop shows in the loss.
  const Case cases[] = {
      {"class", {"--class-cond", "--label-dropout", "0.5"}, kModel, {"--class", "3", "--guidance", "2"}},
      {"xattn", {"--class-cond", "--label-dropout", "0.3"}, kContextModel, {"--prompt", "ankle boot", "--guidance", "2"}},
      {"sr", {"--super-res", "8", "--super-res-aug", "0.3"}, kModel, {"--cascade", dir / "base/checkpoint.safetensors"}},
      {"latent", {"--autoencoder", dir / "ae/autoencoder.safetensors"}, kLatentModel, {}},
  };
  for (const Case& c : cases) {
    INFO(c.name);
    const std::string cpu = dir / (std::string(c.name) + "_cpu");
    REQUIRE(test::run(train_args(data, cpu, "cpu", "on", c.extra, c.model), cpu + ".txt", &log) == 0);
    for (const char* graph : {"on", "off"}) {
      INFO("--cuda-graph " << graph);
      const std::string out = dir / (std::string(c.name) + "_cuda_" + graph);
      REQUIRE(test::run(train_args(data, out, "cuda", graph, c.extra, c.model), out + ".txt", &log) == 0);
      INFO(log);
      CHECK(log.find(std::string("the whole step on cuda:0") + (graph[1] == 'n' ? ", captured as a CUDA graph" : "")) !=
            std::string::npos);
      check_agreement(cpu, out);
    }
    check_identical(dir / (std::string(c.name) + "_cuda_on/checkpoint.safetensors"),
                    dir / (std::string(c.name) + "_cuda_off/checkpoint.safetensors"));
    // The cpu's checkpoint sampled on either device (host-driven with the model on the GPU: labels,
    // guidance and a cascade's conditioning; a latent model's decoder on the GPU too), with the
    // tolerance of the test below: f32 both sides, a few steps from the same noise.
    auto sample = [&](const std::string& device) {
      const std::string png = dir / (std::string(c.name) + "_sample_" + device + ".png");
      std::vector<std::string> a = {test::cli_path(), "sample"};
      a.insert(a.end(), c.sample.begin(), c.sample.end());
      a.insert(a.end(), {cpu + "/checkpoint.safetensors", "--device", device, "--sampler", "ddim", "-n", "4", "--batch",
                         "2", "--steps", "3", "--seed", "21", "--grid", png});
      std::string out;
      const int code = test::run(a, png + ".txt", &out);
      INFO(out);
      REQUIRE(code == 0);
      return png;
    };
    check_same_images(sample("cuda"), sample("cpu"));
  }
}

TEST_CASE("train --device cuda agrees with the cpu on objective hybrid, uniform and importance-sampled steps, graph "
          "on and off",
          "[cuda][tools]") {
  if (!cuda_available()) return;
  test::TempDir dir;
  const std::string data = test::write_idx_dataset(dir.path, 32, 6, kSize);
  std::string log;
  // The hybrid loss's VLB term is in double on both devices (the cpu's loops, the device's kernel),
  // from the same f32 network output: what differs is still the f32 rounding of the network, so
  // check_agreement's tolerances hold as argued there. With T = 1000 the steps are t > 0 (the KL
  // terms); with importance sampling T = 2, which also draws t = 0 (the decoder), and one loss
  // kept per step, so the warm-up ends within the run and its last steps draw from the history.
  // The two histories differ by rounding (~1e-6 relative), which changes an importance draw only
  // if its uniform variate falls within ~1e-6 of a boundary of the cumulative p_t: a wrong draw
  // would show as a loss off by percents.
  struct Case {
    const char* name;
    std::vector<std::pair<std::string, std::string>> set;  // flags of train_args to change
    std::vector<std::string> extra;
  };
  const Case cases[] = {
      {"hybrid", {{"--objective", "hybrid"}}, {}},
      {"importance",
       {{"--objective", "hybrid"}, {"--timesteps", "2"}, {"--schedule", "cosine"}},
       {"--t-sampling", "importance", "--t-sampling-history", "1"}},
  };
  for (const Case& c : cases) {
    INFO(c.name);
    auto args = [&](const std::string& out, const std::string& device, const std::string& graph) {
      std::vector<std::string> a = train_args(data, out, device, graph, c.extra);
      for (const auto& [flag, value] : c.set)
        for (size_t i = 0; i + 1 < a.size(); ++i)
          if (a[i] == flag) a[i + 1] = value;
      return a;
    };
    const std::string cpu = dir / (std::string(c.name) + "_cpu");
    REQUIRE(test::run(args(cpu, "cpu", "on"), cpu + ".txt", &log) == 0);
    const SafeTensors ref = read_safetensors(cpu + "/checkpoint.safetensors");
    for (const char* graph : {"on", "off"}) {
      INFO("--cuda-graph " << graph);
      const std::string out = dir / (std::string(c.name) + "_cuda_" + graph);
      REQUIRE(test::run(args(out, "cuda", graph), out + ".txt", &log) == 0);
      INFO(log);
      CHECK(log.find("the whole step on cuda:0") != std::string::npos);
      check_agreement(cpu, out);
      if (c.extra.empty()) continue;
      // The importance sampler's history: the same steps drawn and recorded, each loss within the
      // tolerance of the losses above.
      const SafeTensors got = read_safetensors(out + "/checkpoint.safetensors");
      const std::vector<int64_t> counts = ref.tensors.at("trainer.t_sampler.counts").to_vector_i64();
      CHECK(got.tensors.at("trainer.t_sampler.counts").to_vector_i64() == counts);
      CHECK(counts == std::vector<int64_t>{1, 1});  // warmed up: the last steps drew from the history
      const Tensor& w = ref.tensors.at("trainer.t_sampler.losses");
      const Tensor& g = got.tensors.at("trainer.t_sampler.losses");
      REQUIRE(g.numel() == w.numel());
      for (int64_t i = 0; i < w.numel(); ++i)
        CHECK(std::fabs(g.data<double>()[i] - w.data<double>()[i]) <= 1e-4 * std::fabs(w.data<double>()[i]));
    }
    check_identical(dir / (std::string(c.name) + "_cuda_on/checkpoint.safetensors"),
                    dir / (std::string(c.name) + "_cuda_off/checkpoint.safetensors"));
  }
}

TEST_CASE("sample --device cuda gives the cpu's images, graph on and off", "[cuda][tools]") {
  if (!cuda_available()) return;
  test::TempDir dir;
  const std::string data = test::write_idx_dataset(dir.path, 16, 8, kSize);
  REQUIRE(test::run(test::train_args(data, dir / "run", 2, 0), dir / "train.txt") == 0);
  const std::string ckpt = dir / "run/checkpoint.safetensors";
  // Samplers whose every step runs on the device: DDIM (eta 0) and DDPM, whose step noise is the
  // same Philox draw (seed, k + 1) on both devices, as is the starting noise (seed, 0).
  for (const char* sampler : {"ddim", "ddpm"}) {
    auto sample = [&](const std::string& device, const std::string& graph) {
      const std::string png = dir / (std::string(sampler) + "_" + device + "_" + graph + ".png");
      std::string log;
      const int code = test::run({test::cli_path(), "sample", ckpt, "--device", device, "--sampler", sampler, "-n", "6",
                                  "--batch", "3", "--steps", "5", "--seed", "21", "--cuda-graph", graph, "--grid", png},
                                 png + ".txt", &log);
      INFO(log);
      REQUIRE(code == 0);
      if (device == "cuda") CHECK(log.find("device loop") != std::string::npos);
      return read_image_u8(png);
    };
    const Image8 want = sample("cpu", "off");
    for (const char* graph : {"on", "off"}) {
      INFO(sampler << " --cuda-graph " << graph);
      // f32 on both sides, 5 steps from the same noise: the samples differ by rounding (~1e-5 of
      // their range after 5 network evaluations), which moves a pixel of 255 levels over [-1, 1]
      // only where a value sits on a rounding boundary: by one level, at few pixels. A wrong step
      // or wrong noise moves most pixels by many levels.
      check_same_images(sample("cuda", graph), want);
    }
  }
}
