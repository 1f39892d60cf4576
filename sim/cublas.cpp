// sim/cublas.cpp: cuBLASLt's matrix product and the few cuBLAS calls diffuse makes, on the
// simulated device, interpreted from their descriptors as cublasLt.h and the cuBLAS reference
// document them (so a wrong descriptor gives a wrong answer or the documented status):
//
//   D = epilogue(alpha op(A) op(B) + beta C + bias), every matrix column-major (the only order
//   simulated), op = transpose for CUBLAS_OP_T (and OP_C, on real data), batch instances at
//   CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET elements from each other, the bias a vector of
//   D's rows in D's type, added before the epilogue's function. With beta == 0, C is not read.
//
// Arithmetic: the products are summed in double and the sum rounded to the compute type once
// (a GPU's f32 accumulation rounds at every step, in an order of its own: the tests' tolerances
// cover that); alpha, beta, C and the bias are applied in the scale type, and the result rounded
// to D's type once, as the library does. bf16 and f16 operands are read as what they are.
// Configurations the simulation does not model (other orders, pointer modes, epilogues with
// auxiliary outputs, fp8 scaling, emulation) answer CUBLAS_STATUS_NOT_SUPPORTED rather than a
// guess; sizes that do not fit together answer CUBLAS_STATUS_INVALID_VALUE.
//
// The heuristic returns one algorithm per problem, which remembers the alignments it may assume
// (the preference's minimums, up to 16 bytes) and asks for a workspace (1 MiB when the
// preference allows one) that the product fills with garbage: a call with a misaligned pointer,
// a smaller workspace or a workspace that something else still holds fails as it would on a GPU.
#include <cublasLt.h>
#include <cublas_v2.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "sim/internal.h"

namespace diffuse::sim {

cudaError_t take_last_error(bool clear);
StreamPtr& legacy_stream();

namespace {

constexpr uint64_t kMagic = 0x5d1a'5eed'0001ull;

struct LtHandle {
  uint64_t magic = kMagic;
};
struct BlasHandle {
  uint64_t magic = kMagic;
  cudaStream_t stream = nullptr;
};

struct Layout {
  uint32_t type = CUDA_R_32F;
  int32_t order = CUBLASLT_ORDER_COL;
  uint64_t rows = 0, cols = 0;
  int64_t ld = 0;
  int32_t batch = 1;
  int64_t stride = 0;
  int64_t plane = 0;
  uint32_t batch_mode = CUBLASLT_BATCH_MODE_STRIDED;
};

struct Desc {
  int32_t compute = CUBLAS_COMPUTE_32F;
  int32_t scale = CUDA_R_32F;
  int32_t pointer_mode = CUBLASLT_POINTER_MODE_HOST;
  int32_t transa = CUBLAS_OP_N, transb = CUBLAS_OP_N, transc = CUBLAS_OP_N;
  int32_t fill = CUBLAS_FILL_MODE_FULL;
  uint32_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  const void* bias = nullptr;
  int64_t bias_batch_stride = 0;
  void* aux = nullptr;
  int64_t aux_ld = 0, aux_batch_stride = 0, alpha_vector_batch_stride = 0;
  int32_t sm_count = 0;
  const void* a_scale = nullptr;
  const void* b_scale = nullptr;
  const void* c_scale = nullptr;
  const void* d_scale = nullptr;
  void* amax_d = nullptr;
  int32_t aux_type = -1;
  void* aux_scale = nullptr;
  void* aux_amax = nullptr;
  int8_t fast_accum = 0;
  int32_t bias_type = -1;
  int32_t scale_modes[5] = {0, 0, 0, 0, 0};
  void* d_out_scale = nullptr;
  int32_t d_out_scale_mode = 0;
  void* emulation = nullptr;
};

struct Pref {
  uint32_t search = CUBLASLT_SEARCH_BEST_FIT;
  uint64_t max_workspace = 0;
  uint32_t reduction_mask = CUBLASLT_REDUCTION_SCHEME_MASK;
  uint32_t align[4] = {256, 256, 256, 256};  // A, B, C, D
  float max_waves = 0;
  uint64_t impl_mask = ~uint64_t{0};
};

std::set<const void*>& live() {
  static auto* s = new std::set<const void*>;
  return *s;
}
template <class T>
T* checked(const void* p) {
  return p && live().count(p) ? static_cast<T*>(const_cast<void*>(p)) : nullptr;
}
template <class T, class H>
void make(H* out) {
  T* t = new T;
  live().insert(t);
  *out = reinterpret_cast<H>(t);
}
template <class T>
cublasStatus_t destroy(const void* p) {
  T* t = checked<T>(p);
  if (!t) return p ? CUBLAS_STATUS_INVALID_VALUE : CUBLAS_STATUS_SUCCESS;
  live().erase(t);
  delete t;
  return CUBLAS_STATUS_SUCCESS;
}

// Copies an attribute whose storage has exactly `size` bytes.
template <class T>
cublasStatus_t set_attr(T& field, const void* buf, std::size_t size) {
  if (!buf || size != sizeof(T)) return CUBLAS_STATUS_INVALID_VALUE;
  std::memcpy(&field, buf, sizeof(T));
  return CUBLAS_STATUS_SUCCESS;
}

// ---- the product ----------------------------------------------------------------------------------

struct Problem {
  Desc op;
  Layout a, b, c, d;
  uint64_t m = 0, n = 0, k = 0;
  int32_t batch = 1;
  cudaDataType_t bias_type = CUDA_R_32F;
};

bool is_op(int32_t t) { return t == CUBLAS_OP_N || t == CUBLAS_OP_T || t == CUBLAS_OP_C; }
bool transposed(int32_t t) { return t != CUBLAS_OP_N; }

// The types and settings the simulation models; NOT_SUPPORTED for the rest.
cublasStatus_t supported(const Problem& p, std::string* why) {
  auto no = [&](const std::string& w) {
    *why = w;
    return CUBLAS_STATUS_NOT_SUPPORTED;
  };
  const Desc& o = p.op;
  if (o.pointer_mode != CUBLASLT_POINTER_MODE_HOST) return no("pointer modes other than host are not simulated");
  if (o.transc != CUBLAS_OP_N) return no("CUBLASLT_MATMUL_DESC_TRANSC must be CUBLAS_OP_N");
  if (o.fill != CUBLAS_FILL_MODE_FULL) return no("fill modes other than full are not simulated");
  if (o.epilogue != CUBLASLT_EPILOGUE_DEFAULT && o.epilogue != CUBLASLT_EPILOGUE_RELU &&
      o.epilogue != CUBLASLT_EPILOGUE_BIAS && o.epilogue != CUBLASLT_EPILOGUE_RELU_BIAS)
    return no("epilogue " + std::to_string(o.epilogue) + " is not simulated (DEFAULT, RELU, BIAS, RELU_BIAS are)");
  if (o.emulation) return no("emulation descriptors are not simulated");
  for (const Layout* l : {&p.a, &p.b, &p.c, &p.d}) {
    if (l->order != CUBLASLT_ORDER_COL) return no("matrix orders other than CUBLASLT_ORDER_COL are not simulated");
    if (l->plane != 0) return no("planar complex layouts are not simulated");
    if (l->batch_mode != CUBLASLT_BATCH_MODE_STRIDED) return no("pointer-array batches are not simulated");
  }
  const auto ta = p.a.type, tb = p.b.type, tc = p.c.type, td = p.d.type;
  if (tc != td) return no("C and D of different types");
  const int32_t ct = o.compute;
  bool ok = false;
  if (ct == CUBLAS_COMPUTE_32F || ct == CUBLAS_COMPUTE_32F_PEDANTIC) {
    ok = o.scale == CUDA_R_32F && ta == tb &&
         ((ta == CUDA_R_32F && td == CUDA_R_32F) || (ta == CUDA_R_16BF && (td == CUDA_R_16BF || td == CUDA_R_32F)) ||
          (ta == CUDA_R_16F && (td == CUDA_R_16F || td == CUDA_R_32F)));
  } else if (ct == CUBLAS_COMPUTE_32F_FAST_TF32 || ct == CUBLAS_COMPUTE_32F_FAST_16BF || ct == CUBLAS_COMPUTE_32F_FAST_16F) {
    ok = o.scale == CUDA_R_32F && ta == CUDA_R_32F && tb == CUDA_R_32F && td == CUDA_R_32F;
  } else if (ct == CUBLAS_COMPUTE_64F || ct == CUBLAS_COMPUTE_64F_PEDANTIC) {
    ok = o.scale == CUDA_R_64F && ta == CUDA_R_64F && tb == CUDA_R_64F && td == CUDA_R_64F;
  }
  if (!ok)
    return no("compute type " + std::to_string(ct) + ", scale type " + std::to_string(o.scale) + ", A/B/C/D types " +
              std::to_string(ta) + "/" + std::to_string(tb) + "/" + std::to_string(tc) + "/" + std::to_string(td) +
              " is not a supported combination");
  if (o.bias_type != -1 && o.bias_type != static_cast<int32_t>(td))
    return no("a bias type other than D's is not simulated for these types");
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t shape(Problem& p, std::string* why) {
  auto bad = [&](const std::string& w) {
    *why = w;
    return CUBLAS_STATUS_INVALID_VALUE;
  };
  const Desc& o = p.op;
  if (!is_op(o.transa) || !is_op(o.transb)) return bad("TRANSA / TRANSB must be a cublasOperation_t");
  p.m = p.d.rows;
  p.n = p.d.cols;
  const uint64_t am = transposed(o.transa) ? p.a.cols : p.a.rows, ak = transposed(o.transa) ? p.a.rows : p.a.cols;
  const uint64_t bk = transposed(o.transb) ? p.b.cols : p.b.rows, bn = transposed(o.transb) ? p.b.rows : p.b.cols;
  p.k = ak;
  if (am != p.m || bn != p.n || bk != ak || p.c.rows != p.m || p.c.cols != p.n)
    return bad("op(A) is " + std::to_string(am) + "x" + std::to_string(ak) + ", op(B) " + std::to_string(bk) + "x" +
               std::to_string(bn) + ", C " + std::to_string(p.c.rows) + "x" + std::to_string(p.c.cols) + ", D " +
               std::to_string(p.m) + "x" + std::to_string(p.n) + ": they do not fit");
  for (const Layout* l : {&p.a, &p.b, &p.c, &p.d}) {
    if (l->ld < static_cast<int64_t>(std::max<uint64_t>(l->rows, 1)))
      return bad("a leading dimension (" + std::to_string(l->ld) + ") below the row count (" + std::to_string(l->rows) +
                 ")");
    if (l->batch < 1 || l->stride < 0) return bad("a batch count below 1 or a negative batch stride");
  }
  if (p.a.batch != p.d.batch || p.b.batch != p.d.batch || p.c.batch != p.d.batch)
    return bad("batch counts differ between A, B, C and D");
  p.batch = p.d.batch;
  p.bias_type = static_cast<cudaDataType_t>(o.bias_type == -1 ? static_cast<int32_t>(p.d.type) : o.bias_type);
  return CUBLAS_STATUS_SUCCESS;
}

std::size_t span_bytes(const Layout& l) {
  const std::size_t es = type_size(static_cast<cudaDataType_t>(l.type));
  if (l.rows == 0 || l.cols == 0) return 0;
  const std::size_t one = ((l.cols - 1) * static_cast<std::size_t>(l.ld) + l.rows);
  return (one + static_cast<std::size_t>(l.batch - 1) * static_cast<std::size_t>(l.stride)) * es;
}

// Input rounding of the FAST compute types.
double round_input(double v, int32_t compute) {
  const float f = static_cast<float>(v);
  if (compute == CUBLAS_COMPUTE_32F_FAST_16BF) return bf16_to_f32(f32_to_bf16(f));
  if (compute == CUBLAS_COMPUTE_32F_FAST_16F) return f16_to_f32(f32_to_f16(f));
  if (compute == CUBLAS_COMPUTE_32F_FAST_TF32) {  // 10 mantissa bits, nearest even
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) < 0x7f800000u) u = (u + 0xfffu + ((u >> 13) & 1u)) & ~0x1fffu;
    float r;
    std::memcpy(&r, &u, 4);
    return r;
  }
  return v;
}

void matmul(const Problem& p, double alpha, double beta, const void* A, const void* B, const void* C, void* D) {
  const auto ta = static_cast<cudaDataType_t>(p.a.type), tb = static_cast<cudaDataType_t>(p.b.type);
  const auto tc = static_cast<cudaDataType_t>(p.c.type), td = static_cast<cudaDataType_t>(p.d.type);
  const bool f64 = p.op.compute == CUBLAS_COMPUTE_64F || p.op.compute == CUBLAS_COMPUTE_64F_PEDANTIC;
  const std::size_t m = p.m, n = p.n, k = p.k;
  const bool tA = transposed(p.op.transa), tB = transposed(p.op.transb);
  const bool bias = p.op.epilogue == CUBLASLT_EPILOGUE_BIAS || p.op.epilogue == CUBLASLT_EPILOGUE_RELU_BIAS;
  const bool relu = p.op.epilogue == CUBLASLT_EPILOGUE_RELU || p.op.epilogue == CUBLASLT_EPILOGUE_RELU_BIAS;
  std::vector<double> arow(m * k), bcol(n * k);
  for (int32_t b = 0; b < p.batch; ++b) {
    // op(A) row by row and op(B) column by column, as doubles, so each dot product is contiguous.
    for (std::size_t i = 0; i < m; ++i)
      for (std::size_t q = 0; q < k; ++q) {
        const std::size_t idx = static_cast<std::size_t>(b) * p.a.stride + (tA ? q + i * p.a.ld : i + q * p.a.ld);
        arow[i * k + q] = round_input(load(A, ta, idx), p.op.compute);
      }
    for (std::size_t j = 0; j < n; ++j)
      for (std::size_t q = 0; q < k; ++q) {
        const std::size_t idx = static_cast<std::size_t>(b) * p.b.stride + (tB ? j + q * p.b.ld : q + j * p.b.ld);
        bcol[j * k + q] = round_input(load(B, tb, idx), p.op.compute);
      }
    const char* bias_p = static_cast<const char*>(p.op.bias) +
                         static_cast<std::size_t>(b) * p.op.bias_batch_stride * type_size(p.bias_type);
  // Threads only where the work pays for waking them (the emulated kernels around run on one).
#pragma omp parallel for if (m * n * k > (std::size_t{1} << 22))
    for (std::size_t j = 0; j < n; ++j) {
      for (std::size_t i = 0; i < m; ++i) {
        double acc = 0;
        const double* x = &arow[i * k];
        const double* y = &bcol[j * k];
        for (std::size_t q = 0; q < k; ++q) acc += x[q] * y[q];
        const std::size_t ci = static_cast<std::size_t>(b) * p.c.stride + i + j * p.c.ld;
        const std::size_t di = static_cast<std::size_t>(b) * p.d.stride + i + j * p.d.ld;
        if (f64) {
          double v = alpha * acc;
          if (beta != 0) v += beta * load(C, tc, ci);
          if (bias) v += load(bias_p, p.bias_type, i);
          if (relu) v = v > 0 ? v : 0;
          store(D, td, di, v);
        } else {
          // The accumulator, then the epilogue, in f32.
          float v = static_cast<float>(alpha) * static_cast<float>(acc);
          if (beta != 0) v = v + static_cast<float>(beta) * static_cast<float>(load(C, tc, ci));
          if (bias) v = v + static_cast<float>(load(bias_p, p.bias_type, i));
          if (relu) v = v > 0 ? v : 0.f;
          store(D, td, di, v);
        }
      }
    }
  }
}

// The algorithm descriptor: what it was chosen for, and what it assumes.
struct Algo {
  uint64_t magic;
  uint64_t key;       // the problem's types and operations
  uint64_t workspace;
  uint32_t align[5];  // A, B, C, D, bias: the alignment it may assume
  uint32_t pad;
};
static_assert(sizeof(Algo) <= sizeof(cublasLtMatmulAlgo_t));

uint64_t problem_key(const Problem& p) {
  uint64_t h = 1469598103934665603ull;
  auto mix = [&](uint64_t v) { h = (h ^ v) * 1099511628211ull; };
  mix(static_cast<uint64_t>(p.op.compute));
  mix(static_cast<uint64_t>(p.op.scale));
  mix(static_cast<uint64_t>(p.op.transa));
  mix(static_cast<uint64_t>(p.op.transb));
  mix(p.op.epilogue);
  for (const Layout* l : {&p.a, &p.b, &p.c, &p.d}) mix(l->type);
  return h;
}

uint32_t alignment(const void* ptr) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(ptr);
  uint32_t al = 256;
  while (al > 1 && a % al != 0) al /= 2;
  return al;
}

cublasStatus_t build(const Desc* op, const Layout* a, const Layout* b, const Layout* c, const Layout* d, Problem& p,
                     std::string* why) {
  if (!op || !a || !b || !c || !d) {
    *why = "a descriptor is null or was destroyed";
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  p.op = *op;
  p.a = *a;
  p.b = *b;
  p.c = *c;
  p.d = *d;
  if (const cublasStatus_t s = shape(p, why)) return s;
  return supported(p, why);
}

}  // namespace
}  // namespace diffuse::sim

using namespace diffuse::sim;

extern "C" {

// ---- cuBLASLt ---------------------------------------------------------------------------------------

cublasStatus_t cublasLtCreate(cublasLtHandle_t* h) {
  Guard g(lock());
  if (!h) return CUBLAS_STATUS_INVALID_VALUE;
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    (void)take_last_error(true);
    return CUBLAS_STATUS_NOT_INITIALIZED;
  }
  make<LtHandle>(h);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtDestroy(cublasLtHandle_t h) {
  Guard g(lock());
  if (!checked<LtHandle>(h)) return CUBLAS_STATUS_NOT_INITIALIZED;
  return destroy<LtHandle>(h);
}

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* l, cudaDataType type, uint64_t rows, uint64_t cols,
                                          int64_t ld) {
  Guard g(lock());
  if (!l) return CUBLAS_STATUS_INVALID_VALUE;
  make<Layout>(l);
  Layout* x = checked<Layout>(*l);
  x->type = type;
  x->rows = rows;
  x->cols = cols;
  x->ld = ld;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t l) {
  Guard g(lock());
  return destroy<Layout>(l);
}

cublasStatus_t cublasLtMatrixLayoutSetAttribute(cublasLtMatrixLayout_t l, cublasLtMatrixLayoutAttribute_t attr,
                                                const void* buf, size_t size) {
  Guard g(lock());
  Layout* x = checked<Layout>(l);
  if (!x) return CUBLAS_STATUS_INVALID_VALUE;
  switch (attr) {
    case CUBLASLT_MATRIX_LAYOUT_TYPE: return set_attr(x->type, buf, size);
    case CUBLASLT_MATRIX_LAYOUT_ORDER: return set_attr(x->order, buf, size);
    case CUBLASLT_MATRIX_LAYOUT_ROWS: return set_attr(x->rows, buf, size);
    case CUBLASLT_MATRIX_LAYOUT_COLS: return set_attr(x->cols, buf, size);
    case CUBLASLT_MATRIX_LAYOUT_LD: return set_attr(x->ld, buf, size);
    case CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT: return set_attr(x->batch, buf, size);
    case CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET: return set_attr(x->stride, buf, size);
    case CUBLASLT_MATRIX_LAYOUT_PLANE_OFFSET: return set_attr(x->plane, buf, size);
    case CUBLASLT_MATRIX_LAYOUT_BATCH_MODE: return set_attr(x->batch_mode, buf, size);
    default: return CUBLAS_STATUS_INVALID_VALUE;
  }
}

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* d, cublasComputeType_t compute, cudaDataType_t scale) {
  Guard g(lock());
  if (!d) return CUBLAS_STATUS_INVALID_VALUE;
  make<Desc>(d);
  Desc* x = checked<Desc>(*d);
  x->compute = compute;
  x->scale = scale;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t d) {
  Guard g(lock());
  return destroy<Desc>(d);
}

cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t attr,
                                              const void* buf, size_t size) {
  Guard g(lock());
  Desc* x = checked<Desc>(d);
  if (!x) return CUBLAS_STATUS_INVALID_VALUE;
  switch (attr) {
    case CUBLASLT_MATMUL_DESC_COMPUTE_TYPE: return set_attr(x->compute, buf, size);
    case CUBLASLT_MATMUL_DESC_SCALE_TYPE: return set_attr(x->scale, buf, size);
    case CUBLASLT_MATMUL_DESC_POINTER_MODE: return set_attr(x->pointer_mode, buf, size);
    case CUBLASLT_MATMUL_DESC_TRANSA: return set_attr(x->transa, buf, size);
    case CUBLASLT_MATMUL_DESC_TRANSB: return set_attr(x->transb, buf, size);
    case CUBLASLT_MATMUL_DESC_TRANSC: return set_attr(x->transc, buf, size);
    case CUBLASLT_MATMUL_DESC_FILL_MODE: return set_attr(x->fill, buf, size);
    case CUBLASLT_MATMUL_DESC_EPILOGUE: return set_attr(x->epilogue, buf, size);
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER: return set_attr(x->bias, buf, size);
    case CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE: return set_attr(x->bias_batch_stride, buf, size);
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER: return set_attr(x->aux, buf, size);
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD: return set_attr(x->aux_ld, buf, size);
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_BATCH_STRIDE: return set_attr(x->aux_batch_stride, buf, size);
    case CUBLASLT_MATMUL_DESC_ALPHA_VECTOR_BATCH_STRIDE: return set_attr(x->alpha_vector_batch_stride, buf, size);
    case CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET: return set_attr(x->sm_count, buf, size);
    case CUBLASLT_MATMUL_DESC_A_SCALE_POINTER: return set_attr(x->a_scale, buf, size);
    case CUBLASLT_MATMUL_DESC_B_SCALE_POINTER: return set_attr(x->b_scale, buf, size);
    case CUBLASLT_MATMUL_DESC_C_SCALE_POINTER: return set_attr(x->c_scale, buf, size);
    case CUBLASLT_MATMUL_DESC_D_SCALE_POINTER: return set_attr(x->d_scale, buf, size);
    case CUBLASLT_MATMUL_DESC_AMAX_D_POINTER: return set_attr(x->amax_d, buf, size);
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_DATA_TYPE: return set_attr(x->aux_type, buf, size);
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_SCALE_POINTER: return set_attr(x->aux_scale, buf, size);
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_AMAX_POINTER: return set_attr(x->aux_amax, buf, size);
    case CUBLASLT_MATMUL_DESC_FAST_ACCUM: return set_attr(x->fast_accum, buf, size);
    case CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE: return set_attr(x->bias_type, buf, size);
    case CUBLASLT_MATMUL_DESC_A_SCALE_MODE: return set_attr(x->scale_modes[0], buf, size);
    case CUBLASLT_MATMUL_DESC_B_SCALE_MODE: return set_attr(x->scale_modes[1], buf, size);
    case CUBLASLT_MATMUL_DESC_C_SCALE_MODE: return set_attr(x->scale_modes[2], buf, size);
    case CUBLASLT_MATMUL_DESC_D_SCALE_MODE: return set_attr(x->scale_modes[3], buf, size);
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_SCALE_MODE: return set_attr(x->scale_modes[4], buf, size);
    case CUBLASLT_MATMUL_DESC_D_OUT_SCALE_POINTER: return set_attr(x->d_out_scale, buf, size);
    case CUBLASLT_MATMUL_DESC_D_OUT_SCALE_MODE: return set_attr(x->d_out_scale_mode, buf, size);
    case CUBLASLT_MATMUL_DESC_EMULATION_DESCRIPTOR: return set_attr(x->emulation, buf, size);
    default: return CUBLAS_STATUS_INVALID_VALUE;
  }
}

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* p) {
  Guard g(lock());
  if (!p) return CUBLAS_STATUS_INVALID_VALUE;
  make<Pref>(p);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t p) {
  Guard g(lock());
  return destroy<Pref>(p);
}

cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t p,
                                                    cublasLtMatmulPreferenceAttributes_t attr, const void* buf,
                                                    size_t size) {
  Guard g(lock());
  Pref* x = checked<Pref>(p);
  if (!x) return CUBLAS_STATUS_INVALID_VALUE;
  switch (attr) {
    case CUBLASLT_MATMUL_PREF_SEARCH_MODE: return set_attr(x->search, buf, size);
    case CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES: return set_attr(x->max_workspace, buf, size);
    case CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK: return set_attr(x->reduction_mask, buf, size);
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES: return set_attr(x->align[0], buf, size);
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES: return set_attr(x->align[1], buf, size);
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES: return set_attr(x->align[2], buf, size);
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES: return set_attr(x->align[3], buf, size);
    case CUBLASLT_MATMUL_PREF_MAX_WAVES_COUNT: return set_attr(x->max_waves, buf, size);
    case CUBLASLT_MATMUL_PREF_IMPL_MASK: return set_attr(x->impl_mask, buf, size);
    default: return CUBLAS_STATUS_INVALID_VALUE;
  }
}

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t h, cublasLtMatmulDesc_t op, cublasLtMatrixLayout_t a,
                                              cublasLtMatrixLayout_t b, cublasLtMatrixLayout_t c,
                                              cublasLtMatrixLayout_t d, cublasLtMatmulPreference_t pref, int requested,
                                              cublasLtMatmulHeuristicResult_t results[], int* returned) {
  Guard g(lock());
  if (!checked<LtHandle>(h)) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (requested <= 0 || !results || !returned) return CUBLAS_STATUS_INVALID_VALUE;
  *returned = 0;
  const Pref* pr = checked<Pref>(pref);
  if (!pr) return CUBLAS_STATUS_INVALID_VALUE;
  Problem p;
  std::string why;
  if (const cublasStatus_t s = build(checked<Desc>(op), checked<Layout>(a), checked<Layout>(b), checked<Layout>(c),
                                     checked<Layout>(d), p, &why)) {
    report("cublasLtMatmulAlgoGetHeuristic: " + why);
    return s;
  }
  if (pr->search != CUBLASLT_SEARCH_BEST_FIT) {
    report("cublasLtMatmulAlgoGetHeuristic: search modes other than CUBLASLT_SEARCH_BEST_FIT are not simulated");
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  for (uint32_t al : pr->align)
    if (al == 0 || (al & (al - 1)) != 0) return CUBLAS_STATUS_INVALID_VALUE;
  Algo algo{};
  algo.magic = kMagic;
  algo.key = problem_key(p);
  // One algorithm; a split-K-like workspace whenever the caller allows one.
  algo.workspace = std::min<uint64_t>(pr->max_workspace, uint64_t{1} << 20);
  for (int i = 0; i < 4; ++i) algo.align[i] = std::min<uint32_t>(pr->align[i], 16);
  algo.align[4] = p.op.bias ? std::min<uint32_t>(alignment(p.op.bias), 16) : 1;
  cublasLtMatmulHeuristicResult_t& r = results[0];
  std::memset(&r, 0, sizeof r);
  std::memcpy(&r.algo, &algo, sizeof algo);
  r.workspaceSize = algo.workspace;
  r.state = CUBLAS_STATUS_SUCCESS;
  r.wavesCount = 1.0f;
  *returned = 1;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t h, cublasLtMatmulDesc_t op, const void* alpha, const void* A,
                              cublasLtMatrixLayout_t a, const void* B, cublasLtMatrixLayout_t b, const void* beta,
                              const void* C, cublasLtMatrixLayout_t c, void* D, cublasLtMatrixLayout_t d,
                              const cublasLtMatmulAlgo_t* algo_in, void* workspace, size_t workspace_bytes,
                              cudaStream_t stream) {
  Guard g(lock());
  if (!checked<LtHandle>(h)) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (!alpha || !beta) return CUBLAS_STATUS_INVALID_VALUE;
  Problem p;
  std::string why;
  if (const cublasStatus_t s = build(checked<Desc>(op), checked<Layout>(a), checked<Layout>(b), checked<Layout>(c),
                                     checked<Layout>(d), p, &why)) {
    report("cublasLtMatmul: " + why);
    return s;
  }
  const Desc& o = p.op;
  if (o.a_scale || o.b_scale || o.c_scale || o.d_scale || o.amax_d || o.aux || o.aux_scale || o.aux_amax ||
      o.d_out_scale) {
    report("cublasLtMatmul: scale, amax or auxiliary pointers are set for types that have none");
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  const bool f64 = o.scale == CUDA_R_64F;
  const double al = f64 ? *static_cast<const double*>(alpha) : *static_cast<const float*>(alpha);
  const double be = f64 ? *static_cast<const double*>(beta) : *static_cast<const float*>(beta);
  Algo algo{};
  if (algo_in) {
    std::memcpy(&algo, algo_in, sizeof algo);
    if (algo.magic != kMagic || algo.key != problem_key(p)) {
      report("cublasLtMatmul: the algorithm was not obtained for this operation's types and transposes");
      return CUBLAS_STATUS_INVALID_VALUE;
    }
  } else {
    algo.workspace = 0;
    for (uint32_t& x : algo.align) x = 16;
  }
  if (workspace_bytes < algo.workspace) {
    report("cublasLtMatmul: a workspace of " + std::to_string(workspace_bytes) + " bytes for an algorithm that needs " +
           std::to_string(algo.workspace));
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  const bool bias = o.epilogue == CUBLASLT_EPILOGUE_BIAS || o.epilogue == CUBLASLT_EPILOGUE_RELU_BIAS;
  if (bias && !o.bias) {
    report("cublasLtMatmul: a BIAS epilogue without CUBLASLT_MATMUL_DESC_BIAS_POINTER");
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  const void* ptrs[5] = {A, B, C, D, bias ? o.bias : nullptr};
  const char* names[5] = {"A", "B", "C", "D", "the bias"};
  for (int i = 0; i < 5; ++i)
    if (ptrs[i] && alignment(ptrs[i]) < algo.align[i]) {
      report(std::string("cublasLtMatmul: ") + names[i] + " is " + std::to_string(alignment(ptrs[i])) +
             "-byte aligned, the algorithm assumes " + std::to_string(algo.align[i]) +
             " (the preference's CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT when it was chosen)");
      return CUBLAS_STATUS_INVALID_VALUE;
    }
  if (p.m == 0 || p.n == 0) return CUBLAS_STATUS_SUCCESS;
  if (!D || (p.k > 0 && (!A || !B)) || (be != 0 && !C)) return CUBLAS_STATUS_INVALID_VALUE;
  // In place (C == D) needs the same layout for both.
  if (C == D && be != 0 &&
      (p.c.ld != p.d.ld || p.c.stride != p.d.stride || p.c.type != p.d.type))
    return CUBLAS_STATUS_INVALID_VALUE;
  std::vector<MemUse> uses;
  auto need = [&](const void* ptr, std::size_t bytes, bool write, const char* what) {
    if (bytes == 0) return true;
    if (!check_range(ptr, bytes, std::string("cublasLtMatmul: ") + what)) return false;
    uses.push_back({ptr, bytes, write});
    return true;
  };
  const std::size_t bias_bytes =
      bias ? (p.m + static_cast<std::size_t>(p.batch - 1) * o.bias_batch_stride) * type_size(p.bias_type) : 0;
  if (!need(A, p.k ? span_bytes(p.a) : 0, false, "matrix A") || !need(B, p.k ? span_bytes(p.b) : 0, false, "matrix B") ||
      !need(C, be != 0 ? span_bytes(p.c) : 0, false, "matrix C") || !need(D, span_bytes(p.d), true, "matrix D") ||
      !need(o.bias, bias_bytes, false, "the bias") ||
      !need(workspace, algo.workspace, true, "the workspace")) {
    set_sticky(cudaErrorIllegalAddress, "cublasLtMatmul would access memory out of bounds (see above)");
    return CUBLAS_STATUS_EXECUTION_FAILED;
  }
  StreamPtr s = stream_of(stream);
  if (!s) return CUBLAS_STATUS_INVALID_VALUE;
  const uint64_t ws_bytes = algo.workspace;
  ++counters_ref().library_calls;
  const cudaError_t e = submit(s, "cublasLtMatmul", [p, al, be, A, B, C, D, workspace, ws_bytes] {
    if (ws_bytes) scribble(workspace, ws_bytes);
    matmul(p, al, be, A, B, C, D);
  }, std::move(uses));
  return e == cudaSuccess ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_EXECUTION_FAILED;
}

// ---- cuBLAS ---------------------------------------------------------------------------------------

cublasStatus_t cublasCreate_v2(cublasHandle_t* h) {
  Guard g(lock());
  if (!h) return CUBLAS_STATUS_INVALID_VALUE;
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    (void)take_last_error(true);
    return CUBLAS_STATUS_NOT_INITIALIZED;
  }
  make<BlasHandle>(h);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy_v2(cublasHandle_t h) {
  Guard g(lock());
  if (!checked<BlasHandle>(h)) return CUBLAS_STATUS_NOT_INITIALIZED;
  return destroy<BlasHandle>(h);
}

cublasStatus_t cublasSetStream_v2(cublasHandle_t h, cudaStream_t stream) {
  Guard g(lock());
  BlasHandle* x = checked<BlasHandle>(h);
  if (!x) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (!stream_of(stream)) return CUBLAS_STATUS_INVALID_VALUE;
  x->stream = stream;
  return CUBLAS_STATUS_SUCCESS;
}

// y = alpha x + y over n elements, with BLAS's increments (a negative one starts at the far end).
cublasStatus_t cublasSaxpy_v2(cublasHandle_t h, int n, const float* alpha, const float* x, int incx, float* y,
                              int incy) {
  Guard g(lock());
  BlasHandle* hb = checked<BlasHandle>(h);
  if (!hb) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (!alpha) return CUBLAS_STATUS_INVALID_VALUE;
  if (n <= 0) return CUBLAS_STATUS_SUCCESS;
  if (incx == 0 || incy == 0) return CUBLAS_STATUS_INVALID_VALUE;
  const float a = *alpha;  // host pointer mode (the default)
  const std::size_t xs = (static_cast<std::size_t>(n) - 1) * static_cast<std::size_t>(std::abs(incx)) + 1;
  const std::size_t ys = (static_cast<std::size_t>(n) - 1) * static_cast<std::size_t>(std::abs(incy)) + 1;
  if (!check_range(x, xs * 4, "cublasSaxpy: x") || !check_range(y, ys * 4, "cublasSaxpy: y")) {
    set_sticky(cudaErrorIllegalAddress, "cublasSaxpy would access memory out of bounds (see above)");
    return CUBLAS_STATUS_EXECUTION_FAILED;
  }
  StreamPtr s = stream_of(hb->stream);
  if (!s) return CUBLAS_STATUS_INVALID_VALUE;
  ++counters_ref().library_calls;
  const cudaError_t e = submit(s, "cublasSaxpy", [n, a, x, incx, y, incy] {
    const long long ix0 = incx < 0 ? static_cast<long long>(n - 1) * -incx : 0;
    const long long iy0 = incy < 0 ? static_cast<long long>(n - 1) * -incy : 0;
    for (int i = 0; i < n; ++i) {
      const long long ix = ix0 + static_cast<long long>(i) * incx, iy = iy0 + static_cast<long long>(i) * incy;
      y[iy] = a * x[ix] + y[iy];
    }
  }, {{x, xs * 4, false}, {y, ys * 4, true}});
  return e == cudaSuccess ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_EXECUTION_FAILED;
}

const char* cublasGetStatusName(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "CUBLAS_STATUS_UNKNOWN";
  }
}

const char* cublasGetStatusString(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "success";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED: return "the resource allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE: return "an invalid numeric value was used as an argument";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "an absent device architectural feature is required";
    case CUBLAS_STATUS_MAPPING_ERROR: return "an access to GPU memory space failed";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "the GPU program failed to execute";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "an internal operation failed";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "the functionality requested is not supported";
    case CUBLAS_STATUS_LICENSE_ERROR: return "error detected trying to check the license";
    default: return "unknown error";
  }
}

}  // extern "C"
