// core/graph.cpp: the Philox seed word, DeviceStream and CudaGraph of core/graph.h. The pools
// behind a capture live in core/allocator_cuda.cpp with the rest of the device allocator.
#include "core/graph.h"

#include "core/check.h"
#include "core/stream.h"

#if defined(DIFFUSE_HAVE_CUDA)
#include <cuda_runtime.h>

#include "core/allocator.h"
#include "core/cuda_check.h"
#endif

namespace diffuse {

namespace {
thread_local const uint64_t* t_seed_xor = nullptr;
}  // namespace

const uint64_t* philox_seed_xor() { return t_seed_xor; }

PhiloxSeedXorScope::PhiloxSeedXorScope(const uint64_t* device_word) : prev_(t_seed_xor) { t_seed_xor = device_word; }
PhiloxSeedXorScope::~PhiloxSeedXorScope() { t_seed_xor = prev_; }

void run_captured(std::unique_ptr<CudaGraph>& graph, Device d, const std::function<void()>& body) {
  if (graph->ready()) {
    graph->replay();
    return;
  }
  body();
  graph->begin(d);
  try {
    body();  // recorded, not run: the replays execute it
  } catch (...) {
    graph = std::make_unique<CudaGraph>();  // abandons the capture and its memory
    throw;
  }
  graph->end();
}

#if defined(DIFFUSE_HAVE_CUDA)

DeviceStream::DeviceStream(Device d) : device_(d), prev_(current_stream()) {
  DF_CHECK(d.is_cuda(), "DeviceStream on ", d.str());
  set_current_device(d);
  // Once, at set-up: earlier work on the legacy stream (uploads of the weights) must be complete
  // before a non-blocking stream reads it.
  DF_CUDA_CHECK(cudaDeviceSynchronize());
  cudaStream_t s = nullptr;
  DF_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  stream_ = s;
  cuda_stream_created(d.index, stream_);
  set_current_stream(stream_);
}

namespace {

// Waits for the stream's work, so that no kernel still reads the blocks cached under it, and hands
// them to the allocator as idle (reusable by any stream) before the handle goes away.
void destroy_stream(Device d, void* stream) {
  cudaStreamSynchronize(static_cast<cudaStream_t>(stream));
  cuda_stream_destroyed(d.index, stream);
  cudaStreamDestroy(static_cast<cudaStream_t>(stream));
  (void)cudaGetLastError();  // a destructor cannot report; the next launch must not take the blame
}

}  // namespace

DeviceStream::~DeviceStream() {
  set_current_stream(prev_);
  destroy_stream(device_, stream_);
}

CudaStream::CudaStream(Device d) : device_(d) {
  DF_CHECK(d.is_cuda(), "CudaStream on ", d.str());
  set_current_device(d);
  DF_CUDA_CHECK(cudaDeviceSynchronize());  // as DeviceStream: earlier work on other streams is done
  cudaStream_t s = nullptr;
  DF_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  stream_ = s;
  cuda_stream_created(d.index, stream_);
}

CudaStream::~CudaStream() { destroy_stream(device_, stream_); }

struct CudaGraph::Impl {
  Device device;
  CudaGraphPool* pool = nullptr;
  cudaStream_t stream = nullptr;
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  bool capturing = false;
  // Recorded after each replay (on the stream it went to): the pool's blocks are free for others
  // once the last replay is done, which this says without waiting for the whole device.
  cudaEvent_t replayed = nullptr;
  bool replays_pending = false;

  void drop() {
    if (replays_pending) cudaEventSynchronize(replayed);
    replays_pending = false;
    if (exec) cudaGraphExecDestroy(exec);
    if (graph) cudaGraphDestroy(graph);
    exec = nullptr;
    graph = nullptr;
    if (pool) cuda_graph_pool_destroy(pool);
    pool = nullptr;
    (void)cudaGetLastError();  // drop runs in destructors, which cannot report
  }
};

CudaGraph::CudaGraph() : impl_(std::make_unique<Impl>()) {}

CudaGraph::~CudaGraph() {
  if (impl_->capturing) {
    cudaGraph_t g = nullptr;
    cudaStreamEndCapture(impl_->stream, &g);  // abandon a capture an exception interrupted
    if (g) cudaGraphDestroy(g);
    cuda_graph_pool_activate(nullptr);
  }
  impl_->drop();
  if (impl_->replayed) cudaEventDestroy(impl_->replayed);
  (void)cudaGetLastError();
}

void CudaGraph::begin(Device d) {
  DF_CHECK(!impl_->capturing, "CudaGraph::begin: already capturing");
  DF_CHECK(d.is_cuda(), "CudaGraph on ", d.str());
  DF_CHECK(current_stream() != nullptr, "CudaGraph::begin: the legacy default stream cannot be captured; run the ",
           "loop inside a DeviceStream");
  impl_->drop();
  set_current_device(d);
  impl_->device = d;
  impl_->stream = static_cast<cudaStream_t>(current_stream());
  if (!impl_->replayed) DF_CUDA_CHECK(cudaEventCreateWithFlags(&impl_->replayed, cudaEventDisableTiming));
  impl_->pool = cuda_graph_pool_create(d.index);
  cuda_graph_pool_activate(impl_->pool);
  // Thread-local: an unsafe call on this thread (a cudaMalloc, a synchronisation) fails the
  // capture instead of slipping past it; other threads are free. The pool's own cudaMalloc is
  // relaxed for its one call (core/allocator_cuda.cpp).
  const cudaError_t e = cudaStreamBeginCapture(impl_->stream, cudaStreamCaptureModeThreadLocal);
  if (e != cudaSuccess) {
    cuda_graph_pool_activate(nullptr);
    detail::cuda_fail(__FILE__, __LINE__, "cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal)", e);
  }
  impl_->capturing = true;
}

void CudaGraph::end() {
  DF_CHECK(impl_->capturing, "CudaGraph::end without begin");
  impl_->capturing = false;
  cuda_graph_pool_activate(nullptr);
  DF_CUDA_CHECK(cudaStreamEndCapture(impl_->stream, &impl_->graph));
  DF_CUDA_CHECK(cudaGraphInstantiate(&impl_->exec, impl_->graph, 0));
  // Moves the graph's set-up work to now, so the first replay costs what the others do.
  DF_CUDA_CHECK(cudaGraphUpload(impl_->exec, impl_->stream));
}

void CudaGraph::replay() {
  DF_CHECK(impl_->exec != nullptr, "CudaGraph::replay before a capture");
  const cudaStream_t s = static_cast<cudaStream_t>(current_stream());
  DF_CUDA_CHECK(cudaGraphLaunch(impl_->exec, s));
  DF_CUDA_CHECK(cudaEventRecord(impl_->replayed, s));
  impl_->replays_pending = true;
}

bool CudaGraph::ready() const { return impl_->exec != nullptr; }

void CudaGraph::reset() {
  DF_CHECK(!impl_->capturing, "CudaGraph::reset while capturing");
  impl_->drop();
}

#else  // no CUDA: nothing can be captured, and nothing asks to (no tensor lives on a GPU)

DeviceStream::DeviceStream(Device d) : device_(d) { DF_FAIL("DeviceStream on ", d.str(), ": ", cuda_unavailable_reason()); }
DeviceStream::~DeviceStream() = default;

CudaStream::CudaStream(Device d) : device_(d) { DF_FAIL("CudaStream on ", d.str(), ": ", cuda_unavailable_reason()); }
CudaStream::~CudaStream() = default;

struct CudaGraph::Impl {};
CudaGraph::CudaGraph() : impl_(std::make_unique<Impl>()) {}
CudaGraph::~CudaGraph() = default;
void CudaGraph::begin(Device d) { DF_FAIL("CudaGraph on ", d.str(), ": ", cuda_unavailable_reason()); }
void CudaGraph::end() { DF_FAIL("CudaGraph::end in a build without CUDA"); }
void CudaGraph::replay() { DF_FAIL("CudaGraph::replay in a build without CUDA"); }
bool CudaGraph::ready() const { return false; }
void CudaGraph::reset() {}

#endif

}  // namespace diffuse
