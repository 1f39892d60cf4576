// core/graph.h: what a CUDA-graph capture needs from the layers below it.
//
// A CUDA graph records the kernels issued on a stream once and replays them with one launch,
// which removes the per-kernel launch cost (several microseconds each, hundreds per UNet step).
// Three things make a loop replayable:
//   1. Memory. Every allocation made while capturing comes from a pool that belongs to the graph
//      and is never handed to anyone else while the graph lives: a replay writes exactly the
//      addresses it wrote when captured, so no other tensor may hold them. Blocks freed during
//      capture go back to the same pool and are reused by later allocations of the capture, in
//      the stream order that the replay repeats.
//   2. Inputs. Kernel arguments are frozen at capture; what changes between replays lives in
//      device memory the graph reads (static input buffers, filled before each replay, e.g. with
//      tensor_upload).
//   3. Randomness. Kernels that draw Philox numbers (dropout, the sampler step) combine their
//      seed with a device word, seed ^ *word, read when they run (PhiloxSeedXorScope): rewriting
//      the word before a replay gives the replay its own noise.
// DeviceStream runs a scope on a stream of its own: the legacy default stream cannot be captured.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

#include "core/device.h"

namespace diffuse {

// The device word (or null) that Philox-drawing CUDA launchers XOR into their seed.
const uint64_t* philox_seed_xor();

class PhiloxSeedXorScope {
 public:
  explicit PhiloxSeedXorScope(const uint64_t* device_word);
  ~PhiloxSeedXorScope();
  PhiloxSeedXorScope(const PhiloxSeedXorScope&) = delete;
  PhiloxSeedXorScope& operator=(const PhiloxSeedXorScope&) = delete;

 private:
  const uint64_t* prev_;
};

// A non-blocking CUDA stream made current for the scope (the previous one is restored). Creating
// it waits once for the device, so that work queued earlier on other streams (a model's upload,
// say) is done before this stream, which does not synchronise with them, starts.
class DeviceStream {
 public:
  explicit DeviceStream(Device d);
  ~DeviceStream();
  DeviceStream(const DeviceStream&) = delete;
  DeviceStream& operator=(const DeviceStream&) = delete;
  void* stream() const { return stream_; }

 private:
  Device device_;
  void* stream_ = nullptr;
  [[maybe_unused]] void* prev_ = nullptr;  // used by the CUDA build only
};

// A non-blocking CUDA stream that an object keeps for its loops (a device sampler, a training
// step): unlike DeviceStream it is not made current; the owner selects it around each use with
// StreamGuard(stream()). Creating it waits once for the device (see DeviceStream); destroying it
// waits for the work queued on it.
class CudaStream {
 public:
  explicit CudaStream(Device d);
  ~CudaStream();
  CudaStream(const CudaStream&) = delete;
  CudaStream& operator=(const CudaStream&) = delete;
  void* stream() const { return stream_; }
  Device device() const { return device_; }

 private:
  Device device_;
  void* stream_ = nullptr;
};

// One captured graph. begin() starts capturing the current stream (not the legacy default one),
// with allocations served from the graph's own pool; end() finishes and instantiates it; replay()
// launches it on the current stream. Destroying it returns its memory to the device cache (after
// waiting for its last replay). Capture is in cudaStreamCaptureModeThreadLocal: other threads may
// keep working, and on this thread only the graph pool's own cudaMalloc is relaxed.
class CudaGraph {
 public:
  CudaGraph();
  ~CudaGraph();
  CudaGraph(const CudaGraph&) = delete;
  CudaGraph& operator=(const CudaGraph&) = delete;

  void begin(Device d);
  void end();
  void replay();
  bool ready() const;
  void reset();  // drop the graph and its memory (a new capture follows, e.g. for a new shape)

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// A loop run through a captured graph, for a body whose kernel arguments are the same at every call
// (what changes lives in device memory it reads): while `graph` holds no capture, `body` runs as
// it is (the warm-up: cuDNN's algorithm search and cuBLASLt's heuristics wait for the GPU, which
// a capture cannot) and is then recorded into `graph`, not run; once captured, each call replays
// it on the current stream. A capture that throws leaves a fresh, empty graph (the interrupted
// capture and its memory released) and rethrows, so a later call captures again.
void run_captured(std::unique_ptr<CudaGraph>& graph, Device d, const std::function<void()>& body);

// Allocation pools for graph capture (core/allocator_cuda.cpp). While a pool is active on the
// calling thread, cuda_allocate serves that thread from it; blocks it handed out return to it when
// freed, whoever frees them, for as long as it lives.
struct CudaGraphPool;
CudaGraphPool* cuda_graph_pool_create(int device);
// After the graph's last replay is done: free blocks become idle (any stream may take them), live
// ones are orphaned (ordinary blocks when freed).
void cuda_graph_pool_destroy(CudaGraphPool* pool);
void cuda_graph_pool_activate(CudaGraphPool* pool);  // nullptr: back to the shared cache

}  // namespace diffuse
