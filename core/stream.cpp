#include "core/stream.h"

#include <atomic>

#include "core/check.h"

#if defined(DIFFUSE_HAVE_CUDA)
#include <cuda_runtime.h>
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

}  // namespace diffuse
