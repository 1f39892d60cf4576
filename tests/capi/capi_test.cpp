// tests/capi/capi_test.cpp: the C API (include/diffuse/diffuse.h) against the C++ API it wraps,
// and its error contract: every bad call returns a status with a message naming what was wrong,
// and nothing throws or aborts.
//
// Equality is exact where both sides run the same sampler code on the same inputs with a
// denoiser that does the same arithmetic: the C API adds no computation of its own, so any
// difference at all would be a bug in the wrapper (a wrong option, seed, shape or label).
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "autograd/tape.h"
#include "core/image_io.h"
#include "core/safetensors.h"
#include "diffuse/diffuse.h"
#include "models/diffusion/sampler.h"
#include "models/train/trainer.h"
#include "tests/diffusion/oracle.h"
#include "tests/test_util.h"
#include "tests/tools/train_util.h"

using namespace diffuse;
using namespace diffuse::diffusion;
using diffuse::test::Mixture;
using diffuse::test::Oracle;

namespace fs = std::filesystem;

namespace {

// The Gaussian-mixture oracle of tests/diffusion/oracle.h written as a C callback: alpha and
// sigma come from the C API's schedule, which evaluates the same Schedule::alpha/sigma the C++
// oracle uses, so the outputs are the same floats.
struct CallbackOracle {
  CallbackOracle(const diffuse_schedule* s, Mixture m, diffuse_prediction p = DIFFUSE_PREDICT_EPS)
      : schedule(s), mix(std::move(m)), pred(p) {}
  const diffuse_schedule* schedule;
  Mixture mix;
  diffuse_prediction pred;
  int calls = 0;
  std::vector<int64_t> rows_seen;
  std::vector<int64_t> labels_seen;  // every label handed over, in call order
  int fail_with = 0;                 // non-zero: return it on the first call
  bool write_half = false;           // leave the second half of out unwritten
  bool throw_exception = false;
};

int oracle_callback(void* user_data, const float* x, const float* t, const int64_t* labels, int64_t n, float* out) {
  auto* o = static_cast<CallbackOracle*>(user_data);
  ++o->calls;
  o->rows_seen.push_back(n);
  if (labels) o->labels_seen.insert(o->labels_seen.end(), labels, labels + n);
  if (o->fail_with) return o->fail_with;
  if (o->throw_exception) throw std::runtime_error("from the callback");
  const int d = o->mix.D();
  std::vector<double> x0(d);
  for (int64_t b = 0; b < n; ++b) {
    double a = 0, s = 0;
    if (diffuse_schedule_alpha_sigma(o->schedule, t[b], &a, &s) != DIFFUSE_OK) return -1;
    o->mix.posterior_mean(x + b * d, a, s, x0.data());
    for (int j = 0; j < d; ++j) {
      if (o->write_half && b * d + j >= n * d / 2) continue;
      const double z0 = x[b * d + j];
      const double eps = (z0 - a * x0[j]) / s;
      const double v = o->pred == DIFFUSE_PREDICT_EPS ? eps : o->pred == DIFFUSE_PREDICT_X0 ? x0[j] : a * eps - s * x0[j];
      out[b * d + j] = static_cast<float>(v);
    }
  }
  return 0;
}

Prediction to_cpp(diffuse_prediction p) {
  return p == DIFFUSE_PREDICT_EPS ? Prediction::eps : p == DIFFUSE_PREDICT_X0 ? Prediction::x0 : Prediction::v;
}

std::string last_error() { return diffuse_last_error(); }

// RAII owners for the test's handles.
struct Handles {
  diffuse_schedule* schedule = nullptr;
  diffuse_sampler* sampler = nullptr;
  diffuse_model* model = nullptr;
  ~Handles() {
    diffuse_schedule_free(schedule);
    diffuse_sampler_free(sampler);
    diffuse_model_free(model);
  }
};

double max_abs_diff(const std::vector<float>& a, const Tensor& b) {
  return test::compare(a, b.to_vector()).max_abs;
}

// A small class-conditional UNet with random weights, written as `diffuse train` writes a
// checkpoint: EMA weights under "ema.", live ones under "model.", the configs in the metadata.
// super_res: a super-resolution model of the same size (conditioned on a 4x4 image), which the C
// API refuses.
std::string write_tiny_checkpoint(const fs::path& dir, const std::string& objective, uint64_t seed,
                                  bool super_res = false) {
  train::TrainConfig cfg;
  cfg.objective = parse_enum<train::Objective>(objective, "objective");
  cfg.timesteps = 100;
  cfg.schedule = train::ScheduleKind::cosine;
  cfg.class_cond = true;
  nn::UNetConfig uc;
  uc.in_channels = uc.out_channels = 1;
  uc.image_size = 8;
  uc.base_channels = 8;
  uc.channel_mult = {1, 2};
  uc.num_res_blocks = 1;
  uc.attention_resolutions = {4};
  uc.groups = 4;
  uc.num_classes = 3;
  if (super_res) {
    cfg.super_res = uc.low_res_size = 4;
    uc.low_res_channels = 1;
  }
  nn::UNet unet(uc, seed);
  std::vector<std::pair<std::string, Tensor>> tensors;
  uint64_t k = 0;
  for (auto& [name, var] : unet.named_parameters()) {
    // Random everywhere (out_conv starts at zero, which would make every prediction 0), small
    // enough that activations stay O(1) through the layers.
    const Shape shape = var.value().shape();  // clang before 16 cannot capture a structured binding
    auto weights = [&](uint64_t offset) {
      Tensor w = Tensor::randn(shape, seed, offset);
      float* p = w.data<float>();
      for (int64_t i = 0; i < w.numel(); ++i) p[i] *= 0.2f;
      return w;
    };
    ++k;
    tensors.emplace_back("ema." + name, weights(k));
    tensors.emplace_back("model." + name, weights(1000 + k));
  }
  std::map<std::string, std::string> meta{{"format", "diffuse-checkpoint-1"},
                                          {"config", cfg.to_json().dump()},
                                          {"unet", uc.to_json().dump()},
                                          {"step", "7"},
                                          {"num_classes", "3"}};
  fs::create_directories(dir);
  std::string path = (dir / ("tiny_" + objective + (super_res ? "_sr" : "") + ".safetensors")).string();
  write_safetensors_atomic(path, tensors, meta);
  return path;
}

fs::path temp_dir(const char* name) {
  fs::path d = fs::temp_directory_path() / ("diffuse_capi_test_" + std::to_string(test::run_seed() % 100000) + "_" + name);
  fs::create_directories(d);
  return d;
}

}  // namespace

TEST_CASE("C API: a callback denoiser gives exactly the C++ sampler's samples", "[cpu][capi]") {
  Mixture mix{{0.6, 0.4}, {{-0.5, 0.3, 0.1}, {0.4, -0.2, 0.6}}, {{0.2, 0.3, 0.1}, {0.25, 0.15, 0.2}}};
  struct Case {
    const char* sampler;
    const char* schedule;
    int64_t T;
    diffuse_prediction pred;
    int steps;
    const char* spacing;
    double eta;
  };
  const Case cases[] = {
      {"ddpm", "linear", 1000, DIFFUSE_PREDICT_EPS, 40, "linspace", 0},
      {"ddim", "cosine", 1000, DIFFUSE_PREDICT_V, 25, "trailing", 0},
      {"ddim", "linear", 500, DIFFUSE_PREDICT_X0, 20, "leading", 0.7},
      {"dpm++2m", "linear", 1000, DIFFUSE_PREDICT_EPS, 15, "logsnr", 0},
      {"euler", "cosine", 1000, DIFFUSE_PREDICT_EPS, 20, "linspace", 0},
      {"heun", "linear_logsnr", 0, DIFFUSE_PREDICT_X0, 12, "linspace", 0},
      {"vdm", "linear_logsnr", 0, DIFFUSE_PREDICT_EPS, 30, "linspace", 0},
      {"pc", "cosine", 1000, DIFFUSE_PREDICT_V, 12, "linspace", 0},
      {"langevin", "linear", 1000, DIFFUSE_PREDICT_EPS, 8, "logsnr", 0},
  };
  const int64_t B = 48, D = 3;
  for (const Case& c : cases) {
    for (int clip : {0, 1}) {
      INFO(c.sampler << " on " << c.schedule << ", prediction " << c.pred << ", clip " << clip << ", seed "
                     << test::run_seed());
      Handles h;
      REQUIRE(diffuse_schedule_create(c.schedule, c.T, &h.schedule) == DIFFUSE_OK);
      REQUIRE(diffuse_sampler_create(c.sampler, &h.sampler) == DIFFUSE_OK);
      REQUIRE(diffuse_sampler_set_steps(h.sampler, c.steps) == DIFFUSE_OK);
      REQUIRE(diffuse_sampler_set_prediction(h.sampler, c.pred) == DIFFUSE_OK);
      REQUIRE(diffuse_sampler_set_spacing(h.sampler, c.spacing) == DIFFUSE_OK);
      REQUIRE(diffuse_sampler_set_clip(h.sampler, clip) == DIFFUSE_OK);
      if (std::strcmp(c.sampler, "ddim") == 0) REQUIRE(diffuse_sampler_set_eta(h.sampler, c.eta) == DIFFUSE_OK);
      // The Langevin samplers' settings reach the sampler: pc with 2 corrector steps of r = 0.25,
      // langevin with 3 steps per level of r = 0.3.
      const bool is_pc = std::strcmp(c.sampler, "pc") == 0, is_ald = std::strcmp(c.sampler, "langevin") == 0;
      if (is_pc) REQUIRE(diffuse_sampler_set_corrector(h.sampler, 2, 0.25) == DIFFUSE_OK);
      if (is_ald) REQUIRE(diffuse_sampler_set_corrector(h.sampler, 3, 0.3) == DIFFUSE_OK);
      const uint64_t seed = test::next_seed();
      CallbackOracle co{h.schedule, mix, c.pred};
      std::vector<float> got(B * D, std::nanf(""));
      REQUIRE(diffuse_sample_callback(h.sampler, h.schedule, oracle_callback, &co, B, 1, 1, D, seed, nullptr, nullptr,
                                      got.data(), got.size()) == DIFFUSE_OK);
      CHECK(last_error().empty());

      std::unique_ptr<Schedule> sch;
      if (c.T > 0)
        sch = std::make_unique<DiscreteSchedule>(std::strcmp(c.schedule, "linear") == 0 ? DiscreteSchedule::linear(c.T)
                                                                                       : DiscreteSchedule::cosine(c.T));
      else
        sch = std::make_unique<LinearLogSNR>();
      Oracle oracle{sch.get(), mix, to_cpp(c.pred)};
      SamplerOptions o;
      o.shape = Shape{B, 1, 1, D};
      o.seed = seed;
      o.steps = c.steps;
      o.prediction = to_cpp(c.pred);
      o.clip_x0 = clip != 0;
      o.eta = c.eta;
      if (is_pc || is_ald) {
        o.corrector_steps = is_pc ? 2 : 3;
        o.snr = is_pc ? 0.25 : 0.3;
      }
      o.spacing = std::strcmp(c.spacing, "logsnr") == 0     ? Spacing::logsnr
                  : std::strcmp(c.spacing, "leading") == 0  ? Spacing::leading
                  : std::strcmp(c.spacing, "trailing") == 0 ? Spacing::trailing
                                                            : Spacing::linspace;
      Tensor want = sample(parse_sampler(c.sampler), *sch, oracle.fn(), o);
      CHECK(max_abs_diff(got, want) == 0);
      CHECK(co.calls == oracle.calls);
      CHECK(co.labels_seen.empty());
    }
  }
}

TEST_CASE("C API: batches draw the CLI's per-batch seeds; z_T and labels reach the sampler", "[cpu][capi]") {
  Mixture g = Mixture::gaussian({0.3, -0.4}, {0.5, 0.2});
  Handles h;
  REQUIRE(diffuse_schedule_create("linear", 1000, &h.schedule) == DIFFUSE_OK);
  REQUIRE(diffuse_sampler_create("ddim", &h.sampler) == DIFFUSE_OK);
  REQUIRE(diffuse_sampler_set_steps(h.sampler, 10) == DIFFUSE_OK);
  REQUIRE(diffuse_sampler_set_batch(h.sampler, 4) == DIFFUSE_OK);
  REQUIRE(diffuse_sampler_set_clip(h.sampler, 0) == DIFFUSE_OK);
  const int64_t n = 10, D = 2;
  const uint64_t seed = test::next_seed();
  std::vector<int64_t> labels = {4, 1, 2, 3, 0, 1, 2, 3, 9, 8};
  CallbackOracle co{h.schedule, g};
  std::vector<float> got(n * D);
  REQUIRE(diffuse_sample_callback(h.sampler, h.schedule, oracle_callback, &co, n, 1, 1, D, seed, labels.data(), nullptr,
                                  got.data(), got.size()) == DIFFUSE_OK);
  CHECK(co.rows_seen.front() == 4);
  CHECK(co.rows_seen.back() == 2);
  CHECK(co.labels_seen.size() == static_cast<size_t>(n * 10));  // every step of every batch
  CHECK(std::vector<int64_t>(co.labels_seen.begin(), co.labels_seen.begin() + 4) ==
        std::vector<int64_t>(labels.begin(), labels.begin() + 4));

  DiscreteSchedule lin = DiscreteSchedule::linear(1000);
  Oracle oracle{&lin, g};
  for (int64_t start = 0; start < n; start += 4) {
    const int64_t rows = std::min<int64_t>(4, n - start);
    SamplerOptions o;
    o.shape = Shape{rows, 1, 1, D};
    o.seed = seed + static_cast<uint64_t>(start) * 0x9E3779B97F4A7C15ull;  // tools/cmd_sample.cpp
    o.steps = 10;
    Tensor want = sample_ddim(lin, oracle.fn(), o);
    std::vector<float> part(got.begin() + start * D, got.begin() + (start + rows) * D);
    CHECK(test::compare(part, want.to_vector()).max_abs == 0);
  }

  // A given start latent replaces the seed's.
  std::vector<float> zT = Tensor::randn({n, D}, test::next_seed()).to_vector();
  std::vector<float> from_z(n * D), again(n * D);
  REQUIRE(diffuse_sample_callback(h.sampler, h.schedule, oracle_callback, &co, n, 1, 1, D, 1, nullptr, zT.data(),
                                  from_z.data(), from_z.size()) == DIFFUSE_OK);
  REQUIRE(diffuse_sample_callback(h.sampler, h.schedule, oracle_callback, &co, n, 1, 1, D, 2, nullptr, zT.data(),
                                  again.data(), again.size()) == DIFFUSE_OK);
  CHECK(from_z == again);
  SamplerOptions o;
  o.shape = Shape{4, 1, 1, D};
  o.steps = 10;
  o.z_T = Tensor::from_vector(std::vector<float>(zT.begin(), zT.begin() + 4 * D), {4, 1, 1, D});
  CHECK(test::compare(std::vector<float>(from_z.begin(), from_z.begin() + 4 * D), sample_ddim(lin, oracle.fn(), o).to_vector())
            .max_abs == 0);
}

TEST_CASE("C API: guidance hands the callback [labels; null labels] and matches the C++ sampler", "[cpu][capi]") {
  Mixture g = Mixture::gaussian({0.2, 0.1}, {0.3, 0.4});
  Handles h;
  REQUIRE(diffuse_schedule_create("cosine", 1000, &h.schedule) == DIFFUSE_OK);
  REQUIRE(diffuse_sampler_create("dpm++2m", &h.sampler) == DIFFUSE_OK);
  REQUIRE(diffuse_sampler_set_steps(h.sampler, 8) == DIFFUSE_OK);
  REQUIRE(diffuse_sampler_set_spacing(h.sampler, "logsnr") == DIFFUSE_OK);
  REQUIRE(diffuse_sampler_set_guidance(h.sampler, 1.5, 10) == DIFFUSE_OK);
  const int64_t n = 3, D = 2;
  std::vector<int64_t> labels = {0, 5, 2};
  CallbackOracle co{h.schedule, g};
  std::vector<float> got(n * D);
  const uint64_t seed = test::next_seed();
  REQUIRE(diffuse_sample_callback(h.sampler, h.schedule, oracle_callback, &co, n, 1, 1, D, seed, labels.data(), nullptr,
                                  got.data(), got.size()) == DIFFUSE_OK);
  REQUIRE(co.rows_seen.front() == 2 * n);
  CHECK(std::vector<int64_t>(co.labels_seen.begin(), co.labels_seen.begin() + 6) ==
        std::vector<int64_t>{0, 5, 2, 10, 10, 10});

  DiscreteSchedule cos = DiscreteSchedule::cosine(1000);
  Oracle oracle{&cos, g};
  SamplerOptions o;
  o.shape = Shape{n, 1, 1, D};
  o.seed = seed;
  o.steps = 8;
  o.spacing = Spacing::logsnr;
  o.clip_x0 = true;
  o.labels = Tensor::from_vector_i64(labels, {n});
  o.guidance.cfg_scale = 1.5;
  o.guidance.null_labels = Tensor::full({n}, 10, DType::i64);
  CHECK(max_abs_diff(got, sample_dpmpp_2m(cos, oracle.fn(), o)) == 0);
}

TEST_CASE("C API: DDIM inversion through a callback is the C++ ddim_invert", "[cpu][capi]") {
  Mixture g = Mixture::gaussian({0.1, -0.3, 0.5}, {0.4, 0.3, 0.2});
  Handles h;
  REQUIRE(diffuse_schedule_create("cosine", 1000, &h.schedule) == DIFFUSE_OK);
  REQUIRE(diffuse_sampler_create("ddim", &h.sampler) == DIFFUSE_OK);
  REQUIRE(diffuse_sampler_set_steps(h.sampler, 500) == DIFFUSE_OK);
  REQUIRE(diffuse_sampler_set_clip(h.sampler, 0) == DIFFUSE_OK);
  const int64_t n = 5, D = 3;
  Tensor x0 = g.sample(n, test::next_seed());
  std::vector<float> images = x0.to_vector(), latents(n * D), back(n * D);
  CallbackOracle co{h.schedule, g};
  REQUIRE(diffuse_ddim_invert_callback(h.sampler, h.schedule, oracle_callback, &co, n, 1, 1, D, images.data(), nullptr,
                                       latents.data(), latents.size()) == DIFFUSE_OK);
  DiscreteSchedule cos = DiscreteSchedule::cosine(1000);
  Oracle oracle{&cos, g};
  SamplerOptions o;
  o.steps = 500;
  CHECK(max_abs_diff(latents, ddim_invert(cos, oracle.fn(), x0.reshape({n, 1, 1, D}), o)) == 0);
  // And back through z_T: inversion and sampling integrate the same probability-flow ODE in
  // opposite directions, each with an O(1/N) error; 2e-2 at 500 steps as in
  // tests/diffusion/sampler_test.cpp.
  REQUIRE(diffuse_sample_callback(h.sampler, h.schedule, oracle_callback, &co, n, 1, 1, D, 0, nullptr, latents.data(),
                                  back.data(), back.size()) == DIFFUSE_OK);
  CHECK(test::compare(back, images).max_abs < 2e-2);
}

TEST_CASE("C API: a loaded checkpoint samples and inverts exactly as the C++ path", "[cpu][capi]") {
  const fs::path dir = temp_dir("model");
  const std::string path = write_tiny_checkpoint(dir, "v", test::next_seed());
  Handles h;
  REQUIRE(diffuse_model_load(path.c_str(), "cpu", 0, &h.model) == DIFFUSE_OK);
  int64_t H = 0, W = 0, C = 0, K = 0, T = 0;
  diffuse_prediction pred = DIFFUSE_PREDICT_EPS;
  const char* dev = nullptr;
  REQUIRE(diffuse_model_image_shape(h.model, &H, &W, &C) == DIFFUSE_OK);
  REQUIRE(diffuse_model_num_classes(h.model, &K) == DIFFUSE_OK);
  REQUIRE(diffuse_model_prediction(h.model, &pred) == DIFFUSE_OK);
  REQUIRE(diffuse_model_device(h.model, &dev) == DIFFUSE_OK);
  CHECK((H == 8 && W == 8 && C == 1 && K == 3));
  CHECK(pred == DIFFUSE_PREDICT_V);
  CHECK(std::string(dev) == "cpu");
  REQUIRE(diffuse_schedule_from_model(h.model, &h.schedule) == DIFFUSE_OK);
  REQUIRE(diffuse_schedule_timesteps(h.schedule, &T) == DIFFUSE_OK);
  CHECK(T == 100);

  REQUIRE(diffuse_sampler_create("ddim", &h.sampler) == DIFFUSE_OK);
  REQUIRE(diffuse_sampler_set_steps(h.sampler, 6) == DIFFUSE_OK);
  REQUIRE(diffuse_sampler_set_guidance(h.sampler, 2.0, -1) == DIFFUSE_OK);
  const int64_t n = 5;
  const uint64_t seed = test::next_seed();
  std::vector<float> got(n * H * W * C), with_own_schedule(n * H * W * C);
  REQUIRE(diffuse_sample(h.sampler, nullptr, h.model, n, seed, nullptr, nullptr, got.data(), got.size()) == DIFFUSE_OK);
  REQUIRE(diffuse_sample(h.sampler, h.schedule, h.model, n, seed, nullptr, nullptr, with_own_schedule.data(),
                         with_own_schedule.size()) == DIFFUSE_OK);
  CHECK(got == with_own_schedule);

  // The C++ path of `diffuse sample --class -1 --guidance 2 --steps 6`.
  train::LoadedModel m = train::load_checkpoint(path, Device::cpu());
  DiscreteSchedule sch = train::make_schedule(m.config);
  Denoiser f = train::make_denoiser(m.unet, m.config.timesteps, Device::cpu());
  ag::NoGrad ng;
  SamplerOptions o;
  o.shape = Shape{n, H, W, C};
  o.seed = seed;
  o.steps = 6;
  o.prediction = Prediction::v;
  o.clip_x0 = true;
  o.labels = Tensor::from_vector_i64({0, 1, 2, 0, 1}, {n});
  o.guidance.cfg_scale = 2.0;
  o.guidance.null_labels = Tensor::full({n}, 3, DType::i64);
  Tensor want = sample_ddim(sch, f, o);
  CHECK(max_abs_diff(got, want) == 0);

  // Inversion with explicit labels, no guidance.
  REQUIRE(diffuse_sampler_set_guidance(h.sampler, 0, -1) == DIFFUSE_OK);
  std::vector<int64_t> labels = {2, 2, 0, 1, 3};  // 3: the null label, an unconditional row
  std::vector<float> latents(got.size());
  REQUIRE(diffuse_ddim_invert(h.sampler, nullptr, h.model, n, got.data(), labels.data(), latents.data(),
                              latents.size()) == DIFFUSE_OK);
  SamplerOptions io;
  io.steps = 6;
  io.prediction = Prediction::v;
  io.clip_x0 = true;
  io.labels = Tensor::from_vector_i64(labels, {n});
  CHECK(max_abs_diff(latents, ddim_invert(sch, f, Tensor::from_vector(got, {n, H, W, C}), io)) == 0);

  // The live weights are another model.
  diffuse_model* live = nullptr;
  REQUIRE(diffuse_model_load(path.c_str(), "cpu", DIFFUSE_LOAD_LIVE_WEIGHTS, &live) == DIFFUSE_OK);
  std::vector<float> other(got.size());
  REQUIRE(diffuse_sampler_set_guidance(h.sampler, 2.0, -1) == DIFFUSE_OK);
  REQUIRE(diffuse_sample(h.sampler, nullptr, live, n, seed, nullptr, nullptr, other.data(), other.size()) == DIFFUSE_OK);
  CHECK(other != got);
  diffuse_model_free(live);

  // Two threads on one model: serialized inside, each gets the single-threaded answer.
  std::vector<float> t1(got.size()), t2(got.size());
  diffuse_status s1 = DIFFUSE_ERR_INTERNAL, s2 = DIFFUSE_ERR_INTERNAL;
  std::thread a([&] { s1 = diffuse_sample(h.sampler, nullptr, h.model, n, seed, nullptr, nullptr, t1.data(), t1.size()); });
  std::thread b([&] { s2 = diffuse_sample(h.sampler, nullptr, h.model, n, seed, nullptr, nullptr, t2.data(), t2.size()); });
  a.join();
  b.join();
  CHECK(s1 == DIFFUSE_OK);
  CHECK(s2 == DIFFUSE_OK);
  CHECK(t1 == got);
  CHECK(t2 == got);

  // The PNG grid is the CLI's (write_png_grid with the same scale and border).
  const std::string png = (dir / "grid.png").string();
  REQUIRE(diffuse_write_png_grid(png.c_str(), got.data(), n, H, W, C, 2) == DIFFUSE_OK);
  Image8 img = read_image_u8(png);
  Image8 ref = make_grid(Tensor::from_vector(got, {n, H, W, C}), 2);
  CHECK(img.pixels == ref.pixels);
  fs::remove_all(dir);
}

namespace {

// Runs `call`, expects `want` and a message containing every one of `words`.
template <class F>
void expect_error(F&& call, diffuse_status want, std::initializer_list<const char*> words) {
  const diffuse_status got = call();
  const std::string msg = diffuse_last_error();
  INFO("status " << diffuse_status_name(got) << ", message: " << msg);
  CHECK(got == want);
  for (const char* w : words) CHECK(msg.find(w) != std::string::npos);
}

}  // namespace

TEST_CASE("C API: a vdm checkpoint samples on its learned schedule as the C++ path", "[cpu][capi]") {
  namespace tu = diffuse::test::train_util;
  tu::TempDir dir;
  train::TrainConfig c = tu::tiny_config(tu::make_idx(dir, 8), dir / "run");
  c.class_cond = false;
  c.objective = train::Objective::vdm;
  c.schedule = train::ScheduleKind::learned;
  c.steps = 2;
  const std::string path = train::train(c, false);
  Handles h;
  REQUIRE(diffuse_model_load(path.c_str(), "cpu", 0, &h.model) == DIFFUSE_OK);
  REQUIRE(diffuse_schedule_from_model(h.model, &h.schedule) == DIFFUSE_OK);
  int64_t T = -1;
  REQUIRE(diffuse_schedule_timesteps(h.schedule, &T) == DIFFUSE_OK);
  CHECK(T == 0);  // continuous
  train::LoadedModel m = train::load_checkpoint(path, Device::cpu());
  const std::shared_ptr<const Schedule> sch = train::model_schedule(m);
  REQUIRE(sch->name() == "learned");
  for (double t : {0.0, 0.3, 1.0}) {
    double a = 0, sg = 0;
    REQUIRE(diffuse_schedule_alpha_sigma(h.schedule, t, &a, &sg) == DIFFUSE_OK);
    CHECK(a == sch->alpha(t));
    CHECK(sg == sch->sigma(t));
  }
  REQUIRE(diffuse_sampler_create("vdm", &h.sampler) == DIFFUSE_OK);
  REQUIRE(diffuse_sampler_set_steps(h.sampler, 4) == DIFFUSE_OK);
  const int64_t n = 3;
  const uint64_t seed = test::next_seed();
  std::vector<float> got(n * 8 * 8);
  REQUIRE(diffuse_sample(h.sampler, nullptr, h.model, n, seed, nullptr, nullptr, got.data(), got.size()) == DIFFUSE_OK);
  // The C++ path of `diffuse sample --sampler vdm --steps 4`.
  Denoiser f = train::make_denoiser(m.unet, m.config.timesteps, Device::cpu());
  ag::NoGrad ng;
  SamplerOptions o;
  o.shape = Shape{n, 8, 8, 1};
  o.seed = seed;
  o.steps = 4;
  o.prediction = Prediction::eps;
  o.clip_x0 = true;
  CHECK(max_abs_diff(got, sample(SamplerKind::vdm, *sch, f, o)) == 0);
}

TEST_CASE("C API: bad calls return a status and a message that says what was wrong", "[cpu][capi]") {
  const fs::path dir = temp_dir("errors");
  const std::string ckpt = write_tiny_checkpoint(dir, "eps", test::next_seed());
  Handles h;
  REQUIRE(diffuse_model_load(ckpt.c_str(), "cpu", 0, &h.model) == DIFFUSE_OK);
  REQUIRE(diffuse_schedule_create("linear", 1000, &h.schedule) == DIFFUSE_OK);
  REQUIRE(diffuse_sampler_create("ddim", &h.sampler) == DIFFUSE_OK);
  REQUIRE(diffuse_sampler_set_steps(h.sampler, 3) == DIFFUSE_OK);
  Mixture g = Mixture::gaussian({0.0, 0.0}, {1.0, 1.0});
  CallbackOracle co{h.schedule, g};
  std::vector<float> out(1000);
  const size_t len = out.size();
  auto cb = [&](CallbackOracle* o, int64_t n = 4) {
    return diffuse_sample_callback(h.sampler, h.schedule, oracle_callback, o, n, 1, 1, 2, 0, nullptr, nullptr,
                                   out.data(), len);
  };

  SECTION("files and devices") {
    diffuse_model* m = reinterpret_cast<diffuse_model*>(&co);  // must come back NULL
    const std::string missing = (dir / "no_such_checkpoint.safetensors").string();
    expect_error([&] { return diffuse_model_load(missing.c_str(), "cpu", 0, &m); }, DIFFUSE_ERR_IO,
                 {"diffuse_model_load", "no_such_checkpoint.safetensors"});
    CHECK(m == nullptr);
    const std::string junk = (dir / "junk.safetensors").string();
    {
      std::FILE* f = std::fopen(junk.c_str(), "wb");
      std::fputs("this is not a safetensors file at all", f);
      std::fclose(f);
    }
    expect_error([&] { return diffuse_model_load(junk.c_str(), "cpu", 0, &m); }, DIFFUSE_ERR_IO, {"junk.safetensors"});
    // A valid safetensors file that is not a diffuse checkpoint.
    const std::string plain = (dir / "plain.safetensors").string();
    write_safetensors_atomic(plain, {{"w", Tensor::zeros({2})}});
    expect_error([&] { return diffuse_model_load(plain.c_str(), "cpu", 0, &m); }, DIFFUSE_ERR_IO,
                 {"not a diffuse checkpoint"});
    expect_error([&] { return diffuse_model_load(ckpt.c_str(), "tpu", 0, &m); }, DIFFUSE_ERR_INVALID_ARGUMENT,
                 {"unknown device 'tpu'"});
    // A super-resolution model: its denoiser would need a low-resolution image the API cannot pass.
    const std::string sr = write_tiny_checkpoint(dir, "eps", test::next_seed(), true);
    expect_error([&] { return diffuse_model_load(sr.c_str(), "cpu", 0, &m); }, DIFFUSE_ERR_INVALID_ARGUMENT,
                 {"is a super-resolution model (4x4 -> 8x8)", "the C API takes ordinary models",
                  "diffuse sample --cascade"});
    // The spelling is checked before any GPU is asked for, by the parser the CLI uses.
    expect_error([&] { return diffuse_model_load(ckpt.c_str(), "cuda:x", 0, &m); }, DIFFUSE_ERR_INVALID_ARGUMENT,
                 {"unknown device 'cuda:x'", "cpu, cuda, cuda:N or auto"});
    expect_error([&] { return diffuse_model_load(ckpt.c_str(), "cpu", 8, &m); }, DIFFUSE_ERR_INVALID_ARGUMENT,
                 {"flags"});
    expect_error([&] { return diffuse_model_load(nullptr, "cpu", 0, &m); }, DIFFUSE_ERR_INVALID_ARGUMENT,
                 {"checkpoint_path is NULL"});
    expect_error([&] { return diffuse_model_load(ckpt.c_str(), "cpu", 0, nullptr); }, DIFFUSE_ERR_INVALID_ARGUMENT,
                 {"out is NULL"});
    int count = -1;
    REQUIRE(diffuse_cuda_device_count(&count) == DIFFUSE_OK);
    if (count == 0)
      expect_error([&] { return diffuse_model_load(ckpt.c_str(), "cuda", 0, &m); }, DIFFUSE_ERR_UNSUPPORTED,
                   {"CUDA is not available"});
    CHECK(m == nullptr);
    expect_error([&] { return diffuse_write_png_grid((dir / "no/such/dir/x.png").c_str(), out.data(), 1, 2, 2, 1, 1); },
                 DIFFUSE_ERR_IO, {"x.png"});
    expect_error([&] { return diffuse_write_png_grid((dir / "x.png").c_str(), out.data(), 1, 2, 2, 2, 1); },
                 DIFFUSE_ERR_INVALID_ARGUMENT, {"channels is 2"});
  }

  SECTION("names and settings") {
    diffuse_sampler* s = nullptr;
    diffuse_schedule* sch = nullptr;
    expect_error([&] { return diffuse_sampler_create("dpm3", &s); }, DIFFUSE_ERR_INVALID_ARGUMENT,
                 {"unknown sampler 'dpm3'", "dpm++2m"});
    CHECK(s == nullptr);
    expect_error([&] { return diffuse_sampler_create(nullptr, &s); }, DIFFUSE_ERR_INVALID_ARGUMENT, {"name is NULL"});
    expect_error([&] { return diffuse_schedule_create("quadratic", 1000, &sch); }, DIFFUSE_ERR_INVALID_ARGUMENT,
                 {"unknown schedule 'quadratic'"});
    expect_error([&] { return diffuse_schedule_create("linear", 1, &sch); }, DIFFUSE_ERR_INVALID_ARGUMENT,
                 {"timesteps", "got 1"});
    expect_error([&] { return diffuse_schedule_create("linear_logsnr", 1000, &sch); }, DIFFUSE_ERR_INVALID_ARGUMENT,
                 {"continuous"});
    expect_error([&] { return diffuse_schedule_create("custom", 1000, &sch); }, DIFFUSE_ERR_INVALID_ARGUMENT,
                 {"'custom'", "diffuse_schedule_from_model"});
    expect_error([&] { return diffuse_schedule_create("learned", 1000, &sch); }, DIFFUSE_ERR_INVALID_ARGUMENT,
                 {"'learned'", "diffuse_schedule_from_model"});
    CHECK(sch == nullptr);
    expect_error([&] { return diffuse_sampler_set_steps(h.sampler, 0); }, DIFFUSE_ERR_INVALID_ARGUMENT, {"steps is 0"});
    expect_error([&] { return diffuse_sampler_set_spacing(h.sampler, "random"); }, DIFFUSE_ERR_INVALID_ARGUMENT,
                 {"unknown spacing 'random'"});
    expect_error([&] { return diffuse_sampler_set_prediction(h.sampler, static_cast<diffuse_prediction>(7)); },
                 DIFFUSE_ERR_INVALID_ARGUMENT, {"prediction is 7"});
    // Any int a C caller passes is checked, not undefined (the header's *_ENUM_ bounds; UBSan's
    // enum check in scripts/sanitize.sh found the out-of-range loads).
    expect_error([&] { return diffuse_sampler_set_prediction(h.sampler, static_cast<diffuse_prediction>(-5)); },
                 DIFFUSE_ERR_INVALID_ARGUMENT, {"prediction is -5"});
    expect_error([&] { return diffuse_sampler_set_batch(h.sampler, 0); }, DIFFUSE_ERR_INVALID_ARGUMENT, {"batch is 0"});
    expect_error([&] { return diffuse_sampler_set_guidance(h.sampler, NAN, -1); }, DIFFUSE_ERR_INVALID_ARGUMENT,
                 {"guidance scale"});
    expect_error([&] { return diffuse_sampler_set_steps(nullptr, 5); }, DIFFUSE_ERR_INVALID_ARGUMENT,
                 {"sampler is NULL"});
    diffuse_sampler* euler = nullptr;
    REQUIRE(diffuse_sampler_create("euler", &euler) == DIFFUSE_OK);
    expect_error([&] { return diffuse_sampler_set_eta(euler, 0.5); }, DIFFUSE_ERR_INVALID_ARGUMENT,
                 {"eta applies to the ddim sampler", "euler"});
    std::vector<float> img(8 * 8 * 2);
    expect_error([&] { return diffuse_ddim_invert(euler, nullptr, h.model, 2, img.data(), nullptr, out.data(), len); },
                 DIFFUSE_ERR_INVALID_ARGUMENT, {"inversion needs a 'ddim' sampler"});
    expect_error([&] { return diffuse_sampler_set_corrector(euler, 2, 0.16); }, DIFFUSE_ERR_INVALID_ARGUMENT,
                 {"apply to the langevin and pc samplers", "euler"});
    diffuse_sampler_free(euler);
    diffuse_sampler* ald = nullptr;
    REQUIRE(diffuse_sampler_create("langevin", &ald) == DIFFUSE_OK);
    expect_error([&] { return diffuse_sampler_set_corrector(ald, 0, 0.16); }, DIFFUSE_ERR_INVALID_ARGUMENT,
                 {"corrector steps is 0", "1..100000"});
    expect_error([&] { return diffuse_sampler_set_corrector(ald, 3, 0); }, DIFFUSE_ERR_INVALID_ARGUMENT,
                 {"snr is 0"});
    CHECK(diffuse_sampler_set_corrector(ald, 3, 0.3) == DIFFUSE_OK);
    diffuse_sampler_free(ald);
    double a = 0;
    expect_error([&] { return diffuse_schedule_alpha_sigma(h.schedule, 1.5, &a, nullptr); }, DIFFUSE_ERR_INVALID_ARGUMENT,
                 {"t is 1.5"});
    REQUIRE(diffuse_sampler_set_steps(h.sampler, 2000) == DIFFUSE_OK);
    expect_error([&] { return cb(&co); }, DIFFUSE_ERR_INVALID_ARGUMENT, {"2000 steps", "only 1000"});
  }

  SECTION("shapes, pointers and labels") {
    expect_error([&] { return diffuse_sample_callback(h.sampler, h.schedule, oracle_callback, &co, 4, 1, 1, 2, 0, nullptr,
                                                      nullptr, out.data(), 7); },
                 DIFFUSE_ERR_INVALID_ARGUMENT, {"out_len is 7 floats", "8 are needed"});
    expect_error([&] { return cb(&co, 0); }, DIFFUSE_ERR_INVALID_ARGUMENT, {"n is 0"});
    expect_error([&] { return diffuse_sample_callback(h.sampler, h.schedule, oracle_callback, &co, 4, 1, 0, 2, 0, nullptr,
                                                      nullptr, out.data(), len); },
                 DIFFUSE_ERR_INVALID_ARGUMENT, {"1x0x2"});
    expect_error([&] { return diffuse_sample_callback(h.sampler, h.schedule, nullptr, &co, 4, 1, 1, 2, 0, nullptr,
                                                      nullptr, out.data(), len); },
                 DIFFUSE_ERR_INVALID_ARGUMENT, {"denoise is NULL"});
    expect_error([&] { return diffuse_sample_callback(h.sampler, nullptr, oracle_callback, &co, 4, 1, 1, 2, 0, nullptr,
                                                      nullptr, out.data(), len); },
                 DIFFUSE_ERR_INVALID_ARGUMENT, {"schedule is NULL"});
    expect_error([&] { return diffuse_sample_callback(h.sampler, h.schedule, oracle_callback, &co, 4, 1, 1, 2, 0, nullptr,
                                                      nullptr, nullptr, len); },
                 DIFFUSE_ERR_INVALID_ARGUMENT, {"out is NULL"});
    expect_error([&] { return diffuse_sample(h.sampler, nullptr, nullptr, 1, 0, nullptr, nullptr, out.data(), len); },
                 DIFFUSE_ERR_INVALID_ARGUMENT, {"model is NULL"});
    // The model's images are 8x8x1: 64 floats each.
    expect_error([&] { return diffuse_sample(h.sampler, nullptr, h.model, 20, 0, nullptr, nullptr, out.data(), len); },
                 DIFFUSE_ERR_INVALID_ARGUMENT, {"out_len is 1000 floats", "1280 are needed", "8x8x1"});
    std::vector<int64_t> bad = {0, 1, 7};
    expect_error([&] { return diffuse_sample(h.sampler, nullptr, h.model, 3, 0, bad.data(), nullptr, out.data(), len); },
                 DIFFUSE_ERR_INVALID_ARGUMENT, {"labels[2] is 7", "classes 0..2"});
    REQUIRE(diffuse_sampler_set_guidance(h.sampler, 1.0, 9) == DIFFUSE_OK);
    expect_error([&] { return diffuse_sample(h.sampler, nullptr, h.model, 3, 0, nullptr, nullptr, out.data(), len); },
                 DIFFUSE_ERR_INVALID_ARGUMENT, {"null label 9"});
    REQUIRE(diffuse_sampler_set_guidance(h.sampler, 1.0, -1) == DIFFUSE_OK);
    expect_error([&] { return cb(&co); }, DIFFUSE_ERR_INVALID_ARGUMENT, {"needs labels"});
    std::vector<int64_t> labels = {1, 2, 3, 4};
    expect_error([&] { return diffuse_sample_callback(h.sampler, h.schedule, oracle_callback, &co, 4, 1, 1, 2, 0,
                                                      labels.data(), nullptr, out.data(), len); },
                 DIFFUSE_ERR_INVALID_ARGUMENT, {"null label >= 0"});
  }

  SECTION("callbacks that fail") {
    CallbackOracle aborts{h.schedule, g};
    aborts.fail_with = 7;
    expect_error([&] { return cb(&aborts); }, DIFFUSE_ERR_CALLBACK, {"returned 7", "aborted"});
    CHECK(aborts.calls == 1);
    CallbackOracle half{h.schedule, g};
    half.write_half = true;
    expect_error([&] { return cb(&half); }, DIFFUSE_ERR_CALLBACK, {"nan", "sample 2, element 0"});
    CallbackOracle throws{h.schedule, g};
    throws.throw_exception = true;
    expect_error([&] { return cb(&throws); }, DIFFUSE_ERR_CALLBACK, {"threw"});
  }

  SECTION("the message is per thread and cleared by a success") {
    diffuse_sampler* s = nullptr;
    REQUIRE(diffuse_sampler_create("nope", &s) == DIFFUSE_ERR_INVALID_ARGUMENT);
    std::string other_thread = "unset";
    std::thread([&] { other_thread = diffuse_last_error(); }).join();
    CHECK(other_thread.empty());
    CHECK(!last_error().empty());
    REQUIRE(cb(&co) == DIFFUSE_OK);
    CHECK(last_error().empty());
    CHECK(std::string(diffuse_status_name(DIFFUSE_ERR_CALLBACK)) == "DIFFUSE_ERR_CALLBACK");
    CHECK(std::string(diffuse_status_name(static_cast<diffuse_status>(42))) == "unknown status");
    CHECK(std::string(diffuse_status_name(static_cast<diffuse_status>(-3))) == "unknown status");
    CHECK(std::string(diffuse_version()) == "0.1.0");
    diffuse_model_free(nullptr);
    diffuse_schedule_free(nullptr);
    diffuse_sampler_free(nullptr);
  }
  fs::remove_all(dir);
}

TEST_CASE("C API: diffuse_schedule_create takes every DDPM schedule the training config names, with its betas",
          "[cpu][capi]") {
  for (const char* name : {"linear", "scaled_linear", "cosine"}) {
    for (int64_t T : {50, 1000}) {
      INFO(name << " T = " << T);
      diffuse_schedule* sch = nullptr;
      REQUIRE(diffuse_schedule_create(name, T, &sch) == DIFFUSE_OK);
      int64_t got = 0;
      REQUIRE(diffuse_schedule_timesteps(sch, &got) == DIFFUSE_OK);
      CHECK(got == T);
      train::TrainConfig c;
      c.schedule = parse_enum<train::ScheduleKind>(name, "schedule");
      c.timesteps = static_cast<int>(T);
      const DiscreteSchedule want = train::make_schedule(c);
      // alpha and sigma at every trained step i, t = (i + 1) / T: the training betas exactly.
      for (int64_t i = 0; i < T; ++i) {
        const double t = static_cast<double>(i + 1) / static_cast<double>(T);
        double alpha = 0, sigma = 0;
        REQUIRE(diffuse_schedule_alpha_sigma(sch, t, &alpha, &sigma) == DIFFUSE_OK);
        CHECK(alpha == want.alpha(t));
        CHECK(sigma == want.sigma(t));
      }
      diffuse_schedule_free(sch);
    }
  }
}
