// kernels/embedding.h: table lookup (class labels -> vectors) and its backward.
//
// ids i64 (B) in [0, K) (out of range throws, naming the id); table (K, D) -> out (B, D),
// out[b] = table[ids[b]]. Backward scatter-adds: dtable[ids[b]] += dy[b] (a repeated id sums).
// f32 or f64.
#pragma once

#include "core/tensor.h"

namespace diffuse::kernels {

Tensor embedding_forward(const Tensor& ids, const Tensor& table);
Tensor embedding_backward(const Tensor& dy, const Tensor& ids, const Shape& table_shape);  // -> (K, D)

namespace cpu {
void embedding_forward(const Tensor& ids, const Tensor& table, Tensor& out);
void embedding_backward(const Tensor& dy, const Tensor& ids, Tensor& dtable);  // dtable overwritten
}  // namespace cpu

}  // namespace diffuse::kernels
