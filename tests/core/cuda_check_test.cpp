// core/cuda_check.h against the CUDA runtime: a library call reports the runtime error it left
// pending (instead of our next launch taking the blame), and DIFFUSE_SYNC_LAUNCHES' wait is never
// made inside a graph capture. Built in the CUDA build only; the first test runs without a GPU
// too (the runtime's error state works without a driver).
#include <catch2/catch.hpp>

#if defined(DIFFUSE_HAVE_CUDA)
#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <string>

#include "core/check.h"
#include "core/cuda_check.h"
#include "core/device.h"
#include "core/stream.h"
#include "core/tensor.h"
#include "core/tensor_cuda.h"

using namespace diffuse;
using Catch::Matchers::Contains;

TEST_CASE("a cuBLAS check reports the CUDA error pending at its call", "[cpu][core][reliability]") {
  // cudaSetDevice on a device that does not exist fails and leaves its error pending, as a failed
  // launch inside a library would; cublasLtMatmulPreferenceCreate itself succeeds on the host.
  const cudaError_t set = cudaSetDevice(9999);
  REQUIRE(set != cudaSuccess);
  cublasLtMatmulPreference_t pref = nullptr;
  std::string msg;
  try {
    DF_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  } catch (const Error& e) {
    msg = e.what();
  }
  INFO(msg);
  CHECK_THAT(msg, Contains("cublasLtMatmulPreferenceCreate(&pref) failed"));
  CHECK_THAT(msg, Contains(cudaGetErrorName(set)));
  if (pref) cublasLtMatmulPreferenceDestroy(pref);
  if (cuda_available()) {
    // Reported once, at the call: the state is clear for the next launch.
    CHECK(cudaGetLastError() == cudaSuccess);
    pref = nullptr;
    DF_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    cublasLtMatmulPreferenceDestroy(pref);
  }
}

TEST_CASE("the runtime and driver report their versions", "[cuda][core]") {
  if (!cuda_available()) return;
  // `diffuse info` prints them; 0 would mean the query failed. CUDA writes 1000 major + 10 minor.
  CHECK(cuda_runtime_version() >= 12000);
  CHECK(cuda_driver_version() >= cuda_runtime_version());
}

TEST_CASE("a launch check reports the error the launch left, and clears it", "[cuda][core][reliability]") {
  if (!cuda_available()) return;
  // A bad configuration is reported by cudaGetLastError after the launch; a pending error from the
  // runtime stands in for it here.
  REQUIRE(cudaSetDevice(9999) != cudaSuccess);
  CHECK_THROWS_WITH(detail::cuda_check_launch("some_kernel", "k.cu", 7, nullptr),
                    Contains("launch of some_kernel failed: cudaErrorInvalidDevice"));
  CHECK(cudaGetLastError() == cudaSuccess);
  CHECK_NOTHROW(detail::cuda_check_launch("some_kernel", "k.cu", 7, nullptr));
}

TEST_CASE("a failed runtime check clears the error it reports", "[cuda][core][reliability]") {
  if (!cuda_available()) return;
  auto bad = [] { DF_CUDA_CHECK(cudaSetDevice(9999)); };
  CHECK_THROWS_WITH(bad(), Contains("cudaSetDevice(9999) failed"));
  CHECK(cudaGetLastError() == cudaSuccess);
}

TEST_CASE("the wait after a launch is skipped while a graph is being captured", "[cuda][core]") {
  if (!cuda_available()) return;
  set_current_device(Device::cuda(0));
  cudaStream_t s = nullptr, other = nullptr;
  REQUIRE(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess);
  REQUIRE(cudaStreamCreateWithFlags(&other, cudaStreamNonBlocking) == cudaSuccess);
  Tensor t = Tensor::empty({256}, DType::f32, Device::cuda(0));
  {
    StreamGuard guard(s);
    // Not capturing: the wait happens and reports the kernel's completion.
    cuda::tensor_fill(t.raw(), DType::f32, t.numel(), 1.0, s);
    CHECK(detail::may_wait_for(s, s));
    CHECK(detail::wait_after_launch(s, s) == cudaSuccess);

    REQUIRE(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal) == cudaSuccess);
    cuda::tensor_fill(t.raw(), DType::f32, t.numel(), 2.0, s);
    // The launch's stream is capturing; so is the current stream when a launch goes elsewhere.
    CHECK_FALSE(detail::may_wait_for(s, s));
    CHECK_FALSE(detail::may_wait_for(other, s));
    CHECK(detail::wait_after_launch(s, s) == cudaSuccess);
    CHECK_NOTHROW(detail::cuda_check_launch("tensor_fill", __FILE__, __LINE__, s));
    cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
    REQUIRE(cudaStreamIsCapturing(s, &st) == cudaSuccess);
    CHECK(st == cudaStreamCaptureStatusActive);  // not invalidated
    cudaGraph_t g = nullptr;
    REQUIRE(cudaStreamEndCapture(s, &g) == cudaSuccess);
    cudaGraphExec_t exec = nullptr;
    REQUIRE(cudaGraphInstantiate(&exec, g, 0) == cudaSuccess);
    REQUIRE(cudaGraphLaunch(exec, s) == cudaSuccess);
    REQUIRE(cudaStreamSynchronize(s) == cudaSuccess);
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(g);
    CHECK(t.to(Device::cpu()).to_vector()[255] == 2.0f);
  }
  cudaStreamDestroy(other);
  cudaStreamDestroy(s);
}

#endif
