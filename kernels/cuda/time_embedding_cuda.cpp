// kernels/cuda/time_embedding_cuda.cpp: the Tensor-level timestep embedding on a GPU
// (kernels/cuda/time_embedding.h): checks the dtype and launches kernels/cuda/time_embedding.cu on
// the current stream.
#include "core/check.h"
#include "core/stream.h"
#include "kernels/cuda/time_embedding.h"

namespace diffuse::cuda {

Tensor timestep_embedding(const Tensor& t, int dim, const kernels::TimeEmbeddingOptions& opt) {
  DF_CHECK(t.dtype() == DType::f32, "timestep_embedding on cuda: f32 t, got ", t.str());
  set_current_device(t.device());
  Tensor out = Tensor::empty({t.size(0), dim}, DType::f32, t.device());
  cuda::timestep_embedding(t.data<float>(), out.data<float>(), t.size(0), dim, opt, current_stream());
  return out;
}

}  // namespace diffuse::cuda
