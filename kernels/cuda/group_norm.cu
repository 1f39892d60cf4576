// kernels/cuda/group_norm.cu: GroupNorm with AdaGN scale/shift and fused SiLU on channels-last
// tensors, forward and backward. Launchers in kernels/group_norm.h; math in
// kernels/group_norm.h; the reference is kernels/group_norm.cpp.
//
// Layout: x[b, n, c] at (b*N + n)*C + c; group g holds channels [g*Cg, (g+1)*Cg) at every
// position n, so a group is N strided runs of Cg contiguous channels.
//
// Forward, two paths:
//   fused   one block per (b, g) loads the group into shared memory (as f32), computes the mean and
//           then the centred sum of squares from there (the reference's two-pass variance), and
//           writes y: x is read from DRAM once. Taken when the group fits (<= 46 KiB, so several
//           blocks stay resident per SM) and B*G alone gives enough blocks to fill the GPU.
//   split   at small batch B*G blocks would leave most SMs idle (B = 1, G = 32: 32 blocks on 132
//           SMs), so each (b, g) is split over S blocks. Each block reduces its share to Welford's
//           (count, mean, M2); a second kernel combines the S partials in a fixed order (Chan et
//           al.'s pairwise update, stable where sum/sum-of-squares would cancel); a third applies
//           the normalisation elementwise. Deterministic: no atomics.
// Backward: every reduction it needs follows from per-(b, c) sums over positions,
//   U[b,c] = sum_n u,  V[b,c] = sum_n u * xhat,   u = dy * act'(z)
// (dshift = U, dscale = gamma V + beta U, dgamma = sum_b (1+s) V, dbeta = sum_b (1+s) U, and the
// group means of dxhat and dxhat*xhat are sums over the group's channels of (1+s) gamma U and V).
// So one column-reduction kernel (32 channels x 8 position rows per block, coalesced, split over
// positions for small batch) computes partial U, V; tiny kernels finish them; a last elementwise
// kernel writes dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)). Statistics and all sums
// are f32; activations are f32 or bf16.
#include "kernels/cuda/portable.cuh"

#include <algorithm>
#include <cmath>

#include "core/check.h"
#include "core/stream.h"
#include "kernels/cuda/common.cuh"
#include "kernels/group_norm.h"
#include "kernels/cuda/tensor_args.h"

namespace diffuse::DF_BACKEND {

namespace {

using detail::from_f32;
using detail::to_f32;
using kernels::GroupNormLaunch;

constexpr int kBlock = 256;
constexpr int kWarps = kBlock / 32;
constexpr int64_t kTargetBlocks = 512;     // ~4 per SM on an H100: enough to fill it
constexpr int64_t kMaxSplits = 64;
constexpr int64_t kMinSplitElems = 1024;   // forward: elements per split block, at least
constexpr int64_t kMinSplitRows = 64;      // backward: positions per split block, at least
constexpr int64_t kFusedMaxElems = 11776;  // 46 KiB of f32: under the 48 KiB a launch gets without opt-in

struct Params {
  const float *gamma, *beta, *scale, *shift;
};

DF_DEVICE_INLINE float sigmoid_f(float z) { return 1.0f / (1.0f + expf(-z)); }

// z = (xhat * gamma + beta) * (1 + scale) + shift, the reference's order.
DF_DEVICE_INLINE float affine(float xhat, const Params& p, int64_t b, int64_t c, int64_t C) {
  float h = xhat * (p.gamma ? p.gamma[c] : 1.0f) + (p.beta ? p.beta[c] : 0.0f);
  if (p.scale) h *= 1.0f + p.scale[b * C + c];
  if (p.shift) h += p.shift[b * C + c];
  return h;
}

// ---- Welford partials ------------------------------------------------------------------------
struct Welford {
  float n, mean, m2;
};

DF_DEVICE_INLINE Welford welford_combine(Welford a, Welford b) {
  const float n = a.n + b.n;
  if (n == 0.0f) return a;
  const float d = b.mean - a.mean, fb = b.n / n;
  return {n, a.mean + d * fb, a.m2 + b.m2 + d * d * a.n * fb};
}

DF_DEVICE_INLINE Welford block_welford(Welford v, Welford* scratch) {
  for (int off = 16; off > 0; off /= 2) {
    Welford o{__shfl_xor_sync(0xffffffffu, v.n, off), __shfl_xor_sync(0xffffffffu, v.mean, off),
              __shfl_xor_sync(0xffffffffu, v.m2, off)};
    v = welford_combine(v, o);
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  Welford t = lane < kWarps ? scratch[lane] : Welford{0.0f, 0.0f, 0.0f};
  for (int off = 16; off > 0; off /= 2) {
    Welford o{__shfl_xor_sync(0xffffffffu, t.n, off), __shfl_xor_sync(0xffffffffu, t.mean, off),
              __shfl_xor_sync(0xffffffffu, t.m2, off)};
    t = welford_combine(t, o);
  }
  __syncthreads();
  return t;
}

// Element e of group (b, g), counting positions from n0: the flat index into x. The division is
// 32-bit (a group has < 2^32 elements, checked at the launcher): a 64-bit one is a called
// subroutine on the GPU, slow and, in these kernels, the cause of register spills.
DF_DEVICE_INLINE int64_t group_index(int64_t e, int64_t b, int64_t n0, int64_t N, int64_t C, int64_t g, int64_t Cg) {
  const uint32_t q = static_cast<uint32_t>(e) / static_cast<uint32_t>(Cg);
  const int64_t n = n0 + q, j = e - static_cast<int64_t>(q) * Cg;
  return (b * N + n) * C + g * Cg + j;
}

// ---- forward, fused --------------------------------------------------------------------------
template <class T>
__global__ void __launch_bounds__(kBlock) group_norm_fused_kernel(const T* __restrict__ x, T* __restrict__ y,
                                                                  Params p, float* __restrict__ mean_out,
                                                                  float* __restrict__ rstd_out, int64_t N,
                                                                  int64_t C, int G, float eps, bool silu) {
  DF_SHARED(float, scratch, kWarps);
  float* tile = DF_DYNAMIC_SHARED(float);
  const int64_t bg = blockIdx.x, b = bg / G, g = bg - b * G, Cg = C / G, count = N * Cg;
  float sum = 0.0f;
  for (int64_t e = threadIdx.x; e < count; e += kBlock) {
    const float v = to_f32(x[group_index(e, b, 0, N, C, g, Cg)]);
    tile[e] = v;
    sum += v;
  }
  const float mu = detail::block_sum<kBlock>(sum, scratch) / static_cast<float>(count);
  float ss = 0.0f;
  for (int64_t e = threadIdx.x; e < count; e += kBlock) {
    const float d = tile[e] - mu;
    ss += d * d;
  }
  const float rs = 1.0f / sqrtf(detail::block_sum<kBlock>(ss, scratch) / static_cast<float>(count) + eps);
  if (threadIdx.x == 0) mean_out[bg] = mu, rstd_out[bg] = rs;
  for (int64_t e = threadIdx.x; e < count; e += kBlock) {
    const int64_t i = group_index(e, b, 0, N, C, g, Cg);
    float z = affine((tile[e] - mu) * rs, p, b, i % C, C);
    if (silu) z *= sigmoid_f(z);
    y[i] = from_f32<T>(z);
  }
}

// ---- forward, split --------------------------------------------------------------------------
template <class T>
__global__ void __launch_bounds__(kBlock) group_norm_stats_kernel(const T* __restrict__ x, float* __restrict__ part,
                                                                  int64_t N, int64_t C, int G, int64_t chunk) {
  DF_SHARED(Welford, scratch, kWarps);
  const int64_t s = blockIdx.x, S = gridDim.x, bg = blockIdx.y, b = bg / G, g = bg - b * G, Cg = C / G;
  const int64_t n0 = s * chunk, n1 = n0 + chunk < N ? n0 + chunk : N;
  const int64_t count = (n1 > n0 ? n1 - n0 : 0) * Cg;
  Welford w{0.0f, 0.0f, 0.0f};
  for (int64_t e = threadIdx.x; e < count; e += kBlock) {
    const float v = to_f32(x[group_index(e, b, n0, N, C, g, Cg)]);
    w.n += 1.0f;
    const float d = v - w.mean;
    w.mean += d / w.n;
    w.m2 += d * (v - w.mean);
  }
  w = block_welford(w, scratch);
  if (threadIdx.x == 0) {
    float* o = part + (bg * S + s) * 3;
    o[0] = w.n, o[1] = w.mean, o[2] = w.m2;
  }
}

__global__ void __launch_bounds__(kBlock) group_norm_finalize_kernel(const float* __restrict__ part, int64_t BG,
                                                                     int S, float eps, float* __restrict__ mean,
                                                                     float* __restrict__ rstd) {
  const int64_t bg = static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x;
  if (bg >= BG) return;
  Welford w{0.0f, 0.0f, 0.0f};
  for (int s = 0; s < S; ++s) {
    const float* q = part + (bg * S + s) * 3;
    w = welford_combine(w, Welford{q[0], q[1], q[2]});
  }
  mean[bg] = w.mean;
  rstd[bg] = 1.0f / sqrtf(w.m2 / w.n + eps);
}

template <class T>
__global__ void __launch_bounds__(kBlock) group_norm_apply_kernel(const T* __restrict__ x, T* __restrict__ y,
                                                                  Params p, const float* __restrict__ mean,
                                                                  const float* __restrict__ rstd, int64_t total,
                                                                  int64_t N, int64_t C, int G, bool silu) {
  const int64_t Cg = C / G, NC = N * C;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int64_t b = i / NC, c = i % C, bg = b * G + c / Cg;
    float z = affine((to_f32(x[i]) - mean[bg]) * rstd[bg], p, b, c, C);
    if (silu) z *= sigmoid_f(z);
    y[i] = from_f32<T>(z);
  }
}

// ---- backward --------------------------------------------------------------------------------
// The gradient of z (the pre-activation), and xhat, at element i of channel c in sample b.
DF_DEVICE_INLINE void grad_z(float xv, float dyv, float mu, float rs, const Params& p, int64_t b, int64_t c, int64_t C,
                             bool silu, float& u, float& xhat) {
  xhat = (xv - mu) * rs;
  u = dyv;
  if (silu) {
    const float z = affine(xhat, p, b, c, C);
    const float sg = sigmoid_f(z);
    u *= sg * (1.0f + z * (1.0f - sg));
  }
}

constexpr int kColBlock = 32;  // channels per block: one warp row reads 128 contiguous bytes
constexpr int kRowBlock = kBlock / kColBlock;

// Partial U, V over positions [s*chunk, (s+1)*chunk) for 32 channels of sample b.
template <class T>
__global__ void __launch_bounds__(kBlock) group_norm_colsum_kernel(const T* __restrict__ dy, const T* __restrict__ x,
                                                                   Params p, const float* __restrict__ mean,
                                                                   const float* __restrict__ rstd,
                                                                   float* __restrict__ part, int64_t N, int64_t C,
                                                                   int G, int64_t chunk, bool silu) {
  DF_SHARED2(float, su, kRowBlock, kColBlock);
  DF_SHARED2(float, sv, kRowBlock, kColBlock);
  const int tx = threadIdx.x % kColBlock, ty = threadIdx.x / kColBlock;
  const int64_t s = blockIdx.x, S = gridDim.x, b = blockIdx.y;
  const int64_t c = static_cast<int64_t>(blockIdx.z) * kColBlock + tx;
  const int64_t n0 = s * chunk, n1 = n0 + chunk < N ? n0 + chunk : N;
  float U = 0.0f, V = 0.0f;
  if (c < C) {
    const int64_t bg = b * G + c / (C / G);
    const float mu = mean[bg], rs = rstd[bg];
    for (int64_t n = n0 + ty; n < n1; n += kRowBlock) {
      const int64_t i = (b * N + n) * C + c;
      float u, xhat;
      grad_z(to_f32(x[i]), to_f32(dy[i]), mu, rs, p, b, c, C, silu, u, xhat);
      U += u;
      V += u * xhat;
    }
  }
  su[ty][tx] = U;
  sv[ty][tx] = V;
  __syncthreads();
  if (ty == 0 && c < C) {
    for (int r = 1; r < kRowBlock; ++r) U += su[r][tx], V += sv[r][tx];
    float* o = part + ((b * S + s) * C + c) * 2;
    o[0] = U, o[1] = V;
  }
}

// Per (b, c): U, V from the S partials (fixed order); dshift and dscale.
__global__ void __launch_bounds__(kBlock) group_norm_uv_kernel(const float* __restrict__ part, int S, int64_t B,
                                                               int64_t C, Params p, float* __restrict__ uv,
                                                               float* __restrict__ dscale,
                                                               float* __restrict__ dshift) {
  const int64_t k = static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x;
  if (k >= B * C) return;
  const int64_t b = k / C, c = k - b * C;
  float U = 0.0f, V = 0.0f;
  for (int s = 0; s < S; ++s) {
    const float* q = part + ((b * S + s) * C + c) * 2;
    U += q[0], V += q[1];
  }
  uv[2 * k] = U, uv[2 * k + 1] = V;
  if (dshift) dshift[k] = U;
  if (dscale) dscale[k] = (p.gamma ? p.gamma[c] : 1.0f) * V + (p.beta ? p.beta[c] : 0.0f) * U;
}

// Threads [0, B*G): the group means m1 = mean(dxhat), m2 = mean(dxhat * xhat) of (b, g).
// Threads [B*G, B*G + C): dgamma[c] and dbeta[c], summed over the batch.
__global__ void __launch_bounds__(kBlock) group_norm_reduce_kernel(const float* __restrict__ uv, int64_t B, int64_t N,
                                                                   int64_t C, int G, Params p,
                                                                   float* __restrict__ m12, float* __restrict__ dgamma,
                                                                   float* __restrict__ dbeta) {
  const int64_t k = static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x;
  const int64_t BG = B * G, Cg = C / G;
  if (k < BG) {
    const int64_t b = k / G, g = k - b * G;
    float m1 = 0.0f, m2 = 0.0f;
    for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) {
      const float f = (p.scale ? 1.0f + p.scale[b * C + c] : 1.0f) * (p.gamma ? p.gamma[c] : 1.0f);
      m1 += f * uv[2 * (b * C + c)];
      m2 += f * uv[2 * (b * C + c) + 1];
    }
    const float inv = 1.0f / static_cast<float>(N * Cg);
    m12[2 * k] = m1 * inv, m12[2 * k + 1] = m2 * inv;
  } else if (k < BG + C) {
    const int64_t c = k - BG;
    float dg = 0.0f, db = 0.0f;
    for (int64_t b = 0; b < B; ++b) {
      const float s1 = p.scale ? 1.0f + p.scale[b * C + c] : 1.0f;
      dg += s1 * uv[2 * (b * C + c) + 1];
      db += s1 * uv[2 * (b * C + c)];
    }
    if (dgamma) dgamma[c] = dg;
    if (dbeta) dbeta[c] = db;
  }
}

template <class T>
__global__ void __launch_bounds__(kBlock) group_norm_dx_kernel(const T* __restrict__ dy, const T* __restrict__ x,
                                                               T* __restrict__ dx, Params p,
                                                               const float* __restrict__ mean,
                                                               const float* __restrict__ rstd,
                                                               const float* __restrict__ m12, int64_t total, int64_t N,
                                                               int64_t C, int G, bool silu) {
  const int64_t Cg = C / G, NC = N * C;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int64_t b = i / NC, c = i % C, bg = b * G + c / Cg;
    const float rs = rstd[bg];
    float u, xhat;
    grad_z(to_f32(x[i]), to_f32(dy[i]), mean[bg], rs, p, b, c, C, silu, u, xhat);
    const float dxhat = u * (p.scale ? 1.0f + p.scale[b * C + c] : 1.0f) * (p.gamma ? p.gamma[c] : 1.0f);
    dx[i] = from_f32<T>(rs * (dxhat - m12[2 * bg] - xhat * m12[2 * bg + 1]));
  }
}

// ---- sizing ----------------------------------------------------------------------------------
int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
int64_t clamp64(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

int64_t forward_splits(int64_t B, int64_t N, int64_t C, int G, const GroupNormLaunch& how) {
  if (how.splits > 0) return clamp64(how.splits, 1, N);
  const int64_t want = ceil_div(kTargetBlocks, B * G);
  return clamp64(want, 1, clamp64(ceil_div(N * (C / G), kMinSplitElems), 1, kMaxSplits));
}
bool use_fused(int64_t B, int64_t N, int64_t C, int G, const GroupNormLaunch& how) {
  return how.allow_fused && forward_splits(B, N, C, G, how) == 1 && N * (C / G) <= kFusedMaxElems;
}
int64_t backward_splits(int64_t B, int64_t N, int64_t C, const GroupNormLaunch& how) {
  if (how.splits > 0) return clamp64(how.splits, 1, N);
  const int64_t want = ceil_div(kTargetBlocks, B * ceil_div(C, kColBlock));
  return clamp64(want, 1, clamp64(ceil_div(N, kMinSplitRows), 1, kMaxSplits));
}

void check_dims(const char* op, DType dtype, int64_t B, int64_t N, int64_t C, int G) {
  DF_CHECK(B > 0 && N > 0 && C > 0, op, ": empty input (B=", B, ", N=", N, ", C=", C, ")");
  DF_CHECK(G > 0 && C % G == 0, op, ": C=", C, " not divisible by groups=", G);
  DF_CHECK(dtype == DType::f32 || dtype == DType::bf16, op, ": dtype ", dtype_name(dtype), " (expected f32 or bf16)");
  DF_CHECK(B * G <= 0x7fffffffLL * kBlock, op, ": too many groups");
  DF_CHECK(N * (C / G) < (int64_t{1} << 32), op, ": a group of ", N * (C / G), " elements (at most 2^32 - 1)");
}

template <class T>
void forward_t(const void* xv, void* yv, const Params& p, float* mean, float* rstd, int64_t B, int64_t N, int64_t C,
               int G, float eps, bool silu, float* ws, void* stream, const GroupNormLaunch& how) {
  const T* x = static_cast<const T*>(xv);
  T* y = static_cast<T*>(yv);
  const int64_t BG = B * G;
  if (use_fused(B, N, C, G, how)) {
    const std::size_t smem = static_cast<std::size_t>(N * (C / G)) * sizeof(float);
    DF_LAUNCH(group_norm_fused_kernel<T>, dim3(static_cast<unsigned>(BG)), dim3(kBlock), smem, stream, x, y, p, mean,
              rstd, N, C, G, eps, silu);
    return;
  }
  const int64_t S = forward_splits(B, N, C, G, how), chunk = ceil_div(N, S);
  DF_CHECK(BG <= 65535, "group_norm_forward: B*G=", BG, " over the grid's y limit");
  DF_LAUNCH(group_norm_stats_kernel<T>, dim3(static_cast<unsigned>(S), static_cast<unsigned>(BG)), dim3(kBlock), 0,
            stream, x, ws, N, C, G, chunk);
  DF_LAUNCH(group_norm_finalize_kernel, dim3(static_cast<unsigned>(ceil_div(BG, kBlock))), dim3(kBlock), 0, stream,
            static_cast<const float*>(ws), BG, static_cast<int>(S), eps, mean, rstd);
  const int64_t total = B * N * C;
  DF_LAUNCH(group_norm_apply_kernel<T>, dim3(detail::grid_for(total, kBlock)), dim3(kBlock), 0, stream, x, y, p,
            static_cast<const float*>(mean), static_cast<const float*>(rstd), total, N, C, G, silu);
}

template <class T>
void backward_t(const void* dyv, const void* xv, void* dxv, const float* mean, const float* rstd, const Params& p,
                float* dgamma, float* dbeta, float* dscale, float* dshift, int64_t B, int64_t N, int64_t C, int G,
                bool silu, float* ws, void* stream, const GroupNormLaunch& how) {
  const T* dy = static_cast<const T*>(dyv);
  const T* x = static_cast<const T*>(xv);
  const int64_t S = backward_splits(B, N, C, how), chunk = ceil_div(N, S);
  float* part = ws;                   // (B, S, C, 2)
  float* uv = part + B * S * C * 2;   // (B, C, 2)
  float* m12 = uv + B * C * 2;        // (B, G, 2)
  DF_CHECK(B <= 65535 && ceil_div(C, kColBlock) <= 65535, "group_norm_backward: B=", B, ", C=", C, " over grid limits");
  DF_LAUNCH(group_norm_colsum_kernel<T>,
            dim3(static_cast<unsigned>(S), static_cast<unsigned>(B), static_cast<unsigned>(ceil_div(C, kColBlock))),
            dim3(kBlock), 0, stream, dy, x, p, mean, rstd, part, N, C, G, chunk, silu);
  DF_LAUNCH(group_norm_uv_kernel, dim3(static_cast<unsigned>(ceil_div(B * C, kBlock))), dim3(kBlock), 0, stream,
            static_cast<const float*>(part), static_cast<int>(S), B, C, p, uv, dscale, dshift);
  DF_LAUNCH(group_norm_reduce_kernel, dim3(static_cast<unsigned>(ceil_div(B * G + C, kBlock))), dim3(kBlock), 0,
            stream, static_cast<const float*>(uv), B, N, C, G, p, m12, dgamma, dbeta);
  if (dxv) {
    const int64_t total = B * N * C;
    DF_LAUNCH(group_norm_dx_kernel<T>, dim3(detail::grid_for(total, kBlock)), dim3(kBlock), 0, stream, dy, x,
              static_cast<T*>(dxv), p, mean, rstd, static_cast<const float*>(m12), total, N, C, G, silu);
  }
}

}  // namespace

std::size_t group_norm_workspace_bytes(int64_t B, int64_t N, int64_t C, int G, const GroupNormLaunch& how) {
  const int64_t fwd = B * G * forward_splits(B, N, C, G, how) * 3;
  const int64_t bwd = B * backward_splits(B, N, C, how) * C * 2 + B * C * 2 + B * G * 2;
  return static_cast<std::size_t>(fwd > bwd ? fwd : bwd) * sizeof(float);
}

void group_norm_forward(const void* x, void* y, DType dtype, const float* gamma, const float* beta, const float* scale,
                        const float* shift, float* mean, float* rstd, int64_t B, int64_t N, int64_t C, int G,
                        float eps, bool silu, void* workspace, void* stream, const GroupNormLaunch& how) {
  check_dims("group_norm_forward", dtype, B, N, C, G);
  DF_CHECK(x && y && mean && rstd && workspace, "group_norm_forward: null pointer");
  const Params p{gamma, beta, scale, shift};
  float* ws = static_cast<float*>(workspace);
  if (dtype == DType::f32)
    return forward_t<float>(x, y, p, mean, rstd, B, N, C, G, eps, silu, ws, stream, how);
  return forward_t<__nv_bfloat16>(x, y, p, mean, rstd, B, N, C, G, eps, silu, ws, stream, how);
}

void group_norm_backward(const void* dy, const void* x, void* dx, DType dtype, const float* mean, const float* rstd,
                         const float* gamma, const float* beta, const float* scale, const float* shift, float* dgamma,
                         float* dbeta, float* dscale, float* dshift, int64_t B, int64_t N, int64_t C, int G, bool silu,
                         void* workspace, void* stream, const GroupNormLaunch& how) {
  check_dims("group_norm_backward", dtype, B, N, C, G);
  DF_CHECK(dy && x && mean && rstd && workspace, "group_norm_backward: null pointer");
  const Params p{gamma, beta, scale, shift};
  float* ws = static_cast<float*>(workspace);
  if (dtype == DType::f32)
    return backward_t<float>(dy, x, dx, mean, rstd, p, dgamma, dbeta, dscale, dshift, B, N, C, G, silu, ws, stream,
                             how);
  return backward_t<__nv_bfloat16>(dy, x, dx, mean, rstd, p, dgamma, dbeta, dscale, dshift, B, N, C, G, silu, ws,
                                   stream, how);
}

}  // namespace diffuse::DF_BACKEND

// ---- The Tensor-level op on a GPU -----------------------------------------------------------------
// the Tensor-level GroupNorm with AdaGN scale/shift and SiLU over
// the launchers of kernels/cuda/group_norm.cu: statistics and parameter gradients in f32. Checks
// what the launchers cannot, allocates outputs and workspaces from the caching allocator and
// launches on the current stream; nothing here waits for the device.
#if DF_DEVICE_BUILD

namespace diffuse::cuda {

using namespace args;
using kernels::GroupNormResult;
using kernels::GroupNormGrads;
using kernels::GroupNormOptions;

GroupNormResult group_norm_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& scale,
                                   const Tensor& shift, const GroupNormOptions& opt) {
  check_act(x, "group_norm");
  DF_CHECK(x.dim() >= 2, "group_norm: x must be (B, ..., C), got ", x.str());
  const int64_t B = x.size(0), C = x.size(-1), N = x.numel() / std::max<int64_t>(B * C, 1);
  for (const Tensor* t : {&gamma, &beta, &scale, &shift})
    if (t->defined()) check_device(*t, x.device(), "group_norm");
  set_current_device(x.device());
  const Tensor g = as_f32(gamma), b = as_f32(beta), s = as_f32(scale), h = as_f32(shift);
  GroupNormResult r;
  r.y = Tensor::empty(x.shape(), x.dtype(), x.device());
  r.mean = Tensor::empty({B, opt.groups}, DType::f32, x.device());
  r.rstd = Tensor::empty({B, opt.groups}, DType::f32, x.device());
  Tensor ws = workspace(cuda::group_norm_workspace_bytes(B, N, C, opt.groups), x.device());
  cuda::group_norm_forward(x.raw(), r.y.raw(), x.dtype(), f32_or_null(g), f32_or_null(b), f32_or_null(s),
                           f32_or_null(h), r.mean.data<float>(), r.rstd.data<float>(), B, N, C, opt.groups, opt.eps,
                           opt.silu, ws.raw(), current_stream());
  return r;
}

GroupNormGrads group_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& mean, const Tensor& rstd,
                                   const Tensor& gamma, const Tensor& beta, const Tensor& scale, const Tensor& shift,
                                   const GroupNormOptions& opt) {
  check_act(x, "group_norm backward");
  check_like(dy, x, "group_norm backward");
  check_same_shape(dy, x, "group_norm backward");
  const int64_t B = x.size(0), C = x.size(-1), N = x.numel() / std::max<int64_t>(B * C, 1);
  set_current_device(x.device());
  const Tensor g = as_f32(gamma), b = as_f32(beta), s = as_f32(scale), h = as_f32(shift);
  const Tensor m = mean.to(DType::f32), rs = rstd.to(DType::f32);
  auto grad_for = [&](const Tensor& t, const Shape& shape) {
    return t.defined() ? Tensor::empty(shape, DType::f32, x.device()) : Tensor();
  };
  GroupNormGrads out;
  out.dx = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor dg = grad_for(gamma, {C}), db = grad_for(beta, {C}), ds = grad_for(scale, {B, C}), dh = grad_for(shift, {B, C});
  Tensor ws = workspace(cuda::group_norm_workspace_bytes(B, N, C, opt.groups), x.device());
  auto ptr = [](Tensor& t) { return t.defined() ? t.data<float>() : nullptr; };
  cuda::group_norm_backward(dy.raw(), x.raw(), out.dx.raw(), x.dtype(), m.data<float>(), rs.data<float>(),
                            f32_or_null(g), f32_or_null(b), f32_or_null(s), f32_or_null(h), ptr(dg), ptr(db), ptr(ds),
                            ptr(dh), B, N, C, opt.groups, opt.silu, ws.raw(), current_stream());
  out.dgamma = in_dtype_of(dg, gamma);
  out.dbeta = in_dtype_of(db, beta);
  out.dscale = in_dtype_of(ds, scale);
  out.dshift = in_dtype_of(dh, shift);
  if (out.dgamma.defined()) out.dgamma = out.dgamma.reshape(gamma.shape());
  if (out.dbeta.defined()) out.dbeta = out.dbeta.reshape(beta.shape());
  if (out.dscale.defined()) out.dscale = out.dscale.reshape(scale.shape());
  if (out.dshift.defined()) out.dshift = out.dshift.reshape(shift.shape());
  return out;
}

}  // namespace diffuse::cuda

#endif  // DF_DEVICE_BUILD
