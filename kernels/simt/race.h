// kernels/simt/race.h: the emulator's shared-memory race check, between the scheduler
// (kernels/simt/runtime.cpp) and the memory-access hooks (kernels/simt/race.cpp). Internal: no
// kernel or test includes it.
//
// How accesses are seen. The kernel sources are compiled with ThreadSanitizer's instrumentation
// (-fsanitize=thread at compile time only; kernels/simt/race_check.cmake), which turns every load
// and store into a call __tsan_read4(addr), __tsan_write16(addr), ... and every atomic operation
// into __tsan_atomic32_fetch_add(addr, ...) and its kin. ThreadSanitizer's own runtime is not
// linked: kernels/simt/race.cpp defines those entry points, as the Linux kernel's KCSAN does. An
// access that falls in the running block's shared memory is checked against what other threads
// of the block did to the same bytes since they last synchronised; every other access returns at
// once. So the check sees exactly what the compiled kernel touches, through any pointer
// arithmetic or cast, and the return address of each call is the kernel's own instruction,
// which names the source line (race.cpp symbolises it when a race is reported).
//
// When two accesses are ordered. Shared memory is block-local, so only the block's own
// synchronisation orders it: a completed __syncthreads (any kind) orders everything before it
// against everything after it (an epoch counter: a cell's records from an older epoch are
// void). __syncwarp orders the accesses of the lanes it synchronises, which CUDA's guide
// promises ("guarantees memory ordering among threads participating in the barrier"); each
// lane keeps a vector clock over its warp's 32 lanes, joined at every __syncwarp. Shuffles,
// votes and the other warp collectives do not order memory (the guide: "These intrinsics do not
// imply a memory barrier"), so they join nothing. Atomics never conflict with atomics.
//
// What is kept per byte of shared memory, per epoch: the last write (or atomic), and up to two
// reads by different threads. A read is forgotten when a later read ordered after it takes its
// place, or when a third concurrent reader comes while two are kept (reads of two warps are kept
// where there are two). A write is then still checked against a kept read of another warp
// whenever one exists, so the one race missed is a write by a lane of the warp of every reader,
// ordered by __syncwarp after the two kept reads but not after a forgotten one. Never a false alarm.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace diffuse::simt::detail::race {

enum class Kind : uint8_t { none, read, write, atomic };

// One recorded access: the thread (linear index in the block, +1; 0 for none), its warp clock
// when it made the access, what it did and from where (the instruction after the call, as an
// offset from the hooks' own code: both are in the program's text; kNoPc where it does not fit).
struct Access {
  uint32_t clock = 0;
  int32_t pc = 0;
  uint16_t thread1 = 0;
  Kind kind = Kind::none;
};
constexpr int32_t kNoPc = INT32_MIN;
int32_t pc_offset(const void* pc);
const void* pc_at(int32_t offset);

// The first race of a block: the byte, the access that found it, and the earlier one.
struct Conflict {
  std::size_t offset = 0;  // byte offset in the block's shared memory
  unsigned size = 0;       // the size of the access that found it
  Access now, before;
};

// Per host thread: the shadow of the shared-memory arena and the warp clocks of the running block.
class Checker {
 public:
  Checker() = default;
  ~Checker();
  Checker(const Checker&) = delete;
  Checker& operator=(const Checker&) = delete;

  // The scheduler's side. begin_block: a fresh epoch and fresh clocks for n threads.
  void begin_block(unsigned n);
  void barrier() { next_epoch(); }
  // A __syncwarp completed for the threads `linear[0..count)` (lanes of one warp).
  void warp_sync(const unsigned* linear, unsigned count);
  bool conflicted() const { return conflicted_; }
  const Conflict& conflict() const { return conflict_; }

  // The hooks' side: bytes [offset, offset + size) of the arena, by thread `linear` of `lane`.
  void access(std::size_t offset, unsigned size, Kind kind, unsigned linear, const void* pc);

 private:
  struct Cell {  // 40 bytes per byte of shared memory: the check's cost is mostly these
    uint32_t epoch = 0;
    Access w, r[2];
  };
  bool ordered(const Access& a, unsigned linear) const;
  void found(std::size_t offset, unsigned size, const Access& now, const Access& before);

  Cell* shadow_ = nullptr;  // one per arena byte, mapped lazily
  std::size_t shadow_bytes_ = 0;
  uint32_t epoch_ = 0;
  void next_epoch();
  unsigned n_ = 0;
  std::vector<uint32_t> clocks_;  // n x 32: thread i's knowledge of lane l's clock at [i * 32 + l]
  std::vector<uint32_t> own_;     // n: thread i's own clock, clocks_[i * 32 + i % 32], kept apart to stay in cache
  bool conflicted_ = false;
  Conflict conflict_;
};

// Set by the scheduler while a block runs with the check on: the arena's window and the checker.
struct Active {
  uintptr_t base = 0;
  std::size_t size = 0;
  Checker* checker = nullptr;
};
extern thread_local constinit Active* tls_active;

// "kernels/cuda/x.cu:41 (in k<64>)" for an instruction of the kernel, innermost inlined frame of
// the project first (addr2line, or the sanitizer runtime's symboliser where one is linked); the
// bare address where neither can say.
std::string where_pc(const void* pc);

}  // namespace diffuse::simt::detail::race
