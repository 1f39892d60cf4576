// kernels/cuda/sampler_step.cu: one fused pass of a sampler step (the update, its options and
// sources are in kernels/sampler_step.h, whose sampler_step_element is the per-element math of both
// this kernel and the reference, kernels/sampler_step.cpp).
//
// Memory-bound: per element it reads z, one or two model outputs (the learned-variance channel
// too) and optional aux / eps_shift, and writes z_next and optionally x0. Each thread takes one
// Philox block, i.e. four consecutive elements of the flattened (B, N) latent, so each block of
// noise is generated once (not four times) and the noise equals Tensor::randn's element for
// element; the sample index is advanced per element, as the four may straddle two samples.
#include "kernels/cuda/portable.cuh"

#include <algorithm>
#include <cmath>

#include "core/check.h"
#include "core/philox.h"
#include "core/stream.h"
#include "kernels/cuda/common.cuh"
#include "kernels/sampler_step.h"
#include "kernels/cuda/tensor_args.h"

namespace diffuse::DF_BACKEND {

namespace {

using kernels::SamplerStepCoeffs;
using kernels::SamplerStepParams;

constexpr int kBlock = 256;

// z and z_next may alias (an in-place step): no __restrict__ on them. Each element is read and
// written by the same thread, so aliasing is safe.
__global__ void __launch_bounds__(kBlock) sampler_step_kernel(SamplerStepParams p, const float* z,
                                                              const float* __restrict__ model_out,
                                                              const float* __restrict__ model_out_uncond,
                                                              float* z_next, int64_t n_per_sample, int64_t n) {
  const int64_t C = p.channels;
  const int64_t out_per_sample = p.learned_variance ? 2 * n_per_sample : n_per_sample;
  const uint64_t seed = p.seed_xor ? p.seed ^ *p.seed_xor : p.seed;
  const int64_t blocks = (n + 3) / 4;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t blk = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; blk < blocks; blk += stride) {
    const int64_t i0 = 4 * blk;
    int64_t b = i0 / n_per_sample;
    int64_t sample_end = (b + 1) * n_per_sample;
    float noise[4];
    bool have_noise = false;
    // Unrolled, so noise[j] is a register rather than a local-memory array.
    DF_UNROLL for (int j = 0; j < 4; ++j) {
      const int64_t i = i0 + j;
      if (i >= n) break;
      while (i >= sample_end) ++b, sample_end += n_per_sample;
      const SamplerStepCoeffs k = p.coeffs[b];
      const int64_t e = i - b * n_per_sample;
      const int64_t o = p.learned_variance ? b * out_per_sample + (e / C) * 2 * C + e % C : i;
      kernels::SamplerStepElement s = kernels::sampler_step_element(p, k, model_out, model_out_uncond, z[i], i, o);
      if (s.noise_std != 0.f) {
        if (!have_noise) {
          philox_normal4(philox_block(seed, p.offset, static_cast<uint64_t>(blk)), noise);
          have_noise = true;
        }
        s.next += s.noise_std * noise[j];
      }
      if (p.x0_out) p.x0_out[i] = s.x0;
      z_next[i] = s.next;
    }
  }
}

}  // namespace

void sampler_step(const SamplerStepParams& p, const float* z, const float* model_out, const float* model_out_uncond,
                  float* z_next, int64_t n_per_sample, int batch, void* stream) {
  DF_CHECK(p.coeffs != nullptr, "sampler_step: coefficients missing");
  DF_CHECK(z && model_out && z_next, "sampler_step: null tensor");
  DF_CHECK(batch >= 0 && n_per_sample >= 0, "sampler_step: negative size ", batch, " x ", n_per_sample);
  DF_CHECK(!p.learned_variance || (p.channels > 0 && n_per_sample % p.channels == 0),
           "sampler_step: learned variance needs N divisible by C, got N=", n_per_sample, " C=", p.channels);
  const int64_t n = static_cast<int64_t>(batch) * n_per_sample;
  if (n == 0) return;
  DF_LAUNCH(sampler_step_kernel, dim3(detail::grid_for((n + 3) / 4, kBlock)), dim3(kBlock), 0, stream, p, z,
            model_out, model_out_uncond, z_next, n_per_sample, n);
}

}  // namespace diffuse::DF_BACKEND

// ---- The Tensor-level op on a GPU -----------------------------------------------------------------
// the Tensor-level fused sampler step over the launcher of
// kernels/cuda/sampler_step.cu. Checks what the launchers cannot, allocates outputs and workspaces
// from the caching allocator and launches on the current stream; nothing here waits for the device.
#if DF_DEVICE_BUILD

namespace diffuse::cuda {

using namespace args;
using kernels::SamplerStepParams;

void sampler_step(const SamplerStepParams& p, const Tensor& z, const Tensor& model_out, const Tensor& model_out_uncond,
                  Tensor& z_next) {
  for (const Tensor* t : {&z, &model_out, const_cast<const Tensor*>(&z_next)}) {
    DF_CHECK(t->defined() && t->dtype() == DType::f32 && t->device().is_cuda(), "sampler_step: f32 GPU tensors, got ",
             t->defined() ? t->str() : std::string("undefined"));
    check_device(*t, z.device(), "sampler_step");
  }
  check_same_shape(z, z_next, "sampler_step");
  if (model_out_uncond.defined()) {
    check_same_shape(model_out, model_out_uncond, "sampler_step guidance");
    check_device(model_out_uncond, z.device(), "sampler_step");
  }
  const int64_t B = z.size(0), N = z.numel() / std::max<int64_t>(B, 1);
  DF_CHECK(model_out.numel() == (p.learned_variance ? 2 : 1) * z.numel(), "sampler_step: model output ",
           model_out.str(), " for z ", z.str());
  set_current_device(z.device());
  cuda::sampler_step(p, z.data<float>(), model_out.data<float>(),
                     model_out_uncond.defined() ? model_out_uncond.data<float>() : nullptr, z_next.data<float>(), N,
                     static_cast<int>(B), current_stream());
}

}  // namespace diffuse::cuda

#endif  // DF_DEVICE_BUILD
