// kernels/elementwise.h: Tensor-level elementwise ops, forward and backward, with numpy
// broadcasting; reductions over axes; the in-place helpers the optimizer and samplers use.
//
// Broadcasting (numpy): shapes are aligned on the right; a dimension of size 1 (or a missing
// leading one) is repeated to the other operand's size; both operands may broadcast
// ((B,1,C) + (1,T,C) -> (B,T,C)). The cpu path coalesces adjacent dimensions that broadcast the
// same way, so the common cases cost one plain loop: same shape, b a suffix of a (a bias (C)
// onto (B,H,W,C): rows of C), per-sample (B,1,1,1) onto (B,H,W,C): a scalar per row.
// The gradient of a broadcast operand is the output gradient summed back to its shape: sum_to.
//
// Dtypes: f32 or f64 (gradchecks), shared by every operand; contiguous; cpu (a cuda branch goes
// in the dispatch). Every function that returns a Tensor allocates it; the cpu:: and ref::
// versions write into caller-allocated outputs (tests poison them first).
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace diffuse::kernels {

// ---- binary ops with broadcasting --------------------------------------------------------------
enum class BinaryOp { add, sub, mul, div };

// The numpy broadcast of two shapes; throws when a pair of dimensions is neither equal nor 1.
Shape broadcast_shape(const Shape& a, const Shape& b);

Tensor binary_forward(BinaryOp op, const Tensor& a, const Tensor& b);  // -> broadcast_shape
Tensor add(const Tensor& a, const Tensor& b);  // also autograd's gradient accumulation (same shapes)
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);

// Gradients of out = a op b given dy (out's shape), each summed back to its operand's shape;
// only those asked for are computed (the other is left undefined).
struct BinaryGrads {
  Tensor da, db;
};
BinaryGrads binary_backward(BinaryOp op, const Tensor& dy, const Tensor& a, const Tensor& b, bool need_da = true,
                            bool need_db = true);

// g summed over the dimensions in which `shape` was broadcast to g's shape (g's shape must be
// broadcast_shape(shape, g.shape())): the gradient of a broadcast operand. Returns g itself
// (no copy) when the shapes are equal.
Tensor sum_to(const Tensor& g, const Shape& shape);
// x repeated to `shape` (x's shape must broadcast to it): the backward of sum_to and of sum.
Tensor broadcast_to(const Tensor& x, const Shape& shape);

// ---- unary ops ---------------------------------------------------------------------------------
//   silu     x * sigmoid(x)               d: s (1 + x (1 - s)),  s = sigmoid(x)
//   sigmoid  1 / (1 + exp(-x))            d: s (1 - s)
//   softplus log(1 + exp(x)), evaluated as max(x, 0) + log1p(exp(-|x|)) (no overflow for large
//            |x|, no loss of the small tail for very negative x)     d: sigmoid(x)
//   exp, log (d: 1/x), tanh (d: 1 - tanh^2), square (d: 2x), sqrt (d: 1 / (2 sqrt x)), neg
// Backward recomputes from x (nothing saved but the input) and returns dx = dy * f'(x).
enum class UnaryOp { silu, sigmoid, softplus, exp, log, tanh, square, sqrt, neg };
const char* unary_name(UnaryOp op);

Tensor unary_forward(UnaryOp op, const Tensor& x);
Tensor unary_backward(UnaryOp op, const Tensor& dy, const Tensor& x);
inline Tensor silu_forward(const Tensor& x) { return unary_forward(UnaryOp::silu, x); }
inline Tensor silu_backward(const Tensor& dy, const Tensor& x) { return unary_backward(UnaryOp::silu, dy, x); }

// ---- scalar ops (out of place) -----------------------------------------------------------------
Tensor add_scalar(const Tensor& x, double s);  // x + s
Tensor mul_scalar(const Tensor& x, double s);  // x * s

// ---- in place (optimizer, samplers, EMA); same shape and dtype -----------------------------------
// y = a * x + b * y. With b == 0, y is only written (BLAS's beta = 0: NaN in y does not leak).
void axpby(double a, const Tensor& x, double b, Tensor& y);
void add_(Tensor& y, const Tensor& x, double alpha = 1.0);  // y += alpha * x
void scale_(Tensor& y, double s);                            // y *= s

// ---- reductions --------------------------------------------------------------------------------
// Sum / mean over `axes` (negative counts from the end; duplicates rejected; empty = none, a
// copy). keepdim keeps each reduced dimension as size 1; otherwise it is dropped, and reducing
// every dimension gives shape {1} (a Tensor has no rank-0 form). f32 sums accumulate in double.
Tensor sum(const Tensor& x, const std::vector<int>& axes, bool keepdim = false);
Tensor mean(const Tensor& x, const std::vector<int>& axes, bool keepdim = false);
Tensor sum_all(const Tensor& x);   // -> {1}
Tensor mean_all(const Tensor& x);  // -> {1}
// The number of elements each output of a reduction over `axes` of `s` sums (axes checked).
int64_t reduction_count(const Shape& s, const std::vector<int>& axes);

// ---- dropout (Philox keep-mask; nothing saved) ---------------------------------------------------
// Element i is kept iff philox_uniform(seed, offset, i) >= p, and scaled by 1 / (1 - p); p in
// [0, 1). Backward regenerates the same mask: dx = dy * mask / (1 - p).
Tensor dropout_forward(const Tensor& x, float p, uint64_t seed, uint64_t offset);
Tensor dropout_backward(const Tensor& dy, float p, uint64_t seed, uint64_t offset);

// The cpu fast path (OpenMP over elements when n > 32768), writing into caller-allocated outputs
// of the right shape and dtype.
namespace cpu {
void binary_forward(BinaryOp op, const Tensor& a, const Tensor& b, Tensor& out);
void sum_to(const Tensor& g, Tensor& out);     // out has the operand's shape
void broadcast_to(const Tensor& x, Tensor& out);
void unary_forward(UnaryOp op, const Tensor& x, Tensor& y);
void unary_backward(UnaryOp op, const Tensor& dy, const Tensor& x, Tensor& dx);
void sum(const Tensor& x, const std::vector<int>& axes, Tensor& out);  // out: keepdim or not, same numel
// The public functions' cpu path, allocating the output (kernels/elementwise.cpp calls these).
Tensor binary_forward(BinaryOp op, const Tensor& a, const Tensor& b);
Tensor sum_to(const Tensor& g, const Shape& shape);
Tensor broadcast_to(const Tensor& x, const Shape& shape);
Tensor unary_forward(UnaryOp op, const Tensor& x);
Tensor unary_backward(UnaryOp op, const Tensor& dy, const Tensor& x);
Tensor add_scalar(const Tensor& x, double s);
Tensor mul_scalar(const Tensor& x, double s);
void axpby(double a, const Tensor& x, double b, Tensor& y);
void add_(Tensor& y, const Tensor& x, double alpha);
void scale_(Tensor& y, double s);
Tensor sum(const Tensor& x, const std::vector<int>& axes, bool keepdim);
Tensor sum_all(const Tensor& x);
Tensor dropout(const Tensor& x, float p, uint64_t seed, uint64_t offset, const char* what);
}  // namespace cpu

// The readable reference loops (the oracle the tests trust): one multi-index loop each, in
// double. Same contracts as cpu::.
namespace ref {
void binary_forward(BinaryOp op, const Tensor& a, const Tensor& b, Tensor& out);
void sum_to(const Tensor& g, Tensor& out);
void broadcast_to(const Tensor& x, Tensor& out);
void unary_forward(UnaryOp op, const Tensor& x, Tensor& y);
void unary_backward(UnaryOp op, const Tensor& dy, const Tensor& x, Tensor& dx);
void sum(const Tensor& x, const std::vector<int>& axes, Tensor& out);
}  // namespace ref

}  // namespace diffuse::kernels
