// kernels/cuda/attention_tc.cu: flash attention forward and backward on bf16 tensor cores
// (sm_80 and newer), the twin of the SIMT kernels of kernels/cuda/attention.cu. Same math, same
// contract (kernels/attention.h): the row log-sum-exp of the scaled scores is the saved
// state, so either backward takes either forward's output. The dispatch (nn_cuda.cpp) runs these
// for bf16 inputs on sm_80+ at head dims 32 and 64; the SIMT kernels stay for f32 and for older
// GPUs. Under the emulator (DIFFUSE_SIMT) mma.sync is kernels/simt's warp collective of the same
// name and fragment layout (kernels/simt/simt.h), so the same kernels run there, launched directly
// by the emu tier's tests, and on the simulated device (DIFFUSE_CUDA=SIM), where the dispatch picks
// them as on a GPU.
//
// Products: mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 (PTX ISA, "Matrix fragments for
// mma.m16n8k16"), bf16 operands, f32 accumulation. With g = lane / 4 and t = lane % 4, a warp's
//   A (16 x 16, row): a0 = (g, 2t..2t+1), a1 = (g+8, 2t..2t+1), a2 = (g, 2t+8..2t+9), a3 = (g+8, 2t+8..)
//   B (16 x 8, col):  b0 = (k 2t..2t+1, n g), b1 = (k 2t+8..2t+9, n g)
//   C (16 x 8, f32):  c0, c1 = (g, 2t..2t+1), c2, c3 = (g+8, 2t..2t+1)
// each register holding two bf16, the lower index in the low half. The C fragments of two
// neighbouring n-tiles are, packed to bf16, exactly the A fragment of one 16-wide k-step
// (FlashAttention-2's trick): P and dS go from one product to the next without shared memory.
// A B operand "col" is k-contiguous per column n: K stored row-major (key, dim) is the B of
// Q K^T as it is; the B of P V needs V transposed (dim, key), written so into shared memory as the
// tile is loaded (no ldmatrix: every shared-memory read is a plain 32-bit word).
//
// Forward (Dao 2023, "FlashAttention-2", algorithm 1): a warp owns 16 query rows, their Q
// fragments in registers for the whole loop; the block (4 warps, 64 rows) streams 64-key tiles of
// K and V^T through shared memory. Online softmax in f32 in the base-2 domain (scale * log2 e
// folded into one multiply): a row lives in the 4 lanes of a quad, its max and sum reduced by two
// shuffles. P is rounded to bf16 for P V (the sum l is kept from the f32 values).
// Backward (the same paper, algorithm 2, split like the SIMT kernels so that no gradient needs
// atomics): Delta_i = dO_i . O_i in a pre-pass; a dK/dV kernel whose warps own 16 keys (K and V
// fragments in registers) and stream 32-query tiles of Q, dO, Q^T, dO^T:
//   S^T = K Q^T, P^T = exp(scale S^T - lse), dP^T = V dO^T, dS^T = P^T (dP^T - Delta),
//   dV += P^T dO, dK += dS^T Q (times scale at the end);
// and a dQ kernel whose warps own 16 queries (Q and dO fragments in registers) and stream 32-key
// tiles of K, V, K^T:  S = Q K^T, dP = dO V^T, dS = P (dP - Delta), dQ += dS K (times scale).
//
// Shared-memory rows carry 8 bf16 of padding: a row of 64 (32) bf16 is then 36 (20) words, and
// the 32 lanes of a fragment read (row g, word t) hit 32 different banks; rows stay 16-byte
// aligned for the 16-byte tile stores.
//
// Registers (ptxas, sm_80 / sm_90, head dim 64): forward 161 / 163, dK/dV 202 / 206, dQ 162 / 174,
// no spills. The kernels are declared __launch_bounds__(128, 1): with the bare thread count, ptxas
// chose to cap the sm_80 dQ kernel of head dim 32 at 96 registers and spilled 4 bytes.
#include "kernels/cuda/portable.cuh"

#include <atomic>
#include <cstdint>
#include <initializer_list>

#include "kernels/attention.h"
#include "kernels/cuda/common.cuh"

#if defined(DIFFUSE_SIMT)
// Tiles are read as 32-bit words and written as 16-byte vectors, the GPU's way. The emulator's
// 16-bit float and vector types are may_alias (kernels/simt/vector_types.h), which keeps the host
// compiler's code right; GCC warns about the casts all the same.
#pragma GCC diagnostic ignored "-Wstrict-aliasing"
#endif

namespace diffuse::DF_BACKEND {

namespace {

using bf16 = __nv_bfloat16;

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kPadH = 8;                   // bf16 of padding per shared-memory row
constexpr int kFwdRows = kWarps * 16;      // forward: query rows per block
constexpr int kFwdKeys = 64;               // forward: keys per tile
constexpr int kKvKeys = kWarps * 16;       // dK/dV: key rows per block
constexpr int kKvQueries = 32;             // dK/dV: queries per tile
constexpr int kDqRows = kWarps * 16;       // dQ: query rows per block
constexpr int kDqKeys = 32;                // dQ: keys per tile
constexpr float kLog2e = 1.4426950408889634f;

struct Geom {
  int64_t Tq, Tk, C;
  int heads;
};

DF_DEVICE_INLINE void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(DIFFUSE_SIMT)
  const uint32_t b[2] = {b0, b1};
  df_mma_m16n8k16_row_col_f32_bf16_bf16_f32(c, a, b, c);
#elif !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
  __trap();  // never launched: attention_tc_supported() asks for sm_80
#endif
}

DF_DEVICE_INLINE uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// The 32-bit word at (row, col) of a shared-memory tile (col even).
template <int kCols>
DF_DEVICE_INLINE uint32_t word(const bf16 (*tile)[kCols], int row, int col) {
  return *reinterpret_cast<const uint32_t*>(&tile[row][col]);
}

// Two neighbouring dims (d, d+1) of row t of head (b, h), 0 past the end.
DF_DEVICE_INLINE uint32_t global_pair(const bf16* __restrict__ x, int64_t b, int64_t t, int64_t T, int64_t C, int h,
                                      int D, int d) {
  return t < T ? *reinterpret_cast<const uint32_t*>(x + (b * T + t) * C + static_cast<int64_t>(h) * D + d) : 0u;
}

// The A fragments of rows [r0, r0 + 16) of head (b, h) over the whole head dim: frag[kk] covers
// dims [16 kk, 16 kk + 16).
template <int D>
DF_DEVICE_INLINE void load_a_rows(const bf16* __restrict__ x, uint32_t (&frag)[D / 16][4], int64_t b, int h,
                                  int64_t r0, int64_t T, int64_t C) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  DF_UNROLL for (int kk = 0; kk < D / 16; ++kk) {
    frag[kk][0] = global_pair(x, b, r0 + g, T, C, h, D, kk * 16 + 2 * t);
    frag[kk][1] = global_pair(x, b, r0 + g + 8, T, C, h, D, kk * 16 + 2 * t);
    frag[kk][2] = global_pair(x, b, r0 + g, T, C, h, D, kk * 16 + 8 + 2 * t);
    frag[kk][3] = global_pair(x, b, r0 + g + 8, T, C, h, D, kk * 16 + 8 + 2 * t);
  }
}

// Rows [r0, r0 + R) of head (b, h) into tile[r][d], 16 bytes per access; rows past T are 0.
template <int D, int R>
DF_DEVICE_INLINE void load_tile(const bf16* __restrict__ x, bf16 (*tile)[D + kPadH], int64_t b, int h, int64_t r0,
                                int64_t T, int64_t C) {
  constexpr int kVecs = D / 8;
  for (int e = threadIdx.x; e < R * kVecs; e += kThreads) {
    const int r = e / kVecs, c = (e % kVecs) * 8;
    const int64_t t = r0 + r;
    uint4 val = make_uint4(0u, 0u, 0u, 0u);
    if (t < T) val = *reinterpret_cast<const uint4*>(x + (b * T + t) * C + static_cast<int64_t>(h) * D + c);
    *reinterpret_cast<uint4*>(&tile[r][c]) = val;
  }
}

// The same rows transposed, tile[d][r]. Neighbouring lanes take neighbouring rows, so the 2-byte
// stores of a warp land in 16 different words of one shared-memory row (no bank conflict).
template <int D, int R>
DF_DEVICE_INLINE void load_tile_t(const bf16* __restrict__ x, bf16 (*tile)[R + kPadH], int64_t b, int h, int64_t r0,
                                  int64_t T, int64_t C) {
  for (int e = threadIdx.x; e < R * (D / 8); e += kThreads) {
    const int r = e % R, c = (e / R) * 8;
    const int64_t t = r0 + r;
    uint4 val = make_uint4(0u, 0u, 0u, 0u);
    if (t < T) val = *reinterpret_cast<const uint4*>(x + (b * T + t) * C + static_cast<int64_t>(h) * D + c);
    const bf16* v8 = reinterpret_cast<const bf16*>(&val);
    DF_UNROLL for (int i = 0; i < 8; ++i) tile[c + i][r] = v8[i];
  }
}

// Row-major C fragments (16 rows from r0, kNd n-tiles over the head dim) times `mul`, as bf16.
template <int D>
DF_DEVICE_INLINE void store_c_rows(bf16* __restrict__ x, const float (&acc)[D / 8][4], float mul_lo, float mul_hi,
                                   int64_t b, int h, int64_t r0, int64_t T, int64_t C) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int64_t lo = r0 + g, hi = r0 + g + 8;
  DF_UNROLL for (int nd = 0; nd < D / 8; ++nd) {
    const int d = nd * 8 + 2 * t;
    if (lo < T)
      *reinterpret_cast<uint32_t*>(x + (b * T + lo) * C + static_cast<int64_t>(h) * D + d) =
          pack_bf16(acc[nd][0] * mul_lo, acc[nd][1] * mul_lo);
    if (hi < T)
      *reinterpret_cast<uint32_t*>(x + (b * T + hi) * C + static_cast<int64_t>(h) * D + d) =
          pack_bf16(acc[nd][2] * mul_hi, acc[nd][3] * mul_hi);
  }
}

DF_DEVICE_INLINE float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}

DF_DEVICE_INLINE float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

template <int D>
__global__ void __launch_bounds__(kThreads, 1) attention_tc_forward_kernel(const bf16* __restrict__ q,
                                                                        const bf16* __restrict__ k,
                                                                        const bf16* __restrict__ v,
                                                                        bf16* __restrict__ out,
                                                                        float* __restrict__ lse, Geom geo,
                                                                        float scale_log2) {
  constexpr int kKd = D / 16, kNd = D / 8, kNc = kFwdKeys / 8;
  DF_SHARED2(bf16, ks, kFwdKeys, D + kPadH);
  DF_SHARED2(bf16, vt, D, kFwdKeys + kPadH);
  const int64_t bh = blockIdx.y, b = bh / geo.heads;
  const int h = static_cast<int>(bh - b * geo.heads);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kFwdRows + warp * 16;

  uint32_t qa[kKd][4];
  load_a_rows<D>(q, qa, b, h, r0, geo.Tq, geo.C);
  float o[kNd][4];
  DF_UNROLL for (int nd = 0; nd < kNd; ++nd) o[nd][0] = o[nd][1] = o[nd][2] = o[nd][3] = 0.0f;
  // Per row (lo = g, hi = g + 8): the running max of the raw scores, and this lane's share of the
  // running sum (the quad's shares are added at the end).
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};

  for (int64_t j0 = 0; j0 < geo.Tk; j0 += kFwdKeys) {
    __syncthreads();  // the previous tile is no longer read
    load_tile<D, kFwdKeys>(k, ks, b, h, j0, geo.Tk, geo.C);
    load_tile_t<D, kFwdKeys>(v, vt, b, h, j0, geo.Tk, geo.C);
    __syncthreads();
    float s[kNc][4];
    DF_UNROLL for (int n = 0; n < kNc; ++n) {
      s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
      DF_UNROLL for (int kk = 0; kk < kKd; ++kk)
        mma_bf16(s[n], qa[kk], word(ks, n * 8 + g, kk * 16 + 2 * t), word(ks, n * 8 + g, kk * 16 + 8 + 2 * t));
    }
    if (j0 + kFwdKeys > geo.Tk) {  // the last tile: keys past Tk get no weight
      DF_UNROLL for (int n = 0; n < kNc; ++n)
        DF_UNROLL for (int c = 0; c < 4; ++c) if (j0 + n * 8 + 2 * t + (c & 1) >= geo.Tk) s[n][c] = -INFINITY;
    }
    float mx[2] = {m[0], m[1]};
    DF_UNROLL for (int n = 0; n < kNc; ++n) {
      mx[0] = fmaxf(mx[0], fmaxf(s[n][0], s[n][1]));
      mx[1] = fmaxf(mx[1], fmaxf(s[n][2], s[n][3]));
    }
    // Every tile holds at least one valid key, so the new max is finite; the correction of the
    // first tile is exp2(-inf) = 0.
    float corr[2];
    DF_UNROLL for (int r = 0; r < 2; ++r) {
      mx[r] = quad_max(mx[r]);
      corr[r] = exp2f((m[r] - mx[r]) * scale_log2);
      m[r] = mx[r];
      l[r] *= corr[r];
    }
    const float ms0 = m[0] * scale_log2, ms1 = m[1] * scale_log2;
    uint32_t pa[kNc / 2][4];
    DF_UNROLL for (int n = 0; n < kNc; ++n) {
      const float p0 = exp2f(fmaf(s[n][0], scale_log2, -ms0)), p1 = exp2f(fmaf(s[n][1], scale_log2, -ms0));
      const float p2 = exp2f(fmaf(s[n][2], scale_log2, -ms1)), p3 = exp2f(fmaf(s[n][3], scale_log2, -ms1));
      l[0] += p0 + p1;
      l[1] += p2 + p3;
      pa[n / 2][(n % 2) * 2 + 0] = pack_bf16(p0, p1);
      pa[n / 2][(n % 2) * 2 + 1] = pack_bf16(p2, p3);
    }
    DF_UNROLL for (int nd = 0; nd < kNd; ++nd) {
      o[nd][0] *= corr[0], o[nd][1] *= corr[0], o[nd][2] *= corr[1], o[nd][3] *= corr[1];
      DF_UNROLL for (int j = 0; j < kNc / 2; ++j)
        mma_bf16(o[nd], pa[j], word(vt, nd * 8 + g, j * 16 + 2 * t), word(vt, nd * 8 + g, j * 16 + 8 + 2 * t));
    }
  }
  l[0] = quad_sum(l[0]);
  l[1] = quad_sum(l[1]);
  store_c_rows<D>(out, o, 1.0f / l[0], 1.0f / l[1], b, h, r0, geo.Tq, geo.C);
  if (t == 0) {
    // The log-sum-exp of the scaled scores, natural log: max + log(sum).
    const float scale = scale_log2 / kLog2e;
    if (r0 + g < geo.Tq) lse[bh * geo.Tq + r0 + g] = m[0] * scale + logf(l[0]);
    if (r0 + g + 8 < geo.Tq) lse[bh * geo.Tq + r0 + g + 8] = m[1] * scale + logf(l[1]);
  }
}

// Delta_i = sum_d dO_i,d O_i,d for every (b, h, i): D/8 lanes per row, 16 bytes each.
template <int D>
__global__ void __launch_bounds__(256) attention_tc_delta_kernel(const bf16* __restrict__ dout,
                                                                 const bf16* __restrict__ out,
                                                                 float* __restrict__ delta, Geom geo, int64_t rows) {
  constexpr int kLanes = D / 8;
  const int64_t e = static_cast<int64_t>(blockIdx.x) * 256 + threadIdx.x;
  const int64_t r = e / kLanes;
  const int part = static_cast<int>(e % kLanes);
  float s = 0.0f;
  if (r < rows) {
    const int64_t bh = r / geo.Tq, i = r - bh * geo.Tq, b = bh / geo.heads;
    const int h = static_cast<int>(bh - b * geo.heads);
    const int64_t x = (b * geo.Tq + i) * geo.C + static_cast<int64_t>(h) * D + part * 8;
    const uint4 a = *reinterpret_cast<const uint4*>(dout + x), c = *reinterpret_cast<const uint4*>(out + x);
    const __nv_bfloat162* a2 = reinterpret_cast<const __nv_bfloat162*>(&a);
    const __nv_bfloat162* c2 = reinterpret_cast<const __nv_bfloat162*>(&c);
    DF_UNROLL for (int i2 = 0; i2 < 4; ++i2) {
      const float2 fa = __bfloat1622float2(a2[i2]), fc = __bfloat1622float2(c2[i2]);
      s = fmaf(fa.x, fc.x, s);
      s = fmaf(fa.y, fc.y, s);
    }
  }
  // kLanes (4 or 8) consecutive lanes share a row; rows never straddle a warp (32 % kLanes == 0).
  DF_UNROLL for (int w = 1; w < kLanes; w *= 2) s += __shfl_xor_sync(0xffffffffu, s, w);
  if (r < rows && part == 0) delta[r] = s;
}

template <int D>
__global__ void __launch_bounds__(kThreads, 1) attention_tc_dkdv_kernel(
    const bf16* __restrict__ dout, const bf16* __restrict__ q, const bf16* __restrict__ k,
    const bf16* __restrict__ v, const float* __restrict__ lse, const float* __restrict__ delta,
    bf16* __restrict__ dk, bf16* __restrict__ dv, Geom geo, float scale, float scale_log2) {
  constexpr int kKd = D / 16, kNd = D / 8, kNq = kKvQueries / 8, kKq = kKvQueries / 16;
  DF_SHARED2(bf16, qs, kKvQueries, D + kPadH);    // B of S^T = K Q^T
  DF_SHARED2(bf16, dos, kKvQueries, D + kPadH);   // B of dP^T = V dO^T
  DF_SHARED2(bf16, qt, D, kKvQueries + kPadH);    // B of dK += dS^T Q
  DF_SHARED2(bf16, dot, D, kKvQueries + kPadH);   // B of dV += P^T dO
  DF_SHARED(float, lse_s, kKvQueries);            // log2 domain
  DF_SHARED(float, delta_s, kKvQueries);
  const int64_t bh = blockIdx.y, b = bh / geo.heads;
  const int h = static_cast<int>(bh - b * geo.heads);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * kKvKeys + warp * 16;

  uint32_t ka[kKd][4], va[kKd][4];
  load_a_rows<D>(k, ka, b, h, j0, geo.Tk, geo.C);
  load_a_rows<D>(v, va, b, h, j0, geo.Tk, geo.C);
  float dk_acc[kNd][4], dv_acc[kNd][4];
  DF_UNROLL for (int nd = 0; nd < kNd; ++nd)
    DF_UNROLL for (int c = 0; c < 4; ++c) dk_acc[nd][c] = dv_acc[nd][c] = 0.0f;

  for (int64_t i0 = 0; i0 < geo.Tq; i0 += kKvQueries) {
    __syncthreads();
    load_tile<D, kKvQueries>(q, qs, b, h, i0, geo.Tq, geo.C);
    load_tile<D, kKvQueries>(dout, dos, b, h, i0, geo.Tq, geo.C);
    load_tile_t<D, kKvQueries>(q, qt, b, h, i0, geo.Tq, geo.C);
    load_tile_t<D, kKvQueries>(dout, dot, b, h, i0, geo.Tq, geo.C);
    if (threadIdx.x < kKvQueries) {
      const int64_t i = i0 + threadIdx.x;
      // A query past Tq gets lse = +inf: its P is exactly 0 and it adds nothing.
      lse_s[threadIdx.x] = i < geo.Tq ? lse[bh * geo.Tq + i] * kLog2e : INFINITY;
      delta_s[threadIdx.x] = i < geo.Tq ? delta[bh * geo.Tq + i] : 0.0f;
    }
    __syncthreads();
    float st[kNq][4], dpt[kNq][4];
    DF_UNROLL for (int n = 0; n < kNq; ++n) {
      DF_UNROLL for (int c = 0; c < 4; ++c) st[n][c] = dpt[n][c] = 0.0f;
      DF_UNROLL for (int kk = 0; kk < kKd; ++kk) {
        mma_bf16(st[n], ka[kk], word(qs, n * 8 + g, kk * 16 + 2 * t), word(qs, n * 8 + g, kk * 16 + 8 + 2 * t));
        mma_bf16(dpt[n], va[kk], word(dos, n * 8 + g, kk * 16 + 2 * t), word(dos, n * 8 + g, kk * 16 + 8 + 2 * t));
      }
    }
    uint32_t pa[kKq][4], dsa[kKq][4];
    DF_UNROLL for (int n = 0; n < kNq; ++n) {
      float p[4], ds[4];
      DF_UNROLL for (int c = 0; c < 4; ++c) {
        const int col = n * 8 + 2 * t + (c & 1);  // the query of this element
        p[c] = exp2f(fmaf(st[n][c], scale_log2, -lse_s[col]));
        ds[c] = p[c] * (dpt[n][c] - delta_s[col]);
      }
      pa[n / 2][(n % 2) * 2 + 0] = pack_bf16(p[0], p[1]);
      pa[n / 2][(n % 2) * 2 + 1] = pack_bf16(p[2], p[3]);
      dsa[n / 2][(n % 2) * 2 + 0] = pack_bf16(ds[0], ds[1]);
      dsa[n / 2][(n % 2) * 2 + 1] = pack_bf16(ds[2], ds[3]);
    }
    DF_UNROLL for (int nd = 0; nd < kNd; ++nd)
      DF_UNROLL for (int jq = 0; jq < kKq; ++jq) {
        mma_bf16(dv_acc[nd], pa[jq], word(dot, nd * 8 + g, jq * 16 + 2 * t),
                 word(dot, nd * 8 + g, jq * 16 + 8 + 2 * t));
        mma_bf16(dk_acc[nd], dsa[jq], word(qt, nd * 8 + g, jq * 16 + 2 * t),
                 word(qt, nd * 8 + g, jq * 16 + 8 + 2 * t));
      }
  }
  store_c_rows<D>(dk, dk_acc, scale, scale, b, h, j0, geo.Tk, geo.C);
  store_c_rows<D>(dv, dv_acc, 1.0f, 1.0f, b, h, j0, geo.Tk, geo.C);
}

template <int D>
__global__ void __launch_bounds__(kThreads, 1) attention_tc_dq_kernel(
    const bf16* __restrict__ dout, const bf16* __restrict__ q, const bf16* __restrict__ k,
    const bf16* __restrict__ v, const float* __restrict__ lse, const float* __restrict__ delta,
    bf16* __restrict__ dq, Geom geo, float scale, float scale_log2) {
  constexpr int kKd = D / 16, kNd = D / 8, kNc = kDqKeys / 8, kKc = kDqKeys / 16;
  DF_SHARED2(bf16, ks, kDqKeys, D + kPadH);  // B of S = Q K^T
  DF_SHARED2(bf16, vs, kDqKeys, D + kPadH);  // B of dP = dO V^T
  DF_SHARED2(bf16, kt, D, kDqKeys + kPadH);  // B of dQ += dS K
  const int64_t bh = blockIdx.y, b = bh / geo.heads;
  const int h = static_cast<int>(bh - b * geo.heads);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kDqRows + warp * 16;

  uint32_t qa[kKd][4], doa[kKd][4];
  load_a_rows<D>(q, qa, b, h, r0, geo.Tq, geo.C);
  load_a_rows<D>(dout, doa, b, h, r0, geo.Tq, geo.C);
  float lse_r[2], delta_r[2];
  DF_UNROLL for (int r = 0; r < 2; ++r) {
    const int64_t i = r0 + g + 8 * r;
    lse_r[r] = i < geo.Tq ? lse[bh * geo.Tq + i] * kLog2e : INFINITY;  // +inf: P = 0 for rows past Tq
    delta_r[r] = i < geo.Tq ? delta[bh * geo.Tq + i] : 0.0f;
  }
  float dq_acc[kNd][4];
  DF_UNROLL for (int nd = 0; nd < kNd; ++nd) dq_acc[nd][0] = dq_acc[nd][1] = dq_acc[nd][2] = dq_acc[nd][3] = 0.0f;

  for (int64_t j0 = 0; j0 < geo.Tk; j0 += kDqKeys) {
    __syncthreads();
    load_tile<D, kDqKeys>(k, ks, b, h, j0, geo.Tk, geo.C);
    load_tile<D, kDqKeys>(v, vs, b, h, j0, geo.Tk, geo.C);
    load_tile_t<D, kDqKeys>(k, kt, b, h, j0, geo.Tk, geo.C);
    __syncthreads();
    float s[kNc][4], dp[kNc][4];
    DF_UNROLL for (int n = 0; n < kNc; ++n) {
      DF_UNROLL for (int c = 0; c < 4; ++c) s[n][c] = dp[n][c] = 0.0f;
      DF_UNROLL for (int kk = 0; kk < kKd; ++kk) {
        mma_bf16(s[n], qa[kk], word(ks, n * 8 + g, kk * 16 + 2 * t), word(ks, n * 8 + g, kk * 16 + 8 + 2 * t));
        mma_bf16(dp[n], doa[kk], word(vs, n * 8 + g, kk * 16 + 2 * t), word(vs, n * 8 + g, kk * 16 + 8 + 2 * t));
      }
    }
    uint32_t dsa[kKc][4];
    DF_UNROLL for (int n = 0; n < kNc; ++n) {
      float ds[4];
      DF_UNROLL for (int c = 0; c < 4; ++c) {
        const int r = c >> 1;
        const bool valid = j0 + n * 8 + 2 * t + (c & 1) < geo.Tk;  // keys past Tk: P = 0
        const float p = valid ? exp2f(fmaf(s[n][c], scale_log2, -lse_r[r])) : 0.0f;
        ds[c] = p * (dp[n][c] - delta_r[r]);
      }
      dsa[n / 2][(n % 2) * 2 + 0] = pack_bf16(ds[0], ds[1]);
      dsa[n / 2][(n % 2) * 2 + 1] = pack_bf16(ds[2], ds[3]);
    }
    DF_UNROLL for (int nd = 0; nd < kNd; ++nd)
      DF_UNROLL for (int jk = 0; jk < kKc; ++jk)
        mma_bf16(dq_acc[nd], dsa[jk], word(kt, nd * 8 + g, jk * 16 + 2 * t), word(kt, nd * 8 + g, jk * 16 + 8 + 2 * t));
  }
  store_c_rows<D>(dq, dq_acc, scale, scale, b, h, r0, geo.Tq, geo.C);
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

void check_geometry(const char* op, int64_t B, int64_t Tq, int64_t Tk, int heads, int D) {
  DF_CHECK(B > 0 && Tq > 0 && Tk > 0 && heads > 0, op, ": empty input (B=", B, ", Tq=", Tq, ", Tk=", Tk,
           ", heads=", heads, ")");
  DF_CHECK(D == 32 || D == 64, op, ": head dim ", D, " (the tensor-core kernels have 32 and 64)");
  DF_CHECK(B * heads <= 65535, op, ": B * heads = ", B * heads, " over the grid's y limit");
}

#if !defined(DIFFUSE_SIMT)
// The compute capability's major number of the current device, asked once per device (the
// attribute query is cheap, but the dispatch asks on every attention call).
int current_cc_major() {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cache[kMaxDevices] = {};
  int dev = 0;
  DF_CUDA_CHECK(cudaGetDevice(&dev));
  if (dev >= 0 && dev < kMaxDevices) {
    const int known = cache[dev].load(std::memory_order_relaxed);
    if (known) return known;
  }
  int major = 0;
  DF_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  if (dev >= 0 && dev < kMaxDevices) cache[dev].store(major, std::memory_order_relaxed);
  return major;
}
#endif

template <int D>
void forward_t(const void* q, const void* k, const void* v, void* out, float* lse, int64_t B, int64_t Tq, int64_t Tk,
               int heads, void* stream) {
  const Geom geo{Tq, Tk, static_cast<int64_t>(heads) * D, heads};
  const float scale_log2 = kLog2e / sqrtf(static_cast<float>(D));
  DF_LAUNCH(attention_tc_forward_kernel<D>,
            dim3(static_cast<unsigned>(ceil_div(Tq, kFwdRows)), static_cast<unsigned>(B * heads)), dim3(kThreads), 0,
            stream, static_cast<const bf16*>(q), static_cast<const bf16*>(k), static_cast<const bf16*>(v),
            static_cast<bf16*>(out), lse, geo, scale_log2);
}

template <int D>
void backward_t(const void* dout, const void* q, const void* k, const void* v, const void* out, const float* lse,
                void* dq, void* dk, void* dv, int64_t B, int64_t Tq, int64_t Tk, int heads, float* delta,
                void* stream) {
  const Geom geo{Tq, Tk, static_cast<int64_t>(heads) * D, heads};
  const float scale = 1.0f / sqrtf(static_cast<float>(D)), scale_log2 = kLog2e * scale;
  const int64_t rows = B * heads * Tq;
  const bf16* dot = static_cast<const bf16*>(dout);
  const bf16 *qt = static_cast<const bf16*>(q), *kt = static_cast<const bf16*>(k), *vt = static_cast<const bf16*>(v);
  DF_LAUNCH(attention_tc_delta_kernel<D>, dim3(static_cast<unsigned>(ceil_div(rows * (D / 8), 256))), dim3(256), 0,
            stream, dot, static_cast<const bf16*>(out), delta, geo, rows);
  DF_LAUNCH(attention_tc_dkdv_kernel<D>,
            dim3(static_cast<unsigned>(ceil_div(Tk, kKvKeys)), static_cast<unsigned>(B * heads)), dim3(kThreads), 0,
            stream, dot, qt, kt, vt, lse, static_cast<const float*>(delta), static_cast<bf16*>(dk),
            static_cast<bf16*>(dv), geo, scale, scale_log2);
  DF_LAUNCH(attention_tc_dq_kernel<D>,
            dim3(static_cast<unsigned>(ceil_div(Tq, kDqRows)), static_cast<unsigned>(B * heads)), dim3(kThreads), 0,
            stream, dot, qt, kt, vt, lse, static_cast<const float*>(delta), static_cast<bf16*>(dq), geo, scale,
            scale_log2);
}

}  // namespace

bool attention_tc_supported(DType dtype, int D, std::initializer_list<const void*> ptrs) {
  if (dtype != DType::bf16 || (D != 32 && D != 64)) return false;
  for (const void* p : ptrs)
    if (!detail::aligned16(p)) return false;
#if defined(DIFFUSE_SIMT)
  return true;  // the emulator's device, and the simulated one (DIFFUSE_CUDA=SIM), is an sm_90
#else
  return current_cc_major() >= 8;
#endif
}

void attention_tc_forward(const void* q, const void* k, const void* v, void* out, float* lse, int64_t B, int64_t Tq,
                          int64_t Tk, int heads, int D, void* stream) {
  check_geometry("attention_tc_forward", B, Tq, Tk, heads, D);
  DF_CHECK(q && k && v && out && lse, "attention_tc_forward: null pointer");
  if (D == 32) return forward_t<32>(q, k, v, out, lse, B, Tq, Tk, heads, stream);
  forward_t<64>(q, k, v, out, lse, B, Tq, Tk, heads, stream);
}

void attention_tc_backward(const void* dout, const void* q, const void* k, const void* v, const void* out,
                           const float* lse, void* dq, void* dk, void* dv, int64_t B, int64_t Tq, int64_t Tk, int heads,
                           int D, void* workspace, void* stream) {
  check_geometry("attention_tc_backward", B, Tq, Tk, heads, D);
  DF_CHECK(dout && q && k && v && out && lse && dq && dk && dv && workspace, "attention_tc_backward: null pointer");
  float* delta = static_cast<float*>(workspace);
  if (D == 32) return backward_t<32>(dout, q, k, v, out, lse, dq, dk, dv, B, Tq, Tk, heads, delta, stream);
  backward_t<64>(dout, q, k, v, out, lse, dq, dk, dv, B, Tq, Tk, heads, delta, stream);
}

}  // namespace diffuse::DF_BACKEND
