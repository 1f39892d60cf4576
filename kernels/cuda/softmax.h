// kernels/cuda/softmax.h: launchers of kernels/cuda/softmax.cu (diffuse::cuda on the GPU,
// diffuse::emu under the emulator): softmax over the last dimension (kernels/softmax.h) and the
// cross-entropy loss on logits (kernels/loss.h). Rows (R, L) contiguous; math in f32.
#pragma once

#include <cstdint>

#include "core/dtype.h"
#include "core/tensor.h"
#include "kernels/loss.h"

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
// (kernels/cuda/softmax_cuda.cpp; only in a build with the CUDA backend).
namespace diffuse::cuda {
Tensor softmax_last_forward(const Tensor& x);
Tensor softmax_last_backward(const Tensor& dy, const Tensor& y);
// The loss and the log-sum-exp are f32 whatever the logits' dtype (kernels/loss.cpp calls these).
kernels::CrossEntropyResult cross_entropy_forward(const Tensor& logits, const Tensor& labels);
Tensor cross_entropy_backward(const Tensor& dloss, const Tensor& logits, const Tensor& labels, const Tensor& lse);
}  // namespace diffuse::cuda
