// core/profile.cpp: the profile's table and the per-thread stack of open scopes (core/profile.h).
#include "core/profile.h"

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace diffuse::prof {

namespace detail {

using Clock = std::chrono::steady_clock;

struct Frame {
  const char* name;
  Clock::time_point start;
  int64_t child_ns;
  Frame* parent;
};

struct Stat {
  int64_t calls = 0, self_ns = 0;
};

namespace {

std::mutex g_mu;
std::unordered_map<std::string, Stat>& table() {
  static auto* t = new std::unordered_map<std::string, Stat>;  // never destroyed: report() runs at exit
  return *t;
}

// A fixed pool per thread: scopes nest a few deep (an op inside the optimizer), never more.
constexpr int kDepth = 16;
thread_local Frame t_frames[kDepth];
thread_local int t_depth = 0;

void report_at_exit() { report(stderr, "DIFFUSE_PROFILE: the whole run"); }

bool from_env() {
  const char* e = std::getenv("DIFFUSE_PROFILE");
  if (!e || !*e || std::string(e) == "0") return false;
  std::atexit(report_at_exit);
  return true;
}

}  // namespace

std::atomic<bool> g_enabled{from_env()};

void record(const char* name, int64_t self_ns) {
  std::lock_guard<std::mutex> lock(g_mu);
  Stat& s = table()[name];
  ++s.calls;
  s.self_ns += self_ns;
}

Frame* push(const char* name) {
  if (t_depth >= kDepth) return nullptr;  // deeper than any op nests: left out, not misattributed
  Frame* f = &t_frames[t_depth++];
  f->name = name;
  f->child_ns = 0;
  f->parent = t_depth > 1 ? &t_frames[t_depth - 2] : nullptr;
  f->start = Clock::now();
  return f;
}

void pop(Frame* f) {
  const int64_t ns = std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - f->start).count();
  if (f->parent) f->parent->child_ns += ns;
  --t_depth;
  record(f->name, ns - f->child_ns);
}

}  // namespace detail

void set_enabled(bool on) { detail::g_enabled.store(on, std::memory_order_relaxed); }

void reset() {
  std::lock_guard<std::mutex> lock(detail::g_mu);
  detail::table().clear();
}

void report(std::FILE* out, const char* title, int top, double total_ms) {
  std::vector<std::pair<std::string, detail::Stat>> rows;
  {
    std::lock_guard<std::mutex> lock(detail::g_mu);
    rows.assign(detail::table().begin(), detail::table().end());
  }
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.second.self_ns > b.second.self_ns; });
  double ops_ms = 0;
  for (const auto& r : rows) ops_ms += r.second.self_ns / 1e6;
  const double whole = total_ms > 0 ? std::max(total_ms, ops_ms) : ops_ms;
  std::fprintf(out, "%s: %.1f ms in the ops", title, ops_ms);
  if (total_ms > 0) std::fprintf(out, " of %.1f ms measured", total_ms);
  std::fprintf(out, "\n| op | calls | self ms | mean ms | share |\n| --- | ---: | ---: | ---: | ---: |\n");
  const size_t n = top > 0 ? std::min(rows.size(), static_cast<size_t>(top)) : rows.size();
  for (size_t i = 0; i < n; ++i) {
    const double ms = rows[i].second.self_ns / 1e6;
    std::fprintf(out, "| %s | %lld | %.2f | %.3f | %.1f%% |\n", rows[i].first.c_str(),
                 static_cast<long long>(rows[i].second.calls), ms, ms / rows[i].second.calls,
                 whole > 0 ? 100 * ms / whole : 0.0);
  }
  if (n < rows.size()) {
    double rest = 0;
    for (size_t i = n; i < rows.size(); ++i) rest += rows[i].second.self_ns / 1e6;
    std::fprintf(out, "| (%zu more ops) | | %.2f | | %.1f%% |\n", rows.size() - n, rest,
                 whole > 0 ? 100 * rest / whole : 0.0);
  }
  if (total_ms > 0)
    std::fprintf(out, "| (outside the ops) | | %.2f | | %.1f%% |\n", whole - ops_ms,
                 whole > 0 ? 100 * (whole - ops_ms) / whole : 0.0);
}

}  // namespace diffuse::prof
