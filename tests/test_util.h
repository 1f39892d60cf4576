// tests/test_util.h: fresh random inputs, poisoned outputs, and argued comparisons.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace diffuse::test {

// A fresh folder under /tmp (mkdtemp), removed with everything in it when the test ends.
class TempDir {
 public:
  std::string path;
  TempDir() {
    char tmpl[] = "/tmp/diffuse_test_XXXXXX";
    DF_CHECK(::mkdtemp(tmpl) != nullptr, "cannot make a temporary folder under /tmp");
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string operator/(const std::string& f) const { return path + "/" + f; }
  // The folder's entries, sorted: tests check that nothing is left behind.
  std::vector<std::string> list() const {
    std::vector<std::string> out;
    for (const auto& e : std::filesystem::directory_iterator(path)) out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  }
};

// One seed per test run, fresh unless DIFFUSE_TEST_SEED is set; printed at start so a failure can
// be repeated. Each call of next_seed() derives a new stream from it.
inline uint64_t run_seed() {
  static uint64_t s = [] {
    if (const char* e = std::getenv("DIFFUSE_TEST_SEED")) return static_cast<uint64_t>(std::strtoull(e, nullptr, 10));
    std::random_device rd;
    return (static_cast<uint64_t>(rd()) << 32) ^ rd();
  }();
  return s;
}

inline uint64_t next_seed() {
  static uint64_t counter = 0;
  return run_seed() + 0x9E3779B97F4A7C15ull * ++counter;
}

// Uniform in [lo, hi) on the cpu, from a fresh seed.
inline Tensor random_tensor(const Shape& shape, float lo = -1.f, float hi = 1.f) {
  return Tensor::rand(shape, next_seed(), 0, lo, hi);
}

inline Tensor random_normal(const Shape& shape) { return Tensor::randn(shape, next_seed()); }

struct Diff {
  double max_abs = 0, max_rel = 0;
  int64_t worst = -1;
  int64_t nonfinite = 0;  // elements where one side is NaN/inf and the other is not
  std::string str() const {
    std::ostringstream os;
    os << "max abs err " << max_abs << ", max rel err " << max_rel << " at " << worst
       << ", non-finite mismatches " << nonfinite << ", seed " << run_seed();
    return os.str();
  }
};

inline Diff compare(const std::vector<float>& got, const std::vector<float>& want, double abs_floor = 1e-6) {
  Diff d;
  if (got.size() != want.size()) { d.nonfinite = -1; return d; }
  for (size_t i = 0; i < got.size(); ++i) {
    bool fg = std::isfinite(got[i]), fw = std::isfinite(want[i]);
    if (fg != fw) { ++d.nonfinite; d.worst = static_cast<int64_t>(i); continue; }
    if (!fg) continue;
    double a = std::fabs(static_cast<double>(got[i]) - want[i]);
    double r = a / std::max(std::fabs(static_cast<double>(want[i])), abs_floor);
    if (a > d.max_abs) d.max_abs = a;
    if (r > d.max_rel) { d.max_rel = r; d.worst = static_cast<int64_t>(i); }
  }
  return d;
}

inline Diff compare(const Tensor& got, const Tensor& want, double abs_floor = 1e-6) {
  if (!(got.shape() == want.shape())) { Diff d; d.nonfinite = -1; return d; }
  return compare(got.to_vector(), want.to_vector(), abs_floor);
}

// True when every element is within atol + rtol * |want| and nothing non-finite disagrees.
template <class T>
bool allclose(const std::vector<T>& got, const std::vector<T>& want, double rtol, double atol) {
  if (got.size() != want.size()) return false;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::isnan(got[i]) || std::isnan(want[i])) return false;
    if (std::fabs(static_cast<double>(got[i]) - want[i]) > atol + rtol * std::fabs(static_cast<double>(want[i])))
      return false;
  }
  return true;
}

// f64 tensors compare in double: rounding both to f32 first would put a whole f32 ulp (~6e-8
// relative) between two values that agree to 1e-16 whenever they straddle a rounding boundary.
inline std::vector<double> f64_values(const Tensor& t) {
  Tensor c = t.device().is_cpu() ? t : t.to(Device::cpu());
  return std::vector<double>(c.data<double>(), c.data<double>() + c.numel());
}

inline bool allclose(const Tensor& got, const Tensor& want, double rtol, double atol) {
  if (!(got.shape() == want.shape())) return false;
  if (got.dtype() == DType::f64 && want.dtype() == DType::f64)
    return allclose(f64_values(got), f64_values(want), rtol, atol);
  return allclose(got.to_vector(), want.to_vector(), rtol, atol);
}

}  // namespace diffuse::test
