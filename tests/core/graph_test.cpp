// core/graph.h and core/stream.h on a GPU ([cuda]): a capture is thread-local, with only the graph
// pool's own cudaMalloc relaxed (and the thread's mode restored after it); events order work
// between streams. Without CUDA ([cpu]): the refusals.
#include <catch2/catch.hpp>

#include <memory>
#include <thread>
#include <vector>

#include "core/allocator.h"
#include "core/check.h"
#include "core/device.h"
#include "core/graph.h"
#include "core/stream.h"
#include "core/tensor.h"

#if defined(DIFFUSE_HAVE_CUDA)
#include <cuda_runtime_api.h>
#endif

using namespace diffuse;

TEST_CASE("events refuse a build without CUDA", "[cpu][core]") {
#if !defined(DIFFUSE_HAVE_CUDA)
  CHECK_THROWS_AS(CudaEvent(Device::cuda(0)), Error);
  CHECK_THROWS_AS(stream_wait(nullptr, nullptr, Device::cuda(0)), Error);
#else
  CHECK_THROWS_AS(CudaEvent(Device::cpu()), Error);
#endif
}

#if defined(DIFFUSE_HAVE_CUDA)

namespace {

cudaStreamCaptureMode thread_mode() {
  cudaStreamCaptureMode m = cudaStreamCaptureModeRelaxed;
  cudaThreadExchangeStreamCaptureMode(&m);  // read it by swapping in relaxed...
  cudaStreamCaptureMode back = m;
  cudaThreadExchangeStreamCaptureMode(&back);  // ...and back
  return m;
}

}  // namespace

TEST_CASE("a capture is thread-local; the pool's cudaMalloc alone is relaxed", "[cuda][core]") {
  if (!cuda_available()) return;
  const Device gpu = Device::cuda(0);
  CudaStream s(gpu);
  StreamGuard guard(s.stream());
  Tensor out = Tensor::zeros({1000}, DType::f32, gpu);
  synchronize(gpu);
  const cudaStreamCaptureMode before = thread_mode();
  CudaGraph g;
  g.begin(gpu);
  {
    cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
    unsigned long long id = 0;
    REQUIRE(cudaStreamGetCaptureInfo(static_cast<cudaStream_t>(s.stream()), &st, &id) == cudaSuccess);
    CHECK(st == cudaStreamCaptureStatusActive);
    // A size class never used before: the pool must cudaMalloc it while capturing.
    const MemoryStats m0 = cuda_memory_stats(gpu.index);
    Tensor tmp = Tensor::full({9 * 1024 * 1024 + 3}, 4.0, DType::f32, gpu);
    CHECK(cuda_memory_stats(gpu.index).system_allocs == m0.system_allocs + 1);
    CHECK(thread_mode() == before);  // restored after the allocation
    out.copy_(tmp.slice(0, 1000));
    // Another thread may allocate and synchronise while this one captures (thread-local mode).
    cudaError_t other = cudaErrorUnknown;
    std::thread t([&] {
      cudaSetDevice(0);
      void* p = nullptr;
      other = cudaMalloc(&p, 1 << 20);
      if (other == cudaSuccess) other = cudaFree(p);
    });
    t.join();
    CHECK(other == cudaSuccess);
  }
  REQUIRE_NOTHROW(g.end());
  out.zero_();
  g.replay();
  CHECK(out.to(Device::cpu()).to_vector()[999] == 4.0f);
}

TEST_CASE("an event orders a tensor written on one stream before its read on another", "[cuda][core]") {
  if (!cuda_available()) return;
  const Device gpu = Device::cuda(0);
  CudaStream a(gpu), b(gpu);
  const int64_t n = int64_t{1} << 24;
  Tensor t = Tensor::zeros({n}, DType::f32, gpu);
  synchronize(gpu);
  for (int round = 1; round <= 5; ++round) {
    {
      StreamGuard on_a(a.stream());
      for (int k = 0; k < 4; ++k) t.fill_(static_cast<double>(round));  // a long write on a
    }
    stream_wait(b.stream(), a.stream(), gpu);
    StreamGuard on_b(b.stream());
    Tensor last = t.slice(n - 1, n).to(Device::cpu());  // read on b, after the wait
    CHECK(last.to_vector()[0] == static_cast<float>(round));
  }
  CudaEvent e(gpu);
  CHECK(e.done());  // never recorded
  e.record(a.stream());
  e.synchronize();
  CHECK(e.done());
}

TEST_CASE("a graph dropped mid-capture abandons the capture; reset drops a graph", "[cuda][core]") {
  if (!cuda_available()) return;
  const Device gpu = Device::cuda(0);
  CudaStream s(gpu);
  StreamGuard guard(s.stream());
  const cudaStream_t cs = static_cast<cudaStream_t>(s.stream());
  auto capturing = [&] {
    cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
    REQUIRE(cudaStreamIsCapturing(cs, &st) == cudaSuccess);
    return st != cudaStreamCaptureStatusNone;
  };
  Tensor out = Tensor::zeros({64}, DType::f32, gpu);
  synchronize(gpu);
  {  // An exception between begin and end: the destructor ends the capture and frees its pool.
    auto g = std::make_unique<CudaGraph>();
    g->begin(gpu);
    out.fill_(3.0);
    CHECK(capturing());
    g.reset();
    CHECK_FALSE(capturing());
  }
  // The stream and the allocator work as before: a fill runs, an allocation comes from the cache.
  out.fill_(5.0);
  CHECK(out.to(Device::cpu()).to_vector()[63] == 5.0f);

  CudaGraph g;
  CHECK_THROWS_WITH(g.replay(), Catch::Matchers::Contains("before a capture"));
  g.begin(gpu);
  CHECK_THROWS_WITH(g.reset(), Catch::Matchers::Contains("while capturing"));
  out.fill_(7.0);
  g.end();
  CHECK(g.ready());
  out.zero_();
  g.replay();
  CHECK(out.to(Device::cpu()).to_vector()[0] == 7.0f);
  g.reset();  // dropped: nothing to replay until the next capture
  CHECK_FALSE(g.ready());
  CHECK_THROWS_WITH(g.replay(), Catch::Matchers::Contains("before a capture"));
}

TEST_CASE("a capture that cannot begin is refused, and leaves no pool active", "[cuda][core]") {
  if (!cuda_available()) return;
  const Device gpu = Device::cuda(0);
  CudaStream s(gpu);
  StreamGuard guard(s.stream());
  const cudaStream_t cs = static_cast<cudaStream_t>(s.stream());
  // The stream is already being captured (by hand): a second capture of it cannot begin.
  REQUIRE(cudaStreamBeginCapture(cs, cudaStreamCaptureModeThreadLocal) == cudaSuccess);
  CudaGraph g;
  CHECK_THROWS_WITH(g.begin(gpu), Catch::Matchers::Contains("cudaStreamBeginCapture"));
  cudaGraph_t raw = nullptr;
  REQUIRE(cudaStreamEndCapture(cs, &raw) == cudaSuccess);
  if (raw) cudaGraphDestroy(raw);
  (void)cudaGetLastError();
  // No pool was left active: a new size class comes from the shared cache, outside any capture.
  const MemoryStats m0 = cuda_memory_stats(gpu.index);
  Tensor t = Tensor::full({7 * 1024 * 1024 + 11}, 1.0, DType::f32, gpu);
  synchronize(gpu);
  CHECK(cuda_memory_stats(gpu.index).system_allocs == m0.system_allocs + 1);
  CHECK(t.slice(0, 1).to(Device::cpu()).to_vector()[0] == 1.0f);
}

#endif
