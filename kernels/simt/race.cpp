// kernels/simt/race.cpp: the shared-memory race check's shadow memory, and the entry points that
// ThreadSanitizer's compiler instrumentation calls (kernels/simt/race.h says how they fit).
#include "kernels/simt/race.h"

#include <cxxabi.h>
#include <dlfcn.h>
#include <link.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include "kernels/simt/runtime.h"

namespace diffuse::simt::detail::race {

thread_local constinit Active* tls_active = nullptr;

namespace {
constexpr unsigned kLanes = 32;
}

Checker::~Checker() {
  if (shadow_) ::munmap(shadow_, shadow_bytes_);
}

void Checker::begin_block(unsigned n) {
  if (!shadow_) {
    // One cell per byte of the largest arena (the ASan build's has gaps); untouched pages of an
    // anonymous mapping cost nothing, and read as epoch 0, older than any block.
    shadow_bytes_ = (kMaxSharedBytes + 256 * 1024) * sizeof(Cell);
    void* p = ::mmap(nullptr, shadow_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    shadow_ = static_cast<Cell*>(p);
  }
  next_epoch();
  n_ = n;
  clocks_.assign(std::size_t{n} * kLanes, 0u);
  for (unsigned i = 0; i < n; ++i) clocks_[std::size_t{i} * kLanes + i % kLanes] = 1;
  own_.assign(n, 1u);
  conflicted_ = false;
}

void Checker::next_epoch() {
  if (++epoch_ == 0) {
    // 2^32 barriers on this host thread: every cell's epoch may look current again. Zero the
    // shadow (the pages are given back and read as zeros), and start over.
    ::madvise(shadow_, shadow_bytes_, MADV_DONTNEED);
    epoch_ = 1;
  }
}

void Checker::warp_sync(const unsigned* linear, unsigned count) {
  uint32_t join[kLanes] = {};
  for (unsigned k = 0; k < count; ++k) {
    const uint32_t* c = &clocks_[std::size_t{linear[k]} * kLanes];
    for (unsigned l = 0; l < kLanes; ++l) join[l] = join[l] > c[l] ? join[l] : c[l];
  }
  for (unsigned k = 0; k < count; ++k) {
    uint32_t* c = &clocks_[std::size_t{linear[k]} * kLanes];
    std::memcpy(c, join, sizeof join);
    own_[linear[k]] = ++c[linear[k] % kLanes];  // what this lane does next is after the sync
  }
}

// Whether access `a` (of the current epoch) happens before what thread `linear` does now.
inline bool Checker::ordered(const Access& a, unsigned linear) const {
  const unsigned other = a.thread1 - 1u;
  if (other == linear) return true;
  if ((other ^ linear) >= kLanes) return false;  // another warp: only a barrier orders it
  return clocks_[std::size_t{linear} * kLanes + other % kLanes] >= a.clock;
}

void Checker::found(std::size_t offset, unsigned size, const Access& now, const Access& before) {
  conflicted_ = true;
  conflict_ = Conflict{offset, size, now, before};
}

void Checker::access(std::size_t offset, unsigned size, Kind kind, unsigned linear, const void* pc) {
  if (conflicted_ || linear >= n_) return;  // the first race of a block is the one reported
  const Access now{own_[linear], pc_offset(pc),
                   static_cast<uint16_t>(linear + 1u), kind};
  for (unsigned b = 0; b < size; ++b) {
    Cell& c = shadow_[offset + b];
    if (c.epoch != epoch_) {  // nothing since the last barrier: this access is all there is
      c.epoch = epoch_;
      c.w = kind == Kind::read ? Access{} : now;
      c.r[0] = kind == Kind::read ? now : Access{};
      c.r[1] = Access{};
      continue;
    }
    // The common case of a thread working on its own bytes: nothing to check or change.
    if (c.w.thread1 == now.thread1 && c.w.clock == now.clock && c.w.kind == kind && c.r[0].thread1 == 0) continue;
    // The last write: a conflict unless ordered before this access, or both are atomics.
    if (c.w.kind != Kind::none && !ordered(c.w, linear) && !(kind == Kind::atomic && c.w.kind == Kind::atomic)) {
      found(offset + b, size, now, c.w);
      return;
    }
    if (kind == Kind::read) {
      if (c.r[0].thread1 == now.thread1 && c.r[0].clock == now.clock) continue;
      Access* slot = nullptr;
      for (Access& r : c.r)
        if (r.thread1 == now.thread1) slot = &r;  // this thread's own earlier read: keep the latest
      for (Access& r : c.r)
        if (!slot && (r.kind == Kind::none || ordered(r, linear))) slot = &r;
      // Both kept reads concurrent with this one: keep reads of two warps where there are two.
      if (!slot && (c.r[0].thread1 - 1u) / kLanes == (c.r[1].thread1 - 1u) / kLanes &&
          (c.r[0].thread1 - 1u) / kLanes != linear / kLanes)
        slot = &c.r[1];
      if (slot) *slot = now;
      continue;
    }
    // A write or an atomic: every kept read must be ordered before it.
    for (const Access& r : c.r) {
      if (r.kind != Kind::none && !ordered(r, linear)) {
        found(offset + b, size, now, r);
        return;
      }
    }
    c.w = now;
    c.r[0] = c.r[1] = Access{};
  }
}

// ---- source lines ------------------------------------------------------------------------------
int32_t pc_offset(const void* pc) {
  const intptr_t d = reinterpret_cast<intptr_t>(pc) - reinterpret_cast<intptr_t>(&pc_offset);
  return d > INT32_MIN && d <= INT32_MAX ? static_cast<int32_t>(d) : kNoPc;
}

const void* pc_at(int32_t offset) {
  return offset == kNoPc ? nullptr : reinterpret_cast<const void*>(reinterpret_cast<intptr_t>(&pc_offset) + offset);
}

namespace {

std::string short_path(const std::string& file) {
  for (const char* top : {"/core/", "/kernels/", "/autograd/", "/models/", "/tools/", "/bench/", "/tests/", "/sim/"}) {
    const std::size_t p = file.find(top);
    if (p != std::string::npos) return file.substr(p + 1);
  }
  return file;
}

// A frame of the project's sources, not of a standard header or of the emulator's own headers
// (an atomicAdd is reported at the kernel's line that calls it).
bool in_project(const std::string& file) {
  const std::string s = short_path(file);
  return s != file && s.rfind("kernels/simt/", 0) != 0;
}

// "diffuse::emu::(anonymous namespace)::k<64>(float const*, int)" -> "diffuse::emu::k<64>".
std::string short_name(std::string f) {
  for (std::size_t p; (p = f.find("(anonymous namespace)::")) != std::string::npos;) f.erase(p, 23);
  if (!f.empty() && f.back() == ')') {
    int depth = 0;
    for (std::size_t i = f.size(); i-- > 0;) {
      depth += f[i] == ')' ? 1 : f[i] == '(' ? -1 : 0;
      if (depth == 0) {
        f.resize(i);
        break;
      }
    }
  }
  return f;
}

struct Module {
  uintptr_t pc = 0;
  std::string path;
  uintptr_t bias = 0;
  bool found = false;
};

int find_module(dl_phdr_info* info, std::size_t, void* data) {
  auto* m = static_cast<Module*>(data);
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr)& ph = info->dlpi_phdr[i];
    if (ph.p_type != PT_LOAD) continue;
    const uintptr_t lo = info->dlpi_addr + ph.p_vaddr;
    if (m->pc >= lo && m->pc < lo + ph.p_memsz) {
      m->path = info->dlpi_name ? info->dlpi_name : "";
      m->bias = info->dlpi_addr;
      m->found = true;
      return 1;
    }
  }
  return 0;
}

std::string self_exe() {
  char buf[4096];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string();
}

// (function, file:line) pairs from addr2line, innermost inlined frame first.
std::vector<std::pair<std::string, std::string>> addr2line(const std::string& module, uintptr_t addr) {
  std::vector<std::pair<std::string, std::string>> frames;
  if (module.empty() || module.find('\'') != std::string::npos) return frames;
  char cmd[4400];
  std::snprintf(cmd, sizeof cmd, "addr2line -C -f -i -e '%s' 0x%llx 2>/dev/null", module.c_str(),
                static_cast<unsigned long long>(addr));
  FILE* f = ::popen(cmd, "r");
  if (!f) return frames;
  char fn[2048], loc[2048];
  while (std::fgets(fn, sizeof fn, f) && std::fgets(loc, sizeof loc, f)) {
    std::string a(fn), b(loc);
    while (!a.empty() && (a.back() == '\n' || a.back() == '\r')) a.pop_back();
    while (!b.empty() && (b.back() == '\n' || b.back() == '\r')) b.pop_back();
    if (const std::size_t d = b.find(" (discriminator"); d != std::string::npos) b.resize(d);
    frames.emplace_back(a, b);
  }
  ::pclose(f);
  return frames;
}

}  // namespace
}  // namespace diffuse::simt::detail::race

// The sanitizer runtimes' symboliser, where one is linked (a weak reference: null otherwise).
extern "C" void __sanitizer_symbolize_pc(void* pc, const char* fmt, char* out, std::size_t out_size)
    __attribute__((weak));

namespace diffuse::simt::detail::race {

std::string where_pc(const void* pc) {
  if (!pc) return "an unknown place (its address is too far from the emulator's code to be kept)";
  // The call's own instruction: the return address is the one after it.
  const uintptr_t at = reinterpret_cast<uintptr_t>(pc) - 1;
  if (__sanitizer_symbolize_pc) {
    char buf[1024] = {};
    __sanitizer_symbolize_pc(reinterpret_cast<void*>(at), "%s:%l (in %f)", buf, sizeof buf);
    if (buf[0] && buf[0] != '?') return short_path(buf);
  }
  Module m;
  m.pc = at;
  ::dl_iterate_phdr(find_module, &m);
  if (m.found) {
    const std::string path = m.path.empty() ? self_exe() : m.path;
    const auto frames = addr2line(path, at - m.bias);
    // The innermost frame in the project's sources (not a standard header), and the outermost
    // frame, which is the kernel, where it is another function.
    // (GCC's -g1 line tables name the frames' functions unreliably but their lines well: only
    // the kernel's name is given.)
    const std::pair<std::string, std::string>* inner = nullptr;
    for (const auto& fr : frames)
      if (!inner && in_project(fr.second)) inner = &fr;
    if (inner) {
      const auto& outer = frames.back();
      if (&outer == inner || !in_project(outer.second))
        return short_path(inner->second) + " (in " + short_name(outer.first) + ")";
      return short_path(inner->second) + ", inlined into " + short_name(outer.first) + " at " + short_path(outer.second);
    }
    if (!frames.empty() && frames.front().second.find("??") == std::string::npos)
      return short_path(frames.front().second) + " (in " + short_name(frames.back().first) + ")";
  }
  // No source line: addr2line (binutils) is missing, or the kernel was built without line tables.
  char buf[64];
  std::snprintf(buf, sizeof buf, "pc %p", pc);
  std::string s = buf;
  Dl_info info;
  if (::dladdr(pc, &info) && info.dli_sname) {
    int status = 0;
    char* name = abi::__cxa_demangle(info.dli_sname, nullptr, nullptr, &status);
    s += " in " + short_name(status == 0 && name ? name : info.dli_sname);
    std::free(name);
  }
  return s + " (no source line: addr2line found none)";
}

}  // namespace diffuse::simt::detail::race

// ---- ThreadSanitizer's instrumentation entry points --------------------------------------------
// Defined only where ThreadSanitizer's own runtime is not in the build: a real TSan build
// (-fsanitize=thread on everything) compiles this file instrumented too, and links libtsan.
#if defined(__SANITIZE_THREAD__)
#define DF_SIMT_REAL_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define DF_SIMT_REAL_TSAN 1
#endif
#endif

#if !defined(DF_SIMT_REAL_TSAN)

namespace {

using diffuse::simt::detail::race::Kind;

// The check itself, out of line: the hooks' fast path is the two compares.
__attribute__((noinline)) void check(uintptr_t off, unsigned size, Kind kind, const void* pc) {
  const diffuse::simt::detail::ThreadCtx* t = diffuse::simt::detail::tls_thread;
  if (!t) return;  // the scheduler itself, between threads
  diffuse::simt::detail::race::tls_active->checker->access(off, size, kind, t->linear, pc);
}

inline void on_access(const volatile void* p, std::size_t size, Kind kind, const void* pc) {
  const diffuse::simt::detail::race::Active* a = diffuse::simt::detail::race::tls_active;
  if (!a) return;
  const uintptr_t off = reinterpret_cast<uintptr_t>(p) - a->base;
  if (off >= a->size) return;
  const std::size_t n = off + size > a->size ? a->size - off : size;
  check(off, static_cast<unsigned>(n), kind, pc);
}

#define DF_PC __builtin_return_address(0)

// Atomic operations on T, for whatever code of an instrumented file uses them (kernels' atomics,
// and host code of the same file: a shared_ptr's count). Done at the strongest order: cheap here,
// and correct whatever order the caller asked for.
template <class T>
using A = volatile T;
constexpr int kSeq = __ATOMIC_SEQ_CST;

}  // namespace

extern "C" {

void __tsan_init() {}
void __tsan_func_entry(void*) {}
void __tsan_func_exit() {}
void __tsan_ignore_thread_begin() {}
void __tsan_ignore_thread_end() {}
void __tsan_vptr_update(void**, void*) {}
void __tsan_vptr_read(void**) {}

#define DF_TSAN_RW(n)                                                                   \
  void __tsan_read##n(void* p) { on_access(p, n, Kind::read, DF_PC); }                  \
  void __tsan_write##n(void* p) { on_access(p, n, Kind::write, DF_PC); }                \
  void __tsan_unaligned_read##n(const void* p) { on_access(p, n, Kind::read, DF_PC); }   \
  void __tsan_unaligned_write##n(void* p) { on_access(p, n, Kind::write, DF_PC); }      \
  void __tsan_volatile_read##n(void* p) { on_access(p, n, Kind::read, DF_PC); }         \
  void __tsan_volatile_write##n(void* p) { on_access(p, n, Kind::write, DF_PC); }       \
  void __tsan_read##n##_pc(void* p, void* pc) { on_access(p, n, Kind::read, pc); }      \
  void __tsan_write##n##_pc(void* p, void* pc) { on_access(p, n, Kind::write, pc); }
DF_TSAN_RW(1)
DF_TSAN_RW(2)
DF_TSAN_RW(4)
DF_TSAN_RW(8)
DF_TSAN_RW(16)
#undef DF_TSAN_RW

void __tsan_read_range(void* p, unsigned long size) { on_access(p, size, Kind::read, DF_PC); }
void __tsan_write_range(void* p, unsigned long size) { on_access(p, size, Kind::write, DF_PC); }

// clang replaces memcpy / memmove / memset of instrumented code by these.
void* __tsan_memcpy(void* d, const void* s, unsigned long n) {
  on_access(s, n, Kind::read, DF_PC);
  on_access(d, n, Kind::write, DF_PC);
  return std::memcpy(d, s, n);
}
void* __tsan_memmove(void* d, const void* s, unsigned long n) {
  on_access(s, n, Kind::read, DF_PC);
  on_access(d, n, Kind::write, DF_PC);
  return std::memmove(d, s, n);
}
void* __tsan_memset(void* d, int c, unsigned long n) {
  on_access(d, n, Kind::write, DF_PC);
  return std::memset(d, c, n);
}

void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(kSeq); }
void __tsan_atomic_signal_fence(int) { __atomic_signal_fence(kSeq); }

#define DF_TSAN_ATOMIC(bits, T)                                                                         \
  T __tsan_atomic##bits##_load(const A<T>* p, int) {                                                    \
    on_access(p, sizeof(T), Kind::atomic, DF_PC);                                                       \
    return __atomic_load_n(p, kSeq);                                                                    \
  }                                                                                                     \
  void __tsan_atomic##bits##_store(A<T>* p, T v, int) {                                                 \
    on_access(p, sizeof(T), Kind::atomic, DF_PC);                                                       \
    __atomic_store_n(p, v, kSeq);                                                                       \
  }                                                                                                     \
  T __tsan_atomic##bits##_exchange(A<T>* p, T v, int) {                                                 \
    on_access(p, sizeof(T), Kind::atomic, DF_PC);                                                       \
    return __atomic_exchange_n(p, v, kSeq);                                                             \
  }                                                                                                     \
  T __tsan_atomic##bits##_fetch_add(A<T>* p, T v, int) {                                                \
    on_access(p, sizeof(T), Kind::atomic, DF_PC);                                                       \
    return __atomic_fetch_add(p, v, kSeq);                                                              \
  }                                                                                                     \
  T __tsan_atomic##bits##_fetch_sub(A<T>* p, T v, int) {                                                \
    on_access(p, sizeof(T), Kind::atomic, DF_PC);                                                       \
    return __atomic_fetch_sub(p, v, kSeq);                                                              \
  }                                                                                                     \
  T __tsan_atomic##bits##_fetch_and(A<T>* p, T v, int) {                                                \
    on_access(p, sizeof(T), Kind::atomic, DF_PC);                                                       \
    return __atomic_fetch_and(p, v, kSeq);                                                              \
  }                                                                                                     \
  T __tsan_atomic##bits##_fetch_or(A<T>* p, T v, int) {                                                 \
    on_access(p, sizeof(T), Kind::atomic, DF_PC);                                                       \
    return __atomic_fetch_or(p, v, kSeq);                                                               \
  }                                                                                                     \
  T __tsan_atomic##bits##_fetch_xor(A<T>* p, T v, int) {                                                \
    on_access(p, sizeof(T), Kind::atomic, DF_PC);                                                       \
    return __atomic_fetch_xor(p, v, kSeq);                                                              \
  }                                                                                                     \
  T __tsan_atomic##bits##_fetch_nand(A<T>* p, T v, int) {                                               \
    on_access(p, sizeof(T), Kind::atomic, DF_PC);                                                       \
    return __atomic_fetch_nand(p, v, kSeq);                                                             \
  }                                                                                                     \
  int __tsan_atomic##bits##_compare_exchange_strong(A<T>* p, T* expected, T v, int, int) {              \
    on_access(p, sizeof(T), Kind::atomic, DF_PC);                                                       \
    return __atomic_compare_exchange_n(p, expected, v, false, kSeq, kSeq);                              \
  }                                                                                                     \
  int __tsan_atomic##bits##_compare_exchange_weak(A<T>* p, T* expected, T v, int, int) {                \
    on_access(p, sizeof(T), Kind::atomic, DF_PC);                                                       \
    return __atomic_compare_exchange_n(p, expected, v, true, kSeq, kSeq);                               \
  }                                                                                                     \
  T __tsan_atomic##bits##_compare_exchange_val(A<T>* p, T expected, T v, int, int) {                    \
    on_access(p, sizeof(T), Kind::atomic, DF_PC);                                                       \
    __atomic_compare_exchange_n(p, &expected, v, false, kSeq, kSeq);                                    \
    return expected;                                                                                    \
  }
DF_TSAN_ATOMIC(8, char)
DF_TSAN_ATOMIC(16, short)
DF_TSAN_ATOMIC(32, int)
DF_TSAN_ATOMIC(64, long)
#undef DF_TSAN_ATOMIC

}  // extern "C"

#endif  // !DF_SIMT_REAL_TSAN
