// kernels/softmax.h: softmax over the last dimension, forward and backward.
//
// Shapes: x (R..., L): rows of length L. y = exp(x - max) / sum(exp(x - max)) per row: the max
// is subtracted so exp never overflows (the result is unchanged, softmax is shift-invariant).
// Backward from the output y: dx = y * (dy - sum(dy * y)) per row (the Jacobian
// diag(y) - y y^T applied to dy). f32 or f64.
#pragma once

#include <cstdint>

#include "core/dtype.h"
#include "core/tensor.h"
#include "kernels/loss.h"

namespace diffuse::kernels {

Tensor softmax_last_forward(const Tensor& x);
Tensor softmax_last_backward(const Tensor& dy, const Tensor& y);

// cpu fast path and reference loops, writing into caller-allocated outputs.
namespace cpu {
void softmax_last_forward(const Tensor& x, Tensor& y);
// One row of length L (x and y may alias), and its backward: shared with attention's fast path.
template <class T> void softmax_row(const T* x, T* y, int64_t L);
template <class T> void softmax_backward_row(const T* dy, const T* y, T* dx, int64_t L);
void softmax_last_backward(const Tensor& dy, const Tensor& y, Tensor& dx);
}  // namespace cpu
namespace ref {
void softmax_last_forward(const Tensor& x, Tensor& y);
void softmax_last_backward(const Tensor& dy, const Tensor& y, Tensor& dx);
}  // namespace ref

}  // namespace diffuse::kernels

// ---- On a GPU ------------------------------------------------------------------------------------
// launchers of kernels/cuda/softmax.cu (diffuse::cuda on the GPU,
// diffuse::emu under the emulator): softmax over the last dimension (kernels/softmax.h) and the
// cross-entropy loss on logits (kernels/loss.h). Rows (R, L) contiguous; math in f32.
#define DIFFUSE_SOFTMAX_LAUNCHERS                                                                      \
  /* y[r, :] = softmax(x[r, :]); dtype f32 or bf16 (x, y alike) */                                    \
  void softmax_forward(const void* x, void* y, DType dtype, int64_t rows, int64_t L, void* stream);    \
  /* dx[r, :] = y * (dy - sum(dy * y)) from the forward's output y */                                 \
  void softmax_backward(const void* dy, const void* y, void* dx, DType dtype, int64_t rows, int64_t L, \
                        void* stream);                                                                \
  /* logits (B, K) f32, labels (B) i64 in [0, K). lse[b] = logsumexp(logits[b]), row_loss[b] =       \
     lse[b] - logits[b, label], loss[0] = mean_b row_loss. A label out of range gives a NaN row loss \
     (a kernel cannot throw; the CPU path does). */                                                   \
  void cross_entropy_forward(const float* logits, const int64_t* labels, float* lse, float* row_loss, float* loss, \
                             int64_t B, int64_t K, void* stream);                                     \
  /* dlogits[b, k] = dloss[0] / B * (exp(logits[b, k] - lse[b]) - (k == label[b])); dloss on device */ \
  void cross_entropy_backward(const float* dloss, const float* logits, const int64_t* labels, const float* lse, \
                              float* dlogits, int64_t B, int64_t K, void* stream);

namespace diffuse {
namespace cuda { DIFFUSE_SOFTMAX_LAUNCHERS }
namespace emu { DIFFUSE_SOFTMAX_LAUNCHERS }
}  // namespace diffuse

// The Tensor-level op on a GPU, which kernels/softmax.cpp calls for a tensor on a CUDA device
// (kernels/cuda/softmax.cu; only in a build with the CUDA backend).
namespace diffuse::cuda {
Tensor softmax_last_forward(const Tensor& x);
Tensor softmax_last_backward(const Tensor& dy, const Tensor& y);
// The loss and the log-sum-exp are f32 whatever the logits' dtype (kernels/loss.cpp calls these).
kernels::CrossEntropyResult cross_entropy_forward(const Tensor& logits, const Tensor& labels);
Tensor cross_entropy_backward(const Tensor& dloss, const Tensor& logits, const Tensor& labels, const Tensor& lse);
}  // namespace diffuse::cuda
