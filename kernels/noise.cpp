// kernels/noise.cpp: the fused forward noising z = alpha[b] x + sigma[b] eps, q(z_t | x)
// (kernels/noise.h): the cpu loop, eps drawn from Philox here, and the Tensor-level op, which runs
// on x's device: the cpu here or kernels/cuda/noise.cu; the two draw the same eps, bit for bit.
//
// Glossary: B samples; N = numel / B elements per sample; i the flat element index, which is
// also the index into the normal stream (seed, offset), so eps equals
// Tensor::randn(x.shape(), seed, offset) and the CUDA kernel's draw bit for bit.
// One Philox block yields 4 normals: the loop walks blocks of 4 elements.
#include "kernels/noise.h"

#include "core/check.h"
#include "core/philox.h"
#include "core/profile.h"
#include "kernels/backend.h"

namespace diffuse::kernels {

namespace {

template <class T>
void noise_typed(const T* x, const T* alpha, const T* sigma, int64_t B, int64_t N, uint64_t seed, uint64_t offset,
                 T* z, T* eps) {
  const int64_t n = B * N, blocks = (n + 3) / 4;
#pragma omp parallel for if (n > 32768)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    float e4[4];
    philox_normal4(philox_block(seed, offset, static_cast<uint64_t>(blk)), e4);
    for (int w = 0; w < 4; ++w) {
      const int64_t i = 4 * blk + w;
      if (i >= n) break;
      const int64_t b = i / N;
      const T e = static_cast<T>(e4[w]);
      eps[i] = e;
      z[i] = alpha[b] * x[i] + sigma[b] * e;
    }
  }
}

}  // namespace

namespace cpu {

void noise_forward(const Tensor& x, const Tensor& alpha, const Tensor& sigma, uint64_t seed, uint64_t offset,
                   Tensor& z, Tensor& eps) {
  DF_CHECK(x.dim() >= 1 && x.size(0) > 0, "noise_forward: x is ", x.str());
  const int64_t B = x.size(0), N = x.numel() / B;
  DF_CHECK(alpha.shape() == Shape({B}) && sigma.shape() == Shape({B}), "noise_forward: alpha ", alpha.str(),
           ", sigma ", sigma.str(), " for x ", x.str());
  check_same_shape(x, z, "noise_forward z");
  check_same_shape(x, eps, "noise_forward eps");
  const DType t = x.dtype();
  DF_CHECK(alpha.dtype() == t && sigma.dtype() == t && z.dtype() == t && eps.dtype() == t,
           "noise_forward: dtypes differ (x ", x.str(), ", alpha ", alpha.str(), ", sigma ", sigma.str(), ")");
  if (t == DType::f32)
    noise_typed(x.data<float>(), alpha.data<float>(), sigma.data<float>(), B, N, seed, offset, z.data<float>(),
                eps.data<float>());
  else if (t == DType::f64)
    noise_typed(x.data<double>(), alpha.data<double>(), sigma.data<double>(), B, N, seed, offset,
                z.data<double>(), eps.data<double>());
  else
    DF_FAIL("noise_forward: dtype ", dtype_name(t), " (f32 or f64 expected)");
}

}  // namespace cpu

}  // namespace diffuse::kernels

namespace diffuse::kernels {

void noise_forward(const Tensor& x, const Tensor& alpha, const Tensor& sigma, uint64_t seed, uint64_t offset,
                   Tensor& z, Tensor& eps) {
  DF_PROFILE("noise_forward");
  DF_CHECK(x.defined() && alpha.defined() && sigma.defined() && z.defined() && eps.defined(),
           "noise_forward: undefined tensor");
  if (x.device().is_cpu()) return cpu::noise_forward(x, alpha, sigma, seed, offset, z, eps);
  DF_ON_CUDA(x.device(), cuda::noise_forward(x, alpha, sigma, seed, offset, z, eps));
  unsupported_device("noise_forward", x.device());
}

}  // namespace diffuse::kernels
