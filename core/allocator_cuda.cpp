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

namespace diffuse {

namespace {

constexpr int kMaxDevices = 16;

struct DeviceCache {
  std::mutex mu;
  // (size class, stream) -> blocks last used on that stream
  std::map<std::pair<size_t, void*>, std::vector<void*>> free;
  MemoryStats stats;
};

DeviceCache& device_cache(int device) {
  static DeviceCache* caches = new DeviceCache[kMaxDevices];
  DF_CHECK(device >= 0 && device < kMaxDevices, "bad CUDA device index ", device);
  return caches[device];
}

void release_all(DeviceCache& c) {
  for (auto& [key, blocks] : c.free)
    for (void* p : blocks) cudaFree(p);
  c.free.clear();
  c.stats.cached_bytes = 0;
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
  // The graph's last replay may still be running: wait before its blocks serve anyone else.
  cudaDeviceSynchronize();
  std::lock_guard<std::mutex> lock(c.mu);
  for (auto& [cls, blocks] : pool->free)
    for (void* p : blocks) {
      owner().erase(p);
      c.free[{cls, nullptr}].push_back(p);  // ordered after everything by the wait above
    }
  // Blocks still held by live tensors (a graph's outputs) become ordinary: freed later, they go to
  // the shared cache.
  for (auto& [p, o] : owner())
    if (o == pool) o = nullptr;
  delete pool;
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
      return p;
    }
    void* p = nullptr;
    const cudaError_t e = cudaMalloc(&p, cls);
    if (e != cudaSuccess) {
      cudaGetLastError();
      c.stats.current_bytes -= cls;
      DF_FAIL("CUDA out of memory on cuda:", device, " while capturing a graph: asked for ", bytes, " bytes (",
              cudaGetErrorString(e), ")");
    }
    ++c.stats.system_allocs;
    owner()[p] = pool;
    return p;
  }
  auto it = c.free.find({cls, stream});
  if (it != c.free.end() && !it->second.empty()) {
    void* p = it->second.back();
    it->second.pop_back();
    c.stats.cached_bytes -= cls;
    ++c.stats.cache_hits;
  c.stats.current_bytes += cls;
    if (c.stats.current_bytes > c.stats.peak_bytes) c.stats.peak_bytes = c.stats.current_bytes;
    return p;
  }
  int prev = 0;
  cudaGetDevice(&prev);
  cudaSetDevice(device);
  void* p = nullptr;
  cudaError_t e = cudaMalloc(&p, cls);
  if (e == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    cudaDeviceSynchronize();  // blocks of other streams may still be in use until their work ends
    release_all(c);
    e = cudaMalloc(&p, cls);
  }
  if (e != cudaSuccess) {
    cudaGetLastError();
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    cudaSetDevice(prev);
    DF_FAIL("CUDA out of memory on cuda:", device, ": asked for ", bytes, " bytes, ", free_b,
            " bytes free of ", total_b, " (", cudaGetErrorString(e), ")");
  }
  cudaSetDevice(prev);
  ++c.stats.system_allocs;
  c.stats.current_bytes += cls;
  if (c.stats.current_bytes > c.stats.peak_bytes) c.stats.peak_bytes = c.stats.current_bytes;
  return p;
}

void cuda_deallocate(void* p, size_t bytes, int device, void* stream) {
  if (!p) return;
  size_t cls = allocation_size_class(bytes);
  DeviceCache& c = device_cache(device);
  std::lock_guard<std::mutex> lock(c.mu);
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
  c.free[{cls, stream}].push_back(p);
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
