// kernels/concat.h: concatenation and slicing along the last dim (channels, for the UNet's skip
// connections), forward and backward. Tensors are contiguous, so a channel slice is a copy.
//
// concat_last: xs[i] (..., C_i) with equal leading dims -> (..., sum C_i); backward is a slice
//              per input.
// slice_last:  x (..., C) -> x[..., begin:end]; backward writes g into zeros of (..., C).
// Any dtype (bytes are moved, nothing is computed).
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace diffuse::kernels {

Tensor concat_last_forward(const std::vector<Tensor>& xs);
// g (..., sum C_i) -> one gradient per input, widths[i] = C_i.
std::vector<Tensor> concat_last_backward(const Tensor& g, const std::vector<int64_t>& widths);
Tensor slice_last_forward(const Tensor& x, int64_t begin, int64_t end);
// g (..., end-begin) -> (..., total), zero outside [begin, end).
Tensor slice_last_backward(const Tensor& g, int64_t total, int64_t begin);

}  // namespace diffuse::kernels

// ---- On a GPU ------------------------------------------------------------------------------------
// launcher of kernels/cuda/concat.cu (diffuse::cuda on the GPU,
// diffuse::emu under the emulator): the strided row copy behind concat_last and slice_last
// (kernels/concat.h) on a GPU. Tensors are viewed as (rows, C); concatenating along C copies each
// input's rows into a column range of the output, slicing copies a column range out.
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
// (kernels/cuda/concat.cu; only in a build with the CUDA backend).
namespace diffuse::cuda {
Tensor concat_last_forward(const std::vector<Tensor>& xs);
Tensor slice_last_forward(const Tensor& x, int64_t begin, int64_t end);
Tensor slice_last_backward(const Tensor& g, int64_t total, int64_t begin);
}  // namespace diffuse::cuda
