// kernels/embedding.h: table lookup (class labels -> vectors) and its backward.
//
// ids i64 (B) in [0, K) (out of range throws, naming the id); table (K, D) -> out (B, D),
// out[b] = table[ids[b]]. Backward scatter-adds: dtable[ids[b]] += dy[b] (a repeated id sums).
// f32 or f64.
#pragma once

#include <cstdint>

#include "core/dtype.h"
#include "core/tensor.h"

namespace diffuse::kernels {

Tensor embedding_forward(const Tensor& ids, const Tensor& table);
Tensor embedding_backward(const Tensor& dy, const Tensor& ids, const Shape& table_shape);  // -> (K, D)

namespace cpu {
void embedding_forward(const Tensor& ids, const Tensor& table, Tensor& out);
void embedding_backward(const Tensor& dy, const Tensor& ids, Tensor& dtable);  // dtable overwritten
}  // namespace cpu

}  // namespace diffuse::kernels

// ---- On a GPU ------------------------------------------------------------------------------------
// launchers of kernels/cuda/embedding.cu (diffuse::cuda on the GPU,
// diffuse::emu under the emulator): the table lookup of kernels/embedding.h and its backward.
// ids i64 (B); table (K, D); dtype f32 or bf16 for the table, out, dy and dtable.
#define DIFFUSE_EMBEDDING_LAUNCHERS                                                                    \
  /* out[b] = table[ids[b]]; an id outside [0, K) gives a row of NaN (a kernel cannot throw; the cpu \
     path names the id) */                                                                           \
  void embedding_forward(const int64_t* ids, const void* table, void* out, DType dtype, int64_t B, int64_t K, \
                         int64_t D, void* stream);                                                    \
  /* dtable[k] = sum of dy[b] over the b with ids[b] == k, in b order (overwritten; zero rows where  \
     no id points; ids outside [0, K) contribute nothing) */                                        \
  void embedding_backward(const void* dy, const int64_t* ids, void* dtable, DType dtype, int64_t B, int64_t K, \
                          int64_t D, void* stream);

namespace diffuse {
namespace cuda { DIFFUSE_EMBEDDING_LAUNCHERS }
namespace emu { DIFFUSE_EMBEDDING_LAUNCHERS }
}  // namespace diffuse

// The Tensor-level op on a GPU, which kernels/embedding.cpp calls for a tensor on a CUDA device
// (kernels/cuda/embedding.cu; only in a build with the CUDA backend).
namespace diffuse::cuda {
Tensor embedding_forward(const Tensor& ids, const Tensor& table);
Tensor embedding_backward(const Tensor& dy, const Tensor& ids, const Shape& table_shape);
}  // namespace diffuse::cuda
