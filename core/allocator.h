// core/allocator.h: caching allocators for host and device memory.
//
// Both keep freed blocks in per-size free lists and hand them out again, so a training step
// allocates nothing from the system once the first step has run. Sizes are rounded to classes
// (64 B steps up to 4 KiB, then four classes per power of two: at most 25% slack).
//
// The CUDA allocator is stream-ordered: a block freed while work on stream S may still read it is
// reused only by later work on S (a block carries the stream it was allocated on). A block whose
// work is known to be complete (its stream was destroyed after waiting for it, or the graph that
// used it waited for its last replay) is idle: any stream may take it. So no block passes from one
// live stream to another without a wait between. On out-of-memory it empties its cache and retries
// once, then throws with the bytes asked for and the bytes free.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "core/device.h"

namespace diffuse {

struct MemoryStats {
  size_t current_bytes = 0;   // in live tensors
  size_t peak_bytes = 0;      // max of current_bytes since start (or reset_peak)
  size_t cached_bytes = 0;    // held in free lists
  uint64_t system_allocs = 0; // calls into malloc / cudaMalloc
  uint64_t cache_hits = 0;    // allocations served from the free lists
};

// The size class of a request. Requests too large for any class (within 2^62 of SIZE_MAX, more
// than any machine has) throw diffuse::Error instead of wrapping around to a small block.
size_t allocation_size_class(size_t bytes);

// Host memory, 64-byte aligned (one cache line; AVX-512 loads).
void* cpu_allocate(size_t bytes);
void cpu_deallocate(void* p, size_t bytes);
MemoryStats cpu_memory_stats();
void cpu_reset_peak();
void cpu_empty_cache();

// Caps the host memory that tensors allocated on this thread may take while the scope lives: an
// allocation that would take the scope's total (size classes, freed blocks not credited back)
// past `bytes` throws diffuse::Error naming `what` and both numbers. For building something whose
// size an untrusted file decides: a checkpoint whose config describes a model far larger than the
// weights it holds is refused instead of allocated. Scopes nest; the innermost one is charged.
class HostAllocationLimit {
 public:
  HostAllocationLimit(size_t bytes, const char* what);
  ~HostAllocationLimit();
  HostAllocationLimit(const HostAllocationLimit&) = delete;
  HostAllocationLimit& operator=(const HostAllocationLimit&) = delete;
  void charge(size_t bytes);  // throws when over the limit

 private:
  size_t limit_, used_ = 0;
  const char* what_;
  HostAllocationLimit* outer_;
};

// Device memory on `device`, ordered on `stream` (a cudaStream_t, or nullptr for the default).
void* cuda_allocate(size_t bytes, int device, void* stream);
void cuda_deallocate(void* p, size_t bytes, int device, void* stream);
MemoryStats cuda_memory_stats(int device);
void cuda_reset_peak(int device);
void cuda_empty_cache(int device);
// A stream's life, for the cache (core/graph.cpp's CudaStream and DeviceStream call them). Call
// destroyed after the stream's work is complete: its cached blocks become idle, and blocks of
// tensors that outlive it are cached, when freed, under the stream of the thread that frees them.
// created forgets an earlier destroyed stream that had the same handle.
void cuda_stream_created(int device, void* stream);
void cuda_stream_destroyed(int device, void* stream);

// The free lists of the device allocator: host bookkeeping only (allocator_cuda.cpp makes the CUDA
// calls and holds the lock). Streams are opaque keys; nullptr is the legacy default stream.
class DeviceBlockCache {
 public:
  // A block freed on `stream`: later work on that stream may reuse it. Freed on a destroyed
  // stream, it goes to `current`, the freeing thread's stream, where it was most likely last used.
  void put(void* p, size_t cls, void* stream, void* current);
  // A block that no queued work uses: any stream may take it.
  void put_idle(void* p, size_t cls);
  // A block for work on `stream`: one freed on it, else an idle one; nullptr when there is none.
  void* take(size_t cls, void* stream);
  void* take_idle(size_t cls);
  // The stream's work is complete and it is gone: its blocks become idle.
  void retire(void* stream);
  void revive(void* stream);  // a new stream that reuses a destroyed one's handle
  bool retired(void* stream) const { return retired_.count(stream) != 0; }
  size_t cached_bytes() const { return bytes_; }
  // Hands every block to `release` (cudaFree) and forgets them.
  template <class F>
  void release_all(F release) {
    for (auto& [key, blocks] : by_stream_)
      for (void* p : blocks) release(p);
    for (auto& [cls, blocks] : idle_)
      for (void* p : blocks) release(p);
    by_stream_.clear();
    idle_.clear();
    bytes_ = 0;
  }

 private:
  std::map<std::pair<size_t, void*>, std::vector<void*>> by_stream_;  // (class, stream) -> blocks
  std::map<size_t, std::vector<void*>> idle_;
  std::unordered_set<void*> retired_;
  size_t bytes_ = 0;
};

}  // namespace diffuse
