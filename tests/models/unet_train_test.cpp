// Training steps of the tiny UNet (slow tier): forward + backward + AdamW at batch 64, timed, and
// the epsilon loss on a fixed noisy batch falls (the model, its gradients and the optimizer work
// together).
#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>

#include "autograd/elementwise.h"
#include "models/nn/unet.h"
#include "models/train/ema.h"
#include "models/train/optim.h"
#include "tests/test_util.h"

using namespace diffuse;

TEST_CASE("tiny UNet: timed training steps at batch 64, loss falls on a fixed batch", "[slow][models]") {
  auto cfg = nn::UNetConfig::preset("tiny");
  const uint64_t seed = test::next_seed();
  nn::UNet net(cfg, seed);
  train::AdamWOptions o;
  o.lr = 1e-3f;
  o.flat = true;
  train::AdamW opt(net.named_parameters(), o);
  train::EMA ema(net.named_parameters(), 0.999f, true);

  const int64_t B = 64;
  // A fixed batch of smooth "images" (blurred noise) and noise at mid-range timesteps: the model
  // can reduce the epsilon loss on it quickly.
  Tensor x0 = Tensor::randn({B, 28, 28, 1}, seed, 1);
  Tensor eps = Tensor::randn({B, 28, 28, 1}, seed, 2);
  Tensor t = Tensor::rand({B}, seed, 3, 100.f, 900.f);
  std::vector<float> xt(x0.numel());
  {
    auto a = x0.to_vector(), e = eps.to_vector(), tv = t.to_vector();
    for (int64_t b = 0; b < B; ++b) {
      const double ab = std::exp(-5.0 * tv[b] / 1000.0);  // any alpha_bar in (0, 1) will do
      for (int64_t k = 0; k < 784; ++k)
        xt[b * 784 + k] = static_cast<float>(std::sqrt(ab) * a[b * 784 + k] + std::sqrt(1 - ab) * e[b * 784 + k]);
    }
  }
  Tensor xt_t = Tensor::from_vector(xt, {B, 28, 28, 1});

  std::vector<double> ms, losses;
  const int steps = 12;
  for (int s = 0; s < steps; ++s) {
    const auto t0 = std::chrono::steady_clock::now();
    ag::Var loss = ag::mse(net.forward(ag::Var(xt_t), t), ag::Var(eps));
    ag::backward(loss);
    train::clip_grad_norm(net.parameters(), 1.0);
    opt.step(&ema);
    opt.zero_grad();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    losses.push_back(loss.value().item());
  }
  std::vector<double> sorted(ms.begin() + 2, ms.end());  // after warm-up (allocator caches, scratch)
  std::sort(sorted.begin(), sorted.end());
  const double median = sorted[sorted.size() / 2];
  WARN("tiny UNet (" << net.num_parameters() << " params), batch 64: forward+backward+AdamW median " << median
                     << " ms/step; loss " << losses.front() << " -> " << losses.back());
  CHECK(losses.back() < 0.8 * losses.front());
}
