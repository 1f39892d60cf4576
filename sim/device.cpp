// sim/device.cpp: the simulated device's core (sim/internal.h): guarded memory, the fault
// handler, stream queues and their clocks, graph capture's bookkeeping, the caching allocator's
// hooks and the kernel launch entry point.
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <thread>

#include "sim/internal.h"

namespace diffuse::sim {

namespace {

constexpr std::size_t kPage = 4096;
constexpr std::size_t kAlign = 256;         // cudaMalloc's alignment
constexpr unsigned char kPoison = 0xFF;     // NaN in f32, bf16 and f16; -1 as an integer
// Poison fills at most this much of a tensor (workspaces run to hundreds of MiB): the cost of the
// fill, and the memory it makes resident.
constexpr std::size_t kMaxPoison = std::size_t{16} << 20;
constexpr std::size_t kMaxQueue = 1 << 14;  // ops a stream may hold before it runs some

std::mutex g_reports_mu;
std::vector<std::string> g_reports;
std::atomic<int> g_sticky{0};
std::string g_sticky_text;

thread_local cudaError_t t_last_error = cudaSuccess;

}  // namespace

std::recursive_mutex& lock() {
  static auto* m = new std::recursive_mutex;
  return *m;
}

Counters& counters_ref() {
  static Counters c;
  return c;
}

void report(const std::string& text) {
  std::fprintf(stderr, "diffuse sim: %s\n", text.c_str());
  std::lock_guard<std::mutex> g(g_reports_mu);
  g_reports.push_back(text);
}

std::vector<std::string> reports() {
  std::lock_guard<std::mutex> g(g_reports_mu);
  return g_reports;
}
void clear_reports() {
  std::lock_guard<std::mutex> g(g_reports_mu);
  g_reports.clear();
}

cudaError_t set_error(cudaError_t e) {
  if (e != cudaSuccess && e != cudaErrorNotReady) t_last_error = e;
  return e;
}

// The runtime's cudaGetLastError / cudaPeekAtLastError (sim/runtime.cpp).
cudaError_t take_last_error(bool clear) {
  if (const int s = g_sticky.load()) return static_cast<cudaError_t>(s);
  const cudaError_t e = t_last_error;
  if (clear) t_last_error = cudaSuccess;
  return e;
}

void set_sticky(cudaError_t e, const std::string& text) {
  if (g_sticky.load() == 0) {
    g_sticky_text = text;
    g_sticky.store(static_cast<int>(e));
  }
  report(text);
}
cudaError_t sticky() { return static_cast<cudaError_t>(g_sticky.load()); }
void clear_sticky_error() {
  Guard g(lock());
  g_sticky.store(0);
  t_last_error = cudaSuccess;
}

Counters counters() {
  Guard g(lock());
  return counters_ref();
}

// ---- memory -------------------------------------------------------------------------------------

namespace {

std::map<uintptr_t, Allocation*>& allocations() {  // by base; freed ones stay (quarantine)
  static auto* m = new std::map<uintptr_t, Allocation*>;
  return *m;
}
uint64_t g_next_alloc = 1;
std::size_t g_device_bytes = 0;  // live device allocations, rounded

std::size_t round_up(std::size_t n, std::size_t a) { return (n + a - 1) / a * a; }

// What the kernel running on this thread is, for the fault handler.
thread_local const char* t_running = nullptr;

// Device memory is the device's: outside the device's own work (complete(), which runs queued
// operations) it is PROT_NONE, so host code that dereferences a device pointer faults, named, as
// it would on a GPU. DIFFUSE_SIM_PROTECT=0 leaves it readable (for a debugger, say).
bool protect_device_memory() {
  static const bool on = [] {
    const char* e = std::getenv("DIFFUSE_SIM_PROTECT");
    return !(e && std::strcmp(e, "0") == 0);
  }();
  return on;
}
int g_exec_depth = 0;

void data_access(Allocation* a, bool on) {
  if (a->host || a->freed) return;
  ::mprotect(a->map + kPage, a->map_bytes - 2 * kPage, on ? PROT_READ | PROT_WRITE : PROT_NONE);
}

// The fault handler: an access to a guard page or a freed allocation is named, then the process
// dies as a GPU context does on an illegal address (cudaErrorIllegalAddress cannot be recovered
// from either). Reads the allocation table without the lock: the faulting thread may hold it.
struct sigaction g_prev_segv {}, g_prev_bus {};

void on_fault(int sig, siginfo_t* info, void* ctx) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(info->si_addr);
  char buf[1024];
  int n = 0;
  const Allocation* hit = nullptr;
  for (const auto& [base, al] : allocations()) {
    const uintptr_t m = reinterpret_cast<uintptr_t>(al->map);
    if (a >= m && a < m + al->map_bytes) {
      hit = al;
      break;
    }
  }
  const char* who = t_running ? t_running : "host code";
  if (hit) {
    const uintptr_t b = reinterpret_cast<uintptr_t>(hit->base);
    const char* kind = hit->host ? "page-locked host allocation" : "device allocation";
    if (!hit->freed && !hit->host && !t_running && a >= b && a < b + hit->size)
      n = std::snprintf(buf, sizeof buf,
                        "diffuse sim: illegal address: host code accessed %#" PRIxPTR ", byte %zu of %s #%" PRIu64
                        " (%zu bytes at %#" PRIxPTR "): device memory is not the host's (copy it to the host first)\n",
                        a, static_cast<std::size_t>(a - b), kind, hit->id, hit->size, b);
    else if (hit->freed)
      n = std::snprintf(buf, sizeof buf,
                        "diffuse sim: illegal address: %s accessed %#" PRIxPTR ", inside %s #%" PRIu64
                        " (%zu bytes at %#" PRIxPTR "), which was freed\n",
                        who, a, kind, hit->id, hit->size, b);
    else if (a >= b + hit->size)
      n = std::snprintf(buf, sizeof buf,
                        "diffuse sim: illegal address: %s accessed %#" PRIxPTR ", %zu bytes past the end of %s #%" PRIu64
                        " (%zu bytes at %#" PRIxPTR ")\n",
                        who, a, static_cast<std::size_t>(a - (b + hit->size)), kind, hit->id, hit->size, b);
    else
      n = std::snprintf(buf, sizeof buf,
                        "diffuse sim: illegal address: %s accessed %#" PRIxPTR ", %zu bytes before the start of %s #%" PRIu64
                        " (%zu bytes at %#" PRIxPTR ")\n",
                        who, a, static_cast<std::size_t>(b - a), kind, hit->id, hit->size, b);
  } else if (t_running) {
    n = std::snprintf(buf, sizeof buf, "diffuse sim: illegal address: %s accessed %#" PRIxPTR
                      ", which is no device allocation\n", who, a);
  } else {
    // Not the device's fault: whoever handled it before (a test runner, say) has it.
    const struct sigaction& prev = sig == SIGBUS ? g_prev_bus : g_prev_segv;
    if ((prev.sa_flags & SA_SIGINFO) && prev.sa_sigaction) {
      prev.sa_sigaction(sig, info, ctx);
      return;
    }
    if (prev.sa_handler != SIG_DFL && prev.sa_handler != SIG_IGN && prev.sa_handler) {
      prev.sa_handler(sig);
      return;
    }
  }
  if (n > 0) {
    ssize_t w = ::write(2, buf, static_cast<std::size_t>(n));
    (void)w;
  }
  signal(sig, SIG_DFL);
  raise(sig);
}

// Installs the handler again whenever someone replaced it (a test runner installs its own around
// each test): called at every allocation and every run of queued work.
void install_fault_handler() {
  for (int sig : {SIGSEGV, SIGBUS}) {
    struct sigaction cur {};
    sigaction(sig, nullptr, &cur);
    if ((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == on_fault) continue;
    (sig == SIGBUS ? g_prev_bus : g_prev_segv) = cur;
    struct sigaction sa {};
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(sig, &sa, nullptr);
  }
}

// Each thread that runs kernels gets a signal stack: a fault may come from a fiber's small stack.
void ensure_signal_stack() {
  thread_local bool done = false;
  if (done) return;
  done = true;
  stack_t ss{};
  ss.ss_size = 64 * 1024;
  ss.ss_sp = std::malloc(ss.ss_size);
  ss.ss_flags = 0;
  if (ss.ss_sp) sigaltstack(&ss, nullptr);
}

}  // namespace

std::string Allocation::str() const {
  char buf[160];
  std::snprintf(buf, sizeof buf, "%s #%" PRIu64 " (%zu bytes at %p)",
                host ? "page-locked host allocation" : "device allocation", id, size, static_cast<void*>(base));
  return buf;
}

// cudaMalloc / cudaHostAlloc: [guard page][... data, its end at the next guard][guard page].
// NaN over [0, bytes) (its first kMaxPoison bytes) and the canary over the rest of the block.
void poison(Allocation* a, std::size_t bytes) {
  const std::size_t rounded = round_up(std::max<std::size_t>(a->size, 1), kAlign);
  if (bytes == 0) {  // a returned block: all canary, as far as the cap
    std::memset(a->base, kPoison, std::min(rounded, kMaxPoison));
    return;
  }
  std::memset(a->base, kPoison, std::min(bytes, kMaxPoison));
  if (bytes < rounded) std::memset(a->base + bytes, kPoison, rounded - bytes);
}

Allocation* map_allocation(std::size_t size, bool host) {
  install_fault_handler();
  const std::size_t rounded = round_up(std::max<std::size_t>(size, 1), kAlign);
  const std::size_t data = round_up(rounded, kPage);
  const std::size_t total = data + 2 * kPage;
  void* m = ::mmap(nullptr, total, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED) return nullptr;
  char* map = static_cast<char*>(m);
  if (::mprotect(map + kPage, data, PROT_READ | PROT_WRITE) != 0) {
    ::munmap(m, total);
    return nullptr;
  }
  auto* a = new Allocation;
  a->id = g_next_alloc++;
  a->map = map;
  a->map_bytes = total;
  a->base = map + kPage + data - rounded;
  a->size = size;
  a->host = host;
  a->tenant_host = a->tenant_run = size;
  // Fresh memory holds garbage on a GPU; here NaN, so a read of what no one wrote shows. The
  // rounding slack behind it is a canary.
  poison(a, size);
  allocations()[reinterpret_cast<uintptr_t>(a->base)] = a;
  if (!host) g_device_bytes += rounded;
  if (!host && protect_device_memory() && g_exec_depth == 0) data_access(a, false);
  return a;
}

// While queued work runs, device memory is accessible (nested scopes: the outermost decides).
struct ExecScope {
  ExecScope() {
    if (g_exec_depth++ != 0) return;
    install_fault_handler();
    if (protect_device_memory())
      for (auto& [base, a] : allocations()) data_access(a, true);
  }
  ~ExecScope() {
    if (--g_exec_depth == 0 && protect_device_memory())
      for (auto& [base, a] : allocations()) data_access(a, false);
  }
  ExecScope(const ExecScope&) = delete;
  ExecScope& operator=(const ExecScope&) = delete;
};

void unmap_allocation(Allocation* a) {
  // Kept reserved (no memory behind it) so that a later access is named as use after free.
  const std::size_t rounded = round_up(std::max<std::size_t>(a->size, 1), kAlign);
  ::mprotect(a->map, a->map_bytes, PROT_NONE);
  ::madvise(a->map, a->map_bytes, MADV_DONTNEED);
  a->freed = true;
  if (!a->host) g_device_bytes -= rounded;
}

std::size_t device_bytes_in_use() { return g_device_bytes; }

Allocation* find_allocation(const void* p, bool include_end) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  auto& m = allocations();
  auto it = m.upper_bound(a);
  if (it == m.begin()) return nullptr;
  --it;
  Allocation* al = it->second;
  const uintptr_t b = reinterpret_cast<uintptr_t>(al->base);
  if (a < b + al->size || (include_end && a == b + al->size) || (al->size == 0 && a == b)) return al;
  return nullptr;
}

bool is_device_pointer(const void* p) {
  const Allocation* a = find_allocation(p);
  return a && !a->host && !a->freed;
}

bool check_range(const void* p, std::size_t bytes, const std::string& what, bool device_only) {
  Allocation* a = find_allocation(p);
  if (!a) {
    report(what + ": " + (p ? "the address is in no device allocation" : "a null pointer"));
    return false;
  }
  if (a->freed) {
    report(what + ": " + a->str() + " was freed");
    return false;
  }
  if (device_only && a->host) {
    report(what + ": " + a->str() + " is host memory where device memory is needed");
    return false;
  }
  const std::size_t off = static_cast<std::size_t>(static_cast<const char*>(p) - a->base);
  if (off + bytes > a->size) {
    report(what + ": bytes [" + std::to_string(off) + ", " + std::to_string(off + bytes) + ") of " + a->str() +
           " run past its end");
    return false;
  }
  if (!a->host && off + bytes > a->tenant_host) {
    report(what + ": bytes [" + std::to_string(off) + ", " + std::to_string(off + bytes) + ") of " + a->str() +
           " run past the end of the " + std::to_string(a->tenant_host) +
           "-byte tensor that the caching allocator placed in it");
    return false;
  }
  return true;
}

namespace {

// After work that used `a` ran: was anything written behind the tensor's end (or into a block
// whose tensor is gone)?
void check_canary(Allocation* a, const std::string& who) {
  if (a->freed) return;
  const std::size_t rounded = round_up(std::max<std::size_t>(a->size, 1), kAlign);
  const std::size_t from = a->tenant_live ? a->tenant_run : 0;
  const std::size_t to = a->tenant_live ? rounded : std::min(rounded, kMaxPoison);
  const unsigned char* p = reinterpret_cast<const unsigned char*>(a->base);
  // Intact is the common case: compare a block at a time, look closer only where one differs.
  static const auto canary = [] {
    std::array<unsigned char, 4096> c{};
    c.fill(kPoison);
    return c;
  }();
  std::size_t start = from;
  while (start < to) {
    const std::size_t n = std::min(canary.size(), to - start);
    if (std::memcmp(p + start, canary.data(), n) != 0) break;
    start += n;
  }
  for (std::size_t i = start; i < to; ++i) {
    if (p[i] != kPoison) {
      std::size_t last = i;
      for (std::size_t j = i; j < to; ++j)
        if (p[j] != kPoison) last = j;
      std::memset(a->base + from, kPoison, to - from);  // reported once
      std::string text = "illegal address: " + who + " wrote bytes [" + std::to_string(i) + ", " +
                         std::to_string(last + 1) + ") of " + a->str() + ", ";
      if (!a->tenant_live)
        text += "whose tensor had been freed (use after free)";
      else if (a->tenant_run < a->size)
        text += "past the end of the " + std::to_string(a->tenant_run) +
                "-byte tensor that the caching allocator placed in it";
      else
        text += "past its end";
      set_sticky(cudaErrorIllegalAddress, text);
      return;
    }
  }
}

// Only what the operation may have written (a read cannot spoil a canary).
void check_canaries(const std::vector<MemUse>& uses, const std::string& who) {
  for (const MemUse& u : uses)
    if (u.write)
      if (Allocation* a = find_allocation(u.p)) check_canary(a, who);
}

}  // namespace

// ---- numbers --------------------------------------------------------------------------------------

float bf16_to_f32(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fff;
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
float f16_to_f32(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff;
  float f;
  if (e == 0) {
    f = std::ldexp(static_cast<float>(m), -24);
  } else if (e == 31) {
    f = m ? std::numeric_limits<float>::quiet_NaN() : std::numeric_limits<float>::infinity();
  } else {
    f = std::ldexp(static_cast<float>(m | 0x400u), static_cast<int>(e) - 25);
  }
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u |= sign;
  std::memcpy(&f, &u, 4);
  return f;
}
uint16_t f32_to_f16(float f) {
  if (std::isnan(f)) return 0x7fff;
  const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  const float a = std::fabs(f);
  if (a >= 65520.f) return sign | 0x7c00;
  if (a < std::ldexp(1.f, -25)) return sign;
  int e;
  std::frexp(a, &e);  // a = m 2^e, m in [0.5, 1)
  const int exp = std::max(e - 1, -14);  // f16 exponent of a (subnormals share -14)
  const float q = std::nearbyint(std::ldexp(a, 10 - exp));  // units of 2^(exp-10), nearest even
  const uint32_t units = static_cast<uint32_t>(q);
  if (exp == -14 && units < 0x400) return sign | static_cast<uint16_t>(units);
  const int ee = units >= 0x800 ? exp + 1 : exp;
  const uint32_t mm = units >= 0x800 ? units / 2 : units;
  if (ee > 15) return sign | 0x7c00;
  return sign | static_cast<uint16_t>(((ee + 15) << 10) | (mm & 0x3ff));
}

std::size_t type_size(cudaDataType_t t) {
  switch (t) {
    case CUDA_R_32F: return 4;
    case CUDA_R_64F: return 8;
    case CUDA_R_16F:
    case CUDA_R_16BF: return 2;
    default: return 0;
  }
}

double load(const void* p, cudaDataType_t t, std::size_t i) {
  switch (t) {
    case CUDA_R_32F: return static_cast<const float*>(p)[i];
    case CUDA_R_64F: return static_cast<const double*>(p)[i];
    case CUDA_R_16BF: return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case CUDA_R_16F: return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
    default: return 0;
  }
}

void store(void* p, cudaDataType_t t, std::size_t i, double v) {
  switch (t) {
    case CUDA_R_32F: static_cast<float*>(p)[i] = static_cast<float>(v); break;
    case CUDA_R_64F: static_cast<double*>(p)[i] = v; break;
    case CUDA_R_16BF: static_cast<uint16_t*>(p)[i] = f32_to_bf16(static_cast<float>(v)); break;
    case CUDA_R_16F: static_cast<uint16_t*>(p)[i] = f32_to_f16(static_cast<float>(v)); break;
    default: break;
  }
}

void scribble(void* p, std::size_t bytes) {
  // Not NaN: values that look plausible, so that reading them is wrong rather than merely loud.
  // The head and the tail of a large range: enough to be read, cheap to write.
  static const auto pattern = [] {
    std::array<unsigned char, 4096> a{};
    for (std::size_t i = 0; i < a.size(); ++i) a[i] = static_cast<unsigned char>(0x3d + 7 * (i % 13));
    return a;
  }();
  auto* b = static_cast<unsigned char*>(p);
  auto fill = [&](std::size_t from, std::size_t to) {
    for (std::size_t i = from; i < to; i += pattern.size())
      std::memcpy(b + i, pattern.data(), std::min(pattern.size(), to - i));
  };
  constexpr std::size_t kEnds = std::size_t{64} << 10;
  if (bytes <= 2 * kEnds) {
    fill(0, bytes);
  } else {
    fill(0, kEnds);
    fill(bytes - kEnds, bytes);
  }
}

// ---- streams ------------------------------------------------------------------------------------

namespace {

uint64_t g_next_stream = 1;
Clock g_host;  // what the host has waited for

std::map<uintptr_t, StreamPtr>& streams() {  // live streams by handle
  static auto* m = new std::map<uintptr_t, StreamPtr>;
  return *m;
}
std::vector<StreamPtr>& orphans() {  // destroyed with work still queued
  static auto* v = new std::vector<StreamPtr>;
  return *v;
}

StreamPtr make_legacy() {
  auto s = std::make_shared<Stream>();
  s->id = g_next_stream++;
  s->legacy = true;
  s->blocking = true;
  return s;
}

}  // namespace

std::vector<StreamPtr> live_streams();

StreamPtr& legacy_stream() {
  static auto* s = new StreamPtr(make_legacy());
  return *s;
}

std::string Stream::str() const {
  if (legacy) return "the legacy default stream";
  char buf[64];
  std::snprintf(buf, sizeof buf, "stream %p", static_cast<void*>(handle));
  return buf;
}

// Handles are addresses no one can dereference and never reuse, so a destroyed stream's handle
// stays invalid forever.
StreamPtr create_stream(unsigned flags) {
  auto s = std::make_shared<Stream>();
  s->id = g_next_stream++;
  s->blocking = (flags & cudaStreamNonBlocking) == 0;
  s->handle = reinterpret_cast<cudaStream_t>(uintptr_t{0x5d0000000000} + s->id * 16);
  streams()[reinterpret_cast<uintptr_t>(s->handle)] = s;
  return s;
}

void destroy_stream(const StreamPtr& s) {
  streams().erase(reinterpret_cast<uintptr_t>(s->handle));
  s->destroyed = true;
  if (s->done < s->seq) orphans().push_back(s);
}

StreamPtr stream_of(cudaStream_t h) {
  if (h == nullptr || h == cudaStreamLegacy) return legacy_stream();
  if (h == cudaStreamPerThread) {
    // The per-thread default stream: a blocking stream of this thread's own.
    thread_local StreamPtr per_thread;
    if (!per_thread) per_thread = create_stream(cudaStreamDefault);
    return per_thread;
  }
  auto it = streams().find(reinterpret_cast<uintptr_t>(h));
  if (it == streams().end()) {
    set_error(cudaErrorInvalidResourceHandle);
    return nullptr;
  }
  return it->second;
}

StreamPtr stream_by_id(uint64_t id) {
  for (const StreamPtr& s : live_streams())
    if (s->id == id) return s;
  return nullptr;
}

std::vector<StreamPtr> live_streams() {
  std::vector<StreamPtr> v{legacy_stream()};
  for (auto& [h, s] : streams()) v.push_back(s);
  for (auto& s : orphans()) v.push_back(s);
  return v;
}

void merge(Clock& into, const Clock& from) {
  for (const auto& [id, seq] : from) {
    uint64_t& v = into[id];
    if (seq > v) v = seq;
  }
}

void host_waited(const Stream& s, const Clock& c) {
  merge(g_host, c);
  uint64_t& v = g_host[s.id];
  v = std::max(v, s.done);
}

const Clock& host_clock() { return g_host; }

namespace {

uint64_t thread_id() {
  static std::atomic<uint64_t> next{1};
  thread_local uint64_t id = next++;
  return id;
}

std::vector<std::shared_ptr<Capture>>& captures() {  // active
  static auto* v = new std::vector<std::shared_ptr<Capture>>;
  return *v;
}


void run_op(Op& op) {
  if (!op.run || sticky() != cudaSuccess) return;
  ensure_signal_stack();
  const char* prev = t_running;
  t_running = op.name.c_str();
  try {
    op.run();
  } catch (const std::exception& e) {
    set_sticky(cudaErrorLaunchFailure, "unspecified launch failure: " + op.name + " failed: " + e.what());
  }
  t_running = prev;
}

}  // namespace

uint64_t current_thread_id() { return thread_id(); }
thread_local cudaStreamCaptureMode t_capture_mode = cudaStreamCaptureModeGlobal;
std::vector<std::shared_ptr<Capture>>& active_captures() { return captures(); }

void complete(Stream& s, uint64_t upto) {
  if (s.done >= upto || s.queue_head >= s.queue.size()) return;
  ExecScope exec;
  while (s.done < upto && s.queue_head < s.queue.size()) {
    Op op = std::move(s.queue[s.queue_head]);
    ++s.queue_head;
    for (auto& [t, k] : op.deps) complete(*t, k);
    run_op(op);
    s.done = op.seq;
  }
  if (s.queue_head == s.queue.size()) {
    s.queue.clear();
    s.queue_head = 0;
  } else if (s.queue_head > 4096) {
    s.queue.erase(s.queue.begin(), s.queue.begin() + static_cast<std::ptrdiff_t>(s.queue_head));
    s.queue_head = 0;
  }
}

void complete_all() {
  ExecScope exec;
  for (const StreamPtr& s : live_streams()) complete(*s, s->seq);
  auto& o = orphans();
  o.erase(std::remove_if(o.begin(), o.end(), [](const StreamPtr& s) { return s->done == s->seq; }), o.end());
}

bool blocking_stream_captured() {
  for (const auto& c : captures())
    for (const StreamPtr& s : c->streams)
      if (s->blocking) return true;
  return false;
}

void invalidate(Capture& c, const std::string& why) {
  if (!c.invalidated) {
    c.invalidated = true;
    c.why = why;
    report("graph capture invalidated: " + why);
  }
}

cudaError_t unsafe_call(const char* what) {
  if (t_capture_mode == cudaStreamCaptureModeRelaxed) return cudaSuccess;
  const uint64_t me = thread_id();
  bool bad = false;
  for (const auto& c : captures()) {
    const bool mine = c->thread == me && c->mode != cudaStreamCaptureModeRelaxed;
    const bool global_elsewhere = t_capture_mode == cudaStreamCaptureModeGlobal && c->thread != me &&
                                  c->mode == cudaStreamCaptureModeGlobal;
    if (mine || global_elsewhere) {
      invalidate(*c, std::string(what) + " while a stream is being captured (" +
                         (mine ? "by this thread" : "by another thread, in cudaStreamCaptureModeGlobal") +
                         "): a potentially unsafe call, prohibited in this thread's capture mode");
      bad = true;
    }
  }
  return bad ? set_error(cudaErrorStreamCaptureUnsupported) : cudaSuccess;
}

namespace {

// The allocations a set of uses touches, without repeats.
std::vector<Allocation*> touched(const std::vector<MemUse>& uses) {
  std::vector<Allocation*> out;
  for (const MemUse& u : uses)
    if (Allocation* a = find_allocation(u.p))
      if (std::find(out.begin(), out.end(), a) == out.end()) out.push_back(a);
  return out;
}

// Two accesses of one allocation from different streams, at least one a write, with no order
// between them (an event, the legacy stream's implicit synchronisation, a host wait followed by
// the queueing of the second): a race the GPU resolves either way from run to run.
void check_order(const Stream& s, Allocation& a, const Allocation::Access& prior, bool write, const std::string& name) {
  if (prior.stream == s.id) return;
  auto it = s.clock.find(prior.stream);
  if (it != s.clock.end() && it->second >= prior.seq) return;
  set_sticky(cudaErrorLaunchFailure,
             "stream race on " + a.str() + ": " + name + " on " + s.str() + (write ? " writes" : " reads") +
                 " it, and " + prior.name + " on another stream is not ordered before it (no event, legacy-stream synchronisation or host wait in between)");
}

void note_uses(const Stream& s, const std::vector<MemUse>& uses, const std::string& name) {
  for (Allocation* a : touched(uses)) {
    a->last_use[s.id] = s.seq;
    a->last_use_name[s.id] = name;
    bool write = false;
    for (const MemUse& u : uses)
      if (u.write && find_allocation(u.p) == a) write = true;
    if (a->written) check_order(s, *a, a->last_write, write, name);
    if (write)
      for (const auto& [id, r] : a->reads) check_order(s, *a, r, true, name);
    Allocation::Access me{s.id, s.seq, name};
    if (write) {
      a->written = true;
      a->last_write = me;
      a->reads.clear();
    } else {
      a->reads[s.id] = me;
    }
  }
}

}  // namespace

// Records a graph's uses as uses by the operation that launches it.
void note_graph_uses(const Stream& s, const GraphData& g, const std::string& name) {
  for (const Node& n : g.nodes) note_uses(s, n.uses, name + " (" + n.name + ")");
}

cudaError_t submit(const StreamPtr& s, std::string name, std::function<void()> run, std::vector<MemUse> uses,
                   std::vector<std::pair<StreamPtr, uint64_t>> deps, bool deps_order) {
  if (const cudaError_t st = sticky()) return st;
  if (s->legacy && blocking_stream_captured()) {
    for (const auto& c : captures())
      invalidate(*c, name + " on the legacy default stream while a blocking stream is being captured");
    return set_error(cudaErrorStreamCaptureImplicit);
  }
  if (run) {
    run = [run = std::move(run), uses, name]() {
      run();
      check_canaries(uses, name);
    };
  }
  if (s->capture) {
    Capture& c = *s->capture;
    if (c.invalidated) return set_error(cudaErrorStreamCaptureInvalidated);
    Node n;
    n.name = std::move(name);
    n.run = std::move(run);
    n.deps = s->frontier;
    n.uses = std::move(uses);
    c.graph->nodes.push_back(std::move(n));
    s->frontier = {c.graph->nodes.size() - 1};
    return cudaSuccess;
  }
  // Ordered after what the host has waited for (it queues this after the wait returned), and,
  // through the legacy stream's implicit synchronisation, after the other side's queued work.
  merge(s->clock, g_host);
  if (s->legacy) {
    for (const StreamPtr& t : live_streams())
      if (t.get() != s.get() && t->blocking) {
        if (t->seq > t->done) deps.emplace_back(t, t->seq);
        merge(s->clock, t->clock);
        uint64_t& v = s->clock[t->id];
        v = std::max(v, t->seq);
      }
  } else if (s->blocking) {
    const StreamPtr& l = legacy_stream();
    if (l->seq > l->done) deps.emplace_back(l, l->seq);
    merge(s->clock, l->clock);
    uint64_t& v = s->clock[l->id];
    v = std::max(v, l->seq);
  }
  // Extra dependencies come with their own clocks (an event's, merged by the caller).
  for (auto& [t, k] : deps)
    if (deps_order && t.get() != s.get()) {
      uint64_t& v = s->clock[t->id];
      v = std::max(v, k);
    }
  Op op;
  op.seq = ++s->seq;
  s->clock[s->id] = op.seq;
  op.name = name;
  op.deps = std::move(deps);
  note_uses(*s, uses, name);
  op.run = std::move(run);
  s->queue.push_back(std::move(op));
  static const bool eager = [] {
    const char* e = std::getenv("DIFFUSE_SIM_EAGER");
    return e && *e && std::strcmp(e, "0") != 0;
  }();
  if (eager) {
    complete(*s, s->seq);
  } else if (s->queue.size() - s->queue_head > kMaxQueue) {
    complete(*s, s->done + kMaxQueue / 2);  // the GPU runs ahead on its own
  }
  return cudaSuccess;
}

// ---- kernel launches --------------------------------------------------------------------------

int queue_launch(CUstream_st* stream, std::unique_ptr<KernelLaunch> launch);

namespace {

// The device memory a launch's parameters point into.
std::vector<MemUse> launch_uses(const KernelLaunch& l) {
  std::vector<MemUse> uses;
  for (const KernelLaunch::Param& p : l.param_info) {
    if (p.pointer) {
      const void* q;
      std::memcpy(&q, l.params + p.offset, sizeof q);
      if (q && find_allocation(q)) uses.push_back({q, 0, !p.to_const});
      continue;
    }
    // A struct (or anything else): each aligned word that points into an allocation.
    for (std::size_t off = (p.offset + 7) / 8 * 8; off + 8 <= p.offset + p.size; off += 8) {
      const void* q;
      std::memcpy(&q, l.params + off, sizeof q);
      if (q && find_allocation(q)) uses.push_back({q, 0, true});
    }
  }
  return uses;
}

}  // namespace

int launch_kernel(CUstream_st* stream, std::unique_ptr<KernelLaunch> launch) {
  Guard g(lock());
  // The launch's error is what cudaGetLastError says after it: reported here, so cleared here.
  const int e = queue_launch(stream, std::move(launch));
  if (e != cudaSuccess) (void)take_last_error(true);
  return e;
}

int queue_launch(CUstream_st* stream, std::unique_ptr<KernelLaunch> launch) {
  if (const cudaError_t st = sticky()) return st;
  StreamPtr s = stream_of(stream);
  if (!s) return cudaErrorInvalidResourceHandle;
  const KernelLaunch& l = *launch;
  const uint64_t threads = uint64_t{l.block[0]} * l.block[1] * l.block[2];
  // sm_90's limits, as the launch reports them (cudaGetLastError after <<<>>>).
  if (threads == 0 || threads > 1024 || l.block[0] > 1024 || l.block[1] > 1024 || l.block[2] > 64 || l.grid[0] == 0 ||
      l.grid[1] == 0 || l.grid[2] == 0 || l.grid[0] > 2147483647u || l.grid[1] > 65535 || l.grid[2] > 65535) {
    report("launch of " + std::string(l.kernel) + " (" + l.file + ":" + std::to_string(l.line) + "): grid (" +
           std::to_string(l.grid[0]) + "," + std::to_string(l.grid[1]) + "," + std::to_string(l.grid[2]) +
           "), block (" + std::to_string(l.block[0]) + "," + std::to_string(l.block[1]) + "," +
           std::to_string(l.block[2]) + ") is over sm_90's limits");
    return set_error(cudaErrorInvalidConfiguration);
  }
  // More than 48 KiB of dynamic shared memory needs cudaFuncSetAttribute(...,
  // cudaFuncAttributeMaxDynamicSharedMemorySize, ...) first, which diffuse never calls.
  if (l.smem > 48 * 1024) {
    report("launch of " + std::string(l.kernel) + " (" + l.file + ":" + std::to_string(l.line) + ") asks for " +
           std::to_string(l.smem) +
           " bytes of dynamic shared memory: over 48 KiB needs cudaFuncSetAttribute with "
           "cudaFuncAttributeMaxDynamicSharedMemorySize first");
    return set_error(cudaErrorInvalidValue);
  }
  std::vector<MemUse> uses = launch_uses(l);
  for (const MemUse& u : uses) {
    Allocation* a = find_allocation(u.p);
    if (a->freed) {
      report("launch of " + std::string(l.kernel) + " (" + l.file + ":" + std::to_string(l.line) +
             "): an argument points into " + a->str() + ", which was freed");
      return set_error(cudaErrorInvalidValue);
    }
  }
  ++counters_ref().kernels;
  std::string name = "kernel " + std::string(l.kernel) + " (launched at " + l.file + ":" + std::to_string(l.line) + ")";
  std::shared_ptr<KernelLaunch> shared(std::move(launch));
  return submit(s, std::move(name), [shared] { shared->run(); }, std::move(uses));
}

// ---- the caching allocator's hooks ----------------------------------------------------------------

std::string block_handed_out(void* p, std::size_t bytes, void* stream) {
  Guard g(lock());
  Allocation* a = find_allocation(p);
  if (!a || a->freed || a->host || a->base != p) return "";
  StreamPtr s = stream_of(static_cast<cudaStream_t>(stream));
  if (!s) {
    (void)take_last_error(true);
    return "";
  }
  std::string hazard;
  if (!s->capture) {
    // Ordered before the new tenant's work: what the host waited for, and what the stream waits for.
    Clock c = s->clock;
    merge(c, g_host);
    for (const auto& [id, seq] : a->last_use) {
      if (id == s->id) continue;
      auto it = c.find(id);
      if (it == c.end() || it->second < seq) {
        hazard = a->str() + " is handed to " + s->str() + " for a " + std::to_string(bytes) +
                 "-byte tensor, but its last use, " + a->last_use_name[id] +
                 ", on another stream, is not ordered before that stream's work (no event or host wait in between)";
        break;
      }
    }
  }
  if (hazard.empty() && a->graph_refs > 0 && !s->capture)
    hazard = a->str() + " is handed to " + s->str() + " for a " + std::to_string(bytes) +
             "-byte tensor while a CUDA graph that uses it still exists: its next replay would overwrite the tensor";
  if (!hazard.empty()) report(hazard);
  a->tenant_host = bytes;
  submit(s, "the caching allocator's hand-out of " + a->str(),
         [a, bytes] {
           a->tenant_run = bytes;
           a->tenant_live = true;
           poison(a, bytes);
         },
         {});
  (void)take_last_error(true);
  return hazard;
}

void block_returned(void* p, void* stream) {
  Guard g(lock());
  Allocation* a = find_allocation(p);
  if (!a || a->freed || a->host || a->base != p) return;
  StreamPtr s = stream_of(static_cast<cudaStream_t>(stream));
  if (!s) {
    (void)take_last_error(true);
    return;
  }
  a->tenant_host = a->size;
  // During a capture the free is bookkeeping of the capture's pool: nothing to replay.
  if (s->capture) return;
  // Runs once every use queued so far has run (on any stream), without declaring that order.
  std::vector<std::pair<StreamPtr, uint64_t>> after;
  for (const auto& [id, seq] : a->last_use)
    if (id != s->id)
      if (StreamPtr t = stream_by_id(id); t && t->done < seq) after.emplace_back(t, seq);
  submit(s, "the caching allocator's return of " + a->str(),
         [a] {
           a->tenant_live = false;
           poison(a, 0);
         },
         {}, std::move(after), false);
  (void)take_last_error(true);
}

}  // namespace diffuse::sim
