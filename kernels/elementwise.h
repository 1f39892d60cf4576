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

#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/dtype.h"
#include "core/tensor.h"
#include "kernels/dims.h"

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

// ---- On a GPU ------------------------------------------------------------------------------------
// launchers of kernels/cuda/elementwise.cu, for CUDA (diffuse::cuda)
// and the emulator (diffuse::emu). Pointers are device memory (host memory for emu); `stream` is
// a cudaStream_t as void* (core/stream.h current_stream()). dtype: f32 or bf16, shared by every
// tensor argument; math in f32, one rounding to the storage type at the end. The formulas are
// kernels/elementwise.h's.
#define DIFFUSE_ELEMENTWISE_LAUNCHERS                                                                  \
  /* out = a op b with numpy broadcasting; out has the broadcast shape of a_dims and b_dims (written \
     row-major, fewer than 2^31 elements). out must not alias a or b unless it has the same shape.  */ \
  void binary_forward(kernels::BinaryOp op, const void* a, const kernels::Dims& a_dims, const void* b,  \
                      const kernels::Dims& b_dims, void* out, DType dtype, void* stream);             \
  /* out (out_dims) = x (x_dims) repeated; x_dims must broadcast to out_dims */                       \
  void broadcast_to(const void* x, const kernels::Dims& x_dims, void* out, const kernels::Dims& out_dims, \
                    DType dtype, void* stream);                                                       \
  /* y[i] = f(x[i]); y may alias x */                                                                 \
  void unary_forward(kernels::UnaryOp op, const void* x, void* y, DType dtype, int64_t n, void* stream); \
  /* dx[i] (+)= dy[i] * f'(x[i]); += when accumulate, else = */                                       \
  void unary_backward(kernels::UnaryOp op, const void* x, const void* dy, void* dx, DType dtype, int64_t n, \
                      bool accumulate, void* stream);                                                 \
  /* y[i] = x[i] * sigmoid(x[i]) (unary_forward with silu); y may alias x */                          \
  void silu_forward(const void* x, void* y, DType dtype, int64_t n, void* stream);                    \
  /* dx[i] (+)= dy[i] * s (1 + x (1 - s)), s = sigmoid(x[i]) */                                        \
  void silu_backward(const void* x, const void* dy, void* dx, DType dtype, int64_t n, bool accumulate, \
                     void* stream);                                                                   \
  /* y[i] = a * x[i] + b (scalar ops); y may alias x */                                               \
  void affine(const void* x, void* y, float a, float b, DType dtype, int64_t n, void* stream);        \
  /* y[i] = a * x[i] + b * y[i]; with b == 0, y is only written (BLAS's beta = 0) */                 \
  void axpby(float a, const void* x, float b, void* y, DType dtype, int64_t n, void* stream);         \
  /* y[i] = keep(i) ? x[i] / (1 - p) : 0, keep(i) = philox_uniform(seed', offset, i) >= p with        \
     seed' = seed ^ *seed_xor (a device word, read when the kernel runs, so a captured CUDA graph      \
     draws fresh masks per replay) or seed when seed_xor is null. The same mask as the cpu's.         \
     y may alias x. */                                                                                \
  void dropout(const void* x, void* y, DType dtype, int64_t n, float p, uint64_t seed, uint64_t offset, \
               const uint64_t* seed_xor, void* stream);                                               \
  /* exchanges a[i] and b[i], f32 (the EMA's swap with the live weights) */                           \
  void swap(float* a, float* b, int64_t n, void* stream);

namespace diffuse {
namespace cuda { DIFFUSE_ELEMENTWISE_LAUNCHERS }
namespace emu { DIFFUSE_ELEMENTWISE_LAUNCHERS }
}  // namespace diffuse

// The Tensor-level elementwise ops and reductions on a GPU, which kernels/elementwise.cpp calls for
// a tensor on a CUDA device (kernels/cuda/elementwise.cu, over elementwise.cu and reduce.cu;
// only in a build with the CUDA backend).
namespace diffuse::cuda {
Tensor binary_forward(kernels::BinaryOp op, const Tensor& a, const Tensor& b);
Tensor sum_to(const Tensor& g, const Shape& shape);
Tensor broadcast_to(const Tensor& x, const Shape& shape);
Tensor unary_forward(kernels::UnaryOp op, const Tensor& x);
Tensor unary_backward(kernels::UnaryOp op, const Tensor& dy, const Tensor& x);
Tensor affine(const Tensor& x, double a, double b);  // a x + b, a new tensor
void axpby(double a, const Tensor& x, double b, Tensor& y);
void scale_(Tensor& y, double s);
Tensor sum(const Tensor& x, const std::vector<int>& axes, bool keepdim, double scale = 1.0);
Tensor dropout(const Tensor& x, float p, uint64_t seed, uint64_t offset);
}  // namespace diffuse::cuda

// ---- On a GPU ------------------------------------------------------------------------------------
// launchers of kernels/cuda/reduce.cu (diffuse::cuda on the GPU,
// diffuse::emu under the emulator). f32 accumulation in a fixed order, so a result is the same
// run after run (no atomics).
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
