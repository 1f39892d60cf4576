// core/profile.h: a per-op wall-clock profile of the Tensor-level kernels (kernels/<op>.cpp) and
// the optimizer, for finding where a training or sampling step spends its time.
//
// Off by default. DIFFUSE_PROFILE=1 in the environment turns it on for the whole process and
// prints the table to stderr at exit; a program can also switch it with set_enabled() and print
// with report() (bench/cpu_train_step --profile). Off, a scope is one relaxed atomic load and a
// branch, no clock read and no allocation.
//
// A scope names a const char* that outlives the process (a literal). Times are self times, as
// torch.profiler's "Self CPU": a scope's wall time less the scopes opened inside it on the same
// thread. Scopes are opened by the thread that calls the op (the OpenMP threads inside an op are
// its own time); calls from several threads at once are counted, each on its own thread's stack.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>

namespace diffuse::prof {

namespace detail {
extern std::atomic<bool> g_enabled;
void record(const char* name, int64_t self_ns);
struct Frame;
Frame* push(const char* name);
void pop(Frame* f);
}  // namespace detail

inline bool enabled() { return detail::g_enabled.load(std::memory_order_relaxed); }
void set_enabled(bool on);
void reset();  // forget the counts so far

// The table of ops by self time, largest first, at most `top` rows (0: all), with each op's
// calls, total and mean self time and share of the profiled time. `total_ms`, when > 0, is the
// wall time of the profiled region as the caller measured it; the rows then add an
// "(outside the ops)" line: autograd bookkeeping, allocation, Python-free glue.
void report(std::FILE* out, const char* title, int top = 0, double total_ms = 0);

class Scope {
 public:
  explicit Scope(const char* name) : frame_(enabled() ? detail::push(name) : nullptr) {}
  ~Scope() {
    if (frame_) detail::pop(frame_);
  }
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

 private:
  detail::Frame* frame_;
};

}  // namespace diffuse::prof

#define DF_PROFILE_CAT2(a, b) a##b
#define DF_PROFILE_CAT(a, b) DF_PROFILE_CAT2(a, b)
// DF_PROFILE("conv2d_forward"): time the rest of the enclosing block under that name.
#define DF_PROFILE(name) ::diffuse::prof::Scope DF_PROFILE_CAT(df_profile_scope_, __LINE__)(name)
