// The stream-ordered caching allocator for device memory (see core/allocator.h), and the private
// pools of CUDA-graph captures (core/graph.h).
#include <cuda_runtime.h>

#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "core/allocator.h"
#include "core/check.h"
#include "core/graph.h"
#include "core/stream.h"

#if defined(DIFFUSE_CUDA_SIM)
#include "sim/sim.h"
#endif

namespace diffuse {

namespace {

constexpr int kMaxDevices = 16;

struct DeviceCache {
  std::mutex mu;
  DeviceBlockCache free;
  MemoryStats stats;
};

DeviceCache& device_cache(int device) {
  static DeviceCache* caches = new DeviceCache[kMaxDevices];
  DF_CHECK(device >= 0 && device < kMaxDevices, "bad CUDA device index ", device);
  return caches[device];
}

void release_all(DeviceCache& c) {
  c.free.release_all([](void* p) { cudaFree(p); });
  (void)cudaGetLastError();  // a failed free leaves nothing for the next launch to be blamed for
  c.stats.cached_bytes = 0;
}

// A capture runs in cudaStreamCaptureModeThreadLocal, where cudaMalloc on the capturing thread
// would invalidate it. The pool's own cudaMalloc is safe (the graph keeps the block for as long
// as it lives, and a replay does not need it re-made), so this thread is relaxed around that one
// call, and its previous mode comes back however the call ends.
class RelaxedCaptureMode {
 public:
  RelaxedCaptureMode() { ok_ = cudaThreadExchangeStreamCaptureMode(&mode_) == cudaSuccess; }
  ~RelaxedCaptureMode() {
    if (ok_) cudaThreadExchangeStreamCaptureMode(&mode_);
  }
  RelaxedCaptureMode(const RelaxedCaptureMode&) = delete;
  RelaxedCaptureMode& operator=(const RelaxedCaptureMode&) = delete;

 private:
  cudaStreamCaptureMode mode_ = cudaStreamCaptureModeRelaxed;
  bool ok_ = false;
};

// The simulated device (DIFFUSE_CUDA=SIM) cannot see the cache's hand-outs and returns through
// cudaMalloc and cudaFree, so it is told (sim/sim.h): it checks that a block passes between
// streams only in an order, and watches for writes past a tensor's end or after its free.
void* handed_out(void* p, size_t bytes, void* stream) {
#if defined(DIFFUSE_CUDA_SIM)
  const std::string hazard = sim::block_handed_out(p, bytes, stream);
  DF_CHECK(hazard.empty(), "the caching allocator: ", hazard);
#else
  (void)bytes, (void)stream;
#endif
  return p;
}
void returned(void* p, void* stream) {
#if defined(DIFFUSE_CUDA_SIM)
  sim::block_returned(p, stream);
#else
  (void)p, (void)stream;
#endif
}

}  // namespace

// A capture's blocks: the size classes it has free, and every block it ever took from the driver.
// Pool blocks are recorded in `owner` (under the device cache's mutex) so that a free, from any
// thread and after the capture, finds its way back to the pool while the graph lives.
struct CudaGraphPool {
  int device = 0;
  std::map<size_t, std::vector<void*>> free;
};

namespace {

thread_local CudaGraphPool* t_pool = nullptr;

std::unordered_map<void*, CudaGraphPool*>& owner() {
  static auto* m = new std::unordered_map<void*, CudaGraphPool*>;  // never destroyed, like the caches
  return *m;
}

void count_alloc(MemoryStats& st, size_t cls) {
  st.current_bytes += cls;
  if (st.current_bytes > st.peak_bytes) st.peak_bytes = st.current_bytes;
}

}  // namespace

CudaGraphPool* cuda_graph_pool_create(int device) {
  device_cache(device);  // checks the index
  auto* p = new CudaGraphPool;
  p->device = device;
  return p;
}

void cuda_graph_pool_activate(CudaGraphPool* pool) { t_pool = pool; }

void cuda_graph_pool_destroy(CudaGraphPool* pool) {
  if (!pool) return;
  DeviceCache& c = device_cache(pool->device);
  std::lock_guard<std::mutex> lock(c.mu);
  // The caller waited for the graph's last replay (core/graph.cpp): no queued work uses these.
  for (auto& [cls, blocks] : pool->free)
    for (void* p : blocks) {
      owner().erase(p);
      c.free.put_idle(p, cls);
    }
  // Blocks still held by live tensors (a graph's outputs) become ordinary: freed later, they go to
  // the shared cache.
  for (auto& [p, o] : owner())
    if (o == pool) o = nullptr;
  delete pool;
}

void cuda_stream_created(int device, void* stream) {
  DeviceCache& c = device_cache(device);
  std::lock_guard<std::mutex> lock(c.mu);
  c.free.revive(stream);
}

void cuda_stream_destroyed(int device, void* stream) {
  DeviceCache& c = device_cache(device);
  std::lock_guard<std::mutex> lock(c.mu);
  c.free.retire(stream);
}

void* cuda_allocate(size_t bytes, int device, void* stream) {
  size_t cls = allocation_size_class(bytes);
  DeviceCache& c = device_cache(device);
  std::lock_guard<std::mutex> lock(c.mu);
  if (CudaGraphPool* pool = t_pool; pool && pool->device == device) {
    auto& blocks = pool->free[cls];
    count_alloc(c.stats, cls);
    if (!blocks.empty()) {
      void* p = blocks.back();
      blocks.pop_back();
      c.stats.cached_bytes -= cls;
      ++c.stats.cache_hits;
      return handed_out(p, bytes, stream);
    }
    // An idle block has no queued work: the graph may own it (an earlier graph's memory, say).
    if (void* p = c.free.take_idle(cls)) {
      c.stats.cached_bytes -= cls;
      ++c.stats.cache_hits;
      owner()[p] = pool;
      return handed_out(p, bytes, stream);
    }
    void* p = nullptr;
    cudaError_t e = cudaSuccess;
    {
      RelaxedCaptureMode relaxed;
      e = cudaMalloc(&p, cls);
    }
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      c.stats.current_bytes -= cls;
      DF_FAIL("CUDA out of memory on cuda:", device, " while capturing a graph: asked for ", bytes, " bytes (",
              cudaGetErrorString(e), ")");
    }
    ++c.stats.system_allocs;
    owner()[p] = pool;
    return handed_out(p, bytes, stream);
  }
  if (void* p = c.free.take(cls, stream)) {
    c.stats.cached_bytes -= cls;
    ++c.stats.cache_hits;
    count_alloc(c.stats, cls);
    return handed_out(p, bytes, stream);
  }
  int prev = 0;
  cudaGetDevice(&prev);
  cudaSetDevice(device);
  void* p = nullptr;
  cudaError_t e = cudaMalloc(&p, cls);
  if (e == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();
    cudaDeviceSynchronize();  // blocks of other streams may still be in use until their work ends
    release_all(c);
    e = cudaMalloc(&p, cls);
  }
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    cudaSetDevice(prev);
    (void)cudaGetLastError();
    DF_FAIL("CUDA out of memory on cuda:", device, ": asked for ", bytes, " bytes, ", free_b,
            " bytes free of ", total_b, " (", cudaGetErrorString(e), ")");
  }
  cudaSetDevice(prev);
  ++c.stats.system_allocs;
  count_alloc(c.stats, cls);
  return handed_out(p, bytes, stream);
}

void cuda_deallocate(void* p, size_t bytes, int device, void* stream) {
  if (!p) return;
  size_t cls = allocation_size_class(bytes);
  DeviceCache& c = device_cache(device);
  std::lock_guard<std::mutex> lock(c.mu);
  returned(p, stream);
  if (!owner().empty()) {
    auto it = owner().find(p);
    if (it != owner().end()) {
      CudaGraphPool* pool = it->second;
      if (pool) {
        pool->free[cls].push_back(p);
        c.stats.current_bytes -= cls;
        c.stats.cached_bytes += cls;
        return;
      }
      owner().erase(it);  // an orphan of a destroyed graph: an ordinary block from now on
    }
  }
  c.free.put(p, cls, stream, current_stream());
  c.stats.current_bytes -= cls;
  c.stats.cached_bytes += cls;
}

MemoryStats cuda_memory_stats(int device) {
  DeviceCache& c = device_cache(device);
  std::lock_guard<std::mutex> lock(c.mu);
  return c.stats;
}

void cuda_reset_peak(int device) {
  DeviceCache& c = device_cache(device);
  std::lock_guard<std::mutex> lock(c.mu);
  c.stats.peak_bytes = c.stats.current_bytes;
}

void cuda_empty_cache(int device) {
  DeviceCache& c = device_cache(device);
  std::lock_guard<std::mutex> lock(c.mu);
  cudaDeviceSynchronize();
  release_all(c);
}

}  // namespace diffuse
