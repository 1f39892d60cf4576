#include <catch2/catch.hpp>

#include "kernels/linalg.h"
#include "tests/test_util.h"

using namespace diffuse;

namespace {

struct Case {
  int64_t B, H, W, Cin, Cout, K;
  int stride, pad;
  bool bias;
};

// Every stride/padding/kernel combination the UNet uses, plus odd sizes and batch 1.
const Case kCases[] = {
    {1, 5, 7, 3, 4, 3, 1, 1, true},   {2, 6, 6, 5, 3, 3, 2, 1, true},  {3, 7, 5, 4, 6, 3, 2, 1, false},
    {2, 8, 8, 16, 8, 1, 1, 0, true},  {1, 9, 9, 2, 5, 3, 1, 0, true},  {2, 4, 6, 3, 3, 1, 2, 0, false},
    {4, 14, 14, 8, 16, 3, 1, 1, true}, {1, 1, 1, 3, 2, 3, 1, 1, true},
};

}  // namespace

TEST_CASE("conv2d fast path equals the reference loops", "[cpu][kernels]") {
  for (const Case& c : kCases) {
    CAPTURE(c.B, c.H, c.W, c.Cin, c.Cout, c.K, c.stride, c.pad, c.bias);
    Tensor x = test::random_tensor({c.B, c.H, c.W, c.Cin});
    Tensor w = test::random_tensor({c.Cout, c.K, c.K, c.Cin});
    Tensor b = c.bias ? test::random_tensor({c.Cout}) : Tensor();
    kernels::Conv2dParams p{c.stride, c.pad};
    Tensor y = kernels::conv2d_forward(x, w, b, p);
    Shape ys = kernels::conv2d_output_shape(x.shape(), w.shape(), p);
    REQUIRE(y.shape() == ys);
    Tensor want = Tensor::empty(ys);
    want.poison_();
    kernels::ref::conv2d_forward<float>(x.data<float>(), w.data<float>(), c.bias ? b.data<float>() : nullptr,
                                        want.data<float>(), c.B, c.H, c.W, c.Cin, c.Cout, c.K, c.K, c.stride, c.pad,
                                        ys[1], ys[2]);
    // f32 GEMM vs a double-accumulated reference: error grows like sqrt(K) ulps of the partial
    // sums (|terms| <= 1, K <= 72): 1e-5 relative with an absolute floor of 1e-5.
    auto d = test::compare(y, want, 1.0);
    INFO(d.str());
    CHECK(d.nonfinite == 0);
    CHECK(d.max_abs < 1e-5 * std::sqrt(double(c.K * c.K * c.Cin)));

    Tensor g = test::random_tensor(ys);
    kernels::Conv2dGrads r = kernels::conv2d_backward(g, x, w, p, true, true, c.bias);
    Tensor dx = Tensor::empty(x.shape()), dw = Tensor::empty(w.shape()), db = Tensor::empty({c.Cout});
    dx.poison_();
    dw.poison_();
    kernels::ref::conv2d_backward<float>(g.data<float>(), x.data<float>(), w.data<float>(), dx.data<float>(),
                                         dw.data<float>(), c.bias ? db.data<float>() : nullptr, c.B, c.H, c.W, c.Cin,
                                         c.Cout, c.K, c.K, c.stride, c.pad, ys[1], ys[2]);
    // dW sums over B*Ho*Wo pixels: tolerance scaled by sqrt of that count.
    double m = std::sqrt(double(c.B * ys[1] * ys[2]));
    CHECK(test::compare(r.dx, dx, 1.0).max_abs < 1e-5 * std::sqrt(double(c.Cout * c.K * c.K)));
    CHECK(test::compare(r.dw, dw, 1.0).max_abs < 1e-5 * m);
    if (c.bias) CHECK(test::compare(r.db, db, 1.0).max_abs < 1e-5 * m);
  }
}

TEST_CASE("conv2d rejects shapes that do not fit", "[cpu][kernels]") {
  Tensor x = test::random_tensor({1, 4, 4, 3});
  CHECK_THROWS_WITH(kernels::conv2d_forward(x, test::random_tensor({2, 3, 3, 5}), Tensor(), {}),
                    Catch::Contains("channels"));
  CHECK_THROWS_WITH(kernels::conv2d_forward(x, test::random_tensor({2, 3, 3, 3}), test::random_tensor({3}), {1, 1}),
                    Catch::Contains("bias"));
  CHECK_THROWS_AS(kernels::conv2d_forward(x.reshape({4, 4, 3}), test::random_tensor({2, 3, 3, 3}), Tensor(), {}),
                  Error);
}

TEST_CASE("matmul and linear are exact on small integers", "[cpu][kernels]") {
  // Products of integers below 8 summed over K <= 40 stay far below 2^24: exact in f32.
  auto ints = [](const Shape& s) {
    Tensor t = test::random_tensor(s, -4.f, 4.f);
    for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = std::floor(t.data<float>()[i]);
    return t;
  };
  Tensor a = ints({3, 5, 7}), b = ints({3, 7, 4});
  Tensor y = kernels::matmul_forward(a, b);
  for (int64_t i = 0; i < 3; ++i)
    for (int64_t m = 0; m < 5; ++m)
      for (int64_t n = 0; n < 4; ++n) {
        float acc = 0;
        for (int64_t k = 0; k < 7; ++k) acc += a.data<float>()[(i * 5 + m) * 7 + k] * b.data<float>()[(i * 7 + k) * 4 + n];
        REQUIRE(y.data<float>()[(i * 5 + m) * 4 + n] == acc);
      }
  Tensor x = ints({2, 3, 6}), w = ints({4, 6}), bias = ints({4});
  Tensor l = kernels::linear_forward(x, w, bias);
  REQUIRE(l.shape() == Shape{2, 3, 4});
  for (int64_t r = 0; r < 6; ++r)
    for (int64_t o = 0; o < 4; ++o) {
      float acc = bias.data<float>()[o];
      for (int64_t k = 0; k < 6; ++k) acc += x.data<float>()[r * 6 + k] * w.data<float>()[o * 6 + k];
      REQUIRE(l.data<float>()[r * 4 + o] == acc);
    }
  CHECK_THROWS_AS(kernels::matmul_forward(a, ints({3, 6, 4})), Error);
  CHECK_THROWS_AS(kernels::linear_forward(x, ints({4, 5}), Tensor()), Error);
}

TEST_CASE("resampling and channel concat move the right values", "[cpu][kernels]") {
  Tensor x = test::random_tensor({2, 3, 5, 4});
  Tensor up = kernels::upsample_nearest2x_forward(x);
  REQUIRE(up.shape() == Shape{2, 6, 10, 4});
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t h = 0; h < 6; ++h)
      for (int64_t w = 0; w < 10; ++w)
        for (int64_t c = 0; c < 4; ++c)
          REQUIRE(up.data<float>()[((b * 6 + h) * 10 + w) * 4 + c] == x.data<float>()[((b * 3 + h / 2) * 5 + w / 2) * 4 + c]);
  Tensor pooled = kernels::avg_pool2x_forward(up);
  CHECK(test::compare(pooled, x).max_abs < 1e-6);
  CHECK_THROWS_AS(kernels::avg_pool2x_forward(x), Error);  // odd H
  Tensor a = test::random_tensor({2, 3, 2}), b = test::random_tensor({2, 3, 5});
  Tensor cat = kernels::concat_last_forward({a, b});
  REQUIRE(cat.shape() == Shape{2, 3, 7});
  CHECK(kernels::slice_last_forward(cat, 0, 2).to_vector() == a.to_vector());
  CHECK(kernels::slice_last_forward(cat, 2, 7).to_vector() == b.to_vector());
  Tensor back = kernels::slice_last_backward(b, 7, 2);
  CHECK(kernels::slice_last_forward(back, 2, 7).to_vector() == b.to_vector());
  for (float v : kernels::slice_last_forward(back, 0, 2).to_vector()) CHECK(v == 0.f);
}
