#include "models/train/classifier.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "autograd/elementwise.h"
#include "autograd/tape.h"
#include "core/check.h"
#include "core/json_util.h"
#include "core/philox.h"
#include "core/safetensors.h"
#include "kernels/noise.h"
#include "models/data/dataset.h"
#include "models/diffusion/objective.h"
#include "models/train/model_run.h"
#include "models/train/optim.h"
#include "models/train/run_folder.h"
#include "models/train/trainer.h"

namespace diffuse::train {

namespace fs = std::filesystem;

namespace {

constexpr const char* kFormat = "diffuse-classifier-1";
constexpr const char* kCheckpointName = "classifier.safetensors";

// Every field of the config, once: to_json and from_json both walk this list. Enumerations travel
// as their names.
template <class C, class F>
void visit_fields(C& c, F&& f) {
  f("preset", c.preset);
  f("timesteps", c.timesteps);
  f("lr", c.lr);
  f("weight_decay", c.weight_decay);
  f("warmup", c.warmup);
  f("grad_clip", c.grad_clip);
  f("batch", c.batch);
  f("steps", c.steps);
  f("dataset", c.dataset);
  f("flip", c.flip);
  f("seed", c.seed);
  f("out_dir", c.out_dir);
  f("log_every", c.log_every);
  f("checkpoint_every", c.checkpoint_every);
  f("eval_count", c.eval_count);
  f("device", c.device);
}

// The DDPM schedule of the noise levels, built by the one function `train` uses.
diffusion::DiscreteSchedule noise_schedule(const ClassifierConfig& c) {
  TrainConfig t;
  t.schedule = c.schedule;
  t.timesteps = c.timesteps;
  return make_schedule(t);
}

nn::UNetConfig unet_of(const ClassifierConfig& c, int image_size, int channels) {
  TrainConfig t;
  t.preset = c.preset;
  t.model = c.model;
  return t.unet_config(image_size, channels, 0);
}

// The run's draws (model_run.h): each use from (seed, run_stream(step, use)).
enum Stream : uint64_t { kTimesteps = 1, kNoise = 2, kDropout = 3 };
uint64_t stream(int64_t step, Stream s) { return run_stream(step, s); }

// The classifier's input for clean images x of one batch at step s: z_t and the time input.
std::pair<Tensor, Tensor> noisy_input(const ClassifierConfig& c, const diffusion::DiscreteSchedule* sched,
                                      const Tensor& x, int64_t s) {
  const int B = static_cast<int>(x.size(0));
  if (!sched) return {x, Tensor::zeros({B}, DType::f32)};
  std::vector<int> ts = diffusion::uniform_timesteps(sched->T(), B, c.seed, stream(s, kTimesteps));
  std::vector<float> tf(B), alpha(B), sigma(B);
  const auto& abar = sched->alphas_cumprod();
  for (int b = 0; b < B; ++b) {
    tf[b] = static_cast<float>(ts[b]);
    alpha[b] = static_cast<float>(std::sqrt(abar[ts[b]]));
    sigma[b] = static_cast<float>(std::sqrt(1 - abar[ts[b]]));
  }
  Tensor z = Tensor::empty(x.shape(), DType::f32), eps = Tensor::empty(x.shape(), DType::f32);
  kernels::noise_forward(x, Tensor::from_vector(alpha, {B}), Tensor::from_vector(sigma, {B}), c.seed,
                         stream(s, kNoise), z, eps);
  return {z, Tensor::from_vector(tf, {B})};
}

double accuracy_of(const Tensor& logits, const Tensor& labels) {
  const std::vector<float> l = logits.to_vector();
  const std::vector<int64_t> y = labels.to_vector_i64();
  const int64_t B = logits.size(0), K = logits.size(1);
  int64_t right = 0;
  for (int64_t b = 0; b < B; ++b) {
    const float* row = l.data() + b * K;
    right += std::max_element(row, row + K) - row == y[b];
  }
  return B ? static_cast<double>(right) / static_cast<double>(B) : 0;
}

}  // namespace

nlohmann::json ClassifierConfig::to_json() const {
  nlohmann::json j;
  visit_fields(*this, [&](const char* key, const auto& field) { j[key] = field; });
  j["model"] = model;
  j["noise"] = std::string(enum_name(noise));
  j["schedule"] = std::string(enum_name(schedule));
  return j;
}

ClassifierConfig ClassifierConfig::from_json(const nlohmann::json& j) {
  DF_CHECK(j.is_object(), "classifier config: expected a JSON object");
  ClassifierConfig c;
  const nlohmann::json known = c.to_json();
  for (auto it = j.begin(); it != j.end(); ++it)
    DF_CHECK(known.contains(it.key()), "classifier config: unknown key '", it.key(), "'");
  visit_fields(c, [&](const char* key, auto& field) {
    if (j.contains(key) && !json_to(j.at(key), field))
      DF_FAIL("classifier config: key '", key, "' has the wrong type or is out of range: ", json_brief(j.at(key)));
  });
  if (j.contains("model")) {
    DF_CHECK(j["model"].is_object(), "classifier config: 'model' must be an object of UNet keys");
    c.model = j["model"];
  }
  if (j.contains("noise")) {
    std::string name;
    DF_CHECK(json_to(j["noise"], name), "classifier config: key 'noise' must be a string");
    c.noise = parse_enum<ClassifierNoise>(name, "classifier noise");
  }
  if (j.contains("schedule")) {
    std::string name;
    DF_CHECK(json_to(j["schedule"], name), "classifier config: key 'schedule' must be a string");
    c.schedule = parse_enum<ScheduleKind>(name, "schedule", "classifier config");
  }
  c.validate();
  return c;
}

void ClassifierConfig::validate() const {
  DF_CHECK(schedule == ScheduleKind::linear || schedule == ScheduleKind::cosine, "classifier: --schedule must be "
           "linear or cosine, not '", enum_name(schedule), "'");
  DF_CHECK(timesteps >= 2 && timesteps <= 100000, "classifier: --timesteps must be in [2, 100000], not ", timesteps);
  DF_CHECK(lr > 0 && std::isfinite(lr), "classifier: --lr must be positive");
  DF_CHECK(weight_decay >= 0 && std::isfinite(weight_decay), "classifier: --weight-decay must be >= 0");
  DF_CHECK(warmup >= 0 && grad_clip >= 0 && std::isfinite(grad_clip), "classifier: --warmup and --grad-clip must be >= 0");
  DF_CHECK(batch >= 1 && batch <= 65536, "classifier: --batch must be in [1, 65536], not ", batch);
  DF_CHECK(steps >= 1, "classifier: --steps must be at least 1");
  DF_CHECK(log_every >= 1 && checkpoint_every >= 0 && eval_count >= 0,
           "classifier: --log-every must be >= 1, --checkpoint-every and --eval-count >= 0");
  check_device_spec(device, "classifier config");
}

std::string train_classifier(const ClassifierConfig& cfg_in, bool resume, const ClassifierCallbacks& cb) {
  ClassifierConfig cfg = cfg_in;
  cfg.validate();
  const Device dev = resolve_device(cfg.device);  // a missing GPU is refused before anything is written
  OutputFolder folder(cfg.out_dir);  // until keep(), a refusal leaves the disk as it was
  remove_stale_temporaries(cfg.out_dir, kCheckpointName);
  const std::string ckpt = (fs::path(cfg.out_dir) / kCheckpointName).string();
  SafeTensors resumed;
  const bool resuming = resume && fs::exists(ckpt);
  if (resuming) {
    resumed = read_for_resume(ckpt, kFormat, "classifier");
    cfg = resumed_config(resumed, ckpt, cfg, "classifier");
  }
  DatasetOptions data_options;
  data_options.labels = true;
  data::Dataset data = load_dataset(cfg.dataset, "train", data_options);
  DF_CHECK(data.num_classes > 0, "dataset ", cfg.dataset, " has no labels: a classifier needs them (an image folder "
           "is labelled by its class sub-folders)");
  const Shape& ishape = data.images.shape();
  DF_CHECK(ishape.rank() == 4 && ishape[1] == ishape[2], "dataset ", cfg.dataset, ": the classifier needs square images");
  DF_CHECK(data.size() >= cfg.batch, "dataset ", cfg.dataset, " has ", data.size(), " images, fewer than --batch ",
           cfg.batch);
  auto net = std::make_shared<nn::EncoderClassifier>(
      unet_of(cfg, static_cast<int>(ishape[1]), static_cast<int>(ishape[3])), data.num_classes, cfg.seed);
  net->train();
  // On a GPU: the replica that runs the passes (model_run.h); `net` holds the weights AdamW updates.
  std::shared_ptr<nn::EncoderClassifier> replica;
  NamedParams replica_params;
  if (dev.is_cuda()) {
    replica = std::make_shared<nn::EncoderClassifier>(net->config(), data.num_classes, cfg.seed);
    replica->to(dev);
    replica->train();
    replica_params = replica->named_parameters();
  }
  nn::EncoderClassifier& runner = replica ? *replica : *net;
  const std::optional<diffusion::DiscreteSchedule> sched =
      cfg.noise == ClassifierNoise::diffusion ? std::optional(noise_schedule(cfg)) : std::nullopt;
  auto params = net->named_parameters();
  AdamW opt(params, run_adamw(cfg.lr, cfg.weight_decay, cfg.warmup));
  data::BatcherOptions bo;
  bo.batch_size = cfg.batch;
  bo.seed = cfg.seed;
  bo.random_flip = cfg.flip;
  data::Batcher batcher(data, bo);
  int64_t step = 0;
  if (resuming) {
    step = restore_run(resumed, ckpt, *net, opt, batcher);
    if (cb.on_message) cb.on_message("resumed from " + ckpt + " at step " + std::to_string(step));
  }
  resumed = SafeTensors();
  std::ofstream log = open_run_log((fs::path(cfg.out_dir) / "classifier_log.csv").string(), resuming,
                                   "step,loss,accuracy,grad_norm,lr,images_per_s");
  folder.keep();
  if (replica && cb.on_message)
    cb.on_message("host-driven on " + dev.str() + ": the forward and backward passes on the device, AdamW on the cpu");

  auto write_checkpoint = [&] {
    write_run_checkpoint(ckpt, *net, opt, batcher, step,
                         {{"format", kFormat},
                          {"config", cfg.to_json().dump()},
                          {"unet", net->config().to_json().dump()},
                          {"num_classes", std::to_string(net->num_classes())}});
    if (cb.on_message) cb.on_message("checkpoint " + ckpt + " (step " + std::to_string(step) + ")");
  };

  double loss_acc = 0, acc_acc = 0;
  int64_t n_acc = 0, since_log = 0;
  auto t_last = std::chrono::steady_clock::now();
  while (step < cfg.steps) {
    if (cb.should_stop && cb.should_stop()) break;
    data::Batch batch = batcher.next();
    // The draws on the host, the same on either device; the passes on the runner's.
    auto [z, t] = noisy_input(cfg, sched ? &*sched : nullptr, batch.images, step);
    if (replica) copy_weights(params, replica_params);
    runner.set_dropout_seed(cfg.seed ^ stream(step, kDropout));
    ag::Var logits = runner.forward(ag::Var(z.to(dev)), t.to(dev));
    ag::Var loss = ag::cross_entropy(logits, batch.labels.to(dev));
    const double lv = loss.value().item();
    const double gnorm = optimizer_step(loss, params, opt, cfg.grad_clip, step, "classifier", ckpt,
                                        replica ? &replica_params : nullptr);
    ++step;
    loss_acc += lv;
    acc_acc += accuracy_of(logits.value().to(Device::cpu()), batch.labels);
    ++n_acc;
    ++since_log;
    if (step % cfg.log_every == 0 || step == cfg.steps) {
      const auto now = std::chrono::steady_clock::now();
      const double dt = std::chrono::duration<double>(now - t_last).count();
      t_last = now;
      ClassifierStats st{step, cfg.steps, loss_acc / n_acc, acc_acc / n_acc, gnorm, opt.lr_at(step),
                         dt > 0 ? since_log * cfg.batch / dt : 0};
      log << st.step << ',' << st.loss << ',' << st.accuracy << ',' << st.grad_norm << ',' << st.lr << ','
          << st.images_per_s << '\n';
      log.flush();
      if (cb.on_step) cb.on_step(st);
      loss_acc = acc_acc = 0;
      n_acc = since_log = 0;
    }
    if (cfg.checkpoint_every > 0 && step % cfg.checkpoint_every == 0 && step < cfg.steps) write_checkpoint();
  }
  write_checkpoint();
  if (step >= cfg.steps && cfg.eval_count > 0) {
    // Accuracy on the test split: of clean images (noise none), or at uniform noise levels.
    data::Dataset test = load_dataset(cfg.dataset, "test", data_options);
    const int64_t n = std::min<int64_t>(cfg.eval_count, test.size());
    ag::NoGrad ng;
    if (replica) copy_weights(params, replica_params);
    runner.eval();
    int64_t right = 0;
    for (int64_t s = 0; s < n; s += 256) {
      const int64_t e = std::min<int64_t>(n, s + 256);
      // Noise draws from the streams after the last training step: fresh, and reproducible.
      auto [z, t] = noisy_input(cfg, sched ? &*sched : nullptr, test.images.slice(s, e), cfg.steps + 1 + s);
      const Tensor logits = runner.forward(ag::Var(z.to(dev)), t.to(dev)).value().to(Device::cpu());
      right += static_cast<int64_t>(std::lround(accuracy_of(logits, test.labels.slice(s, e)) * static_cast<double>(e - s)));
    }
    if (cb.on_message) {
      char line[160];
      std::snprintf(line, sizeof line, "accuracy %.1f%% on %lld %s images%s",
                    100.0 * static_cast<double>(right) / static_cast<double>(n), static_cast<long long>(n),
                    test.split == "test" ? "test" : "training", sched ? " at uniform noise levels" : ", clean");
      cb.on_message(line);
    }
  }
  return ckpt;
}

LoadedClassifier load_classifier(const std::string& path, Device device) {
  SafeTensors st = read_safetensors(path);
  auto f = st.metadata.find("format");
  DF_CHECK(f != st.metadata.end() && f->second == kFormat, path, " is not a classifier checkpoint (one written by "
           "`diffuse train-classifier`)");
  const std::vector<std::string> bad = nonfinite_tensors(st);
  DF_CHECK(bad.empty(), path, ": ", name_list(bad), " hold NaN or Inf values; the classifier checkpoint is damaged");
  LoadedClassifier c;
  nn::UNetConfig uc;
  int num_classes = 0;
  try {
    c.config = ClassifierConfig::from_json(nlohmann::json::parse(st.metadata.at("config")));
    uc = nn::UNetConfig::from_json(nlohmann::json::parse(st.metadata.at("unet")));
    num_classes = std::stoi(st.metadata.at("num_classes"));
    c.step = std::stoll(st.metadata.at("step"));
  } catch (const Error& e) {
    DF_FAIL(path, ": ", e.what());
  } catch (const std::exception& e) {
    DF_FAIL(path, ": malformed classifier metadata (", e.what(), ")");
  }
  DF_CHECK(num_classes >= 1 && num_classes <= 100000, path, ": num_classes ", num_classes, " out of range");
  c.net = std::make_shared<nn::EncoderClassifier>(uc, num_classes);
  try {
    c.net->load_state(with_prefix(st.tensors, "model."));
  } catch (const Error& e) {
    DF_FAIL(path, ": ", e.what());
  }
  c.net->to(device);
  c.net->eval();
  // Guidance differentiates with respect to the input only: the weights stay out of the tape.
  for (auto& [name, var] : c.net->named_parameters()) var.set_requires_grad(false);
  c.device = device;
  if (c.config.noise == ClassifierNoise::diffusion)
    c.schedule = std::make_shared<diffusion::DiscreteSchedule>(noise_schedule(c.config));
  return c;
}

float classifier_time(const LoadedClassifier& c, const diffusion::Schedule& model, double t) {
  if (!c.schedule) return 0.f;
  const double tc = c.schedule->t_from_gamma(model.gamma(t));  // same log-SNR on its schedule
  const double T = c.schedule->T();
  return static_cast<float>(std::clamp(tc * T - 1, 0.0, T - 1));
}

diffusion::ClassifierGrad classifier_grad(std::shared_ptr<LoadedClassifier> c,
                                          std::shared_ptr<const diffusion::Schedule> model) {
  DF_CHECK(c && model, "classifier_grad: no classifier or schedule");
  return [c, model](const Tensor& z, const Tensor& t, const Tensor& y) {
    const int64_t B = z.size(0);
    DF_CHECK(y.defined() && y.numel() == B, "classifier guidance needs one target class per sample");
    std::vector<float> tv = t.to_vector(), ti(static_cast<size_t>(B));
    for (int64_t b = 0; b < B; ++b) ti[b] = classifier_time(*c, *model, tv[b]);
    std::vector<int64_t> labels = y.to(DType::i64).to_vector_i64();
    // The samplers run under ag::NoGrad; this gradient needs the tape.
    const bool was_enabled = ag::grad_enabled();
    ag::set_grad_enabled(true);
    struct Restore {
      bool on;
      ~Restore() { ag::set_grad_enabled(on); }
    } restore{was_enabled};
    for (int64_t l : labels)
      DF_CHECK(l >= 0 && l < c->net->num_classes(), "classifier guidance: class ", l, " is not one of the classifier's ",
               c->net->num_classes(), " classes");
    ag::Var zv(z.to(c->device), /*requires_grad=*/true);
    ag::Var nll = ag::cross_entropy(c->net->forward(zv, Tensor::from_vector(ti, {B}, c->device)),
                                    Tensor::from_vector_i64(labels, {B}, c->device));
    ag::backward(nll);
    // cross_entropy is the batch mean of -log p(y_b | z_b), and sample b's logits depend on z_b
    // alone, so grad_z sum_b log p(y_b | z_b) = -B grad_z nll.
    Tensor g = zv.grad().to(Device::cpu());
    const float s = -static_cast<float>(B);
    Tensor out = Tensor::empty(g.shape(), DType::f32);
    const std::vector<float> gv = g.to_vector();
    float* o = out.data<float>();
    for (size_t i = 0; i < gv.size(); ++i) o[i] = s * gv[i];
    return out;
  };
}

ClassifierOutputs classify(LoadedClassifier& c, const Tensor& images, int batch) {
  DF_CHECK(images.dim() == 4, "classify: images must be (N, H, W, C)");
  ag::NoGrad ng;
  ClassifierOutputs out;
  const int64_t n = images.size(0);
  for (int64_t s = 0; s < n; s += batch) {
    const int64_t e = std::min<int64_t>(n, s + batch);
    Tensor x = images.slice(s, e).to(c.device);
    Tensor t = Tensor::zeros({e - s}, DType::f32, c.device);
    ag::Var h = c.net->features(ag::Var(x), t);
    const Tensor logits = c.net->head(h).value().to(Device::cpu());
    const std::vector<float> hv = h.value().to(Device::cpu()).to_vector();
    out.dim = h.value().size(1);
    out.features.insert(out.features.end(), hv.begin(), hv.end());
    const std::vector<float> lv = logits.to_vector();
    const int64_t K = logits.size(1);
    for (int64_t b = 0; b < e - s; ++b) {
      const float* row = lv.data() + b * K;
      out.labels.push_back(std::max_element(row, row + K) - row);
    }
  }
  return out;
}

namespace {

// Eigen-decomposition of a symmetric matrix (n x n, row-major) by cyclic Jacobi rotations:
// a = V diag(w) V^T. Exact to rounding for the small feature dimensions here (<= 1024).
void symmetric_eigen(std::vector<double> a, int64_t n, std::vector<double>& w, std::vector<double>& v) {
  v.assign(static_cast<size_t>(n * n), 0.0);
  for (int64_t i = 0; i < n; ++i) v[i * n + i] = 1;
  for (int sweep = 0; sweep < 100; ++sweep) {
    double off = 0, diag = 0;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j) (i == j ? diag : off) += a[i * n + j] * a[i * n + j];
    if (off <= 1e-30 * std::max(diag, 1e-300)) break;
    for (int64_t p = 0; p < n; ++p)
      for (int64_t q = p + 1; q < n; ++q) {
        const double apq = a[p * n + q];
        if (std::fabs(apq) < 1e-300) continue;
        const double theta = (a[q * n + q] - a[p * n + p]) / (2 * apq);
        const double t = (theta >= 0 ? 1 : -1) / (std::fabs(theta) + std::sqrt(theta * theta + 1));
        const double cs = 1 / std::sqrt(t * t + 1), sn = t * cs;
        for (int64_t k = 0; k < n; ++k) {  // columns p, q
          const double akp = a[k * n + p], akq = a[k * n + q];
          a[k * n + p] = cs * akp - sn * akq;
          a[k * n + q] = sn * akp + cs * akq;
        }
        for (int64_t k = 0; k < n; ++k) {  // rows p, q
          const double apk = a[p * n + k], aqk = a[q * n + k];
          a[p * n + k] = cs * apk - sn * aqk;
          a[q * n + k] = sn * apk + cs * aqk;
        }
        for (int64_t k = 0; k < n; ++k) {
          const double vkp = v[k * n + p], vkq = v[k * n + q];
          v[k * n + p] = cs * vkp - sn * vkq;
          v[k * n + q] = sn * vkp + cs * vkq;
        }
      }
  }
  w.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) w[i] = a[i * n + i];
}

void mean_cov(const std::vector<double>& x, int64_t dim, std::vector<double>& mu, std::vector<double>& cov) {
  const int64_t n = static_cast<int64_t>(x.size()) / dim;
  mu.assign(static_cast<size_t>(dim), 0.0);
  cov.assign(static_cast<size_t>(dim * dim), 0.0);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t i = 0; i < dim; ++i) mu[i] += x[r * dim + i];
  for (double& m : mu) m /= static_cast<double>(n);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t i = 0; i < dim; ++i) {
      const double di = x[r * dim + i] - mu[i];
      for (int64_t j = 0; j < dim; ++j) cov[i * dim + j] += di * (x[r * dim + j] - mu[j]);
    }
  for (double& c : cov) c /= static_cast<double>(n - 1);
}

}  // namespace

double feature_distance(const std::vector<double>& a, const std::vector<double>& b, int64_t dim) {
  DF_CHECK(dim >= 1 && a.size() % dim == 0 && b.size() % dim == 0, "feature_distance: ragged feature sets");
  DF_CHECK(a.size() / dim >= 2 && b.size() / dim >= 2, "feature_distance: needs at least 2 images on each side");
  std::vector<double> mu_a, mu_b, s_a, s_b;
  mean_cov(a, dim, mu_a, s_a);
  mean_cov(b, dim, mu_b, s_b);
  // S_a^1/2 from S_a = V diag(w) V^T; then tr (S_a^1/2 S_b S_a^1/2)^1/2 = sum sqrt(eigenvalues).
  std::vector<double> w, v;
  symmetric_eigen(s_a, dim, w, v);
  std::vector<double> root(static_cast<size_t>(dim * dim), 0.0);
  for (int64_t i = 0; i < dim; ++i)
    for (int64_t j = 0; j < dim; ++j) {
      double acc = 0;
      for (int64_t k = 0; k < dim; ++k) acc += v[i * dim + k] * std::sqrt(std::max(w[k], 0.0)) * v[j * dim + k];
      root[i * dim + j] = acc;
    }
  std::vector<double> tmp(static_cast<size_t>(dim * dim), 0.0), m(static_cast<size_t>(dim * dim), 0.0);
  for (int64_t i = 0; i < dim; ++i)
    for (int64_t k = 0; k < dim; ++k)
      for (int64_t j = 0; j < dim; ++j) tmp[i * dim + j] += root[i * dim + k] * s_b[k * dim + j];
  for (int64_t i = 0; i < dim; ++i)
    for (int64_t k = 0; k < dim; ++k)
      for (int64_t j = 0; j < dim; ++j) m[i * dim + j] += tmp[i * dim + k] * root[k * dim + j];
  for (int64_t i = 0; i < dim; ++i)  // symmetric up to rounding: make it exactly so
    for (int64_t j = i + 1; j < dim; ++j) m[i * dim + j] = m[j * dim + i] = 0.5 * (m[i * dim + j] + m[j * dim + i]);
  std::vector<double> wm, vm;
  symmetric_eigen(m, dim, wm, vm);
  double d = 0, tr_sqrt = 0;
  for (int64_t i = 0; i < dim; ++i) d += (mu_a[i] - mu_b[i]) * (mu_a[i] - mu_b[i]) + s_a[i * dim + i] + s_b[i * dim + i];
  for (double e : wm) tr_sqrt += std::sqrt(std::max(e, 0.0));
  return d - 2 * tr_sqrt;
}

}  // namespace diffuse::train
