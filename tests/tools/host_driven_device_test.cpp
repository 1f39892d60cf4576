// The host-driven GPU paths of latent diffusion, classifier guidance and the Langevin samplers,
// each against the same command on the cpu, run as a user runs them: `diffuse train-classifier
// --device cuda` and `diffuse train-autoencoder --device cuda` (the passes on the device, AdamW on
// the host's weights; models/train/model_run.h), and `diffuse sample --device cuda` with
// --classifier guidance and with --sampler langevin and pc (host-driven sampling, the model and the
// classifier on the GPU). On a GPU this is the cuda tier; in a DIFFUSE_CUDA=SIM build, the
// simulated device's (sim tier). 16x16 images, batch 4, three steps, tiny widths: the simulated
// device runs every kernel thread by thread on one core. On the cpu ([cpu]): the flag itself.
//
// Training. Both devices draw the same batches, noise levels, noise, dropout masks and posterior
// samples (each a Philox stream of (seed, step), the same numbers on either device), and the
// optimizer is the same cpu code on both sides. What remains between the two is the rounding of the
// forward and backward passes: the same f32 math summed in other orders (cuBLASLt and cuDNN without
// TF32, the device's reductions), about 1e-6 relative per result.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "core/device.h"
#include "core/image_io.h"
#include "core/safetensors.h"
#include "tests/test_util.h"
#include "tests/tools/cli_util.h"

using namespace diffuse;

namespace {

constexpr int kSize = 16;
constexpr int kSteps = 3;
constexpr double kLr = 1e-3;
// The tiny test model with dropout, whose masks both devices draw alike.
constexpr const char* kModel = R"({"base_channels":8,"channel_mult":[1,2],"groups":4,"attention_resolutions":[],)"
                               R"("dropout":0.1})";

// A CSV file (a header, then rows) as columns by name; a field that is not a number reads as NaN.
std::map<std::string, std::vector<double>> read_csv(const std::string& path) {
  std::ifstream f(path);
  std::string line;
  std::getline(f, line);
  std::vector<std::string> names;
  std::stringstream hs(line);
  for (std::string n; std::getline(hs, n, ',');) names.push_back(n);
  std::map<std::string, std::vector<double>> cols;
  while (std::getline(f, line)) {
    std::stringstream ss(line);
    std::string v;
    for (size_t i = 0; i < names.size() && std::getline(ss, v, ','); ++i) {
      char* end = nullptr;
      const double d = std::strtod(v.c_str(), &end);
      cols[names[i]].push_back(end != v.c_str() && *end == 0 ? d : NAN);
    }
  }
  return cols;
}

// A device run's log (out) against the cpu's (ref), of kSteps rows: the named columns.
void check_log(const std::string& ref, const std::string& out, const std::string& log,
               const std::vector<std::string>& columns) {
  // Every logged loss and gradient norm: rounding (~1e-6 relative); 1e-4 relative leaves a margin
  // of 30 and more and is a thousand times below what a wrong batch, noise level, noise draw,
  // dropout mask, posterior sample, a gradient not carried over, or weights not uploaded give
  // (losses of different draws differ by percents). The learning rate, exactly.
  const auto want = read_csv(ref + "/" + log), got = read_csv(out + "/" + log);
  REQUIRE(want.at("step").size() == static_cast<size_t>(kSteps));
  REQUIRE(got.at("step") == want.at("step"));
  CHECK(got.at("lr") == want.at("lr"));
  for (const std::string& c : columns)
    for (size_t s = 0; s < want.at(c).size(); ++s) {
      INFO(c << " at step " << s + 1 << ": " << got.at(c)[s] << " vs " << want.at(c)[s]);
      CHECK(std::fabs(got.at(c)[s] - want.at(c)[s]) <= 1e-4 * std::fabs(want.at(c)[s]));
    }
}

// A device run's checkpoint (out) against the cpu's (ref), after `steps` steps. The weights and
// Adam's moments, as device_cpu_agreement_test.cpp argues: an AdamW step moves a weight by
// lr m / (sqrt(v) + eps), so rounding in a gradient changes it by a relative amount of the same
// order, except where a gradient cancels to the size of its own rounding, where the step may differ
// by up to lr; a wrong gradient moves weights by O(lr) a step. So every weight within 2% of lr per
// step, the moments to 1e-3 of their largest value in the tensor.
//
// With `cancelled` > 0 (one step only), an element whose gradient (m / (1 - beta1) after one step)
// is at most `cancelled` on the cpu and differs between the devices by more than 1% (where
// rounding alone gives ~1e-6 relative) is such a cancellation: its first step, lr g / (|g| + eps),
// may go either way on the two devices, so it is allowed 2 lr, and its moments the rounding of
// such a gradient, (1 - beta1) cancelled and (1 - beta2) cancelled^2. A wrong gradient is no
// cancellation: too many elements taken for one fail the check at the end.
void check_weights(const std::string& ref, const std::string& out, int steps, double cancelled = 0) {
  REQUIRE((cancelled == 0 || steps == 1));
  const SafeTensors a = read_safetensors(ref), b = read_safetensors(out);
  int64_t compared = 0, elements = 0, loose = 0;
  for (const auto& [name, t] : a.tensors) {
    INFO(name);
    REQUIRE(b.tensors.count(name));
    const Tensor& g = b.tensors.at(name);
    if (t.dtype() == DType::i64) {  // opt.step, trainer.state: exactly
      CHECK(g.to_vector_i64() == t.to_vector_i64());
      continue;
    }
    const bool weights = name.rfind("model.", 0) == 0;
    const bool m = name.rfind("opt.m.", 0) == 0, v = name.rfind("opt.v.", 0) == 0;
    if (!weights && !m && !v) continue;
    const std::string param = name.substr(6);  // after "model.", "opt.m." or "opt.v."
    const std::vector<float> first = a.tensors.at("opt.m." + param).to_vector();
    const std::vector<float> first_got = b.tensors.at("opt.m." + param).to_vector();
    const std::vector<float> x = t.to_vector(), y = g.to_vector();
    REQUIRE(x.size() == y.size());
    REQUIRE(first.size() == x.size());
    double scale = 0, worst = 0;
    for (float e : x) scale = std::max(scale, static_cast<double>(std::fabs(e)));
    const double tol = weights ? 0.02 * kLr * steps : 1e-3 * scale;
    const double loose_tol = weights ? 2 * kLr : m ? 0.1 * cancelled : 1e-3 * cancelled * cancelled;
    for (size_t i = 0; i < x.size(); ++i) {
      const double gc = first[i] / 0.1, gd = first_got[i] / 0.1;
      const bool gone = std::fabs(gc) <= cancelled && std::fabs(gc - gd) > 0.01 * std::fabs(gc);
      loose += gone && weights;
      worst = std::max(worst, std::fabs(static_cast<double>(x[i]) - y[i]) / (gone ? std::max(tol, loose_tol) : tol));
    }
    INFO("largest difference " << worst << " of the tolerance");
    CHECK(worst <= 1);
    ++compared;
    if (weights) elements += static_cast<int64_t>(x.size());
  }
  CHECK(compared > 0);
  // The loose bound is for the few gradients that cancel, not for the model.
  INFO(loose << " of " << elements << " elements of cancelled gradients");
  CHECK(loose * 100 <= elements);
}

// Two PNGs of the same images made on two devices. f32 on both sides, a few network evaluations
// from the same noise: the images differ by rounding (~1e-5 of their range), which moves a pixel of
// 255 levels over [-1, 1] only where a value sits on a rounding boundary: by one level, at few
// pixels. A wrong step, noise draw or guidance gradient moves most pixels by many levels.
void check_same_images(const std::string& got_png, const std::string& want_png) {
  const Image8 got = read_image_u8(got_png), want = read_image_u8(want_png);
  REQUIRE(got.pixels.size() == want.pixels.size());
  int64_t differ = 0, worst = 0;
  for (size_t i = 0; i < got.pixels.size(); ++i) {
    const int64_t d = std::abs(static_cast<int>(got.pixels[i]) - static_cast<int>(want.pixels[i]));
    differ += d > 0;
    worst = std::max(worst, d);
  }
  INFO(got_png << ": " << differ << " of " << got.pixels.size() << " pixels differ, by at most " << worst);
  CHECK(worst <= 1);
  CHECK(differ <= static_cast<int64_t>(got.pixels.size()) / 100);
}

// The fraction of pixels two PNGs differ in by more than one level.
double fraction_apart(const std::string& a_png, const std::string& b_png) {
  const Image8 a = read_image_u8(a_png), b = read_image_u8(b_png);
  REQUIRE(a.pixels.size() == b.pixels.size());
  int64_t apart = 0;
  for (size_t i = 0; i < a.pixels.size(); ++i) apart += std::abs(static_cast<int>(a.pixels[i]) - b.pixels[i]) > 1;
  return static_cast<double>(apart) / static_cast<double>(a.pixels.size());
}

// 32 16x16 images in dir, labels cycling through 0..9.
std::string dataset(const std::string& dir) {
  const std::string ip = dir + "/images-idx3-ubyte", lp = dir + "/labels-idx1-ubyte";
  test::write_idx_files(ip, lp, 32, kSize, 9, /*cycle_labels=*/true);
  return "idx:" + ip + "," + lp;
}

// Runs the command; its output must say (or, on the cpu, must not say) that it ran host-driven.
void run_on(std::vector<std::string> args, const std::string& device, const std::string& out_txt,
            const std::string& host_driven) {
  args.insert(args.end(), {"--device", device});
  std::string log;
  const int code = test::run(args, out_txt, &log);
  INFO(log);
  REQUIRE(code == 0);
  CHECK((log.find(host_driven) != std::string::npos) == (device != "cpu"));
}

// `diffuse sample` of 2 images, 3 steps, seed 21, on `device`, the extra arguments first; the PNG.
std::string draw(const std::string& dir, const std::string& name, const std::string& ckpt,
                   const std::vector<std::string>& extra, const std::string& device) {
  const std::string png = dir + "/" + name + "_" + device + ".png";
  std::vector<std::string> a = {test::cli_path(), "sample", ckpt};
  a.insert(a.end(), extra.begin(), extra.end());
  a.insert(a.end(), {"-n", "2", "--batch", "2", "--steps", "3", "--seed", "21", "--grid", png});
  run_on(a, device, png + ".txt", "host-driven");
  return png;
}

}  // namespace

TEST_CASE("train-classifier --device cuda agrees with the cpu; sample --device cuda with its guidance gives the "
          "cpu's images",
          "[cuda][tools]") {
  if (!cuda_available()) return;
  test::TempDir dir;
  const std::string data = dataset(dir.path);
  auto train_args = [&](const std::string& out) {
    return std::vector<std::string>{test::cli_path(), "train-classifier", "--preset", "tiny", "--model", kModel,
                                    "--dataset", data, "--batch", "4", "--steps", std::to_string(kSteps), "--lr",
                                    std::to_string(kLr), "--warmup", "0", "--log-every", "1", "--checkpoint-every",
                                    "0", "--eval-count", "8", "--seed", "7", "--out", out};
  };
  const char* says = "host-driven on cuda:0";
  run_on(train_args(dir / "clf_cpu"), "cpu", dir / "clf_cpu.txt", says);
  run_on(train_args(dir / "clf_cuda"), "cuda", dir / "clf_cuda.txt", says);
  // Not the logged accuracy: the classifier's head starts at zero, so after a few steps its logits
  // are within ~lr of a tie and rounding picks the arg max. The losses, norms and weights show it.
  check_log(dir / "clf_cpu", dir / "clf_cuda", "classifier_log.csv", {"loss", "grad_norm"});
  check_weights(dir / "clf_cpu/classifier.safetensors", dir / "clf_cuda/classifier.safetensors", kSteps);
  // The score at the end ran (on the device's replica), for the same reason not compared.
  CHECK(test::slurp_text(dir / "clf_cuda.txt").find("% on 8 training images") != std::string::npos);

  // Guidance of a diffusion model (trained 1 step on the cpu) by the cpu's classifier: the model
  // and the classifier on the GPU, grad log p(y | z_t) through the device's backward pass. This
  // classifier is barely trained (its gradient is small), so the scale is large: the guidance moves
  // several times more pixels than check_same_images lets differ (checked on the cpu), so a
  // gradient lost or wrong on the device shows.
  REQUIRE(test::run(test::train_args(data, dir / "run", 1, 0), dir / "run.txt") == 0);
  const std::string ckpt = dir / "run/checkpoint.safetensors";
  const std::vector<std::string> guided = {"--sampler", "ddim", "--classifier", dir / "clf_cpu/classifier.safetensors",
                                           "--classifier-scale", "1000", "--class", "3"};
  const std::string want = draw(dir.path, "guided", ckpt, guided, "cpu");
  CHECK(fraction_apart(want, draw(dir.path, "plain", ckpt, {"--sampler", "ddim"}, "cpu")) > 0.03);
  check_same_images(draw(dir.path, "guided", ckpt, guided, "cuda"), want);
}

TEST_CASE("sample --device cuda --sampler langevin and pc give the cpu's images", "[cuda][tools]") {
  if (!cuda_available()) return;
  test::TempDir dir;
  REQUIRE(test::run(test::train_args(dataset(dir.path), dir / "run", 1, 0), dir / "run.txt") == 0);
  const std::string ckpt = dir / "run/checkpoint.safetensors";
  // Each Langevin step's noise is the same Philox draw on both devices, and pc's step size is a
  // ratio of norms of the model's output (a sum over the batch, rounded alike to ~1e-6).
  const std::vector<std::vector<std::string>> cases = {
      {"--sampler", "langevin", "--corrector-steps", "1", "--snr", "0.16"},
      {"--sampler", "pc", "--corrector-steps", "1", "--snr", "0.16"},
  };
  for (const auto& c : cases) {
    INFO(c[1]);
    check_same_images(draw(dir.path, c[1], ckpt, c, "cuda"), draw(dir.path, c[1], ckpt, c, "cpu"));
  }
}

TEST_CASE("train-autoencoder --device cuda agrees with the cpu", "[cuda][tools]") {
  if (!cuda_available()) return;
  test::TempDir dir;
  const std::string data = dataset(dir.path);
  auto train_args = [&](const std::string& out, int steps = kSteps) {
    return std::vector<std::string>{test::cli_path(), "train-autoencoder", "--model", R"({"base_channels": 8})",
                                    "--dataset", data, "--batch", "4", "--steps", std::to_string(steps), "--lr",
                                    std::to_string(kLr), "--warmup", "0", "--log-every", "1", "--checkpoint-every",
                                    "0", "--eval-count", "4", "--seed", "7", "--out", out};
  };
  const char* says = "host-driven on cuda:0";
  run_on(train_args(dir / "ae_cpu"), "cpu", dir / "ae_cpu.txt", says);
  run_on(train_args(dir / "ae_cuda"), "cuda", dir / "ae_cuda.txt", says);
  check_log(dir / "ae_cpu", dir / "ae_cuda", "autoencoder_log.csv", {"loss", "mse", "kl", "grad_norm"});
  // The weights after one step. Some of this autoencoder's gradients cancel to rounding (~1e-8 on
  // both devices: biases of the decoder's innermost level), whose first Adam steps then go either
  // way by up to lr; their weights feed near-zero residual branches (conv2 starts at ~1e-3), so
  // from the second step on such a difference changes the gradients of the weights around them by
  // O(1) and the weights of the two runs drift apart by O(lr), with no error anywhere: the logs
  // (above) still agree. 1e-6, ten times that noise, bounds a cancelled gradient; on the simulated
  // device 46 of the 173,329 weights have one.
  run_on(train_args(dir / "ae1_cpu", 1), "cpu", dir / "ae1_cpu.txt", says);
  run_on(train_args(dir / "ae1_cuda", 1), "cuda", dir / "ae1_cuda.txt", says);
  check_weights(dir / "ae1_cpu/autoencoder.safetensors", dir / "ae1_cuda/autoencoder.safetensors", 1, 1e-6);
  // The reconstructions of the end (the device's encoder and decoder on the final weights): the
  // score within the logs' tolerance, the grid within the images'.
  const auto want = read_csv(dir / "ae_cpu/autoencoder_eval.csv"), got = read_csv(dir / "ae_cuda/autoencoder_eval.csv");
  REQUIRE(want.at("mse").size() == 1);
  REQUIRE(got.at("mse").size() == 1);
  CHECK(std::fabs(got.at("mse")[0] - want.at("mse")[0]) <= 1e-4 * want.at("mse")[0]);
  check_same_images(dir / "ae_cuda/reconstructions_3.png", dir / "ae_cpu/reconstructions_3.png");
}

TEST_CASE("train-classifier and train-autoencoder --device: in --help, checked, and a missing GPU refused with "
          "nothing written",
          "[cpu][tools]") {
  test::TempDir dir;
  const std::string data = dataset(dir.path);
  // One past the last GPU, or cuda on a machine without one.
  const std::string missing = cuda_available() ? "cuda:" + std::to_string(cuda_device_count()) : "cuda";
  for (const char* cmd : {"train-classifier", "train-autoencoder"}) {
    INFO(cmd);
    std::string log;
    REQUIRE(test::run({test::cli_path(), cmd, "--help"}, dir / "help.txt", &log) == 0);
    CHECK(log.find("--device") != std::string::npos);
    CHECK(log.find("host-driven") != std::string::npos);
    CHECK(test::run({test::cli_path(), cmd, "--dataset", data, "--device", "gpu", "--out", dir / "bad"},
                    dir / "bad.txt", &log) != 0);
    CHECK(log.find("cpu, cuda, cuda:N or auto") != std::string::npos);
    CHECK(test::run({test::cli_path(), cmd, "--dataset", data, "--steps", "1", "--batch", "4", "--device", missing,
                     "--out", dir / "none"},
                    dir / "none.txt", &log) != 0);
    CHECK(log.find("requested but") != std::string::npos);
    CHECK_FALSE(std::filesystem::exists(dir / "none"));
    CHECK_FALSE(std::filesystem::exists(dir / "bad"));
  }
}
