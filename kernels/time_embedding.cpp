// kernels/time_embedding.cpp: the sinusoidal timestep embedding on Tensors (kernels/time_embedding.h),
// on t's device: the cpu loop of kernels/cpu/time_embedding.cpp or the kernel of
// kernels/cuda/time_embedding.cu (kernels/cuda/time_embedding_cuda.cpp).
#include "kernels/time_embedding.h"

#include "core/check.h"
#include "core/profile.h"
#include "kernels/backend.h"
#include "kernels/cuda/time_embedding.h"

namespace diffuse::kernels {

Tensor timestep_embedding(const Tensor& t, int dim, const TimeEmbeddingOptions& opt) {
  DF_PROFILE("timestep_embedding");
  DF_CHECK(t.defined(), "timestep_embedding: undefined t");
  DF_CHECK(t.dim() == 1, "timestep_embedding: t must be (B), got ", t.str());
  DF_ON_CUDA(t.device(), cuda::timestep_embedding(t, dim, opt));
  if (!t.device().is_cpu()) unsupported_device("timestep_embedding", t.device());
  Tensor out = Tensor::empty({t.size(0), dim}, t.dtype(), t.device());
  cpu::timestep_embedding(t, dim, opt, out);
  return out;
}

}  // namespace diffuse::kernels
