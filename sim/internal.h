// sim/internal.h: the simulated device's state, shared by the runtime (sim/runtime.cpp,
// sim/device.cpp) and the libraries (sim/cublas.cpp, sim/cudnn.cpp). Not installed, not included
// outside sim/.
//
// The model. Device memory is host memory: each allocation is its own mapping, its end against a
// PROT_NONE guard page. A stream is a queue of operations; nothing runs when it is queued, only
// when the host waits for it (a stream, event or device synchronisation, a synchronous copy) or
// when another stream's operation that waits for it runs. So work that the host reads without
// waiting for, or that one stream reads from another without an event, reads stale memory, as a
// GPU running behind would let it, and the tests see wrong answers. DIFFUSE_SIM_EAGER=1 runs every
// operation when it is queued instead (the other order a GPU allows).
//
// Ordering is also tracked as it is declared, with vector clocks: each stream knows, for every
// other stream, the last operation that is ordered before its next one (through events, the
// legacy stream's implicit synchronisation, or a host wait followed by queueing). That lets the
// device say when a block of memory goes from one stream to another without an order between
// them, which a GPU only punishes sometimes.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "sim/sim.h"

namespace diffuse::sim {

// The one lock: every entry point takes it, and queued work runs under it.
std::recursive_mutex& lock();
using Guard = std::lock_guard<std::recursive_mutex>;

// ---- reports -----------------------------------------------------------------------------------
// A rule violation or fault: printed to stderr ("diffuse sim: ...") and kept for sim::reports().
void report(const std::string& text);
// The CUDA error the calling thread's next cudaGetLastError returns; `e` is returned for chaining.
cudaError_t set_error(cudaError_t e);
// A fault in work that ran: the device is unusable from now on (every call returns `e`), as a
// GPU context is after an illegal address or a failed launch.
void set_sticky(cudaError_t e, const std::string& text);
cudaError_t sticky();

// ---- memory ------------------------------------------------------------------------------------
struct Allocation {
  uint64_t id = 0;
  char* base = nullptr;  // what cudaMalloc / cudaHostAlloc returned
  std::size_t size = 0;  // what was asked for
  char* map = nullptr;   // the whole mapping, guard page included
  std::size_t map_bytes = 0;
  bool host = false;   // cudaHostAlloc: page-locked host memory, which kernels may also read
  bool freed = false;  // kept mapped PROT_NONE, so a later access names it
  // The caching allocator's current tenant (block_handed_out): bytes in use, as the host sees it
  // (queue time) and as queued work sees it (run time). size when the allocator has said nothing.
  std::size_t tenant_host = 0, tenant_run = 0;
  bool tenant_live = true;  // false once block_returned ran
  // The last operation of each stream that used it (stream id -> sequence number).
  std::map<uint64_t, uint64_t> last_use;
  std::map<uint64_t, std::string> last_use_name;
  // The last write and the reads since, for the check of unordered accesses from two streams.
  struct Access {
    uint64_t stream = 0, seq = 0;
    std::string name;
  };
  bool written = false;
  Access last_write;
  std::map<uint64_t, Access> reads;
  int graph_refs = 0;  // live graphs and executable graphs whose nodes use it
  std::string str() const;  // "device allocation #7 (4096 bytes at 0x...)"
};

// The allocation holding p (live or freed), or nullptr. Also finds p one past the end.
Allocation* find_allocation(const void* p, bool include_end = false);
bool is_device_pointer(const void* p);

// A range an operation reads or writes. bytes == 0: somewhere inside the allocation holding p (a
// kernel's pointer argument).
struct MemUse {
  const void* p = nullptr;
  std::size_t bytes = 0;
  bool write = false;
};

// Checks that [p, p + bytes) lies in one live device (or pinned host) allocation, within the
// tenant's bytes when the caching allocator named one. On failure: reports `what` with the
// allocation and returns false.
bool check_range(const void* p, std::size_t bytes, const std::string& what, bool device_only = true);

// ---- streams, operations, graphs -------------------------------------------------------------
using Clock = std::map<uint64_t, uint64_t>;  // stream id -> last sequence number ordered before
void merge(Clock& into, const Clock& from);

struct Stream;
using StreamPtr = std::shared_ptr<Stream>;

struct Node {  // one operation of a graph
  std::string name;
  std::function<void()> run;
  std::vector<std::size_t> deps;
  std::vector<MemUse> uses;
};
struct GraphData {
  std::vector<Node> nodes;
};

struct Capture {
  uint64_t id = 0;
  std::shared_ptr<GraphData> graph;
  cudaStreamCaptureMode mode = cudaStreamCaptureModeGlobal;
  uint64_t thread = 0;  // the capturing thread's id (sim/runtime.cpp thread_id())
  Stream* origin = nullptr;
  std::vector<StreamPtr> streams;  // every stream taking part, origin first
  bool invalidated = false;
  std::string why;
};

struct Op {
  uint64_t seq = 0;
  std::string name;
  std::function<void()> run;  // may be empty (a marker)
  std::vector<std::pair<StreamPtr, uint64_t>> deps;
};

struct Stream {
  uint64_t id = 0;
  cudaStream_t handle = nullptr;
  bool legacy = false, blocking = true, destroyed = false;
  uint64_t seq = 0, done = 0;  // last queued, last completed
  std::vector<Op> queue;       // ops seq done+1 .. seq, in order (front at queue_head)
  std::size_t queue_head = 0;
  Clock clock;                 // what is ordered before its next operation
  std::shared_ptr<Capture> capture;
  std::vector<std::size_t> frontier;  // while capturing: the nodes the next one depends on
  std::string str() const;
};

// The stream behind a handle (nullptr and cudaStreamLegacy: the legacy stream). Null for a
// handle that is not a live stream (after setting cudaErrorInvalidResourceHandle).
StreamPtr stream_of(cudaStream_t s);
// Queues an operation on `s`, or records it into the graph `s` is capturing. Checks the rules of
// capture first (the legacy stream while a blocking stream is captured; an invalidated capture).
// `uses` is checked for bounds and remembered for the ordering checks. `deps` are further
// operations it waits for (outside capture only).
// `deps_order` false: the dependencies delay the operation's run but declare no order (the
// device's own bookkeeping, which must not hide a missing event from the ordering checks).
cudaError_t submit(const StreamPtr& s, std::string name, std::function<void()> run, std::vector<MemUse> uses,
                   std::vector<std::pair<StreamPtr, uint64_t>> deps = {}, bool deps_order = true);
// The stream with this id, if it still exists (live, or destroyed with work queued).
StreamPtr stream_by_id(uint64_t id);
// Runs s's queued work up to sequence number `upto` (and what it waits for).
void complete(Stream& s, uint64_t upto);
void complete_all();
// The host waited for `s` up to `upto`: work queued afterwards anywhere is ordered after it.
void host_waited(const Stream& s, const Clock& c);
// May the calling thread make a "potentially unsafe" call (cudaMalloc, a synchronisation ...)
// now (cudaThreadExchangeStreamCaptureMode)? If not, invalidates the captures it would break
// and returns cudaErrorStreamCaptureUnsupported, reporting `what`.
cudaError_t unsafe_call(const char* what);
// Whether a blocking stream is being captured (then the legacy stream may not be used).
bool blocking_stream_captured();
void invalidate(Capture& c, const std::string& why);

// ---- counters ----------------------------------------------------------------------------------
Counters& counters_ref();

// ---- numbers -------------------------------------------------------------------------------------
// bf16 and f16 <-> f32 with CUDA's rounding (nearest even; NaN canonical).
float bf16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float f);
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);
// Element i of a matrix or tensor of CUDA data type t, as double; and the store, rounded once.
double load(const void* p, cudaDataType_t t, std::size_t i);
void store(void* p, cudaDataType_t t, std::size_t i, double v);
std::size_t type_size(cudaDataType_t t);

// Fills a range that the library says is undefined after a call (workspaces, find's outputs).
void scribble(void* p, std::size_t bytes);

}  // namespace diffuse::sim
