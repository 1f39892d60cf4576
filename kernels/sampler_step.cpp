// kernels/sampler_step.cpp: the reference of the fused sampler step (see kernels/sampler_step.h
// for the update and its sources). B batch, N elements per sample, C innermost channels.
#include "kernels/sampler_step.h"


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
  for (int b = 0; b < batch; ++b) {
    const SamplerStepCoeffs k = p.coeffs[b];
    const int64_t base = static_cast<int64_t>(b) * n_per_sample;
#pragma omp parallel for schedule(static) if (n_per_sample > 32768)
    for (int64_t e = 0; e < n_per_sample; ++e) {
      const int64_t i = base + e;
      const int64_t o = p.learned_variance ? static_cast<int64_t>(b) * out_per_sample + (e / C) * 2 * C + e % C
                                           : i;
      SamplerStepElement s = sampler_step_element(p, k, model_out, model_out_uncond, z[i], i, o);
      if (s.noise_std != 0.f) s.next += s.noise_std * philox_normal(seed, p.offset, static_cast<uint64_t>(i));
      if (p.x0_out) p.x0_out[i] = s.x0;
      z_next[i] = s.next;
    }
  }
}

}  // namespace diffuse::kernels
