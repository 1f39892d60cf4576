// kernels/cuda/concat.h: launcher of kernels/cuda/concat.cu (diffuse::cuda on the GPU,
// diffuse::emu under the emulator): the strided row copy behind concat_last and slice_last
// (kernels/concat.h) on a GPU. Tensors are viewed as (rows, C); concatenating along C copies each
// input's rows into a column range of the output, slicing copies a column range out.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"

#define DIFFUSE_CONCAT_LAUNCHERS                                                                       \
  /* dst[r * dst_stride + j] = src[r * src_stride + j] for r < rows, j < width; all in bytes. Any     \
     element type (nothing is computed); the widest access that the alignment of both pointers,      \
     both strides and the width allows (16, 8, 4, 2 or 1 bytes). */                                  \
  void copy_rows(void* dst, int64_t dst_stride, const void* src, int64_t src_stride, int64_t rows, int64_t width, \
                 void* stream);

namespace diffuse {
namespace cuda { DIFFUSE_CONCAT_LAUNCHERS }
namespace emu { DIFFUSE_CONCAT_LAUNCHERS }
}  // namespace diffuse

// The Tensor-level op on a GPU, which kernels/concat.cpp calls for a tensor on a CUDA device
// (kernels/cuda/concat_cuda.cpp; only in a build with the CUDA backend).
namespace diffuse::cuda {
Tensor concat_last_forward(const std::vector<Tensor>& xs);
Tensor slice_last_forward(const Tensor& x, int64_t begin, int64_t end);
Tensor slice_last_backward(const Tensor& g, int64_t total, int64_t begin);
}  // namespace diffuse::cuda
