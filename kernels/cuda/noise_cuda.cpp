// kernels/cuda/noise_cuda.cpp: the Tensor-level noising op on a GPU (kernels/cuda/noise.h): checks
// what the launcher cannot and launches kernels/cuda/noise.cu on the current stream, with the
// Philox seed word of a captured graph (core/graph.h) when one is set.
#include "core/check.h"
#include "core/graph.h"
#include "core/stream.h"
#include "kernels/cuda/noise.h"

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
