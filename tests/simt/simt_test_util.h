// tests/simt/simt_test_util.h: running a kernel under every thread order, and expecting faults.
#pragma once

#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/cuda/portable.cuh"

namespace diffuse::simt::test {

// Calls fn() once per order (forward, reverse, random:<seed>), with the order in effect; the
// section name says which order failed.
template <class F>
void for_each_order(F&& fn) {
  for (const OrderSpec& o : test_orders()) {
    OrderScope scope(o);
    INFO("thread order " << to_string(o));
    fn();
  }
}

// Runs fn, which must throw a Fault of `kind` whose message contains every string of `parts`.
template <class F>
std::string expect_fault(FaultKind kind, std::initializer_list<const char*> parts, F&& fn) {
  try {
    fn();
  } catch (const Fault& f) {
    INFO(f.what());
    CHECK(f.kind() == kind);
    for (const char* p : parts) CHECK(std::string(f.what()).find(p) != std::string::npos);
    return f.what();
  }
  FAIL("expected a simt fault [" << to_string(kind) << "], but the launch succeeded");
  return {};
}

inline uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

}  // namespace diffuse::simt::test
