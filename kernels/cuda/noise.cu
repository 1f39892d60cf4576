// kernels/cuda/noise.cu: the fused noising kernel of a training step,
//   z_t = alpha_t[b] * x + sigma_t[b] * eps,  eps ~ N(0, I) drawn in-kernel from Philox,
// writing z_t and eps (the regression target) in one pass. Launcher in kernels/noise.h.
//
// Fusing the draw saves a full write and read of eps compared with Tensor::randn followed by an
// axpby. Each thread owns one Philox block: four consecutive elements of the flattened (B, N)
// tensor, which is exactly how core/philox.h lays out the stream, so eps equals
// Tensor::randn(shape, seed, offset) bit for bit on every device. The four elements may straddle
// two samples when N is not a multiple of 4, so the sample index is advanced per element (no
// division in the loop). z is formed with explicitly rounded operations, which nvcc does not
// contract into an FMA: z also has the same bits as the CPU's alpha * x + sigma * eps.
#include "kernels/cuda/portable.cuh"

#include "core/check.h"
#include "core/graph.h"
#include "core/philox.h"
#include "core/stream.h"
#include "kernels/cuda/common.cuh"
#include "kernels/noise.h"

namespace diffuse::DF_BACKEND {

namespace {

// 256 threads of one Philox block each: 1024 elements per block. The ten Philox rounds and the
// Box-Muller transform make this the one elementwise kernel with real arithmetic (~100 integer and
// float ops per 4 elements), still below the memory time of 12 bytes per element on an H100.
constexpr int kBlock = 256;

__global__ void __launch_bounds__(kBlock) noise_forward_kernel(const float* __restrict__ x,
                                                               const float* __restrict__ alpha,
                                                               const float* __restrict__ sigma, float* __restrict__ z,
                                                               float* __restrict__ eps, int64_t n, int64_t per_sample,
                                                               uint64_t seed, uint64_t offset,
                                                               const uint64_t* __restrict__ seed_xor, bool vec) {
  if (seed_xor) seed ^= *seed_xor;
  const int64_t blocks = (n + 3) / 4;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < blocks; k += stride) {
    float e[4];
    philox_normal4(philox_block(seed, offset, static_cast<uint64_t>(k)), e);
    const int64_t i0 = 4 * k;
    int64_t b = i0 / per_sample;
    int64_t next_sample = (b + 1) * per_sample;
    float out[4];
    float xv[4];
    const bool whole = vec && i0 + 4 <= n;
    if (whole) {
      const float4 v = *reinterpret_cast<const float4*>(x + i0);
      xv[0] = v.x, xv[1] = v.y, xv[2] = v.z, xv[3] = v.w;
    } else {
      for (int j = 0; j < 4; ++j) xv[j] = i0 + j < n ? x[i0 + j] : 0.0f;
    }
    for (int j = 0; j < 4; ++j) {
      while (i0 + j >= next_sample) ++b, next_sample += per_sample;
      // Past the end the sample index would read beyond alpha: clamp (those lanes are not stored).
      const int64_t bb = i0 + j < n ? b : 0;
      out[j] = __fadd_rn(__fmul_rn(__ldg(alpha + bb), xv[j]), __fmul_rn(__ldg(sigma + bb), e[j]));
    }
    if (whole) {
      *reinterpret_cast<float4*>(z + i0) = make_float4(out[0], out[1], out[2], out[3]);
      if (eps) *reinterpret_cast<float4*>(eps + i0) = make_float4(e[0], e[1], e[2], e[3]);
    } else {
      for (int j = 0; j < 4 && i0 + j < n; ++j) {
        z[i0 + j] = out[j];
        if (eps) eps[i0 + j] = e[j];
      }
    }
  }
}

}  // namespace

void noise_forward(const float* x, const float* alpha, const float* sigma, float* z, float* eps, int64_t batch,
                   int64_t n_per_sample, uint64_t seed, uint64_t offset, void* stream, const uint64_t* seed_xor) {
  DF_CHECK(batch >= 0 && n_per_sample >= 0, "noise_forward: negative size ", batch, " x ", n_per_sample);
  const int64_t n = batch * n_per_sample;
  if (n == 0) return;
  DF_CHECK(x && alpha && sigma && z, "noise_forward: null pointer");
  const bool vec = detail::aligned16(x) && detail::aligned16(z) && (eps == nullptr || detail::aligned16(eps));
  DF_LAUNCH(noise_forward_kernel, dim3(detail::grid_for((n + 3) / 4, kBlock)), dim3(kBlock), 0, stream, x, alpha,
            sigma, z, eps, n, n_per_sample, seed, offset, seed_xor, vec);
}

}  // namespace diffuse::DF_BACKEND

// ---- The Tensor-level op on a GPU -----------------------------------------------------------------
// the Tensor-level noising op on a GPU (kernels/noise.h): checks
// what the launcher cannot and launches kernels/cuda/noise.cu on the current stream, with the
// Philox seed word of a captured graph (core/graph.h) when one is set.
#if DF_DEVICE_BUILD

namespace diffuse::cuda {

void noise_forward(const Tensor& x, const Tensor& alpha, const Tensor& sigma, uint64_t seed, uint64_t offset,
                   Tensor& z, Tensor& eps) {
  DF_CHECK(x.dtype() == DType::f32 && x.dim() >= 1 && x.size(0) > 0, "noise_forward on cuda: f32 (B, ...), got ",
           x.str());
  DF_CHECK(alpha.numel() == x.size(0) && sigma.numel() == x.size(0) && z.shape() == x.shape() &&
               eps.shape() == x.shape(), "noise_forward: shapes x ", x.str(), ", alpha ", alpha.str(), ", sigma ",
           sigma.str(), ", z ", z.str(), ", eps ", eps.str());
  for (const Tensor* t : {&alpha, &sigma, const_cast<const Tensor*>(&z), const_cast<const Tensor*>(&eps)})
    check_device(*t, x.device(), "noise_forward");
  set_current_device(x.device());
  return cuda::noise_forward(x.data<float>(), alpha.data<float>(), sigma.data<float>(), z.data<float>(),
                             eps.data<float>(), x.size(0), x.numel() / x.size(0), seed, offset, current_stream(),
                             philox_seed_xor());
}

}  // namespace diffuse::cuda

#endif  // DF_DEVICE_BUILD
