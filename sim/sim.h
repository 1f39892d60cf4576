// sim/sim.h: the simulated CUDA device's own interface, for what the CUDA API has no call for:
// the kernel launches of kernels/cuda sources compiled for it (kernels/cuda/portable.cuh, third
// mode), the caching allocator's hand-out and return of blocks (core/allocator_cuda.cpp), and
// the tests of the simulation itself. No CUDA header is included here: the .cu sources compiled
// for the simulated device see kernels/simt's CUDA types, which would clash with the toolkit's.
//
// The device (DIFFUSE_CUDA=SIM, docs/kernels.md "The simulated device"): the CUDA runtime,
// cuBLAS(Lt) and cuDNN calls that diffuse makes, implemented on the CPU from NVIDIA's
// documentation, against the toolkit's real headers. Device memory is host memory behind guard
// pages; streams are queues that run when something waits for them; kernels run through
// kernels/simt; graph capture records into graphs that launches replay. The rules of capture and
// stream ordering are enforced: what a GPU punishes (sometimes only by a wrong answer, sometimes
// never on the machine at hand) is an error here, with a message naming what broke the rule.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

struct CUstream_st;  // cudaStream_t is CUstream_st* in the CUDA headers

namespace diffuse::sim {

// One kernel launch, built by DF_LAUNCH (sim/launch.h). The simulated stream runs it (or a
// captured graph replays it) when its turn comes; run() executes the whole grid.
class KernelLaunch {
 public:
  virtual ~KernelLaunch() = default;
  virtual void run() = 0;

  // Where it comes from, for messages.
  const char* kernel = "";
  const char* file = "";
  int line = 0;
  unsigned grid[3] = {1, 1, 1}, block[3] = {1, 1, 1};
  std::size_t smem = 0;  // dynamic shared memory, bytes

  // The kernel's parameters as they lie in memory, for finding the device memory a launch uses:
  // pointer parameters exactly (const-qualified pointees are read, others written), other
  // parameters (structs of pointers) word by word.
  struct Param {
    std::size_t offset = 0, size = 0;
    bool pointer = false, to_const = false;
  };
  const unsigned char* params = nullptr;
  std::vector<Param> param_info;
};

// Queues the launch on `stream` (or records it into the graph the stream is capturing). Returns
// a cudaError_t: a bad configuration (block or grid extents, more dynamic shared memory than a
// launch without the opt-in attribute may have) or a stream that cannot take work now.
int launch_kernel(CUstream_st* stream, std::unique_ptr<KernelLaunch> launch);

// With DIFFUSE_SYNC_LAUNCHES: waits for `stream` after a launch (unless it, or the legacy stream
// it stands for, is being captured), as the GPU build's wait_after_launch does, so that a fault is
// reported at its launch. Returns a cudaError_t.
int wait_after_launch(CUstream_st* stream);

// cudaGetErrorName / cudaGetErrorString, for code that cannot include the CUDA headers.
const char* error_name(int error);
const char* error_string(int error);

// cudaMemsetAsync / cudaMemcpyAsync (cudaMemcpyDefault), for the same code.
int memset_async(void* p, int value, std::size_t bytes, CUstream_st* stream);
int memcpy_async(void* dst, const void* src, std::size_t bytes, CUstream_st* stream);

// ---- the caching allocator's hooks (core/allocator_cuda.cpp, in SIM builds only) -------------
// The allocator keeps cudaMalloc'd blocks and hands them out again without CUDA seeing it, so it
// tells the device. block_handed_out: block `p` now holds `bytes` for work on `stream` (a
// cudaStream_t, nullptr for the legacy stream). In stream order, the bytes past `bytes` become a
// canary (a kernel writing there is reported) and the first `bytes` are poisoned with 0xFF (NaN
// in every float type), so that reading what no one wrote shows. Returns an empty string, or the
// report of a hazard that the GPU would not announce: the block was last used by work on another
// stream that is not ordered before `stream` (no event, no host wait between), or an existing
// graph still uses it. block_returned: the tensor in it is gone (in `stream`'s order), so a kernel
// writing into it afterwards is reported.
std::string block_handed_out(void* p, std::size_t bytes, void* stream);
void block_returned(void* p, void* stream);

// ---- for tests of the simulation --------------------------------------------------------------
// Every rule violation and fault the device has reported since the last clear, one line each.
std::vector<std::string> reports();
void clear_reports();
// Faults in executed work leave a sticky error, as on a GPU (every later call fails with it):
// this clears it, so that a test of the fault can go on.
void clear_sticky_error();
// Counters since the start of the process.
struct Counters {
  uint64_t kernels = 0, copies = 0, library_calls = 0, graph_launches = 0, host_waits = 0;
};
Counters counters();

}  // namespace diffuse::sim
