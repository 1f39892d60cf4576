// diffusers scheduler configs onto diffuse's training config and back (models/interop/diffusers.h),
// key by key: what each beta schedule, trained_betas and variance_type become, the betas diffuse
// then samples with against diffusers' formulas, the export's round trip, and every refusal naming
// the file and key. Also the seeds of fuzz_diffusers (tests/corpus/diffusers): ok_* import, bad_*
// are refused. (tests/interop/diffusers_check.py runs the same against diffusers itself.)
#include <catch2/catch.hpp>

#include <unistd.h>

#include <cmath>
#include <filesystem>

#include "core/file_io.h"
#include "models/interop/diffusers.h"
#include "tests/fuzz/diffusers_input.h"

using namespace diffuse;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

train::TrainConfig import(const json& s, bool learn_sigma = false) {
  train::TrainConfig t;
  interop::schedule_from_diffusers(s, "scheduler_config.json", learn_sigma, t);
  return t;
}

// The export of t, imported again: the same noise process, prediction and variance.
void check_round_trip(const train::TrainConfig& t, bool learn_sigma = false) {
  const train::TrainConfig back = import(interop::diffusers_scheduler_from(t), learn_sigma);
  CHECK(back.schedule == t.schedule);
  CHECK(back.timesteps == t.timesteps);
  CHECK(back.objective == t.objective);
  CHECK(back.beta_start == t.beta_start);
  CHECK(back.beta_end == t.beta_end);
  CHECK(back.betas == t.betas);
  CHECK(back.variance == t.variance);
}

}  // namespace

TEST_CASE("diffusers: linear and scaled_linear betas over any range", "[cpu][interop]") {
  // DDPM's own: nothing beyond the schedule's name, as a diffuse-trained model's config.
  train::TrainConfig t = import({{"beta_schedule", "linear"}, {"beta_start", 1e-4}, {"beta_end", 0.02}});
  CHECK(t.schedule == train::ScheduleKind::linear);
  CHECK_FALSE(t.beta_start);
  CHECK_FALSE(t.beta_end);
  CHECK(t.variance == diffusion::VarianceKind::beta_tilde);
  CHECK(t.to_json() == train::TrainConfig{}.to_json());
  // DDPM's scaled to T = 500 is diffuse's default there too.
  CHECK_FALSE(import({{"num_train_timesteps", 500}, {"beta_start", 2e-4}, {"beta_end", 0.04}}).beta_start);
  // diffusers' defaults are not scaled with T: at T = 500 they are a range of their own.
  t = import({{"num_train_timesteps", 500}});
  CHECK(t.beta_start == 1e-4);
  CHECK(t.beta_end == 0.02);
  check_round_trip(t);
  t = import(
      {{"num_train_timesteps", 400}, {"beta_start", 2e-4}, {"beta_end", 0.03}, {"variance_type", "fixed_large"}});
  CHECK(t.schedule == train::ScheduleKind::linear);
  CHECK(t.beta_start == 2e-4);
  CHECK(t.beta_end == 0.03);
  CHECK(t.variance == diffusion::VarianceKind::beta);
  const std::vector<double> b = train::make_schedule(t).betas();
  // torch.linspace(beta_start, beta_end, T) (DDPMScheduler.__init__), in double here.
  for (int i : {0, 1, 200, 399}) CHECK(b[i] == Approx(2e-4 + (0.03 - 2e-4) * i / 399).epsilon(1e-14));
  check_round_trip(t);

  t = import({{"beta_schedule", "scaled_linear"}, {"beta_start", 0.00085}, {"beta_end", 0.012}});
  CHECK(t.schedule == train::ScheduleKind::scaled_linear);
  const std::vector<double> s = train::make_schedule(t).betas();
  // torch.linspace(beta_start ** 0.5, beta_end ** 0.5, T) ** 2.
  for (int i : {0, 1, 500, 999}) {
    const double r = std::sqrt(0.00085) + (std::sqrt(0.012) - std::sqrt(0.00085)) * i / 999;
    CHECK(s[i] == Approx(r * r).epsilon(1e-14));
  }
  check_round_trip(t);
}

TEST_CASE("diffusers: trained_betas, sigmoid and cosine", "[cpu][interop]") {
  std::vector<double> betas;
  for (int i = 0; i < 50; ++i) betas.push_back(5e-4 + 0.06 * (i / 49.0) * (i / 49.0));
  // trained_betas win over beta_schedule and its ends, as in diffusers.
  train::TrainConfig t = import({{"num_train_timesteps", 50}, {"trained_betas", betas}, {"beta_schedule", "unknown"},
                                 {"beta_end", 7}, {"prediction_type", "v_prediction"}});
  CHECK(t.schedule == train::ScheduleKind::custom);
  CHECK(t.betas == betas);
  CHECK(t.objective == train::Objective::v);
  CHECK(train::make_schedule(t).betas() == betas);
  check_round_trip(t);

  // GeoDiff's sigmoid: sigmoid(linspace(-6, 6, T)) (beta_end - beta_start) + beta_start.
  t = import({{"beta_schedule", "sigmoid"}, {"num_train_timesteps", 100}, {"beta_start", 1e-3}, {"beta_end", 0.05}});
  CHECK(t.schedule == train::ScheduleKind::custom);
  REQUIRE(t.betas.size() == 100);
  for (int i : {0, 33, 99})
    CHECK(t.betas[i] == Approx(1e-3 + (0.05 - 1e-3) / (1 + std::exp(-(-6.0 + 12.0 * i / 99)))).epsilon(1e-14));
  check_round_trip(t);

  t = import({{"beta_schedule", "squaredcos_cap_v2"}, {"prediction_type", "sample"}, {"variance_type", "fixed_large"}});
  CHECK(t.schedule == train::ScheduleKind::cosine);
  CHECK(t.objective == train::Objective::x0);
  check_round_trip(t);

  // A learned variance (2C output channels) and fixed_small_log (fixed_small through a log).
  t = import({{"variance_type", "learned_range"}}, true);
  CHECK(t.objective == train::Objective::hybrid);
  check_round_trip(t, true);
  CHECK(import({{"variance_type", "fixed_small_log"}}).variance == diffusion::VarianceKind::beta_tilde);
}

TEST_CASE("diffusers: export writes a list where diffusers has no such schedule", "[cpu][interop]") {
  // DDPM's default ends at T = 10 exceed 0.999 and diffuse caps them: only the betas say that.
  train::TrainConfig t;
  t.timesteps = 10;
  const json s = interop::diffusers_scheduler_from(t);
  REQUIRE(s["trained_betas"].is_array());
  CHECK(s["trained_betas"].get<std::vector<double>>() == diffusion::DiscreteSchedule::linear(10).betas());
  const train::TrainConfig back = import(s);
  CHECK(back.schedule == train::ScheduleKind::custom);
  CHECK(train::make_schedule(back).betas() == train::make_schedule(t).betas());
  // The variance goes back as diffusers names it.
  t.timesteps = 1000;
  t.variance = diffusion::VarianceKind::beta;
  CHECK(interop::diffusers_scheduler_from(t)["variance_type"] == "fixed_large");
  t.variance = diffusion::VarianceKind::beta_tilde;
  CHECK(interop::diffusers_scheduler_from(t)["variance_type"] == "fixed_small");
}

TEST_CASE("diffusers: scheduler refusals name the file and key", "[cpu][interop]") {
  std::vector<double> ten(10, 0.01);
  std::vector<double> zero = ten;
  zero[3] = 0;
  std::vector<json> mixed(ten.begin(), ten.end());
  mixed[5] = "x";
  const std::pair<json, std::vector<std::string>> cases[] = {
      {{{"beta_end", 1.0}}, {"beta_end = 1.0", "(0, 1)"}},
      {{{"beta_start", -1e-4}}, {"beta_start = -0.0001", "(0, 1)"}},
      {{{"beta_schedule", "scaled_linear"}, {"beta_end", 1.5}}, {"beta_end = 1.5"}},
      {{{"beta_schedule", "sigmoid"}, {"beta_start", 0}}, {"beta_start = 0"}},
      {{{"beta_start", "small"}}, {"beta_start / beta_end", "must be numbers"}},
      {{{"num_train_timesteps", 10}, {"trained_betas", std::vector<double>(9, 0.01)}},
       {"trained_betas", "one beta per step, and num_train_timesteps is 10"}},
      {{{"num_train_timesteps", 10}, {"trained_betas", zero}}, {"trained_betas[3] = 0", "(0, 1)"}},
      {{{"num_train_timesteps", 10}, {"trained_betas", mixed}}, {"trained_betas[5] = \"x\""}},
      {{{"trained_betas", 0.01}}, {"trained_betas", "must be a list"}},
      {{{"beta_schedule", "exponential"}}, {"beta_schedule = \"exponential\"", "'scaled_linear'"}},
      {{{"rescale_betas_zero_snr", true}}, {"rescale_betas_zero_snr = true", "alpha_bar 0"}},
      {{{"variance_type", "fixed_large_log"}}, {"variance_type = \"fixed_large_log\""}},
      {{{"variance_type", "learned"}}, {"variance_type = \"learned\"", "no variance channels"}},
      {{{"num_train_timesteps", 1}}, {"num_train_timesteps = 1"}},
  };
  for (const auto& [s, words] : cases) {
    INFO(s.dump());
    try {
      import(s);
      FAIL("accepted");
    } catch (const Error& e) {
      CHECK_THAT(e.message(), Catch::StartsWith("scheduler_config.json: cannot import "));
      for (const std::string& w : words) CHECK_THAT(e.message(), Catch::Contains(w));
    }
  }
}

namespace {

// tests/corpus in the source tree, found upward from the executable or the working directory (or
// DIFFUSE_SOURCE_DIR), as tests/models/corpus_test.cpp finds it.
fs::path corpus_dir() {
  std::vector<fs::path> starts;
  if (const char* e = std::getenv("DIFFUSE_SOURCE_DIR")) starts.emplace_back(e);
  std::error_code ec;
  starts.push_back(fs::read_symlink("/proc/self/exe", ec).parent_path());
  starts.push_back(fs::current_path(ec));
  for (fs::path p : starts)
    for (; !p.empty(); p = p.parent_path()) {
      if (fs::exists(p / "tests/corpus/make_corpus.py", ec)) return p / "tests/corpus";
      if (p == p.parent_path()) break;
    }
  return {};
}

}  // namespace

TEST_CASE("corpus: diffusers folders (the seeds of fuzz_diffusers)", "[cpu][interop][corpus]") {
  const fs::path root = corpus_dir();
  INFO("tests/corpus must be found (run from the build folder of a checkout, or set DIFFUSE_SOURCE_DIR)");
  REQUIRE(!root.empty());
  const fs::path dir = fs::temp_directory_path() / ("diffusers_test." + std::to_string(::getpid()));
  int ok = 0, bad = 0;
  for (const auto& e : fs::directory_iterator(root / "diffusers")) {
    const std::string name = e.path().filename().string();
    INFO(e.path().string());
    const std::vector<uint8_t> b = read_file(e.path().string());
    fuzz::write_diffusers_input(std::string_view(reinterpret_cast<const char*>(b.data()), b.size()), dir);
    if (name.rfind("ok_", 0) == 0) {
      CHECK_NOTHROW(interop::read_diffusers(dir.string()));
      ++ok;
    } else if (name.rfind("bad_", 0) == 0) {
      CHECK_THROWS_AS(interop::read_diffusers(dir.string()), Error);
      ++bad;
    }
  }
  fs::remove_all(dir);
  CHECK(ok >= 1);
  CHECK(bad >= 1);
}
