// The classifier of `diffuse train-classifier`: exact resume, its config, the gradient that
// classifier guidance takes against finite differences, the feature distance against closed forms,
// and the CLI from training to guided samples to `eval --fd`.
#include <catch2/catch.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "autograd/tape.h"
#include "core/philox.h"
#include "core/safetensors.h"
#include "models/diffusion/schedule.h"
#include "models/train/classifier.h"
#include "tests/test_util.h"
#include "tests/tools/cli_util.h"
#include "tests/tools/train_util.h"

using namespace diffuse;
using namespace diffuse::test::train_util;
namespace fs = std::filesystem;

namespace {

train::ClassifierConfig tiny_classifier(const std::string& data, const std::string& out) {
  train::ClassifierConfig c;
  c.dataset = data;
  c.out_dir = out;
  c.device = "cpu";
  c.model = {{"base_channels", 8}, {"channel_mult", {1, 2}}, {"num_res_blocks", 1},
             {"attention_resolutions", {4}}, {"groups", 4}};
  c.batch = 4;
  c.steps = 7;
  c.warmup = 2;
  c.log_every = 2;
  c.checkpoint_every = 3;
  c.eval_count = 8;
  c.seed = 5;
  return c;
}

// sum_b log p(y_b | z_b) of the classifier at time input t, in double from its f32 logits.
double log_likelihood(train::LoadedClassifier& c, const Tensor& z, const Tensor& t, const std::vector<int64_t>& y) {
  ag::NoGrad ng;
  const Tensor logits = c.net->forward(ag::Var(z), t).value();
  const std::vector<float> l = logits.to_vector();
  const int64_t K = logits.size(1);
  double sum = 0;
  for (size_t b = 0; b < y.size(); ++b) {
    double m = -1e300, s = 0;
    for (int64_t k = 0; k < K; ++k) m = std::max(m, static_cast<double>(l[b * K + k]));
    for (int64_t k = 0; k < K; ++k) s += std::exp(l[b * K + k] - m);
    sum += l[b * K + y[b]] - m - std::log(s);
  }
  return sum;
}

std::vector<double> random_rows(int64_t n, int64_t dim, uint64_t seed) {
  std::vector<double> x(static_cast<size_t>(n * dim));
  for (size_t i = 0; i < x.size(); ++i) x[i] = philox_normal(seed, 0, i);
  // correlate the columns so the covariance is not diagonal
  for (int64_t r = 0; r < n; ++r)
    for (int64_t j = 1; j < dim; ++j) x[r * dim + j] += 0.7 * x[r * dim + j - 1];
  return x;
}

}  // namespace

TEST_CASE("a stopped and resumed classifier run equals the uninterrupted run bit for bit", "[cpu][tools]") {
  TempDir dir;
  const std::string data = make_idx(dir, 20);  // 5 batches of 4: the resume crosses an epoch boundary
  for (train::ClassifierNoise noise : {train::ClassifierNoise::diffusion, train::ClassifierNoise::none}) {
    INFO(enum_name(noise));
    const std::string tag(enum_name(noise));
    train::ClassifierConfig a = tiny_classifier(data, dir / ("a" + tag));
    a.noise = noise;
    const std::string ca = train::train_classifier(a, false);
    train::ClassifierConfig b = tiny_classifier(data, dir / ("b" + tag));
    b.noise = noise;
    b.steps = 4;
    train::train_classifier(b, false);
    b.steps = 7;
    const std::string cb = train::train_classifier(b, true);
    auto ta = require_identical_checkpoints(ca, cb);
    CHECK(ta.count("model.head.weight"));
    CHECK(ta.count("opt.step"));
    CHECK(ta["trainer.state"].to_vector_i64()[0] == 7);
    train::LoadedClassifier lc = train::load_classifier(ca, Device::cpu());
    CHECK(lc.step == 7);
    CHECK(lc.net->num_classes() == 10);
    CHECK((lc.schedule != nullptr) == (noise == train::ClassifierNoise::diffusion));
  }
}

TEST_CASE("the classifier config round-trips and refuses what it does not know", "[cpu][tools]") {
  train::ClassifierConfig c;
  c.noise = train::ClassifierNoise::none;
  c.schedule = train::ScheduleKind::cosine;
  c.steps = 123;
  c.model = {{"base_channels", 16}};
  const train::ClassifierConfig d = train::ClassifierConfig::from_json(c.to_json());
  CHECK(d.to_json() == c.to_json());
  CHECK(d.noise == train::ClassifierNoise::none);
  nlohmann::json j = c.to_json();
  j["lerning_rate"] = 1;
  CHECK_THROWS_WITH(train::ClassifierConfig::from_json(j), Catch::Contains("unknown key 'lerning_rate'"));
  j = c.to_json();
  j["noise"] = "gaussian";
  CHECK_THROWS_WITH(train::ClassifierConfig::from_json(j), Catch::Contains("diffusion or none"));
  j = c.to_json();
  j["schedule"] = "learned";
  CHECK_THROWS_WITH(train::ClassifierConfig::from_json(j), Catch::Contains("linear or cosine"));
  j = c.to_json();
  j["batch"] = 0;
  CHECK_THROWS_WITH(train::ClassifierConfig::from_json(j), Catch::Contains("--batch"));
  j = c.to_json();
  j["steps"] = "many";
  CHECK_THROWS_WITH(train::ClassifierConfig::from_json(j), Catch::Contains("'steps'"));
  j = c.to_json();
  j["device"] = "gpu";  // a device spec's spelling is checked where the config is read
  CHECK_THROWS_WITH(train::ClassifierConfig::from_json(j), Catch::Contains("unknown device 'gpu'"));
}

TEST_CASE("classifier guidance's gradient equals finite differences of log p(y | z_t)", "[cpu][tools]") {
  TempDir dir;
  train::ClassifierConfig cfg = tiny_classifier(make_idx(dir, 8), dir / "run");
  cfg.steps = 3;  // trained a little, so the logits are not the zero head's uniform ones
  cfg.lr = 3e-2;
  cfg.warmup = 0;
  auto c = std::make_shared<train::LoadedClassifier>(train::load_classifier(train::train_classifier(cfg, false), Device::cpu()));
  // A model on another schedule: the classifier's time comes from matching log-SNR.
  auto model = std::make_shared<diffusion::DiscreteSchedule>(diffusion::DiscreteSchedule::cosine(500));
  const int B = 3;
  const Tensor z = Tensor::randn({B, 8, 8, 1}, test::next_seed());
  const std::vector<float> times = {0.9f, 0.35f, 0.02f};
  const Tensor t = Tensor::from_vector(times, {B});
  const std::vector<int64_t> y = {2, 7, 0};
  const Tensor g = train::classifier_grad(c, model)(z, t, Tensor::from_vector_i64(y, {B}));
  REQUIRE(g.shape() == z.shape());
  // Its time input, checked against the log-SNR match it claims.
  std::vector<float> ti(B);
  for (int b = 0; b < B; ++b) {
    ti[b] = train::classifier_time(*c, *model, times[b]);
    const double tc = (ti[b] + 1) / c->schedule->T();
    CHECK(c->schedule->gamma(tc) == Approx(model->gamma(times[b])).epsilon(1e-6).margin(1e-6));
  }
  const Tensor tin = Tensor::from_vector(ti, {B});
  // Directional derivatives along random directions, central differences with h = 1e-2: the f32
  // network's rounding (~1e-6 relative in the log-likelihood, divided by 2h) and the O(h^2)
  // truncation both stay below 1e-3 of a derivative of order 1; 2% covers both with room.
  for (int dir_i = 0; dir_i < 3; ++dir_i) {
    const Tensor d = Tensor::randn(z.shape(), test::next_seed());
    const std::vector<float> zv = z.to_vector(), dv = d.to_vector(), gv = g.to_vector();
    const float h = 1e-2f;
    std::vector<float> zp(zv.size()), zm(zv.size());
    double analytic = 0;
    for (size_t i = 0; i < zv.size(); ++i) {
      zp[i] = zv[i] + h * dv[i];
      zm[i] = zv[i] - h * dv[i];
      analytic += static_cast<double>(gv[i]) * dv[i];
    }
    const double numeric = (log_likelihood(*c, Tensor::from_vector(zp, z.shape()), tin, y) -
                            log_likelihood(*c, Tensor::from_vector(zm, z.shape()), tin, y)) / (2 * h);
    INFO("direction " << dir_i << ": analytic " << analytic << ", numeric " << numeric);
    CHECK(std::fabs(analytic - numeric) <= 0.02 * std::fabs(numeric) + 1e-4);
    CHECK(std::fabs(analytic) > 1e-5);  // a gradient that vanished would pass the check above
  }
}

TEST_CASE("the feature distance matches its closed forms", "[cpu][tools]") {
  const int64_t n = 400, dim = 5;
  const std::vector<double> a = random_rows(n, dim, test::next_seed());
  CHECK(std::fabs(train::feature_distance(a, a, dim)) < 1e-8);
  // b = 2 a + 1: mu_b = 2 mu_a + 1, S_b = 4 S_a, so tr((S_a^1/2 S_b S_a^1/2)^1/2) = 2 tr(S_a) and
  // FD = |mu_a + 1|^2 + tr(S_a) + 4 tr(S_a) - 4 tr(S_a) = |mu_a + 1|^2 + tr(S_a).
  std::vector<double> b(a.size());
  for (size_t i = 0; i < a.size(); ++i) b[i] = 2 * a[i] + 1;
  std::vector<double> mu(dim, 0.0);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t j = 0; j < dim; ++j) mu[j] += a[r * dim + j] / n;
  double expected = 0;
  for (int64_t j = 0; j < dim; ++j) {
    double var = 0;
    for (int64_t r = 0; r < n; ++r) var += (a[r * dim + j] - mu[j]) * (a[r * dim + j] - mu[j]);
    expected += (mu[j] + 1) * (mu[j] + 1) + var / (n - 1);
  }
  CHECK(train::feature_distance(a, b, dim) == Approx(expected).epsilon(1e-9));
  // Symmetric, and unchanged by a rotation of the feature space (the 2-D rotation of columns 0, 1).
  const std::vector<double> c = random_rows(n, dim, test::next_seed());
  const double ac = train::feature_distance(a, c, dim);
  CHECK(train::feature_distance(c, a, dim) == Approx(ac).epsilon(1e-9));
  auto rotate = [&](std::vector<double> x) {
    const double cs = std::cos(0.6), sn = std::sin(0.6);
    for (int64_t r = 0; r < n; ++r) {
      const double u = x[r * dim], v = x[r * dim + 1];
      x[r * dim] = cs * u - sn * v;
      x[r * dim + 1] = sn * u + cs * v;
    }
    return x;
  };
  CHECK(train::feature_distance(rotate(a), rotate(c), dim) == Approx(ac).epsilon(1e-9));
  CHECK(ac > 0.01);
  CHECK_THROWS_WITH(train::feature_distance(a, std::vector<double>(3, 0.0), dim), Catch::Contains("ragged"));
}

TEST_CASE("CLI: train-classifier, guided sampling and eval --fd", "[cpu][tools]") {
  TempDir dir;
  const std::string data = test::write_idx_dataset(dir.path, 16, test::next_seed());
  const std::string model = dir / "model", guide = dir / "guide", judge = dir / "judge", imgs = dir / "imgs";
  const std::string log = dir / "log.txt";
  std::string out;
  auto clf_args = [&](const std::string& o, const std::string& noise) {
    return std::vector<std::string>{test::cli_path(), "train-classifier", "--model", test::kTinyModel, "--dataset",
                                    data, "--batch", "8", "--steps", "2", "--eval-count", "8", "--device", "cpu", "--noise", noise,
                                    "--out", o};
  };
  REQUIRE(test::run(test::train_args(data, model, 2, 0), log, &out) == 0);
  REQUIRE(test::run(clf_args(guide, "diffusion"), log, &out) == 0);
  CHECK(out.find("accuracy") != std::string::npos);
  REQUIRE(test::run(clf_args(judge, "none"), log, &out) == 0);
  const std::string ckpt = model + "/checkpoint.safetensors";
  // An unconditional model guided towards class 3; the images and their labels.csv for eval.
  REQUIRE(test::run({test::cli_path(), "sample", ckpt, "--classifier", guide + "/classifier.safetensors",
                     "--classifier-scale", "2", "--class", "3", "--steps", "3", "-n", "4", "--grid", "",
                     "--image-dir", imgs, "--device", "cpu"},
                    log, &out) == 0);
  CHECK(fs::exists(imgs + "/00003.png"));
  CHECK(test::slurp_text(imgs + "/labels.csv") == "file,class\n00000.png,3\n00001.png,3\n00002.png,3\n00003.png,3\n");
  REQUIRE(test::run({test::cli_path(), "eval", ckpt, "--fd", judge + "/classifier.safetensors", "--samples", imgs,
                     "--json", dir / "fd.json", "--device", "cpu"},
                    log, &out) == 0);
  CHECK(out.find("feature distance") != std::string::npos);
  CHECK(out.find("label accuracy") != std::string::npos);
  const auto j = nlohmann::json::parse(test::slurp_text(dir / "fd.json"));
  CHECK(std::isfinite(j["feature_distance"].get<double>()));
  CHECK(j["samples"] == 4);
  // eval --fd drawing its own samples from the checkpoint.
  REQUIRE(test::run({test::cli_path(), "eval", ckpt, "--fd", judge + "/classifier.safetensors", "--fd-count", "4",
                     "--fd-steps", "2", "--device", "cpu"},
                    log, &out) == 0);
  CHECK(out.find("feature distance") != std::string::npos);
  // Refusals, each one line for a person: a clean-image classifier cannot guide; a class the
  // classifier does not have; a diffusion checkpoint is not a classifier.
  CHECK(test::run({test::cli_path(), "sample", ckpt, "--classifier", judge + "/classifier.safetensors", "-n", "2",
                   "--steps", "2", "--grid", "", "--device", "cpu"},
                  log, &out) != 0);
  CHECK(out.find("noise-aware") != std::string::npos);
  CHECK(test::run({test::cli_path(), "sample", ckpt, "--classifier", guide + "/classifier.safetensors", "--class",
                   "10", "-n", "2", "--steps", "2", "--grid", "", "--device", "cpu"},
                  log, &out) != 0);
  // The classifier has as many classes as the random labels reach (max + 1: 9 or 10 of them).
  CHECK(out.find("--class 10: there are") != std::string::npos);
  CHECK(test::run({test::cli_path(), "eval", ckpt, "--fd", ckpt, "--device", "cpu"}, log, &out) != 0);
  CHECK(out.find("not a classifier checkpoint") != std::string::npos);
  CHECK(out.find(".cpp") == std::string::npos);
}
