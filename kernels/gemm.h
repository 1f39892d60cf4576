// kernels/gemm.h: the dense matrix product under matmul, linear, convolution and attention on
// the cpu. Row-major: C = alpha * op(A) * op(B) + beta * C, op(A) is M x K, op(B) is K x N.
//
// gemm() is the fast path (OpenBLAS when the build has it, else a cache-blocked loop);
// gemm_reference() is the plain triple loop the tests trust.
#pragma once

#include <cstdint>

#include "core/tensor.h"
#include "kernels/matmul.h"

namespace diffuse::kernels {

void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
          const float* B, int64_t ldb, float beta, float* C, int64_t ldc);
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, double alpha, const double* A, int64_t lda,
          const double* B, int64_t ldb, double beta, double* C, int64_t ldc);

// Same contract, plain loops in the accumulation order a reader expects.
template <class T>
void gemm_reference(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
                    const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      T acc = 0;
      for (int64_t k = 0; k < K; ++k) {
        T a = trans_a ? A[k * lda + m] : A[m * lda + k];
        T b = trans_b ? B[n * ldb + k] : B[k * ldb + n];
        acc += a * b;
      }
      C[m * ldc + n] = alpha * acc + (beta == T(0) ? T(0) : beta * C[m * ldc + n]);
    }
}

// Which implementation gemm() uses: "openblas" or "blocked".
const char* gemm_backend();

}  // namespace diffuse::kernels

// ---- On a GPU ------------------------------------------------------------------------------------
// matrix products on cuBLASLt (kernels/cuda/gemm_cuda.cpp; only in a build
// with the CUDA backend): the GEMM under matmul, linear and the materialised attention, and the
// Tensor-level matmul and linear that kernels/matmul.cpp calls for tensors on a CUDA device.
namespace diffuse::cuda {

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
kernels::MatmulGrads matmul_backward(const Tensor& g, const Tensor& a, const Tensor& b, bool need_a, bool need_b);
Tensor linear_forward(const Tensor& x, const Tensor& w, const Tensor& bias);
kernels::LinearGrads linear_backward(const Tensor& g, const Tensor& x, const Tensor& w, bool need_x, bool need_w,
                                     bool need_b);

// The bf16 matrix rate of this GPU in TFLOP/s, from timing one large cuBLASLt GEMM (benchmarks).
double measure_bf16_gemm_tflops(int64_t n = 8192);

}  // namespace diffuse::cuda
