#include <catch2/catch.hpp>

#include <vector>

#include "kernels/cuda/portable.cuh"

namespace diffuse::DF_BACKEND {
__global__ void __launch_bounds__(256) smoke_sum_kernel(const float* __restrict__ x, float* __restrict__ y, int n) {
  DF_SHARED(float, tile, 256);
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  tile[threadIdx.x] = i < n ? x[i] : 0.0f;
  __syncthreads();
  for (unsigned s = blockDim.x / 2; s > 0; s /= 2) {
    if (threadIdx.x < s) tile[threadIdx.x] += tile[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) y[blockIdx.x] = tile[0];
}
}  // namespace diffuse::DF_BACKEND

TEST_CASE("smoke: block sum", "[emu][simt]") {
  std::vector<float> x(1000), y(4);
  for (int i = 0; i < 1000; ++i) x[i] = float(i % 7);
  DF_LAUNCH(diffuse::emu::smoke_sum_kernel, dim3(4), dim3(256), 0, nullptr, x.data(), y.data(), 1000);
  float tot = 0;
  for (float v : y) tot += v;
  float ref = 0;
  for (float v : x) ref += v;
  CHECK(tot == ref);
}
