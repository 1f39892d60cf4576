// kernels/cuda/attention.cu: flash-style attention (Dao et al. 2022, "FlashAttention"; the
// backward's split into a dK/dV pass and a dQ pass as in Dao 2023, "FlashAttention-2"), SIMT
// version: plain FMAs, no tensor cores, so it also runs under the emulator. Launchers in
// kernels/attention.h; math in kernels/attention.h.
//
// Forward: each query row is owned by D/32 neighbouring threads (one for D = 32, two for D = 64),
// each with 32 dims of q (pre-multiplied by 1/sqrt(D)) and of the output accumulator in
// registers; the block streams K and V through shared memory in tiles of kBc keys, every row
// reading the same key at a time (a broadcast). Scores are taken kChunk at a time, so the running
// max and the rescaling of the accumulator by exp(m_old - m_new) (the online softmax) happen once
// per chunk instead of once per key. No (Tq, Tk) matrix exists anywhere; the row log-sum-exp is
// kept for backward.
//
// Backward, with P recomputed as exp(s - lse) and Delta_i = sum_d dO_i O_i (= rowsum(dP * P)):
//   dK/dV pass: threads own key rows (32 dims each), their K and V rows in shared memory and
//     their dK and dV accumulators in registers; Q, dO, lse and Delta stream through shared memory:
//       dV_j += P_ij dO_i,  dS_ij = P_ij (dO_i . V_j - Delta_i),  dK_j += dS_ij Q_i / sqrt(D)
//   dQ pass: threads own query rows, K and V tiles streamed:  dQ_i += dS_ij K_j / sqrt(D).
// Each gradient element is written by one thread: no atomics, deterministic.
#include "kernels/cuda/portable.cuh"

#include <algorithm>
#include <cmath>

#include "core/check.h"
#include "core/stream.h"
#include "kernels/attention.h"
#include "kernels/cuda/common.cuh"
#include "kernels/gemm.h"
#include "kernels/softmax.h"
#include "kernels/cuda/tensor_args.h"

namespace diffuse::DF_BACKEND {

namespace {

using detail::from_f32;
using detail::to_f32;

// Register budget. A thread owns 32 dims of a row (a "sub-row"): with D = 64 two neighbouring
// lanes share a row, each holding 32 dims of q (or k, v) and of its accumulators, and a dot
// product is two partial sums joined by one __shfl_xor_sync. One thread per 64-dim row would
// need 2 x 64 accumulators plus the 2 x 64 row values the compiler hoists out of the loops, which
// is past 255 registers and spills (measured: 384 bytes per thread in dK/dV).
constexpr int kSub = 32;    // dims per thread
constexpr int kBr = 64;     // forward / dQ: query rows per block
constexpr int kBc = 32;     // keys per shared-memory tile
constexpr int kChunk = 16;  // scores held in registers between two rescalings
constexpr int kBk = 64;     // dK/dV: key rows per block
constexpr int kBq = 16;     // dK/dV: query rows per shared-memory tile

// Shared-memory rows are stored as sub-rows of 33 floats: sub-row u = row * kSplit + part at
// u * 33. The pad makes the two halves of a row (and neighbouring rows) fall in different banks,
// both when every lane reads the same row (a broadcast per half) and when lanes read their own.
constexpr int kPad = kSub + 1;

struct Geom {
  int64_t Tq, Tk, C;
  int heads;
};

// Element (row t, dim d) of head h of sample b in a (B, T, C) tensor.
DF_DEVICE_INLINE int64_t at(int64_t b, int64_t t, int64_t T, int64_t C, int h, int D, int d) {
  return (b * T + t) * C + static_cast<int64_t>(h) * D + d;
}

// The full dot product from the kSplit lanes of a row (neighbouring lanes of one warp).
template <int kSplit>
DF_DEVICE_INLINE float row_sum(float partial) {
  if constexpr (kSplit == 2) partial += __shfl_xor_sync(0xffffffffu, partial, 1);
  return partial;
}

// Rows [r0, r0 + rows) of head (b, h) of a (B, T, C) tensor into sub-row layout; rows past T are
// zero.
template <class T, int D>
DF_DEVICE_INLINE void load_rows(const T* __restrict__ src, float (*dst)[kPad], int rows, int64_t b, int h, int64_t r0,
                                int64_t Tn, int64_t C, int nthreads) {
  constexpr int kSplit = D / kSub;
  for (int e = threadIdx.x; e < rows * D; e += nthreads) {
    const int r = e / D, dd = e % D;
    const int64_t t = r0 + r;
    dst[r * kSplit + dd / kSub][dd % kSub] = t < Tn ? to_f32(src[at(b, t, Tn, C, h, D, dd)]) : 0.0f;
  }
}

template <class T, int D>
__global__ void __launch_bounds__(kBr * (D / kSub)) attention_forward_kernel(const T* __restrict__ q,
                                                                             const T* __restrict__ k,
                                                                             const T* __restrict__ v,
                                                                             T* __restrict__ out,
                                                                             float* __restrict__ lse, Geom g,
                                                                             float scale) {
  constexpr int kSplit = D / kSub, kThreads = kBr * kSplit;
  DF_SHARED2(float, ks, kBc * kSplit, kPad);
  DF_SHARED2(float, vs, kBc * kSplit, kPad);
  const int64_t bh = blockIdx.y, b = bh / g.heads;
  const int h = static_cast<int>(bh - b * g.heads);
  const int part = threadIdx.x % kSplit, d0 = part * kSub;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kBr + threadIdx.x / kSplit;
  const bool active = i < g.Tq;  // inactive threads still load tiles, shuffle and pass the barriers
  float qr[kSub], acc[kSub];
  DF_UNROLL for (int d = 0; d < kSub; ++d) {
    qr[d] = active ? to_f32(q[at(b, i, g.Tq, g.C, h, D, d0 + d)]) * scale : 0.0f;
    acc[d] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  for (int64_t j0 = 0; j0 < g.Tk; j0 += kBc) {
    __syncthreads();  // the previous tile is no longer read
    load_rows<T, D>(k, ks, kBc, b, h, j0, g.Tk, g.C, kThreads);
    load_rows<T, D>(v, vs, kBc, b, h, j0, g.Tk, g.C, kThreads);
    __syncthreads();
    const int valid = g.Tk - j0 < kBc ? static_cast<int>(g.Tk - j0) : kBc;
    for (int c0 = 0; c0 < valid; c0 += kChunk) {
      float s[kChunk];
      float cmax = -INFINITY;
      DF_UNROLL for (int c = 0; c < kChunk; ++c) {
        float dot = 0.0f;
        DF_UNROLL for (int d = 0; d < kSub; ++d) dot += qr[d] * ks[(c0 + c) * kSplit + part][d];
        dot = row_sum<kSplit>(dot);
        s[c] = c0 + c < valid ? dot : -INFINITY;
        cmax = fmaxf(cmax, s[c]);
      }
      const float m_new = fmaxf(m, cmax);
      const float corr = expf(m - m_new);  // 0 on the first chunk (m = -inf)
      l *= corr;
      DF_UNROLL for (int d = 0; d < kSub; ++d) acc[d] *= corr;
      DF_UNROLL for (int c = 0; c < kChunk; ++c) {
        const float p = expf(s[c] - m_new);  // 0 for keys past Tk
        l += p;
        DF_UNROLL for (int d = 0; d < kSub; ++d) acc[d] += p * vs[(c0 + c) * kSplit + part][d];
      }
      m = m_new;
    }
  }
  if (active) {
    const float inv = 1.0f / l;
    DF_UNROLL for (int d = 0; d < kSub; ++d) out[at(b, i, g.Tq, g.C, h, D, d0 + d)] = from_f32<T>(acc[d] * inv);
    if (part == 0) lse[bh * g.Tq + i] = m + logf(l);
  }
}

// Delta_i = sum_d dO_i,d O_i,d, one thread per (b, h, i).
template <class T, int D>
__global__ void __launch_bounds__(256) attention_delta_kernel(const T* __restrict__ dout, const T* __restrict__ out,
                                                              float* __restrict__ delta, Geom g, int64_t rows) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * 256 + threadIdx.x;
  if (r >= rows) return;
  const int64_t bh = r / g.Tq, i = r - bh * g.Tq, b = bh / g.heads;
  const int h = static_cast<int>(bh - b * g.heads);
  float s = 0.0f;
  for (int d = 0; d < D; ++d) {
    const int64_t x = at(b, i, g.Tq, g.C, h, D, d);
    s += to_f32(dout[x]) * to_f32(out[x]);
  }
  delta[r] = s;
}

template <class T, int D>
__global__ void __launch_bounds__(kBk * (D / kSub)) attention_dkdv_kernel(
    const T* __restrict__ dout, const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
    const float* __restrict__ lse, const float* __restrict__ delta, T* __restrict__ dk, T* __restrict__ dv, Geom g,
    float scale) {
  constexpr int kSplit = D / kSub, kThreads = kBk * kSplit;
  DF_SHARED2(float, kown, kBk * kSplit, kPad);
  DF_SHARED2(float, vown, kBk * kSplit, kPad);
  DF_SHARED2(float, qs, kBq * kSplit, kPad);
  DF_SHARED2(float, dos, kBq * kSplit, kPad);
  DF_SHARED(float, lse_s, kBq);
  DF_SHARED(float, delta_s, kBq);
  const int64_t bh = blockIdx.y, b = bh / g.heads;
  const int h = static_cast<int>(bh - b * g.heads);
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * kBk;
  const int u = threadIdx.x, part = u % kSplit;
  load_rows<T, D>(k, kown, kBk, b, h, j0, g.Tk, g.C, kThreads);
  load_rows<T, D>(v, vown, kBk, b, h, j0, g.Tk, g.C, kThreads);
  float dk_acc[kSub], dv_acc[kSub];
  DF_UNROLL for (int d = 0; d < kSub; ++d) dk_acc[d] = 0.0f, dv_acc[d] = 0.0f;
  for (int64_t i0 = 0; i0 < g.Tq; i0 += kBq) {
    __syncthreads();  // own rows loaded (first pass); the previous Q tile no longer read
    load_rows<T, D>(q, qs, kBq, b, h, i0, g.Tq, g.C, kThreads);
    load_rows<T, D>(dout, dos, kBq, b, h, i0, g.Tq, g.C, kThreads);
    if (threadIdx.x < kBq) {
      const int64_t i = i0 + threadIdx.x;
      // A row past Tq gets lse = +inf, so its P is exactly 0 and it adds nothing.
      lse_s[threadIdx.x] = i < g.Tq ? lse[bh * g.Tq + i] : INFINITY;
      delta_s[threadIdx.x] = i < g.Tq ? delta[bh * g.Tq + i] : 0.0f;
    }
    __syncthreads();
    for (int r = 0; r < kBq; ++r) {
      float s = 0.0f, dp = 0.0f;
      DF_UNROLL for (int d = 0; d < kSub; ++d) {
        s += qs[r * kSplit + part][d] * kown[u][d];
        dp += dos[r * kSplit + part][d] * vown[u][d];
      }
      s = row_sum<kSplit>(s);
      dp = row_sum<kSplit>(dp);
      const float p = expf(s * scale - lse_s[r]);
      const float ds = p * (dp - delta_s[r]);
      DF_UNROLL for (int d = 0; d < kSub; ++d) {
        dv_acc[d] += p * dos[r * kSplit + part][d];
        dk_acc[d] += ds * qs[r * kSplit + part][d];
      }
    }
  }
  const int64_t j = j0 + u / kSplit;
  if (j < g.Tk) {
    DF_UNROLL for (int d = 0; d < kSub; ++d) {
      dk[at(b, j, g.Tk, g.C, h, D, part * kSub + d)] = from_f32<T>(dk_acc[d] * scale);
      dv[at(b, j, g.Tk, g.C, h, D, part * kSub + d)] = from_f32<T>(dv_acc[d]);
    }
  }
}

template <class T, int D>
__global__ void __launch_bounds__(kBr * (D / kSub)) attention_dq_kernel(
    const T* __restrict__ dout, const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
    const float* __restrict__ lse, const float* __restrict__ delta, T* __restrict__ dq, Geom g, float scale) {
  constexpr int kSplit = D / kSub, kThreads = kBr * kSplit;
  DF_SHARED2(float, ks, kBc * kSplit, kPad);
  DF_SHARED2(float, vs, kBc * kSplit, kPad);
  DF_SHARED2(float, doown, kBr * kSplit, kPad);  // each thread's own dO sub-row
  const int64_t bh = blockIdx.y, b = bh / g.heads;
  const int h = static_cast<int>(bh - b * g.heads);
  const int u = threadIdx.x, part = u % kSplit, d0 = part * kSub;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kBr + u / kSplit;
  const bool active = i < g.Tq;
  float qr[kSub], dq_acc[kSub];
  DF_UNROLL for (int d = 0; d < kSub; ++d) {
    qr[d] = active ? to_f32(q[at(b, i, g.Tq, g.C, h, D, d0 + d)]) : 0.0f;
    doown[u][d] = active ? to_f32(dout[at(b, i, g.Tq, g.C, h, D, d0 + d)]) : 0.0f;
    dq_acc[d] = 0.0f;
  }
  const float l_i = active ? lse[bh * g.Tq + i] : INFINITY;
  const float delta_i = active ? delta[bh * g.Tq + i] : 0.0f;
  for (int64_t j0 = 0; j0 < g.Tk; j0 += kBc) {
    __syncthreads();
    load_rows<T, D>(k, ks, kBc, b, h, j0, g.Tk, g.C, kThreads);
    load_rows<T, D>(v, vs, kBc, b, h, j0, g.Tk, g.C, kThreads);
    __syncthreads();
    const int valid = g.Tk - j0 < kBc ? static_cast<int>(g.Tk - j0) : kBc;
    for (int c = 0; c < valid; ++c) {
      float s = 0.0f, dp = 0.0f;
      DF_UNROLL for (int d = 0; d < kSub; ++d) {
        s += qr[d] * ks[c * kSplit + part][d];
        dp += doown[u][d] * vs[c * kSplit + part][d];
      }
      s = row_sum<kSplit>(s);
      dp = row_sum<kSplit>(dp);
      const float p = expf(s * scale - l_i);
      const float ds = p * (dp - delta_i);
      DF_UNROLL for (int d = 0; d < kSub; ++d) dq_acc[d] += ds * ks[c * kSplit + part][d];
    }
  }
  if (active) {
    DF_UNROLL for (int d = 0; d < kSub; ++d) dq[at(b, i, g.Tq, g.C, h, D, d0 + d)] = from_f32<T>(dq_acc[d] * scale);
  }
}

void check_geometry(const char* op, DType dtype, int64_t B, int64_t Tq, int64_t Tk, int heads, int D) {
  DF_CHECK(B > 0 && Tq > 0 && Tk > 0 && heads > 0, op, ": empty input (B=", B, ", Tq=", Tq, ", Tk=", Tk,
           ", heads=", heads, ")");
  DF_CHECK(D == 32 || D == 64, op, ": head dim ", D, " (the kernels have 32 and 64)");
  DF_CHECK(dtype == DType::f32 || dtype == DType::bf16, op, ": dtype ", dtype_name(dtype), " (expected f32 or bf16)");
  DF_CHECK(B * heads <= 65535, op, ": B * heads = ", B * heads, " over the grid's y limit");
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <class T, int D>
void forward_t(const void* q, const void* k, const void* v, void* out, float* lse, int64_t B, int64_t Tq, int64_t Tk,
               int heads, void* stream) {
  const Geom g{Tq, Tk, static_cast<int64_t>(heads) * D, heads};
  const float scale = 1.0f / sqrtf(static_cast<float>(D));
  DF_LAUNCH((attention_forward_kernel<T, D>),
            dim3(static_cast<unsigned>(ceil_div(Tq, kBr)), static_cast<unsigned>(B * heads)), dim3(kBr * (D / kSub)), 0,
            stream, static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), static_cast<T*>(out), lse,
            g, scale);
}

template <class T, int D>
void backward_t(const void* dout, const void* q, const void* k, const void* v, const void* out, const float* lse,
                void* dq, void* dk, void* dv, int64_t B, int64_t Tq, int64_t Tk, int heads, float* delta,
                void* stream) {
  const Geom g{Tq, Tk, static_cast<int64_t>(heads) * D, heads};
  const float scale = 1.0f / sqrtf(static_cast<float>(D));
  const int64_t rows = B * heads * Tq;
  const T* dot = static_cast<const T*>(dout);
  const T *qt = static_cast<const T*>(q), *kt = static_cast<const T*>(k), *vt = static_cast<const T*>(v);
  DF_LAUNCH((attention_delta_kernel<T, D>), dim3(static_cast<unsigned>(ceil_div(rows, 256))), dim3(256), 0, stream, dot,
            static_cast<const T*>(out), delta, g, rows);
  DF_LAUNCH((attention_dkdv_kernel<T, D>),
            dim3(static_cast<unsigned>(ceil_div(Tk, kBk)), static_cast<unsigned>(B * heads)), dim3(kBk * (D / kSub)), 0,
            stream,
            dot, qt, kt, vt, lse, static_cast<const float*>(delta), static_cast<T*>(dk), static_cast<T*>(dv), g, scale);
  DF_LAUNCH((attention_dq_kernel<T, D>),
            dim3(static_cast<unsigned>(ceil_div(Tq, kBr)), static_cast<unsigned>(B * heads)), dim3(kBr * (D / kSub)), 0,
            stream, dot, qt, kt, vt, lse, static_cast<const float*>(delta), static_cast<T*>(dq), g, scale);
}

}  // namespace

bool attention_supports_head_dim(int D) { return D == 32 || D == 64; }

void attention_forward(const void* q, const void* k, const void* v, void* out, float* lse, DType dtype, int64_t B,
                       int64_t Tq, int64_t Tk, int heads, int D, void* stream) {
  check_geometry("attention_forward", dtype, B, Tq, Tk, heads, D);
  DF_CHECK(q && k && v && out && lse, "attention_forward: null pointer");
  if (dtype == DType::f32) {
    if (D == 32) return forward_t<float, 32>(q, k, v, out, lse, B, Tq, Tk, heads, stream);
    return forward_t<float, 64>(q, k, v, out, lse, B, Tq, Tk, heads, stream);
  }
  if (D == 32) return forward_t<__nv_bfloat16, 32>(q, k, v, out, lse, B, Tq, Tk, heads, stream);
  return forward_t<__nv_bfloat16, 64>(q, k, v, out, lse, B, Tq, Tk, heads, stream);
}

std::size_t attention_backward_workspace_bytes(int64_t B, int64_t Tq, int heads) {
  return static_cast<std::size_t>(B * heads * Tq) * sizeof(float);
}

void attention_backward(const void* dout, const void* q, const void* k, const void* v, const void* out,
                        const float* lse, void* dq, void* dk, void* dv, DType dtype, int64_t B, int64_t Tq, int64_t Tk,
                        int heads, int D, void* workspace, void* stream) {
  check_geometry("attention_backward", dtype, B, Tq, Tk, heads, D);
  DF_CHECK(dout && q && k && v && out && lse && dq && dk && dv && workspace, "attention_backward: null pointer");
  float* delta = static_cast<float*>(workspace);
  if (dtype == DType::f32) {
    if (D == 32) return backward_t<float, 32>(dout, q, k, v, out, lse, dq, dk, dv, B, Tq, Tk, heads, delta, stream);
    return backward_t<float, 64>(dout, q, k, v, out, lse, dq, dk, dv, B, Tq, Tk, heads, delta, stream);
  }
  if (D == 32)
    return backward_t<__nv_bfloat16, 32>(dout, q, k, v, out, lse, dq, dk, dv, B, Tq, Tk, heads, delta, stream);
  return backward_t<__nv_bfloat16, 64>(dout, q, k, v, out, lse, dq, dk, dv, B, Tq, Tk, heads, delta, stream);
}

}  // namespace diffuse::DF_BACKEND

// ---- The Tensor-level op on a GPU -----------------------------------------------------------------
// the Tensor-level attention over the flash kernels of
// kernels/cuda/attention.cu and attention_tc.cu (head dims 32 and 64), or materialised with
// cuBLASLt for other head dims. Checks what the launchers cannot, allocates outputs and workspaces
// from the caching allocator and launches on the current stream; nothing here waits for the device.
#if DF_DEVICE_BUILD

namespace diffuse::cuda {

using namespace args;
using kernels::AttentionResult;
using kernels::AttentionGrads;

namespace {

struct AttnGeom {
  int64_t B, Tq, Tk, C;
  int heads, D;
};

AttnGeom attention_geometry(const Tensor& q, const Tensor& k, const Tensor& v, int heads, const char* what) {
  check_act(q, what);
  check_like(k, q, what);
  check_like(v, q, what);
  DF_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3 && k.shape() == v.shape() && q.size(0) == k.size(0) &&
               q.size(2) == k.size(2),
           what, ": q (B,Tq,C), k and v (B,Tk,C), got ", q.str(), ", ", k.str(), ", ", v.str());
  DF_CHECK(heads > 0 && q.size(2) % heads == 0, what, ": C = ", q.size(2), " is not divisible by heads = ", heads);
  return {q.size(0), q.size(1), k.size(1), q.size(2), heads, static_cast<int>(q.size(2) / heads)};
}

// Row-major per-(b, h) GEMM over the interleaved heads: operand h of sample b starts at
// base + b * batch_stride + h * head_offset.
GemmOperand head_operand(const Tensor& t, int h, int64_t head_offset, int64_t ld, int64_t batch_stride, bool trans) {
  GemmOperand o;
  o.ptr = static_cast<const char*>(t.raw()) + static_cast<size_t>(h * head_offset) * dtype_size(t.dtype());
  o.ld = ld;
  o.stride = batch_stride;
  o.trans = trans;
  return o;
}

void* head_ptr(Tensor& t, int h, int64_t head_offset) {
  return static_cast<char*>(t.raw()) + static_cast<size_t>(h * head_offset) * dtype_size(t.dtype());
}

}  // namespace

AttentionResult attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, int heads) {
  const AttnGeom g = attention_geometry(q, k, v, heads, "attention");
  set_current_device(q.device());
  AttentionResult r;
  r.out = Tensor::empty(q.shape(), q.dtype(), q.device());
  if (cuda::attention_supports_head_dim(g.D)) {
    r.saved = Tensor::empty({g.B, g.heads, g.Tq}, DType::f32, q.device());
    // bf16 on sm_80+: the tensor-core kernels; f32, older GPUs or unaligned views: the SIMT ones.
    if (cuda::attention_tc_supported(q.dtype(), g.D, {q.raw(), k.raw(), v.raw(), r.out.raw()}))
      cuda::attention_tc_forward(q.raw(), k.raw(), v.raw(), r.out.raw(), r.saved.data<float>(), g.B, g.Tq, g.Tk,
                                 g.heads, g.D, current_stream());
    else
      cuda::attention_forward(q.raw(), k.raw(), v.raw(), r.out.raw(), r.saved.data<float>(), q.dtype(), g.B, g.Tq,
                              g.Tk, g.heads, g.D, current_stream());
    return r;
  }
  // Materialised: S = scale Q_h K_h^T in f32 (B, heads, Tq, Tk), P = softmax(S) (kept in q's dtype
  // for backward), O_h = P_h V_h. One strided-batched GEMM over b per head and product.
  const float scale = 1.0f / std::sqrt(static_cast<float>(g.D));
  const int64_t TT = g.Tq * g.Tk;
  Tensor s = Tensor::empty({g.B, g.heads, g.Tq, g.Tk}, DType::f32, q.device());
  for (int h = 0; h < g.heads; ++h)
    gemm(q.dtype(), DType::f32, g.Tq, g.Tk, g.D, scale, head_operand(q, h, g.D, g.C, g.Tq * g.C, false),
         head_operand(k, h, g.D, g.C, g.Tk * g.C, true), 0.f, head_ptr(s, h, TT), g.Tk, g.heads * TT, g.B);
  Tensor p32 = softmax_last_forward(s);
  r.saved = p32.to(q.dtype());
  for (int h = 0; h < g.heads; ++h)
    gemm(q.dtype(), q.dtype(), g.Tq, g.D, g.Tk, 1.f, head_operand(r.saved, h, TT, g.Tk, g.heads * TT, false),
         head_operand(v, h, g.D, g.C, g.Tk * g.C, false), 0.f, head_ptr(r.out, h, g.D), g.C, g.Tq * g.C, g.B);
  return r;
}

AttentionGrads attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                                  const AttentionResult& fwd, int heads) {
  const AttnGeom g = attention_geometry(q, k, v, heads, "attention backward");
  check_like(dout, q, "attention backward");
  DF_CHECK(dout.shape() == q.shape(), "attention backward: dout ", dout.str(), " for q ", q.str());
  set_current_device(q.device());
  AttentionGrads r{Tensor::empty(q.shape(), q.dtype(), q.device()), Tensor::empty(k.shape(), k.dtype(), k.device()),
                   Tensor::empty(v.shape(), v.dtype(), v.device())};
  const Tensor& saved = fwd.saved;
  if (saved.dim() == 3) {  // the flash kernels' row log-sum-exp
    DF_CHECK(cuda::attention_supports_head_dim(g.D) && fwd.out.defined() && fwd.out.shape() == q.shape(),
             "attention backward: the forward's output is needed with its log-sum-exp");
    Tensor ws = workspace(cuda::attention_backward_workspace_bytes(g.B, g.Tq, g.heads), q.device());
    if (cuda::attention_tc_supported(q.dtype(), g.D,
                                     {dout.raw(), q.raw(), k.raw(), v.raw(), fwd.out.raw(), r.dq.raw(), r.dk.raw(),
                                      r.dv.raw()}))
      cuda::attention_tc_backward(dout.raw(), q.raw(), k.raw(), v.raw(), fwd.out.raw(), saved.data<float>(),
                                  r.dq.raw(), r.dk.raw(), r.dv.raw(), g.B, g.Tq, g.Tk, g.heads, g.D, ws.raw(),
                                  current_stream());
    else
      cuda::attention_backward(dout.raw(), q.raw(), k.raw(), v.raw(), fwd.out.raw(), saved.data<float>(), r.dq.raw(),
                               r.dk.raw(), r.dv.raw(), q.dtype(), g.B, g.Tq, g.Tk, g.heads, g.D, ws.raw(),
                               current_stream());
    return r;
  }
  DF_CHECK(saved.dim() == 4 && saved.shape() == Shape({g.B, g.heads, g.Tq, g.Tk}),
           "attention backward: saved state ", saved.str(), " is neither P nor the log-sum-exp");
  // dV = P^T dO, dP = dO V^T (f32), dS = P * (dP - rowsum(dP * P)), dQ = scale dS K, dK = scale dS^T Q.
  const float scale = 1.0f / std::sqrt(static_cast<float>(g.D));
  const int64_t TT = g.Tq * g.Tk;
  const Tensor P = saved.to(q.dtype());
  Tensor dp = Tensor::empty({g.B, g.heads, g.Tq, g.Tk}, DType::f32, q.device());
  for (int h = 0; h < g.heads; ++h) {
    gemm(q.dtype(), q.dtype(), g.Tk, g.D, g.Tq, 1.f, head_operand(P, h, TT, g.Tk, g.heads * TT, true),
         head_operand(dout, h, g.D, g.C, g.Tq * g.C, false), 0.f, head_ptr(r.dv, h, g.D), g.C, g.Tk * g.C, g.B);
    gemm(q.dtype(), DType::f32, g.Tq, g.Tk, g.D, 1.f, head_operand(dout, h, g.D, g.C, g.Tq * g.C, false),
         head_operand(v, h, g.D, g.C, g.Tk * g.C, true), 0.f, head_ptr(dp, h, TT), g.Tk, g.heads * TT, g.B);
  }
  const Tensor ds = softmax_last_backward(dp, P.to(DType::f32)).to(q.dtype());
  for (int h = 0; h < g.heads; ++h) {
    gemm(q.dtype(), q.dtype(), g.Tq, g.D, g.Tk, scale, head_operand(ds, h, TT, g.Tk, g.heads * TT, false),
         head_operand(k, h, g.D, g.C, g.Tk * g.C, false), 0.f, head_ptr(r.dq, h, g.D), g.C, g.Tq * g.C, g.B);
    gemm(q.dtype(), q.dtype(), g.Tk, g.D, g.Tq, scale, head_operand(ds, h, TT, g.Tk, g.heads * TT, true),
         head_operand(q, h, g.D, g.C, g.Tq * g.C, false), 0.f, head_ptr(r.dk, h, g.D), g.C, g.Tk * g.C, g.B);
  }
  return r;
}

}  // namespace diffuse::cuda

#endif  // DF_DEVICE_BUILD
