// kernels/loss.h: cross-entropy against a plain double evaluation of -log softmax (no max
// subtraction: the test logits are moderate), and its gradient (softmax - onehot) / B.
// Tolerance: the kernel sums in double and rounds once; its exp(x - lse) in f32 costs a few ulp:
// rtol 1e-6, atol 1e-7 for the tiny probabilities.
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "core/tensor.h"
#include "kernels/loss.h"
#include "tests/test_util.h"

using namespace diffuse;
using namespace diffuse::test;

TEST_CASE("cross_entropy forward and backward match the formula", "[cpu][kernels]") {
  for (int64_t B : {1, 3, 8}) {
    for (int64_t K : {2, 5, 10}) {
      INFO("B " << B << " K " << K);
      Tensor x = random_tensor({B, K}, -4.f, 4.f);
      std::vector<int64_t> lab(static_cast<size_t>(B));
      for (int64_t b = 0; b < B; ++b) lab[b] = static_cast<int64_t>(next_seed() % static_cast<uint64_t>(K));
      Tensor labels = Tensor::from_vector_i64(lab, {B});
      Tensor loss = Tensor::empty({1}), lse = Tensor::empty({B});
      loss.poison_();
      lse.poison_();
      kernels::cpu::cross_entropy_forward(x, labels, loss, lse);
      const std::vector<float> xv = x.to_vector();
      double want = 0;
      std::vector<float> grad(xv.size());
      const double g = 0.7;
      for (int64_t b = 0; b < B; ++b) {
        double s = 0;
        for (int64_t k = 0; k < K; ++k) s += std::exp(double(xv[b * K + k]));
        want += std::log(s) - xv[b * K + lab[b]];
        for (int64_t k = 0; k < K; ++k)
          grad[b * K + k] = static_cast<float>(g / B * (std::exp(double(xv[b * K + k])) / s - (k == lab[b])));
      }
      CHECK(allclose(loss.to_vector(), {static_cast<float>(want / B)}, 1e-6, 1e-7));
      Tensor d = Tensor::empty({B, K});
      d.poison_();
      kernels::cpu::cross_entropy_backward(Tensor::full({1}, g), x, labels, lse, d);
      INFO(compare(d.to_vector(), grad).str());
      CHECK(allclose(d.to_vector(), grad, 1e-6, 1e-7));
    }
  }
}

TEST_CASE("cross_entropy is finite for huge logits and rejects bad labels", "[cpu][kernels]") {
  Tensor x = Tensor::from_vector({1000.f, -1000.f, 999.f, 0.f}, {2, 2});
  Tensor labels = Tensor::from_vector_i64({1, 0}, {2});
  auto r = kernels::cross_entropy_forward(x, labels);
  // Row 0: lse = 1000, loss 2000; row 1: lse = 999 + log1p(e^-999) = 999, loss 0. Mean 1000.
  CHECK(r.loss.item() == Approx(1000.0).epsilon(1e-6));
  CHECK_THROWS_AS(kernels::cross_entropy_forward(x, Tensor::from_vector_i64({2, 0}, {2})), Error);
  CHECK_THROWS_AS(kernels::cross_entropy_forward(x, Tensor::from_vector_i64({-1, 0}, {2})), Error);
}
