// kernels/cuda/time_embedding.h: launcher of kernels/cuda/time_embedding.cu (diffuse::cuda on the
// GPU, diffuse::emu under the emulator). The formula and the options are kernels/time_embedding.h's.
#pragma once

#include <cstdint>

#include "core/tensor.h"
#include "kernels/time_embedding.h"

#define DIFFUSE_TIME_EMBEDDING_LAUNCHERS                                                               \
  /* out (batch, dim) f32 = the sinusoidal embedding of t (batch) f32, per kernels/time_embedding.h */ \
  void timestep_embedding(const float* t, float* out, int64_t batch, int dim,                          \
                          const kernels::TimeEmbeddingOptions& opt, void* stream);

namespace diffuse {
namespace cuda { DIFFUSE_TIME_EMBEDDING_LAUNCHERS }
namespace emu { DIFFUSE_TIME_EMBEDDING_LAUNCHERS }
}  // namespace diffuse

// The Tensor-level op on a GPU, which kernels/time_embedding.cpp calls for a tensor on a CUDA device
// (kernels/cuda/time_embedding_cuda.cpp; only in a build with the CUDA backend).
// t f32 (B); the embedding (B, dim) f32.
namespace diffuse::cuda {
Tensor timestep_embedding(const Tensor& t, int dim, const kernels::TimeEmbeddingOptions& opt);
}  // namespace diffuse::cuda
