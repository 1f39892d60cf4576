// kernels/cuda/reduce.h: launchers of kernels/cuda/reduce.cu (diffuse::cuda on the GPU,
// diffuse::emu under the emulator). f32 accumulation in a fixed order, so a result is the same
// run after run (no atomics).
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/dtype.h"
#include "kernels/cuda/dims.h"

namespace diffuse::kernels {
enum class ReduceOp : int { sum = 0, sum_squares = 1 };
}  // namespace diffuse::kernels

#define DIFFUSE_REDUCE_LAUNCHERS                                                                       \
  /* out[r] = sum_c f(x[r, c]) for r < rows, f(v) = v or v * v; x (rows, cols) f32 */                \
  void reduce_rows(const float* x, float* out, int64_t rows, int64_t cols, kernels::ReduceOp op, void* stream); \
  /* floats of workspace that reduce_all needs for n elements (at most 1024) */                       \
  int64_t reduce_all_workspace(int64_t n);                                                            \
  /* out[0] = sum_i f(x[i]) over a flat f32 buffer (e.g. the global gradient norm squared), in two  \
     stages through `workspace` (reduce_all_workspace(n) floats, device memory) */                    \
  void reduce_all(const float* x, int64_t n, kernels::ReduceOp op, float* workspace, float* out, void* stream); \
  /* Bytes of device workspace reduce_sum needs for these dims and axes. */                           \
  std::size_t reduce_sum_workspace_bytes(const kernels::Dims& dims, unsigned axes_mask);              \
  /* out = scale * (x summed over the dimensions whose bit is set in axes_mask), the kept dimensions \
     in order, row-major. x and out f32 or bf16 (each its own dtype); f32 accumulation. Also the     \
     gradient of a broadcast operand (sum_to) and a bias gradient (the sum over every row). */       \
  void reduce_sum(const void* x, DType x_dtype, const kernels::Dims& dims, unsigned axes_mask, float scale, \
                  void* out, DType out_dtype, void* workspace, void* stream);

namespace diffuse {
namespace cuda { DIFFUSE_REDUCE_LAUNCHERS }
namespace emu { DIFFUSE_REDUCE_LAUNCHERS }
}  // namespace diffuse
