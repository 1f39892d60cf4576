// The simulated cuBLASLt and cuDNN interpret their descriptors as NVIDIA documents them, so a
// wrong call gives a wrong answer or the documented status: every layout attribute, transpose and
// epilogue against a plain loop written from the documentation's formula, and the statuses of
// what is not supported or does not fit. Inputs are small integers, so every product and sum is
// exact in f32 and the comparisons are exact (bf16 outputs: rounded once, compared with the
// rounding done here).
#include <catch2/catch.hpp>

#include <cublasLt.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "core/check.h"
#include "core/cuda_check.h"
#include "sim/sim.h"

using namespace diffuse;

namespace {

// A device copy of host data, freed at scope end.
template <class T>
struct DeviceBuf {
  T* p = nullptr;
  size_t n = 0;
  explicit DeviceBuf(const std::vector<T>& h) : n(h.size()) {
    REQUIRE(cudaMalloc(reinterpret_cast<void**>(&p), n * sizeof(T)) == cudaSuccess);
    REQUIRE(cudaMemcpy(p, h.data(), n * sizeof(T), cudaMemcpyHostToDevice) == cudaSuccess);
  }
  std::vector<T> get() const {
    std::vector<T> h(n);
    REQUIRE(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost) == cudaSuccess);
    return h;
  }
  ~DeviceBuf() { cudaFree(p); }
  DeviceBuf(const DeviceBuf&) = delete;
  DeviceBuf& operator=(const DeviceBuf&) = delete;
};

std::vector<float> ints(size_t n, uint64_t seed, int lo = -3, int hi = 3) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> u(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = static_cast<float>(u(rng));
  return v;
}

uint16_t to_bf16(float f) {  // round to nearest even
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
float from_bf16(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

struct Lt {
  cublasLtHandle_t h = nullptr;
  Lt() { REQUIRE(cublasLtCreate(&h) == CUBLAS_STATUS_SUCCESS); }
  ~Lt() { cublasLtDestroy(h); }
};

cublasLtMatrixLayout_t layout(cudaDataType t, uint64_t rows, uint64_t cols, int64_t ld, int32_t batch = 1,
                              int64_t stride = 0) {
  cublasLtMatrixLayout_t l = nullptr;
  REQUIRE(cublasLtMatrixLayoutCreate(&l, t, rows, cols, ld) == CUBLAS_STATUS_SUCCESS);
  if (batch > 1) {
    REQUIRE(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &batch, sizeof batch) ==
            CUBLAS_STATUS_SUCCESS);
    REQUIRE(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof stride) ==
            CUBLAS_STATUS_SUCCESS);
  }
  return l;
}

}  // namespace

TEST_CASE("cuBLASLt: D = alpha op(A) op(B) + beta C + bias, column-major, as documented", "[cuda][sim]") {
  Lt lt;
  // m x n = op(A) (m x k) op(B) (k x n); A stored k x m when transposed. Leading dimensions larger
  // than the rows, two batch instances at a stride, beta != 0 with C read, a bias per row of D.
  const int m = 5, n = 4, k = 3, batch = 2;
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      INFO("transa " << ta << " transb " << tb);
      const int a_rows = ta ? k : m, a_cols = ta ? m : k, b_rows = tb ? n : k, b_cols = tb ? k : n;
      const int lda = a_rows + 2, ldb = b_rows + 1, ldc = m + 3;
      const int64_t sa = lda * a_cols + 7, sb = ldb * b_cols + 3, sc = ldc * n + 1;
      const std::vector<float> A = ints(sa * batch, 1), B = ints(sb * batch, 2), C = ints(sc * batch, 3),
                               bias = ints(m, 4);
      DeviceBuf<float> dA(A), dB(B), dC(C), dBias(bias), dD(std::vector<float>(sc * batch, NAN));
      cublasLtMatmulDesc_t op = nullptr;
      REQUIRE(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F) == CUBLAS_STATUS_SUCCESS);
      const cublasOperation_t opa = ta ? CUBLAS_OP_T : CUBLAS_OP_N, opb = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
      REQUIRE(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa) == CUBLAS_STATUS_SUCCESS);
      REQUIRE(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb) == CUBLAS_STATUS_SUCCESS);
      const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_RELU_BIAS;
      REQUIRE(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi) == CUBLAS_STATUS_SUCCESS);
      const float* bias_p = dBias.p;
      REQUIRE(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias_p, sizeof bias_p) ==
              CUBLAS_STATUS_SUCCESS);
      cublasLtMatrixLayout_t la = layout(CUDA_R_32F, a_rows, a_cols, lda, batch, sa),
                             lb = layout(CUDA_R_32F, b_rows, b_cols, ldb, batch, sb),
                             lc = layout(CUDA_R_32F, m, n, ldc, batch, sc);
      const float alpha = 0.5f, beta = 2.f;
      REQUIRE(cublasLtMatmul(lt.h, op, &alpha, dA.p, la, dB.p, lb, &beta, dC.p, lc, dD.p, lc, nullptr, nullptr, 0,
                             nullptr) == CUBLAS_STATUS_SUCCESS);
      const std::vector<float> D = dD.get();
      for (int b = 0; b < batch; ++b)
        for (int j = 0; j < n; ++j)
          for (int i = 0; i < m; ++i) {
            double acc = 0;
            for (int q = 0; q < k; ++q) {
              const double a = ta ? A[b * sa + q + i * lda] : A[b * sa + i + q * lda];
              const double bb = tb ? B[b * sb + j + q * ldb] : B[b * sb + q + j * ldb];
              acc += a * bb;
            }
            double want = alpha * acc + beta * C[b * sc + i + j * ldc] + bias[i];
            want = want > 0 ? want : 0;
            CHECK(D[b * sc + i + j * ldc] == static_cast<float>(want));
          }
      // Padding between columns and batch instances is never written.
      CHECK(std::isnan(dD.get()[m]));
      for (auto l : {la, lb, lc}) cublasLtMatrixLayoutDestroy(l);
      cublasLtMatmulDescDestroy(op);
    }
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
}

TEST_CASE("cuBLASLt: bf16 operands, an f32 or a bf16 D rounded once", "[cuda][sim]") {
  Lt lt;
  // 1 x 1 x 2: D = a0 b0 + a1 b1 = 1 + 2^-8 + 2^-9 (exact in f32): bf16 keeps 8 significant bits,
  // so the bf16 D is 1 + 2^-7 (nearest), the f32 D the exact sum.
  const std::vector<uint16_t> A = {to_bf16(1.f), to_bf16(1.f)}, B = {to_bf16(1.f + 1.f / 128), to_bf16(-1.f / 512)};
  const float want = (1.f + 1.f / 128) - 1.f / 512;
  DeviceBuf<uint16_t> dA(A), dB(B), dD16(std::vector<uint16_t>(1, 0));
  DeviceBuf<float> dD32(std::vector<float>(1, 0.f));
  cublasLtMatmulDesc_t op = nullptr;
  REQUIRE(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F) == CUBLAS_STATUS_SUCCESS);
  cublasLtMatrixLayout_t la = layout(CUDA_R_16BF, 1, 2, 1), lb = layout(CUDA_R_16BF, 2, 1, 2),
                         l16 = layout(CUDA_R_16BF, 1, 1, 1), l32 = layout(CUDA_R_32F, 1, 1, 1);
  const float one = 1.f, zero = 0.f;
  REQUIRE(cublasLtMatmul(lt.h, op, &one, dA.p, la, dB.p, lb, &zero, dD32.p, l32, dD32.p, l32, nullptr, nullptr, 0,
                         nullptr) == CUBLAS_STATUS_SUCCESS);
  REQUIRE(cublasLtMatmul(lt.h, op, &one, dA.p, la, dB.p, lb, &zero, dD16.p, l16, dD16.p, l16, nullptr, nullptr, 0,
                         nullptr) == CUBLAS_STATUS_SUCCESS);
  CHECK(dD32.get()[0] == want);
  CHECK(from_bf16(dD16.get()[0]) == from_bf16(to_bf16(want)));
  CHECK(from_bf16(dD16.get()[0]) != want);
  for (auto l : {la, lb, l16, l32}) cublasLtMatrixLayoutDestroy(l);
  cublasLtMatmulDescDestroy(op);
}

TEST_CASE("cuBLASLt: the documented statuses for what does not fit or is not supported", "[cuda][sim]") {
  Lt lt;
  DeviceBuf<float> buf(std::vector<float>(4096, 1.f));
  cublasLtMatmulDesc_t op = nullptr;
  REQUIRE(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F) == CUBLAS_STATUS_SUCCESS);
  cublasLtMatrixLayout_t a = layout(CUDA_R_32F, 8, 8, 8), b = layout(CUDA_R_32F, 8, 8, 8), c = layout(CUDA_R_32F, 8, 8, 8);
  const float one = 1.f, zero = 0.f;
  // An attribute of the wrong size.
  const int64_t wide = CUBLAS_OP_T;
  CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &wide, sizeof wide) == CUBLAS_STATUS_INVALID_VALUE);
  // Sizes that do not fit: op(A) 8 x 8 times a 4 x 8 B.
  cublasLtMatrixLayout_t small = layout(CUDA_R_32F, 4, 8, 4);
  CHECK(cublasLtMatmul(lt.h, op, &one, buf.p, a, buf.p, small, &zero, buf.p + 1024, c, buf.p + 1024, c, nullptr,
                       nullptr, 0, nullptr) == CUBLAS_STATUS_INVALID_VALUE);
  // A leading dimension below the row count.
  cublasLtMatrixLayout_t bad_ld = layout(CUDA_R_32F, 8, 8, 4);
  CHECK(cublasLtMatmul(lt.h, op, &one, buf.p, bad_ld, buf.p, b, &zero, buf.p + 1024, c, buf.p + 1024, c, nullptr,
                       nullptr, 0, nullptr) == CUBLAS_STATUS_INVALID_VALUE);
  // Row-major order, an epilogue with an auxiliary output: not simulated, so NOT_SUPPORTED.
  cublasLtMatrixLayout_t row = layout(CUDA_R_32F, 8, 8, 8);
  const int32_t order = CUBLASLT_ORDER_ROW;
  REQUIRE(cublasLtMatrixLayoutSetAttribute(row, CUBLASLT_MATRIX_LAYOUT_ORDER, &order, sizeof order) ==
          CUBLAS_STATUS_SUCCESS);
  CHECK(cublasLtMatmul(lt.h, op, &one, buf.p, row, buf.p, b, &zero, buf.p + 1024, c, buf.p + 1024, c, nullptr, nullptr,
                       0, nullptr) == CUBLAS_STATUS_NOT_SUPPORTED);
  cublasLtMatmulDesc_t gelu = nullptr;
  REQUIRE(cublasLtMatmulDescCreate(&gelu, CUBLAS_COMPUTE_32F, CUDA_R_32F) == CUBLAS_STATUS_SUCCESS);
  const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_GELU_AUX;
  REQUIRE(cublasLtMatmulDescSetAttribute(gelu, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi) == CUBLAS_STATUS_SUCCESS);
  CHECK(cublasLtMatmul(lt.h, gelu, &one, buf.p, a, buf.p, b, &zero, buf.p + 1024, c, buf.p + 1024, c, nullptr, nullptr,
                       0, nullptr) == CUBLAS_STATUS_NOT_SUPPORTED);
  // The heuristic's algorithm assumes the preference's alignment and asks for a workspace.
  cublasLtMatmulPreference_t pref = nullptr;
  REQUIRE(cublasLtMatmulPreferenceCreate(&pref) == CUBLAS_STATUS_SUCCESS);
  const uint64_t ws = 1 << 22;
  REQUIRE(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws) ==
          CUBLAS_STATUS_SUCCESS);
  cublasLtMatmulHeuristicResult_t r{};
  int found = 0;
  REQUIRE(cublasLtMatmulAlgoGetHeuristic(lt.h, op, a, b, c, c, pref, 1, &r, &found) == CUBLAS_STATUS_SUCCESS);
  REQUIRE(found == 1);
  REQUIRE(r.workspaceSize > 0);
  DeviceBuf<char> work(std::vector<char>(r.workspaceSize, 0));
  CHECK(cublasLtMatmul(lt.h, op, &one, buf.p, a, buf.p, b, &zero, buf.p + 1024, c, buf.p + 1024, c, &r.algo, work.p,
                       r.workspaceSize - 1, nullptr) == CUBLAS_STATUS_INVALID_VALUE);  // too small a workspace
  CHECK(cublasLtMatmul(lt.h, op, &one, buf.p + 1, a, buf.p, b, &zero, buf.p + 1024, c, buf.p + 1024, c, &r.algo,
                       work.p, r.workspaceSize, nullptr) == CUBLAS_STATUS_INVALID_VALUE);  // A 4-byte aligned
  CHECK(cublasLtMatmul(lt.h, op, &one, buf.p, a, buf.p, b, &zero, buf.p + 1024, c, buf.p + 1024, c, &r.algo, work.p,
                       r.workspaceSize, nullptr) == CUBLAS_STATUS_SUCCESS);
  // A matrix that runs past its allocation: refused, naming it (and the device is lost, as after
  // an illegal address on a GPU).
  sim::clear_reports();
  cublasLtMatrixLayout_t big = layout(CUDA_R_32F, 64, 65, 64);
  CHECK(cublasLtMatmul(lt.h, op, &one, buf.p, big, buf.p, layout(CUDA_R_32F, 65, 1, 65), &zero, buf.p, layout(CUDA_R_32F, 64, 1, 64),
                       buf.p, layout(CUDA_R_32F, 64, 1, 64), nullptr, nullptr, 0, nullptr) == CUBLAS_STATUS_EXECUTION_FAILED);
  REQUIRE_FALSE(sim::reports().empty());
  CHECK_THAT(sim::reports().front(), Catch::Contains("cublasLtMatmul: matrix A") && Catch::Contains("run past its end"));
  sim::clear_sticky_error();
  cublasLtMatmulPreferenceDestroy(pref);
  for (auto l : {a, b, c, small, bad_ld, row, big}) cublasLtMatrixLayoutDestroy(l);
  cublasLtMatmulDescDestroy(op);
  cublasLtMatmulDescDestroy(gelu);
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
}

namespace {

struct Dnn {
  cudnnHandle_t h = nullptr;
  cudnnTensorDescriptor_t x = nullptr, y = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t c = nullptr;
  Dnn() {
    REQUIRE(cudnnCreate(&h) == CUDNN_STATUS_SUCCESS);
    REQUIRE(cudnnCreateTensorDescriptor(&x) == CUDNN_STATUS_SUCCESS);
    REQUIRE(cudnnCreateTensorDescriptor(&y) == CUDNN_STATUS_SUCCESS);
    REQUIRE(cudnnCreateFilterDescriptor(&w) == CUDNN_STATUS_SUCCESS);
    REQUIRE(cudnnCreateConvolutionDescriptor(&c) == CUDNN_STATUS_SUCCESS);
  }
  ~Dnn() {
    cudnnDestroyTensorDescriptor(x);
    cudnnDestroyTensorDescriptor(y);
    cudnnDestroyFilterDescriptor(w);
    cudnnDestroyConvolutionDescriptor(c);
    cudnnDestroy(h);
  }
};

// The documentation's forward formula over logical (n, c, h, w) indices; `at` gives the element.
template <class X, class W>
double conv_at(X x, W w, int n, int k, int p, int q, int C, int H, int Wd, int R, int S, int pad, int stride, int dil,
               bool flip) {
  double acc = 0;
  for (int ch = 0; ch < C; ++ch)
    for (int r = 0; r < R; ++r)
      for (int s = 0; s < S; ++s) {
        const int h = p * stride - pad + r * dil, ww = q * stride - pad + s * dil;
        if (h < 0 || h >= H || ww < 0 || ww >= Wd) continue;
        acc += x(n, ch, h, ww) * w(k, ch, flip ? R - 1 - r : r, flip ? S - 1 - s : s);
      }
  return acc;
}

}  // namespace

TEST_CASE("cuDNN: NCHW and NHWC, convolution and cross-correlation, dilation, beta", "[cuda][sim]") {
  const int N = 2, C = 3, H = 7, W = 6, K = 4, R = 3, S = 2, pad = 1, stride = 2, dil = 2;
  const int P = 1 + (H + 2 * pad - ((R - 1) * dil + 1)) / stride, Q = 1 + (W + 2 * pad - ((S - 1) * dil + 1)) / stride;
  const std::vector<float> x = ints(N * C * H * W, 5), w = ints(K * C * R * S, 6), y0 = ints(N * K * P * Q, 7);
  for (cudnnTensorFormat_t f : {CUDNN_TENSOR_NCHW, CUDNN_TENSOR_NHWC})
    for (cudnnConvolutionMode_t mode : {CUDNN_CROSS_CORRELATION, CUDNN_CONVOLUTION}) {
      INFO("format " << f << " mode " << mode);
      const bool nhwc = f == CUDNN_TENSOR_NHWC;
      // Host buffers hold the logical tensors in the format asked for.
      auto xi = [&](int n, int c, int h, int ww) {
        return nhwc ? ((n * H + h) * W + ww) * C + c : ((n * C + c) * H + h) * W + ww;
      };
      auto wi = [&](int k, int c, int r, int s) { return nhwc ? ((k * R + r) * S + s) * C + c : ((k * C + c) * R + r) * S + s; };
      auto yi = [&](int n, int k, int p, int q) {
        return nhwc ? ((n * P + p) * Q + q) * K + k : ((n * K + k) * P + p) * Q + q;
      };
      Dnn d;
      REQUIRE(cudnnSetTensor4dDescriptor(d.x, f, CUDNN_DATA_FLOAT, N, C, H, W) == CUDNN_STATUS_SUCCESS);
      REQUIRE(cudnnSetTensor4dDescriptor(d.y, f, CUDNN_DATA_FLOAT, N, K, P, Q) == CUDNN_STATUS_SUCCESS);
      REQUIRE(cudnnSetFilter4dDescriptor(d.w, CUDNN_DATA_FLOAT, f, K, C, R, S) == CUDNN_STATUS_SUCCESS);
      REQUIRE(cudnnSetConvolution2dDescriptor(d.c, pad, pad, stride, stride, dil, dil, mode, CUDNN_DATA_FLOAT) ==
              CUDNN_STATUS_SUCCESS);
      REQUIRE(cudnnSetConvolutionMathType(d.c, CUDNN_FMA_MATH) == CUDNN_STATUS_SUCCESS);
      DeviceBuf<float> dx(x), dw(w), dy(y0);
      // y = 1 * conv(x, w) + 1 * y: beta blends the old output in.
      const float one = 1.f;
      REQUIRE(cudnnConvolutionForward(d.h, &one, d.x, dx.p, d.w, dw.p, d.c, CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
                                      nullptr, 0, &one, d.y, dy.p) == CUDNN_STATUS_SUCCESS);
      const std::vector<float> y = dy.get();
      auto X = [&](int n, int c, int h, int ww) { return static_cast<double>(x[xi(n, c, h, ww)]); };
      auto Wt = [&](int k, int c, int r, int s) { return static_cast<double>(w[wi(k, c, r, s)]); };
      for (int n = 0; n < N; ++n)
        for (int k = 0; k < K; ++k)
          for (int p = 0; p < P; ++p)
            for (int q = 0; q < Q; ++q) {
              const double want = conv_at(X, Wt, n, k, p, q, C, H, W, R, S, pad, stride, dil, mode == CUDNN_CONVOLUTION) +
                                  y0[yi(n, k, p, q)];
              CHECK(y[yi(n, k, p, q)] == static_cast<float>(want));
            }
    }
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
}

TEST_CASE("cuDNN: algorithms, workspaces and the statuses of what does not fit", "[cuda][sim]") {
  const int N = 2, C = 4, H = 6, W = 6, K = 3;
  Dnn d;
  REQUIRE(cudnnSetTensor4dDescriptor(d.x, CUDNN_TENSOR_NHWC, CUDNN_DATA_FLOAT, N, C, H, W) == CUDNN_STATUS_SUCCESS);
  REQUIRE(cudnnSetTensor4dDescriptor(d.y, CUDNN_TENSOR_NHWC, CUDNN_DATA_FLOAT, N, K, H, W) == CUDNN_STATUS_SUCCESS);
  REQUIRE(cudnnSetFilter4dDescriptor(d.w, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NHWC, K, C, 3, 3) == CUDNN_STATUS_SUCCESS);
  REQUIRE(cudnnSetConvolution2dDescriptor(d.c, 1, 1, 1, 1, 1, 1, CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT) ==
          CUDNN_STATUS_SUCCESS);
  REQUIRE(cudnnSetConvolutionMathType(d.c, CUDNN_FMA_MATH) == CUDNN_STATUS_SUCCESS);
  DeviceBuf<float> dx(ints(N * C * H * W, 8)), dw(ints(K * C * 9, 9)), dy(ints(N * K * H * W, 10));
  DeviceBuf<char> ws(std::vector<char>(1 << 20, 0));
  const float one = 1.f, zero = 0.f;

  // Find: sorted by time, what ran first; the fastest backward-filter algorithms are the
  // non-deterministic ones, and say so.
  cudnnConvolutionBwdFilterAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
  int n = 0;
  REQUIRE(cudnnFindConvolutionBackwardFilterAlgorithmEx(d.h, d.x, dx.p, d.y, dy.p, d.c, d.w, dw.p,
                                                        CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &n, perf, ws.p,
                                                        1 << 20) == CUDNN_STATUS_SUCCESS);
  REQUIRE(n == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT);
  CHECK(perf[0].status == CUDNN_STATUS_SUCCESS);
  CHECK(perf[0].determinism == CUDNN_NON_DETERMINISTIC);
  for (int i = 1; i < n; ++i)
    if (perf[i].status == CUDNN_STATUS_SUCCESS) CHECK(perf[i].time >= perf[i - 1].time);
  const cudnnConvolutionBwdFilterAlgoPerf_t* det = nullptr;
  for (int i = 0; i < n && !det; ++i)
    if (perf[i].status == CUDNN_STATUS_SUCCESS && perf[i].determinism == CUDNN_DETERMINISTIC) det = &perf[i];
  REQUIRE(det);
  // A deterministic algorithm gives the same bits twice; a non-deterministic one sums in another
  // order each time (here over 72 terms: some element almost surely differs in its last bits).
  const std::vector<float> big_x = [] {
    std::mt19937_64 rng(11);
    std::normal_distribution<float> g;
    std::vector<float> v(N * C * H * W);
    for (float& a : v) a = g(rng);
    return v;
  }();
  DeviceBuf<float> gx(big_x);
  auto run = [&](cudnnConvolutionBwdFilterAlgo_t algo, size_t need) {
    DeviceBuf<float> out(std::vector<float>(K * C * 9, 0.f));
    REQUIRE(cudnnConvolutionBackwardFilter(d.h, &one, d.x, gx.p, d.y, dy.p, d.c, algo, ws.p, need, &zero, d.w,
                                           out.p) == CUDNN_STATUS_SUCCESS);
    return out.get();
  };
  CHECK(run(det->algo, det->memory) == run(det->algo, det->memory));
  bool differ = false;
  for (int i = 0; i < 4 && !differ; ++i)
    differ = run(CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0, 0) != run(CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0, 0);
  CHECK(differ);

  // Less workspace than the algorithm needs; an algorithm that does not support NHWC (FFT); a
  // filter whose channels do not match x's; bf16 tensors with bf16 compute.
  REQUIRE(det->memory > 0);
  CHECK(cudnnConvolutionBackwardFilter(d.h, &one, d.x, dx.p, d.y, dy.p, d.c, det->algo, ws.p, det->memory - 1, &zero,
                                       d.w, dw.p) == CUDNN_STATUS_NOT_SUPPORTED);
  CHECK(cudnnConvolutionForward(d.h, &one, d.x, dx.p, d.w, dw.p, d.c, CUDNN_CONVOLUTION_FWD_ALGO_FFT, ws.p, 1 << 20,
                                &zero, d.y, dy.p) == CUDNN_STATUS_NOT_SUPPORTED);
  cudnnFilterDescriptor_t w5 = nullptr;
  REQUIRE(cudnnCreateFilterDescriptor(&w5) == CUDNN_STATUS_SUCCESS);
  REQUIRE(cudnnSetFilter4dDescriptor(w5, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NHWC, K, C + 1, 3, 3) == CUDNN_STATUS_SUCCESS);
  CHECK(cudnnConvolutionForward(d.h, &one, d.x, dx.p, w5, dw.p, d.c, CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, nullptr, 0,
                                &zero, d.y, dy.p) == CUDNN_STATUS_BAD_PARAM);
  cudnnDestroyFilterDescriptor(w5);
  cudnnConvolutionDescriptor_t bf = nullptr;
  REQUIRE(cudnnCreateConvolutionDescriptor(&bf) == CUDNN_STATUS_SUCCESS);
  REQUIRE(cudnnSetConvolution2dDescriptor(bf, 1, 1, 1, 1, 1, 1, CUDNN_CROSS_CORRELATION, CUDNN_DATA_BFLOAT16) ==
          CUDNN_STATUS_SUCCESS);
  cudnnTensorDescriptor_t xb = nullptr, yb = nullptr;
  cudnnFilterDescriptor_t wb = nullptr;
  REQUIRE(cudnnCreateTensorDescriptor(&xb) == CUDNN_STATUS_SUCCESS);
  REQUIRE(cudnnCreateTensorDescriptor(&yb) == CUDNN_STATUS_SUCCESS);
  REQUIRE(cudnnCreateFilterDescriptor(&wb) == CUDNN_STATUS_SUCCESS);
  REQUIRE(cudnnSetTensor4dDescriptor(xb, CUDNN_TENSOR_NHWC, CUDNN_DATA_BFLOAT16, N, C, H, W) == CUDNN_STATUS_SUCCESS);
  REQUIRE(cudnnSetTensor4dDescriptor(yb, CUDNN_TENSOR_NHWC, CUDNN_DATA_BFLOAT16, N, K, H, W) == CUDNN_STATUS_SUCCESS);
  REQUIRE(cudnnSetFilter4dDescriptor(wb, CUDNN_DATA_BFLOAT16, CUDNN_TENSOR_NHWC, K, C, 3, 3) == CUDNN_STATUS_SUCCESS);
  CHECK(cudnnConvolutionForward(d.h, &one, xb, dx.p, wb, dw.p, bf, CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, nullptr, 0,
                                &zero, yb, dy.p) == CUDNN_STATUS_NOT_SUPPORTED);
  cudnnDestroyTensorDescriptor(xb);
  cudnnDestroyTensorDescriptor(yb);
  cudnnDestroyFilterDescriptor(wb);
  cudnnDestroyConvolutionDescriptor(bf);
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
}

// core/cuda_check.h's library check names the library's status and the CUDA error left pending,
// in each of its three failure forms, and clears the pending error it reports.
TEST_CASE("a failed library call is reported with its status and any pending CUDA error", "[cuda][sim]") {
  cublasLtMatmulDesc_t op = nullptr;
  REQUIRE(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F) == CUBLAS_STATUS_SUCCESS);
  const int64_t wide = CUBLAS_OP_T;  // an attribute of the wrong size: CUBLAS_STATUS_INVALID_VALUE
  auto bad_call = [&] { DF_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &wide, sizeof wide)); };
  auto good_call = [&] {
    const int32_t t = CUBLAS_OP_N;
    DF_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &t, sizeof t));
  };
  // The status alone.
  CHECK_THROWS_WITH(bad_call(), Catch::Matchers::Contains("cublasLtMatmulDescSetAttribute") &&
                                    Catch::Matchers::Contains("failed: ") &&
                                    !Catch::Matchers::Contains("with the CUDA error"));
  // The status and a pending runtime error (cudaSetDevice on a device that does not exist).
  REQUIRE(cudaSetDevice(9999) != cudaSuccess);
  CHECK_THROWS_WITH(bad_call(), Catch::Matchers::Contains("with the CUDA error cudaErrorInvalidDevice"));
  CHECK(cudaGetLastError() == cudaSuccess);  // reported once, then cleared
  // A call that succeeded but left a runtime error behind takes the blame for it.
  REQUIRE(cudaSetDevice(9999) != cudaSuccess);
  CHECK_THROWS_WITH(good_call(), Catch::Matchers::Contains("it left the CUDA error cudaErrorInvalidDevice"));
  CHECK(cudaGetLastError() == cudaSuccess);
  CHECK_NOTHROW(good_call());
  cublasLtMatmulDescDestroy(op);
}

// A stream whose capture state cannot be read is not waited for (a wait there could be illegal).
TEST_CASE("no wait after a launch on a stream whose capture state cannot be read", "[cuda][sim]") {
  cudaStream_t s = nullptr;
  REQUIRE(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess);
  CHECK(diffuse::detail::may_wait_for(s, s));
  REQUIRE(cudaStreamDestroy(s) == cudaSuccess);
  CHECK_FALSE(diffuse::detail::may_wait_for(s, nullptr));  // a destroyed stream: the query fails
  CHECK(cudaGetLastError() == cudaSuccess);                 // and its error is cleared
  CHECK(diffuse::detail::wait_after_launch(s, nullptr) == cudaSuccess);
}
