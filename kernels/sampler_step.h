// kernels/sampler_step.h: one fused pass of a diffusion sampler step.
//
// Every first- and second-order sampler in models/diffusion (DDPM ancestral, DDIM with eta, VDM
// ancestral, DPM-Solver++(2M), Euler on Karras sigmas) moves the latent by a per-sample linear
// combination of the current latent z, the model's data prediction x0, its noise prediction eps,
// one auxiliary tensor (an older data prediction) and fresh Gaussian noise:
//
//   z_next = c_z * z + c_x0 * x0 + c_eps * eps + c_aux * aux + std * noise
//
// where, in one pass over the elements, the kernel
//   1. combines classifier-free guidance: out = (1 + w) * cond - w * uncond (Ho & Salimans 2022,
//      eq. 6), in the prediction's own space (eps, x0 or v: the conversions are affine in the
//      prediction with the same z, so combining before or after converting gives the same result);
//   2. converts the prediction to (x0, eps) with z = alpha x0 + sigma eps (v = alpha eps - sigma x0,
//      Salimans & Ho 2022, sec. 4);
//   3. optionally clips x0 to [clip_min, clip_max] and re-derives eps from the clipped x0
//      (improved-DDPM `p_mean_variance(clip_denoised=True)` then `_predict_eps_from_xstart`);
//   4. adds eps_shift to eps and re-derives x0 (classifier guidance, Dhariwal & Nichol 2021,
//      Algorithm 2: eps <- eps - sqrt(1 - alpha_bar) * s * grad log p(y|z));
//   5. draws noise from Philox (seed, offset) at the element's global index b * n_per_sample + e,
//      so `Tensor::randn(shape, seed, offset)` and a CUDA kernel draw the same value.
//
// With a learned variance (improved DDPM, Nichol & Dhariwal 2021, eq. 15) the model returns 2C
// channels in the last dimension: the first C are the prediction, the last C the raw r in [-1, 1],
// and the noise std is exp(0.5 * (v log_var_max + (1 - v) log_var_min)) with v = (r + 1) / 2
// (as in improved-DDPM's code), times c_noise.
//
// Shapes: B batch, N = n_per_sample elements of one sample (H*W*C, or any shape with C innermost).
// z, z_next, aux, eps_shift, x0_out: (B, N). model_out, model_out_uncond: (B, N) or, learned
// variance, (B, N / C, 2C). Coefficients: one SamplerStepCoeffs per sample. z_next may alias z.
#pragma once

#include <cstdint>
#include <math.h>

#include "core/hd.h"
#include "core/tensor.h"

namespace diffuse::kernels {

enum class StepPrediction : int { eps = 0, x0 = 1, v = 2 };

// Per-sample coefficients: plain floats so an array of them copies to a device as it is.
struct SamplerStepCoeffs {
  float alpha = 1, sigma = 0;  // z = alpha * x0 + sigma * eps at the current noise level
  float c_z = 0, c_x0 = 0, c_eps = 0, c_aux = 0;
  float c_noise = 0;  // noise std (fixed variance), or a multiplier of the learned std
  float log_var_min = 0, log_var_max = 0;  // learned variance: log beta_tilde_t and log beta_t
};

struct SamplerStepParams {
  StepPrediction prediction = StepPrediction::eps;
  const SamplerStepCoeffs* coeffs = nullptr;  // batch entries
  float guidance_scale = 0;  // w, used when model_out_uncond is given
  bool clip_x0 = false;
  float clip_min = -1, clip_max = 1;
  bool learned_variance = false;
  int64_t channels = 1;              // C, the innermost dimension (learned variance layout)
  const float* aux = nullptr;        // nullable: one more (B, N) term, times c_aux (an older x0
                                     // for DPM-Solver++(2M), the first stage's x0 for Heun)
  const float* eps_shift = nullptr;  // nullable: added to eps after clipping (classifier guidance)
  float* x0_out = nullptr;           // nullable: receives the final x0 prediction
  uint64_t seed = 0, offset = 0;     // Philox stream of the step's noise
  // Nullable: the stream's seed is seed ^ *seed_xor, read when the step runs (device memory for
  // the CUDA kernel), so a captured CUDA graph of a sampling loop draws another seed's noise per
  // replay without being captured again.
  const uint64_t* seed_xor = nullptr;
};

// Element i of sample b (1. to 4. above): its z_next before the noise term, its x0 and its noise
// std (0: no noise). o is the element's index into model_out (i without a learned variance; see
// Shapes). The one definition of the per-element math, which the reference and the CUDA kernel
// both call; each adds noise_std times its Philox draw of element i.
struct SamplerStepElement {
  float next, x0, noise_std;
};
DF_HD_INLINE SamplerStepElement sampler_step_element(const SamplerStepParams& p, const SamplerStepCoeffs& k,
                                                    const float* model_out, const float* model_out_uncond,
                                                    float zi, int64_t i, int64_t o) {
  float m = model_out[o];
  if (model_out_uncond) m = (1.f + p.guidance_scale) * m - p.guidance_scale * model_out_uncond[o];
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
    // Comparisons, so a NaN prediction stays NaN (and shows) instead of clipping to a bound.
    x0 = x0 < p.clip_min ? p.clip_min : (x0 > p.clip_max ? p.clip_max : x0);
    if (k.sigma > 0) eps = (zi - k.alpha * x0) / k.sigma;
  }
  if (p.eps_shift) {
    eps += p.eps_shift[i];
    x0 = (zi - k.sigma * eps) / k.alpha;
  }
  float next = k.c_z * zi + k.c_x0 * x0;
  // Zero terms are skipped: at sigma = 0, 0 * inf would poison the result.
  if (k.c_eps != 0.f) next += k.c_eps * eps;
  if (k.c_aux != 0.f && p.aux) next += k.c_aux * p.aux[i];
  float sd = k.c_noise;
  if (sd != 0.f && p.learned_variance) {
    // The variance channel sits C after its prediction channel (NHWC, channels doubled).
    const float v = 0.5f * (model_out[o + p.channels] + 1.f);
    sd *= expf(0.5f * (v * k.log_var_max + (1.f - v) * k.log_var_min));
  }
  return {next, x0, sd};
}

// The reference: plain loops, OpenMP over elements. z_next may be z (in place).
void sampler_step_cpu(const SamplerStepParams& p, const float* z, const float* model_out,
                      const float* model_out_uncond, float* z_next, int64_t n_per_sample, int batch);

}  // namespace diffuse::kernels

// ---- On a GPU ------------------------------------------------------------------------------------
// launcher of kernels/cuda/sampler_step.cu, the fused sampler step
// of kernels/sampler_step.h (diffuse::cuda on the GPU, diffuse::emu under the emulator).
#define DIFFUSE_SAMPLER_STEP_LAUNCHERS                                                                 \
  /* The update of kernels/sampler_step.h, element for element what sampler_step_cpu computes, with \
     the same Philox noise. Every pointer, including p.coeffs (batch entries), p.aux, p.eps_shift    \
     and p.x0_out, is device memory (host memory under the emulator). z_next may alias z. */         \
  void sampler_step(const kernels::SamplerStepParams& p, const float* z, const float* model_out,      \
                    const float* model_out_uncond, float* z_next, int64_t n_per_sample, int batch, void* stream);

namespace diffuse {
namespace cuda { DIFFUSE_SAMPLER_STEP_LAUNCHERS }
namespace emu { DIFFUSE_SAMPLER_STEP_LAUNCHERS }
}  // namespace diffuse

// The Tensor-level op on a GPU, which kernels/sampler_step.cpp calls for a tensor on a CUDA device
// (kernels/cuda/sampler_step.cu; only in a build with the CUDA backend).
// z, model_out (and the optional ones) f32 on one GPU; p.coeffs, p.aux, p.eps_shift, p.x0_out and
// p.seed_xor must already be device pointers.
namespace diffuse::cuda {
void sampler_step(const kernels::SamplerStepParams& p, const Tensor& z, const Tensor& model_out,
                  const Tensor& model_out_uncond, Tensor& z_next);
}  // namespace diffuse::cuda
