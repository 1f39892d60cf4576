// kernels/cuda/softmax.cu under the emulator ([emu]) and on a GPU ([cuda]) against double loops
// of the formulas in kernels/softmax.h and kernels/loss.h.
//
// Tolerances. f32 softmax: the sum of exponentials accumulates ~L/R terms per thread plus a tree
// and the online rescalings, each <= 1 ulp, and expf is within 2 ulp on the GPU: relative error
// below ~40 eps = 2.4e-6 for these lengths, so rtol 1e-5 (atol 1e-9 for tiny probabilities).
// Backward y (dy - sum(dy y)) cancels when dy ~ the dot: absolute error ~ eps (|dy| + |dot|) <=
// 1e-6. bf16: one rounding of the f32 result, 2^-8 relative, rtol 8e-3. Cross entropy: lse and
// the loss inherit the 1e-5 relative bound; dlogits = g / B (p - onehot) the softmax's.
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "core/device.h"
#include "core/stream.h"
#include "core/tensor.h"
#include "kernels/cuda/softmax.h"
#include "tests/emu_test_util.h"
#include "tests/test_util.h"

using namespace diffuse;
using namespace diffuse::test;

namespace {

std::vector<float> softmax_ref(const std::vector<float>& x, int64_t rows, int64_t L) {
  std::vector<float> y(x.size());
  for (int64_t r = 0; r < rows; ++r) {
    double m = -INFINITY, s = 0;
    for (int64_t c = 0; c < L; ++c) m = std::max(m, double(x[r * L + c]));
    for (int64_t c = 0; c < L; ++c) s += std::exp(double(x[r * L + c]) - m);
    for (int64_t c = 0; c < L; ++c) y[r * L + c] = static_cast<float>(std::exp(double(x[r * L + c]) - m) / s);
  }
  return y;
}

std::vector<float> softmax_grad_ref(const std::vector<float>& dy, const std::vector<float>& y, int64_t rows, int64_t L) {
  std::vector<float> dx(y.size());
  for (int64_t r = 0; r < rows; ++r) {
    double dot = 0;
    for (int64_t c = 0; c < L; ++c) dot += double(dy[r * L + c]) * y[r * L + c];
    for (int64_t c = 0; c < L; ++c) dx[r * L + c] = static_cast<float>(y[r * L + c] * (dy[r * L + c] - dot));
  }
  return dx;
}

struct RowShape {
  int64_t rows, L;
};
// Warp per row (partial last block of 8 rows), block per row past 1024, batch 1.
const RowShape kShapes[] = {{1, 1}, {3, 7}, {10, 33}, {2, 1025}, {1, 3000}};

}  // namespace

#if defined(DIFFUSE_HAVE_SIMT)

TEST_CASE("softmax forward and backward under the emulator match double loops", "[emu][kernels]") {
  for_each_order([] {
    for (DType t : {DType::f32, DType::bf16}) {
      const double rtol = t == DType::f32 ? 1e-5 : 8e-3;
      for (const RowShape& s : kShapes) {
        INFO(dtype_name(t) << " rows=" << s.rows << " L=" << s.L);
        Tensor x = random_tensor({s.rows, s.L}, -8.f, 8.f).to(t);
        Tensor y = Tensor::empty({s.rows, s.L}, t).poison_();
        emu::softmax_forward(x.raw(), y.raw(), t, s.rows, s.L, nullptr);
        const std::vector<float> want = Tensor::from_vector(softmax_ref(x.to_vector(), s.rows, s.L), {s.rows, s.L})
                                            .to(t).to_vector();
        INFO("forward " << compare(y.to_vector(), want).str());
        CHECK(allclose(y.to_vector(), want, rtol, 1e-9));

        Tensor dy = random_tensor({s.rows, s.L}).to(t);
        Tensor dx = Tensor::empty({s.rows, s.L}, t).poison_();
        emu::softmax_backward(dy.raw(), y.raw(), dx.raw(), t, s.rows, s.L, nullptr);
        const std::vector<float> gwant =
            Tensor::from_vector(softmax_grad_ref(dy.to_vector(), y.to_vector(), s.rows, s.L), {s.rows, s.L})
                .to(t).to_vector();
        INFO("backward " << compare(dx.to_vector(), gwant).str());
        CHECK(allclose(dx.to_vector(), gwant, rtol, 1e-6));
      }
    }
  });
}

TEST_CASE("cross entropy under the emulator matches double loops", "[emu][kernels]") {
  for_each_order([] {
    for (const RowShape& s : kShapes) {
      const int64_t B = s.rows, K = s.L;
      INFO("B=" << B << " K=" << K);
      Tensor logits = random_tensor({B, K}, -5.f, 5.f);
      std::vector<int64_t> lab(B);
      const std::vector<float> u = random_tensor({B}, 0.f, 1.f).to_vector();
      for (int64_t b = 0; b < B; ++b) lab[b] = std::min<int64_t>(K - 1, static_cast<int64_t>(u[b] * K));
      Tensor labels = Tensor::from_vector_i64(lab, {B});
      Tensor lse = Tensor::empty({B}).poison_(), rl = Tensor::empty({B}).poison_(), loss = Tensor::empty({1}).poison_();
      emu::cross_entropy_forward(logits.data<float>(), labels.data<int64_t>(), lse.data<float>(), rl.data<float>(),
                                 loss.data<float>(), B, K, nullptr);
      const std::vector<float> x = logits.to_vector();
      std::vector<float> lse_ref(B), rl_ref(B);
      double mean = 0;
      for (int64_t b = 0; b < B; ++b) {
        double m = -INFINITY, sum = 0;
        for (int64_t k = 0; k < K; ++k) m = std::max(m, double(x[b * K + k]));
        for (int64_t k = 0; k < K; ++k) sum += std::exp(double(x[b * K + k]) - m);
        const double l = m + std::log(sum);
        lse_ref[b] = static_cast<float>(l);
        rl_ref[b] = static_cast<float>(l - x[b * K + lab[b]]);
        mean += (l - x[b * K + lab[b]]) / B;
      }
      CHECK(allclose(lse.to_vector(), lse_ref, 1e-5, 1e-6));
      CHECK(allclose(rl.to_vector(), rl_ref, 1e-5, 1e-6));
      CHECK(std::fabs(loss.item() - mean) <= 1e-5 * std::fabs(mean) + 1e-6);

      Tensor dloss = Tensor::from_vector({1.7f}, {1});
      Tensor dl = Tensor::empty({B, K}).poison_();
      emu::cross_entropy_backward(dloss.data<float>(), logits.data<float>(), labels.data<int64_t>(),
                                  lse.data<float>(), dl.data<float>(), B, K, nullptr);
      const std::vector<float> p = softmax_ref(x, B, K);
      std::vector<float> dwant(B * K);
      for (int64_t b = 0; b < B; ++b)
        for (int64_t k = 0; k < K; ++k)
          dwant[b * K + k] = static_cast<float>(1.7 / B * (p[b * K + k] - (k == lab[b] ? 1.0 : 0.0)));
      INFO("dlogits " << compare(dl.to_vector(), dwant).str());
      CHECK(allclose(dl.to_vector(), dwant, 1e-5, 1e-7));
    }
    // A label out of range gives a NaN row loss instead of reading out of bounds.
    Tensor logits = random_tensor({2, 3});
    Tensor labels = Tensor::from_vector_i64({1, 3}, {2});
    Tensor lse = Tensor::empty({2}), rl = Tensor::empty({2}), loss = Tensor::empty({1});
    emu::cross_entropy_forward(logits.data<float>(), labels.data<int64_t>(), lse.data<float>(), rl.data<float>(),
                               loss.data<float>(), 2, 3, nullptr);
    CHECK(std::isfinite(rl.to_vector()[0]));
    CHECK(std::isnan(rl.to_vector()[1]));
  });
}

#endif  // DIFFUSE_HAVE_SIMT

TEST_CASE("softmax and cross entropy on the GPU match double loops", "[cuda][kernels]") {
#if defined(DIFFUSE_HAVE_CUDA)
  if (!cuda_available()) return;
  const Device gpu = Device::cuda(0);
  for (auto s : {RowShape{4096, 77}, RowShape{64, 4096}, RowShape{1, 100003}}) {
    Tensor x = random_tensor({s.rows, s.L}, -8.f, 8.f);
    Tensor y = Tensor::empty({s.rows, s.L}, DType::f32, gpu).poison_();
    cuda::softmax_forward(x.to(gpu).raw(), y.raw(), DType::f32, s.rows, s.L, current_stream());
    CHECK(allclose(y.to_vector(), softmax_ref(x.to_vector(), s.rows, s.L), 1e-5, 1e-9));
    Tensor dy = random_tensor({s.rows, s.L});
    Tensor dx = Tensor::empty({s.rows, s.L}, DType::f32, gpu).poison_();
    cuda::softmax_backward(dy.to(gpu).raw(), y.raw(), dx.raw(), DType::f32, s.rows, s.L, current_stream());
    CHECK(allclose(dx.to_vector(), softmax_grad_ref(dy.to_vector(), y.to_vector(), s.rows, s.L), 1e-5, 1e-6));
  }
  const int64_t B = 1000, K = 10;
  Tensor logits = random_tensor({B, K}, -5.f, 5.f);
  std::vector<int64_t> lab(B);
  for (int64_t b = 0; b < B; ++b) lab[b] = b % K;
  Tensor labels = Tensor::from_vector_i64(lab, {B});
  Tensor lse = Tensor::empty({B}, DType::f32, gpu), rl = Tensor::empty({B}, DType::f32, gpu);
  Tensor loss = Tensor::empty({1}, DType::f32, gpu);
  cuda::cross_entropy_forward(logits.to(gpu).data<float>(), labels.to(gpu).data<int64_t>(), lse.data<float>(),
                              rl.data<float>(), loss.data<float>(), B, K, current_stream());
  const std::vector<float> x = logits.to_vector();
  double mean = 0;
  for (int64_t b = 0; b < B; ++b) {
    double m = -INFINITY, sum = 0;
    for (int64_t k = 0; k < K; ++k) m = std::max(m, double(x[b * K + k]));
    for (int64_t k = 0; k < K; ++k) sum += std::exp(double(x[b * K + k]) - m);
    mean += (m + std::log(sum) - x[b * K + lab[b]]) / B;
  }
  CHECK(std::fabs(loss.item() - mean) <= 1e-5 * std::fabs(mean) + 1e-6);
#endif
}
