// core/tensor_cuda.h: the few device kernels that Tensor itself needs (defined in
// kernels/cuda/tensor_kernels.cu, with the other kernels and their portability header, so that
// core includes nothing above it).
// Launchers take raw pointers; the emulator builds the same ones in namespace diffuse::emu.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/dtype.h"

#define DIFFUSE_TENSOR_LAUNCHERS                                                                       \
  /* p[0..n) = value, converted to dtype */                                                           \
  void tensor_fill(void* p, DType dtype, int64_t n, double value, void* stream);                      \
  /* dst[i] = convert(src[i]) between any two dtypes (floats round to nearest even) */                \
  void tensor_cast(const void* src, DType src_dtype, void* dst, DType dst_dtype, int64_t n, void* stream); \
  /* p[i] = normal ? mean + std * N_i : lo + (hi - lo) * U_i, element i of stream (seed, offset) */  \
  void tensor_philox_fill(float* p, int64_t n, uint64_t seed, uint64_t offset, bool normal, float a, float b, \
                          void* stream);                                                              \
  /* dst[0..bytes) = src[0..bytes), host to device, as kernel arguments: the bytes are copied when    \
     the call returns (no pinned buffer, no wait), the write happens in stream order. For the few    \
     hundred bytes of per-step scalars of a training or sampling loop, where cudaMemcpyAsync from     \
     pageable memory could block the host. */                                                         \
  void tensor_upload(void* dst, const void* src, size_t bytes, void* stream);

namespace diffuse {
namespace cuda { DIFFUSE_TENSOR_LAUNCHERS }
namespace emu { DIFFUSE_TENSOR_LAUNCHERS }
}  // namespace diffuse
