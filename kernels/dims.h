// kernels/dims.h: the shape of a tensor as launchers take it. Launchers see raw pointers and
// this plain struct (no Tensor), so the same launcher serves the Tensor-level dispatch on a GPU
// and the emulator tests on host buffers.
#pragma once

#include <cstdint>
#include <initializer_list>

#include "core/tensor.h"

namespace diffuse::kernels {

struct Dims {
  static constexpr int kMax = kMaxDims;
  int rank = 0;
  int64_t d[kMax] = {};

  Dims() = default;
  Dims(std::initializer_list<int64_t> v) {
    for (int64_t x : v)
      if (rank < kMax) d[rank++] = x;
  }
  Dims(const int64_t* v, int n) {
    for (int i = 0; i < n && i < kMax; ++i) d[rank++] = v[i];
  }
  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < rank; ++i) n *= d[i];
    return n;
  }
};

// A Tensor's shape as launchers take it.
inline Dims dims_of(const Shape& s) {
  Dims d;
  d.rank = s.rank();
  for (int i = 0; i < s.rank(); ++i) d.d[i] = s[i];
  return d;
}

}  // namespace diffuse::kernels
