// AdamW, clipping and EMA against hand-computed references; optimizer state round trips.
#include <catch2/catch.hpp>

#include <cmath>
#include <numbers>

#include "models/train/ema.h"
#include "models/train/optim.h"
#include "models/train/train_step.h"
#include "tests/test_util.h"

using namespace diffuse;
using namespace diffuse::train;

namespace {

// A weight matrix, a bias, and a parameter that never gets a gradient.
NamedParams make_params(uint64_t seed) {
  return {{"w", ag::Var(Tensor::randn({3, 5}, seed, 1), true)},
          {"b", ag::Var(Tensor::randn({5}, seed, 2), true)},
          {"unused", ag::Var(Tensor::randn({2}, seed, 3), true)}};
}

void set_grads(NamedParams& p, uint64_t seed, int step) {
  p[0].second.set_grad(Tensor::randn({3, 5}, seed, 100 + step));
  p[1].second.set_grad(Tensor::randn({5}, seed, 200 + step));
  p[2].second.zero_grad();
}

// torch.optim.AdamW's update in double, one parameter, one step (t is 1-based).
void reference_adamw(std::vector<double>& w, const std::vector<float>& g, std::vector<double>& m,
                     std::vector<double>& v, int t, double lr, double b1, double b2, double eps, double wd) {
  for (size_t i = 0; i < w.size(); ++i) {
    w[i] *= 1 - lr * wd;
    m[i] = b1 * m[i] + (1 - b1) * g[i];
    v[i] = b2 * v[i] + (1 - b2) * double(g[i]) * g[i];
    double mhat = m[i] / (1 - std::pow(b1, t)), vhat = v[i] / (1 - std::pow(b2, t));
    w[i] -= lr * mhat / (std::sqrt(vhat) + eps);
  }
}

std::vector<double> as_double(const Tensor& t) {
  auto f = t.to_vector();
  return {f.begin(), f.end()};
}

}  // namespace

TEST_CASE("AdamW matches a hand-computed reference (warm-up, weight decay, no decay on vectors)", "[cpu][models]") {
  for (bool flat : {false, true}) {
    CAPTURE(flat);
    const uint64_t seed = test::next_seed();
    NamedParams p = make_params(seed);
    AdamWOptions o;
    o.lr = 1e-2f;
    o.beta1 = 0.8f;
    o.beta2 = 0.95f;
    o.eps = 1e-6f;
    o.weight_decay = 0.1f;
    o.decay_vectors = false;
    o.warmup_steps = 2;
    o.flat = flat;
    std::vector<double> w = as_double(p[0].second.value()), b = as_double(p[1].second.value());
    const std::vector<float> unused0 = p[2].second.value().to_vector();
    std::vector<double> mw(w.size()), vw(w.size()), mb(b.size()), vb(b.size());
    AdamW opt(p, o);
    for (int t = 1; t <= 4; ++t) {
      set_grads(p, seed, t);
      const double lr = t < 2 ? 1e-2 * t / 2 : 1e-2;  // linear warm-up over 2 steps
      CHECK(opt.lr_at(t) == Approx(lr));
      reference_adamw(w, p[0].second.grad().to_vector(), mw, vw, t, lr, 0.8, 0.95, 1e-6, 0.1);
      reference_adamw(b, p[1].second.grad().to_vector(), mb, vb, t, lr, 0.8, 0.95, 1e-6, 0.0);
      opt.step();
    }
    CHECK(opt.steps() == 4);
    // f32 arithmetic against double: a few ulps of the weights (unit scale) per step.
    auto got_w = p[0].second.value().to_vector(), got_b = p[1].second.value().to_vector();
    for (size_t i = 0; i < w.size(); ++i) CHECK(got_w[i] == Approx(w[i]).margin(1e-6));
    for (size_t i = 0; i < b.size(); ++i) CHECK(got_b[i] == Approx(b[i]).margin(1e-6));
    if (!flat) CHECK(p[2].second.value().to_vector() == unused0);  // no gradient: untouched (PyTorch)
    if (flat) {
      CHECK(opt.flat()->intact());
      CHECK(p[0].second.value().same_storage(opt.flat()->buffer()));
    }
  }
}

TEST_CASE("the cosine learning-rate schedule: warm-up, then a half cosine to 0 at decay_steps", "[cpu][models]") {
  AdamWOptions o;
  o.lr = 2e-3f;
  o.warmup_steps = 10;
  o.decay_steps = 110;
  // Warm-up as without decay; then lr (1 + cos(pi p)) / 2 with p = (t - 10) / 100.
  CHECK(warmup_lr(o, 5) == Approx(1e-3));
  CHECK(warmup_lr(o, 10) == Approx(2e-3));
  CHECK(warmup_lr(o, 35) == Approx(2e-3 * (1 + std::cos(std::numbers::pi / 4)) / 2));
  CHECK(warmup_lr(o, 60) == Approx(1e-3));
  CHECK(warmup_lr(o, 110) == Approx(0).margin(1e-12));
  CHECK(warmup_lr(o, 500) == Approx(0).margin(1e-12));  // past the end: stays 0
  for (int64_t t = 11; t <= 110; ++t) CHECK(warmup_lr(o, t) <= warmup_lr(o, t - 1));
  // The training config's cosine decays over the run's steps; constant is the default.
  TrainConfig c;
  c.steps = 900;
  CHECK(adamw_options(c).decay_steps == 0);
  c.lr_schedule = LrSchedule::cosine;
  CHECK(adamw_options(c).decay_steps == 900);
  CHECK(adamw_step_at(adamw_options(c), 900).lr == Approx(0).margin(1e-12));
}

TEST_CASE("flat and per-parameter AdamW agree bit for bit", "[cpu][models]") {
  const uint64_t seed = test::next_seed();
  NamedParams a = make_params(seed), b = make_params(seed);
  a.pop_back();  // every parameter has a gradient: the two modes then do the same arithmetic
  b.pop_back();
  AdamWOptions o;
  o.lr = 3e-3f;
  o.weight_decay = 0.05f;
  AdamW oa(a, o);
  o.flat = true;
  AdamW ob(b, o);
  EMA ea(a, 0.9f, true), eb(b, 0.9f, true);
  for (int t = 1; t <= 3; ++t) {
    a[0].second.set_grad(Tensor::randn({3, 5}, seed, 10 + t));
    a[1].second.set_grad(Tensor::randn({5}, seed, 20 + t));
    b[0].second.set_grad(Tensor::randn({3, 5}, seed, 10 + t));
    b[1].second.set_grad(Tensor::randn({5}, seed, 20 + t));
    oa.step(&ea);
    ob.step(&eb);
  }
  for (int i = 0; i < 2; ++i) {
    CHECK(a[i].second.value().to_vector() == b[i].second.value().to_vector());
    CHECK(ea.shadow(a[i].first).to_vector() == eb.shadow(b[i].first).to_vector());
  }
}

TEST_CASE("clip_grad_norm returns the global norm and scales only above max_norm", "[cpu][models]") {
  ag::Var x(Tensor::from_vector({3, 4}, {2}), true), y(Tensor::from_vector({12}, {1}), true), z(Tensor::zeros({2}), true);
  x.set_grad(Tensor::from_vector({3, 4}, {2}));
  y.set_grad(Tensor::from_vector({12}, {1}));  // norm sqrt(9 + 16 + 144) = 13
  Tensor shared = x.grad();                    // a gradient may be shared: clipping must not write into it
  CHECK(clip_grad_norm(std::vector<ag::Var>{x, y, z}, 100.0) == Approx(13.0));
  CHECK(x.grad().to_vector() == std::vector<float>{3, 4});
  CHECK(clip_grad_norm(std::vector<ag::Var>{x, y, z}, 6.5) == Approx(13.0));
  CHECK(x.grad().to_vector()[0] == Approx(1.5).epsilon(1e-6));
  CHECK(x.grad().to_vector()[1] == Approx(2.0).epsilon(1e-6));
  CHECK(y.grad().to_vector()[0] == Approx(6.0).epsilon(1e-6));
  CHECK(shared.to_vector() == std::vector<float>{3, 4});
  CHECK(clip_grad_norm(std::vector<ag::Var>{x, y, z}, 100.0) == Approx(6.5).epsilon(1e-6));
}

TEST_CASE("EMA follows the weights with the warm-up decay", "[cpu][models]") {
  ag::Var w(Tensor::from_vector({1.f, -2.f}, {2}), true);
  NamedParams p{{"w", w}};
  EMA ema(p, 0.99f, /*warmup=*/true);
  std::vector<double> ref = {1.0, -2.0};
  for (int n = 0; n < 30; ++n) {
    const double d = std::min(0.99, (1.0 + n) / (10.0 + n));
    CHECK(ema.next_decay() == Approx(d));
    w.value().data<float>()[0] = static_cast<float>(n);
    w.value().data<float>()[1] = static_cast<float>(-n * 0.5);
    ema.update();
    ref[0] = d * ref[0] + (1 - d) * n;
    ref[1] = d * ref[1] + (1 - d) * (-n * 0.5);
  }
  auto got = ema.shadow("w").to_vector();
  CHECK(got[0] == Approx(ref[0]).epsilon(1e-5));
  CHECK(got[1] == Approx(ref[1]).epsilon(1e-5));
  EMA plain(p, 0.5f);
  CHECK(plain.next_decay() == 0.5f);

  // swap exchanges live and averaged weights; twice is the identity.
  const auto live = w.value().to_vector();
  ema.swap();
  CHECK(w.value().to_vector() == got);
  ema.swap();
  CHECK(w.value().to_vector() == live);
  // copy_to writes the averages into another model with the same names.
  ag::Var other(Tensor::zeros({2}), true);
  ema.copy_to({{"w", other}});
  CHECK(other.value().to_vector() == got);
  CHECK_THROWS_AS(ema.copy_to({{"v", other}}), Error);
}

TEST_CASE("fused AdamW+EMA equals AdamW then EMA::update", "[cpu][models]") {
  const uint64_t seed = test::next_seed();
  NamedParams a = make_params(seed), b = make_params(seed);
  AdamWOptions o;
  o.lr = 1e-2f;
  AdamW oa(a, o), ob(b, o);
  EMA ea(a, 0.9f, true), eb(b, 0.9f, true);
  for (int t = 1; t <= 3; ++t) {
    set_grads(a, seed, t);
    set_grads(b, seed, t);
    oa.step(&ea);
    ob.step();
    eb.update();
  }
  CHECK(ea.num_updates() == 3);
  for (auto& [name, v] : a) CHECK(ea.shadow(name).to_vector() == eb.shadow(name).to_vector());
}

TEST_CASE("optimizer and EMA state round-trip exactly", "[cpu][models]") {
  for (bool flat : {false, true}) {
    CAPTURE(flat);
    const uint64_t seed = test::next_seed();
    NamedParams a = make_params(seed);
    AdamWOptions o;
    o.lr = 1e-2f;
    o.weight_decay = 0.01f;
    o.warmup_steps = 3;
    o.flat = flat;
    AdamW oa(a, o);
    EMA ea(a, 0.999f, true);
    for (int t = 1; t <= 3; ++t) {
      set_grads(a, seed, t);
      oa.step(&ea);
    }
    // Save: weights, optimizer, EMA (as a checkpoint would), each copied out.
    std::map<std::string, Tensor> ckpt;
    for (auto& [n, v] : a) ckpt[n] = v.value().clone();
    for (auto& [k, t] : oa.state()) ckpt[k] = t.clone();
    for (auto& [k, t] : ea.state()) ckpt[k] = t.clone();
    CHECK(ckpt.count("opt.m.w"));
    CHECK(ckpt.count("opt.v.b"));
    CHECK(ckpt.count("ema.w"));
    CHECK(ckpt.at("opt.step").to_vector_i64() == std::vector<int64_t>{3});
    CHECK(ckpt.at("ema.num_updates").to_vector_i64() == std::vector<int64_t>{3});

    // Restore into fresh objects with other initial weights, then both continue for 2 steps.
    NamedParams b = make_params(seed + 1);
    for (auto& [n, v] : b) v.value().copy_(ckpt.at(n));
    AdamW ob(b, o);
    EMA eb(b, 0.999f, true);
    ob.load_state(ckpt);
    eb.load_state(ckpt);
    CHECK(ob.steps() == 3);
    for (int t = 4; t <= 5; ++t) {
      set_grads(a, seed, t);
      set_grads(b, seed, t);
      oa.step(&ea);
      ob.step(&eb);
    }
    for (size_t i = 0; i < a.size(); ++i) {
      CHECK(a[i].second.value().to_vector() == b[i].second.value().to_vector());
      CHECK(ea.shadow(a[i].first).to_vector() == eb.shadow(b[i].first).to_vector());
    }
    // A missing entry is named.
    ckpt.erase("opt.v.b");
    try {
      ob.load_state(ckpt);
      FAIL("expected an error");
    } catch (const Error& e) {
      CHECK_THAT(e.what(), Catch::Contains("missing: opt.v.b"));
    }
  }
}
