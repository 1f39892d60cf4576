// The training config's schedule keys: the betas train::make_schedule builds from each (against
// the formulas, computed here independently in long double), their JSON round trip, configs that
// do not use them reading and writing as before, and every refusal naming its key.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <numbers>

#include "models/train/trainer.h"

using namespace diffuse;
using diffusion::DiscreteSchedule;

namespace {

train::TrainConfig from(const nlohmann::json& j) { return train::TrainConfig::from_json(j); }

// betas and alpha_bar of the schedule against `beta(i)`, the formula in long double.
template <class F>
void check_betas(const DiscreteSchedule& s, int T, F beta) {
  REQUIRE(s.T() == T);
  long double abar = 1;
  for (int i = 0; i < T; ++i) {
    const long double b = beta(i);
    abar *= 1.0L - b;
    INFO("step " << i);
    // The schedule forms each beta in double: a few ulps.
    CHECK(s.betas()[i] == Approx(static_cast<double>(b)).epsilon(1e-14));
    // alpha_bar is a product of T factors, each rounded once: T ulps at most.
    CHECK(s.alphas_cumprod()[i] == Approx(static_cast<double>(abar)).epsilon(1e-12));
  }
}

}  // namespace

TEST_CASE("make_schedule: linear betas from beta_start to beta_end as given", "[cpu][train]") {
  const train::TrainConfig c = from({{"timesteps", 400}, {"beta_start", 2e-4}, {"beta_end", 0.03}});
  check_betas(train::make_schedule(c), 400, [](int i) { return 2e-4L + (0.03L - 2e-4L) * i / 399; });
  // One end given: the other is DDPM's, scaled by 1000 / T.
  const train::TrainConfig end_only = from({{"timesteps", 500}, {"beta_end", 0.05}});
  check_betas(train::make_schedule(end_only), 500, [](int i) { return 2e-4L + (0.05L - 2e-4L) * i / 499; });
}

TEST_CASE("make_schedule: scaled_linear betas are linear in sqrt(beta)", "[cpu][train]") {
  const train::TrainConfig c =
      from({{"schedule", "scaled_linear"}, {"beta_start", 0.00085}, {"beta_end", 0.012}, {"timesteps", 1000}});
  check_betas(train::make_schedule(c), 1000, [](int i) {
    const long double a = std::sqrt(0.00085L), b = std::sqrt(0.012L), r = a + (b - a) * i / 999;
    return r * r;
  });
  // Without ends: DDPM's scaled by 1000 / T, as linear.
  const train::TrainConfig d = from({{"schedule", "scaled_linear"}, {"timesteps", 250}});
  check_betas(train::make_schedule(d), 250, [](int i) {
    const long double a = std::sqrt(4e-4L), b = std::sqrt(0.08L), r = a + (b - a) * i / 249;
    return r * r;
  });
}

TEST_CASE("make_schedule: custom takes the listed betas exactly", "[cpu][train]") {
  std::vector<double> betas;
  for (int i = 0; i < 30; ++i) betas.push_back(0.001 + 0.2 * std::pow(i / 29.0, 1.5));
  const train::TrainConfig c = from({{"schedule", "custom"}, {"timesteps", 30}, {"betas", betas}});
  const DiscreteSchedule s = train::make_schedule(c);
  CHECK(s.betas() == betas);
  check_betas(s, 30, [&](int i) { return static_cast<long double>(betas[i]); });
}

TEST_CASE("a config without the new keys reads, writes and schedules as before", "[cpu][train]") {
  for (int T : {1000, 300, 10}) {
    train::TrainConfig c;
    c.timesteps = T;
    const nlohmann::json j = c.to_json();
    for (const char* key : {"beta_start", "beta_end", "betas", "variance"}) CHECK_FALSE(j.contains(key));
    // DDPM's betas scaled by 1000 / T, capped at 0.999 (T = 10), bit for bit.
    CHECK(train::make_schedule(c).betas() == DiscreteSchedule::linear(T).betas());
    CHECK(train::make_schedule(from({{"schedule", "cosine"}, {"timesteps", T}})).betas() ==
          DiscreteSchedule::cosine(T).betas());
  }
  CHECK(train::ancestral_variance(train::TrainConfig{}) == diffusion::VarianceKind::beta_tilde);
  CHECK(train::ancestral_variance(from({{"variance", "beta"}})) == diffusion::VarianceKind::beta);
  CHECK(train::ancestral_variance(from({{"objective", "hybrid"}})) == diffusion::VarianceKind::learned);
}

TEST_CASE("the schedule keys survive the JSON text of a checkpoint bit for bit", "[cpu][train]") {
  std::vector<double> betas;
  for (int i = 0; i < 7; ++i) betas.push_back(1.0 / (3 + i) - 0.01 * i * std::numbers::pi / 7);
  const nlohmann::json configs[] = {
      {{"timesteps", 123}, {"beta_start", 1.0 / 3000}, {"beta_end", 0.1 / 7}, {"variance", "beta"}},
      {{"schedule", "scaled_linear"}, {"beta_start", 0.00085}, {"beta_end", 0.012}, {"objective", "v"}},
      {{"schedule", "custom"}, {"timesteps", 7}, {"betas", betas}, {"objective", "hybrid"}},
  };
  for (const nlohmann::json& j : configs) {
    const train::TrainConfig c = from(j);
    const train::TrainConfig back = from(nlohmann::json::parse(c.to_json().dump()));
    CHECK(back.to_json() == c.to_json());
    CHECK(back.beta_start == c.beta_start);
    CHECK(back.beta_end == c.beta_end);
    CHECK(back.betas == c.betas);
    CHECK(train::make_schedule(back).alphas_cumprod() == train::make_schedule(c).alphas_cumprod());
  }
}

TEST_CASE("the training config refuses betas it cannot use, naming the key", "[cpu][train]") {
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
  struct Case {
    nlohmann::json config;
    std::vector<std::string> words;
  };
  const Case cases[] = {
      {{{"beta_start", 0}}, {"key 'beta_start' = 0 is outside (0, 1)"}},
      {{{"beta_end", 1}}, {"key 'beta_end' = 1 is outside (0, 1)"}},
      {{{"beta_end", -0.5}}, {"key 'beta_end' = -0.5 is outside (0, 1)"}},
      {{{"beta_start", "small"}}, {"key 'beta_start' must be a number in (0, 1)"}},
      {{{"beta_start", nan}}, {"key 'beta_start'", "not a finite number"}},
      {{{"beta_end", inf}}, {"key 'beta_end'", "not a finite number"}},
      {{{"schedule", "custom"}, {"timesteps", 10}, {"betas", {0.1, 0.2, 0.3}}},
       {"key 'betas' has 3 entries but timesteps is 10"}},
      {{{"schedule", "custom"}, {"timesteps", 3}, {"betas", {0.1, 0.2, 1.5}}},
       {"key 'betas[2]' = 1.5 is outside (0, 1)"}},
      {{{"schedule", "custom"}, {"timesteps", 3}, {"betas", {0.1, nan, 0.3}}},
       {"key 'betas[1]'", "not a finite number"}},
      {{{"schedule", "custom"}, {"timesteps", 3}, {"betas", {0.1, "x", 0.3}}},
       {"key 'betas[1]' must be a number"}},
      {{{"schedule", "custom"}, {"timesteps", 3}, {"betas", 0.1}}, {"key 'betas' must be an array"}},
      {{{"schedule", "custom"}, {"timesteps", 3}}, {"schedule 'custom' needs key 'betas'"}},
      {{{"timesteps", 3}, {"betas", {0.1, 0.2, 0.3}}}, {"key 'betas' goes with schedule custom, not 'linear'"}},
      {{{"schedule", "cosine"}, {"beta_start", 0.001}}, {"key 'beta_start' goes with schedule linear or scaled_linear"}},
      {{{"schedule", "custom"}, {"timesteps", 2}, {"betas", {0.1, 0.2}}, {"beta_end", 0.2}},
       {"key 'beta_end' goes with schedule linear or scaled_linear", "custom lists its betas"}},
      {{{"objective", "vdm"}, {"beta_start", 0.001}}, {"beta_start / beta_end' with objective vdm"}},
      {{{"objective", "vdm"}, {"schedule", "scaled_linear"}}, {"schedule 'scaled_linear' with objective vdm"}},
      {{{"objective", "vdm"}, {"schedule", "custom"}}, {"schedule 'custom' with objective vdm"}},
      {{{"schedule", "scaled_linear"}, {"timesteps", 10}},
       {"beta_end defaults to DDPM's scaled by 1000 / timesteps, 2, outside (0, 1); set beta_end"}},
      {{{"timesteps", 10}, {"beta_start", 0.001}}, {"beta_end defaults to", "set beta_end"}},
      {{{"schedule", "squared"}},
       {"unknown schedule 'squared' (expected linear, scaled_linear, cosine, custom or learned)"}},
      {{{"variance", "large"}}, {"unknown variance 'large' (expected beta_tilde, beta or learned)"}},
      {{{"variance", "learned"}}, {"variance 'learned' comes with objective hybrid"}},
      {{{"variance", "beta"}, {"objective", "hybrid"}},
       {"variance 'beta' with objective hybrid, which learns its variance"}},
      {{{"variance", "beta"}, {"objective", "vdm"}}, {"variance 'beta' with objective vdm"}},
  };
  for (const Case& k : cases) {
    INFO(k.config.dump());
    try {
      from(k.config);
      FAIL("accepted");
    } catch (const Error& e) {
      for (const std::string& w : k.words) CHECK_THAT(e.message(), Catch::Contains(w));
      CHECK_THAT(e.message(), Catch::StartsWith("training config: "));
    }
  }
}
