// kernels/cuda/gemm_cuda.cpp: matrix products on cuBLASLt (kernels/gemm.h): the GEMM
// under matmul, linear and the materialised attention, and the Tensor-level matmul and linear.
//
// Row-major to cuBLAS. cuBLAS is column-major; a row-major (M, N) matrix is the column-major
// (N, M) one with the same leading dimension, so C = op(A) op(B) is computed as
// C^T = op(B)^T op(A)^T: cuBLAS's "A" is our B and its "B" our A, each transposed exactly when
// ours is. linear's bias is then a bias per row of cuBLAS's D, which is what the BIAS epilogue
// adds in the GEMM's final write (one pass over y saved per linear).
//
// Plans. A GEMM's descriptors and the algorithm cuBLASLt's heuristic picks are built once per
// shape (dtypes, transposes, sizes, leading dimensions, strides, batch, epilogue and the
// alignment of the pointers) and cached; a call sets the bias pointer and launches. The
// workspace (32 MiB, what NVIDIA recommends for Hopper) comes from the caching allocator per call,
// so a captured graph gets its own. Every status is checked.
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

#include "core/check.h"
#include "core/cuda_check.h"
#include "core/stream.h"
#include "kernels/elementwise.h"
#include "kernels/gemm.h"

namespace diffuse::cuda {

using kernels::LinearGrads;
using kernels::MatmulGrads;

namespace {

constexpr size_t kWorkspaceBytes = size_t{32} << 20;
constexpr int kMaxDevices = 16;

cublasLtHandle_t lt_handle(int device) {
  static std::mutex mu;
  static cublasLtHandle_t handles[kMaxDevices] = {};
  DF_CHECK(device >= 0 && device < kMaxDevices, "cuBLASLt: device ", device);
  std::lock_guard<std::mutex> lock(mu);
  if (!handles[device]) DF_CUBLAS_CHECK(cublasLtCreate(&handles[device]));
  return handles[device];
}

cudaDataType_t cuda_type(DType t) {
  DF_CHECK(t == DType::f32 || t == DType::bf16, "gemm: dtype ", dtype_name(t), " (f32 or bf16 expected)");
  return t == DType::f32 ? CUDA_R_32F : CUDA_R_16BF;
}

// The largest power of two (up to 256) dividing the address: what the heuristic may assume.
uint32_t alignment_of(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  uint32_t al = 256;
  while (al > 1 && a % al != 0) al /= 2;
  return al;
}

using PlanKey = std::tuple<int, int, int, int, bool, bool, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                           int64_t, int64_t, int64_t, int64_t, bool, uint32_t, uint32_t, uint32_t, uint32_t>;

struct Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  size_t workspace = 0;
};

cublasLtMatrixLayout_t layout(cudaDataType_t t, int64_t rows, int64_t cols, int64_t ld, int64_t batch,
                              int64_t stride) {
  cublasLtMatrixLayout_t l = nullptr;
  DF_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&l, t, static_cast<uint64_t>(rows), static_cast<uint64_t>(cols), ld));
  if (batch > 1) {
    const int32_t count = static_cast<int32_t>(batch);
    DF_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count)));
    DF_CUBLAS_CHECK(
        cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof(stride)));
  }
  return l;
}

// Plans live for the process (a model has a few dozen shapes); the mutex also orders the bias
// pointer update with the launch that reads it.
std::mutex g_plans_mu;
std::map<PlanKey, Plan>& plans() {
  static auto* m = new std::map<PlanKey, Plan>;
  return *m;
}

}  // namespace

void gemm(DType ab_dtype, DType c_dtype, int64_t M, int64_t N, int64_t K, float alpha, const GemmOperand& A,
          const GemmOperand& B, float beta, void* C, int64_t ldc, int64_t stride_c, int64_t batch, const void* bias) {
  DF_CHECK(M >= 0 && N >= 0 && K >= 0 && batch >= 1, "gemm: M=", M, " N=", N, " K=", K, " batch=", batch);
  DF_CHECK(batch <= 0x7fffffff, "gemm: batch ", batch);
  if (M == 0 || N == 0) return;
  const cudaDataType_t tab = cuda_type(ab_dtype), tc = cuda_type(c_dtype);
  DF_CHECK(ab_dtype == c_dtype || (ab_dtype == DType::bf16 && c_dtype == DType::f32),
           "gemm: ", dtype_name(ab_dtype), " inputs with a ", dtype_name(c_dtype), " output");
  DF_CHECK(A.ptr && B.ptr && C, "gemm: null pointer");
  int device = 0;
  DF_CUDA_CHECK(cudaGetDevice(&device));
  if (K == 0) {
    // An empty sum: cuBLASLt rejects K = 0; C = beta C (+ bias) is not needed by any caller.
    DF_CHECK(beta == 0.f && !bias, "gemm: K = 0 with beta or a bias");
    const size_t es = dtype_size(c_dtype);
    for (int64_t i = 0; i < batch; ++i)
      DF_CUDA_CHECK(cudaMemset2DAsync(static_cast<char*>(C) + i * stride_c * es, ldc * es, 0, N * es, M,
                                      static_cast<cudaStream_t>(current_stream())));
    return;
  }
  // cuBLAS's operands: its A is our B, its B our A; D (N x M column-major) is our C.
  const PlanKey key{device, static_cast<int>(ab_dtype), static_cast<int>(c_dtype), 0, A.trans, B.trans, M, N, K,
                    A.ld, B.ld, ldc, A.stride, B.stride, stride_c, batch, bias != nullptr,
                    alignment_of(A.ptr), alignment_of(B.ptr), alignment_of(C), alignment_of(bias)};
  cublasLtHandle_t handle = lt_handle(device);
  std::lock_guard<std::mutex> lock(g_plans_mu);
  auto it = plans().find(key);
  if (it == plans().end()) {
    Plan p;
    DF_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t ta = B.trans ? CUBLAS_OP_T : CUBLAS_OP_N, tb = A.trans ? CUBLAS_OP_T : CUBLAS_OP_N;
    DF_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
    DF_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
    if (bias) {
      const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
      DF_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
    }
    // Stored shapes (column-major view): our B is K x N row-major = N x K col-major unless transposed.
    p.a = B.trans ? layout(tab, K, N, B.ld, batch, B.stride) : layout(tab, N, K, B.ld, batch, B.stride);
    p.b = A.trans ? layout(tab, M, K, A.ld, batch, A.stride) : layout(tab, K, M, A.ld, batch, A.stride);
    p.c = layout(tc, N, M, ldc, batch, stride_c);
    cublasLtMatmulPreference_t pref = nullptr;
    DF_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    const uint64_t ws = kWorkspaceBytes;
    DF_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                                         sizeof(ws)));
    const uint32_t al_a = std::get<18>(key), al_b = std::get<17>(key), al_c = std::get<19>(key);
    DF_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a,
                                                         sizeof(al_a)));
    DF_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b,
                                                         sizeof(al_b)));
    DF_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_c,
                                                         sizeof(al_c)));
    DF_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_c,
                                                         sizeof(al_c)));
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    const cublasStatus_t st =
        cublasLtMatmulAlgoGetHeuristic(handle, p.op, p.a, p.b, p.c, p.c, pref, 1, &result, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    DF_CUBLAS_CHECK(st);
    DF_CHECK(found > 0, "cuBLASLt has no algorithm for ", dtype_name(ab_dtype), " -> ", dtype_name(c_dtype), " GEMM M=",
             M, " N=", N, " K=", K, " batch=", batch, (bias ? " with a bias" : ""));
    p.algo = result.algo;
    p.workspace = result.workspaceSize;
    it = plans().emplace(key, p).first;
  }
  Plan& p = it->second;
  if (bias)
    DF_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
  Tensor ws;
  if (p.workspace > 0) ws = Tensor::empty({static_cast<int64_t>(p.workspace)}, DType::u8, Device::cuda(device));
  DF_CUBLAS_CHECK(cublasLtMatmul(handle, p.op, &alpha, B.ptr, p.a, A.ptr, p.b, &beta, C, p.c, C, p.c, &p.algo,
                                 ws.defined() ? ws.raw() : nullptr, p.workspace,
                                 static_cast<cudaStream_t>(current_stream())));
}

// ---- Tensor level ---------------------------------------------------------------------------------
namespace {

void check_operands(const Tensor& a, const Tensor& b, const char* what) {
  DF_CHECK(a.defined() && b.defined(), what, ": undefined tensor");
  DF_CHECK(a.device().is_cuda() && b.device() == a.device(), what, ": ", a.str(), " and ", b.str());
  DF_CHECK(a.dtype() == b.dtype() && (a.dtype() == DType::f32 || a.dtype() == DType::bf16), what, ": ", a.str(),
           " and ", b.str(), " (f32 or bf16, the same)");
}

GemmOperand operand(const Tensor& t, int64_t ld, int64_t stride, bool trans) {
  GemmOperand o;
  o.ptr = t.raw();
  o.ld = ld;
  o.stride = stride;
  o.trans = trans;
  return o;
}

}  // namespace

Tensor matmul_forward(const Tensor& a, const Tensor& b) {
  check_operands(a, b, "matmul");
  DF_CHECK((a.dim() == 2 && b.dim() == 2) || (a.dim() == 3 && b.dim() == 3 && a.size(0) == b.size(0)),
           "matmul: expected (M,K)x(K,N) or (Bt,M,K)x(Bt,K,N), got ", a.shape().str(), " x ", b.shape().str());
  DF_CHECK(a.size(-1) == b.size(-2), "matmul: inner sizes differ: ", a.shape().str(), " x ", b.shape().str());
  set_current_device(a.device());
  const int64_t Bt = a.dim() == 3 ? a.size(0) : 1, M = a.size(-2), K = a.size(-1), N = b.size(-1);
  Tensor y = Tensor::empty(a.dim() == 3 ? Shape{Bt, M, N} : Shape{M, N}, a.dtype(), a.device());
  gemm(a.dtype(), a.dtype(), M, N, K, 1.f, operand(a, K, M * K, false), operand(b, N, K * N, false), 0.f, y.raw(), N,
       M * N, Bt);
  return y;
}

// dA = G B^T (M,N)x(N,K); dB = A^T G (K,M)x(M,N).
MatmulGrads matmul_backward(const Tensor& g, const Tensor& a, const Tensor& b, bool need_a, bool need_b) {
  check_operands(a, b, "matmul backward");
  check_operands(g, a, "matmul backward");
  set_current_device(a.device());
  const int64_t Bt = a.dim() == 3 ? a.size(0) : 1, M = a.size(-2), K = a.size(-1), N = b.size(-1);
  DF_CHECK(g.numel() == Bt * M * N, "matmul backward: gradient ", g.str());
  MatmulGrads r;
  if (need_a) {
    r.da = Tensor::empty(a.shape(), a.dtype(), a.device());
    gemm(a.dtype(), a.dtype(), M, K, N, 1.f, operand(g, N, M * N, false), operand(b, N, K * N, true), 0.f, r.da.raw(),
         K, M * K, Bt);
  }
  if (need_b) {
    r.db = Tensor::empty(b.shape(), b.dtype(), b.device());
    gemm(a.dtype(), a.dtype(), K, N, M, 1.f, operand(a, K, M * K, true), operand(g, N, M * N, false), 0.f, r.db.raw(),
         N, K * N, Bt);
  }
  return r;
}

// y = x w^T + bias over the M = numel / In rows of x: w (Out, In) is our B, transposed.
Tensor linear_forward(const Tensor& x, const Tensor& w, const Tensor& bias) {
  check_operands(x, w, "linear");
  DF_CHECK(w.dim() == 2 && x.dim() >= 1 && x.size(-1) == w.size(1), "linear: x ", x.shape().str(), " and weight ",
           w.shape().str(), " (Out, In) do not fit");
  if (bias.defined()) {
    check_operands(bias, w, "linear bias");
    DF_CHECK(bias.dim() == 1 && bias.size(0) == w.size(0), "linear: bias ", bias.str(), " for ", w.size(0), " outputs");
  }
  set_current_device(x.device());
  const int64_t In = w.size(1), Out = w.size(0), M = In ? x.numel() / In : 0;
  Shape ys = x.shape();
  ys[-1] = Out;
  Tensor y = Tensor::empty(ys, x.dtype(), x.device());
  gemm(x.dtype(), x.dtype(), M, Out, In, 1.f, operand(x, In, 0, false), operand(w, In, 0, true), 0.f, y.raw(), Out, 0,
       1, bias.defined() ? bias.raw() : nullptr);
  return y;
}

// dX = G W (M,Out)x(Out,In); dW = G^T X (Out,M)x(M,In); db = the column sums of G.
LinearGrads linear_backward(const Tensor& g, const Tensor& x, const Tensor& w, bool need_x, bool need_w, bool need_b) {
  check_operands(x, w, "linear backward");
  check_operands(g, x, "linear backward");
  set_current_device(x.device());
  const int64_t In = w.size(1), Out = w.size(0), M = In ? x.numel() / In : 0;
  DF_CHECK(g.numel() == M * Out, "linear backward: gradient ", g.str(), " for x ", x.str(), " and weight ", w.str());
  LinearGrads r;
  if (need_x) {
    r.dx = Tensor::empty(x.shape(), x.dtype(), x.device());
    gemm(x.dtype(), x.dtype(), M, In, Out, 1.f, operand(g, Out, 0, false), operand(w, In, 0, false), 0.f, r.dx.raw(),
         In, 0, 1);
  }
  if (need_w) {
    r.dw = Tensor::empty(w.shape(), w.dtype(), w.device());
    gemm(x.dtype(), w.dtype(), Out, In, M, 1.f, operand(g, Out, 0, true), operand(x, In, 0, false), 0.f, r.dw.raw(),
         In, 0, 1);
  }
  if (need_b) r.db = sum(g.reshape({M, Out}), {0}, false);
  return r;
}

// Times one n x n x n bf16 GEMM with f32 accumulation (after a warm-up), in events on the current
// stream: the matrix rate the benchmarks report shares of.
double measure_bf16_gemm_tflops(int64_t n) {
  const Device d = Device::cuda(0);
  set_current_device(d);
  Tensor a = Tensor::zeros({n, n}, DType::bf16, d), b = Tensor::zeros({n, n}, DType::bf16, d);
  Tensor c = Tensor::empty({n, n}, DType::bf16, d);
  a.uniform_(1, 0, -1.f, 1.f);
  b.uniform_(2, 0, -1.f, 1.f);
  auto run = [&] {
    gemm(DType::bf16, DType::bf16, n, n, n, 1.f, operand(a, n, 0, false), operand(b, n, 0, false), 0.f, c.raw(), n, 0,
         1);
  };
  cudaStream_t s = static_cast<cudaStream_t>(current_stream());
  for (int i = 0; i < 3; ++i) run();
  cudaEvent_t e0, e1;
  DF_CUDA_CHECK(cudaEventCreate(&e0));
  DF_CUDA_CHECK(cudaEventCreate(&e1));
  const int reps = 20;
  DF_CUDA_CHECK(cudaEventRecord(e0, s));
  for (int i = 0; i < reps; ++i) run();
  DF_CUDA_CHECK(cudaEventRecord(e1, s));
  DF_CUDA_CHECK(cudaEventSynchronize(e1));
  float ms = 0;
  DF_CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return 2.0 * static_cast<double>(n) * n * n * reps / (ms * 1e-3) / 1e12;
}

}  // namespace diffuse::cuda
