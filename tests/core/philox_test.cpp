#include <catch2/catch.hpp>

#include <cmath>

#include "core/philox.h"
#include "core/tensor.h"

using namespace diffuse;

// Known-answer vectors published with Random123 (kat_vectors, "philox4x32 10" lines).
TEST_CASE("philox4x32-10 matches the Random123 known answers", "[cpu][core]") {
  struct Kat { Philox4 ctr; uint32_t k0, k1; Philox4 want; };
  const Kat kats[] = {
      {{{0, 0, 0, 0}}, 0, 0, {{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}}},
      {{{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}}, 0xffffffffu, 0xffffffffu,
       {{0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}}},
      {{{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}}, 0xa4093822u, 0x299f31d0u,
       {{0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}}},
  };
  for (const Kat& k : kats) {
    Philox4 got = philox4x32_10(k.ctr, k.k0, k.k1);
    for (int i = 0; i < 4; ++i) CHECK(got.v[i] == k.want.v[i]);
  }
}

TEST_CASE("philox log and sincos agree with libm", "[cpu][core]") {
  // The transform uses its own polynomials so every device rounds alike; they must still be
  // accurate: |err| below 4 ulp-ish of the values Box-Muller produces (relative 1e-6).
  for (uint32_t k = 1; k <= (1u << 24); k += 4099) {
    float u = static_cast<float>(k) * (1.0f / 16777216.0f);
    double want = std::log(static_cast<double>(u));
    CHECK(std::fabs(philox_detail::log_unit(u) - want) <= 1e-6 * std::max(1.0, std::fabs(want)));
    float s, c;
    philox_detail::sincos_turns(u, s, c);
    if (u < 1.0f) {
      CHECK(std::fabs(s - std::sin(2 * M_PI * u)) < 1e-6);
      CHECK(std::fabs(c - std::cos(2 * M_PI * u)) < 1e-6);
    }
  }
}

TEST_CASE("philox normal stream has the right moments and is keyed by seed and offset", "[cpu][core]") {
  const int64_t n = 1 << 18;
  Tensor a = Tensor::randn({n}, 1234, 7);
  std::vector<float> v = a.to_vector();
  double m1 = 0, m2 = 0, m4 = 0;
  for (float x : v) { m1 += x; m2 += double(x) * x; m4 += double(x) * x * x * x; }
  m1 /= n; m2 /= n; m4 /= n;
  // Standard errors for n = 2^18: mean 0.002, variance 0.0028, kurtosis 0.0096; allow 5 sigma.
  CHECK(std::fabs(m1) < 0.01);
  CHECK(std::fabs(m2 - 1) < 0.014);
  CHECK(std::fabs(m4 - 3) < 0.05);
  // Element i equals the scalar definition, so kernels that draw per element agree with this.
  for (int64_t i : {0L, 1L, 2L, 3L, 4L, 12345L, n - 1})
    CHECK(v[i] == philox_normal(1234, 7, static_cast<uint64_t>(i)));
  CHECK(Tensor::randn({8}, 1234, 8).to_vector() != Tensor::randn({8}, 1234, 7).to_vector());
  CHECK(Tensor::randn({8}, 1235, 7).to_vector() != Tensor::randn({8}, 1234, 7).to_vector());
  CHECK(Tensor::randn({8}, 1234, 7).to_vector() == Tensor::randn({8}, 1234, 7).to_vector());
}

TEST_CASE("philox uniform stream covers [lo, hi)", "[cpu][core]") {
  Tensor u = Tensor::rand({100000}, 99, 0, -2.f, 3.f);
  double mean = 0;
  for (float x : u.to_vector()) {
    REQUIRE(x >= -2.f);
    REQUIRE(x < 3.f);
    mean += x;
  }
  CHECK(std::fabs(mean / 100000 - 0.5) < 0.05);  // sd of the mean: 5/sqrt(12e5) = 0.0046
}
