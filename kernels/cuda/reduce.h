// kernels/cuda/reduce.h: launchers of kernels/cuda/reduce.cu (diffuse::cuda on the GPU,
// diffuse::emu under the emulator). f32 in, f32 out, f32 accumulation in a fixed order, so a
// result is the same run after run (no atomics).
#pragma once

#include <cstdint>

namespace diffuse::kernels {
enum class ReduceOp : int { sum = 0, sum_squares = 1 };
}  // namespace diffuse::kernels

#define DIFFUSE_REDUCE_LAUNCHERS                                                                       \
  /* out[r] = sum_c f(x[r, c]) for r < rows, f(v) = v or v * v; x (rows, cols) */                    \
  void reduce_rows(const float* x, float* out, int64_t rows, int64_t cols, kernels::ReduceOp op, void* stream); \
  /* floats of workspace that reduce_all needs for n elements (at most 1024) */                       \
  int64_t reduce_all_workspace(int64_t n);                                                            \
  /* out[0] = sum_i f(x[i]) over a flat buffer (e.g. the global gradient norm squared), in two      \
     stages through `workspace` (reduce_all_workspace(n) floats, device memory) */                    \
  void reduce_all(const float* x, int64_t n, kernels::ReduceOp op, float* workspace, float* out, void* stream);

namespace diffuse {
namespace cuda { DIFFUSE_REDUCE_LAUNCHERS }
namespace emu { DIFFUSE_REDUCE_LAUNCHERS }
}  // namespace diffuse
