// tests/simt/portable_sample.cu: the kernel-author contract of kernels/cuda/portable.cuh in one
// file that both builds compile (nvcc -std=c++20 -arch=sm_90 -c, and the host compiler with
// -DDIFFUSE_SIMT=1). tests/simt/portable_test.cpp includes it and runs it under the emulator.
#include "kernels/cuda/portable.cuh"

namespace diffuse::DF_BACKEND {

// y = a * x + (sum of x over the block), using every piece of the contract once.
template <int kBlock>
__global__ void __launch_bounds__(kBlock) sample_forward_kernel(const float* __restrict__ x, float* __restrict__ y,
                                                              float a, int n) {
  DF_SHARED(float, warp_sums, kBlock / 32);
  DF_SHARED2(float, grid2, 2, kBlock);
  float* dyn = DF_DYNAMIC_SHARED(float);
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  const float v = i < n ? x[i] : 0.0f;
  dyn[threadIdx.x] = v;
  grid2[1][threadIdx.x] = v;
  float s = v;
  for (int off = 16; off > 0; off /= 2) s += __shfl_down_sync(0xffffffffu, s, off);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = s;
  __syncthreads();
  float total = 0.0f;
  for (int w = 0; w < kBlock / 32; ++w) total += warp_sums[w];
  if (i < n) y[i] = a * dyn[threadIdx.x] + total + (grid2[1][threadIdx.x] - v);
}

void sample_forward(const float* x, float* y, float a, int n, df_stream_t stream) {
  constexpr int kBlock = 128;
  const int grid = (n + kBlock - 1) / kBlock;
  DF_LAUNCH((sample_forward_kernel<kBlock>), dim3(grid), dim3(kBlock), kBlock * sizeof(float), stream, x, y, a, n);
}

}  // namespace diffuse::DF_BACKEND
