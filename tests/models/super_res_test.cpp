// A super-resolution UNet (nn::UNetConfig::low_res_channels; models/train/super_res.h): its f64
// gradcheck with the low-resolution input and the augmentation level, the config's JSON, the
// resampling, and the conditioning augmentation's moments at a fixed level.
#include <catch2/catch.hpp>

#include <cmath>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "autograd/gradcheck.h"
#include "models/nn/unet.h"
#include "models/train/super_res.h"
#include "tests/models/micro_unet.h"
#include "tests/test_util.h"

using namespace diffuse;
using namespace diffuse::nn;

namespace {

// The gradcheck's micro UNet (unet_gradcheck_test.cpp) at 4x4, conditioned on a 2x2 image of two
// channels: conv_in reads 1 + 2 channels, the level's MLP (aug.fc1, aug.fc2) adds to the time
// embedding.
UNetConfig micro_sr_config(bool adm) {
  UNetConfig c = test::micro_unet_config();
  c.low_res_channels = 2;
  c.low_res_size = 2;
  if (adm) {
    c.scale_shift_norm = true;
    c.num_classes = 3;
    c.learn_sigma = true;
  }
  return c;
}

Tensor steps(int64_t B, float lo = 0.f, float hi = 1000.f) { return test::random_tensor({B}, lo, hi); }

}  // namespace

TEST_CASE("a super-resolution UNet's gradients match finite differences in f64 (x, the low-res image, parameters)",
          "[cpu][models][heavy]") {
#ifdef _OPENMP
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);  // as unet_gradcheck_test.cpp: tiny tensors, thousands of evaluations
#endif
  for (bool adm : {false, true}) {
    CAPTURE(adm);
    const UNetConfig c = micro_sr_config(adm);
    UNet net(c, test::next_seed());
    net.to(DType::f64);
    const int64_t B = 2;
    const Tensor t = steps(B), level = steps(B, -1.f, 300.f);
    const Tensor labels = Tensor::from_vector_i64({2, 3}, {B});
    auto params = net.named_parameters();
    CHECK(net.state().count("aug.fc1.weight") == 1);
    CHECK(net.state().count("aug.fc2.weight") == 1);
    CHECK(net.state().at("conv_in.weight").shape() == Shape{2, 3, 3, 3});  // (Cout, KH, KW, 1 + 2)
    std::vector<Tensor> inputs = {test::random_normal({B, 4, 4, 1}).to(DType::f64),
                                  test::random_normal({B, 2, 2, 2}).to(DType::f64)};
    // Random weights everywhere, the zero-initialised out_conv too (else it hides every gradient).
    for (auto& [n, v] : params) inputs.push_back(test::random_tensor(v.shape(), -0.5f, 0.5f).to(DType::f64));
    INFO(net.num_parameters() << " parameters");
    auto f = [&](const std::vector<ag::Var>& v) {
      net.bind_parameters({v.begin() + 2, v.end()});
      return net.forward(v[0], t, adm ? labels : Tensor(), LowRes{v[1], level});
    };
    auto r = ag::gradcheck(f, inputs);
    INFO(r.report);
    CHECK(r.ok);
  }
#ifdef _OPENMP
  omp_set_num_threads(threads);
#endif
}

TEST_CASE("a super-resolution UNet's config round-trips, and bad values or missing inputs are refused",
          "[cpu][models]") {
  UNetConfig c = UNetConfig::preset("tiny");
  CHECK_FALSE(c.to_json().contains("low_res_channels"));  // an ordinary model's JSON is as before
  CHECK_FALSE(c.to_json().contains("low_res_size"));
  c.low_res_channels = 1;
  c.low_res_size = 14;
  const auto j = c.to_json();
  CHECK(j.at("low_res_channels") == 1);
  CHECK(j.at("low_res_size") == 14);
  const UNetConfig d = UNetConfig::from_json(nlohmann::json::parse(j.dump()));
  CHECK(d.low_res_channels == 1);
  CHECK(d.low_res_size == 14);
  CHECK(d.low_res_factor() == 2);
  CHECK(d.to_json() == j);
  c.low_res_size = 7;
  CHECK(UNetConfig::from_json(c.to_json()).low_res_factor() == 4);
  for (const nlohmann::json& bad :
       {nlohmann::json{{"low_res_size", 14}},                              // without its channels
        nlohmann::json{{"low_res_channels", 1}},                           // without its size
        nlohmann::json{{"low_res_channels", 1}, {"low_res_size", 28}},     // not smaller
        nlohmann::json{{"low_res_channels", 1}, {"low_res_size", 21}},     // not a divisor
        nlohmann::json{{"low_res_channels", 1}, {"low_res_size", 9}},      // 28 / 9
        nlohmann::json{{"low_res_channels", -1}, {"low_res_size", 14}},
        nlohmann::json{{"low_res_channels", 1}, {"low_res_size", "14"}}}) {
    CAPTURE(bad.dump());
    auto k = UNetConfig::preset("tiny").to_json();
    k.update(bad);
    CHECK_THROWS_WITH(UNetConfig::from_json(k), Catch::Contains("low_res"));
  }
  // 28 = 7 x 4 but not 7 x 2^k with an odd leftover: 28 / 14 = 2 passes, 24 / 6 = 4 passes too,
  // 24 / 8 = 3 does not.
  auto k = UNetConfig::preset("tiny").to_json();
  k.update({{"image_size", 24}, {"channel_mult", {1, 2}}, {"attention_resolutions", {12}}, {"low_res_channels", 1},
            {"low_res_size", 8}});
  CHECK_THROWS_WITH(UNetConfig::from_json(k), Catch::Contains("power of two"));

  ag::NoGrad ng;
  c.low_res_size = 14;
  UNet sr(c, test::next_seed());
  UNet plain(UNetConfig::preset("tiny"), 1);
  const int64_t B = 2;
  ag::Var x(test::random_normal({B, 28, 28, 1}));
  const LowRes low{ag::Var(test::random_normal({B, 14, 14, 1})), steps(B)};
  CHECK(sr.forward(x, steps(B), {}, low).shape() == Shape{B, 28, 28, 1});
  CHECK_THROWS_WITH(sr.forward(x, steps(B)), Catch::Contains("needs its low-resolution image"));
  CHECK_THROWS_WITH(sr.forward(x, steps(B), {}, LowRes{ag::Var(test::random_normal({B, 7, 7, 1})), steps(B)}),
                    Catch::Contains("expected a low-resolution image"));
  CHECK_THROWS_WITH(sr.forward(x, steps(B), {}, LowRes{low.image, Tensor()}), Catch::Contains("augmentation level"));
  CHECK_THROWS_WITH(plain.forward(x, steps(B), {}, low), Catch::Contains("low_res_channels = 0"));
  // The level is an input: a different level, a different output (once the zero-initialised
  // layers, out_conv and each ResBlock's conv2, are not zero: random weights everywhere).
  for (auto& [n, v] : sr.named_parameters()) v.value().copy_(test::random_tensor(v.shape(), -0.2f, 0.2f));
  const Tensor t = steps(B);
  const Tensor a = sr.forward(x, t, {}, low).value();
  const Tensor b = sr.forward(x, t, {}, LowRes{low.image, steps(B)}).value();
  CHECK(test::compare(a, b).max_abs > 0);
}

TEST_CASE("nearest upsampling is area averaging's right inverse", "[cpu][models]") {
  ag::NoGrad ng;
  const Tensor low = test::random_normal({2, 7, 7, 3});
  for (int f : {1, 2, 4}) {
    CAPTURE(f);
    const Tensor up = nearest_upsample(ag::Var(low), f).value();
    CHECK(up.shape() == Shape{2, 7 * f, 7 * f, 3});
    CHECK(area_downsample(up, f).to_vector() == low.to_vector());
  }
  // Area averaging by 4 is the mean of each 4x4 block.
  const Tensor x = test::random_normal({1, 8, 8, 1});
  const std::vector<float> v = x.to_vector(), d = area_downsample(x, 4).to_vector();
  for (int bi = 0; bi < 2; ++bi)
    for (int bj = 0; bj < 2; ++bj) {
      double sum = 0;
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) sum += v[(bi * 4 + i) * 8 + bj * 4 + j];
      CHECK(d[bi * 2 + bj] == Approx(sum / 16).margin(1e-6));
    }
  CHECK_THROWS_AS(area_downsample(x, 3), Error);
  CHECK_THROWS_AS(nearest_upsample(ag::Var(x), 6), Error);
}

TEST_CASE("conditioning augmentation: z_s has mean alpha_s z and variance sigma_s^2 at a fixed level; 0 keeps z",
          "[cpu][train]") {
  const auto sched = diffusion::DiscreteSchedule::linear(1000);
  const int64_t B = 4, h = 64;
  // A fixed low-resolution image: every sample the same, so the moments over pixels and samples of
  // (z_s - alpha_s z) are those of sigma_s eps'.
  const Tensor one = test::random_tensor({1, h, h, 1});
  Tensor low = Tensor::empty({B, h, h, 1});
  for (int64_t b = 0; b < B; ++b) low.slice(b, b + 1).copy_(one);
  for (double s : {0.1, 0.3, 0.7}) {
    CAPTURE(s);
    const LowRes z = train::augment_low_res(low, std::vector<double>(B, s), sched, 1000, 11, 3);
    const double a = sched.alpha(s), sg = sched.sigma(s);
    const std::vector<float> zv = z.image.value().to_vector(), lv = low.to_vector();
    double m = 0, m2 = 0;
    for (size_t i = 0; i < zv.size(); ++i) {
      const double e = (zv[i] - a * lv[i]) / sg;
      m += e;
      m2 += e * e;
    }
    const double n = static_cast<double>(zv.size());
    m /= n;
    m2 = m2 / n - m * m;
    // n = 16384 standard normals: the mean's standard error 1/128, the variance's sqrt(2/n) = 0.011;
    // 5 standard errors.
    CHECK(std::abs(m) < 5.0 / 128);
    CHECK(std::abs(m2 - 1) < 5 * std::sqrt(2 / n));
    // The network's input for the level: s T - 1, the timestep's map.
    for (float v : z.level.to_vector()) CHECK(v == Approx(s * 1000 - 1));
  }
  const LowRes clean = train::augment_low_res(low, std::vector<double>(B, 0.0), sched, 1000, 11, 3);
  CHECK(clean.image.value().to_vector() == low.to_vector());
  CHECK_THROWS_AS(train::augment_low_res(low, std::vector<double>(B, 1.5), sched, 1000, 11, 3), Error);
  CHECK_THROWS_AS(train::augment_low_res(low, std::vector<double>(B - 1, 0.1), sched, 1000, 11, 3), Error);
}

TEST_CASE("training's conditioning: levels uniform in [0, aug_max] per sample, drawn from the step's streams",
          "[cpu][train]") {
  UNetConfig c = UNetConfig::preset("tiny");
  c.low_res_channels = 1;
  c.low_res_size = 14;
  const auto sched = diffusion::DiscreteSchedule::linear(1000);
  const int64_t B = 256;
  const Tensor x = test::random_tensor({B, 28, 28, 1});
  const LowRes a = train::training_low_res(x, c, sched, 1000, 0.2, 5, 9);
  CHECK(a.image.shape() == Shape{B, 14, 14, 1});
  // Same seed and step, same draws (resume); another step, others.
  CHECK(train::training_low_res(x, c, sched, 1000, 0.2, 5, 9).image.value().to_vector() ==
        a.image.value().to_vector());
  CHECK(train::training_low_res(x, c, sched, 1000, 0.2, 5, 10).level.to_vector() != a.level.to_vector());
  double mean = 0;
  for (float v : a.level.to_vector()) {
    const double s = (v + 1) / 1000;
    CHECK(s >= 0);
    CHECK(s <= 0.2 + 1e-6);
    mean += s / B;
  }
  CHECK(mean == Approx(0.1).margin(5 * 0.2 / std::sqrt(12.0 * B)));  // U[0, 0.2]: sd 0.2/sqrt(12)
  // aug_max 0: the area-averaged images as they are.
  const LowRes none = train::training_low_res(x, c, sched, 1000, 0.0, 5, 9);
  CHECK(none.image.value().to_vector() == area_downsample(x, 2).to_vector());
}
