// kernels/cuda/embedding_cuda.cpp: the Tensor-level embedding lookup and its gradient over the
// launchers of kernels/cuda/embedding.cu. Checks what the launchers cannot, allocates outputs and
// workspaces from the caching allocator and launches on the current stream; nothing here waits for
// the device.
#include "core/check.h"
#include "core/stream.h"
#include "kernels/cuda/embedding.h"
#include "kernels/cuda/tensor_args.h"

namespace diffuse::cuda {

using namespace args;

// Ids outside the table give NaN rows (and no gradient): checking them would wait for the GPU.
Tensor embedding_forward(const Tensor& ids, const Tensor& table) {
  check_act(table, "embedding");
  DF_CHECK(table.dim() == 2 && ids.dim() == 1 && ids.dtype() == DType::i64, "embedding: i64 ids (B) and a (K, D) ",
           "table, got ", ids.str(), ", ", table.str());
  check_device(ids, table.device(), "embedding ids");
  set_current_device(table.device());
  Tensor out = Tensor::empty({ids.numel(), table.size(1)}, table.dtype(), table.device());
  cuda::embedding_forward(ids.data<int64_t>(), table.raw(), out.raw(), table.dtype(), ids.numel(), table.size(0),
                          table.size(1), current_stream());
  return out;
}

Tensor embedding_backward(const Tensor& dy, const Tensor& ids, const Shape& table_shape) {
  check_act(dy, "embedding backward");
  DF_CHECK(table_shape.rank() == 2 && dy.shape() == Shape({ids.numel(), table_shape[1]}),
           "embedding backward: dy ", dy.str(), " for a table ", table_shape.str());
  check_device(ids, dy.device(), "embedding ids");
  set_current_device(dy.device());
  Tensor dt = Tensor::empty(table_shape, dy.dtype(), dy.device());
  cuda::embedding_backward(dy.raw(), ids.data<int64_t>(), dt.raw(), dy.dtype(), ids.numel(), table_shape[0],
                           table_shape[1], current_stream());
  return dt;
}

}  // namespace diffuse::cuda
