// conv2d: the fast path (chunked im2col + GEMM, or one GEMM for 1x1) against the plain loops.
#include <catch2/catch.hpp>

#include <cmath>
#include <random>

#include "kernels/conv2d.h"
#include "tests/test_util.h"

using namespace diffuse;

namespace {

struct Case {
  int64_t B, H, W, Cin, Cout, K;
  int stride, pad;
  bool bias;
};

std::string str(const Case& c) {
  std::ostringstream os;
  os << "x (" << c.B << "," << c.H << "," << c.W << "," << c.Cin << ") w (" << c.Cout << "," << c.K << "," << c.K
     << "," << c.Cin << ") stride " << c.stride << " pad " << c.pad << (c.bias ? " bias" : " no bias");
  return os.str();
}

// Every stride/padding/kernel combination the UNet uses, odd sizes, batch 1, stride 2 over odd H
// and W, a 1x1 at stride 2 (not the GEMM-only path), a pixel-sized image, and sizes where the
// rows span several chunks of the fast path (the 28x28 ones) and several images per thread.
const Case kFixed[] = {
    {1, 5, 7, 3, 4, 3, 1, 1, true},   {2, 6, 6, 5, 3, 3, 2, 1, true},    {3, 7, 5, 4, 6, 3, 2, 1, false},
    {2, 8, 8, 16, 8, 1, 1, 0, true},  {1, 9, 9, 2, 5, 3, 1, 0, true},    {2, 4, 6, 3, 3, 1, 2, 0, false},
    {4, 14, 14, 8, 16, 3, 1, 1, true}, {1, 1, 1, 3, 2, 3, 1, 1, true},   {2, 7, 9, 3, 2, 3, 2, 0, true},
    {3, 28, 28, 32, 8, 3, 1, 1, true}, {5, 28, 28, 16, 8, 3, 2, 1, false}, {1, 28, 28, 64, 8, 3, 1, 1, false},
    {1, 5, 5, 1, 1, 1, 1, 1, true},
};

Case random_case(std::mt19937_64& rng) {
  auto u = [&](int lo, int hi) { return static_cast<int64_t>(std::uniform_int_distribution<int>(lo, hi)(rng)); };
  Case c{u(1, 3), u(1, 11), u(1, 11), u(1, 9), u(1, 9), u(0, 1) ? 3 : 1, static_cast<int>(u(1, 2)),
         static_cast<int>(u(0, 1)), u(0, 1) == 1};
  if (c.K == 3 && c.pad == 0) c.H = std::max<int64_t>(c.H, 3), c.W = std::max<int64_t>(c.W, 3);
  return c;
}

// f32 GEMM against a reference that accumulates in double and rounds once: the fast path's error
// is the f32 rounding of a sum of n terms, growing like sqrt(n) ulps of the result for random
// signs, so |got - want| / max(|want|, 1) <= 1e-5 sqrt(n) leaves a wide margin (the typical
// error is ~1e-7 sqrt(n)) and still fails any indexing mistake, which is O(1).
void check_close(const Tensor& got, const Tensor& want, int64_t n, const char* what) {
  const test::Diff d = test::compare(got, want, 1.0);
  INFO(what << ": " << d.str() << ", sum of " << n << " terms");
  CHECK(d.nonfinite == 0);
  CHECK(d.max_rel <= (got.dtype() == DType::f64 ? 1e-12 : 1e-5) * std::sqrt(static_cast<double>(n)));
}

void run_case(const Case& c, DType dt) {
  INFO(str(c) << (dt == DType::f64 ? " f64" : " f32"));
  Tensor x = test::random_tensor({c.B, c.H, c.W, c.Cin}).to(dt);
  Tensor w = test::random_tensor({c.Cout, c.K, c.K, c.Cin}).to(dt);
  Tensor b = c.bias ? test::random_tensor({c.Cout}).to(dt) : Tensor();
  const kernels::Conv2dParams p{c.stride, c.pad};
  const Shape ys = kernels::conv2d_output_shape(x.shape(), w.shape(), p);

  Tensor y = Tensor::empty(ys, dt), want = Tensor::empty(ys, dt);
  y.poison_();
  want.poison_();
  kernels::cpu::conv2d_forward(x, w, b, p, y);
  kernels::ref::conv2d_forward(x, w, b, p, want);
  check_close(y, want, c.K * c.K * c.Cin, "y");
  CHECK(test::compare(kernels::conv2d_forward(x, w, b, p), y, 1.0).max_abs == 0);  // the dispatch runs cpu::

  Tensor gy = test::random_tensor(ys).to(dt);
  auto grads = [&] {
    kernels::Conv2dGrads r{Tensor::empty(x.shape(), dt), Tensor::empty(w.shape(), dt),
                           c.bias ? Tensor::empty({c.Cout}, dt) : Tensor()};
    r.dx.poison_();
    r.dw.poison_();
    if (c.bias) r.db.poison_();
    return r;
  };
  kernels::Conv2dGrads got = grads(), ref = grads();
  kernels::cpu::conv2d_backward(gy, x, w, p, got);
  kernels::ref::conv2d_backward(gy, x, w, p, ref);
  check_close(got.dx, ref.dx, c.Cout * c.K * c.K, "dx");
  const int64_t pixels = c.B * ys[1] * ys[2];
  check_close(got.dw, ref.dw, pixels, "dw");
  if (c.bias) check_close(got.db, ref.db, pixels, "db");

  // Each gradient alone (the others undefined) gives the same values.
  kernels::Conv2dGrads only_x{Tensor::empty(x.shape(), dt), Tensor(), Tensor()};
  kernels::cpu::conv2d_backward(gy, x, w, p, only_x);
  CHECK(test::compare(only_x.dx, got.dx, 1.0).max_abs == 0);
  kernels::Conv2dGrads only_w{Tensor(), Tensor::empty(w.shape(), dt), Tensor()};
  kernels::cpu::conv2d_backward(gy, x, w, p, only_w);
  CHECK(test::compare(only_w.dw, got.dw, 1.0).max_abs == 0);
}

}  // namespace

TEST_CASE("conv2d fast path equals the reference loops", "[cpu][kernels]") {
  for (const Case& c : kFixed) run_case(c, DType::f32);
  std::mt19937_64 rng(test::next_seed());
  for (int i = 0; i < 40; ++i) run_case(random_case(rng), DType::f32);
}

TEST_CASE("conv2d fast path equals the reference loops in f64", "[cpu][kernels]") {
  for (const Case& c : {kFixed[1], kFixed[3], kFixed[5], kFixed[8]}) run_case(c, DType::f64);
}

TEST_CASE("conv2d of a one-hot kernel shifts the image", "[cpu][kernels]") {
  // A 3x3 kernel with a single 1 at (kh, kw) on channel 0 copies x shifted by (kh-1, kw-1),
  // zero where the shift leaves the image: checks the padding convention exactly.
  Tensor x = test::random_tensor({2, 5, 6, 1});
  for (int kh = 0; kh < 3; ++kh)
    for (int kw = 0; kw < 3; ++kw) {
      Tensor w = Tensor::zeros({1, 3, 3, 1});
      w.data<float>()[kh * 3 + kw] = 1.f;
      Tensor y = kernels::conv2d_forward(x, w, Tensor(), {1, 1});
      REQUIRE(y.shape() == Shape{2, 5, 6, 1});
      for (int64_t b = 0; b < 2; ++b)
        for (int64_t h = 0; h < 5; ++h)
          for (int64_t v = 0; v < 6; ++v) {
            const int64_t hi = h + kh - 1, wi = v + kw - 1;
            const float want = hi < 0 || hi >= 5 || wi < 0 || wi >= 6 ? 0.f : x.data<float>()[(b * 5 + hi) * 6 + wi];
            REQUIRE(y.data<float>()[(b * 5 + h) * 6 + v] == want);
          }
    }
}

TEST_CASE("conv2d output shapes", "[cpu][kernels]") {
  CHECK(kernels::conv2d_output_shape({2, 28, 28, 3}, {8, 3, 3, 3}, {1, 1}) == Shape{2, 28, 28, 8});
  CHECK(kernels::conv2d_output_shape({2, 28, 28, 3}, {8, 3, 3, 3}, {2, 1}) == Shape{2, 14, 14, 8});
  CHECK(kernels::conv2d_output_shape({2, 7, 7, 3}, {8, 3, 3, 3}, {2, 1}) == Shape{2, 4, 4, 8});
  CHECK(kernels::conv2d_output_shape({2, 7, 7, 3}, {8, 3, 3, 3}, {1, 0}) == Shape{2, 5, 5, 8});
  CHECK(kernels::conv2d_output_shape({2, 7, 7, 3}, {8, 1, 1, 3}, {2, 0}) == Shape{2, 4, 4, 8});
}

TEST_CASE("conv2d rejects shapes that do not fit", "[cpu][kernels]") {
  Tensor x = test::random_tensor({1, 4, 4, 3});
  CHECK_THROWS_WITH(kernels::conv2d_forward(x, test::random_tensor({2, 3, 3, 5}), Tensor(), {}),
                    Catch::Contains("channels"));
  CHECK_THROWS_WITH(kernels::conv2d_forward(x, test::random_tensor({2, 3, 3, 3}), test::random_tensor({3}), {1, 1}),
                    Catch::Contains("bias"));
  CHECK_THROWS_WITH(kernels::conv2d_forward(x, test::random_tensor({2, 5, 5, 3}), Tensor(), {1, 0}),
                    Catch::Contains("larger"));
  CHECK_THROWS_AS(kernels::conv2d_forward(x.reshape({4, 4, 3}), test::random_tensor({2, 3, 3, 3}), Tensor(), {}),
                  Error);
  CHECK_THROWS_AS(kernels::conv2d_forward(x.to(DType::f64), test::random_tensor({2, 3, 3, 3}), Tensor(), {}), Error);
  CHECK_THROWS_AS(kernels::conv2d_backward(test::random_tensor({1, 3, 3, 2}), x, test::random_tensor({2, 3, 3, 3}),
                                           {1, 1}, true, true, false),
                  Error);
}
