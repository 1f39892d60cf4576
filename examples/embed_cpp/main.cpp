// examples/embed_cpp/main.cpp: a denoiser you write yourself, plugged into diffuse's samplers,
// twice: as a C++ callable through the C++ API, and as a C callback through the C API. Both give
// the same samples, bit for bit.
//
// The "network" is the exact denoiser of Gaussian data x ~ N(mu, s^2) per element: with
// z = alpha x + sigma eps, E[eps | z] = sigma (z - alpha mu) / (alpha^2 s^2 + sigma^2). Swap in
// your own model: anything that maps (z_t, t, labels) to a prediction of eps.
#include <cmath>
#include <cstdio>
#include <vector>

#include <diffuse/diffuse.h>                      // the C API
#include <diffuse/models/diffusion/sampler.h>     // the C++ API: samplers, schedules, Tensor

namespace dd = diffuse::diffusion;

constexpr double kMu = 0.25, kS = 0.3;  // the data
constexpr int64_t kN = 512, kH = 4, kW = 4, kC = 1;

// E[eps | z_t] for one element at noise level (alpha, sigma).
static float gaussian_eps(float z, double alpha, double sigma) {
  return static_cast<float>(sigma * (z - alpha * kMu) / (alpha * alpha * kS * kS + sigma * sigma));
}

// The C callback: user_data carries the C API schedule, to read alpha_t and sigma_t from.
static int c_denoiser(void* user_data, const float* x, const float* t, const int64_t* /*labels*/, int64_t n,
                      float* out) {
  const auto* schedule = static_cast<const diffuse_schedule*>(user_data);
  const int64_t per = kH * kW * kC;
  for (int64_t b = 0; b < n; ++b) {
    double alpha = 0, sigma = 0;
    if (diffuse_schedule_alpha_sigma(schedule, t[b], &alpha, &sigma) != DIFFUSE_OK) return 1;  // abort
    for (int64_t j = b * per; j < (b + 1) * per; ++j) out[j] = gaussian_eps(x[j], alpha, sigma);
  }
  return 0;
}

int main() {
  // ---- 1. the C++ API: a schedule, a std::function denoiser, a sampler ----
  dd::DiscreteSchedule schedule = dd::DiscreteSchedule::cosine(1000);
  dd::Denoiser denoiser = [&](const diffuse::Tensor& z, const diffuse::Tensor& t, const diffuse::Tensor&) {
    diffuse::Tensor eps = diffuse::Tensor::empty(z.shape());
    const int64_t per = z.numel() / z.size(0);
    for (int64_t i = 0; i < z.numel(); ++i) {
      const double ti = t.data<float>()[i / per];  // continuous time in (0, 1]
      eps.data<float>()[i] = gaussian_eps(z.data<float>()[i], schedule.alpha(ti), schedule.sigma(ti));
    }
    return eps;
  };
  dd::SamplerOptions o;
  o.shape = diffuse::Shape{kN, kH, kW, kC};
  o.seed = 7;
  o.steps = 50;
  o.spacing = dd::Spacing::logsnr;  // uniform in log-SNR: a good grid for DPM-Solver++(2M)
  diffuse::Tensor x = dd::sample_dpmpp_2m(schedule, denoiser, o);

  double mean = 0, var = 0;
  std::vector<float> cpp = x.to_vector();
  for (float v : cpp) mean += v / static_cast<double>(cpp.size());
  for (float v : cpp) var += (v - mean) * (v - mean) / static_cast<double>(cpp.size() - 1);
  std::printf("C++ API, dpm++2m, 50 steps: mean %.4f (data %.2f), std %.4f (data %.2f)\n", mean, kMu, std::sqrt(var), kS);

  // ---- 2. the same through the C API, with the C callback ----
  diffuse_schedule* cs = nullptr;
  diffuse_sampler* sampler = nullptr;
  std::vector<float> c(cpp.size());
  int rc = 1;
  if (diffuse_schedule_create("cosine", 1000, &cs) != DIFFUSE_OK || diffuse_sampler_create("dpm++2m", &sampler) != DIFFUSE_OK ||
      diffuse_sampler_set_steps(sampler, 50) != DIFFUSE_OK || diffuse_sampler_set_spacing(sampler, "logsnr") != DIFFUSE_OK ||
      diffuse_sampler_set_clip(sampler, 0) != DIFFUSE_OK || diffuse_sampler_set_batch(sampler, kN) != DIFFUSE_OK ||
      diffuse_sample_callback(sampler, cs, c_denoiser, cs, kN, kH, kW, kC, 7, nullptr, nullptr, c.data(), c.size()) !=
          DIFFUSE_OK) {
    std::fprintf(stderr, "embed_cpp: %s\n", diffuse_last_error());
  } else {
    const bool same = c == cpp;
    std::printf("C API with a C callback: %s the C++ API's samples\n", same ? "exactly" : "NOT");
    // 0.02: ~6 standard errors of a mean of 8192 values (0.3 / sqrt(8192) = 0.0033), with room
    // for the 50-step discretisation.
    rc = same && std::fabs(mean - kMu) < 0.02 && std::fabs(std::sqrt(var) - kS) < 0.02 ? 0 : 1;
  }
  diffuse_sampler_free(sampler);
  diffuse_schedule_free(cs);
  return rc;
}
