#include "core/allocator.h"

#include <cstdlib>
#include <limits>
#include <map>
#include <mutex>
#include <vector>

#include "core/check.h"

namespace diffuse {

size_t allocation_size_class(size_t bytes) {
  if (bytes == 0) return 64;
  if (bytes <= 4096) return (bytes + 63) & ~size_t{63};
  int top = 63 - __builtin_clzll(bytes);    // floor(log2(bytes))
  size_t step = size_t{1} << (top - 2);     // four classes per octave
  // Rounding up must not wrap: near SIZE_MAX it would hand back a tiny block for a huge request.
  DF_CHECK(bytes <= std::numeric_limits<size_t>::max() - (step - 1), "cannot allocate ", bytes,
           " bytes: more than any machine has");
  return (bytes + step - 1) & ~(step - 1);
}

namespace {
thread_local HostAllocationLimit* t_limit = nullptr;
}  // namespace

HostAllocationLimit::HostAllocationLimit(size_t bytes, const char* what)
    : limit_(bytes), what_(what), outer_(t_limit) {
  t_limit = this;
}

HostAllocationLimit::~HostAllocationLimit() { t_limit = outer_; }

void HostAllocationLimit::charge(size_t bytes) {
  DF_CHECK(bytes <= limit_ - used_, what_, " needs more than ", limit_, " bytes of host memory (",
           used_, " allocated, ", bytes, " more asked for)");
  used_ += bytes;
}

namespace {

struct HostCache {
  std::mutex mu;
  std::map<size_t, std::vector<void*>> free;  // size class -> blocks
  MemoryStats stats;
};

HostCache& host_cache() {
  static HostCache* c = new HostCache;  // never destroyed: tensors may outlive static teardown
  return *c;
}

}  // namespace

void* cpu_allocate(size_t bytes) {
  size_t cls = allocation_size_class(bytes);
  if (t_limit) t_limit->charge(cls);
  HostCache& c = host_cache();
  {
    std::lock_guard<std::mutex> lock(c.mu);
    auto it = c.free.find(cls);
    c.stats.current_bytes += cls;
    if (c.stats.current_bytes > c.stats.peak_bytes) c.stats.peak_bytes = c.stats.current_bytes;
    if (it != c.free.end() && !it->second.empty()) {
      void* p = it->second.back();
      it->second.pop_back();
      c.stats.cached_bytes -= cls;
      ++c.stats.cache_hits;
      return p;
    }
    ++c.stats.system_allocs;
  }
  void* p = std::aligned_alloc(64, cls);
  if (!p) {
    cpu_empty_cache();
    p = std::aligned_alloc(64, cls);
  }
  if (!p) {
    std::lock_guard<std::mutex> lock(c.mu);
    c.stats.current_bytes -= cls;
    DF_FAIL("out of host memory: could not allocate ", bytes, " bytes");
  }
  return p;
}

void cpu_deallocate(void* p, size_t bytes) {
  if (!p) return;
  size_t cls = allocation_size_class(bytes);
  HostCache& c = host_cache();
  std::lock_guard<std::mutex> lock(c.mu);
  c.free[cls].push_back(p);
  c.stats.current_bytes -= cls;
  c.stats.cached_bytes += cls;
}

MemoryStats cpu_memory_stats() {
  HostCache& c = host_cache();
  std::lock_guard<std::mutex> lock(c.mu);
  return c.stats;
}

void cpu_reset_peak() {
  HostCache& c = host_cache();
  std::lock_guard<std::mutex> lock(c.mu);
  c.stats.peak_bytes = c.stats.current_bytes;
}

void cpu_empty_cache() {
  HostCache& c = host_cache();
  std::lock_guard<std::mutex> lock(c.mu);
  for (auto& [cls, blocks] : c.free)
    for (void* p : blocks) std::free(p);
  c.free.clear();
  c.stats.cached_bytes = 0;
}

void DeviceBlockCache::put(void* p, size_t cls, void* stream, void* current) {
  if (retired(stream)) stream = current;
  by_stream_[{cls, stream}].push_back(p);
  bytes_ += cls;
}

void DeviceBlockCache::put_idle(void* p, size_t cls) {
  idle_[cls].push_back(p);
  bytes_ += cls;
}

void* DeviceBlockCache::take(size_t cls, void* stream) {
  auto it = by_stream_.find({cls, stream});
  if (it != by_stream_.end() && !it->second.empty()) {
    void* p = it->second.back();
    it->second.pop_back();
    bytes_ -= cls;
    return p;
  }
  return take_idle(cls);
}

void* DeviceBlockCache::take_idle(size_t cls) {
  auto it = idle_.find(cls);
  if (it == idle_.end() || it->second.empty()) return nullptr;
  void* p = it->second.back();
  it->second.pop_back();
  bytes_ -= cls;
  return p;
}

void DeviceBlockCache::retire(void* stream) {
  DF_CHECK(stream != nullptr, "the legacy default stream is never destroyed");
  retired_.insert(stream);
  for (auto it = by_stream_.begin(); it != by_stream_.end();) {
    if (it->first.second == stream) {
      auto& idle = idle_[it->first.first];
      idle.insert(idle.end(), it->second.begin(), it->second.end());
      it = by_stream_.erase(it);
    } else {
      ++it;
    }
  }
}

void DeviceBlockCache::revive(void* stream) { retired_.erase(stream); }

#if !defined(DIFFUSE_HAVE_CUDA)
// Without the CUDA backend no tensor can live on a GPU; these are reached only by a bug.
void* cuda_allocate(size_t, int, void*) { DF_FAIL("CUDA allocation in a build without CUDA"); }
void cuda_deallocate(void*, size_t, int, void*) {}
MemoryStats cuda_memory_stats(int) { return {}; }
void cuda_reset_peak(int) {}
void cuda_empty_cache(int) {}
void cuda_stream_created(int, void*) {}
void cuda_stream_destroyed(int, void*) {}
#endif

}  // namespace diffuse
