// kernels/cuda/reduce.cu: sums and sums of squares, over the rows of a matrix or over a whole
// flat buffer (the global gradient norm for clipping). Launchers in kernels/elementwise.h.
//
// The shape of a reduction decides the parallelism:
//   - long rows (cols >= kLongRow): one block per row; each thread strides the row with 16-byte
//     loads, then the block combines its 256 partials with warp shuffles and one shared-memory
//     round (common.cuh block_sum);
//   - short rows: one warp per row, 8 rows per block, shuffles only, so a (B*T, C) tensor with
//     small C does not leave 7/8 of each block idle;
//   - a whole buffer: two launches. Up to 1024 blocks each write one partial, then one block of
//     1024 threads sums the partials. No atomics: the order of additions depends only on n, so the
//     norm (and hence clipping) is bit-reproducible run to run, which float atomics are not;
//   - any axes of a tensor (reduce_sum: sum, mean, sum_to, bias gradients): the dimensions are
//     folded into alternating kept and reduced groups, and each reduced group, innermost first, is
//     one pass over an (O, R, I) view: I == 1 is rows again (a warp per short row, blocks per long
//     row); I > 1 is columns, where a block's 32 x 8 threads cover 32 neighbouring columns (one
//     coalesced 128-byte row segment per warp) and 8 rows at a time. When O * I alone would not
//     fill the GPU, R is split over S blocks that write partials (S, O, I), which one more launch
//     adds in order. Inputs and outputs are f32 or bf16; sums are f32.
#include "kernels/cuda/portable.cuh"

#include "kernels/cuda/common.cuh"
#include "kernels/elementwise.h"

#include <algorithm>

namespace diffuse::DF_BACKEND {

namespace {

using detail::Pack;
using kernels::ReduceOp;

constexpr int kBlock = 256;
constexpr int kWarpsPerBlock = kBlock / 32;
constexpr int64_t kLongRow = 1024;   // from here a row has >= 4 floats per thread of a block
constexpr int kFinalBlock = 1024;    // stage 2 of reduce_all: one partial per thread
constexpr int64_t kMaxPartials = kFinalBlock;

template <ReduceOp Op>
DF_DEVICE_INLINE float term(float v) {
  if constexpr (Op == ReduceOp::sum_squares) return v * v;
  else return v;
}

// Partial sum of f(x[i]) for the indices i = first, first + step, ... below n (in packs of 4
// when `vec`), which is the thread's share of a range.
template <ReduceOp Op>
DF_DEVICE_INLINE float strided_sum(const float* __restrict__ x, int64_t n, int64_t first, int64_t step, bool vec) {
  float acc = 0.0f;
  int64_t done = 0;
  if (vec) {
    const int64_t np = n / 4;
    for (int64_t c = first; c < np; c += step) {
      const Pack<float> v = detail::load_pack(x + 4 * c);
      acc += (term<Op>(v.v[0]) + term<Op>(v.v[1])) + (term<Op>(v.v[2]) + term<Op>(v.v[3]));
    }
    done = 4 * np;
  }
  for (int64_t i = done + first; i < n; i += step) acc += term<Op>(x[i]);
  return acc;
}

template <ReduceOp Op>
__global__ void __launch_bounds__(kBlock) reduce_long_rows_kernel(const float* __restrict__ x, float* __restrict__ out,
                                                                  int64_t cols, bool vec) {
  DF_SHARED(float, scratch, kWarpsPerBlock);
  const float* row = x + static_cast<int64_t>(blockIdx.x) * cols;
  const float acc = strided_sum<Op>(row, cols, threadIdx.x, kBlock, vec);
  const float total = detail::block_sum<kBlock>(acc, scratch);
  if (threadIdx.x == 0) out[blockIdx.x] = total;
}

template <ReduceOp Op>
__global__ void __launch_bounds__(kBlock) reduce_short_rows_kernel(const float* __restrict__ x,
                                                                   float* __restrict__ out, int64_t rows,
                                                                   int64_t cols) {
  const int lane = threadIdx.x % 32;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  // A warp past the last row still runs the shuffles (all 32 lanes must take part) on zeros.
  float acc = 0.0f;
  if (r < rows) {
    const float* row = x + r * cols;
    for (int64_t c = lane; c < cols; c += 32) acc += term<Op>(row[c]);
  }
  acc = detail::warp_sum(acc);
  if (lane == 0 && r < rows) out[r] = acc;
}

template <ReduceOp Op>
__global__ void __launch_bounds__(kBlock) reduce_partials_kernel(const float* __restrict__ x, int64_t n,
                                                                 float* __restrict__ partials, bool vec) {
  DF_SHARED(float, scratch, kWarpsPerBlock);
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kBlock;
  const float total = detail::block_sum<kBlock>(strided_sum<Op>(x, n, first, step, vec), scratch);
  if (threadIdx.x == 0) partials[blockIdx.x] = total;
}

__global__ void __launch_bounds__(kFinalBlock) reduce_final_kernel(const float* __restrict__ partials, int count,
                                                                   float* __restrict__ out) {
  DF_SHARED(float, scratch, kFinalBlock / 32);
  const float v = static_cast<int>(threadIdx.x) < count ? partials[threadIdx.x] : 0.0f;
  const float total = detail::block_sum<kFinalBlock>(v, scratch);
  if (threadIdx.x == 0) out[0] = total;
}

// The number of stage-1 blocks: enough to fill the GPU, each thread with >= 8 elements so the
// partial sums are not mostly launch overhead, and never more than one per stage-2 thread.
int64_t partial_blocks(int64_t n) {
  int64_t g = (n + kBlock * 8 - 1) / (kBlock * 8);
  if (g < 1) g = 1;
  return g < kMaxPartials ? g : kMaxPartials;
}

template <ReduceOp Op>
void reduce_rows_op(const float* x, float* out, int64_t rows, int64_t cols, void* stream) {
  if (cols >= kLongRow) {
    // Every row start is 16-byte aligned when the base is and a row is a whole number of packs.
    const bool vec = detail::aligned16(x) && cols % 4 == 0;
    DF_CHECK(rows <= 0x7fffffff, "reduce_rows: ", rows, " rows");
    DF_LAUNCH(reduce_long_rows_kernel<Op>, dim3(static_cast<unsigned>(rows)), dim3(kBlock), 0, stream, x, out, cols,
              vec);
  } else {
    const int64_t blocks = (rows + kWarpsPerBlock - 1) / kWarpsPerBlock;
    DF_CHECK(blocks <= 0x7fffffff, "reduce_rows: ", rows, " rows");
    DF_LAUNCH(reduce_short_rows_kernel<Op>, dim3(static_cast<unsigned>(blocks)), dim3(kBlock), 0, stream, x, out,
              rows, cols);
  }
}

template <ReduceOp Op>
void reduce_all_op(const float* x, int64_t n, float* workspace, float* out, void* stream) {
  const int64_t g = partial_blocks(n);
  DF_LAUNCH(reduce_partials_kernel<Op>, dim3(static_cast<unsigned>(g)), dim3(kBlock), 0, stream, x, n, workspace,
            detail::aligned16(x));
  DF_LAUNCH(reduce_final_kernel, dim3(1), dim3(kFinalBlock), 0, stream, static_cast<const float*>(workspace),
            static_cast<int>(g), out);
}


// ---- reduce_sum: any axes ------------------------------------------------------------------------
constexpr int kColWidth = 32;                  // columns per block (one warp's row segment)
constexpr int kColRows = kBlock / kColWidth;   // rows per block step
constexpr int64_t kTargetBlocks = 512;         // ~4 blocks per SM of an H100: enough to hide latency
constexpr int64_t kMaxSplits = 1024;
constexpr int64_t kMaxGridY = 65535;

// One pass of reduce_sum: x viewed as (O, R, I) summed over R. S > 1 splits R into chunks whose
// partial sums land in (S, O, I) first.
struct Pass {
  int64_t O = 1, R = 1, I = 1, S = 1;
  bool rows() const { return I == 1; }
};

struct Plan {
  Pass pass[3];  // at most three reduced groups in five dimensions (R K R K R)
  int passes = 0;
  int64_t inter = 0;     // floats of the largest intermediate result
  int64_t partials = 0;  // floats of the largest partial-sum array
};

int64_t clamp_splits(int64_t want, int64_t cap) { return std::max<int64_t>(1, std::min({want, cap, kMaxSplits})); }

Plan make_plan(const kernels::Dims& dims, unsigned mask) {
  // Groups of neighbouring dimensions with the same flag; size-1 dimensions are left out (summing
  // over one element or keeping it is the same), size-0 ones are kept (they make the sums empty).
  int64_t size[kernels::Dims::kMax];
  bool red[kernels::Dims::kMax];
  int g = 0;
  for (int d = 0; d < dims.rank; ++d) {
    if (dims.d[d] == 1) continue;
    const bool r = (mask >> d) & 1u;
    if (g > 0 && red[g - 1] == r) {
      size[g - 1] *= dims.d[d];
    } else {
      size[g] = dims.d[d], red[g] = r;
      ++g;
    }
  }
  Plan p;
  for (;;) {
    int j = -1;
    for (int k = 0; k < g; ++k)
      if (red[k]) j = k;
    if (j < 0) break;
    Pass s;
    for (int k = 0; k < j; ++k) s.O *= size[k];
    s.R = size[j];
    for (int k = j + 1; k < g; ++k) s.I *= size[k];
    // Remove group j; its kept neighbours (if both exist) become one group.
    if (j > 0 && j + 1 < g) {
      size[j - 1] *= size[j + 1];
      for (int k = j + 2; k < g; ++k) size[k - 2] = size[k], red[k - 2] = red[k];
      g -= 2;
    } else {
      for (int k = j + 1; k < g; ++k) size[k - 1] = size[k], red[k - 1] = red[k];
      g -= 1;
    }
    p.pass[p.passes++] = s;
  }
  if (p.passes == 0) {  // nothing to sum: a copy (scaled, converted) through the column kernel
    Pass s;
    s.O = 1, s.R = 1, s.I = dims.numel();
    p.pass[p.passes++] = s;
  }
  for (int k = 0; k < p.passes; ++k) {
    Pass& s = p.pass[k];
    if (s.O * s.I == 0 || s.R == 0) {
      s.S = 1;
    } else if (s.rows()) {
      // Block-per-row only for long rows; a warp per short row needs no split.
      s.S = s.R < 1024 ? 1 : clamp_splits((kTargetBlocks + std::min(s.O, kMaxGridY) - 1) / std::min(s.O, kMaxGridY),
                                          (s.R + 2047) / 2048);
    } else {
      const int64_t blocks = (s.I + kColWidth - 1) / kColWidth * std::min(s.O, kMaxGridY);
      s.S = clamp_splits((kTargetBlocks + blocks - 1) / blocks, (s.R + 63) / 64);
    }
    if (k + 1 < p.passes) p.inter = std::max(p.inter, s.O * s.I);
    if (s.S > 1) p.partials = std::max(p.partials, s.S * s.O * s.I);
  }
  return p;
}

// A warp per row of R < 1024 elements; 8 rows per block.
template <class Tin, class Tout>
__global__ void __launch_bounds__(kBlock) sum_rows_warp_kernel(const Tin* __restrict__ x, Tout* __restrict__ out,
                                                               int64_t O, int64_t R, float scale) {
  const int lane = threadIdx.x % 32;
  const int64_t o = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  float acc = 0.0f;  // a warp past the last row still runs the shuffles, on zeros
  if (o < O)
    for (int64_t r = lane; r < R; r += 32) acc += detail::to_f32(x[o * R + r]);
  acc = detail::warp_sum(acc);
  if (lane == 0 && o < O) out[o] = detail::from_f32<Tout>(acc * scale);
}

// Blocks (s, o): block s of row o sums its chunk of the row; writes out[o] (S == 1) or
// partial[s * O + o].
template <class Tin, class Tout>
__global__ void __launch_bounds__(kBlock) sum_rows_block_kernel(const Tin* __restrict__ x, Tout* __restrict__ out,
                                                                float* __restrict__ partial, int64_t O, int64_t R,
                                                                int64_t chunk, float scale) {
  DF_SHARED(float, scratch, kWarpsPerBlock);
  const int64_t s = blockIdx.x;
  const int64_t r0 = s * chunk, r1 = std::min(R, r0 + chunk);
  for (int64_t o = blockIdx.y; o < O; o += gridDim.y) {
    const Tin* row = x + o * R;
    float acc = 0.0f;
    for (int64_t r = r0 + threadIdx.x; r < r1; r += kBlock) acc += detail::to_f32(row[r]);
    const float total = detail::block_sum<kBlock>(acc, scratch);
    if (threadIdx.x == 0) {
      if (partial) partial[s * O + o] = total;
      else out[o] = detail::from_f32<Tout>(total * scale);
    }
  }
}

// Blocks (column tile, o, s): threads (tx, ty) = (threadIdx % 32, threadIdx / 32) sum column
// i = tile * 32 + tx over rows r0 + ty, r0 + ty + 8, ... of the chunk; the 8 row partials of a
// column are then added in ty order through shared memory.
template <class Tin, class Tout>
__global__ void __launch_bounds__(kBlock) sum_cols_kernel(const Tin* __restrict__ x, Tout* __restrict__ out,
                                                          float* __restrict__ partial, int64_t O, int64_t R, int64_t I,
                                                          int64_t chunk, float scale) {
  DF_SHARED2(float, sh, kColRows, kColWidth + 1);  // +1: no bank conflicts on the column read
  const int tx = threadIdx.x % kColWidth, ty = threadIdx.x / kColWidth;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kColWidth + tx;
  const int64_t s = blockIdx.z;
  const int64_t r0 = s * chunk, r1 = std::min(R, r0 + chunk);
  for (int64_t o = blockIdx.y; o < O; o += gridDim.y) {
    float acc = 0.0f;
    if (i < I)
      for (int64_t r = r0 + ty; r < r1; r += kColRows) acc += detail::to_f32(x[(o * R + r) * I + i]);
    sh[ty][tx] = acc;
    __syncthreads();
    if (ty == 0 && i < I) {
      float t = 0.0f;
      for (int k = 0; k < kColRows; ++k) t += sh[k][tx];
      if (partial) partial[(s * O + o) * I + i] = t;
      else out[o * I + i] = detail::from_f32<Tout>(t * scale);
    }
    __syncthreads();
  }
}

// out[j] = scale * sum_s partial[s * n + j], s in order.
template <class Tout>
__global__ void __launch_bounds__(kBlock) sum_partials_kernel(const float* __restrict__ partial, int64_t S, int64_t n,
                                                              Tout* __restrict__ out, float scale) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < n; j += stride) {
    float t = 0.0f;
    for (int64_t s = 0; s < S; ++s) t += partial[s * n + j];
    out[j] = detail::from_f32<Tout>(t * scale);
  }
}

template <class Tin, class Tout>
void run_pass(const Pass& s, const void* xv, void* outv, float* partial, float scale, void* stream) {
  const Tin* x = static_cast<const Tin*>(xv);
  Tout* out = static_cast<Tout*>(outv);
  float* part = s.S > 1 ? partial : nullptr;
  const unsigned gy = static_cast<unsigned>(std::max<int64_t>(1, std::min(s.O, kMaxGridY)));
  if (s.rows() && s.S == 1 && s.R < 1024) {
    const int64_t blocks = (s.O + kWarpsPerBlock - 1) / kWarpsPerBlock;
    DF_CHECK(blocks <= 0x7fffffff, "reduce_sum: ", s.O, " rows");
    DF_LAUNCH((sum_rows_warp_kernel<Tin, Tout>), dim3(static_cast<unsigned>(blocks)), dim3(kBlock), 0, stream, x, out,
              s.O, s.R, scale);
    return;
  }
  const int64_t chunk = (s.R + s.S - 1) / s.S;
  if (s.rows()) {
    DF_LAUNCH((sum_rows_block_kernel<Tin, Tout>), dim3(static_cast<unsigned>(s.S), gy), dim3(kBlock), 0, stream, x,
              out, part, s.O, s.R, chunk, scale);
  } else {
    const int64_t tiles = (s.I + kColWidth - 1) / kColWidth;
    DF_CHECK(tiles <= 0x7fffffff, "reduce_sum: ", s.I, " columns");
    DF_LAUNCH((sum_cols_kernel<Tin, Tout>), dim3(static_cast<unsigned>(tiles), gy, static_cast<unsigned>(s.S)),
              dim3(kBlock), 0, stream, x, out, part, s.O, s.R, s.I, chunk, scale);
  }
  if (part) {
    const int64_t n = s.O * s.I;
    DF_LAUNCH(sum_partials_kernel<Tout>, dim3(detail::grid_for(n, kBlock)), dim3(kBlock), 0, stream,
              static_cast<const float*>(part), s.S, n, out, scale);
  }
}

template <class Tin>
void run_pass_to(DType out_dtype, const Pass& s, const void* x, void* out, float* partial, float scale, void* stream) {
  if (out_dtype == DType::f32) return run_pass<Tin, float>(s, x, out, partial, scale, stream);
  return run_pass<Tin, __nv_bfloat16>(s, x, out, partial, scale, stream);
}

}  // namespace

void reduce_rows(const float* x, float* out, int64_t rows, int64_t cols, ReduceOp op, void* stream) {
  DF_CHECK(rows >= 0 && cols >= 0, "reduce_rows: negative size ", rows, " x ", cols);
  if (rows == 0) return;
  DF_CHECK(out && (x || cols == 0), "reduce_rows: null pointer");
  if (op == ReduceOp::sum) return reduce_rows_op<ReduceOp::sum>(x, out, rows, cols, stream);
  return reduce_rows_op<ReduceOp::sum_squares>(x, out, rows, cols, stream);
}

int64_t reduce_all_workspace(int64_t n) { return partial_blocks(n); }

void reduce_all(const float* x, int64_t n, ReduceOp op, float* workspace, float* out, void* stream) {
  DF_CHECK(n >= 0, "reduce_all: negative size ", n);
  DF_CHECK(out && workspace && (x || n == 0), "reduce_all: null pointer");
  if (op == ReduceOp::sum) return reduce_all_op<ReduceOp::sum>(x, n, workspace, out, stream);
  return reduce_all_op<ReduceOp::sum_squares>(x, n, workspace, out, stream);
}

std::size_t reduce_sum_workspace_bytes(const kernels::Dims& dims, unsigned axes_mask) {
  const Plan p = make_plan(dims, axes_mask);
  return static_cast<std::size_t>(2 * p.inter + p.partials) * sizeof(float);
}

void reduce_sum(const void* x, DType x_dtype, const kernels::Dims& dims, unsigned axes_mask, float scale, void* out,
                DType out_dtype, void* workspace, void* stream) {
  for (DType t : {x_dtype, out_dtype})
    DF_CHECK(t == DType::f32 || t == DType::bf16, "reduce_sum: dtype ", dtype_name(t), " (expected f32 or bf16)");
  DF_CHECK(dims.rank <= kernels::Dims::kMax && (axes_mask >> dims.rank) == 0u, "reduce_sum: axes mask ", axes_mask,
           " for rank ", dims.rank);
  const Plan p = make_plan(dims, axes_mask);
  const Pass& last = p.pass[p.passes - 1];
  if (last.O * last.I == 0) return;  // an empty result
  DF_CHECK(out && (x || dims.numel() == 0), "reduce_sum: null pointer");
  DF_CHECK(workspace || (p.inter == 0 && p.partials == 0), "reduce_sum: no workspace");
  // Workspace: two intermediates (f32, alternating) then the partial sums.
  float* inter[2] = {static_cast<float*>(workspace), static_cast<float*>(workspace) + p.inter};
  float* partial = static_cast<float*>(workspace) + 2 * p.inter;
  const void* src = x;
  DType src_dtype = x_dtype;
  for (int k = 0; k < p.passes; ++k) {
    const bool final_pass = k + 1 == p.passes;
    void* dst = final_pass ? out : inter[k % 2];
    const DType dst_dtype = final_pass ? out_dtype : DType::f32;
    const float sc = final_pass ? scale : 1.0f;
    if (src_dtype == DType::f32)
      run_pass_to<float>(dst_dtype, p.pass[k], src, dst, partial, sc, stream);
    else
      run_pass_to<__nv_bfloat16>(dst_dtype, p.pass[k], src, dst, partial, sc, stream);
    src = dst;
    src_dtype = dst_dtype;
  }
}

}  // namespace diffuse::DF_BACKEND
