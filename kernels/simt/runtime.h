// kernels/simt/runtime.h: the emulator's runtime interface: thread orders, faults, and the entry
// points that the CUDA-named functions of kernels/simt/simt.h call. No CUDA names are defined
// here, so host code (tests, tools) can include it to set the order or catch a Fault.
#pragma once

#include <cstddef>
#include <cstdint>
#include <source_location>
#include <string>
#include <string_view>
#include <vector>

#include "core/check.h"
#include "kernels/simt/vector_types.h"

// The emulator's stream: launches run synchronously, so a stream is only a token. A distinct
// pointer type (not void*) keeps launchers type-checked the same way cudaStream_t does.
typedef struct df_simt_stream_st* df_stream_t;

namespace diffuse::simt {

// Where a barrier or a warp operation was called, for the emulator's divergence messages:
// std::source_location where the standard library provides it; clang before 15 ships the header
// without the builtin behind it (libstdc++ then leaves std::source_location undeclared), so the
// same interface from __builtin_FILE / LINE / COLUMN, which clang and gcc evaluate at the call
// site when they sit in a default argument, as std::source_location::current() does.
#if defined(__cpp_lib_source_location)
using SourceLoc = std::source_location;
#else
struct SourceLoc {
  static constexpr SourceLoc current(const char* file = __builtin_FILE(), unsigned line = __builtin_LINE(),
                                     unsigned column = __builtin_COLUMN()) noexcept {
    SourceLoc l;
    l.file_ = file;
    l.line_ = line;
    l.column_ = column;
    return l;
  }
  constexpr const char* file_name() const noexcept { return file_; }
  constexpr unsigned line() const noexcept { return line_; }
  constexpr unsigned column() const noexcept { return column_; }

 private:
  const char* file_ = "";
  unsigned line_ = 0, column_ = 0;
};
#endif

// The order in which a block's threads are started and resumed. A race-free kernel gives the
// same result under every order; a missing __syncthreads usually does not.
enum class Order { forward, reverse, random };

struct OrderSpec {
  Order order = Order::forward;
  uint64_t seed = 0;  // random only
  bool operator==(const OrderSpec&) const = default;
};

// "forward", "reverse", "random" or "random:<seed>"; throws diffuse::Error otherwise. A bare
// "random" draws a seed (printed once to stderr, so a failure can be repeated).
OrderSpec parse_order(std::string_view text);
std::string to_string(const OrderSpec& o);

// The order of this process's launches: DIFFUSE_SIMT_ORDER when set, else forward.
OrderSpec order();
void set_order(const OrderSpec& o);
inline void set_order(Order o, uint64_t seed = 0) { set_order(OrderSpec{o, seed}); }

// Sets the order for a scope and restores the previous one.
class OrderScope {
 public:
  explicit OrderScope(const OrderSpec& o) : prev_(order()) { set_order(o); }
  explicit OrderScope(Order o, uint64_t seed = 0) : OrderScope(OrderSpec{o, seed}) {}
  ~OrderScope() { set_order(prev_); }
  OrderScope(const OrderScope&) = delete;
  OrderScope& operator=(const OrderScope&) = delete;

 private:
  OrderSpec prev_;
};

// forward, reverse and random:<seed>, for a test that runs a kernel under each. The seed comes
// from DIFFUSE_SIMT_ORDER when that names one, else it is fixed, so failures repeat.
std::vector<OrderSpec> test_orders();

// sm_90's limits: 1024 threads per block; 227 KiB (232448 bytes) of shared memory per block,
// static plus dynamic, which is the 228 KiB per SM less the 1 KiB the hardware reserves per block.
constexpr unsigned kMaxThreadsPerBlock = 1024;
constexpr std::size_t kMaxSharedBytes = 232448;
constexpr unsigned kWarpSize = 32;

enum class FaultKind {
  launch_config,      // bad grid/block, too many threads, too much dynamic shared memory
  shared_memory,      // static + dynamic shared memory over kMaxSharedBytes
  divergent_barrier,  // threads wait at different __syncthreads call sites
  deadlock,           // no thread can run, and the waits cannot be satisfied
  warp_divergence,    // lanes of one mask at different warp collectives (or masks)
  shuffle_source,     // a shuffle reads a lane outside the mask, or one that has exited
  lane_not_in_mask,   // a lane calls a *_sync collective with a mask that excludes it
  bad_argument,       // e.g. a shuffle width that is not a power of two in [1, 32]
  kernel_exception,   // the kernel threw (e.g. __trap(), a DF_CHECK in device code)
  shared_race,        // two threads access one shared-memory byte, one of them writing, unordered
};
const char* to_string(FaultKind k);

// What DF_LAUNCH throws when the emulator catches a kernel breaking CUDA's rules. The message
// names the fault, the kernel, its launch site, block and thread indices, and the call site.
class Fault : public Error {
 public:
  Fault(FaultKind kind, const std::string& what) : Error(what), kind_(kind) {}
  FaultKind kind() const { return kind_; }

 private:
  FaultKind kind_;
};

// The shared-memory race check (kernels/simt/race.h): in kernels compiled with its
// instrumentation (kernels/simt/race_check.cmake; DF_SIMT_RACECHECK is 1 in such a file), two
// accesses of one shared-memory byte by different threads of a block, at least one a write and
// not both atomics, with no __syncthreads between them (nor a __syncwarp of both, for lanes of
// one warp), are a shared_race fault naming both threads and both source lines. On by default;
// DIFFUSE_SIMT_RACECHECK=0 turns it off for a process. Code compiled without the instrumentation
// is not checked, whatever this says.
bool race_check();
void set_race_check(bool on);

// Sets the race check for a scope and restores the previous setting.
class RaceCheckScope {
 public:
  explicit RaceCheckScope(bool on) : prev_(race_check()) { set_race_check(on); }
  ~RaceCheckScope() { set_race_check(prev_); }
  RaceCheckScope(const RaceCheckScope&) = delete;
  RaceCheckScope& operator=(const RaceCheckScope&) = delete;

 private:
  bool prev_;
};

// Counters for this host thread, for tests and for sizing CI work.
struct Stats {
  uint64_t launches = 0, blocks = 0, threads = 0, switches = 0;
};
Stats stats();

// Fiber stack size: DIFFUSE_SIMT_STACK (bytes, with an optional K or M suffix), else 64 KiB.
std::size_t stack_size();

namespace detail {

// The running thread and its block. threadIdx & co. read these; the scheduler sets them before
// it resumes a thread's fiber.
struct ThreadCtx {
  uint3 thread_idx;
  unsigned linear;  // x + y*bx + z*bx*by: warps are consecutive runs of 32 of these
  unsigned lane, warp;
};
struct BlockCtx {
  uint3 block_idx;
  dim3 block_dim, grid_dim;
};
extern thread_local constinit ThreadCtx* tls_thread;
extern thread_local constinit BlockCtx* tls_block;

[[noreturn]] void outside_kernel(const char* what);
inline const ThreadCtx& thread_ctx(const char* what) {
  if (!tls_thread) [[unlikely]]
    outside_kernel(what);
  return *tls_thread;
}
inline const BlockCtx& block_ctx(const char* what) {
  if (!tls_thread) [[unlikely]]
    outside_kernel(what);
  return *tls_block;
}

// One DF_SHARED declaration: its address identifies it, so every thread of a block (and every
// block of a launch) gets the same memory for it. The element size and row length (0 for a
// 1-D array) name the element in a race report.
struct SharedSite {
  const char* name;
  const char* file;
  unsigned line;
  std::size_t elem = 0;
  std::size_t cols = 0;
};
void* shared_alloc(const SharedSite* site, std::size_t bytes, std::size_t align);
void* dynamic_shared();

enum class BarrierKind : uint8_t { sync, count, all, any };
int block_barrier(BarrierKind kind, int pred, const SourceLoc& loc);

enum class WarpKind : uint8_t {
  syncwarp, shfl_idx, shfl_up, shfl_down, shfl_xor, ballot, any, all,
  reduce_add, reduce_min, reduce_max, reduce_and, reduce_or, reduce_xor,
  mma_m16n8k16_bf16,  // mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 (simt.h)
};
// One lane's fragments of an mma: `in` points at these, `out` at the lane's four f32 of D.
struct MmaFragments {
  uint32_t a[4];  // A, 16 x 16 bf16, row-major fragments
  uint32_t b[2];  // B, 16 x 8 bf16, column-major fragments
  float c[4];     // C, 16 x 8 f32
};
// One lane's part in a warp collective; lives in that lane's frame until the collective is done.
struct WarpCall {
  WarpKind kind = WarpKind::syncwarp;
  bool is_signed = false;  // reduce_min/max on int
  unsigned mask = 0;
  int param = 0;      // srcLane / delta / laneMask, or the predicate
  int width = 32;
  const void* in = nullptr;  // shuffles: this lane's value; reduces: its operand
  void* out = nullptr;       // shuffles: where this lane's result goes
  unsigned size = 0;
  uint32_t result = 0;       // votes and reduces
  SourceLoc loc{};
};
void warp_collective(WarpCall& call);

struct LaunchSite {
  const char* kernel;
  const char* file;
  int line;
};
void run_grid(const LaunchSite& site, dim3 grid, dim3 block, std::size_t smem, void (*body)(void*), void* ctx);

}  // namespace detail
}  // namespace diffuse::simt
