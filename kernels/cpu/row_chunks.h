// kernels/cpu/row_chunks.h (internal to kernels/cpu): products over many rows, cut into chunks
// that stay in L2 and run as single-threaded GEMMs on OpenMP threads.
//
// Why: the cpu GEMM is OpenBLAS (pthreads build). Threaded by OpenBLAS itself, a tall-skinny
// product such as dW = G^T X over 50k pixel rows splits only its small output, and OpenBLAS's
// threads wake and sleep against OpenMP's spinning ones on the same cores; measured on the 2-core
// target (bench/cpu_conv) that was 3-6x slower than OpenMP threads each running single-threaded
// GEMMs on their own row chunks. Used by conv2d (with im2col chunks) and linear.
//
// Determinism: thread t of nt always gets the same contiguous run of chunks, and partial sums are
// added in thread order, so results depend on the thread count only, never on timing.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(DIFFUSE_HAVE_OPENBLAS)
#include <cblas.h>
#endif
#if defined(DIFFUSE_HAVE_DNNL)
#include <dnnl.h>
#endif

#include "core/check.h"
#include "kernels/gemm.h"

namespace diffuse::kernels::rows {

inline int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// Thread t of nt gets items [n t / nt, n (t+1) / nt).
inline int64_t share(int64_t n, int t, int nt) { return n * t / nt; }

// Runs body(t, nt) on `threads` OpenMP threads with OpenBLAS held at one thread (a pthreads
// OpenBLAS would otherwise start its own threads inside each call, on the same cores).
// openblas_set_num_threads is global, which is fine while one thread drives the model, as the
// trainer and the sampler do.
template <class F>
void parallel_serial_blas(int threads, F&& body) {
  if (threads <= 1) {
    body(0, 1);
    return;
  }
#if defined(DIFFUSE_HAVE_OPENBLAS)
  const int blas_threads = openblas_get_num_threads();
  if (blas_threads > 1) openblas_set_num_threads(1);
#endif
#pragma omp parallel num_threads(threads)
  {
#ifdef _OPENMP
    body(omp_get_thread_num(), omp_get_num_threads());
#else
    body(0, 1);
#endif
  }
#if defined(DIFFUSE_HAVE_OPENBLAS)
  if (blas_threads > 1) openblas_set_num_threads(blas_threads);
#endif
}

// One chunk's product, on the calling thread when called inside the OpenMP region below. f32 goes
// to oneDNN whatever the size: kernels::gemm sends products under 2^22 multiply-adds to OpenBLAS,
// whose 0.3.21 build runs SSE3 kernels on CPUs it does not know (the 2-core AVX-512 target among
// them), and a chunk is such a product. Single-threaded, process cpu time, on the target:
//   (224, 32, 288)  oneDNN 0.033 ms (126 GFLOP/s)   OpenBLAS 0.165 ms (25 GFLOP/s)
//   (128, 128, 2304) oneDNN 0.65 ms (117 GFLOP/s)   OpenBLAS 3.2 ms (24 GFLOP/s)
// with no fixed cost to speak of (oneDNN runs one thread inside an OpenMP region, as nested
// regions are inactive). f64 (gradchecks) stays on kernels::gemm.
inline void chunk_gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                       const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
#if defined(DIFFUSE_HAVE_DNNL)
  if (M == 0 || N == 0) return;
  const dnnl_status_t st = dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  DF_CHECK(st == dnnl_success, "oneDNN sgemm failed with status ", static_cast<int>(st), " (M=", M, " N=", N, " K=", K,
           ")");
#else
  gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
#endif
}

inline void chunk_gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const double* A, int64_t lda,
                       const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

// Rows per chunk for rows of `k` elements of `elem` bytes: ~256 KB, and at least 128 rows. The
// chunk and the GEMM's packed panels then stay in the 2 MB L2 of the target, and the GEMM still
// runs at its full rate (OpenBLAS SkylakeX kernels, one thread: ~100 GFLOP/s at 256..1024 rows
// against ~67 for a whole 50k-row product, whose operands stream from memory). The floor
// matters where k is long (3x3x256: 16 rows left the GEMM at half its rate). Chosen with
// bench/cpu_conv over 128 KB..1 MB and floors 16..128.
inline int64_t chunk_rows(int64_t k, size_t elem) {
  constexpr int64_t kChunkBytes = 256 << 10, kMinRows = 128;
  const int64_t r = kChunkBytes / (std::max<int64_t>(k, 1) * static_cast<int64_t>(elem));
  return std::max(r / 16 * 16, kMinRows);
}

inline int chunk_threads(int64_t M, int64_t R) {
  return static_cast<int>(std::clamp<int64_t>((M + R - 1) / R, 1, max_threads()));
}

// body(t, m0, m1) over the chunks [m0, m1) of M rows, R rows each.
template <class Body>
void for_each_chunk(int64_t M, int64_t R, Body&& body) {
  const int64_t chunks = (M + R - 1) / R;
  parallel_serial_blas(chunk_threads(M, R), [&](int t, int nt) {
    for (int64_t c = share(chunks, t, nt); c < share(chunks, t + 1, nt); ++c) body(t, c * R, std::min(M, c * R + R));
  });
}

// C (N x K) = G^T X, G (M x N) row-major with leading dim N, X's rows [m0, m1) (K wide, leading
// dim K) given by rows_of(m0, m1): a pointer valid until the next call on the same thread.
// Chunks of R rows; thread 0 accumulates into C, the others into partials added after in order.
template <class T, class RowsOf>
void gemm_tn_over_rows(int64_t M, int64_t N, int64_t K, const T* G, RowsOf&& rows_of, T* C, int64_t R) {
  const int nt = chunk_threads(M, R);
  std::vector<T> part(static_cast<size_t>((nt - 1) * N * K));
  std::vector<char> started(static_cast<size_t>(nt), 0);
  auto acc = [&](int t) { return t == 0 ? C : part.data() + (t - 1) * N * K; };
  for_each_chunk(M, R, [&](int t, int64_t m0, int64_t m1) {
    const T* X = rows_of(m0, m1);
    chunk_gemm(true, false, N, K, m1 - m0, T(1), G + m0 * N, N, X, K, started[t] ? T(1) : T(0), acc(t), K);
    started[t] = 1;
  });
  if (!started[0]) std::fill(C, C + N * K, T(0));
  for (int t = 1; t < nt; ++t)
    if (started[t]) {
      const T* p = acc(t);
      for (int64_t i = 0; i < N * K; ++i) C[i] += p[i];
    }
}

// Column sums of G (M x N) in double, per-thread partials added in thread order.
template <class T>
void column_sums(const T* G, int64_t M, int64_t N, T* out) {
  const int nt = static_cast<int>(std::clamp<int64_t>(M * N / 65536, 1, max_threads()));
  std::vector<double> part(static_cast<size_t>(nt * N), 0.0);
#pragma omp parallel for num_threads(nt) schedule(static, 1)
  for (int t = 0; t < nt; ++t) {
    double* p = part.data() + t * N;
    for (int64_t m = share(M, t, nt); m < share(M, t + 1, nt); ++m)
      for (int64_t n = 0; n < N; ++n) p[n] += G[m * N + n];
  }
  for (int64_t n = 0; n < N; ++n) {
    double acc = 0;
    for (int t = 0; t < nt; ++t) acc += part[t * N + n];
    out[n] = static_cast<T>(acc);
  }
}

}  // namespace diffuse::kernels::rows
