// The stream-ordered caching allocator for device memory (see core/allocator.h).
#include <cuda_runtime.h>

#include <map>
#include <mutex>
#include <vector>

#include "core/allocator.h"
#include "core/check.h"

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

void* cuda_allocate(size_t bytes, int device, void* stream) {
  size_t cls = allocation_size_class(bytes);
  DeviceCache& c = device_cache(device);
  std::lock_guard<std::mutex> lock(c.mu);
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
