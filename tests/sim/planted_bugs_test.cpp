// The simulated device (DIFFUSE_CUDA=SIM) catches what a GPU punishes, each with a message that
// names what broke the rule: a kernel writing past a device allocation (or past the tensor the
// caching allocator placed in a block), a synchronisation or an unsafe call during graph capture,
// the legacy stream or pageable memory in a capture, a block passed between streams without an
// order, a free of memory that queued work or a graph still uses. Each bug is planted in a small
// program (tests/sim/planted_kernels.cu has the kernels) and the test checks the error code and
// the message.
#include <catch2/catch.hpp>

#include <cuda_runtime.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "core/allocator.h"
#include "core/device.h"
#include "core/graph.h"
#include "core/stream.h"
#include "core/tensor.h"
#include "sim/sim.h"

namespace diffuse::cuda {
void sim_test_write_one_past(float* p, int n, void* stream);
void sim_test_fill(float* p, float value, int n, void* stream);
void sim_test_big_shared(float* p, void* stream);
}  // namespace diffuse::cuda

using namespace diffuse;
using Catch::Matchers::Contains;

namespace {

// Everything the device reported since the last clear, as one text.
std::string reported() {
  std::string all;
  for (const std::string& r : sim::reports()) all += r + "\n";
  return all;
}

struct ChildResult {
  std::string err;
  bool signaled = false;
  int sig = 0, code = -1;
};

// Runs fn in a child process with its stderr captured: for faults that end a process, as an
// illegal address ends a GPU context.
ChildResult in_child(const std::function<void()>& fn) {
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::dup2(fds[1], 2);
    ::close(fds[0]);
    fn();
    ::_exit(0);
  }
  ::close(fds[1]);
  ChildResult r;
  char buf[4096];
  for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) > 0;) r.err.append(buf, static_cast<size_t>(n));
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  r.signaled = WIFSIGNALED(status);
  r.sig = r.signaled ? WTERMSIG(status) : 0;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

cudaStream_t new_stream(unsigned flags = cudaStreamNonBlocking) {
  cudaStream_t s = nullptr;
  REQUIRE(cudaStreamCreateWithFlags(&s, flags) == cudaSuccess);
  return s;
}

}  // namespace

TEST_CASE("a kernel writing one element past a device allocation is caught and named", "[cuda][sim]") {
  REQUIRE(cuda_available());
  set_current_device(Device::cuda(0));
  sim::clear_reports();

  // The allocation's end lies against a guard page (4096 bytes is a multiple of cudaMalloc's
  // 256-byte alignment): the write faults, and the process dies naming the kernel and the
  // allocation, as a GPU context dies of cudaErrorIllegalAddress.
  const ChildResult r = in_child([] {
    float* p = nullptr;
    if (cudaMalloc(&p, 1024 * sizeof(float)) != cudaSuccess) ::_exit(3);
    cuda::sim_test_write_one_past(p, 1024, nullptr);
    cudaDeviceSynchronize();
  });
  INFO(r.err);
  CHECK(r.signaled);
  CHECK(r.sig == SIGSEGV);
  CHECK_THAT(r.err, Contains("illegal address"));
  CHECK_THAT(r.err, Contains("write_one_past_kernel"));
  CHECK_THAT(r.err, Contains("past the end of device allocation #"));
  CHECK_THAT(r.err, Contains("(4096 bytes at"));

  // Inside the rounding to 256 bytes: the bytes behind the end are a canary, checked after the
  // kernel runs; the device then fails every call (a sticky error), as a GPU does.
  float* p = nullptr;
  REQUIRE(cudaMalloc(&p, 1000 * sizeof(float)) == cudaSuccess);
  cuda::sim_test_write_one_past(p, 1000, nullptr);
  CHECK(cudaDeviceSynchronize() == cudaErrorIllegalAddress);
  CHECK(cudaGetLastError() == cudaErrorIllegalAddress);  // sticky: not cleared by reading it
  CHECK_THAT(reported(), Contains("write_one_past_kernel"));
  CHECK_THAT(reported(), Contains("wrote bytes [4000, 4004) of device allocation #"));
  CHECK_THAT(reported(), Contains("past its end"));
  sim::clear_sticky_error();
  CHECK(cudaFree(p) == cudaSuccess);

  // A tensor: the caching allocator's block is larger than the tensor (size classes); writing
  // past the tensor's end is caught there too, and named with both sizes.
  sim::clear_reports();
  {
    Tensor t = Tensor::empty({999}, DType::f32, Device::cuda(0));
    cuda::sim_test_write_one_past(t.data<float>(), 999, nullptr);
    CHECK(cudaDeviceSynchronize() == cudaErrorIllegalAddress);
    CHECK_THAT(reported(), Contains("past the end of the 3996-byte tensor that the caching allocator placed in it"));
    sim::clear_sticky_error();
  }
  // A correct kernel on the same memory is quiet.
  sim::clear_reports();
  {
    Tensor t = Tensor::empty({999}, DType::f32, Device::cuda(0));
    cuda::sim_test_fill(t.data<float>(), 2.f, 999, nullptr);
    CHECK(cudaDeviceSynchronize() == cudaSuccess);
    CHECK(t.to(Device::cpu()).to_vector().at(998) == 2.f);
  }
  CHECK(sim::reports().empty());
}

TEST_CASE("a kernel writing into a freed tensor's block is caught", "[cuda][sim]") {
  set_current_device(Device::cuda(0));
  sim::clear_reports();
  float* stale = nullptr;
  {
    Tensor t = Tensor::empty({256}, DType::f32, Device::cuda(0));
    stale = t.data<float>();
  }
  cuda::sim_test_fill(stale, 1.f, 256, nullptr);  // the block is back in the cache
  CHECK(cudaDeviceSynchronize() == cudaErrorIllegalAddress);
  CHECK_THAT(reported(), Contains("whose tensor had been freed (use after free)"));
  sim::clear_sticky_error();
  cuda_empty_cache(0);
}

TEST_CASE("a launch over the limits of a launch without opt-in is refused at the launch", "[cuda][sim]") {
  set_current_device(Device::cuda(0));
  sim::clear_reports();
  Tensor t = Tensor::empty({32}, DType::f32, Device::cuda(0));
  CHECK_THROWS_WITH(cuda::sim_test_big_shared(t.data<float>(), nullptr),
                    Contains("cudaErrorInvalidValue") && Contains("big_shared_kernel"));
  CHECK_THAT(reported(), Contains("65536 bytes of dynamic shared memory: over 48 KiB needs cudaFuncSetAttribute"));
}

TEST_CASE("a synchronisation during capture is refused and invalidates the capture", "[cuda][sim]") {
  set_current_device(Device::cuda(0));
  sim::clear_reports();
  float* p = nullptr;
  REQUIRE(cudaMalloc(&p, 256 * sizeof(float)) == cudaSuccess);
  cudaStream_t s = new_stream();

  SECTION("cudaStreamSynchronize of the capturing stream") {
    REQUIRE(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal) == cudaSuccess);
    cuda::sim_test_fill(p, 1.f, 256, s);
    CHECK(cudaStreamSynchronize(s) == cudaErrorStreamCaptureUnsupported);
    CHECK_THAT(reported(), Contains("cudaStreamSynchronize of stream"));
    cudaStreamCaptureStatus st;
    REQUIRE(cudaStreamIsCapturing(s, &st) == cudaSuccess);
    CHECK(st == cudaStreamCaptureStatusInvalidated);
    cudaGraph_t g = reinterpret_cast<cudaGraph_t>(1);
    CHECK(cudaStreamEndCapture(s, &g) == cudaErrorStreamCaptureInvalidated);
    CHECK(g == nullptr);
  }
  SECTION("cudaDeviceSynchronize, and a potentially unsafe cudaMalloc, during a capture") {
    REQUIRE(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal) == cudaSuccess);
    CHECK(cudaDeviceSynchronize() == cudaErrorStreamCaptureUnsupported);
    cudaGraph_t g = nullptr;
    CHECK(cudaStreamEndCapture(s, &g) == cudaErrorStreamCaptureInvalidated);
    (void)cudaGetLastError();
    // cudaMalloc in the capturing thread: refused in thread-local mode, allowed once relaxed.
    REQUIRE(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal) == cudaSuccess);
    cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
    REQUIRE(cudaThreadExchangeStreamCaptureMode(&mode) == cudaSuccess);
    void* q = nullptr;
    CHECK(cudaMalloc(&q, 64) == cudaSuccess);
    REQUIRE(cudaThreadExchangeStreamCaptureMode(&mode) == cudaSuccess);
    CHECK(mode == cudaStreamCaptureModeRelaxed);
    void* r = nullptr;
    CHECK(cudaMalloc(&r, 64) == cudaErrorStreamCaptureUnsupported);
    CHECK_THAT(reported(), Contains("cudaMalloc while a stream is being captured (by this thread)"));
    CHECK(cudaStreamEndCapture(s, &g) == cudaErrorStreamCaptureInvalidated);
    (void)cudaGetLastError();
    CHECK(cudaFree(q) == cudaSuccess);
  }
  SECTION("the legacy stream while a blocking stream is captured") {
    cudaStream_t b = new_stream(cudaStreamDefault);
    REQUIRE(cudaStreamBeginCapture(b, cudaStreamCaptureModeGlobal) == cudaSuccess);
    CHECK(cudaMemsetAsync(p, 0, 1024, nullptr) == cudaErrorStreamCaptureImplicit);
    CHECK_THAT(reported(), Contains("on the legacy default stream while a blocking stream is being captured"));
    cudaGraph_t g = nullptr;
    CHECK(cudaStreamEndCapture(b, &g) == cudaErrorStreamCaptureInvalidated);
    (void)cudaGetLastError();
    // A non-blocking stream's capture leaves the legacy stream usable.
    REQUIRE(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal) == cudaSuccess);
    CHECK(cudaMemsetAsync(p, 0, 1024, nullptr) == cudaSuccess);
    REQUIRE(cudaStreamEndCapture(s, &g) == cudaSuccess);
    CHECK(cudaGraphDestroy(g) == cudaSuccess);
    CHECK(cudaStreamDestroy(b) == cudaSuccess);
  }
  SECTION("pageable host memory in a captured copy") {
    std::vector<float> host(256, 1.f);
    REQUIRE(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal) == cudaSuccess);
    CHECK(cudaMemcpyAsync(p, host.data(), 1024, cudaMemcpyHostToDevice, s) == cudaErrorStreamCaptureUnsupported);
    CHECK_THAT(reported(), Contains("with pageable host memory (source) on a capturing stream"));
    cudaGraph_t g = nullptr;
    CHECK(cudaStreamEndCapture(s, &g) == cudaErrorStreamCaptureInvalidated);
    (void)cudaGetLastError();
    // Page-locked memory may be captured.
    float* pinned = nullptr;
    REQUIRE(cudaHostAlloc(reinterpret_cast<void**>(&pinned), 1024, cudaHostAllocDefault) == cudaSuccess);
    REQUIRE(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal) == cudaSuccess);
    CHECK(cudaMemcpyAsync(p, pinned, 1024, cudaMemcpyHostToDevice, s) == cudaSuccess);
    REQUIRE(cudaStreamEndCapture(s, &g) == cudaSuccess);
    CHECK(cudaGraphDestroy(g) == cudaSuccess);
    CHECK(cudaFreeHost(pinned) == cudaSuccess);
  }
  SECTION("an event recorded outside the capture, and a fork never joined") {
    cudaEvent_t outside = nullptr, fork = nullptr;
    REQUIRE(cudaEventCreateWithFlags(&outside, cudaEventDisableTiming) == cudaSuccess);
    REQUIRE(cudaEventCreateWithFlags(&fork, cudaEventDisableTiming) == cudaSuccess);
    cudaStream_t other = new_stream();
    REQUIRE(cudaEventRecord(outside, other) == cudaSuccess);
    REQUIRE(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal) == cudaSuccess);
    CHECK(cudaStreamWaitEvent(s, outside, 0) == cudaErrorStreamCaptureIsolation);
    cudaGraph_t g = nullptr;
    CHECK(cudaStreamEndCapture(s, &g) == cudaErrorStreamCaptureInvalidated);
    (void)cudaGetLastError();
    // Fork: `other` joins the capture through an event and does work that `s` never waits for.
    REQUIRE(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal) == cudaSuccess);
    REQUIRE(cudaEventRecord(fork, s) == cudaSuccess);
    REQUIRE(cudaStreamWaitEvent(other, fork, 0) == cudaSuccess);
    cuda::sim_test_fill(p, 3.f, 256, other);
    CHECK(cudaStreamEndCapture(s, &g) == cudaErrorStreamCaptureUnjoined);
    CHECK_THAT(reported(), Contains("forked from the capture and was not joined back"));
    (void)cudaGetLastError();
    cudaEventDestroy(outside);
    cudaEventDestroy(fork);
    cudaStreamDestroy(other);
  }
  SECTION("through the project: diffuse::synchronize inside a CudaGraph capture") {
    DeviceStream ds(Device::cuda(0));
    CudaGraph g;
    g.begin(Device::cuda(0));
    CHECK_THROWS_WITH(diffuse::synchronize(Device::cuda(0)), Contains("operation not permitted when stream is capturing"));
    CHECK_THROWS_WITH(g.end(), Contains("cudaErrorStreamCaptureInvalidated"));
    (void)cudaGetLastError();
  }
  CHECK(cudaStreamDestroy(s) == cudaSuccess);
  CHECK(cudaDeviceSynchronize() == cudaSuccess);
  CHECK(cudaFree(p) == cudaSuccess);
}

TEST_CASE("a block reused on another stream without an event is reported", "[cuda][sim]") {
  const Device gpu = Device::cuda(0);
  set_current_device(gpu);
  for (bool join : {false, true}) {
    INFO("an event from the writer's stream before the reuse: " << join);
    CudaStream a(gpu), b(gpu);
    sim::clear_reports();
    {
      StreamGuard ga(a.stream());
      Tensor t = Tensor::empty({4096}, DType::f32, gpu);           // allocated for work on a
      cuda::sim_test_fill(t.data<float>(), 1.f, 4096, b.stream());  // but written on b
      if (join) stream_wait(a.stream(), b.stream(), gpu);          // a waits for b
    }  // freed: cached under a
    StreamGuard ga(a.stream());
    if (!join) {
      // The cache hands the block to new work on a, which may run before b's write.
      CHECK_THROWS_WITH(Tensor::empty({4096}, DType::f32, gpu),
                        Contains("is not ordered before that stream's work (no event or host wait in between)"));
      CHECK_THAT(reported(), Contains("kernel fill_kernel"));
    } else {
      CHECK_NOTHROW(Tensor::empty({4096}, DType::f32, gpu));
      CHECK(sim::reports().empty());
    }
  }
}

TEST_CASE("freeing memory that queued work or a graph still uses is refused", "[cuda][sim]") {
  set_current_device(Device::cuda(0));
  sim::clear_reports();
  float* p = nullptr;
  REQUIRE(cudaMalloc(&p, 256 * sizeof(float)) == cudaSuccess);
  cudaStream_t s = new_stream();
  cuda::sim_test_fill(p, 1.f, 256, s);  // queued, not run: nothing waited for it
  CHECK(cudaFree(p) == cudaErrorIllegalState);
  CHECK_THAT(reported(), Contains("while queued work still uses it (kernel fill_kernel"));
  REQUIRE(cudaStreamSynchronize(s) == cudaSuccess);

  // A graph that uses it: the graph's next launch would touch freed memory.
  REQUIRE(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal) == cudaSuccess);
  cuda::sim_test_fill(p, 2.f, 256, s);
  cudaGraph_t g = nullptr;
  REQUIRE(cudaStreamEndCapture(s, &g) == cudaSuccess);
  cudaGraphExec_t x = nullptr;
  REQUIRE(cudaGraphInstantiate(&x, g, 0) == cudaSuccess);
  CHECK(cudaFree(p) == cudaErrorIllegalState);
  CHECK_THAT(reported(), Contains("while a CUDA graph that uses it exists"));
  REQUIRE(cudaGraphLaunch(x, s) == cudaSuccess);
  REQUIRE(cudaStreamSynchronize(s) == cudaSuccess);
  float back = 0;
  REQUIRE(cudaMemcpy(&back, p + 255, sizeof back, cudaMemcpyDeviceToHost) == cudaSuccess);
  CHECK(back == 2.f);
  CHECK(cudaGraphExecDestroy(x) == cudaSuccess);
  CHECK(cudaGraphDestroy(g) == cudaSuccess);
  CHECK(cudaFree(p) == cudaSuccess);
  CHECK(cudaStreamDestroy(s) == cudaSuccess);
  (void)cudaGetLastError();
}

TEST_CASE("host code reading device memory faults, named", "[cuda][sim]") {
  // Device memory is not the host's: a dereference outside the device's own work faults, as on a
  // GPU, and the message names the allocation (in a child process: the fault ends it).
  const ChildResult r = in_child([] {
    float* p = nullptr;
    if (cudaMalloc(&p, 64 * sizeof(float)) != cudaSuccess) ::_exit(3);
    cuda::sim_test_fill(p, 1.f, 64, nullptr);
    cudaDeviceSynchronize();
    volatile float x = p[3];  // the bug: a device pointer read on the host
    (void)x;
  });
  INFO(r.err);
  CHECK(r.signaled);
  CHECK_THAT(r.err, Contains("host code accessed"));
  CHECK_THAT(r.err, Contains("byte 12 of device allocation #"));
  CHECK_THAT(r.err, Contains("device memory is not the host's"));
}

TEST_CASE("a stream reading what another stream writes, without an event, is a race", "[cuda][sim]") {
  set_current_device(Device::cuda(0));
  cudaStream_t a = new_stream(), b = new_stream();
  float *x = nullptr, *y = nullptr;
  REQUIRE(cudaMalloc(&x, 256 * sizeof(float)) == cudaSuccess);
  REQUIRE(cudaMalloc(&y, 256 * sizeof(float)) == cudaSuccess);
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  sim::clear_reports();
  // Ordered by an event: quiet.
  cudaEvent_t e = nullptr;
  REQUIRE(cudaEventCreateWithFlags(&e, cudaEventDisableTiming) == cudaSuccess);
  cuda::sim_test_fill(x, 1.f, 256, a);
  REQUIRE(cudaEventRecord(e, a) == cudaSuccess);
  REQUIRE(cudaStreamWaitEvent(b, e, 0) == cudaSuccess);
  REQUIRE(cudaMemcpyAsync(y, x, 1024, cudaMemcpyDeviceToDevice, b) == cudaSuccess);
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  CHECK(sim::reports().empty());
  // Not ordered: b's copy may read x before or after a's second write. The call that makes the
  // race fails (and the device with it, as after a fault).
  cuda::sim_test_fill(x, 2.f, 256, a);
  CHECK(cudaMemcpyAsync(y, x, 1024, cudaMemcpyDeviceToDevice, b) == cudaErrorLaunchFailure);
  CHECK(cudaDeviceSynchronize() == cudaErrorLaunchFailure);
  CHECK_THAT(reported(), Contains("stream race on device allocation #"));
  CHECK_THAT(reported(), Contains("cudaMemcpyAsync on stream"));
  CHECK_THAT(reported(), Contains("kernel fill_kernel"));
  sim::clear_sticky_error();
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  cudaEventDestroy(e);
  cudaStreamDestroy(a);
  cudaStreamDestroy(b);
  CHECK(cudaFree(x) == cudaSuccess);
  CHECK(cudaFree(y) == cudaSuccess);
}
