// kernels/simt/runtime.cpp: the emulator's scheduler.
//
// A launch runs its blocks one after another, in order (x fastest), on the calling thread. A
// block's threads are Boost.Context fibers on guard-paged stacks taken from a per-host-thread
// pool. The scheduler resumes runnable threads in the chosen order; each runs until it waits at
// a barrier or warp collective, or returns. Nothing preempts a thread, so a context switch happens
// only where CUDA's semantics need one, and a kernel's memory accesses between two waits are
// plain loads and stores.
//
// Waits resolve as follows. A warp collective completes when the last lane of its mask arrives
// (exited lanes count as arrived). A block barrier completes when no thread can run and every
// thread that has not exited waits at the same __syncthreads call. Anything else with no thread
// runnable is a fault. Faults are recorded, never thrown across a context switch: the faulting
// fiber switches back to the scheduler, which resumes every live fiber with its kill flag set
// (each unwinds its own stack with a private exception), and then throws Fault from DF_LAUNCH.
#include <sys/mman.h>
#include <unistd.h>

#include <boost/context/fiber.hpp>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <memory>
#include <mutex>
#include <random>
#include <sstream>
#include <vector>

#include "core/splitmix.h"
#include "kernels/simt/race.h"
#include "kernels/simt/runtime.h"

#if defined(__SANITIZE_ADDRESS__)
#define DF_SIMT_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define DF_SIMT_ASAN 1
#endif
#endif
#if defined(DF_SIMT_ASAN)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

namespace diffuse::simt {

namespace ctx = boost::context;

namespace detail {
thread_local constinit ThreadCtx* tls_thread = nullptr;
thread_local constinit BlockCtx* tls_block = nullptr;
}  // namespace detail

namespace {

// ---- AddressSanitizer must know which stack is live, or it reports the fibers' frames as
// stack-buffer overflows and loses track of fake stacks. ------------------------------------------
inline void asan_start_switch(void** fake_save, const void* bottom, std::size_t size) {
#if defined(DF_SIMT_ASAN)
  __sanitizer_start_switch_fiber(fake_save, bottom, size);
#else
  (void)fake_save, (void)bottom, (void)size;
#endif
}
inline void asan_finish_switch(void* fake_save, const void** bottom_old, std::size_t* size_old) {
#if defined(DF_SIMT_ASAN)
  __sanitizer_finish_switch_fiber(fake_save, bottom_old, size_old);
#else
  (void)fake_save, (void)bottom_old, (void)size_old;
#endif
}

// ---- settings ------------------------------------------------------------------------------------
std::string short_path(const char* file) {
  for (const char* top : {"/core/", "/kernels/", "/autograd/", "/models/", "/tools/", "/bench/", "/tests/"}) {
    if (const char* p = std::strstr(file, top)) return p + 1;
  }
  return file;
}

std::string where(const SourceLoc& l) { return short_path(l.file_name()) + ":" + std::to_string(l.line()); }

std::string idx3(uint3 v) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "(%u,%u,%u)", v.x, v.y, v.z);
  return buf;
}
std::string hex(unsigned v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}

std::mutex g_order_mutex;
bool g_order_set = false;
OrderSpec g_order;

// The race check: DIFFUSE_SIMT_RACECHECK=0 turns it off, set_race_check overrides.
std::atomic<int> g_race_check{-1};  // -1: not read from the environment yet

bool env_race_check() {
  const char* e = std::getenv("DIFFUSE_SIMT_RACECHECK");
  if (!e || !*e || std::string_view(e) == "1") return true;
  if (std::string_view(e) == "0") return false;
  throw Error("DIFFUSE_SIMT_RACECHECK=" + std::string(e) + ": expected 0 (off) or 1 (on)");
}

OrderSpec env_order() {
  const char* e = std::getenv("DIFFUSE_SIMT_ORDER");
  return (e && *e) ? parse_order(e) : OrderSpec{};
}

std::size_t parse_stack_size() {
  constexpr std::size_t kDefault = 64 * 1024, kMin = 16 * 1024;
  const char* e = std::getenv("DIFFUSE_SIMT_STACK");
  if (!e || !*e) return kDefault;
  char* end = nullptr;
  unsigned long long v = std::strtoull(e, &end, 10);
  if (end && (*end == 'k' || *end == 'K')) v *= 1024, ++end;
  else if (end && (*end == 'm' || *end == 'M')) v *= 1024 * 1024, ++end;
  if (end == e || (end && *end) || v < kMin)
    throw Error("DIFFUSE_SIMT_STACK=" + std::string(e) + ": expected a size of at least 16K (bytes, or with K or M)");
  return static_cast<std::size_t>(v);
}

// ---- fiber stacks ----------------------------------------------------------------------------------
// Like protected_fixedsize_stack (an mmap with a PROT_NONE page below, so an overflow faults
// instead of corrupting a neighbour), but kept for reuse: a launch of many blocks would otherwise
// map and unmap a stack per thread per block.
class StackPool {
 public:
  StackPool() : page_(static_cast<std::size_t>(::sysconf(_SC_PAGESIZE))) {
    const std::size_t usable = (stack_size() + page_ - 1) / page_ * page_;
    total_ = usable + page_;
  }
  ~StackPool() {
    for (void* p : all_) ::munmap(p, total_);
  }
  StackPool(const StackPool&) = delete;
  StackPool& operator=(const StackPool&) = delete;

  ctx::stack_context get() {
    void* base;
    if (!free_.empty()) {
      base = free_.back();
      free_.pop_back();
#if defined(DF_SIMT_ASAN)
      // A killed fiber's frames may leave poisoned shadow bytes behind.
      ASAN_UNPOISON_MEMORY_REGION(static_cast<char*>(base) + page_, total_ - page_);
#endif
    } else {
      base = ::mmap(nullptr, total_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
      if (base == MAP_FAILED) throw std::bad_alloc();
      if (::mprotect(base, page_, PROT_NONE) != 0) {
        ::munmap(base, total_);
        throw std::bad_alloc();
      }
      all_.push_back(base);
    }
    ctx::stack_context sc;
    sc.size = total_;
    sc.sp = static_cast<char*>(base) + total_;
    last_ = sc;
    return sc;
  }
  void put(ctx::stack_context& sc) noexcept { free_.push_back(static_cast<char*>(sc.sp) - sc.size); }

  // The usable range of the stack handed out last (for AddressSanitizer).
  const void* last_bottom() const { return static_cast<char*>(last_.sp) - last_.size + page_; }
  std::size_t last_size() const { return last_.size - page_; }

 private:
  std::size_t page_, total_;
  std::vector<void*> free_, all_;
  ctx::stack_context last_{};
};

struct PoolAllocator {
  StackPool* pool;
  ctx::stack_context allocate() { return pool->get(); }
  void deallocate(ctx::stack_context& sc) noexcept { pool->put(sc); }
};

// Thrown inside a fiber to unwind it when its block is abandoned; never crosses a switch.
struct Unwind {};

enum class State : uint8_t { runnable, barrier, warp, done };

struct Thread : detail::ThreadCtx {
  State state = State::runnable;
  bool kill = false;
  ctx::fiber fiber;  // held by the scheduler: resumes this thread
  ctx::fiber back;   // held by the thread while it runs: resumes the scheduler
  // At a barrier:
  detail::BarrierKind barrier_kind{};
  int pred = 0, result = 0;
  SourceLoc loc;
  // At a warp collective (the call lives in the waiting thread's frame):
  detail::WarpCall* call = nullptr;
  // AddressSanitizer's view of this fiber.
  void* fake_stack = nullptr;
  const void* stack_bottom = nullptr;
  std::size_t stack_bytes = 0;
};

const char* warp_name(detail::WarpKind k) {
  using detail::WarpKind;
  switch (k) {
    case WarpKind::syncwarp: return "__syncwarp";
    case WarpKind::shfl_idx: return "__shfl_sync";
    case WarpKind::shfl_up: return "__shfl_up_sync";
    case WarpKind::shfl_down: return "__shfl_down_sync";
    case WarpKind::shfl_xor: return "__shfl_xor_sync";
    case WarpKind::ballot: return "__ballot_sync";
    case WarpKind::any: return "__any_sync";
    case WarpKind::all: return "__all_sync";
    case WarpKind::reduce_add: return "__reduce_add_sync";
    case WarpKind::reduce_min: return "__reduce_min_sync";
    case WarpKind::reduce_max: return "__reduce_max_sync";
    case WarpKind::reduce_and: return "__reduce_and_sync";
    case WarpKind::reduce_or: return "__reduce_or_sync";
    case WarpKind::reduce_xor: return "__reduce_xor_sync";
    case WarpKind::mma_m16n8k16_bf16: return "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32";
  }
  return "?";
}
const char* barrier_name(detail::BarrierKind k) {
  switch (k) {
    case detail::BarrierKind::sync: return "__syncthreads";
    case detail::BarrierKind::count: return "__syncthreads_count";
    case detail::BarrierKind::all: return "__syncthreads_and";
    case detail::BarrierKind::any: return "__syncthreads_or";
  }
  return "?";
}
bool same_loc(const SourceLoc& a, const SourceLoc& b) {
  return a.line() == b.line() && a.column() == b.column() &&
         (a.file_name() == b.file_name() || std::strcmp(a.file_name(), b.file_name()) == 0);
}
bool is_shuffle(detail::WarpKind k) {
  using detail::WarpKind;
  return k == WarpKind::shfl_idx || k == WarpKind::shfl_up || k == WarpKind::shfl_down || k == WarpKind::shfl_xor;
}

#if defined(DF_SIMT_ASAN)
constexpr std::size_t kRedzone = 64;
constexpr std::size_t kArenaBytes = kMaxSharedBytes + 256 * 1024;
#else
constexpr std::size_t kRedzone = 0;
constexpr std::size_t kArenaBytes = kMaxSharedBytes;
#endif

// Per warp of the running block: which lanes wait at a collective, and which are gone (exited,
// or past the end of a partial last warp). Collectives test these instead of visiting lanes.
struct Warp {
  unsigned waiting = 0, gone = 0;
};

// ---- the per-host-thread runtime ---------------------------------------------------------------
struct Runtime {
  StackPool pool;
  std::vector<Thread> threads;
  std::vector<Warp> warps;
  std::vector<unsigned> perm;
  unsigned n = 0, n_done = 0;

  // One launch:
  const detail::LaunchSite* site = nullptr;
  dim3 grid, block;
  std::size_t smem = 0;
  void (*body)(void*) = nullptr;
  void* body_ctx = nullptr;
  detail::BlockCtx bctx{};
  OrderSpec order;
  uint64_t block_linear = 0, phase = 0;

  // Shared memory: dynamic at offset 0, then the DF_SHARED arrays in the order first reached.
  // `used` is the layout's end; `counted` is what CUDA would count against the limit. They
  // differ only under AddressSanitizer, where a poisoned gap follows each array so that an
  // overrun into the next one is reported.
  std::unique_ptr<unsigned char[]> arena_storage;
  unsigned char* arena = nullptr;
  std::size_t used = 0, counted = 0;
  std::vector<std::pair<const detail::SharedSite*, std::size_t>> sites;  // (declaration, offset)
  std::vector<std::size_t> site_sizes;

  // The first fault of the block.
  bool faulted = false;
  FaultKind fault_kind{};
  std::string fault_msg;
  uint3 fault_thread{};

  // The shared-memory race check, when on for this launch.
  detail::race::Checker checker;
  detail::race::Active race_active;
  bool race_on = false;

  // The scheduler's stack, for AddressSanitizer.
  void* sched_fake = nullptr;
  const void* sched_bottom = nullptr;
  std::size_t sched_size = 0;

  Stats stats;

  Runtime() {
    // 128-byte alignment: more than any access needs, as the GPU's shared window is.
    arena_storage.reset(new unsigned char[kArenaBytes + 128]);
    auto addr = reinterpret_cast<uintptr_t>(arena_storage.get());
    arena = arena_storage.get() + ((128 - addr % 128) % 128);
    threads.reserve(kMaxThreadsPerBlock);
  }
  ~Runtime() {
#if defined(DF_SIMT_ASAN)
    ASAN_UNPOISON_MEMORY_REGION(arena, kArenaBytes);
#endif
  }
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;
};

Runtime& rt() {
  thread_local Runtime r;
  return r;
}

Thread& current(const char* what) {
  if (!detail::tls_thread) detail::outside_kernel(what);
  return *static_cast<Thread*>(detail::tls_thread);
}

void record_fault(Runtime& R, FaultKind kind, const Thread& t, std::string msg) {
  if (R.faulted) return;
  R.faulted = true;
  R.fault_kind = kind;
  R.fault_thread = t.thread_idx;
  R.fault_msg = std::move(msg);
}

// ---- switching -----------------------------------------------------------------------------------
void resume(Runtime& R, Thread& t) {
  detail::tls_thread = &t;
  asan_start_switch(&R.sched_fake, t.stack_bottom, t.stack_bytes);
  t.fiber = std::move(t.fiber).resume();
  asan_finish_switch(R.sched_fake, nullptr, nullptr);
  detail::tls_thread = nullptr;
  ++R.stats.switches;
}

// From a thread: back to the scheduler until it resumes us; unwinds if the block is abandoned.
void wait(Runtime& R, Thread& t) {
  asan_start_switch(&t.fake_stack, R.sched_bottom, R.sched_size);
  t.back = std::move(t.back).resume();
  asan_finish_switch(t.fake_stack, &R.sched_bottom, &R.sched_size);
  if (t.kill) throw Unwind{};
}

[[noreturn]] void fault_here(FaultKind kind, std::string msg) {
  Runtime& R = rt();
  Thread& t = current("a fault");
  record_fault(R, kind, t, std::move(msg));
  wait(R, t);
  std::abort();  // a faulted block's threads are only ever resumed to be killed
}

ctx::fiber start_thread(Runtime& R, Thread& t) {
  auto entry = [&R, &t](ctx::fiber&& back) -> ctx::fiber {
    t.back = std::move(back);
    asan_finish_switch(nullptr, &R.sched_bottom, &R.sched_size);
    if (!t.kill) {
      try {
        R.body(R.body_ctx);
      } catch (const ctx::detail::forced_unwind&) {
        throw;  // Boost's own unwinding must reach its fiber entry
      } catch (const Unwind&) {
      } catch (const std::exception& e) {
        record_fault(R, FaultKind::kernel_exception, t, std::string("the kernel threw: ") + e.what());
      } catch (...) {
        record_fault(R, FaultKind::kernel_exception, t, "the kernel threw a non-standard exception");
      }
    }
    t.state = State::done;
    R.warps[t.warp].gone |= 1u << t.lane;
    ++R.n_done;
    asan_start_switch(nullptr, R.sched_bottom, R.sched_size);  // this fiber's stack is going away
    return std::move(t.back);
  };
  ctx::fiber f(std::allocator_arg, PoolAllocator{&R.pool}, std::move(entry));
  t.stack_bottom = R.pool.last_bottom();
  t.stack_bytes = R.pool.last_size();
  return f;
}

// ---- thread order ------------------------------------------------------------------------------
void order_threads(Runtime& R) {
  R.perm.resize(R.n);
  for (unsigned i = 0; i < R.n; ++i) R.perm[i] = i;
  switch (R.order.order) {
    case Order::forward: break;
    case Order::reverse: std::reverse(R.perm.begin(), R.perm.end()); break;
    case Order::random: {
      // A fresh permutation per block and per barrier phase, reproducible from the seed.
      std::mt19937_64 g(splitmix64(R.order.seed ^ splitmix64(R.block_linear * 0x10001ull + R.phase)));
      std::shuffle(R.perm.begin(), R.perm.end(), g);
      break;
    }
  }
}

// ---- warp collectives ------------------------------------------------------------------------------
Thread* lane_thread(Runtime& R, const Thread& t, unsigned lane) {
  const unsigned i = t.warp * kWarpSize + lane;
  return i < R.n ? &R.threads[i] : nullptr;
}

std::string describe(const Thread& u) {
  switch (u.state) {
    case State::runnable: return "has not arrived";
    case State::done: return "has exited";
    case State::barrier: return std::string("waits at ") + barrier_name(u.barrier_kind) + " (" + where(u.loc) + ")";
    case State::warp:
      return std::string("waits at ") + warp_name(u.call->kind) + " (" + where(u.call->loc) + ") with mask " +
             hex(u.call->mask);
  }
  return "?";
}

bool same_call(const detail::WarpCall& a, const detail::WarpCall& b) {
  return a.kind == b.kind && a.mask == b.mask && same_loc(a.loc, b.loc);
}

enum class Readiness { complete, pending, mismatch };

void mismatch_fault(Runtime& R, const Thread& t, unsigned l, const Thread& u) {
  const detail::WarpCall& c = *t.call;
  record_fault(R, FaultKind::warp_divergence, t,
               std::string("lane ") + std::to_string(t.lane) + " waits at " + warp_name(c.kind) + " (" + where(c.loc) +
                   ") with mask " + hex(c.mask) + ", but lane " + std::to_string(l) + " " + describe(u));
}

// Whether the collective that `t` waits at can complete; on a mismatch, records the fault.
// While lanes are still missing, an arrival is checked against one waiting lane only (O(1)); the
// arrival that completes the collective, and the deadlock check, compare every lane.
Readiness readiness(Runtime& R, Thread& t, bool thorough) {
  const detail::WarpCall& c = *t.call;
  const Warp& w = R.warps[t.warp];
  const unsigned others = c.mask & ~(1u << t.lane);
  const unsigned pending = others & ~w.gone & ~w.waiting;
  unsigned check = others & w.waiting;
  if (pending && !thorough) check &= ~check + 1u;  // the lowest waiting lane
  for (; check; check &= check - 1u) {
    const unsigned l = static_cast<unsigned>(std::countr_zero(check));
    const Thread& u = R.threads[t.warp * kWarpSize + l];
    if (!same_call(*u.call, c)) {
      mismatch_fault(R, t, l, u);
      return Readiness::mismatch;
    }
  }
  return pending ? Readiness::pending : Readiness::complete;
}

// The lane whose value lane `l` receives, per CUDA's rules for each shuffle: the warp is cut into
// segments of `width` lanes; up/down past the segment's edge, and xor into a later segment,
// return the lane's own value; idx wraps within the segment.
unsigned source_lane(unsigned l, const detail::WarpCall& c) {
  using detail::WarpKind;
  const unsigned w = static_cast<unsigned>(c.width), p = static_cast<unsigned>(c.param);
  const unsigned seg = l & ~(w - 1u);
  switch (c.kind) {
    case WarpKind::shfl_idx: return seg + (p & (w - 1u));
    case WarpKind::shfl_up: return (l - seg) >= p ? l - p : l;
    case WarpKind::shfl_down: return (l - seg) + p < w ? l + p : l;
    case WarpKind::shfl_xor: {
      const unsigned s = l ^ (p & 31u);
      return s < seg + w ? s : l;
    }
    default: return l;
  }
}

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32, from the PTX ISA's "Matrix Fragments for
// mma.m16n8k16 with floating point type". With groupID g = lane >> 2 and threadID_in_group
// t = lane % 4, lane (g, t) holds
//   A (16 x 16, .row), a0..a7 in 4 registers of two bf16 each (the lower-indexed element in the
//     low 16 bits): row g for a0, a1, a4, a5 and g + 8 for a2, a3, a6, a7; column 2t + (i & 1) for
//     a_i with i < 4 and 2t + (i & 1) + 8 for i >= 4;
//   B (16 x 8, .col), b0..b3 in 2 registers: row (the k index) 2t + (i & 1) for i < 2 and
//     2t + (i & 1) + 8 for i >= 2; column g;
//   C and D (16 x 8, f32), c0..c3: row g for i < 2 and g + 8 for i >= 2; column 2t + (i & 1).
float bf16_lo(uint32_t r) { return std::bit_cast<float>(r << 16); }
float bf16_hi(uint32_t r) { return std::bit_cast<float>(r & 0xffff0000u); }

void mma_m16n8k16_bf16(Thread* const (&part)[kWarpSize]) {
  float A[16][16], B[16][8], C[16][8];
  for (unsigned l = 0; l < kWarpSize; ++l) {
    const auto& f = *static_cast<const detail::MmaFragments*>(part[l]->call->in);
    const unsigned g = l >> 2, t = l % 4;
    for (unsigned i = 0; i < 8; ++i) {  // a_i
      const uint32_t reg = f.a[i / 2];
      const unsigned row = (i < 2 || (i >= 4 && i < 6)) ? g : g + 8;
      const unsigned col = 2 * t + (i & 1) + (i >= 4 ? 8 : 0);
      A[row][col] = (i & 1) ? bf16_hi(reg) : bf16_lo(reg);
    }
    for (unsigned i = 0; i < 4; ++i) {  // b_i
      const uint32_t reg = f.b[i / 2];
      const unsigned k = 2 * t + (i & 1) + (i >= 2 ? 8 : 0);
      B[k][g] = (i & 1) ? bf16_hi(reg) : bf16_lo(reg);
    }
    for (unsigned i = 0; i < 4; ++i) C[i < 2 ? g : g + 8][2 * t + (i & 1)] = f.c[i];
  }
  for (unsigned l = 0; l < kWarpSize; ++l) {
    const unsigned g = l >> 2, t = l % 4;
    float* d = static_cast<float*>(part[l]->call->out);
    for (unsigned i = 0; i < 4; ++i) {
      const unsigned row = i < 2 ? g : g + 8, col = 2 * t + (i & 1);
      double s = C[row][col];
      for (unsigned k = 0; k < 16; ++k) s += double(A[row][k]) * double(B[k][col]);
      d[i] = static_cast<float>(s);
    }
  }
}

// Completes the collective that `t` waits at: computes every participant's result and makes
// them runnable. Returns false on a fault (recorded).
bool complete(Runtime& R, Thread& t) {
  using detail::WarpKind;
  const detail::WarpCall& c = *t.call;
  Warp& w = R.warps[t.warp];
  const unsigned m = c.mask & w.waiting;  // the participants: every lane of the mask not gone
  Thread* part[kWarpSize];
  for (unsigned l = 0; l < kWarpSize; ++l) part[l] = (m >> l & 1u) ? &R.threads[t.warp * kWarpSize + l] : nullptr;
  if (is_shuffle(c.kind)) {
    for (unsigned l = 0; l < kWarpSize; ++l) {
      if (!part[l]) continue;
      const detail::WarpCall& lc = *part[l]->call;
      const unsigned src = source_lane(l, lc);
      if (src != l && !part[src]) {
        const Thread* u = lane_thread(R, t, src);
        const bool in_mask = c.mask >> src & 1u;
        record_fault(R, FaultKind::shuffle_source, *part[l],
                     std::string(warp_name(lc.kind)) + " (" + where(lc.loc) + ") with mask " + hex(c.mask) + ": lane " +
                         std::to_string(l) + " reads lane " + std::to_string(src) +
                         (!in_mask ? ", which is outside the mask"
                          : !u     ? ", which does not exist (the block has " + std::to_string(R.n) + " threads)"
                                   : ", which has exited"));
        return false;
      }
    }
    for (unsigned l = 0; l < kWarpSize; ++l) {
      if (!part[l]) continue;
      const detail::WarpCall& lc = *part[l]->call;
      const unsigned src = source_lane(l, lc);
      std::memcpy(lc.out, part[src]->call->in, lc.size);
    }
  } else if (c.kind == WarpKind::mma_m16n8k16_bf16) {
    if (m != 0xffffffffu) {
      const unsigned l = static_cast<unsigned>(std::countr_zero(~m));
      record_fault(R, FaultKind::warp_divergence, t,
                   std::string(warp_name(c.kind)) + " (" + where(c.loc) + ") needs every lane of the warp (.aligned), but lane " +
                       std::to_string(l) +
                       (lane_thread(R, t, l) ? " has exited" : " does not exist (the block has " + std::to_string(R.n) + " threads)"));
      return false;
    }
    mma_m16n8k16_bf16(part);
  } else if (c.kind != WarpKind::syncwarp) {
    // Votes and reductions over the lanes present; exited lanes contribute nothing, as on sm_70+.
    uint32_t ballot = 0, acc = 0;
    bool first = true;
    for (unsigned l = 0; l < kWarpSize; ++l) {
      if (!part[l]) continue;
      const int v = part[l]->call->param;
      const uint32_t uv = static_cast<uint32_t>(v);
      if (v) ballot |= 1u << l;
      if (first) {
        acc = uv;
        first = false;
        continue;
      }
      switch (c.kind) {
        case WarpKind::reduce_add: acc += uv; break;
        case WarpKind::reduce_min:
          acc = c.is_signed ? static_cast<uint32_t>(std::min(static_cast<int>(acc), v)) : std::min(acc, uv);
          break;
        case WarpKind::reduce_max:
          acc = c.is_signed ? static_cast<uint32_t>(std::max(static_cast<int>(acc), v)) : std::max(acc, uv);
          break;
        case WarpKind::reduce_and: acc &= uv; break;
        case WarpKind::reduce_or: acc |= uv; break;
        case WarpKind::reduce_xor: acc ^= uv; break;
        default: break;
      }
    }
    uint32_t r = acc;
    if (c.kind == WarpKind::ballot) r = ballot;
    if (c.kind == WarpKind::any) r = ballot != 0;
    if (c.kind == WarpKind::all) r = ballot == m;
    for (unsigned l = 0; l < kWarpSize; ++l)
      if (part[l]) part[l]->call->result = r;
  }
  if (c.kind == WarpKind::syncwarp && R.race_on) {
    // __syncwarp orders the memory accesses of the lanes it synchronises (race.h).
    unsigned ids[kWarpSize], count = 0;
    for (unsigned l = 0; l < kWarpSize; ++l)
      if (part[l]) ids[count++] = part[l]->linear;
    R.checker.warp_sync(ids, count);
  }
  for (unsigned l = 0; l < kWarpSize; ++l)
    if (part[l]) part[l]->state = State::runnable;
  w.waiting &= ~m;
  return true;
}

// ---- faults --------------------------------------------------------------------------------------
std::string launch_desc(const Runtime& R) {
  std::ostringstream os;
  os << "kernel " << R.site->kernel << " (launched at " << short_path(R.site->file) << ":" << R.site->line
     << ", grid " << idx3(R.grid) << ", block " << idx3(R.block) << ", " << R.smem << " bytes dynamic shared, order "
     << to_string(R.order) << ")";
  return os.str();
}

// What a shared-memory byte belongs to, for a race report: "tile[3][5] (DF_SHARED at x.cu:40)".
std::string shared_byte(const Runtime& R, std::size_t off) {
  for (std::size_t k = 0; k < R.sites.size(); ++k) {
    const auto& [site, start] = R.sites[k];
    if (off < start || off >= start + R.site_sizes[k]) continue;
    const std::size_t rel = off - start;
    std::ostringstream os;
    os << site->name;
    if (site->elem) {
      const std::size_t i = rel / site->elem;
      if (site->cols)
        os << '[' << i / site->cols << "][" << i % site->cols << ']';
      else
        os << '[' << i << ']';
      if (rel % site->elem) os << " (its byte " << rel % site->elem << ')';
    }
    os << " (DF_SHARED at " << short_path(site->file) << ':' << site->line << ')';
    return os.str();
  }
  std::ostringstream os;
  os << "byte " << off << (off < R.smem ? " of the dynamic shared memory" : " of shared memory");
  return os.str();
}

void record_race(Runtime& R) {
  namespace race = detail::race;
  const race::Conflict& c = R.checker.conflict();
  const auto who = [&](const race::Access& a) {
    return "block " + idx3(R.bctx.block_idx) + " thread " + idx3(R.threads[a.thread1 - 1u].thread_idx);
  };
  const auto verb = [](race::Kind k, bool now) -> std::string {
    switch (k) {
      case race::Kind::read: return now ? "reads it" : "read it";
      case race::Kind::write: return now ? "writes it" : "wrote it";
      case race::Kind::atomic: return now ? "updates it atomically" : "updated it atomically";
      case race::Kind::none: break;
    }
    return "?";
  };
  const bool same_warp = (c.now.thread1 - 1u) / kWarpSize == (c.before.thread1 - 1u) / kWarpSize;
  record_fault(R, FaultKind::shared_race, R.threads[c.now.thread1 - 1u],
               "shared memory race on " + shared_byte(R, c.offset) + ": " + who(c.now) + " " + verb(c.now.kind, true) +
                   " at " + race::where_pc(race::pc_at(c.now.pc)) + ", and " + who(c.before) + " " +
                   verb(c.before.kind, false) + " at " + race::where_pc(race::pc_at(c.before.pc)) + ", with no __syncthreads between them" +
                   (same_warp ? " nor a __syncwarp of both lanes" : ""));
}

// Unwinds every live fiber of the block, then throws the recorded fault.
[[noreturn]] void abandon_block(Runtime& R) {
  for (Thread& t : R.threads) {
    if (t.state == State::done || !t.fiber) continue;
    t.kill = true;
    resume(R, t);
  }
  std::ostringstream os;
  os << "simt fault [" << to_string(R.fault_kind) << "] in " << launch_desc(R) << ", block "
     << idx3(R.bctx.block_idx) << ", thread " << idx3(R.fault_thread) << ": " << R.fault_msg;
  throw Fault(R.fault_kind, os.str());
}

// Called when no thread is runnable. Returns true if some thread became runnable.
bool resolve(Runtime& R) {
  // A collective may have become complete because lanes it waited for have exited.
  bool released = false;
  for (Thread& t : R.threads) {
    if (t.state != State::warp) continue;
    switch (readiness(R, t, true)) {
      case Readiness::complete:
        if (!complete(R, t)) return false;
        released = true;
        break;
      case Readiness::mismatch: return false;
      case Readiness::pending: break;
    }
  }
  if (released || R.n_done == R.n) return released;

  for (Thread& t : R.threads) {
    if (t.state != State::warp) continue;
    for (unsigned l = 0; l < kWarpSize; ++l) {
      Thread* u = (t.call->mask >> l & 1u) ? lane_thread(R, t, l) : nullptr;
      if (!u || u->state == State::done || u->state == State::warp) continue;
      record_fault(R, FaultKind::deadlock, t,
                   std::string("deadlock, no thread can run: lane ") + std::to_string(t.lane) + " waits at " +
                       warp_name(t.call->kind) + " (" + where(t.call->loc) + ") with mask " + hex(t.call->mask) +
                       " for lane " + std::to_string(l) + ", which " + describe(*u));
      return false;
    }
    record_fault(R, FaultKind::deadlock, t, "deadlock, no thread can run: lane " + std::to_string(t.lane) + " " + describe(t));
    return false;
  }

  // Everyone left waits at a barrier: the same call site, or a divergent barrier.
  const Thread* first = nullptr;
  for (const Thread& t : R.threads) {
    if (t.state != State::barrier) continue;
    if (!first) {
      first = &t;
    } else if (!same_loc(first->loc, t.loc) || first->barrier_kind != t.barrier_kind) {
      record_fault(R, FaultKind::divergent_barrier, t,
                   std::string("divergent barrier: thread ") + idx3(t.thread_idx) + " waits at " +
                       barrier_name(t.barrier_kind) + " (" + where(t.loc) + ") while thread " +
                       idx3(first->thread_idx) + " waits at " + barrier_name(first->barrier_kind) + " (" +
                       where(first->loc) + ")");
      return false;
    }
  }
  int count = 0;
  for (const Thread& t : R.threads)
    if (t.state == State::barrier) count += t.pred != 0;
  const int arrived = static_cast<int>(R.n - R.n_done);
  int result = 0;
  switch (first->barrier_kind) {
    case detail::BarrierKind::sync: result = 0; break;
    case detail::BarrierKind::count: result = count; break;
    case detail::BarrierKind::all: result = count == arrived; break;
    case detail::BarrierKind::any: result = count != 0; break;
  }
  for (Thread& t : R.threads) {
    if (t.state != State::barrier) continue;
    t.result = result;
    t.state = State::runnable;
  }
  ++R.phase;
  if (R.race_on) R.checker.barrier();
  if (R.order.order == Order::random) order_threads(R);
  return true;
}

void run_block(Runtime& R, uint3 bidx) {
  R.bctx.block_idx = bidx;
  R.phase = 0;
  R.n_done = 0;
  R.faulted = false;
#if defined(DF_SIMT_ASAN)
  ASAN_UNPOISON_MEMORY_REGION(R.arena, kArenaBytes);
#endif
  std::memset(R.arena, 0xFF, R.used);
#if defined(DF_SIMT_ASAN)
  // Everything but the arrays is off limits; arrays laid out later unpoison themselves.
  ASAN_POISON_MEMORY_REGION(R.arena, kArenaBytes);
  ASAN_UNPOISON_MEMORY_REGION(R.arena, R.smem);
  for (std::size_t k = 0; k < R.sites.size(); ++k) ASAN_UNPOISON_MEMORY_REGION(R.arena + R.sites[k].second, R.site_sizes[k]);
#endif

  R.threads.clear();
  R.threads.resize(R.n);
  R.warps.assign((R.n + kWarpSize - 1) / kWarpSize, Warp{});
  if (const unsigned tail = R.n % kWarpSize) R.warps.back().gone = ~0u << tail;
  for (unsigned i = 0; i < R.n; ++i) {
    Thread& t = R.threads[i];
    t.thread_idx = uint3{i % R.block.x, (i / R.block.x) % R.block.y, i / (R.block.x * R.block.y)};
    t.linear = i;
    t.lane = i % kWarpSize;
    t.warp = i / kWarpSize;
  }
  try {
    for (Thread& t : R.threads) t.fiber = start_thread(R, t);
  } catch (...) {
    for (Thread& t : R.threads)
      if (t.fiber) t.kill = true, resume(R, t);
    throw;
  }
  R.stats.threads += R.n;
  if (R.race_on) R.checker.begin_block(R.n);
  order_threads(R);

  for (;;) {
    bool ran = false;
    for (unsigned i : R.perm) {
      Thread& t = R.threads[i];
      if (t.state != State::runnable) continue;
      resume(R, t);
      ran = true;
      // A race is found inside an access hook, which cannot throw or switch; the thread runs on
      // to its next wait, and the block ends here.
      if (R.race_on && R.checker.conflicted() && !R.faulted) record_race(R);
      if (R.faulted) abandon_block(R);
    }
    if (ran) continue;
    if (R.n_done == R.n) break;
    if (!resolve(R)) abandon_block(R);
  }
  R.threads.clear();
}

}  // namespace

// ---- public API ------------------------------------------------------------------------------------
const char* to_string(FaultKind k) {
  switch (k) {
    case FaultKind::launch_config: return "launch configuration";
    case FaultKind::shared_memory: return "shared memory limit";
    case FaultKind::divergent_barrier: return "divergent barrier";
    case FaultKind::deadlock: return "deadlock";
    case FaultKind::warp_divergence: return "divergent warp collective";
    case FaultKind::shuffle_source: return "shuffle source";
    case FaultKind::lane_not_in_mask: return "lane not in mask";
    case FaultKind::bad_argument: return "bad argument";
    case FaultKind::kernel_exception: return "kernel exception";
    case FaultKind::shared_race: return "shared memory race";
  }
  return "?";
}

OrderSpec parse_order(std::string_view text) {
  if (text == "forward") return {Order::forward, 0};
  if (text == "reverse") return {Order::reverse, 0};
  if (text == "random") {
    static const uint64_t seed = [] {
      std::random_device rd;
      const uint64_t s = (static_cast<uint64_t>(rd()) << 32) ^ rd();
      std::fprintf(stderr, "diffuse simt: thread order random:%llu\n", static_cast<unsigned long long>(s));
      return s;
    }();
    return {Order::random, seed};
  }
  if (text.starts_with("random:")) {
    const std::string digits(text.substr(7));
    char* end = nullptr;
    const unsigned long long s = std::strtoull(digits.c_str(), &end, 10);
    if (!digits.empty() && end && !*end) return {Order::random, s};
  }
  throw Error("simt thread order `" + std::string(text) + "`: expected forward, reverse, random or random:<seed>");
}

std::string to_string(const OrderSpec& o) {
  switch (o.order) {
    case Order::forward: return "forward";
    case Order::reverse: return "reverse";
    case Order::random: return "random:" + std::to_string(o.seed);
  }
  return "?";
}

OrderSpec order() {
  std::lock_guard<std::mutex> lock(g_order_mutex);
  if (!g_order_set) {
    g_order = env_order();
    g_order_set = true;
  }
  return g_order;
}

void set_order(const OrderSpec& o) {
  std::lock_guard<std::mutex> lock(g_order_mutex);
  g_order = o;
  g_order_set = true;
}

std::vector<OrderSpec> test_orders() {
  uint64_t seed = 20240601;
  const char* e = std::getenv("DIFFUSE_SIMT_ORDER");
  if (e && std::string_view(e).starts_with("random")) seed = parse_order(e).seed;
  return {{Order::forward, 0}, {Order::reverse, 0}, {Order::random, seed}};
}

bool race_check() {
  int v = g_race_check.load();
  if (v < 0) {
    const int e = env_race_check() ? 1 : 0;
    g_race_check.compare_exchange_strong(v, e);
    v = g_race_check.load();
  }
  return v != 0;
}

void set_race_check(bool on) { g_race_check.store(on ? 1 : 0); }

Stats stats() { return rt().stats; }

std::size_t stack_size() {
  static const std::size_t s = parse_stack_size();
  return s;
}

namespace detail {

void outside_kernel(const char* what) {
  throw Error(std::string("simt: ") + what + " used outside a kernel launched with DF_LAUNCH");
}

void* shared_alloc(const SharedSite* s, std::size_t bytes, std::size_t align) {
  Runtime& R = rt();
  current("DF_SHARED");
  for (const auto& [site, off] : R.sites)
    if (site == s) return R.arena + off;
  align = std::max<std::size_t>(align, 16);
  const std::size_t counted = (R.counted + align - 1) / align * align;
  std::size_t off = (R.used + kRedzone + align - 1) / align * align;
  if (off + bytes > kArenaBytes) off = (R.used + align - 1) / align * align;  // out of room for gaps
  if (counted + bytes > kMaxSharedBytes) {
    fault_here(FaultKind::shared_memory,
               "DF_SHARED " + std::string(s->name) + " (" + std::to_string(bytes) + " bytes) at " + short_path(s->file) +
                   ":" + std::to_string(s->line) + " brings the block's shared memory (" + std::to_string(R.smem) +
                   " bytes dynamic + static) to " + std::to_string(counted + bytes) + " bytes, over sm_90's limit of " +
                   std::to_string(kMaxSharedBytes) + " bytes (227 KiB) per block");
  }
  R.sites.emplace_back(s, off);
  R.site_sizes.push_back(bytes);
  R.used = off + bytes;
  R.counted = counted + bytes;
#if defined(DF_SIMT_ASAN)
  ASAN_UNPOISON_MEMORY_REGION(R.arena + off, bytes);
#endif
  std::memset(R.arena + off, 0xFF, bytes);
  return R.arena + off;
}

void* dynamic_shared() {
  current("DF_DYNAMIC_SHARED");
  return rt().arena;
}

int block_barrier(BarrierKind kind, int pred, const SourceLoc& loc) {
  Runtime& R = rt();
  Thread& t = current(barrier_name(kind));
  t.state = State::barrier;
  t.barrier_kind = kind;
  t.pred = pred;
  t.loc = loc;
  wait(R, t);
  return t.result;
}

void warp_collective(WarpCall& c) {
  Runtime& R = rt();
  Thread& t = current(warp_name(c.kind));
  if (!(c.mask >> t.lane & 1u))
    fault_here(FaultKind::lane_not_in_mask, std::string(warp_name(c.kind)) + " (" + where(c.loc) + "): lane " +
                                                std::to_string(t.lane) + " calls it with mask " + hex(c.mask) +
                                                ", which does not include the lane");
  if (is_shuffle(c.kind) && (c.width < 1 || c.width > 32 || (c.width & (c.width - 1))))
    fault_here(FaultKind::bad_argument, std::string(warp_name(c.kind)) + " (" + where(c.loc) + "): width " +
                                            std::to_string(c.width) + " is not a power of two in [1, 32]");
  t.call = &c;
  t.state = State::warp;
  R.warps[t.warp].waiting |= 1u << t.lane;
  switch (readiness(R, t, false)) {
    case Readiness::mismatch: wait(R, t); std::abort();
    case Readiness::complete:
      if (!complete(R, t)) {
        wait(R, t);
        std::abort();
      }
      break;
    case Readiness::pending: wait(R, t); break;
  }
  t.call = nullptr;
}

void run_grid(const LaunchSite& site, dim3 grid, dim3 block, std::size_t smem, void (*body)(void*), void* body_ctx) {
  if (tls_thread) throw Error("DF_LAUNCH inside a kernel (dynamic parallelism) is not emulated");
  Runtime& R = rt();
  R.site = &site;
  R.grid = grid;
  R.block = block;
  R.smem = smem;
  R.order = order();
  const auto config_fault = [&](const std::string& why) {
    throw Fault(FaultKind::launch_config,
                "simt fault [" + std::string(to_string(FaultKind::launch_config)) + "] in " + launch_desc(R) + ": " + why);
  };
  const uint64_t nthreads = uint64_t{block.x} * block.y * block.z;
  if (block.x == 0 || block.y == 0 || block.z == 0 || grid.x == 0 || grid.y == 0 || grid.z == 0)
    config_fault("a grid or block extent is 0");
  if (nthreads > kMaxThreadsPerBlock)
    config_fault("a block of " + std::to_string(nthreads) + " threads is over the limit of " +
                 std::to_string(kMaxThreadsPerBlock));
  if (block.x > 1024 || block.y > 1024 || block.z > 64) config_fault("block extents are limited to (1024, 1024, 64)");
  if (grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535)
    config_fault("grid extents are limited to (2^31-1, 65535, 65535)");
  if (smem > kMaxSharedBytes)
    config_fault(std::to_string(smem) + " bytes of dynamic shared memory is over sm_90's limit of " +
                 std::to_string(kMaxSharedBytes) + " bytes (227 KiB) per block");

  R.n = static_cast<unsigned>(nthreads);
  R.body = body;
  R.body_ctx = body_ctx;
  R.bctx.block_dim = block;
  R.bctx.grid_dim = grid;
  R.sites.clear();
  R.site_sizes.clear();
  R.used = R.counted = smem;
  ++R.stats.launches;
  R.race_on = race_check();
  R.race_active = race::Active{reinterpret_cast<uintptr_t>(R.arena), kArenaBytes, &R.checker};
  tls_block = &R.bctx;
  if (R.race_on) race::tls_active = &R.race_active;
  struct Reset {
    ~Reset() {
      tls_block = nullptr;
      race::tls_active = nullptr;
    }
  } reset;
  R.block_linear = 0;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x, ++R.block_linear) {
        run_block(R, uint3{x, y, z});
        ++R.stats.blocks;
      }
}

}  // namespace detail
}  // namespace diffuse::simt
