// kernels/gemm.cpp: the cpu GEMM. Large f32 products go to oneDNN, small ones and f64 to OpenBLAS,
// else a blocked loop parallel over rows of C.
//
// Why the split, measured on the 2-core AVX-512 CI machine (OpenBLAS 0.3.21 falls back to its
// SSE3 kernels there, not knowing the CPU model; oneDNN 2.6 JITs for the ISA it finds):
//   (M, N, K) = (3136, 64, 576):  oneDNN 0.78 ms (296 GFLOP/s)   OpenBLAS 9.0 ms
//   (50176, 32, 288):             oneDNN 14 ms                    OpenBLAS 56 ms
//   (64, 512, 128):               oneDNN 8.2 ms                   OpenBLAS 0.29 ms
// oneDNN's fixed cost per call (thread start-up and dispatch, about 8 ms at small M on this
// machine) loses below a few million multiply-adds, so the threshold sits at 2^22.
#include "kernels/gemm.h"

#include <algorithm>
#include <vector>

#include "core/check.h"

#if defined(DIFFUSE_HAVE_OPENBLAS)
#include <cblas.h>
#endif
#if defined(DIFFUSE_HAVE_DNNL)
#include <dnnl.h>
#endif

namespace diffuse::kernels {

namespace {

// Blocked fallback: packs a K-panel of op(B) so the inner loop streams contiguous memory and
// vectorises; rows of C are split across threads.
template <class T>
void gemm_blocked(bool ta, bool tb, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda, const T* B,
                  int64_t ldb, T beta, T* C, int64_t ldc) {
  constexpr int64_t KB = 256, NB = 512;
#pragma omp parallel for if (M * N > 4096)
  for (int64_t m = 0; m < M; ++m) {
    T* c = C + m * ldc;
    for (int64_t n = 0; n < N; ++n) c[n] = beta == T(0) ? T(0) : beta * c[n];
  }
  std::vector<T> panel(static_cast<size_t>(KB * NB));
  for (int64_t n0 = 0; n0 < N; n0 += NB) {
    int64_t nb = std::min(NB, N - n0);
    for (int64_t k0 = 0; k0 < K; k0 += KB) {
      int64_t kb = std::min(KB, K - k0);
      for (int64_t k = 0; k < kb; ++k)
        for (int64_t n = 0; n < nb; ++n)
          panel[k * nb + n] = tb ? B[(n0 + n) * ldb + k0 + k] : B[(k0 + k) * ldb + n0 + n];
      const T* p = panel.data();
#pragma omp parallel for if (M * nb * kb > 32768)
      for (int64_t m = 0; m < M; ++m) {
        T* c = C + m * ldc + n0;
        for (int64_t k = 0; k < kb; ++k) {
          T a = alpha * (ta ? A[(k0 + k) * lda + m] : A[m * lda + k0 + k]);
          const T* pk = p + k * nb;
#pragma omp simd
          for (int64_t n = 0; n < nb; ++n) c[n] += a * pk[n];
        }
      }
    }
  }
}

[[maybe_unused]] constexpr double kDnnlMinMacs = 4194304.0;  // 2^22 multiply-adds

void check_dims(int64_t M, int64_t N, int64_t K) {
  DF_CHECK(M >= 0 && N >= 0 && K >= 0, "gemm: bad sizes M=", M, " N=", N, " K=", K);
}

}  // namespace

void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda, const float* B,
          int64_t ldb, float beta, float* C, int64_t ldc) {
  check_dims(M, N, K);
  if (M == 0 || N == 0) return;
#if defined(DIFFUSE_HAVE_DNNL)
  if (static_cast<double>(M) * N * K >= kDnnlMinMacs) {
    dnnl_status_t st = dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    DF_CHECK(st == dnnl_success, "oneDNN sgemm failed with status ", static_cast<int>(st), " (M=", M, " N=", N,
             " K=", K, ")");
    return;
  }
#endif
#if defined(DIFFUSE_HAVE_OPENBLAS)
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, static_cast<int>(M),
              static_cast<int>(N), static_cast<int>(K), alpha, A, static_cast<int>(lda), B, static_cast<int>(ldb), beta,
              C, static_cast<int>(ldc));
#else
  gemm_blocked(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
#endif
}

void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const double* A, int64_t lda,
          const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  check_dims(M, N, K);
  if (M == 0 || N == 0) return;
#if defined(DIFFUSE_HAVE_OPENBLAS)
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, static_cast<int>(M),
              static_cast<int>(N), static_cast<int>(K), alpha, A, static_cast<int>(lda), B, static_cast<int>(ldb), beta,
              C, static_cast<int>(ldc));
#else
  gemm_blocked(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
#endif
}

const char* gemm_backend() {
#if defined(DIFFUSE_HAVE_DNNL) && defined(DIFFUSE_HAVE_OPENBLAS)
  return "onednn (large f32) + openblas";
#elif defined(DIFFUSE_HAVE_DNNL)
  return "onednn (large f32) + blocked";
#elif defined(DIFFUSE_HAVE_OPENBLAS)
  return "openblas";
#else
  return "blocked";
#endif
}

}  // namespace diffuse::kernels
