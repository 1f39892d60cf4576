// kernels/concat.h: concatenation and slicing along the last dim (channels, for the UNet's skip
// connections), forward and backward. Tensors are contiguous, so a channel slice is a copy.
//
// concat_last: xs[i] (..., C_i) with equal leading dims -> (..., sum C_i); backward is a slice
//              per input.
// slice_last:  x (..., C) -> x[..., begin:end]; backward writes g into zeros of (..., C).
// Any dtype (bytes are moved, nothing is computed).
#pragma once

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
