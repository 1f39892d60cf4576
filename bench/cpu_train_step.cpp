// bench/cpu_train_step: one training step and one DDIM sampling run of a UNet preset on the
// cpu, the figures that decide how good the quickstart's samples are.
//
//   build/bench/cpu_train_step [--preset tiny] [--batch 64] [--steps 20] [--sample-batch 256]
//                              [--sample-steps 50] [--threads N] [--lr 2e-4] [--json out.json]
//                              [--profile FILE]
//
// Training step = forward, eps-MSE loss, backward, clip, AdamW + EMA, exactly what
// `diffuse train` runs (random data of the dataset's shape; data loading is not timed).
// Prints the median ms per step (after 3 warm-up steps), images/s, peak resident memory
// (getrusage), and the allocator's system allocations during the timed steps (0 in the steady
// state). Sampling: DDIM with the same UNet under no_grad, timed after one untimed model call at
// the sampling batch (as bench/torch_cpu_tiny.py does: the first call at a new batch size grows
// the allocator's cache). The JSON also carries the parameter count and the peak RSS of the whole
// run, which bench/torch_cpu_tiny.py checks and compares. --profile FILE writes the per-op profile
// (core/profile.h) of one more training step and one sampling model call, after the timed runs.
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "autograd/elementwise.h"
#include "autograd/tape.h"
#include "core/allocator.h"
#include "core/file_io.h"
#include "core/profile.h"
#include "kernels/noise.h"
#include "models/diffusion/sampler.h"
#include "models/diffusion/schedule.h"
#include "models/nn/unet.h"
#include "models/train/ema.h"
#include "models/train/optim.h"

#if defined(_OPENMP)
#include <omp.h>
#endif

using namespace diffuse;
using Clock = std::chrono::steady_clock;

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

double peak_rss_mib() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss / 1024.0;  // Linux reports KiB
}

}  // namespace

int main(int argc, char** argv) {
  std::string preset = "tiny", json, profile;
  int batch = 64, steps = 20, sample_batch = 256, sample_steps = 50, threads = 0;
  float lr = 2e-4f;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) { std::fprintf(stderr, "%s needs a value\n", a.c_str()); std::exit(2); }
      return argv[++i];
    };
    if (a == "--preset") preset = next();
    else if (a == "--batch") batch = std::stoi(next());
    else if (a == "--steps") steps = std::stoi(next());
    else if (a == "--sample-batch") sample_batch = std::stoi(next());
    else if (a == "--sample-steps") sample_steps = std::stoi(next());
    else if (a == "--threads") threads = std::stoi(next());
    else if (a == "--lr") lr = std::stof(next());
    else if (a == "--json") json = next();
    else if (a == "--profile") profile = next();
    else {
      std::fprintf(stderr, "usage: cpu_train_step [--preset P] [--batch N] [--steps N] [--sample-batch N] "
                           "[--sample-steps N] [--threads N] [--lr X] [--json FILE] [--profile FILE]\n");
      return a == "--help" ? 0 : 2;
    }
  }
#if defined(_OPENMP)
  if (threads > 0) omp_set_num_threads(threads);
  threads = omp_get_max_threads();
#else
  threads = 1;
#endif
  try {
    nn::UNetConfig cfg = nn::UNetConfig::preset(preset);
    nn::UNet unet(cfg, 0);
    unet.train();
    auto params = unet.named_parameters();
    train::AdamWOptions ao;
    ao.lr = lr;
    train::AdamW opt(params, ao);
    train::EMA ema(params, 0.999f, true);
    auto sched = diffusion::DiscreteSchedule::linear(1000);
    const int64_t H = cfg.image_size, C = cfg.in_channels;
    Tensor x = Tensor::rand({batch, H, H, C}, 1, 0, -1.f, 1.f);
    std::vector<float> tf(batch), alpha(batch), sigma(batch);
    for (int b = 0; b < batch; ++b) {
      int t = (b * 997) % 1000;
      tf[b] = static_cast<float>(t);
      alpha[b] = static_cast<float>(std::sqrt(sched.alphas_cumprod()[t]));
      sigma[b] = static_cast<float>(std::sqrt(1 - sched.alphas_cumprod()[t]));
    }
    Tensor tt = Tensor::from_vector(tf, {batch}), at = Tensor::from_vector(alpha, {batch}),
           st = Tensor::from_vector(sigma, {batch});
    std::vector<double> ms;
    MemoryStats before{};
    auto train_step = [&](int s) {
      Tensor z = Tensor::empty(x.shape()), eps = Tensor::empty(x.shape());
      kernels::noise_forward(x, at, st, 7, static_cast<uint64_t>(s), z, eps);
      ag::Var out = unet.forward(ag::Var(z), tt);
      ag::Var loss = ag::mse(out, ag::Var(eps));
      ag::backward(loss);
      train::clip_grad_norm(params, 1.0);
      opt.step(&ema);
      opt.zero_grad();
    };
    for (int s = 0; s < steps + 3; ++s) {
      if (s == 3) before = cpu_memory_stats();
      auto t0 = Clock::now();
      train_step(s);
      if (s >= 3) ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    }
    MemoryStats after = cpu_memory_stats();
    double step_ms = median(ms);
    double train_rss = peak_rss_mib();
    std::printf("preset %s (%lld parameters), %d threads\n", preset.c_str(),
                static_cast<long long>(unet.num_parameters()), threads);
    std::printf("train  batch %d: %.1f ms/step (median of %d), %.1f images/s, peak RSS %.0f MiB, "
                "system allocations in the timed steps: %llu\n",
                batch, step_ms, steps, batch * 1000.0 / step_ms, train_rss,
                static_cast<unsigned long long>(after.system_allocs - before.system_allocs));

    unet.eval();
    ag::NoGrad ng;
    diffusion::SamplerOptions o;
    o.shape = Shape{sample_batch, H, H, C};
    o.steps = sample_steps;
    o.clip_x0 = true;
    diffusion::Denoiser f = [&unet](const Tensor& z, const Tensor& t, const Tensor& labels) {
      return unet.forward(ag::Var(z), t, labels).value();
    };
    const Tensor t_mid = Tensor::full({sample_batch}, 500.f);
    f(Tensor::rand(o.shape, 2, 0, -1.f, 1.f), t_mid, Tensor());  // warm-up, untimed
    auto t0 = Clock::now();
    diffusion::sample_ddim(sched, f, o);
    double sample_s = std::chrono::duration<double>(Clock::now() - t0).count();
    std::printf("sample DDIM %d steps, batch %d: %.2f s, %.1f images/s, peak RSS %.0f MiB\n", sample_steps,
                sample_batch, sample_s, sample_batch / sample_s, peak_rss_mib());
    if (!profile.empty()) {
      std::FILE* pf = std::fopen(profile.c_str(), "w");
      if (!pf) throw std::runtime_error("cannot write the profile to " + profile);
      std::fprintf(pf, "diffuse cpu_train_step, preset %s, %d threads\n\n", preset.c_str(), threads);
      const Tensor zs = Tensor::rand(o.shape, 3, 0, -1.f, 1.f);
      {
        ag::set_grad_enabled(true);  // inside the sampler's NoGrad scope
        unet.train();
        prof::reset();
        prof::set_enabled(true);
        auto p0 = Clock::now();
        train_step(steps + 3);
        const double total = std::chrono::duration<double, std::milli>(Clock::now() - p0).count();
        prof::set_enabled(false);
        char title[128];
        std::snprintf(title, sizeof title, "training step, batch %d", batch);
        prof::report(pf, title, 25, total);
        unet.eval();
        ag::set_grad_enabled(false);
      }
      prof::reset();
      prof::set_enabled(true);
      auto p0 = Clock::now();
      f(zs, t_mid, Tensor());
      const double total = std::chrono::duration<double, std::milli>(Clock::now() - p0).count();
      prof::set_enabled(false);
      char title[128];
      std::snprintf(title, sizeof title, "\nsampling model call, batch %d", sample_batch);
      prof::report(pf, title, 25, total);
      std::fclose(pf);
      std::printf("profile written to %s\n", profile.c_str());
    }
    if (!json.empty()) {
      char buf[768];
      int n = std::snprintf(buf, sizeof buf,
                            "{\"preset\": \"%s\", \"parameters\": %lld, \"threads\": %d, \"batch\": %d, "
                            "\"steps\": %d, \"train_ms_per_step\": %.3f, \"train_images_per_s\": %.2f, "
                            "\"train_peak_rss_mib\": %.1f, \"sample_batch\": %d, \"sample_steps\": %d, "
                            "\"sample_seconds\": %.3f, \"sample_images_per_s\": %.2f, \"peak_rss_mib\": %.1f}\n",
                            preset.c_str(), static_cast<long long>(unet.num_parameters()), threads, batch, steps,
                            step_ms, batch * 1000.0 / step_ms, train_rss, sample_batch, sample_steps, sample_s,
                            sample_batch / sample_s, peak_rss_mib());
      write_file_atomic(json, buf, static_cast<size_t>(n));
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cpu_train_step: %s\n", e.what());
    return 1;
  }
  return 0;
}
