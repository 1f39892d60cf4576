// kernels/embedding.cpp: the embedding lookup and its gradient on Tensors (kernels/embedding.h), on
// the table's device: kernels/cpu/embedding.cpp or kernels/cuda/embedding.cu
// (kernels/cuda/embedding_cuda.cpp).
#include "kernels/embedding.h"

#include "core/check.h"
#include "core/profile.h"
#include "kernels/backend.h"
#include "kernels/cuda/embedding.h"

namespace diffuse::kernels {

Tensor embedding_forward(const Tensor& ids, const Tensor& table) {
  DF_PROFILE("embedding_forward");
  DF_CHECK(ids.defined() && table.defined(), "embedding: undefined tensor");
  DF_ON_CUDA(table.device(), cuda::embedding_forward(ids, table));
  if (!table.device().is_cpu()) unsupported_device("embedding", table.device());
  DF_CHECK(table.dim() == 2 && ids.dim() == 1, "embedding: ids ", ids.str(), ", table ", table.str());
  Tensor out = Tensor::empty({ids.numel(), table.size(1)}, table.dtype());
  cpu::embedding_forward(ids, table, out);
  return out;
}

Tensor embedding_backward(const Tensor& dy, const Tensor& ids, const Shape& table_shape) {
  DF_PROFILE("embedding_backward");
  DF_ON_CUDA(dy.device(), cuda::embedding_backward(dy, ids, table_shape));
  if (!dy.device().is_cpu()) unsupported_device("embedding", dy.device());
  Tensor dt = Tensor::empty(table_shape, dy.dtype());
  cpu::embedding_backward(dy, ids, dt);
  return dt;
}

}  // namespace diffuse::kernels
