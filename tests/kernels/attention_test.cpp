// Multi-head attention: the GEMM fast path against the reference loops.
#include <catch2/catch.hpp>

#include "kernels/attention.h"
#include "tests/test_util.h"

using namespace diffuse;

namespace {

struct Case {
  int64_t B, Tq, Tk, C;
  int heads;
};

// Odd sizes (T=5, C=6), batch 1, cross-attention (Tk != Tq, both ways), D=1, and a UNet shape.
const Case kCases[] = {{2, 5, 5, 6, 2}, {1, 5, 7, 8, 2}, {2, 9, 4, 12, 1}, {1, 3, 3, 4, 4}, {3, 49, 49, 64, 4}};

Tensor poisoned(const Shape& s, DType t) {
  Tensor out = Tensor::empty(s, t);
  out.poison_();
  return out;
}

}  // namespace

TEST_CASE("attention fast path equals the reference, self and cross", "[cpu][kernels]") {
  for (const Case& c : kCases)
    for (DType dt : {DType::f64, DType::f32}) {
      CAPTURE(c.B, c.Tq, c.Tk, c.C, c.heads, dt == DType::f64);
      // Inputs of order 2 so the logits (D up to 16, scaled by 1/sqrt(D)) give peaked rows.
      Tensor q = test::random_tensor({c.B, c.Tq, c.C}, -2.f, 2.f).to(dt);
      Tensor k = test::random_tensor({c.B, c.Tk, c.C}, -2.f, 2.f).to(dt);
      Tensor v = test::random_tensor({c.B, c.Tk, c.C}).to(dt);
      Tensor dout = test::random_tensor({c.B, c.Tq, c.C}).to(dt);
      const Shape ps{c.B, c.heads, c.Tq, c.Tk};
      Tensor o = poisoned(q.shape(), dt), p = poisoned(ps, dt), orf = poisoned(q.shape(), dt), pr = poisoned(ps, dt);
      kernels::cpu::attention_forward(q, k, v, c.heads, o, p);
      kernels::ref::attention_forward(q, k, v, c.heads, orf, pr);
      // f64: same math, other order: 1e-12. f32: logits of order 10 carry ~1e-6 absolute rounding,
      // which moves probabilities by ~1e-6 relative; outputs are averages of values <= 1: 1e-5.
      const double tol = dt == DType::f64 ? 1e-12 : 1e-5;
      INFO("out: " << test::compare(o, orf).str());
      CHECK(test::allclose(o, orf, tol, tol));
      CHECK(test::allclose(p, pr, tol, tol));

      Tensor dq = poisoned(q.shape(), dt), dk = poisoned(k.shape(), dt), dv = poisoned(v.shape(), dt);
      Tensor dqr = poisoned(q.shape(), dt), dkr = poisoned(k.shape(), dt), dvr = poisoned(v.shape(), dt);
      kernels::cpu::attention_backward(dout, q, k, v, pr, c.heads, dq, dk, dv);
      kernels::ref::attention_backward(dout, q, k, v, pr, c.heads, dqr, dkr, dvr);
      // Gradients sum up to T terms of order 1 (dV: P^T dO over Tq rows): tolerance scaled by T.
      const double gt = tol * static_cast<double>(std::max(c.Tq, c.Tk));
      INFO("dq: " << test::compare(dq, dqr).str() << "; dk: " << test::compare(dk, dkr).str()
                  << "; dv: " << test::compare(dv, dvr).str());
      CHECK(test::allclose(dq, dqr, tol, gt));
      CHECK(test::allclose(dk, dkr, tol, gt));
      CHECK(test::allclose(dv, dvr, tol, gt));
    }
}

TEST_CASE("attention with one key returns that value", "[cpu][kernels]") {
  // Tk = 1: every softmax row is exactly [1], so out[b, t] = v[b, 0] for every query.
  Tensor q = test::random_tensor({2, 5, 8}), k = test::random_tensor({2, 1, 8}), v = test::random_tensor({2, 1, 8});
  auto r = kernels::attention_forward(q, k, v, 2);
  std::vector<float> o = r.out.to_vector(), vv = v.to_vector();
  for (int b = 0; b < 2; ++b)
    for (int t = 0; t < 5; ++t)
      for (int c = 0; c < 8; ++c) CHECK(o[(b * 5 + t) * 8 + c] == vv[b * 8 + c]);
}

TEST_CASE("attention rejects bad shapes", "[cpu][kernels]") {
  Tensor q = test::random_tensor({2, 5, 6}), k = test::random_tensor({2, 3, 6});
  CHECK_THROWS_AS(kernels::attention_forward(q, k, k, 4), Error);                             // 6 % 4
  CHECK_THROWS_AS(kernels::attention_forward(q, k, test::random_tensor({2, 4, 6}), 2), Error);  // k/v differ
  CHECK_THROWS_AS(kernels::attention_forward(q, test::random_tensor({1, 3, 6}), test::random_tensor({1, 3, 6}), 2),
                  Error);
}
