// tests/sim/planted_kernels.cu: kernels with planted bugs, compiled for the simulated device
// (cmake/DiffuseTargets.cmake builds tests/sim/*.cu so), for tests/sim/planted_bugs_test.cpp.
#include "kernels/cuda/portable.cuh"

#include <cstdint>

namespace diffuse::DF_BACKEND {

// p[i] = i for i in [0, n]: one element more than the n the caller's buffer has.
__global__ void write_one_past_kernel(float* p, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i <= n) p[i] = static_cast<float>(i);
}

// p[i] = value for i in [0, n): correct, for the tests that need a plain writer.
__global__ void fill_kernel(float* p, float value, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) p[i] = value;
}

void sim_test_write_one_past(float* p, int n, void* stream) {
  DF_LAUNCH(write_one_past_kernel, dim3((n + 1 + 127) / 128), dim3(128), 0, stream, p, n);
}

void sim_test_fill(float* p, float value, int n, void* stream) {
  DF_LAUNCH(fill_kernel, dim3((n + 127) / 128), dim3(128), 0, stream, p, value, n);
}

// A launch with more dynamic shared memory than 48 KiB, without the opt-in attribute.
__global__ void big_shared_kernel(float* p) {
  float* s = DF_DYNAMIC_SHARED(float);
  s[threadIdx.x] = 1.f;
  __syncthreads();
  p[threadIdx.x] = s[threadIdx.x];
}

void sim_test_big_shared(float* p, void* stream) {
  DF_LAUNCH(big_shared_kernel, dim3(1), dim3(32), 64 * 1024, stream, p);
}

}  // namespace diffuse::DF_BACKEND
