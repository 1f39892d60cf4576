// kernels/noise.h: eps is the Philox normal stream (seed, offset) element by element, exactly
// Tensor::randn's; z = alpha[b] x + sigma[b] eps is the same two f32 products and one sum as the
// loop below (host code has FMA contraction off), so both compare exactly.
#include <catch2/catch.hpp>

#include <vector>

#include "core/tensor.h"
#include "kernels/noise.h"
#include "tests/test_util.h"

using namespace diffuse;
using namespace diffuse::test;

TEST_CASE("noise_forward draws Philox eps and mixes per sample", "[cpu][kernels]") {
  // Odd sizes (n not a multiple of the 4-element Philox block), batch 1, and past the OpenMP threshold.
  for (const Shape& s : {Shape{1, 3, 3, 1}, Shape{3, 5, 7, 3}, Shape{2, 17}, Shape{2, 64, 65, 3}}) {
    INFO(s.str());
    const int64_t B = s[0], N = s.numel() / B;
    const uint64_t seed = next_seed(), offset = 11;
    Tensor x = random_tensor(s), alpha = random_tensor({B}, 0.f, 1.f), sigma = random_tensor({B}, 0.f, 1.f);
    Tensor z = Tensor::empty(s), eps = Tensor::empty(s);
    z.poison_();
    eps.poison_();
    kernels::noise_forward(x, alpha, sigma, seed, offset, z, eps);
    const std::vector<float> e = eps.to_vector();
    CHECK(e == Tensor::randn(s, seed, offset).to_vector());
    const std::vector<float> xv = x.to_vector(), av = alpha.to_vector(), sv = sigma.to_vector();
    std::vector<float> want(xv.size());
    for (int64_t i = 0; i < s.numel(); ++i) want[i] = av[i / N] * xv[i] + sv[i / N] * e[i];
    CHECK(z.to_vector() == want);

    // Another offset is another stream.
    Tensor z2 = Tensor::empty(s), eps2 = Tensor::empty(s);
    kernels::noise_forward(x, alpha, sigma, seed, offset + 1, z2, eps2);
    CHECK(eps2.to_vector() != e);

    // f64: the same variates, widened.
    Tensor z64 = Tensor::empty(s, DType::f64), e64 = Tensor::empty(s, DType::f64);
    kernels::noise_forward(x.to(DType::f64), alpha.to(DType::f64), sigma.to(DType::f64), seed, offset, z64, e64);
    CHECK(e64.to_vector() == e);
    CHECK(allclose(z64.to_vector(), want, 1e-6, 1e-7));  // f32 rounding of the f32 reference
  }
  Tensor x = random_tensor({2, 3}), z = Tensor::empty({2, 3}), e = Tensor::empty({2, 3});
  CHECK_THROWS_AS(kernels::noise_forward(x, random_tensor({3}), random_tensor({2}), 1, 0, z, e), Error);
}
