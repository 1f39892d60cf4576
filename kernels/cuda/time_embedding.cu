// kernels/cuda/time_embedding.cu: the sinusoidal timestep embedding (kernels/time_embedding.h).
//
// The output is tiny (B x dim, a few hundred thousand floats at most), so the kernel is one
// thread per output element and all of its arithmetic is in double: the angle scale * t * freq
// reaches ~1000 rad, where an f32 evaluation loses ~ulp(1000) = 6e-5 before sin/cos even start;
// in double the only error left is the final rounding to f32, which is what the CPU path does, so
// the two agree to an f32 ulp. FP64 throughput is irrelevant at this size.
#include "kernels/cuda/portable.cuh"

#include <cmath>

#include "core/check.h"
#include "core/stream.h"
#include "kernels/cuda/common.cuh"
#include "kernels/time_embedding.h"

namespace diffuse::DF_BACKEND {

namespace {

constexpr int kBlock = 256;

// sin and cos of 2 pi * turns. Reducing turns by an integer is exact in double, which leaves
// |angle| <= pi: the GPU's sincospi then needs no Payne-Hanek reduction (whose local-memory table
// sin/cos of a large double would drag into this kernel), and the host's sin/cos stay exact too.
DF_DEVICE_INLINE void sincos_turns(double turns, double& s, double& c) {
  const double r = 2.0 * (turns - rint(turns));  // in [-1, 1]
#if defined(__CUDA_ARCH__)
  sincospi(r, &s, &c);
#else
  s = std::sin(3.14159265358979323846 * r);
  c = std::cos(3.14159265358979323846 * r);
#endif
}

__global__ void __launch_bounds__(kBlock) timestep_embedding_kernel(const float* __restrict__ t,
                                                                    float* __restrict__ out, int64_t batch, int dim,
                                                                    double neg_log_period_over_denom, double scale,
                                                                    bool flip_sin_to_cos) {
  const int half = dim / 2;
  const int64_t n = batch * dim;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < n; k += stride) {
    const int64_t b = k / dim;
    const int j = static_cast<int>(k - b * dim);
    float v = 0.0f;  // the zero column of an odd dim
    if (j < 2 * half) {
      const int i = j < half ? j : j - half;
      const double freq = exp(neg_log_period_over_denom * i);
      const double arg = scale * static_cast<double>(t[b]) * freq;
      double s, c;
      sincos_turns(arg * 0.15915494309189533577, s, c);  // arg / (2 pi)
      // First half: cos when flipped, else sin; second half the other one.
      const bool use_cos = (j < half) == flip_sin_to_cos;
      v = static_cast<float>(use_cos ? c : s);
    }
    out[k] = v;
  }
}

}  // namespace

void timestep_embedding(const float* t, float* out, int64_t batch, int dim, const kernels::TimeEmbeddingOptions& opt,
                        void* stream) {
  DF_CHECK(batch >= 0 && dim > 0, "timestep_embedding: batch ", batch, ", dim ", dim);
  const int half = dim / 2;
  const double denom = static_cast<double>(half) - static_cast<double>(opt.downscale_freq_shift);
  DF_CHECK(half == 0 || denom > 0, "timestep_embedding: half - downscale_freq_shift = ", denom, " must be > 0");
  if (batch == 0) return;
  DF_CHECK(t && out, "timestep_embedding: null pointer");
  const double c = half == 0 ? 0.0 : -std::log(static_cast<double>(opt.max_period)) / denom;
  DF_LAUNCH(timestep_embedding_kernel, dim3(detail::grid_for(batch * dim, kBlock)), dim3(kBlock), 0, stream, t, out,
            batch, dim, c, static_cast<double>(opt.scale), opt.flip_sin_to_cos);
}

}  // namespace diffuse::DF_BACKEND

// ---- The Tensor-level op on a GPU -----------------------------------------------------------------
// the Tensor-level timestep embedding on a GPU
// (kernels/time_embedding.h): checks the dtype and launches kernels/cuda/time_embedding.cu on
// the current stream.
#if DF_DEVICE_BUILD

namespace diffuse::cuda {

Tensor timestep_embedding(const Tensor& t, int dim, const kernels::TimeEmbeddingOptions& opt) {
  DF_CHECK(t.dtype() == DType::f32, "timestep_embedding on cuda: f32 t, got ", t.str());
  set_current_device(t.device());
  Tensor out = Tensor::empty({t.size(0), dim}, DType::f32, t.device());
  cuda::timestep_embedding(t.data<float>(), out.data<float>(), t.size(0), dim, opt, current_stream());
  return out;
}

}  // namespace diffuse::cuda

#endif  // DF_DEVICE_BUILD
