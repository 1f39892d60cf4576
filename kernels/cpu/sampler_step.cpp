// kernels/cpu/sampler_step.cpp: the reference of the fused sampler step (see kernels/sampler_step.h
// for the update and its sources). B batch, N elements per sample, C innermost channels.
#include "kernels/sampler_step.h"

#include <algorithm>
#include <cmath>

#include "core/check.h"
#include "core/philox.h"
#include "core/profile.h"

namespace diffuse::kernels {

void sampler_step_cpu(const SamplerStepParams& p, const float* z, const float* model_out,
                      const float* model_out_uncond, float* z_next, int64_t n_per_sample, int batch) {
  DF_PROFILE("sampler_step");
  DF_CHECK(p.coeffs != nullptr, "sampler_step: coefficients missing");
  DF_CHECK(z && model_out && z_next, "sampler_step: null tensor");
  DF_CHECK(!p.learned_variance || (p.channels > 0 && n_per_sample % p.channels == 0),
           "sampler_step: learned variance needs N divisible by C, got N=", n_per_sample, " C=", p.channels);
  const int64_t C = p.channels;
  const uint64_t seed = p.seed_xor ? p.seed ^ *p.seed_xor : p.seed;
  // Learned variance doubles the channels of the model output; the prediction is the first half.
  const int64_t out_per_sample = p.learned_variance ? 2 * n_per_sample : n_per_sample;
  const float w = p.guidance_scale;
  for (int b = 0; b < batch; ++b) {
    const SamplerStepCoeffs k = p.coeffs[b];
    const int64_t base = static_cast<int64_t>(b) * n_per_sample;
#pragma omp parallel for schedule(static) if (n_per_sample > 32768)
    for (int64_t e = 0; e < n_per_sample; ++e) {
      const int64_t i = base + e;
      const int64_t o = p.learned_variance ? static_cast<int64_t>(b) * out_per_sample + (e / C) * 2 * C + e % C
                                           : i;
      float m = model_out[o];
      if (model_out_uncond) m = (1.f + w) * m - w * model_out_uncond[o];
      const float zi = z[i];
      float x0, eps;
      switch (p.prediction) {
        case StepPrediction::eps: eps = m; x0 = (zi - k.sigma * eps) / k.alpha; break;
        case StepPrediction::x0: x0 = m; eps = (zi - k.alpha * x0) / k.sigma; break;
        default:  // v = alpha eps - sigma x0, alpha^2 + sigma^2 = 1
          x0 = k.alpha * zi - k.sigma * m;
          eps = k.sigma * zi + k.alpha * m;
          break;
      }
      if (p.clip_x0) {
        x0 = std::min(std::max(x0, p.clip_min), p.clip_max);
        if (k.sigma > 0) eps = (zi - k.alpha * x0) / k.sigma;
      }
      if (p.eps_shift) {
        eps += p.eps_shift[i];
        x0 = (zi - k.sigma * eps) / k.alpha;
      }
      float next = k.c_z * zi + k.c_x0 * x0;
      // Skip zero terms: eps is infinite-free but 0 * inf would poison the result at sigma = 0.
      if (k.c_eps != 0.f) next += k.c_eps * eps;
      if (k.c_aux != 0.f && p.aux) next += k.c_aux * p.aux[i];
      if (k.c_noise != 0.f) {
        float sd = k.c_noise;
        if (p.learned_variance) {
          // The variance channel sits C after its prediction channel (NHWC, channels doubled).
          const float r = model_out[o + C];
          const float v = 0.5f * (r + 1.f);
          sd *= std::exp(0.5f * (v * k.log_var_max + (1.f - v) * k.log_var_min));
        }
        next += sd * philox_normal(seed, p.offset, static_cast<uint64_t>(i));
      }
      if (p.x0_out) p.x0_out[i] = x0;
      z_next[i] = next;
    }
  }
}

}  // namespace diffuse::kernels
