// kernels/cuda/elementwise.h: launchers of kernels/cuda/elementwise.cu, for CUDA (diffuse::cuda)
// and the emulator (diffuse::emu). Pointers are device memory (host memory for emu); `stream` is
// a cudaStream_t as void* (core/stream.h current_stream()). dtype: f32 or bf16, shared by every
// tensor argument; math in f32, one rounding to the storage type at the end. The formulas are
// kernels/elementwise.h's.
#pragma once

#include <cstdint>
#include <vector>

#include "core/dtype.h"
#include "core/tensor.h"
#include "kernels/cuda/dims.h"
#include "kernels/elementwise.h"

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
// a tensor on a CUDA device (kernels/cuda/elementwise_cuda.cpp, over elementwise.cu and reduce.cu;
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
