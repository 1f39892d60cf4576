// kernels/cuda/reduce.cu: sums and sums of squares, over the rows of a matrix or over a whole
// flat buffer (the global gradient norm for clipping). Launchers in kernels/cuda/reduce.h.
//
// The shape of a reduction decides the parallelism:
//   - long rows (cols >= kLongRow): one block per row; each thread strides the row with 16-byte
//     loads, then the block combines its 256 partials with warp shuffles and one shared-memory
//     round (common.cuh block_sum);
//   - short rows: one warp per row, 8 rows per block, shuffles only, so a (B*T, C) tensor with
//     small C does not leave 7/8 of each block idle;
//   - a whole buffer: two launches. Up to 1024 blocks each write one partial, then one block of
//     1024 threads sums the partials. No atomics: the order of additions depends only on n, so the
//     norm (and hence clipping) is bit-reproducible run to run, which float atomics are not.
#include "kernels/cuda/portable.cuh"

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/reduce.h"

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

}  // namespace diffuse::DF_BACKEND
