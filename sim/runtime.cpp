// sim/runtime.cpp: the CUDA runtime API functions diffuse calls, on the simulated device
// (sim/internal.h has the model). Signatures come from the toolkit's cuda_runtime_api.h; the
// behaviour follows its documentation and the CUDA Programming Guide's rules of stream capture
// ("Prohibited and Unhandled Operations", "Invalidation"), including the errors they name.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "sim/internal.h"

namespace diffuse::sim {

// sim/device.cpp
Allocation* map_allocation(std::size_t size, bool host);
void unmap_allocation(Allocation* a);
std::size_t device_bytes_in_use();
cudaError_t take_last_error(bool clear);
StreamPtr& legacy_stream();
StreamPtr create_stream(unsigned flags);
void destroy_stream(const StreamPtr& s);
std::vector<StreamPtr> live_streams();
const Clock& host_clock();
uint64_t current_thread_id();
extern thread_local cudaStreamCaptureMode t_capture_mode;
std::vector<std::shared_ptr<Capture>>& active_captures();
void note_graph_uses(const Stream& s, const GraphData& g, const std::string& name);

namespace {

// ---- the device ---------------------------------------------------------------------------------

// H100 SXM5 80GB (sm_90): the figures cudaGetDeviceProperties reports there.
constexpr std::size_t kDefaultTotal = 85031714816ull;  // 81559 MiB
constexpr std::size_t kContextReserve = std::size_t{512} << 20;

std::size_t total_memory() {
  static const std::size_t t = [] {
    const char* e = std::getenv("DIFFUSE_SIM_MEMORY");  // e.g. 2G, for out-of-memory paths
    if (!e || !*e) return kDefaultTotal;
    char* end = nullptr;
    double v = std::strtod(e, &end);
    if (end && (*end == 'G' || *end == 'g')) v *= 1024.0 * 1024 * 1024;
    if (end && (*end == 'M' || *end == 'm')) v *= 1024.0 * 1024;
    return v > 0 ? static_cast<std::size_t>(v) : kDefaultTotal;
  }();
  return t;
}

// CUDA_VISIBLE_DEVICES hides the device as it hides a GPU: unset, or a list starting with 0 (or a
// UUID), shows it; anything else (-1, an empty list, another index) leaves no device.
bool visible() {
  static const bool v = [] {
    const char* e = std::getenv("CUDA_VISIBLE_DEVICES");
    if (!e) return true;
    std::string s(e);
    s = s.substr(0, s.find(','));
    while (!s.empty() && s.front() == ' ') s.erase(s.begin());
    return s == "0" || s.rfind("GPU-", 0) == 0 || s.rfind("MIG-", 0) == 0;
  }();
  return v;
}

cudaDeviceProp make_props() {
  cudaDeviceProp p;
  std::memset(&p, 0, sizeof p);
  std::snprintf(p.name, sizeof p.name, "NVIDIA H100 80GB HBM3 (diffuse simulated device, on the CPU)");
  p.totalGlobalMem = total_memory();
  p.sharedMemPerBlock = 48 * 1024;
  p.regsPerBlock = 65536;
  p.warpSize = 32;
  p.memPitch = 2147483647;
  p.maxThreadsPerBlock = 1024;
  p.maxThreadsDim[0] = 1024, p.maxThreadsDim[1] = 1024, p.maxThreadsDim[2] = 64;
  p.maxGridSize[0] = 2147483647, p.maxGridSize[1] = 65535, p.maxGridSize[2] = 65535;
  p.totalConstMem = 65536;
  p.major = 9;
  p.minor = 0;
  p.textureAlignment = 512;
  p.texturePitchAlignment = 32;
  p.multiProcessorCount = 132;
  p.canMapHostMemory = 1;
  p.surfaceAlignment = 512;
  p.concurrentKernels = 1;
  p.ECCEnabled = 1;
  p.asyncEngineCount = 3;
  p.unifiedAddressing = 1;
  p.memoryBusWidth = 5120;
  p.l2CacheSize = 50 * 1024 * 1024;
  p.persistingL2CacheMaxSize = 31457280;
  p.maxThreadsPerMultiProcessor = 2048;
  p.streamPrioritiesSupported = 1;
  p.globalL1CacheSupported = 1;
  p.localL1CacheSupported = 1;
  p.sharedMemPerMultiprocessor = 233472;
  p.regsPerMultiprocessor = 65536;
  p.managedMemory = 1;
  p.hostNativeAtomicSupported = 0;
  p.concurrentManagedAccess = 1;
  p.computePreemptionSupported = 1;
  p.cooperativeLaunch = 1;
  p.sharedMemPerBlockOptin = 232448;
  p.maxBlocksPerMultiProcessor = 32;
  p.accessPolicyMaxWindowSize = 134213632;
  p.reservedSharedMemPerBlock = 1024;
  p.hostRegisterSupported = 1;
  p.memoryPoolsSupported = 1;
  p.clusterLaunch = 1;
  return p;
}

const cudaDeviceProp& props() {
  static const cudaDeviceProp p = make_props();
  return p;
}

thread_local int t_device = 0;

// ---- events and graphs --------------------------------------------------------------------------

struct EventState {
  unsigned flags = 0;
  bool recorded = false;
  StreamPtr stream;  // the last record, outside capture
  uint64_t seq = 0;
  Clock clock;
  std::shared_ptr<Capture> capture;  // the last record, inside a capture
  std::vector<std::size_t> nodes;
  uint64_t gen = 0;       // records so far: a marker sets the time only for its own record
  double time_ms = 0;     // when the record's marker ran
  bool queried = false;   // the last record was answered "not ready" once
};

struct ExecData {
  std::shared_ptr<const GraphData> graph;
  StreamPtr last_stream;  // launches of one executable graph are ordered
  uint64_t last_seq = 0;
};

std::map<uintptr_t, std::shared_ptr<EventState>>& events() {
  static auto* m = new std::map<uintptr_t, std::shared_ptr<EventState>>;
  return *m;
}
std::map<uintptr_t, std::shared_ptr<GraphData>>& graphs() {
  static auto* m = new std::map<uintptr_t, std::shared_ptr<GraphData>>;
  return *m;
}
std::map<uintptr_t, std::shared_ptr<ExecData>>& execs() {
  static auto* m = new std::map<uintptr_t, std::shared_ptr<ExecData>>;
  return *m;
}
uint64_t g_next_handle = 1;

// Handles are addresses no one can dereference, never reused: a destroyed handle stays invalid.
template <class H>
H fresh_handle(uintptr_t space) {
  return reinterpret_cast<H>(space + 16 * g_next_handle++);
}
constexpr uintptr_t kEventSpace = 0x5e0000000000, kGraphSpace = 0x5f0000000000, kExecSpace = 0x600000000000,
                    kNodeSpace = 0x610000000000;

std::shared_ptr<EventState> event_of(cudaEvent_t e) {
  auto it = events().find(reinterpret_cast<uintptr_t>(e));
  return it == events().end() ? nullptr : it->second;
}

double now_ms() {
  using namespace std::chrono;
  return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}

void graph_refs(const GraphData& g, int delta) {
  std::vector<Allocation*> seen;
  for (const Node& n : g.nodes)
    for (const MemUse& u : n.uses)
      if (Allocation* a = find_allocation(u.p))
        if (std::find(seen.begin(), seen.end(), a) == seen.end()) {
          seen.push_back(a);
          a->graph_refs += delta;
        }
}

// Runs a graph's nodes in their (topological) creation order.
void run_graph(const GraphData& g) {
  for (const Node& n : g.nodes)
    if (n.run) n.run();
}

// ---- memory ---------------------------------------------------------------------------------------

enum class Where { device, pinned, pageable, freed };

Where where(const void* p) {
  const Allocation* a = find_allocation(p);
  if (!a) return Where::pageable;
  if (a->freed) return Where::freed;
  return a->host ? Where::pinned : Where::device;
}

const char* where_name(Where w) {
  switch (w) {
    case Where::device: return "device memory";
    case Where::pinned: return "page-locked host memory";
    case Where::pageable: return "pageable host memory";
    default: return "freed memory";
  }
}

// Whether the work queued so far that uses `a` is complete.
bool idle(const Allocation& a, std::string* busy) {
  for (const StreamPtr& s : live_streams()) {
    auto it = a.last_use.find(s->id);
    if (it != a.last_use.end() && s->done < it->second) {
      if (busy) *busy = a.last_use_name.at(s->id) + " on " + s->str();
      return false;
    }
  }
  return true;
}

cudaError_t free_allocation(void* p, bool host, const char* what) {
  if (!p) return cudaSuccess;
  if (const cudaError_t e = unsafe_call(what)) return e;
  Allocation* a = find_allocation(p);
  if (!a || a->base != p || a->host != host || a->freed) {
    report(std::string(what) + "(" + std::to_string(reinterpret_cast<uintptr_t>(p)) + "): " +
           (a && a->freed ? a->str() + " was already freed"
                          : std::string("not the start of a live ") + (host ? "page-locked host" : "device") +
                                " allocation"));
    return set_error(cudaErrorInvalidValue);
  }
  std::string busy;
  if (!idle(*a, &busy)) {
    report(std::string(what) + " of " + a->str() + " while queued work still uses it (" + busy +
           "): wait for that work first");
    return set_error(cudaErrorIllegalState);
  }
  if (a->graph_refs > 0) {
    report(std::string(what) + " of " + a->str() +
           " while a CUDA graph that uses it exists: its next launch would touch freed memory");
    return set_error(cudaErrorIllegalState);
  }
  unmap_allocation(a);
  return cudaSuccess;
}

// A copy's direction from the pointers, checked against `kind` (cudaMemcpyDefault infers it).
cudaError_t check_kind(const void* dst, const void* src, cudaMemcpyKind kind, Where& wd, Where& ws, const char* what) {
  wd = where(dst);
  ws = where(src);
  if (wd == Where::freed || ws == Where::freed) {
    report(std::string(what) + ": a pointer into freed memory");
    return set_error(cudaErrorInvalidValue);
  }
  const bool dd = wd == Where::device, sd = ws == Where::device;
  bool ok = true;
  switch (kind) {
    case cudaMemcpyHostToHost: ok = !dd && !sd; break;
    case cudaMemcpyHostToDevice: ok = dd && !sd; break;
    case cudaMemcpyDeviceToHost: ok = !dd && sd; break;
    case cudaMemcpyDeviceToDevice: ok = dd && sd; break;
    case cudaMemcpyDefault: ok = true; break;
    default: return set_error(cudaErrorInvalidMemcpyDirection);
  }
  if (!ok) {
    report(std::string(what) + ": the kind of copy does not match the pointers (destination in " + where_name(wd) +
           ", source in " + where_name(ws) + ")");
    return set_error(cudaErrorInvalidValue);
  }
  return cudaSuccess;
}

// One copy of `rows` rows of `width` bytes (pitched), queued on `s`.
cudaError_t copy(void* dst, std::size_t dpitch, const void* src, std::size_t spitch, std::size_t width,
                 std::size_t rows, cudaMemcpyKind kind, const StreamPtr& s, const char* what, bool sync_api) {
  if (const cudaError_t e = sticky()) return e;
  Where wd, ws;
  if (const cudaError_t e = check_kind(dst, src, kind, wd, ws, what)) return e;
  if (width == 0 || rows == 0) return cudaSuccess;
  const std::size_t dspan = (rows - 1) * dpitch + width, sspan = (rows - 1) * spitch + width;
  if (wd != Where::pageable && !check_range(dst, dspan, std::string(what) + " destination", false))
    return set_error(cudaErrorInvalidValue);
  if (ws != Where::pageable && !check_range(src, sspan, std::string(what) + " source", false))
    return set_error(cudaErrorInvalidValue);
  const bool host_only = wd != Where::device && ws != Where::device;
  if (s->capture && (wd == Where::pageable || ws == Where::pageable)) {
    invalidate(*s->capture, std::string(what) + " with pageable host memory (" +
                                (wd == Where::pageable ? "destination" : "source") +
                                ") on a capturing stream: a graph's copies need device or page-locked memory");
    return set_error(cudaErrorStreamCaptureUnsupported);
  }
  std::vector<MemUse> uses;
  if (wd != Where::pageable) uses.push_back({dst, dspan, true});
  if (ws != Where::pageable) uses.push_back({src, sspan, false});
  std::function<void()> run;
  // From pageable memory the runtime stages the bytes before it returns: the caller may reuse its
  // buffer at once. Everything else is read when the copy runs.
  if (ws == Where::pageable && !s->capture) {
    auto staged = std::make_shared<std::vector<unsigned char>>(rows * width);
    for (std::size_t r = 0; r < rows; ++r)
      std::memcpy(staged->data() + r * width, static_cast<const char*>(src) + r * spitch, width);
    run = [dst, dpitch, width, rows, staged] {
      for (std::size_t r = 0; r < rows; ++r)
        std::memmove(static_cast<char*>(dst) + r * dpitch, staged->data() + r * width, width);
    };
  } else {
    run = [dst, dpitch, src, spitch, width, rows] {
      for (std::size_t r = 0; r < rows; ++r)
        std::memmove(static_cast<char*>(dst) + r * dpitch, static_cast<const char*>(src) + r * spitch, width);
    };
  }
  ++counters_ref().copies;
  if (const cudaError_t e = submit(s, what, std::move(run), std::move(uses))) return e;
  // Synchronous: cudaMemcpy always; an async copy to pageable memory returns when it is done; a
  // host-to-host copy is synchronous with the host.
  if (sync_api || (wd == Where::pageable && !s->capture) || host_only) {
    complete(*s, s->seq);
    host_waited(*s, s->clock);
  }
  if (const cudaError_t e = sticky()) return e;
  return cudaSuccess;
}

cudaError_t fill(void* p, std::size_t pitch, int value, std::size_t width, std::size_t rows, const StreamPtr& s,
                 const char* what) {
  if (const cudaError_t e = sticky()) return e;
  if (width == 0 || rows == 0) return cudaSuccess;
  const std::size_t span = (rows - 1) * pitch + width;
  if (!check_range(p, span, what)) return set_error(cudaErrorInvalidValue);
  ++counters_ref().copies;
  return submit(s, what,
                [p, pitch, value, width, rows] {
                  for (std::size_t r = 0; r < rows; ++r) std::memset(static_cast<char*>(p) + r * pitch, value, width);
                },
                {{p, span, true}});
}

// The nodes a stream's capture frontier depends on, transitively.
void ancestors(const GraphData& g, std::size_t n, std::vector<char>& seen) {
  if (seen[n]) return;
  seen[n] = 1;
  for (std::size_t d : g.nodes[n].deps) ancestors(g, d, seen);
}

void leave_capture(Capture& c) {
  for (const StreamPtr& s : c.streams) {
    s->capture.reset();
    s->frontier.clear();
  }
  auto& v = active_captures();
  v.erase(std::remove_if(v.begin(), v.end(), [&](const std::shared_ptr<Capture>& p) { return p.get() == &c; }), v.end());
}

struct ErrorText {
  int code;
  const char* name;
  const char* text;
};
// The names are the enum's (driver_types.h); the strings are cudaGetErrorString's for the codes
// the simulation returns, and a generic one otherwise.
const ErrorText kErrors[] = {
    {0, "cudaSuccess", "no error"},
    {1, "cudaErrorInvalidValue", "invalid argument"},
    {2, "cudaErrorMemoryAllocation", "out of memory"},
    {3, "cudaErrorInitializationError", "initialization error"},
    {9, "cudaErrorInvalidConfiguration", "invalid configuration argument"},
    {12, "cudaErrorInvalidPitchValue", "invalid pitch argument"},
    {17, "cudaErrorInvalidDevicePointer", "invalid device pointer"},
    {21, "cudaErrorInvalidMemcpyDirection", "invalid copy direction for memcpy"},
    {35, "cudaErrorInsufficientDriver", "CUDA driver version is insufficient for CUDA runtime version"},
    {100, "cudaErrorNoDevice", "no CUDA-capable device is detected"},
    {101, "cudaErrorInvalidDevice", "invalid device ordinal"},
    {400, "cudaErrorInvalidResourceHandle", "invalid resource handle"},
    {401, "cudaErrorIllegalState", "the operation cannot be performed in the present state"},
    {600, "cudaErrorNotReady", "device not ready"},
    {700, "cudaErrorIllegalAddress", "an illegal memory access was encountered"},
    {701, "cudaErrorLaunchOutOfResources", "too many resources requested for launch"},
    {719, "cudaErrorLaunchFailure", "unspecified launch failure"},
    {801, "cudaErrorNotSupported", "operation not supported"},
    {900, "cudaErrorStreamCaptureUnsupported", "operation not permitted when stream is capturing"},
    {901, "cudaErrorStreamCaptureInvalidated", "operation failed due to a previous error during capture"},
    {902, "cudaErrorStreamCaptureMerge", "operation would result in a merge of separate capture sequences"},
    {903, "cudaErrorStreamCaptureUnmatched", "capture was not ended in the same stream as it began"},
    {904, "cudaErrorStreamCaptureUnjoined", "capturing stream has unjoined work"},
    {905, "cudaErrorStreamCaptureIsolation", "dependency created on uncaptured work in another stream"},
    {906, "cudaErrorStreamCaptureImplicit",
     "operation would make the legacy stream depend on a capturing blocking stream"},
    {907, "cudaErrorCapturedEvent", "operation not permitted on an event last recorded in a capturing stream"},
    {908, "cudaErrorStreamCaptureWrongThread",
     "attempt to terminate a thread-local capture sequence from another thread"},
    {999, "cudaErrorUnknown", "unknown error"},
};

const ErrorText* error_text(int e) {
  for (const ErrorText& t : kErrors)
    if (t.code == e) return &t;
  return nullptr;
}

cudaError_t no_device() { return set_error(cudaErrorNoDevice); }

}  // namespace

const char* error_name(int e) {
  const ErrorText* t = error_text(e);
  return t ? t->name : "cudaErrorUnknown";
}
const char* error_string(int e) {
  const ErrorText* t = error_text(e);
  return t ? t->text : "unrecognized error code";
}

int wait_after_launch(CUstream_st* stream) {
  Guard g(lock());
  StreamPtr s = stream_of(stream);
  if (!s) return take_last_error(true);
  if (s->capture || (s->legacy && blocking_stream_captured())) return cudaSuccess;  // recorded, not run
  for (const auto& c : active_captures())  // a wait would break this thread's capture
    if (c->thread == current_thread_id()) return cudaSuccess;
  const cudaError_t e = cudaStreamSynchronize(stream);
  if (e != cudaSuccess) (void)cudaGetLastError();
  return e;
}

int memset_async(void* p, int value, std::size_t bytes, CUstream_st* stream) {
  const cudaError_t e = cudaMemsetAsync(p, value, bytes, stream);
  if (e != cudaSuccess) (void)cudaGetLastError();
  return e;
}
int memcpy_async(void* dst, const void* src, std::size_t bytes, CUstream_st* stream) {
  const cudaError_t e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream);
  if (e != cudaSuccess) (void)cudaGetLastError();
  return e;
}

}  // namespace diffuse::sim

using namespace diffuse::sim;

#define SIM_DEVICE_OR_FAIL() \
  do {                       \
    if (!visible()) return no_device(); \
  } while (0)

extern "C" {

// ---- errors, versions, devices ------------------------------------------------------------------

cudaError_t cudaGetLastError(void) { return take_last_error(true); }
cudaError_t cudaPeekAtLastError(void) { return take_last_error(false); }
const char* cudaGetErrorName(cudaError_t e) { return error_name(e); }
const char* cudaGetErrorString(cudaError_t e) { return error_string(e); }

cudaError_t cudaRuntimeGetVersion(int* v) {
  if (!v) return set_error(cudaErrorInvalidValue);
  *v = CUDART_VERSION;
  return cudaSuccess;
}
cudaError_t cudaDriverGetVersion(int* v) {
  if (!v) return set_error(cudaErrorInvalidValue);
  *v = CUDART_VERSION;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceCount(int* n) {
  if (!n) return set_error(cudaErrorInvalidValue);
  *n = visible() ? 1 : 0;
  return visible() ? cudaSuccess : no_device();
}

cudaError_t cudaSetDevice(int d) {
  SIM_DEVICE_OR_FAIL();
  if (d != 0) return set_error(cudaErrorInvalidDevice);
  t_device = d;
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int* d) {
  SIM_DEVICE_OR_FAIL();
  if (!d) return set_error(cudaErrorInvalidValue);
  *d = t_device;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int d) {
  SIM_DEVICE_OR_FAIL();
  if (!p) return set_error(cudaErrorInvalidValue);
  if (d != 0) return set_error(cudaErrorInvalidDevice);
  *p = props();
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr attr, int d) {
  SIM_DEVICE_OR_FAIL();
  if (!v) return set_error(cudaErrorInvalidValue);
  if (d != 0) return set_error(cudaErrorInvalidDevice);
  const cudaDeviceProp& p = props();
  switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: *v = p.maxThreadsPerBlock; break;
    case cudaDevAttrMaxBlockDimX: *v = p.maxThreadsDim[0]; break;
    case cudaDevAttrMaxBlockDimY: *v = p.maxThreadsDim[1]; break;
    case cudaDevAttrMaxBlockDimZ: *v = p.maxThreadsDim[2]; break;
    case cudaDevAttrMaxGridDimX: *v = p.maxGridSize[0]; break;
    case cudaDevAttrMaxGridDimY: *v = p.maxGridSize[1]; break;
    case cudaDevAttrMaxGridDimZ: *v = p.maxGridSize[2]; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *v = static_cast<int>(p.sharedMemPerBlock); break;
    case cudaDevAttrTotalConstantMemory: *v = static_cast<int>(p.totalConstMem); break;
    case cudaDevAttrWarpSize: *v = p.warpSize; break;
    case cudaDevAttrMaxRegistersPerBlock: *v = p.regsPerBlock; break;
    case cudaDevAttrClockRate: *v = 1980000; break;  // kHz
    case cudaDevAttrMemoryClockRate: *v = 2619000; break;
    case cudaDevAttrMultiProcessorCount: *v = p.multiProcessorCount; break;
    case cudaDevAttrIntegrated: *v = 0; break;
    case cudaDevAttrCanMapHostMemory: *v = 1; break;
    case cudaDevAttrConcurrentKernels: *v = 1; break;
    case cudaDevAttrEccEnabled: *v = 1; break;
    case cudaDevAttrGlobalMemoryBusWidth: *v = p.memoryBusWidth; break;
    case cudaDevAttrL2CacheSize: *v = p.l2CacheSize; break;
    case cudaDevAttrMaxThreadsPerMultiProcessor: *v = p.maxThreadsPerMultiProcessor; break;
    case cudaDevAttrAsyncEngineCount: *v = p.asyncEngineCount; break;
    case cudaDevAttrUnifiedAddressing: *v = 1; break;
    case cudaDevAttrComputeCapabilityMajor: *v = p.major; break;
    case cudaDevAttrComputeCapabilityMinor: *v = p.minor; break;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *v = static_cast<int>(p.sharedMemPerMultiprocessor); break;
    case cudaDevAttrMaxRegistersPerMultiprocessor: *v = p.regsPerMultiprocessor; break;
    case cudaDevAttrManagedMemory: *v = 1; break;
    case cudaDevAttrCooperativeLaunch: *v = 1; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *v = static_cast<int>(p.sharedMemPerBlockOptin); break;
    case cudaDevAttrMaxBlocksPerMultiprocessor: *v = p.maxBlocksPerMultiProcessor; break;
    case cudaDevAttrReservedSharedMemoryPerBlock: *v = static_cast<int>(p.reservedSharedMemPerBlock); break;
    case cudaDevAttrMemoryPoolsSupported: *v = 1; break;
    default:
      return set_error(cudaErrorInvalidValue);  // not simulated: say so rather than guess
  }
  return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t* free_b, size_t* total_b) {
  SIM_DEVICE_OR_FAIL();
  Guard g(lock());
  if (!free_b || !total_b) return set_error(cudaErrorInvalidValue);
  const std::size_t used = device_bytes_in_use() + kContextReserve;
  *total_b = total_memory();
  *free_b = used < *total_b ? *total_b - used : 0;
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize(void) {
  SIM_DEVICE_OR_FAIL();
  Guard g(lock());
  if (const cudaError_t e = sticky()) return e;
  if (!active_captures().empty()) {
    // "a broader handle which encompasses an active stream capture, such as a device"
    for (const auto& c : active_captures()) invalidate(*c, "cudaDeviceSynchronize while a stream is being captured");
    return set_error(cudaErrorStreamCaptureUnsupported);
  }
  complete_all();
  for (const StreamPtr& s : live_streams()) host_waited(*s, s->clock);
  ++counters_ref().host_waits;
  return sticky();
}

// ---- memory ---------------------------------------------------------------------------------------

cudaError_t cudaMalloc(void** p, size_t size) {
  SIM_DEVICE_OR_FAIL();
  Guard g(lock());
  if (!p) return set_error(cudaErrorInvalidValue);
  *p = nullptr;
  if (const cudaError_t e = sticky()) return e;
  if (const cudaError_t e = unsafe_call("cudaMalloc")) return e;
  if (size == 0) return cudaSuccess;
  if (size > total_memory() || device_bytes_in_use() + kContextReserve + size > total_memory())
    return set_error(cudaErrorMemoryAllocation);
  Allocation* a = map_allocation(size, false);
  if (!a) return set_error(cudaErrorMemoryAllocation);
  *p = a->base;
  return cudaSuccess;
}

cudaError_t cudaFree(void* p) {
  SIM_DEVICE_OR_FAIL();
  Guard g(lock());
  if (const cudaError_t e = sticky()) return e;
  return free_allocation(p, false, "cudaFree");
}

cudaError_t cudaHostAlloc(void** p, size_t size, unsigned int flags) {
  SIM_DEVICE_OR_FAIL();
  Guard g(lock());
  if (!p) return set_error(cudaErrorInvalidValue);
  *p = nullptr;
  if (flags & ~0x7u) return set_error(cudaErrorInvalidValue);
  if (const cudaError_t e = sticky()) return e;
  if (const cudaError_t e = unsafe_call("cudaHostAlloc")) return e;
  Allocation* a = map_allocation(size, true);
  if (!a) return set_error(cudaErrorMemoryAllocation);
  *p = a->base;
  return cudaSuccess;
}

cudaError_t cudaMallocHost(void** p, size_t size) { return cudaHostAlloc(p, size, cudaHostAllocDefault); }

cudaError_t cudaFreeHost(void* p) {
  SIM_DEVICE_OR_FAIL();
  Guard g(lock());
  if (const cudaError_t e = sticky()) return e;
  return free_allocation(p, true, "cudaFreeHost");
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t n, cudaMemcpyKind kind) {
  SIM_DEVICE_OR_FAIL();
  Guard g(lock());
  if (const cudaError_t e = unsafe_call("cudaMemcpy")) return e;
  return copy(dst, n, src, n, n, 1, kind, legacy_stream(), "cudaMemcpy", true);
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind kind, cudaStream_t stream) {
  SIM_DEVICE_OR_FAIL();
  Guard g(lock());
  StreamPtr s = stream_of(stream);
  if (!s) return cudaErrorInvalidResourceHandle;
  return copy(dst, n, src, n, n, 1, kind, s, "cudaMemcpyAsync", false);
}

cudaError_t cudaMemcpy2DAsync(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, size_t height,
                              cudaMemcpyKind kind, cudaStream_t stream) {
  SIM_DEVICE_OR_FAIL();
  Guard g(lock());
  StreamPtr s = stream_of(stream);
  if (!s) return cudaErrorInvalidResourceHandle;
  if (width > dpitch || width > spitch) return set_error(cudaErrorInvalidPitchValue);
  return copy(dst, dpitch, src, spitch, width, height, kind, s, "cudaMemcpy2DAsync", false);
}

cudaError_t cudaMemsetAsync(void* p, int value, size_t n, cudaStream_t stream) {
  SIM_DEVICE_OR_FAIL();
  Guard g(lock());
  StreamPtr s = stream_of(stream);
  if (!s) return cudaErrorInvalidResourceHandle;
  return fill(p, n, value, n, 1, s, "cudaMemsetAsync");
}

cudaError_t cudaMemset(void* p, int value, size_t n) {
  SIM_DEVICE_OR_FAIL();
  Guard g(lock());
  if (const cudaError_t e = unsafe_call("cudaMemset")) return e;
  const StreamPtr& s = legacy_stream();
  if (const cudaError_t e = fill(p, n, value, n, 1, s, "cudaMemset")) return e;
  complete(*s, s->seq);
  host_waited(*s, s->clock);
  return sticky();
}

cudaError_t cudaMemset2DAsync(void* p, size_t pitch, int value, size_t width, size_t height, cudaStream_t stream) {
  SIM_DEVICE_OR_FAIL();
  Guard g(lock());
  StreamPtr s = stream_of(stream);
  if (!s) return cudaErrorInvalidResourceHandle;
  if (width > pitch) return set_error(cudaErrorInvalidPitchValue);
  return fill(p, pitch, value, width, height, s, "cudaMemset2DAsync");
}

// ---- streams --------------------------------------------------------------------------------------

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* h, unsigned int flags) {
  SIM_DEVICE_OR_FAIL();
  Guard g(lock());
  if (!h || (flags & ~1u)) return set_error(cudaErrorInvalidValue);
  *h = create_stream(flags)->handle;
  return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t* h) { return cudaStreamCreateWithFlags(h, cudaStreamDefault); }

cudaError_t cudaStreamDestroy(cudaStream_t h) {
  SIM_DEVICE_OR_FAIL();
  Guard g(lock());
  if (h == nullptr || h == cudaStreamLegacy || h == cudaStreamPerThread) return set_error(cudaErrorInvalidResourceHandle);
  StreamPtr s = stream_of(h);
  if (!s) return cudaErrorInvalidResourceHandle;
  if (s->capture) {
    invalidate(*s->capture, "cudaStreamDestroy of a stream that is being captured");
    return set_error(cudaErrorStreamCaptureUnsupported);
  }
  destroy_stream(s);  // queued work still runs (cudaStreamDestroy returns at once)
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t h) {
  SIM_DEVICE_OR_FAIL();
  Guard g(lock());
  StreamPtr s = stream_of(h);
  if (!s) return cudaErrorInvalidResourceHandle;
  if (const cudaError_t e = sticky()) return e;
  if (s->capture) {
    invalidate(*s->capture, "cudaStreamSynchronize of " + s->str() + ", which is being captured");
    return set_error(cudaErrorStreamCaptureUnsupported);
  }
  if (s->legacy && blocking_stream_captured()) {
    for (const auto& c : active_captures())
      invalidate(*c, "cudaStreamSynchronize of the legacy stream while a blocking stream is being captured");
    return set_error(cudaErrorStreamCaptureImplicit);
  }
  if (const cudaError_t e = unsafe_call("cudaStreamSynchronize")) return e;
  complete(*s, s->seq);
  host_waited(*s, s->clock);
  ++counters_ref().host_waits;
  return sticky();
}

cudaError_t cudaStreamQuery(cudaStream_t h) {
  SIM_DEVICE_OR_FAIL();
  Guard g(lock());
  StreamPtr s = stream_of(h);
  if (!s) return cudaErrorInvalidResourceHandle;
  if (const cudaError_t e = sticky()) return e;
  if (s->capture) {
    invalidate(*s->capture, "cudaStreamQuery of " + s->str() + ", which is being captured");
    return set_error(cudaErrorStreamCaptureUnsupported);
  }
  if (const cudaError_t e = unsafe_call("cudaStreamQuery")) return e;
  if (s->done < s->seq) {
    complete(*s, s->seq);  // "not yet", and the device gets on with it
    return cudaErrorNotReady;
  }
  host_waited(*s, s->clock);
  return sticky();
}

cudaError_t cudaStreamWaitEvent(cudaStream_t h, cudaEvent_t ev, unsigned int flags) {
  SIM_DEVICE_OR_FAIL();
  Guard g(lock());
  StreamPtr s = stream_of(h);
  if (!s) return cudaErrorInvalidResourceHandle;
  auto e = event_of(ev);
  if (!e) return set_error(cudaErrorInvalidResourceHandle);
  if (flags & ~1u) return set_error(cudaErrorInvalidValue);
  if (const cudaError_t st = sticky()) return st;
  if (e->capture) {
    // A captured event: the waiting stream joins its capture (a fork), or merges its frontier.
    Capture& c = *e->capture;
    if (s->capture && s->capture.get() != &c) {
      invalidate(*s->capture, "cudaStreamWaitEvent merges two separate captures");
      invalidate(c, "cudaStreamWaitEvent merges two separate captures");
      return set_error(cudaErrorStreamCaptureMerge);
    }
    if (c.invalidated) return set_error(cudaErrorStreamCaptureInvalidated);
    if (!s->capture) {
      if (s->legacy) {
        invalidate(c, "the legacy stream waits for a captured event");
        return set_error(cudaErrorStreamCaptureImplicit);
      }
      s->capture = e->capture;
      s->frontier = e->nodes;
      c.streams.push_back(s);
    } else {
      for (std::size_t n : e->nodes)
        if (std::find(s->frontier.begin(), s->frontier.end(), n) == s->frontier.end()) s->frontier.push_back(n);
    }
    return cudaSuccess;
  }
  if (s->capture) {
    if (flags & cudaEventWaitExternal) return cudaSuccess;  // an external dependency: nothing to order here
    invalidate(*s->capture, s->str() + " waits for an event recorded outside the capture");
    return set_error(cudaErrorStreamCaptureIsolation);
  }
  if (!e->recorded) return cudaSuccess;  // waiting for an event never recorded is a no-op
  merge(s->clock, e->clock);
  return submit(s, "cudaStreamWaitEvent", nullptr, {}, {{e->stream, e->seq}});
}

cudaError_t cudaStreamIsCapturing(cudaStream_t h, cudaStreamCaptureStatus* st) {
  SIM_DEVICE_OR_FAIL();
  Guard g(lock());
  if (!st) return set_error(cudaErrorInvalidValue);
  StreamPtr s = stream_of(h);
  if (!s) return cudaErrorInvalidResourceHandle;
  if (s->legacy && blocking_stream_captured()) return set_error(cudaErrorStreamCaptureImplicit);
  *st = !s->capture ? cudaStreamCaptureStatusNone
                    : s->capture->invalidated ? cudaStreamCaptureStatusInvalidated : cudaStreamCaptureStatusActive;
  return cudaSuccess;
}

cudaError_t cudaStreamGetCaptureInfo(cudaStream_t h, cudaStreamCaptureStatus* st, unsigned long long* id,
                                     cudaGraph_t* graph, const cudaGraphNode_t** deps, const cudaGraphEdgeData** edges,
                                     size_t* ndeps) {
  SIM_DEVICE_OR_FAIL();
  Guard g(lock());
  if (!st) return set_error(cudaErrorInvalidValue);
  StreamPtr s = stream_of(h);
  if (!s) return cudaErrorInvalidResourceHandle;
  if (s->legacy && blocking_stream_captured()) return set_error(cudaErrorStreamCaptureImplicit);
  *st = !s->capture ? cudaStreamCaptureStatusNone
                    : s->capture->invalidated ? cudaStreamCaptureStatusInvalidated : cudaStreamCaptureStatusActive;
  if (!s->capture) return cudaSuccess;
  if (id) *id = s->capture->id;
  if (graph) *graph = nullptr;  // the graph under construction is not exposed
  thread_local std::vector<cudaGraphNode_t> nodes;
  nodes.clear();
  for (std::size_t n : s->frontier) nodes.push_back(reinterpret_cast<cudaGraphNode_t>(kNodeSpace + 16 * (n + 1)));
  if (deps) *deps = nodes.data();
  if (edges) *edges = nullptr;
  if (ndeps) *ndeps = nodes.size();
  return cudaSuccess;
}

cudaError_t cudaStreamBeginCapture(cudaStream_t h, cudaStreamCaptureMode mode) {
  SIM_DEVICE_OR_FAIL();
  Guard g(lock());
  StreamPtr s = stream_of(h);
  if (!s) return cudaErrorInvalidResourceHandle;
  if (const cudaError_t e = sticky()) return e;
  if (s->legacy) {
    report("cudaStreamBeginCapture on the legacy default stream, which cannot be captured");
    return set_error(cudaErrorStreamCaptureUnsupported);
  }
  if (s->capture) return set_error(cudaErrorIllegalState);
  if (mode != cudaStreamCaptureModeGlobal && mode != cudaStreamCaptureModeThreadLocal &&
      mode != cudaStreamCaptureModeRelaxed)
    return set_error(cudaErrorInvalidValue);
  static uint64_t next_id = 1;
  auto c = std::make_shared<Capture>();
  c->id = next_id++;
  c->graph = std::make_shared<GraphData>();
  c->mode = mode;
  c->thread = current_thread_id();
  c->origin = s.get();
  c->streams.push_back(s);
  s->capture = c;
  s->frontier.clear();
  active_captures().push_back(c);
  return cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t h, cudaGraph_t* graph) {
  SIM_DEVICE_OR_FAIL();
  Guard g(lock());
  if (!graph) return set_error(cudaErrorInvalidValue);
  *graph = nullptr;
  StreamPtr s = stream_of(h);
  if (!s) return cudaErrorInvalidResourceHandle;
  if (!s->capture) return set_error(cudaErrorIllegalState);
  std::shared_ptr<Capture> c = s->capture;
  if (c->origin != s.get()) {
    invalidate(*c, "cudaStreamEndCapture on " + s->str() + ", which joined the capture but did not begin it");
    return set_error(cudaErrorStreamCaptureUnmatched);
  }
  if (c->mode != cudaStreamCaptureModeRelaxed && c->thread != current_thread_id())
    return set_error(cudaErrorStreamCaptureWrongThread);
  if (c->invalidated) {
    leave_capture(*c);
    return set_error(cudaErrorStreamCaptureInvalidated);
  }
  // Every stream that joined must have been joined back: its last work is an ancestor of the
  // origin's.
  std::vector<char> seen(c->graph->nodes.size(), 0);
  for (std::size_t n : s->frontier) ancestors(*c->graph, n, seen);
  for (const StreamPtr& t : c->streams)
    for (std::size_t n : t->frontier)
      if (!seen[n]) {
        report("cudaStreamEndCapture: " + t->str() + " forked from the capture and was not joined back (its last " +
               "work, " + c->graph->nodes[n].name + ", is not waited for by the capturing stream)");
        leave_capture(*c);
        return set_error(cudaErrorStreamCaptureUnjoined);
      }
  leave_capture(*c);
  const cudaGraph_t handle = fresh_handle<cudaGraph_t>(kGraphSpace);
  graphs()[reinterpret_cast<uintptr_t>(handle)] = c->graph;
  graph_refs(*c->graph, +1);
  *graph = handle;
  return cudaSuccess;
}

cudaError_t cudaThreadExchangeStreamCaptureMode(cudaStreamCaptureMode* mode) {
  if (!mode) return set_error(cudaErrorInvalidValue);
  const cudaStreamCaptureMode prev = t_capture_mode;
  if (*mode != cudaStreamCaptureModeGlobal && *mode != cudaStreamCaptureModeThreadLocal &&
      *mode != cudaStreamCaptureModeRelaxed)
    return set_error(cudaErrorInvalidValue);
  t_capture_mode = *mode;
  *mode = prev;
  return cudaSuccess;
}

// ---- events ---------------------------------------------------------------------------------------

cudaError_t cudaEventCreateWithFlags(cudaEvent_t* ev, unsigned int flags) {
  SIM_DEVICE_OR_FAIL();
  Guard g(lock());
  if (!ev || (flags & ~0x7u) || ((flags & cudaEventInterprocess) && !(flags & cudaEventDisableTiming)))
    return set_error(cudaErrorInvalidValue);
  auto e = std::make_shared<EventState>();
  e->flags = flags;
  *ev = fresh_handle<cudaEvent_t>(kEventSpace);
  events()[reinterpret_cast<uintptr_t>(*ev)] = e;
  return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t* ev) { return cudaEventCreateWithFlags(ev, cudaEventDefault); }

cudaError_t cudaEventDestroy(cudaEvent_t ev) {
  SIM_DEVICE_OR_FAIL();
  Guard g(lock());
  // A pending record keeps its state alive until it runs (the documented behaviour).
  if (events().erase(reinterpret_cast<uintptr_t>(ev)) == 0) return set_error(cudaErrorInvalidResourceHandle);
  return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t ev, cudaStream_t h) {
  SIM_DEVICE_OR_FAIL();
  Guard g(lock());
  auto e = event_of(ev);
  if (!e) return set_error(cudaErrorInvalidResourceHandle);
  StreamPtr s = stream_of(h);
  if (!s) return cudaErrorInvalidResourceHandle;
  if (const cudaError_t st = sticky()) return st;
  if (s->capture) {
    if (s->capture->invalidated) return set_error(cudaErrorStreamCaptureInvalidated);
    e->recorded = true;
    e->capture = s->capture;
    e->nodes = s->frontier;
    e->stream.reset();
    return cudaSuccess;
  }
  const uint64_t gen = ++e->gen;
  std::weak_ptr<EventState> weak = e;
  const cudaError_t r = submit(s, "cudaEventRecord", [weak, gen] {
    if (auto p = weak.lock())
      if (p->gen == gen) p->time_ms = now_ms();
  }, {});
  if (r != cudaSuccess) return r;
  // The marker must outlive a destroyed event's handle: the op holds only a weak reference, and
  // the time is of no use once the handle is gone.
  e->recorded = true;
  e->capture.reset();
  e->nodes.clear();
  e->stream = s;
  e->seq = s->seq;
  e->clock = s->clock;
  e->queried = false;
  return cudaSuccess;
}

cudaError_t cudaEventQuery(cudaEvent_t ev) {
  SIM_DEVICE_OR_FAIL();
  Guard g(lock());
  auto e = event_of(ev);
  if (!e) return set_error(cudaErrorInvalidResourceHandle);
  if (const cudaError_t st = sticky()) return st;
  if (e->capture) {
    invalidate(*e->capture, "cudaEventQuery of an event recorded in a capture");
    return set_error(cudaErrorCapturedEvent);
  }
  if (const cudaError_t r = unsafe_call("cudaEventQuery")) return r;
  if (!e->recorded) return cudaSuccess;
  if (e->stream->done < e->seq) {
    // "Not yet" once; the device gets on with it meanwhile, so a poll ends.
    complete(*e->stream, e->seq);
    if (!e->queried) {
      e->queried = true;
      return cudaErrorNotReady;
    }
  }
  host_waited(*e->stream, e->clock);
  return sticky();
}

cudaError_t cudaEventSynchronize(cudaEvent_t ev) {
  SIM_DEVICE_OR_FAIL();
  Guard g(lock());
  auto e = event_of(ev);
  if (!e) return set_error(cudaErrorInvalidResourceHandle);
  if (const cudaError_t st = sticky()) return st;
  if (e->capture) {
    invalidate(*e->capture, "cudaEventSynchronize of an event recorded in a capture");
    return set_error(cudaErrorCapturedEvent);
  }
  if (const cudaError_t r = unsafe_call("cudaEventSynchronize")) return r;
  if (!e->recorded) return cudaSuccess;
  complete(*e->stream, e->seq);
  host_waited(*e->stream, e->clock);
  ++counters_ref().host_waits;
  return sticky();
}

cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  SIM_DEVICE_OR_FAIL();
  Guard g(lock());
  if (!ms) return set_error(cudaErrorInvalidValue);
  auto a = event_of(start), b = event_of(end);
  if (!a || !b) return set_error(cudaErrorInvalidResourceHandle);
  if ((a->flags & cudaEventDisableTiming) || (b->flags & cudaEventDisableTiming) || !a->recorded || !b->recorded)
    return set_error(cudaErrorInvalidResourceHandle);
  if (a->capture || b->capture) return set_error(cudaErrorCapturedEvent);
  if (a->stream->done < a->seq || b->stream->done < b->seq) return cudaErrorNotReady;
  *ms = static_cast<float>(b->time_ms - a->time_ms);
  return cudaSuccess;
}

// ---- graphs ---------------------------------------------------------------------------------------

cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long flags) {
  SIM_DEVICE_OR_FAIL();
  Guard g(lock());
  if (!exec) return set_error(cudaErrorInvalidValue);
  auto it = graphs().find(reinterpret_cast<uintptr_t>(graph));
  if (it == graphs().end()) return set_error(cudaErrorInvalidValue);
  auto x = std::make_shared<ExecData>();
  x->graph = std::make_shared<const GraphData>(*it->second);  // an instantiation is a snapshot
  graph_refs(*x->graph, +1);
  *exec = fresh_handle<cudaGraphExec_t>(kExecSpace);
  execs()[reinterpret_cast<uintptr_t>(*exec)] = x;
  (void)flags;
  return cudaSuccess;
}

cudaError_t cudaGraphUpload(cudaGraphExec_t exec, cudaStream_t h) {
  SIM_DEVICE_OR_FAIL();
  Guard g(lock());
  if (execs().find(reinterpret_cast<uintptr_t>(exec)) == execs().end()) return set_error(cudaErrorInvalidValue);
  StreamPtr s = stream_of(h);
  if (!s) return cudaErrorInvalidResourceHandle;
  return submit(s, "cudaGraphUpload", nullptr, {});
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t h) {
  SIM_DEVICE_OR_FAIL();
  Guard g(lock());
  auto it = execs().find(reinterpret_cast<uintptr_t>(exec));
  if (it == execs().end()) return set_error(cudaErrorInvalidValue);
  std::shared_ptr<ExecData> x = it->second;
  StreamPtr s = stream_of(h);
  if (!s) return cudaErrorInvalidResourceHandle;
  if (const cudaError_t st = sticky()) return st;
  std::vector<MemUse> uses;
  for (const Node& n : x->graph->nodes) uses.insert(uses.end(), n.uses.begin(), n.uses.end());
  std::vector<std::pair<StreamPtr, uint64_t>> deps;
  // "Each launch is ordered behind both any previous work in stream and any previous launches of
  // graphExec."
  if (x->last_stream && x->last_stream.get() != s.get()) deps.emplace_back(x->last_stream, x->last_seq);
  std::shared_ptr<const GraphData> graph = x->graph;
  const bool capturing = s->capture != nullptr;
  if (const cudaError_t e = submit(s, "cudaGraphLaunch", [graph] { run_graph(*graph); }, std::move(uses),
                                   capturing ? std::vector<std::pair<StreamPtr, uint64_t>>{} : deps))
    return e;
  ++counters_ref().graph_launches;
  if (!capturing) {
    x->last_stream = s;
    x->last_seq = s->seq;
    note_graph_uses(*s, *graph, "cudaGraphLaunch");
  }
  return cudaSuccess;
}

cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
  SIM_DEVICE_OR_FAIL();
  Guard g(lock());
  auto it = graphs().find(reinterpret_cast<uintptr_t>(graph));
  if (it == graphs().end()) return set_error(cudaErrorInvalidValue);
  graph_refs(*it->second, -1);
  graphs().erase(it);
  return cudaSuccess;
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
  SIM_DEVICE_OR_FAIL();
  Guard g(lock());
  auto it = execs().find(reinterpret_cast<uintptr_t>(exec));
  if (it == execs().end()) return set_error(cudaErrorInvalidValue);
  graph_refs(*it->second->graph, -1);
  execs().erase(it);  // a launch still queued keeps the graph alive until it has run
  return cudaSuccess;
}

}  // extern "C"
