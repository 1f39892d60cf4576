// kernels/noise.cpp: the noising op q(z_t | x) on Tensors (kernels/noise.h), on x's device: the cpu
// loop of kernels/cpu/noise.cpp or the kernel of kernels/cuda/noise.cu (kernels/cuda/noise_cuda.cpp),
// which draw the same eps, bit for bit.
#include "kernels/noise.h"

#include "core/check.h"
#include "core/profile.h"
#include "kernels/backend.h"
#include "kernels/cuda/noise.h"

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
