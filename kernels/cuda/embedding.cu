// kernels/cuda/embedding.cu: the class-label embedding lookup and its backward (launchers in
// kernels/embedding.h, math in kernels/embedding.h).
//
// The backward is a scatter-add of B rows into a K-row table. Instead of float atomics (whose
// order, and so whose rounding, changes run to run) each output row k is owned by one block
// column, which walks the ids in order and adds the rows that point at it: O(K * B) id reads, a
// few hundred thousand for the UNet's K <= 1001 classes and B <= 256, against O(B * D) useful
// adds, and the result is the same bits every run, as the cpu's in-order loop.
#include "kernels/cuda/portable.cuh"

#include <cmath>

#include "core/check.h"
#include "core/stream.h"
#include "kernels/cuda/common.cuh"
#include "kernels/embedding.h"
#include "kernels/cuda/tensor_args.h"

namespace diffuse::DF_BACKEND {

namespace {

constexpr int kBlock = 256;

// Blocks (b, column tile): one row of the output per blockIdx.x.
template <class T>
__global__ void __launch_bounds__(kBlock) embedding_forward_kernel(const int64_t* __restrict__ ids,
                                                                   const T* __restrict__ table, T* __restrict__ out,
                                                                   int64_t K, int64_t D) {
  const int64_t b = blockIdx.x;
  const int64_t d = static_cast<int64_t>(blockIdx.y) * kBlock + threadIdx.x;
  if (d >= D) return;
  const int64_t id = ids[b];
  out[b * D + d] = id >= 0 && id < K ? table[id * D + d] : detail::from_f32<T>(NAN);
}

// Blocks (k, column tile).
template <class T>
__global__ void __launch_bounds__(kBlock) embedding_backward_kernel(const T* __restrict__ dy,
                                                                    const int64_t* __restrict__ ids,
                                                                    T* __restrict__ dtable, int64_t B, int64_t D) {
  const int64_t k = blockIdx.x;
  const int64_t d = static_cast<int64_t>(blockIdx.y) * kBlock + threadIdx.x;
  if (d >= D) return;
  float acc = 0.0f;
  for (int64_t b = 0; b < B; ++b)
    if (ids[b] == k) acc += detail::to_f32(dy[b * D + d]);
  dtable[k * D + d] = detail::from_f32<T>(acc);
}

void check_args(const char* op, DType dtype, int64_t B, int64_t K, int64_t D) {
  DF_CHECK(dtype == DType::f32 || dtype == DType::bf16, op, ": dtype ", dtype_name(dtype), " (expected f32 or bf16)");
  DF_CHECK(B >= 0 && K >= 0 && D >= 0, op, ": negative size");
  DF_CHECK(B <= 0x7fffffff && K <= 0x7fffffff && (D + kBlock - 1) / kBlock <= 65535, op, ": B=", B, ", K=", K, ", D=",
           D, " over the grid's limits");
}

}  // namespace

void embedding_forward(const int64_t* ids, const void* table, void* out, DType dtype, int64_t B, int64_t K, int64_t D,
                       void* stream) {
  check_args("embedding_forward", dtype, B, K, D);
  if (B == 0 || D == 0) return;
  DF_CHECK(ids && table && out, "embedding_forward: null pointer");
  const dim3 grid(static_cast<unsigned>(B), static_cast<unsigned>((D + kBlock - 1) / kBlock));
  if (dtype == DType::f32)
    DF_LAUNCH(embedding_forward_kernel<float>, grid, dim3(kBlock), 0, stream, ids, static_cast<const float*>(table),
              static_cast<float*>(out), K, D);
  else
    DF_LAUNCH(embedding_forward_kernel<__nv_bfloat16>, grid, dim3(kBlock), 0, stream, ids,
              static_cast<const __nv_bfloat16*>(table), static_cast<__nv_bfloat16*>(out), K, D);
}

void embedding_backward(const void* dy, const int64_t* ids, void* dtable, DType dtype, int64_t B, int64_t K, int64_t D,
                        void* stream) {
  check_args("embedding_backward", dtype, B, K, D);
  if (K == 0 || D == 0) return;
  DF_CHECK(dtable && (B == 0 || (dy && ids)), "embedding_backward: null pointer");
  const dim3 grid(static_cast<unsigned>(K), static_cast<unsigned>((D + kBlock - 1) / kBlock));
  if (dtype == DType::f32)
    DF_LAUNCH(embedding_backward_kernel<float>, grid, dim3(kBlock), 0, stream, static_cast<const float*>(dy), ids,
              static_cast<float*>(dtable), B, D);
  else
    DF_LAUNCH(embedding_backward_kernel<__nv_bfloat16>, grid, dim3(kBlock), 0, stream,
              static_cast<const __nv_bfloat16*>(dy), ids, static_cast<__nv_bfloat16*>(dtable), B, D);
}

}  // namespace diffuse::DF_BACKEND

// ---- The Tensor-level op on a GPU -----------------------------------------------------------------
// the Tensor-level embedding lookup and its gradient over the
// launchers of kernels/cuda/embedding.cu. Checks what the launchers cannot, allocates outputs and
// workspaces from the caching allocator and launches on the current stream; nothing here waits for
// the device.
#if DF_DEVICE_BUILD

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

#endif  // DF_DEVICE_BUILD
