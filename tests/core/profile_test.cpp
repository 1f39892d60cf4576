// core/profile.h: off, an op leaves no trace; on, each op is counted once per call under its
// name, nested scopes count self time only, and the table names every op.
#include <catch2/catch.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "core/profile.h"
#include "core/tensor.h"
#include "kernels/elementwise.h"

using namespace diffuse;
using Catch::Matchers::Contains;

namespace {

// The table as text (report writes to a FILE*).
std::string report_text(double total_ms = 0) {
  char* buf = nullptr;
  size_t len = 0;
  std::FILE* f = open_memstream(&buf, &len);
  REQUIRE(f);
  prof::report(f, "test", 0, total_ms);
  std::fclose(f);
  std::string s(buf, len);
  std::free(buf);
  return s;
}

// Restores the switch and forgets the counts, whatever the test did.
struct ProfileOff {
  ~ProfileOff() {
    prof::set_enabled(false);
    prof::reset();
  }
};

}  // namespace

TEST_CASE("the profile counts ops only while it is on", "[cpu][core]") {
  ProfileOff guard;
  const bool was = prof::enabled();
  prof::set_enabled(false);
  prof::reset();
  Tensor a = Tensor::full({3, 5}, 1.0), b = Tensor::full({3, 5}, 2.0);
  kernels::add(a, b);
  CHECK_THAT(report_text(), !Contains("| add |"));
  prof::set_enabled(true);
  kernels::add(a, b);
  kernels::add(a, b);
  kernels::mul(a, b);
  prof::set_enabled(was);
  const std::string t = report_text(1000.0);
  CHECK_THAT(t, Contains("| add | 2 |"));
  CHECK_THAT(t, Contains("| mul | 1 |"));
  CHECK_THAT(t, Contains("(outside the ops)"));
}

TEST_CASE("the profile counts a nested scope's time once, in the inner scope", "[cpu][core]") {
  ProfileOff guard;
  prof::reset();
  prof::set_enabled(true);
  {
    DF_PROFILE("outer");
    DF_PROFILE("inner");
    std::this_thread::sleep_for(std::chrono::milliseconds(60));
  }
  prof::set_enabled(false);
  const std::string t = report_text();
  // "| name | calls | self ms | mean ms | share |": inner holds the sleep, outer next to nothing
  // (a bound far above the microseconds it takes, so that a preempted test on a busy machine passes).
  auto self_ms = [&](const std::string& name) {
    const std::string head = "| " + name + " | 1 | ";
    const size_t at = t.find(head);
    REQUIRE(at != std::string::npos);
    return std::stod(t.substr(at + head.size()));
  };
  CHECK(self_ms("inner") >= 55.0);
  CHECK(self_ms("outer") < 30.0);
}
