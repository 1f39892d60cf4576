#include "core/stream.h"

#include <atomic>

#include "core/check.h"

#if defined(DIFFUSE_HAVE_CUDA)
#include <cuda_runtime.h>

#include "core/cuda_check.h"
#endif

namespace diffuse {

namespace {
thread_local void* g_stream = nullptr;
std::atomic<uint64_t> g_syncs{0};
}  // namespace

void* current_stream() { return g_stream; }
void set_current_stream(void* s) { g_stream = s; }
uint64_t host_syncs() { return g_syncs.load(); }

void synchronize(Device d) {
  if (d.is_cpu()) return;
#if defined(DIFFUSE_HAVE_CUDA)
  ++g_syncs;
  cudaError_t e = cudaStreamSynchronize(static_cast<cudaStream_t>(g_stream));
  DF_CHECK(e == cudaSuccess, "CUDA error while waiting for ", d.str(), ": ", cudaGetErrorString(e));
#else
  DF_FAIL("synchronize(", d.str(), ") in a build without CUDA");
#endif
}

#if defined(DIFFUSE_HAVE_CUDA)

CudaEvent::CudaEvent(Device d) {
  DF_CHECK(d.is_cuda(), "CudaEvent on ", d.str());
  set_current_device(d);
  cudaEvent_t e = nullptr;
  DF_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  event_ = e;
}

CudaEvent::~CudaEvent() {
  // Pending work that records it keeps the event alive until it completes (cudaEventDestroy).
  if (event_) cudaEventDestroy(static_cast<cudaEvent_t>(event_));
  (void)cudaGetLastError();
}

void CudaEvent::record(void* stream) {
  DF_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(event_), static_cast<cudaStream_t>(stream)));
  recorded_ = true;
}

void CudaEvent::block(void* stream) const {
  DF_CUDA_CHECK(cudaStreamWaitEvent(static_cast<cudaStream_t>(stream), static_cast<cudaEvent_t>(event_), 0));
}

bool CudaEvent::done() const {
  const cudaError_t e = cudaEventQuery(static_cast<cudaEvent_t>(event_));
  if (e == cudaErrorNotReady) {
    (void)cudaGetLastError();  // not an error: the answer "not yet"
    return false;
  }
  if (e != cudaSuccess) detail::cuda_fail(__FILE__, __LINE__, "cudaEventQuery(event)", e);
  return true;
}

void CudaEvent::synchronize() const {
  ++g_syncs;
  DF_CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(event_)));
}

void stream_wait(void* consumer, void* producer, Device d) {
  if (consumer == producer) return;
  CudaEvent e(d);
  e.record(producer);
  e.block(consumer);
}

#else

CudaEvent::CudaEvent(Device d) { DF_FAIL("CudaEvent on ", d.str(), " in a build without CUDA"); }
CudaEvent::~CudaEvent() = default;
void CudaEvent::record(void*) { DF_FAIL("CudaEvent in a build without CUDA"); }
void CudaEvent::block(void*) const { DF_FAIL("CudaEvent in a build without CUDA"); }
bool CudaEvent::done() const { return true; }
void CudaEvent::synchronize() const {}
void stream_wait(void*, void*, Device d) { DF_FAIL("stream_wait on ", d.str(), " in a build without CUDA"); }

#endif

}  // namespace diffuse
