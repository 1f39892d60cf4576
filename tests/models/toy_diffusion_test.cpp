// The 2-D toy diffusion (slow tier): an MLP denoiser with a time embedding learns the swiss roll
// with DDPM's epsilon objective on the cpu, and its DDPM and DDIM samples land on the roll.
// The few-line samplers are written inline so this test depends only on models/nn and
// models/train.
#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "autograd/elementwise.h"
#include "autograd/linalg.h"
#include "kernels/time_embedding.h"
#include "models/nn/layers.h"
#include "models/train/ema.h"
#include "models/train/optim.h"
#include "tests/test_util.h"

using namespace diffuse;

namespace {

constexpr int kT = 200;        // diffusion steps: enough for a 2-D density
constexpr int kEmb = 32;       // sinusoidal time features
constexpr int kHidden = 128;

// x (B, 2), t (B) on the 0..1000 scale -> predicted noise (B, 2). Each coordinate of x enters
// as sinusoidal features too (scale 25, as in tanelp's tiny-diffusion): an MLP on the raw 2-D
// point is spectrally biased towards smooth functions and blurs the roll's arms together.
class ToyDenoiser : public nn::Module {
 public:
  explicit ToyDenoiser(uint64_t seed) {
    fc1_ = register_module("fc1", std::make_shared<nn::Linear>(3 * kEmb, kHidden));
    fc2_ = register_module("fc2", std::make_shared<nn::Linear>(kHidden, kHidden));
    fc3_ = register_module("fc3", std::make_shared<nn::Linear>(kHidden, kHidden));
    out_ = register_module("out", std::make_shared<nn::Linear>(kHidden, 2));
    init_parameters(seed);
  }
  ag::Var forward(const Tensor& x, const Tensor& t) const {
    const int64_t B = x.size(0);
    auto xv = x.to_vector();
    std::vector<float> c0(B), c1(B);
    for (int64_t b = 0; b < B; ++b) c0[b] = xv[2 * b], c1[b] = xv[2 * b + 1];
    kernels::TimeEmbeddingOptions px;
    px.scale = 25.f;
    ag::Var e0(kernels::timestep_embedding(Tensor::from_vector(c0, {B}), kEmb, px));
    ag::Var e1(kernels::timestep_embedding(Tensor::from_vector(c1, {B}), kEmb, px));
    ag::Var et(kernels::timestep_embedding(t, kEmb));
    ag::Var h = ag::silu(fc1_->forward(ag::concat_last({e0, e1, et})));
    h = ag::silu(fc2_->forward(h));
    h = ag::silu(fc3_->forward(h));
    return out_->forward(h);
  }

 private:
  std::shared_ptr<nn::Linear> fc1_, fc2_, fc3_, out_;
};

// The 2-D swiss roll (s cos s, s sin s) / 10 for s in [1.5 pi, 4.5 pi]: spans about [-1.4, 1.4].
std::vector<float> roll_points(int n, uint64_t seed, uint64_t offset) {
  auto u = Tensor::rand({n}, seed, offset).to_vector();
  std::vector<float> p(2 * n);
  for (int i = 0; i < n; ++i) {
    const double s = 1.5 * M_PI + 3.0 * M_PI * u[i];
    p[2 * i] = static_cast<float>(s * std::cos(s) / 10);
    p[2 * i + 1] = static_cast<float>(s * std::sin(s) / 10);
  }
  return p;
}

// Mean distance from each sample to the nearest point of a dense, evenly spaced roll.
// The distance of each point to the roll: its mean, and its median (robust to the few samples a
// model leaves between two arms).
struct RollDistance {
  double mean, median;
};
RollDistance distance_to_roll(const std::vector<float>& x) {
  std::vector<float> roll;
  const int M = 4000;
  for (int i = 0; i < M; ++i) {
    const double s = 1.5 * M_PI + 3.0 * M_PI * i / (M - 1);
    roll.push_back(static_cast<float>(s * std::cos(s) / 10));
    roll.push_back(static_cast<float>(s * std::sin(s) / 10));
  }
  double total = 0;
  const size_t n = x.size() / 2;
  std::vector<double> d(n);
  for (size_t i = 0; i < n; ++i) {
    double best = 1e30;
    for (int j = 0; j < M; ++j) {
      const double dx = x[2 * i] - roll[2 * j], dy = x[2 * i + 1] - roll[2 * j + 1];
      best = std::min(best, dx * dx + dy * dy);
    }
    d[i] = std::sqrt(best);
    total += d[i];
  }
  std::nth_element(d.begin(), d.begin() + static_cast<std::ptrdiff_t>(n / 2), d.end());
  return {total / static_cast<double>(n), d[n / 2]};
}

struct Schedule {
  std::vector<double> beta, alpha_bar;
  Schedule() {
    double ab = 1;
    for (int i = 0; i < kT; ++i) {
      // DDPM's linear schedule stretched to 200 steps: alpha_bar_T = exp(-5) ~ 0.007.
      const double b = 1e-4 + (0.05 - 1e-4) * i / (kT - 1);
      ab *= 1 - b;
      beta.push_back(b);
      alpha_bar.push_back(ab);
    }
  }
  static float time(int i) { return static_cast<float>(i + 1) * (1000.f / kT); }  // step i on the 0..1000 axis
};

Tensor predict(const ToyDenoiser& net, const std::vector<float>& x, int i) {
  const int64_t n = static_cast<int64_t>(x.size() / 2);
  return net.forward(Tensor::from_vector(x, {n, 2}), Tensor::full({n}, Schedule::time(i))).value();
}

}  // namespace

TEST_CASE("toy 2-D diffusion: an MLP learns the swiss roll; DDPM and DDIM samples land on it", "[slow][models]") {
  // Tensors of a few thousand elements: thread teams only cost here (and spin on a busy machine).
#ifdef _OPENMP
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
#endif
  const uint64_t seed = test::next_seed();
  const auto t0 = std::chrono::steady_clock::now();
  Schedule sch;
  ToyDenoiser net(seed);
  train::AdamWOptions o;
  o.lr = 3e-3f;
  o.warmup_steps = 100;
  train::AdamW opt(net.named_parameters(), o);
  train::EMA ema(net.named_parameters(), 0.995f, /*warmup=*/true);

  const int B = 128, steps = 4000;
  std::vector<double> losses;
  for (int step = 0; step < steps; ++step) {
    // q(x_t | x_0) = N(sqrt(abar) x0, (1 - abar) I): one (x0, t, eps) per sample.
    auto x0 = roll_points(B, seed, 3 * step);
    auto u = Tensor::rand({B}, seed, 3 * step + 1).to_vector();
    auto eps = Tensor::randn({B, 2}, seed, 3 * step + 2);
    auto ev = eps.to_vector();
    std::vector<float> xt(2 * B), tt(B);
    for (int b = 0; b < B; ++b) {
      const int i = std::min(kT - 1, static_cast<int>(u[b] * kT));
      const double ab = sch.alpha_bar[i];
      tt[b] = Schedule::time(i);
      for (int k = 0; k < 2; ++k)
        xt[2 * b + k] = static_cast<float>(std::sqrt(ab) * x0[2 * b + k] + std::sqrt(1 - ab) * ev[2 * b + k]);
    }
    ag::Var loss = ag::mse(net.forward(Tensor::from_vector(xt, {B, 2}), Tensor::from_vector(tt, {B})),
                           ag::Var(eps));
    losses.push_back(loss.value().item());
    ag::backward(loss);
    // Linear decay to 0 over the second half: Adam's noise floor falls with the step size.
    if (step >= steps / 2) opt.set_lr(o.lr * static_cast<float>(steps - step) / static_cast<float>(steps - steps / 2));
    opt.step(&ema);
    opt.zero_grad();
  }
  auto mean = [&](size_t a, size_t b) {
    double s = 0;
    for (size_t i = a; i < b; ++i) s += losses[i];
    return s / static_cast<double>(b - a);
  };
  const double first = mean(0, 50), last = mean(steps - 300, steps);
  INFO("loss: first 50 steps " << first << ", last 300 steps " << last);
  CHECK(last < 0.6 * first);

  // Sample with the EMA weights.
  ema.swap();
  ag::NoGrad ng;
  const int N = 500;
  auto xT = Tensor::randn({N, 2}, seed + 1).to_vector();

  // DDPM ancestral sampling (Ho et al. 2020, Algorithm 2) with sigma_t^2 = beta_t.
  std::vector<float> x = xT;
  for (int i = kT - 1; i >= 0; --i) {
    auto e = predict(net, x, i).to_vector();
    auto z = Tensor::randn({N, 2}, seed + 2, static_cast<uint64_t>(i)).to_vector();
    const double b = sch.beta[i], ab = sch.alpha_bar[i];
    for (size_t k = 0; k < x.size(); ++k) {
      double m = (x[k] - b / std::sqrt(1 - ab) * e[k]) / std::sqrt(1 - b);
      x[k] = static_cast<float>(m + (i > 0 ? std::sqrt(b) * z[k] : 0.0));
    }
  }
  const RollDistance d_ddpm = distance_to_roll(x);

  // DDIM (Song et al. 2021, eq. 12 with eta = 0) on 50 of the 200 steps.
  x = xT;
  const int stride = 4;
  for (int i = kT - 1; i >= 0; i -= stride) {
    auto e = predict(net, x, i).to_vector();
    const double ab = sch.alpha_bar[i], ab_prev = i - stride >= 0 ? sch.alpha_bar[i - stride] : 1.0;
    for (size_t k = 0; k < x.size(); ++k) {
      const double x0 = (x[k] - std::sqrt(1 - ab) * e[k]) / std::sqrt(ab);
      x[k] = static_cast<float>(std::sqrt(ab_prev) * x0 + std::sqrt(1 - ab_prev) * e[k]);
    }
  }
  const RollDistance d_ddim = distance_to_roll(x);
  const RollDistance d_noise = distance_to_roll(xT);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  INFO("distance to the roll, mean / median: DDPM " << d_ddpm.mean << " / " << d_ddpm.median << ", DDIM "
                                                  << d_ddim.mean << " / " << d_ddim.median << ", N(0, I) "
                                                  << d_noise.mean << " / " << d_noise.median << "; " << secs << " s");
  // Arms of the roll are 0.63 apart; N(0, I) samples sit ~0.4 from it on average. Over 24 seeds the
  // trained samples' median distance was 0.018-0.024 (DDPM) and 0.006-0.010 (DDIM), and their mean
  // 0.027-0.043 and 0.022-0.074: a few samples may stay between two arms on some seeds (DDIM, on a
  // quarter of the steps, most; one earlier seed reached a mean of 0.10). So the bound is on the
  // median, with the mean held well below the noise's. The time is reported, not checked.
  CHECK(d_ddpm.median < 0.04);
  CHECK(d_ddim.median < 0.04);
  CHECK(d_ddpm.mean < 0.4 * d_noise.mean);
  CHECK(d_ddim.mean < 0.4 * d_noise.mean);
#ifdef _OPENMP
  omp_set_num_threads(threads);
#endif
  WARN("toy diffusion: loss " << first << " -> " << last << ", distance DDPM " << d_ddpm.mean << " DDIM " << d_ddim.mean
                              << " (noise " << d_noise.mean << "), medians " << d_ddpm.median << ", "
                              << d_ddim.median << ", " << secs << " s");
}
