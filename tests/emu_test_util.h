// tests/emu_test_util.h: running an emulated kernel under every thread order of kernels/simt.
// Host side only: the test files include the launchers' headers, never portable.cuh.
#pragma once

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "core/tensor.h"
#include "kernels/simt/runtime.h"

namespace diffuse::test {

// Calls fn() once per order (forward, reverse, random:<seed>) with that order in effect; a
// failure message names the order. A race-free kernel gives the same result under each.
template <class F>
void for_each_order(F&& fn) {
  for (const simt::OrderSpec& o : simt::test_orders()) {
    simt::OrderScope scope(o);
    INFO("simt thread order " << simt::to_string(o));
    fn();
  }
}

// Elements whose bytes differ, NaN matching any NaN (the 16-bit NaN payloads of CUDA's
// conversions differ from core/dtype.h's, and both are NaN).
inline int64_t bit_mismatches(const Tensor& got, const Tensor& want) {
  if (!(got.shape() == want.shape()) || got.dtype() != want.dtype()) return -1;
  const size_t es = dtype_size(got.dtype());
  const auto* g = static_cast<const unsigned char*>(got.raw());
  const auto* w = static_cast<const unsigned char*>(want.raw());
  const bool is_float = dtype_is_float(got.dtype());
  const std::vector<float> gv = is_float ? got.to_vector() : std::vector<float>{};
  const std::vector<float> wv = is_float ? want.to_vector() : std::vector<float>{};
  int64_t bad = 0;
  for (int64_t i = 0; i < got.numel(); ++i) {
    if (std::memcmp(g + i * es, w + i * es, es) == 0) continue;
    if (is_float && std::isnan(gv[i]) && std::isnan(wv[i])) continue;
    ++bad;
  }
  return bad;
}

}  // namespace diffuse::test
