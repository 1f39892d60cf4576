// core/graph.cpp: the Philox seed word, DeviceStream and CudaGraph of core/graph.h. The pools
// behind a capture live in core/allocator_cuda.cpp with the rest of the device allocator.
#include "core/graph.h"

#include "core/check.h"
#include "core/stream.h"

#if defined(DIFFUSE_HAVE_CUDA)
#include <cuda_runtime.h>

#include "core/cuda_check.h"
#endif

namespace diffuse {

namespace {
thread_local const uint64_t* t_seed_xor = nullptr;
}  // namespace

const uint64_t* philox_seed_xor() { return t_seed_xor; }

PhiloxSeedXorScope::PhiloxSeedXorScope(const uint64_t* device_word) : prev_(t_seed_xor) { t_seed_xor = device_word; }
PhiloxSeedXorScope::~PhiloxSeedXorScope() { t_seed_xor = prev_; }

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
  set_current_stream(stream_);
}

DeviceStream::~DeviceStream() {
  set_current_stream(prev_);
  // Tensors freed later may have been allocated on this stream: their blocks stay in the cache
  // under this stream's key and are never handed to another stream, so nothing can run on a
  // destroyed stream. Wait for it before destroying it, so that no kernel still reads them.
  cudaStreamSynchronize(static_cast<cudaStream_t>(stream_));
  cudaStreamDestroy(static_cast<cudaStream_t>(stream_));
}

CudaStream::CudaStream(Device d) : device_(d) {
  DF_CHECK(d.is_cuda(), "CudaStream on ", d.str());
  set_current_device(d);
  DF_CUDA_CHECK(cudaDeviceSynchronize());  // as DeviceStream: earlier work on other streams is done
  cudaStream_t s = nullptr;
  DF_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  stream_ = s;
}

CudaStream::~CudaStream() {
  cudaStreamSynchronize(static_cast<cudaStream_t>(stream_));
  cudaStreamDestroy(static_cast<cudaStream_t>(stream_));
}

struct CudaGraph::Impl {
  Device device;
  CudaGraphPool* pool = nullptr;
  cudaStream_t stream = nullptr;
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  bool capturing = false;

  void drop() {
    if (exec) cudaGraphExecDestroy(exec);
    if (graph) cudaGraphDestroy(graph);
    exec = nullptr;
    graph = nullptr;
    if (pool) cuda_graph_pool_destroy(pool);
    pool = nullptr;
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
  impl_->pool = cuda_graph_pool_create(d.index);
  cuda_graph_pool_activate(impl_->pool);
  // Relaxed: this thread's allocator may call cudaMalloc for the pool while capturing.
  const cudaError_t e = cudaStreamBeginCapture(impl_->stream, cudaStreamCaptureModeRelaxed);
  if (e != cudaSuccess) {
    cuda_graph_pool_activate(nullptr);
    DF_CUDA_CHECK(e);
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
  DF_CUDA_CHECK(cudaGraphLaunch(impl_->exec, static_cast<cudaStream_t>(current_stream())));
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
