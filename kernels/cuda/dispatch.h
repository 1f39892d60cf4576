// kernels/cuda/dispatch.h: the Tensor-level ops on a CUDA device, which each op family's public
// function (kernels/<op>.h, defined in kernels/cpu/<op>.cpp) calls when its input lives on a GPU.
// Defined in kernels/cuda/*_cuda.cpp, compiled only into a CUDA build; callers guard their call
// with DIFFUSE_HAVE_CUDA.
//
// Contracts are the public ones, with the GPU's dtypes: activations f32 or bf16 (every operand of
// one call the same dtype), math and statistics in f32. Where the saved state differs from the
// cpu's it says so (group_norm's statistics are f32; attention keeps the row log-sum-exp). Outputs
// and workspaces come from the caching allocator (core/allocator.h) on the current stream, so a
// steady-state loop allocates nothing from the driver, and nothing here waits for the device.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "kernels/attention.h"
#include "kernels/conv2d.h"
#include "kernels/elementwise.h"
#include "kernels/group_norm.h"
#include "kernels/loss.h"
#include "kernels/matmul.h"
#include "kernels/sampler_step.h"

namespace diffuse::kernels::gpu {

// ---- elementwise (elementwise_cuda.cpp) ----
Tensor binary_forward(BinaryOp op, const Tensor& a, const Tensor& b);
Tensor sum_to(const Tensor& g, const Shape& shape);
Tensor broadcast_to(const Tensor& x, const Shape& shape);
Tensor unary_forward(UnaryOp op, const Tensor& x);
Tensor unary_backward(UnaryOp op, const Tensor& dy, const Tensor& x);
Tensor affine(const Tensor& x, double a, double b);  // a x + b, a new tensor
void axpby(double a, const Tensor& x, double b, Tensor& y);
void scale_(Tensor& y, double s);
Tensor sum(const Tensor& x, const std::vector<int>& axes, bool keepdim, double scale = 1.0);
Tensor dropout(const Tensor& x, float p, uint64_t seed, uint64_t offset);

// ---- softmax, cross-entropy, group_norm, attention, embedding, resampling, concat (nn_cuda.cpp) ----
Tensor softmax_last_forward(const Tensor& x);
Tensor softmax_last_backward(const Tensor& dy, const Tensor& y);
CrossEntropyResult cross_entropy_forward(const Tensor& logits, const Tensor& labels);
Tensor cross_entropy_backward(const Tensor& dloss, const Tensor& logits, const Tensor& labels, const Tensor& lse);
// x f32 or bf16; gamma, beta f32 (or x's dtype); scale, shift any float dtype (converted to f32 for
// the kernel, their gradients returned in their own dtype); mean and rstd f32.
GroupNormResult group_norm_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& scale,
                                   const Tensor& shift, const GroupNormOptions& opt);
GroupNormGrads group_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& mean, const Tensor& rstd,
                                   const Tensor& gamma, const Tensor& beta, const Tensor& scale, const Tensor& shift,
                                   const GroupNormOptions& opt);
// Head dims 32 and 64 run the flash kernels (saved = the row log-sum-exp (B, heads, Tq) f32): the
// bf16 tensor-core ones for bf16 on sm_80+, the SIMT ones otherwise. Other head dims materialise
// S = Q K^T per head with cuBLASLt and keep P (B, heads, Tq, Tk), as the cpu.
AttentionResult attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, int heads);
AttentionGrads attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                                  const AttentionResult& fwd, int heads);
Tensor embedding_forward(const Tensor& ids, const Tensor& table);
Tensor embedding_backward(const Tensor& dy, const Tensor& ids, const Shape& table_shape);
Tensor upsample_nearest2x_forward(const Tensor& x);
Tensor upsample_nearest2x_backward(const Tensor& g);
Tensor avg_pool2x_forward(const Tensor& x);
Tensor avg_pool2x_backward(const Tensor& g);
Tensor concat_last_forward(const std::vector<Tensor>& xs);
Tensor slice_last_forward(const Tensor& x, int64_t begin, int64_t end);
Tensor slice_last_backward(const Tensor& g, int64_t total, int64_t begin);
// The fused sampler step on device tensors: z, model_out (and the optional ones) f32 on one GPU;
// p.coeffs, p.aux, p.eps_shift, p.x0_out and p.seed_xor must already be device pointers.
void sampler_step(const SamplerStepParams& p, const Tensor& z, const Tensor& model_out, const Tensor& model_out_uncond,
                  Tensor& z_next);

// ---- matrix products on cuBLASLt (gemm_cuda.cpp) ----
// Row-major C (M, N) = alpha op(A) op(B) + beta C (+ bias[n] on every row), `batch` times with
// element strides between the matrices (0: the same matrix for every batch). A and B share a dtype
// (f32 or bf16); C may be f32 for bf16 inputs (weight gradients kept in f32); bias has C's dtype.
// f32 inputs multiply in full f32 (no TF32), bf16 on tensor cores with f32 accumulation.
struct GemmOperand {
  const void* ptr = nullptr;
  int64_t ld = 0, stride = 0;
  bool trans = false;
};
void gemm(DType ab_dtype, DType c_dtype, int64_t M, int64_t N, int64_t K, float alpha, const GemmOperand& A,
          const GemmOperand& B, float beta, void* C, int64_t ldc, int64_t stride_c, int64_t batch,
          const void* bias = nullptr);
Tensor matmul_forward(const Tensor& a, const Tensor& b);
MatmulGrads matmul_backward(const Tensor& g, const Tensor& a, const Tensor& b, bool need_a, bool need_b);
Tensor linear_forward(const Tensor& x, const Tensor& w, const Tensor& bias);
LinearGrads linear_backward(const Tensor& g, const Tensor& x, const Tensor& w, bool need_x, bool need_w, bool need_b);
// The bf16 matrix rate of this GPU in TFLOP/s, from timing one large cuBLASLt GEMM (benchmarks).
double measure_bf16_gemm_tflops(int64_t n = 8192);

// ---- convolution on cuDNN (conv2d_cuda.cpp), NHWC ----
Tensor conv2d_forward(const Tensor& x, const Tensor& w, const Tensor& bias, const Conv2dParams& p);
Conv2dGrads conv2d_backward(const Tensor& gy, const Tensor& x, const Tensor& w, const Conv2dParams& p, bool need_x,
                            bool need_w, bool need_b);

}  // namespace diffuse::kernels::gpu
