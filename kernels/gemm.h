// kernels/gemm.h: the dense matrix product under matmul, linear, convolution and attention on
// the cpu. Row-major: C = alpha * op(A) * op(B) + beta * C, op(A) is M x K, op(B) is K x N.
//
// gemm() is the fast path (OpenBLAS when the build has it, else a cache-blocked loop);
// gemm_reference() is the plain triple loop the tests trust.
#pragma once

#include <cstdint>

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
