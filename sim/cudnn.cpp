// sim/cudnn.cpp: the cuDNN convolution calls diffuse makes, on the simulated device, interpreted
// from their descriptors as the cuDNN API reference defines them:
//
//   tensors (n, c, h, w) in CUDNN_TENSOR_NCHW (w fastest) or CUDNN_TENSOR_NHWC (c fastest);
//   filters (k, c, r, s) in NCHW ("KCRS") or NHWC ("KRSC");
//   output size 1 + (in + 2 pad - ((f - 1) dilation + 1)) / stride;
//   forward         y[n,k,p,q]  = alpha sum_{c,r,s} x[n, c, p u - pad_h + r dil_h, q v - pad_w + s dil_w] w[k,c,r,s] + beta y
//   backward data   dx[n,c,h,w] = alpha sum over the (k, r, s, p, q) that reach (h, w) of dy[n,k,p,q] w[k,c,r,s] + beta dx
//   backward filter dw[k,c,r,s] = alpha sum_{n,p,q} x[n, c, p u - pad_h + r dil_h, ...] dy[n,k,p,q] + beta dw
//
// with the filter flipped (r -> R-1-r, s -> S-1-s) for CUDNN_CONVOLUTION and not for
// CUDNN_CROSS_CORRELATION; with beta == 0 the output is not read. Data type configurations: all
// f32 (FLOAT_CONFIG), all f64, f16 or bf16 tensors with f32 compute (PSEUDO_HALF / PSEUDO_BFLOAT16);
// anything else is CUDNN_STATUS_NOT_SUPPORTED. f32 with a math type that allows tensor cores
// (CUDNN_DEFAULT_MATH, TENSOR_OP, ALLOW_CONVERSION) reads its inputs as TF32, as cuDNN does on
// sm_80 and later; CUDNN_FMA_MATH keeps full f32. The sums are taken in double and rounded to f32
// once, the blend done in f32, the result rounded to the tensor type once.
//
// Algorithms: each direction has a table of cuDNN's algorithms with what the simulation says of
// them: supported or not for the configuration, deterministic or not, the workspace they need.
// The non-deterministic ones sum in f32 in a fresh random order at every call, so two runs of a
// step that uses one differ in their last bits, as on a GPU. Find*Ex runs each candidate on the
// caller's buffers (so the output and workspace hold garbage afterwards) and waits for the
// handle's stream; an algorithm given less workspace than it needs is refused.
#include <cudnn.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "sim/internal.h"

struct cudnnContext {
  cudaStream_t stream = nullptr;
};
struct cudnnTensorStruct {
  bool set = false;
  cudnnDataType_t type = CUDNN_DATA_FLOAT;
  cudnnTensorFormat_t format = CUDNN_TENSOR_NCHW;
  int n = 0, c = 0, h = 0, w = 0;
};
struct cudnnFilterStruct {
  bool set = false;
  cudnnDataType_t type = CUDNN_DATA_FLOAT;
  cudnnTensorFormat_t format = CUDNN_TENSOR_NCHW;
  int k = 0, c = 0, r = 0, s = 0;
};
struct cudnnConvolutionStruct {
  bool set = false;
  int pad_h = 0, pad_w = 0, u = 1, v = 1, dil_h = 1, dil_w = 1;
  cudnnConvolutionMode_t mode = CUDNN_CROSS_CORRELATION;
  cudnnDataType_t compute = CUDNN_DATA_FLOAT;
  cudnnMathType_t math = CUDNN_DEFAULT_MATH;
};

namespace diffuse::sim {

cudaError_t take_last_error(bool clear);

namespace {

std::set<const void*>& live() {
  static auto* s = new std::set<const void*>;
  return *s;
}
template <class T>
T* checked(const T* p) {
  return p && live().count(p) ? const_cast<T*>(p) : nullptr;
}
template <class T>
cudnnStatus_t make(T** out) {
  if (!out) return CUDNN_STATUS_BAD_PARAM;
  *out = new T;
  live().insert(*out);
  return CUDNN_STATUS_SUCCESS;
}
template <class T>
cudnnStatus_t destroy(T* p) {
  if (!p) return CUDNN_STATUS_SUCCESS;
  if (!live().erase(p)) return CUDNN_STATUS_BAD_PARAM;
  delete p;
  return CUDNN_STATUS_SUCCESS;
}

cudaDataType_t cuda_type(cudnnDataType_t t) {
  switch (t) {
    case CUDNN_DATA_FLOAT: return CUDA_R_32F;
    case CUDNN_DATA_DOUBLE: return CUDA_R_64F;
    case CUDNN_DATA_HALF: return CUDA_R_16F;
    case CUDNN_DATA_BFLOAT16: return CUDA_R_16BF;
    default: return CUDA_R_8I;  // not simulated
  }
}

enum class Dir { fwd, data, filter };

// One convolution problem, from the descriptors.
struct Conv {
  int N, C, H, W, K, R, S, P, Q;
  int pad_h, pad_w, u, v, dil_h, dil_w;
  bool flip;
  cudaDataType_t type;
  bool tf32;
  // Element strides of x/dx (n, c, h, w), y/dy (n, k, p, q) and w/dw (k, c, r, s).
  std::size_t xs[4], ys[4], ws[4];
  std::size_t x_elems, y_elems, w_elems;
};

void strides(cudnnTensorFormat_t f, int c, int h, int w, std::size_t out[4]) {
  if (f == CUDNN_TENSOR_NCHW) {
    out[0] = std::size_t(c) * h * w, out[1] = std::size_t(h) * w, out[2] = w, out[3] = 1;
  } else {  // NHWC
    out[0] = std::size_t(h) * w * c, out[1] = 1, out[2] = std::size_t(w) * c, out[3] = c;
  }
}

cudnnStatus_t describe(const cudnnTensorStruct* x, const cudnnFilterStruct* w, const cudnnConvolutionStruct* cv,
                       const cudnnTensorStruct* y, Conv& p, std::string* why) {
  auto bad = [&](const std::string& s) {
    *why = s;
    return CUDNN_STATUS_BAD_PARAM;
  };
  auto unsupported = [&](const std::string& s) {
    *why = s;
    return CUDNN_STATUS_NOT_SUPPORTED;
  };
  if (!checked(x) || !checked(w) || !checked(cv) || !checked(y)) return bad("a descriptor is null or was destroyed");
  if (!x->set || !w->set || !cv->set || !y->set) return bad("a descriptor was never set");
  if (x->format == CUDNN_TENSOR_NCHW_VECT_C || y->format == CUDNN_TENSOR_NCHW_VECT_C ||
      w->format == CUDNN_TENSOR_NCHW_VECT_C)
    return unsupported("CUDNN_TENSOR_NCHW_VECT_C is not simulated");
  if (x->type != w->type || x->type != y->type) return bad("x, w and y of different data types");
  const cudnnDataType_t t = x->type;
  const bool ok = (t == CUDNN_DATA_FLOAT && cv->compute == CUDNN_DATA_FLOAT) ||
                  (t == CUDNN_DATA_DOUBLE && cv->compute == CUDNN_DATA_DOUBLE) ||
                  ((t == CUDNN_DATA_HALF || t == CUDNN_DATA_BFLOAT16) && cv->compute == CUDNN_DATA_FLOAT);
  if (!ok)
    return unsupported("data type " + std::to_string(t) + " with compute type " + std::to_string(cv->compute) +
                       " is not a supported configuration");
  if (x->c != w->c) return bad("x has " + std::to_string(x->c) + " channels, the filter " + std::to_string(w->c));
  const int P = 1 + (x->h + 2 * cv->pad_h - ((w->r - 1) * cv->dil_h + 1)) / cv->u;
  const int Q = 1 + (x->w + 2 * cv->pad_w - ((w->s - 1) * cv->dil_w + 1)) / cv->v;
  if (P <= 0 || Q <= 0) return bad("the filter does not fit the padded input");
  if (y->n != x->n || y->c != w->k || y->h != P || y->w != Q)
    return bad("y is (" + std::to_string(y->n) + "," + std::to_string(y->c) + "," + std::to_string(y->h) + "," +
               std::to_string(y->w) + "), the convolution's output is (" + std::to_string(x->n) + "," +
               std::to_string(w->k) + "," + std::to_string(P) + "," + std::to_string(Q) + ")");
  p.N = x->n, p.C = x->c, p.H = x->h, p.W = x->w, p.K = w->k, p.R = w->r, p.S = w->s, p.P = P, p.Q = Q;
  p.pad_h = cv->pad_h, p.pad_w = cv->pad_w, p.u = cv->u, p.v = cv->v, p.dil_h = cv->dil_h, p.dil_w = cv->dil_w;
  p.flip = cv->mode == CUDNN_CONVOLUTION;
  p.type = cuda_type(t);
  p.tf32 = t == CUDNN_DATA_FLOAT && cv->math != CUDNN_FMA_MATH;
  strides(x->format, x->c, x->h, x->w, p.xs);
  strides(y->format, y->c, y->h, y->w, p.ys);
  if (w->format == CUDNN_TENSOR_NCHW) {
    p.ws[0] = std::size_t(w->c) * w->r * w->s, p.ws[1] = std::size_t(w->r) * w->s, p.ws[2] = w->s, p.ws[3] = 1;
  } else {  // KRSC
    p.ws[0] = std::size_t(w->r) * w->s * w->c, p.ws[1] = 1, p.ws[2] = std::size_t(w->s) * w->c, p.ws[3] = w->c;
  }
  p.x_elems = std::size_t(x->n) * x->c * x->h * x->w;
  p.y_elems = std::size_t(y->n) * y->c * y->h * y->w;
  p.w_elems = std::size_t(w->k) * w->c * w->r * w->s;
  return CUDNN_STATUS_SUCCESS;
}

// ---- the algorithms --------------------------------------------------------------------------------

struct AlgoInfo {
  int algo;
  const char* name;
  cudnnStatus_t status;  // for this problem
  bool deterministic;
  std::size_t workspace;
  float time;  // what Find reports, ms: a fixed ranking, not a measurement
};

bool three_by_three(const Conv& p) { return p.R == 3 && p.S == 3 && p.u == 1 && p.v == 1 && p.dil_h == 1 && p.dil_w == 1; }

std::vector<AlgoInfo> algos(Dir d, const Conv& p, bool nchw) {
  const std::size_t es = type_size(p.type);
  const std::size_t im2col = std::size_t(p.C) * p.R * p.S * p.P * p.Q * es;
  const bool fft_ok = nchw && p.u == 1 && p.v == 1 && p.dil_h == 1 && p.dil_w == 1;
  const cudnnStatus_t ok = CUDNN_STATUS_SUCCESS, no = CUDNN_STATUS_NOT_SUPPORTED;
  if (d == Dir::fwd)
    return {
        {CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM, "IMPLICIT_PRECOMP_GEMM", ok, true,
         std::size_t(p.C) * p.R * p.S * 8 + 4096, 0.010f},
        {CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED, "WINOGRAD_NONFUSED", three_by_three(p) ? ok : no, true,
         p.x_elems * es * 4, 0.012f},
        {CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, "IMPLICIT_GEMM", ok, true, 0, 0.020f},
        {CUDNN_CONVOLUTION_FWD_ALGO_GEMM, "GEMM", ok, true, im2col, 0.030f},
        {CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD, "WINOGRAD", three_by_three(p) ? ok : no, true, 0, 0.040f},
        {CUDNN_CONVOLUTION_FWD_ALGO_FFT, "FFT", fft_ok ? ok : no, true, p.x_elems * es * 8, 0.050f},
        {CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING, "FFT_TILING", fft_ok ? ok : no, true, p.x_elems * es * 4, 0.060f},
        {CUDNN_CONVOLUTION_FWD_ALGO_DIRECT, "DIRECT", no, true, 0, 0.070f},
    };
  if (d == Dir::data)
    return {
        {CUDNN_CONVOLUTION_BWD_DATA_ALGO_0, "ALGO_0", ok, false, 0, 0.008f},
        {CUDNN_CONVOLUTION_BWD_DATA_ALGO_1, "ALGO_1", ok, true, std::size_t(p.K) * p.R * p.S * 8 + 4096, 0.010f},
        {CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED, "WINOGRAD_NONFUSED", three_by_three(p) ? ok : no, true,
         p.y_elems * es * 4, 0.012f},
        {CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD, "WINOGRAD", three_by_three(p) ? ok : no, true, 0, 0.020f},
        {CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT, "FFT", fft_ok ? ok : no, true, p.x_elems * es * 8, 0.030f},
        {CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING, "FFT_TILING", fft_ok ? ok : no, true, p.x_elems * es * 4, 0.040f},
    };
  return {
      {CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0, "ALGO_0", ok, false, 0, 0.008f},
      {CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3, "ALGO_3", ok, false, std::size_t(p.K) * p.C * 4, 0.009f},
      {CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1, "ALGO_1", ok, true, im2col + 4096, 0.012f},
      {CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED, "WINOGRAD_NONFUSED", three_by_three(p) ? ok : no, true,
       p.y_elems * es * 4, 0.020f},
      {CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT, "FFT", fft_ok ? ok : no, true, p.x_elems * es * 8, 0.030f},
      {CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT_TILING, "FFT_TILING", fft_ok ? ok : no, true, p.x_elems * es * 4, 0.040f},
      {CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD, "WINOGRAD", no, true, 0, 0.050f},  // "not implemented"
  };
}

const AlgoInfo* find_algo(const std::vector<AlgoInfo>& v, int algo) {
  for (const AlgoInfo& a : v)
    if (a.algo == algo) return &a;
  return nullptr;
}

// ---- the arithmetic ----------------------------------------------------------------------------------

double in(const void* p, const Conv& c, std::size_t i) {
  double v = load(p, c.type, i);
  if (c.tf32) {
    float f = static_cast<float>(v);
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) < 0x7f800000u) u = (u + 0xfffu + ((u >> 13) & 1u)) & ~0x1fffu;
    std::memcpy(&f, &u, 4);
    v = f;
  }
  return v;
}

// One output element's terms, summed: in double in a fixed order, or (a non-deterministic
// algorithm) in f32 in a random order.
struct Summer {
  bool random = false;
  std::mt19937_64* rng = nullptr;
  std::vector<double> terms;
  double acc = 0;
  void add(double t) {
    if (random)
      terms.push_back(t);
    else
      acc += t;
  }
  double total() {
    if (!random) {
      const double t = acc;
      acc = 0;
      return t;
    }
    std::shuffle(terms.begin(), terms.end(), *rng);
    float s = 0;
    for (double t : terms) s += static_cast<float>(t);
    terms.clear();
    return s;
  }
};

void blend(void* out, const Conv& c, std::size_t i, double sum, double alpha, double beta) {
  if (c.type == CUDA_R_64F) {
    double v = alpha * sum;
    if (beta != 0) v += beta * load(out, c.type, i);
    store(out, c.type, i, v);
    return;
  }
  float v = static_cast<float>(alpha) * static_cast<float>(sum);
  if (beta != 0) v = v + static_cast<float>(beta) * static_cast<float>(load(out, c.type, i));
  store(out, c.type, i, v);
}

// Multiply-adds of one direction (the same count in all three): threads only where they pay.
std::size_t macs(const Conv& c) { return c.y_elems * c.C * c.R * c.S; }

int fr(const Conv& c, int r) { return c.flip ? c.R - 1 - r : r; }
int fs(const Conv& c, int s) { return c.flip ? c.S - 1 - s : s; }

void forward(const Conv& c, const void* x, const void* w, void* y, double alpha, double beta, bool random) {
  std::mt19937_64 rng(std::random_device{}());
  for (int n = 0; n < c.N; ++n) {
    Summer sum;
    sum.random = random;
    sum.rng = &rng;
    for (int k = 0; k < c.K; ++k)
      for (int p = 0; p < c.P; ++p)
        for (int q = 0; q < c.Q; ++q) {
          for (int r = 0; r < c.R; ++r) {
            const int h = p * c.u - c.pad_h + r * c.dil_h;
            if (h < 0 || h >= c.H) continue;
            for (int s = 0; s < c.S; ++s) {
              const int ww = q * c.v - c.pad_w + s * c.dil_w;
              if (ww < 0 || ww >= c.W) continue;
              for (int ch = 0; ch < c.C; ++ch)
                sum.add(in(x, c, n * c.xs[0] + ch * c.xs[1] + h * c.xs[2] + ww * c.xs[3]) *
                        in(w, c, k * c.ws[0] + ch * c.ws[1] + fr(c, r) * c.ws[2] + fs(c, s) * c.ws[3]));
            }
          }
          blend(y, c, n * c.ys[0] + k * c.ys[1] + p * c.ys[2] + q * c.ys[3], sum.total(), alpha, beta);
        }
  }
}

void backward_data(const Conv& c, const void* w, const void* dy, void* dx, double alpha, double beta, bool random) {
  std::mt19937_64 rng(std::random_device{}());
  for (int n = 0; n < c.N; ++n) {
    Summer sum;
    sum.random = random;
    sum.rng = &rng;
    for (int ch = 0; ch < c.C; ++ch)
      for (int h = 0; h < c.H; ++h)
        for (int ww = 0; ww < c.W; ++ww) {
          for (int r = 0; r < c.R; ++r) {
            const int ph = h + c.pad_h - r * c.dil_h;  // = p u
            if (ph < 0 || ph % c.u != 0 || ph / c.u >= c.P) continue;
            const int p = ph / c.u;
            for (int s = 0; s < c.S; ++s) {
              const int qw = ww + c.pad_w - s * c.dil_w;
              if (qw < 0 || qw % c.v != 0 || qw / c.v >= c.Q) continue;
              const int q = qw / c.v;
              for (int k = 0; k < c.K; ++k)
                sum.add(in(dy, c, n * c.ys[0] + k * c.ys[1] + p * c.ys[2] + q * c.ys[3]) *
                        in(w, c, k * c.ws[0] + ch * c.ws[1] + fr(c, r) * c.ws[2] + fs(c, s) * c.ws[3]));
            }
          }
          blend(dx, c, n * c.xs[0] + ch * c.xs[1] + h * c.xs[2] + ww * c.xs[3], sum.total(), alpha, beta);
        }
  }
}

void backward_filter(const Conv& c, const void* x, const void* dy, void* dw, double alpha, double beta, bool random) {
  std::mt19937_64 rng(std::random_device{}());
  for (int k = 0; k < c.K; ++k) {
    Summer sum;
    sum.random = random;
    sum.rng = &rng;
    for (int ch = 0; ch < c.C; ++ch)
      for (int r = 0; r < c.R; ++r)
        for (int s = 0; s < c.S; ++s) {
          for (int n = 0; n < c.N; ++n)
            for (int p = 0; p < c.P; ++p) {
              const int h = p * c.u - c.pad_h + r * c.dil_h;
              if (h < 0 || h >= c.H) continue;
              for (int q = 0; q < c.Q; ++q) {
                const int ww = q * c.v - c.pad_w + s * c.dil_w;
                if (ww < 0 || ww >= c.W) continue;
                sum.add(in(x, c, n * c.xs[0] + ch * c.xs[1] + h * c.xs[2] + ww * c.xs[3]) *
                        in(dy, c, n * c.ys[0] + k * c.ys[1] + p * c.ys[2] + q * c.ys[3]));
              }
            }
          blend(dw, c, k * c.ws[0] + ch * c.ws[1] + fr(c, r) * c.ws[2] + fs(c, s) * c.ws[3], sum.total(), alpha, beta);
        }
  }
}

const char* dir_name(Dir d) {
  return d == Dir::fwd ? "cudnnConvolutionForward"
                       : d == Dir::data ? "cudnnConvolutionBackwardData" : "cudnnConvolutionBackwardFilter";
}

// The three tensors of a direction: (first input, second input, output) with element counts.
struct Operands {
  const void* a;
  std::size_t a_elems;
  const void* b;
  std::size_t b_elems;
  void* out;
  std::size_t out_elems;
};

Operands operands(Dir d, const Conv& c, const void* a, const void* b, void* out) {
  if (d == Dir::fwd) return {a, c.x_elems, b, c.w_elems, out, c.y_elems};     // x, w -> y
  if (d == Dir::data) return {a, c.w_elems, b, c.y_elems, out, c.x_elems};    // w, dy -> dx
  return {a, c.x_elems, b, c.y_elems, out, c.w_elems};                        // x, dy -> dw
}

// The deterministic algorithms, the same sums as above in the same order per output, over copies
// of the operands in double and in one layout with channels innermost (so each dot product is
// contiguous): x as [n][h][w][c], the filter (flipped for CUDNN_CONVOLUTION) as [k][r][s][c] and
// [c][r][s][k], dy as [n][p][q][k].
struct Dense {
  std::vector<double> x, w, wt, dy;
};

std::vector<double> dense_x(const Conv& c, const void* x) {
  std::vector<double> v(c.x_elems);
  for (int n = 0; n < c.N; ++n)
    for (int h = 0; h < c.H; ++h)
      for (int w = 0; w < c.W; ++w)
        for (int ch = 0; ch < c.C; ++ch)
          v[((std::size_t(n) * c.H + h) * c.W + w) * c.C + ch] = in(x, c, n * c.xs[0] + ch * c.xs[1] + h * c.xs[2] + w * c.xs[3]);
  return v;
}
std::vector<double> dense_dy(const Conv& c, const void* dy) {
  std::vector<double> v(c.y_elems);
  for (int n = 0; n < c.N; ++n)
    for (int p = 0; p < c.P; ++p)
      for (int q = 0; q < c.Q; ++q)
        for (int k = 0; k < c.K; ++k)
          v[((std::size_t(n) * c.P + p) * c.Q + q) * c.K + k] = in(dy, c, n * c.ys[0] + k * c.ys[1] + p * c.ys[2] + q * c.ys[3]);
  return v;
}
// transposed: [c][r][s][k], else [k][r][s][c]; r, s after the flip.
std::vector<double> dense_w(const Conv& c, const void* w, bool transposed) {
  std::vector<double> v(c.w_elems);
  for (int k = 0; k < c.K; ++k)
    for (int ch = 0; ch < c.C; ++ch)
      for (int r = 0; r < c.R; ++r)
        for (int s = 0; s < c.S; ++s) {
          const double e = in(w, c, k * c.ws[0] + ch * c.ws[1] + fr(c, r) * c.ws[2] + fs(c, s) * c.ws[3]);
          const std::size_t i = transposed ? ((std::size_t(ch) * c.R + r) * c.S + s) * c.K + k
                                           : ((std::size_t(k) * c.R + r) * c.S + s) * c.C + ch;
          v[i] = e;
        }
  return v;
}

void forward_fast(const Conv& c, const void* x, const void* w, void* y, double alpha, double beta) {
  const std::vector<double> X = dense_x(c, x), Wd = dense_w(c, w, false);
#pragma omp parallel for if (macs(c) > (std::size_t{1} << 22))
  for (int n = 0; n < c.N; ++n)
    for (int k = 0; k < c.K; ++k)
      for (int p = 0; p < c.P; ++p)
        for (int q = 0; q < c.Q; ++q) {
          double acc = 0;
          for (int r = 0; r < c.R; ++r) {
            const int h = p * c.u - c.pad_h + r * c.dil_h;
            if (h < 0 || h >= c.H) continue;
            for (int s = 0; s < c.S; ++s) {
              const int ww = q * c.v - c.pad_w + s * c.dil_w;
              if (ww < 0 || ww >= c.W) continue;
              const double* xr = &X[((std::size_t(n) * c.H + h) * c.W + ww) * c.C];
              const double* wr = &Wd[((std::size_t(k) * c.R + r) * c.S + s) * c.C];
              for (int ch = 0; ch < c.C; ++ch) acc += xr[ch] * wr[ch];
            }
          }
          blend(y, c, n * c.ys[0] + k * c.ys[1] + p * c.ys[2] + q * c.ys[3], acc, alpha, beta);
        }
}

void backward_data_fast(const Conv& c, const void* w, const void* dy, void* dx, double alpha, double beta) {
  const std::vector<double> DY = dense_dy(c, dy), Wt = dense_w(c, w, true);
#pragma omp parallel for if (macs(c) > (std::size_t{1} << 22))
  for (int n = 0; n < c.N; ++n)
    for (int ch = 0; ch < c.C; ++ch)
      for (int h = 0; h < c.H; ++h)
        for (int ww = 0; ww < c.W; ++ww) {
          double acc = 0;
          for (int r = 0; r < c.R; ++r) {
            const int ph = h + c.pad_h - r * c.dil_h;
            if (ph < 0 || ph % c.u != 0 || ph / c.u >= c.P) continue;
            const int p = ph / c.u;
            for (int s = 0; s < c.S; ++s) {
              const int qw = ww + c.pad_w - s * c.dil_w;
              if (qw < 0 || qw % c.v != 0 || qw / c.v >= c.Q) continue;
              const int q = qw / c.v;
              const double* dr = &DY[((std::size_t(n) * c.P + p) * c.Q + q) * c.K];
              const double* wr = &Wt[((std::size_t(ch) * c.R + r) * c.S + s) * c.K];
              for (int k = 0; k < c.K; ++k) acc += dr[k] * wr[k];
            }
          }
          blend(dx, c, n * c.xs[0] + ch * c.xs[1] + h * c.xs[2] + ww * c.xs[3], acc, alpha, beta);
        }
}

void backward_filter_fast(const Conv& c, const void* x, const void* dy, void* dw, double alpha, double beta) {
  const std::vector<double> X = dense_x(c, x), DY = dense_dy(c, dy);
#pragma omp parallel for if (macs(c) > (std::size_t{1} << 22))
  for (int k = 0; k < c.K; ++k) {
    std::vector<double> acc(static_cast<std::size_t>(c.C));
    for (int r = 0; r < c.R; ++r)
      for (int s = 0; s < c.S; ++s) {
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int n = 0; n < c.N; ++n)
          for (int p = 0; p < c.P; ++p) {
            const int h = p * c.u - c.pad_h + r * c.dil_h;
            if (h < 0 || h >= c.H) continue;
            for (int q = 0; q < c.Q; ++q) {
              const int ww = q * c.v - c.pad_w + s * c.dil_w;
              if (ww < 0 || ww >= c.W) continue;
              const double g = DY[((std::size_t(n) * c.P + p) * c.Q + q) * c.K + k];
              const double* xr = &X[((std::size_t(n) * c.H + h) * c.W + ww) * c.C];
              for (int ch = 0; ch < c.C; ++ch) acc[ch] += xr[ch] * g;
            }
          }
        for (int ch = 0; ch < c.C; ++ch)
          blend(dw, c, k * c.ws[0] + ch * c.ws[1] + fr(c, r) * c.ws[2] + fs(c, s) * c.ws[3], acc[ch], alpha, beta);
      }
  }
}

void compute(Dir d, const Conv& c, const void* a, const void* b, void* out, double alpha, double beta, bool random) {
  if (!random) {
    if (d == Dir::fwd) forward_fast(c, a, b, out, alpha, beta);
    if (d == Dir::data) backward_data_fast(c, a, b, out, alpha, beta);
    if (d == Dir::filter) backward_filter_fast(c, a, b, out, alpha, beta);
    return;
  }
  if (d == Dir::fwd) forward(c, a, b, out, alpha, beta, true);
  if (d == Dir::data) backward_data(c, a, b, out, alpha, beta, true);
  if (d == Dir::filter) backward_filter(c, a, b, out, alpha, beta, true);
}

bool nchw(const cudnnTensorStruct* x) { return x->format == CUDNN_TENSOR_NCHW; }

// A convolution call: checks, then queued on the handle's stream.
cudnnStatus_t run(Dir d, cudnnHandle_t h, const void* alpha_p, const Conv& c, bool is_nchw, const void* a,
                  const void* b, int algo, void* workspace, std::size_t ws_bytes, const void* beta_p, void* out) {
  const char* what = dir_name(d);
  if (!alpha_p || !beta_p) return CUDNN_STATUS_BAD_PARAM;
  const std::vector<AlgoInfo> table = algos(d, c, is_nchw);
  const AlgoInfo* info = find_algo(table, algo);
  if (!info) {
    report(std::string(what) + ": algorithm " + std::to_string(algo) + " does not exist");
    return CUDNN_STATUS_BAD_PARAM;
  }
  if (info->status != CUDNN_STATUS_SUCCESS) {
    report(std::string(what) + ": algorithm " + info->name + " does not support this configuration");
    return CUDNN_STATUS_NOT_SUPPORTED;
  }
  if (ws_bytes < info->workspace || (info->workspace > 0 && !workspace)) {
    report(std::string(what) + ": algorithm " + info->name + " needs " + std::to_string(info->workspace) +
           " bytes of workspace, given " + std::to_string(workspace ? ws_bytes : 0));
    return CUDNN_STATUS_NOT_SUPPORTED;
  }
  const bool f64 = c.type == CUDA_R_64F;
  const double alpha = f64 ? *static_cast<const double*>(alpha_p) : *static_cast<const float*>(alpha_p);
  const double beta = f64 ? *static_cast<const double*>(beta_p) : *static_cast<const float*>(beta_p);
  const Operands o = operands(d, c, a, b, out);
  const std::size_t es = type_size(c.type);
  std::vector<MemUse> uses;
  bool ok = check_range(o.a, o.a_elems * es, std::string(what) + ": first input") &&
            check_range(o.b, o.b_elems * es, std::string(what) + ": second input") &&
            check_range(o.out, o.out_elems * es, std::string(what) + ": output") &&
            (info->workspace == 0 || check_range(workspace, info->workspace, std::string(what) + ": workspace"));
  if (!ok) {
    set_sticky(cudaErrorIllegalAddress, std::string(what) + " would access memory out of bounds (see above)");
    return CUDNN_STATUS_EXECUTION_FAILED;
  }
  uses.push_back({o.a, o.a_elems * es, false});
  uses.push_back({o.b, o.b_elems * es, false});
  uses.push_back({o.out, o.out_elems * es, true});
  if (info->workspace) uses.push_back({workspace, info->workspace, true});
  StreamPtr s = stream_of(h->stream);
  if (!s) return CUDNN_STATUS_BAD_PARAM;
  const bool random = !info->deterministic;
  const std::size_t need = info->workspace;
  ++counters_ref().library_calls;
  const cudaError_t e = submit(s, std::string(what) + " (" + info->name + ")",
                               [d, c, a, b, out, alpha, beta, random, workspace, need] {
                                 if (need) scribble(workspace, need);
                                 compute(d, c, a, b, out, alpha, beta, random);
                               },
                               std::move(uses));
  return e == cudaSuccess ? CUDNN_STATUS_SUCCESS : CUDNN_STATUS_EXECUTION_FAILED_CUDART;
}

template <class Perf>
void fill_perf(const std::vector<AlgoInfo>& table, std::size_t ws_bytes, int requested, int* returned, Perf* perf,
               cudnnMathType_t math) {
  // Sorted as Find sorts: the ones that ran by time, then the rest.
  std::vector<const AlgoInfo*> order;
  for (const AlgoInfo& a : table) order.push_back(&a);
  auto runs = [&](const AlgoInfo* a) { return a->status == CUDNN_STATUS_SUCCESS && a->workspace <= ws_bytes; };
  std::stable_sort(order.begin(), order.end(), [&](const AlgoInfo* x, const AlgoInfo* y) {
    if (runs(x) != runs(y)) return runs(x);
    return x->time < y->time;
  });
  const int n = std::min<int>(requested, static_cast<int>(order.size()));
  for (int i = 0; i < n; ++i) {
    const AlgoInfo* a = order[i];
    Perf& p = perf[i];
    std::memset(&p, 0, sizeof p);
    p.algo = static_cast<decltype(p.algo)>(a->algo);
    p.status = a->status != CUDNN_STATUS_SUCCESS ? a->status
                                                 : a->workspace > ws_bytes ? CUDNN_STATUS_NOT_SUPPORTED
                                                                           : CUDNN_STATUS_SUCCESS;
    p.time = p.status == CUDNN_STATUS_SUCCESS ? a->time : -1.f;
    p.memory = a->workspace;
    p.determinism = a->deterministic ? CUDNN_DETERMINISTIC : CUDNN_NON_DETERMINISTIC;
    p.mathType = math;
  }
  *returned = n;
}

// Find*Ex: runs the candidates on the caller's buffers (output and workspace are left holding
// garbage) and waits for them: the handle's stream must not be capturing.
template <class Perf>
cudnnStatus_t find(Dir d, cudnnHandle_t h, const Conv& c, bool is_nchw, const void* a, const void* b, void* out,
                   int requested, int* returned, Perf* perf, void* workspace, std::size_t ws_bytes,
                   cudnnMathType_t math) {
  const char* what = d == Dir::fwd    ? "cudnnFindConvolutionForwardAlgorithmEx"
                     : d == Dir::data ? "cudnnFindConvolutionBackwardDataAlgorithmEx"
                                      : "cudnnFindConvolutionBackwardFilterAlgorithmEx";
  if (requested <= 0 || !returned || !perf) return CUDNN_STATUS_BAD_PARAM;
  StreamPtr s = stream_of(h->stream);
  if (!s) return CUDNN_STATUS_BAD_PARAM;
  if (s->capture) {
    invalidate(*s->capture, std::string(what) + " waits for the GPU, on a stream that is being captured");
    set_error(cudaErrorStreamCaptureUnsupported);
    return CUDNN_STATUS_EXECUTION_FAILED_CUDART;
  }
  if (unsafe_call(what) != cudaSuccess) return CUDNN_STATUS_EXECUTION_FAILED_CUDART;
  const Operands o = operands(d, c, a, b, out);
  const std::size_t es = type_size(c.type);
  if (!check_range(o.a, o.a_elems * es, std::string(what) + ": first input") ||
      !check_range(o.b, o.b_elems * es, std::string(what) + ": second input") ||
      !check_range(o.out, o.out_elems * es, std::string(what) + ": output") ||
      (ws_bytes > 0 && !check_range(workspace, ws_bytes, std::string(what) + ": workspace"))) {
    set_sticky(cudaErrorIllegalAddress, std::string(what) + " would access memory out of bounds (see above)");
    return CUDNN_STATUS_EXECUTION_FAILED;
  }
  const std::vector<AlgoInfo> table = algos(d, c, is_nchw);
  fill_perf(table, ws_bytes, requested, returned, perf, math);
  std::vector<MemUse> uses{{o.a, o.a_elems * es, false}, {o.b, o.b_elems * es, false}, {out, o.out_elems * es, true}};
  if (ws_bytes) uses.push_back({workspace, ws_bytes, true});
  ++counters_ref().library_calls;
  const std::size_t out_bytes = o.out_elems * es;
  // What the trials leave behind: some algorithm's partial result, here garbage.
  const std::size_t ws_touch = std::min<std::size_t>(ws_bytes, std::size_t{1} << 20);
  if (submit(s, what, [out, out_bytes, workspace, ws_touch] {
        scribble(out, out_bytes);
        if (ws_touch) scribble(workspace, ws_touch);
      }, std::move(uses)) != cudaSuccess)
    return CUDNN_STATUS_EXECUTION_FAILED_CUDART;
  complete(*s, s->seq);
  host_waited(*s, s->clock);
  return sticky() == cudaSuccess ? CUDNN_STATUS_SUCCESS : CUDNN_STATUS_EXECUTION_FAILED;
}

template <class Perf>
cudnnStatus_t heuristic(Dir d, const Conv& c, bool is_nchw, int requested, int* returned, Perf* perf,
                        cudnnMathType_t math) {
  if (requested <= 0 || !returned || !perf) return CUDNN_STATUS_BAD_PARAM;
  fill_perf(algos(d, c, is_nchw), ~std::size_t{0}, requested, returned, perf, math);
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t problem(const cudnnTensorStruct* x, const cudnnFilterStruct* w, const cudnnConvolutionStruct* cv,
                      const cudnnTensorStruct* y, Conv& c, const char* what) {
  std::string why;
  const cudnnStatus_t s = describe(x, w, cv, y, c, &why);
  if (s != CUDNN_STATUS_SUCCESS) report(std::string(what) + ": " + why);
  return s;
}

}  // namespace
}  // namespace diffuse::sim

using namespace diffuse::sim;

extern "C" {

cudnnStatus_t cudnnCreate(cudnnHandle_t* h) {
  Guard g(lock());
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    (void)take_last_error(true);
    return CUDNN_STATUS_NOT_INITIALIZED;
  }
  return make(h);
}

cudnnStatus_t cudnnDestroy(cudnnHandle_t h) {
  Guard g(lock());
  return destroy(h);
}

cudnnStatus_t cudnnSetStream(cudnnHandle_t h, cudaStream_t s) {
  Guard g(lock());
  if (!checked(h)) return CUDNN_STATUS_BAD_PARAM;
  if (!stream_of(s)) {
    (void)take_last_error(true);
    return CUDNN_STATUS_BAD_PARAM;
  }
  h->stream = s;
  return CUDNN_STATUS_SUCCESS;
}

const char* cudnnGetErrorString(cudnnStatus_t s) {
  switch (s) {
    case CUDNN_STATUS_SUCCESS: return "CUDNN_STATUS_SUCCESS";
    case CUDNN_STATUS_NOT_INITIALIZED: return "CUDNN_STATUS_NOT_INITIALIZED";
    case CUDNN_STATUS_BAD_PARAM: return "CUDNN_STATUS_BAD_PARAM";
    case CUDNN_STATUS_BAD_PARAM_NULL_POINTER: return "CUDNN_STATUS_BAD_PARAM_NULL_POINTER";
    case CUDNN_STATUS_NOT_SUPPORTED: return "CUDNN_STATUS_NOT_SUPPORTED";
    case CUDNN_STATUS_INTERNAL_ERROR: return "CUDNN_STATUS_INTERNAL_ERROR";
    case CUDNN_STATUS_EXECUTION_FAILED: return "CUDNN_STATUS_EXECUTION_FAILED";
    case CUDNN_STATUS_EXECUTION_FAILED_CUDART: return "CUDNN_STATUS_EXECUTION_FAILED_CUDART";
    default: return "CUDNN_STATUS_UNKNOWN";
  }
}

cudnnStatus_t cudnnCreateTensorDescriptor(cudnnTensorDescriptor_t* d) {
  Guard g(lock());
  return make(d);
}
cudnnStatus_t cudnnDestroyTensorDescriptor(cudnnTensorDescriptor_t d) {
  Guard g(lock());
  return destroy(d);
}

cudnnStatus_t cudnnSetTensor4dDescriptor(cudnnTensorDescriptor_t d, cudnnTensorFormat_t format, cudnnDataType_t type,
                                         int n, int c, int h, int w) {
  Guard g(lock());
  if (!checked(d)) return CUDNN_STATUS_BAD_PARAM;
  if (n <= 0 || c <= 0 || h <= 0 || w <= 0) return CUDNN_STATUS_BAD_PARAM;
  if (format != CUDNN_TENSOR_NCHW && format != CUDNN_TENSOR_NHWC && format != CUDNN_TENSOR_NCHW_VECT_C)
    return CUDNN_STATUS_BAD_PARAM;
  d->type = type;
  d->format = format;
  d->n = n, d->c = c, d->h = h, d->w = w;
  d->set = true;
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnCreateFilterDescriptor(cudnnFilterDescriptor_t* d) {
  Guard g(lock());
  return make(d);
}
cudnnStatus_t cudnnDestroyFilterDescriptor(cudnnFilterDescriptor_t d) {
  Guard g(lock());
  return destroy(d);
}

cudnnStatus_t cudnnSetFilter4dDescriptor(cudnnFilterDescriptor_t d, cudnnDataType_t type, cudnnTensorFormat_t format,
                                         int k, int c, int h, int w) {
  Guard g(lock());
  if (!checked(d)) return CUDNN_STATUS_BAD_PARAM;
  if (k <= 0 || c <= 0 || h <= 0 || w <= 0) return CUDNN_STATUS_BAD_PARAM;
  if (format != CUDNN_TENSOR_NCHW && format != CUDNN_TENSOR_NHWC && format != CUDNN_TENSOR_NCHW_VECT_C)
    return CUDNN_STATUS_BAD_PARAM;
  d->type = type;
  d->format = format;
  d->k = k, d->c = c, d->r = h, d->s = w;
  d->set = true;
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnCreateConvolutionDescriptor(cudnnConvolutionDescriptor_t* d) {
  Guard g(lock());
  return make(d);
}
cudnnStatus_t cudnnDestroyConvolutionDescriptor(cudnnConvolutionDescriptor_t d) {
  Guard g(lock());
  return destroy(d);
}

cudnnStatus_t cudnnSetConvolution2dDescriptor(cudnnConvolutionDescriptor_t d, int pad_h, int pad_w, int u, int v,
                                              int dil_h, int dil_w, cudnnConvolutionMode_t mode,
                                              cudnnDataType_t compute) {
  Guard g(lock());
  if (!checked(d)) return CUDNN_STATUS_BAD_PARAM;
  if (pad_h < 0 || pad_w < 0 || u <= 0 || v <= 0 || dil_h <= 0 || dil_w <= 0) return CUDNN_STATUS_BAD_PARAM;
  if (mode != CUDNN_CONVOLUTION && mode != CUDNN_CROSS_CORRELATION) return CUDNN_STATUS_BAD_PARAM;
  d->pad_h = pad_h, d->pad_w = pad_w, d->u = u, d->v = v, d->dil_h = dil_h, d->dil_w = dil_w;
  d->mode = mode;
  d->compute = compute;
  d->set = true;
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnSetConvolutionMathType(cudnnConvolutionDescriptor_t d, cudnnMathType_t math) {
  Guard g(lock());
  if (!checked(d)) return CUDNN_STATUS_BAD_PARAM;
  if (math != CUDNN_DEFAULT_MATH && math != CUDNN_TENSOR_OP_MATH && math != CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION &&
      math != CUDNN_FMA_MATH)
    return CUDNN_STATUS_BAD_PARAM;
  d->math = math;
  return CUDNN_STATUS_SUCCESS;
}

// ---- algorithm choice ------------------------------------------------------------------------------

cudnnStatus_t cudnnFindConvolutionForwardAlgorithmEx(cudnnHandle_t h, const cudnnTensorDescriptor_t xd, const void* x,
                                                     const cudnnFilterDescriptor_t wd, const void* w,
                                                     const cudnnConvolutionDescriptor_t cd,
                                                     const cudnnTensorDescriptor_t yd, void* y, const int requested,
                                                     int* returned, cudnnConvolutionFwdAlgoPerf_t* perf, void* ws,
                                                     size_t ws_bytes) {
  Guard g(lock());
  if (!checked(h)) return CUDNN_STATUS_BAD_PARAM;
  Conv c;
  if (const cudnnStatus_t s = problem(xd, wd, cd, yd, c, "cudnnFindConvolutionForwardAlgorithmEx")) return s;
  return find(Dir::fwd, h, c, nchw(xd), x, w, y, requested, returned, perf, ws, ws_bytes, cd->math);
}

cudnnStatus_t cudnnFindConvolutionBackwardDataAlgorithmEx(cudnnHandle_t h, const cudnnFilterDescriptor_t wd,
                                                          const void* w, const cudnnTensorDescriptor_t dyd,
                                                          const void* dy, const cudnnConvolutionDescriptor_t cd,
                                                          const cudnnTensorDescriptor_t dxd, void* dx,
                                                          const int requested, int* returned,
                                                          cudnnConvolutionBwdDataAlgoPerf_t* perf, void* ws,
                                                          size_t ws_bytes) {
  Guard g(lock());
  if (!checked(h)) return CUDNN_STATUS_BAD_PARAM;
  Conv c;
  if (const cudnnStatus_t s = problem(dxd, wd, cd, dyd, c, "cudnnFindConvolutionBackwardDataAlgorithmEx")) return s;
  return find(Dir::data, h, c, nchw(dxd), w, dy, dx, requested, returned, perf, ws, ws_bytes, cd->math);
}

cudnnStatus_t cudnnFindConvolutionBackwardFilterAlgorithmEx(cudnnHandle_t h, const cudnnTensorDescriptor_t xd,
                                                            const void* x, const cudnnTensorDescriptor_t dyd,
                                                            const void* dy, const cudnnConvolutionDescriptor_t cd,
                                                            const cudnnFilterDescriptor_t dwd, void* dw,
                                                            const int requested, int* returned,
                                                            cudnnConvolutionBwdFilterAlgoPerf_t* perf, void* ws,
                                                            size_t ws_bytes) {
  Guard g(lock());
  if (!checked(h)) return CUDNN_STATUS_BAD_PARAM;
  Conv c;
  if (const cudnnStatus_t s = problem(xd, dwd, cd, dyd, c, "cudnnFindConvolutionBackwardFilterAlgorithmEx")) return s;
  return find(Dir::filter, h, c, nchw(xd), x, dy, dw, requested, returned, perf, ws, ws_bytes, cd->math);
}

cudnnStatus_t cudnnGetConvolutionForwardAlgorithm_v7(cudnnHandle_t h, const cudnnTensorDescriptor_t xd,
                                                     const cudnnFilterDescriptor_t wd,
                                                     const cudnnConvolutionDescriptor_t cd,
                                                     const cudnnTensorDescriptor_t yd, const int requested,
                                                     int* returned, cudnnConvolutionFwdAlgoPerf_t* perf) {
  Guard g(lock());
  if (!checked(h)) return CUDNN_STATUS_BAD_PARAM;
  Conv c;
  if (const cudnnStatus_t s = problem(xd, wd, cd, yd, c, "cudnnGetConvolutionForwardAlgorithm_v7")) return s;
  return heuristic(Dir::fwd, c, nchw(xd), requested, returned, perf, cd->math);
}

cudnnStatus_t cudnnGetConvolutionBackwardDataAlgorithm_v7(cudnnHandle_t h, const cudnnFilterDescriptor_t wd,
                                                          const cudnnTensorDescriptor_t dyd,
                                                          const cudnnConvolutionDescriptor_t cd,
                                                          const cudnnTensorDescriptor_t dxd, const int requested,
                                                          int* returned, cudnnConvolutionBwdDataAlgoPerf_t* perf) {
  Guard g(lock());
  if (!checked(h)) return CUDNN_STATUS_BAD_PARAM;
  Conv c;
  if (const cudnnStatus_t s = problem(dxd, wd, cd, dyd, c, "cudnnGetConvolutionBackwardDataAlgorithm_v7")) return s;
  return heuristic(Dir::data, c, nchw(dxd), requested, returned, perf, cd->math);
}

cudnnStatus_t cudnnGetConvolutionBackwardFilterAlgorithm_v7(cudnnHandle_t h, const cudnnTensorDescriptor_t xd,
                                                            const cudnnTensorDescriptor_t dyd,
                                                            const cudnnConvolutionDescriptor_t cd,
                                                            const cudnnFilterDescriptor_t dwd, const int requested,
                                                            int* returned, cudnnConvolutionBwdFilterAlgoPerf_t* perf) {
  Guard g(lock());
  if (!checked(h)) return CUDNN_STATUS_BAD_PARAM;
  Conv c;
  if (const cudnnStatus_t s = problem(xd, dwd, cd, dyd, c, "cudnnGetConvolutionBackwardFilterAlgorithm_v7")) return s;
  return heuristic(Dir::filter, c, nchw(xd), requested, returned, perf, cd->math);
}

// ---- the convolutions ------------------------------------------------------------------------------

cudnnStatus_t cudnnConvolutionForward(cudnnHandle_t h, const void* alpha, const cudnnTensorDescriptor_t xd,
                                      const void* x, const cudnnFilterDescriptor_t wd, const void* w,
                                      const cudnnConvolutionDescriptor_t cd, cudnnConvolutionFwdAlgo_t algo, void* ws,
                                      size_t ws_bytes, const void* beta, const cudnnTensorDescriptor_t yd, void* y) {
  Guard g(lock());
  if (!checked(h)) return CUDNN_STATUS_BAD_PARAM;
  Conv c;
  if (const cudnnStatus_t s = problem(xd, wd, cd, yd, c, "cudnnConvolutionForward")) return s;
  return run(Dir::fwd, h, alpha, c, nchw(xd), x, w, algo, ws, ws_bytes, beta, y);
}

cudnnStatus_t cudnnConvolutionBackwardData(cudnnHandle_t h, const void* alpha, const cudnnFilterDescriptor_t wd,
                                           const void* w, const cudnnTensorDescriptor_t dyd, const void* dy,
                                           const cudnnConvolutionDescriptor_t cd, cudnnConvolutionBwdDataAlgo_t algo,
                                           void* ws, size_t ws_bytes, const void* beta,
                                           const cudnnTensorDescriptor_t dxd, void* dx) {
  Guard g(lock());
  if (!checked(h)) return CUDNN_STATUS_BAD_PARAM;
  Conv c;
  if (const cudnnStatus_t s = problem(dxd, wd, cd, dyd, c, "cudnnConvolutionBackwardData")) return s;
  return run(Dir::data, h, alpha, c, nchw(dxd), w, dy, algo, ws, ws_bytes, beta, dx);
}

cudnnStatus_t cudnnConvolutionBackwardFilter(cudnnHandle_t h, const void* alpha, const cudnnTensorDescriptor_t xd,
                                             const void* x, const cudnnTensorDescriptor_t dyd, const void* dy,
                                             const cudnnConvolutionDescriptor_t cd,
                                             cudnnConvolutionBwdFilterAlgo_t algo, void* ws, size_t ws_bytes,
                                             const void* beta, const cudnnFilterDescriptor_t dwd, void* dw) {
  Guard g(lock());
  if (!checked(h)) return CUDNN_STATUS_BAD_PARAM;
  Conv c;
  if (const cudnnStatus_t s = problem(xd, dwd, cd, dyd, c, "cudnnConvolutionBackwardFilter")) return s;
  return run(Dir::filter, h, alpha, c, nchw(xd), x, dy, algo, ws, ws_bytes, beta, dw);
}

}  // extern "C"
