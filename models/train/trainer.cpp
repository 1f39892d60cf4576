#include "models/train/trainer.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>

#include "autograd/elementwise.h"
#include "autograd/linalg.h"
#include "autograd/tape.h"
#include "core/allocator.h"
#include "core/check.h"
#include "core/file_io.h"
#include "core/image_io.h"
#include "core/json_util.h"
#include "core/philox.h"
#include "core/safetensors.h"
#include "kernels/noise.h"
#include "models/data/dataset.h"
#include "models/diffusion/hybrid_loss.h"
#include "models/diffusion/objective.h"
#include "models/diffusion/sampler.h"
#include "models/diffusion/schedule.h"
#include "models/diffusion/vdm_loss.h"
#include "models/train/device_trainer.h"
#include "models/train/ema.h"
#include "models/train/optim.h"
#include "models/train/run_folder.h"

namespace fs = std::filesystem;

namespace diffuse::train {

std::shared_ptr<const diffusion::Schedule> model_schedule(const LoadedModel& m) {
  if (!continuous_time(m.config)) return std::make_shared<diffusion::DiscreteSchedule>(make_schedule(m.config));
  if (m.config.schedule == ScheduleKind::learned) {
    DF_CHECK(m.snr != nullptr, "model_schedule: a learned schedule but no SNR net loaded");
    return std::make_shared<nn::SNRSchedule>(m.snr);
  }
  return std::make_shared<diffusion::LinearLogSNR>(kVdmGammaMin, kVdmGammaMax);
}

diffusion::Denoiser make_denoiser(std::shared_ptr<nn::UNet> unet, int timesteps, Device device, bool with_variance) {
  const bool learned = unet->config().learn_sigma;
  DF_CHECK(!with_variance || learned, "make_denoiser: the variance channels were asked for, but the UNet has no "
           "learned variance (learn_sigma)");
  return [unet, timesteps, device, learned, with_variance](const Tensor& z, const Tensor& t, const Tensor& labels) {
    std::vector<float> steps = t.to_vector();
    for (float& v : steps) v = v * static_cast<float>(timesteps) - 1.f;
    Tensor tt = Tensor::from_vector(steps, {static_cast<int64_t>(steps.size())}, device);
    ag::Var out = unet->forward(ag::Var(z.to(device)), tt, labels.defined() ? labels.to(device) : labels);
    Tensor host = out.value().to(Device::cpu());
    if (learned && !with_variance) return diffusion::split_learned_variance(host).first;
    return host;
  };
}

namespace {

// Random streams of one run: each use draws from (seed, step * kStreams + use).
constexpr uint64_t kStreams = 8;
enum Stream : uint64_t { kTimesteps = 1, kNoise = 2, kLabelDrop = 3, kDropout = 4, kNoise0 = 5 };

uint64_t stream(int64_t step, Stream s) { return static_cast<uint64_t>(step) * kStreams + s; }

std::string idx_file(const std::string& dir, const std::string& stem) {
  for (const char* ext : {"-ubyte.gz", "-ubyte", ".gz", ""}) {
    std::string p = (fs::path(dir) / (stem + ext)).string();
    if (fs::exists(p)) return p;
  }
  DF_FAIL("dataset folder ", dir, " has no ", stem, "-ubyte[.gz]");
}

}  // namespace

data::Dataset load_dataset(const std::string& spec, const std::string& split, const DatasetOptions& options) {
  std::string kind = spec, arg;
  if (auto colon = spec.find(':'); colon != std::string::npos) {
    kind = spec.substr(0, colon);
    arg = spec.substr(colon + 1);
  }
  DF_CHECK(split == "train" || split == "test", "split '", split, "' (expected train or test)");
  std::string prefix = split == "train" ? "train" : "t10k";
  auto with_split = [](data::Dataset d, const std::string& s) {
    d.split = s;
    return d;
  };
  if (kind == "fashion-mnist")
    return with_split(data::load_fashion_mnist(split, arg.empty() ? data::kFashionMnistDir : arg), split);
  if (kind == "mnist") {
    DF_CHECK(!arg.empty(), "dataset 'mnist:<dir>' needs the folder of the IDX files");
    return with_split(data::load_idx(idx_file(arg, prefix + "-images-idx3"), idx_file(arg, prefix + "-labels-idx1")),
                      split);
  }
  if (kind == "idx") {
    auto comma = arg.find(',');
    DF_CHECK(comma != std::string::npos, "dataset 'idx:<images>,<labels>' needs both files");
    return with_split(data::load_idx(arg.substr(0, comma), arg.substr(comma + 1)), "all");
  }
  if (kind == "cifar10") {
    DF_CHECK(!arg.empty(), "dataset 'cifar10:<path>' needs the folder or file of the binary batches");
    std::error_code ec;
    return with_split(data::load_cifar10(arg, split), fs::is_directory(arg, ec) ? split : "all");
  }
  if (kind == "images") {
    DF_CHECK(!arg.empty(), "dataset 'images:<dir>[@size]' needs a folder");
    data::ImageFolderOptions o;
    o.size = options.image_size > 0 ? options.image_size : 64;
    o.channels = options.channels;
    o.class_labels = options.labels;
    // "@size" ends the spec; an '@' inside the folder's path (one followed by a '/') is part of it.
    if (auto at = arg.rfind('@'); at != std::string::npos && arg.find('/', at) == std::string::npos) {
      const std::string size = arg.substr(at + 1);
      int v = 0;
      const auto [end, ec] = std::from_chars(size.data(), size.data() + size.size(), v);
      DF_CHECK(!size.empty() && ec == std::errc() && end == size.data() + size.size() && v >= 1 && v <= 4096,
               "dataset '", spec, "': the size after '@' must be a whole number of pixels from 1 to 4096, not '",
               size, "' (images:<dir>@64 resizes every image to 64x64)");
      o.size = v;
      arg = arg.substr(0, at);
    }
    return with_split(data::load_image_folder(arg, o), "all");
  }
  DF_FAIL("unknown dataset '", spec, "' (expected fashion-mnist[:dir], mnist:<dir>, idx:<images>,<labels>, "
          "cifar10:<path> or images:<dir>[@size])");
}

namespace {

// The steps an importance-sampled step drew and each sample's loss (hybrid_loss.h's per_sample).
struct LossRecord {
  std::vector<int> t;
  std::vector<double> losses;
};

struct Run {
  TrainConfig cfg;
  Device device;
  data::Dataset data;
  std::shared_ptr<nn::UNet> unet;
  std::shared_ptr<nn::SNRNet> snr;  // vdm with the learned schedule: trained by the same optimizer
  std::shared_ptr<const diffusion::Schedule> continuous;  // vdm: the schedule the sample grids use
  std::unique_ptr<AdamW> opt;
  std::unique_ptr<EMA> ema;
  std::unique_ptr<DeviceTrainer> dev;  // on a GPU: the step, AdamW and the EMA (device_trainer.h)
  std::unique_ptr<data::Batcher> batcher;
  diffusion::DiscreteSchedule schedule = diffusion::DiscreteSchedule::linear(2);
  // t_sampling importance: the loss history behind the draws of t (checkpointed).
  std::unique_ptr<diffusion::LossSecondMomentResampler> t_sampler;
  int64_t step = 0;
  int64_t nonfinite_total = 0;
};

// The resampler's state in a checkpoint: each step's last losses (f64, T x history) and their counts.
constexpr const char* kTSamplerLosses = "trainer.t_sampler.losses";
constexpr const char* kTSamplerCounts = "trainer.t_sampler.counts";

std::string checkpoint_path(const TrainConfig& c) { return (fs::path(c.out_dir) / "checkpoint.safetensors").string(); }

void write_checkpoint(Run& r) {
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (auto& [name, var] : r.unet->named_parameters()) {
    DF_CHECK(all_finite(var.value()), "parameter ", name, " is not finite at step ", r.step,
             ": no checkpoint is written (the previous one is kept)");
    tensors.emplace_back("model." + name, var.value());
  }
  if (r.snr)
    for (auto& [name, var] : r.snr->named_parameters()) {
      DF_CHECK(all_finite(var.value()), "parameter snr.", name, " is not finite at step ", r.step,
               ": no checkpoint is written (the previous one is kept)");
      tensors.emplace_back("snr." + name, var.value());
    }
  for (auto& [name, t] : r.dev ? r.dev->state() : r.ema->state()) tensors.emplace_back(name, t);
  if (!r.dev)
    for (auto& [name, t] : r.opt->state()) tensors.emplace_back(name, t);
  data::BatcherState bs = r.batcher->state();
  tensors.emplace_back("trainer.state", Tensor::from_vector_i64({r.step, bs.epoch, bs.position, r.nonfinite_total}, {4}));
  if (r.t_sampler) {
    const diffusion::LossSecondMomentResampler::State st = r.t_sampler->state();
    Tensor losses = Tensor::empty({r.t_sampler->T(), r.t_sampler->history()}, DType::f64);
    std::copy(st.losses.begin(), st.losses.end(), losses.data<double>());
    tensors.emplace_back(kTSamplerLosses, losses);
    tensors.emplace_back(kTSamplerCounts, Tensor::from_vector_i64(st.counts, {r.t_sampler->T()}));
  }
  std::map<std::string, std::string> meta{{"format", "diffuse-checkpoint-1"},
                                          {"config", r.cfg.to_json().dump()},
                                          {"unet", r.unet->config().to_json().dump()},
                                          {"step", std::to_string(r.step)},
                                          {"num_classes", std::to_string(r.data.num_classes)}};
  write_safetensors_atomic(checkpoint_path(r.cfg), tensors, meta);
}

std::map<std::string, Tensor> with_prefix(const std::map<std::string, Tensor>& all, const std::string& prefix) {
  std::map<std::string, Tensor> out;
  for (auto& [k, v] : all)
    if (k.rfind(prefix, 0) == 0) out.emplace(k.substr(prefix.size()), v);
  return out;
}

Tensor sample_grid(Run& r, int64_t step) {
  // EMA weights in, sample, live weights back.
  r.dev ? r.dev->swap_ema() : r.ema->swap();
  ag::NoGrad ng;
  r.unet->eval();
  diffusion::SamplerOptions o;
  const auto& shape = r.data.images.shape();
  o.shape = Shape{r.cfg.sample_count, shape[1], shape[2], shape[3]};
  o.seed = r.cfg.seed + 1;  // the same noise at every grid, so grids show progress
  o.steps = r.cfg.sample_steps;
  o.prediction = prediction_of(r.cfg);
  o.clip_x0 = true;
  if (r.unet->config().num_classes > 0) {
    std::vector<int64_t> labels(static_cast<size_t>(r.cfg.sample_count));
    for (size_t i = 0; i < labels.size(); ++i) labels[i] = static_cast<int64_t>(i) % r.unet->config().num_classes;
    o.labels = Tensor::from_vector_i64(labels, {r.cfg.sample_count});
  }
  diffusion::Denoiser f = make_denoiser(r.unet, r.cfg.timesteps, r.device);
  // vdm: VDM's own ancestral sampler on the (EMA) learned schedule.
  Tensor x = r.continuous ? diffusion::sample(diffusion::SamplerKind::vdm, *r.continuous, f, o)
                          : diffusion::sample(diffusion::SamplerKind::ddim, r.schedule, f, o);
  r.unet->train();
  r.dev ? r.dev->swap_ema() : r.ema->swap();
  (void)step;
  return x;
}

// One step's loss of a discrete objective: uniform steps, z_t and eps from the fused noising
// kernel, the UNet on the step index; the MSE to the prediction target (optionally Min-SNR
// weighted), or the hybrid loss.
// With t_sampling importance the steps come from the loss history (uniform, weight 1, until every
// step has its 10 losses), each sample's loss is weighted by 1 / (T p_t), and `record` receives the
// steps and the per-sample losses for the history, which the caller adds once the step is taken.
ag::Var ddpm_step_loss(Run& r, const Tensor& x, const Tensor& y, int64_t s, LossRecord* record) {
  const TrainConfig& cfg = r.cfg;
  const int B = cfg.batch;
  const diffusion::Prediction pred = prediction_of(cfg);
  const bool hybrid = learned_variance(cfg);
  const auto& abar = r.schedule.alphas_cumprod();
  std::vector<int> ts;
  std::vector<double> importance;  // empty: uniform steps
  if (r.t_sampler) {
    diffusion::LossSecondMomentResampler::Draw d = r.t_sampler->sample(B, cfg.seed, stream(s, kTimesteps));
    ts = std::move(d.t);
    importance = std::move(d.weights);
  } else {
    ts = diffusion::uniform_timesteps(cfg.timesteps, B, cfg.seed, stream(s, kTimesteps));
  }
  std::vector<float> tf(B), alpha(B), sigma(B);
  std::vector<double> alpha_d(B), sigma_d(B), weights(B, 1.0);
  for (int b = 0; b < B; ++b) {
    tf[b] = static_cast<float>(ts[b]);
    alpha_d[b] = std::sqrt(abar[ts[b]]);
    sigma_d[b] = std::sqrt(1 - abar[ts[b]]);
    alpha[b] = static_cast<float>(alpha_d[b]);
    sigma[b] = static_cast<float>(sigma_d[b]);
    if (cfg.loss_weight == LossWeight::min_snr)
      weights[b] = diffusion::min_snr_weight(pred, abar[ts[b]] / (1 - abar[ts[b]]));
  }
  Tensor z = Tensor::empty(x.shape(), DType::f32, r.device), eps = Tensor::empty(x.shape(), DType::f32, r.device);
  kernels::noise_forward(x, Tensor::from_vector(alpha, {B}, r.device), Tensor::from_vector(sigma, {B}, r.device),
                         cfg.seed, stream(s, kNoise), z, eps);
  Tensor target = pred == diffusion::Prediction::eps ? eps
                                                     : diffusion::prediction_target(pred, x, eps, alpha_d, sigma_d);
  ag::Var out = r.unet->forward(ag::Var(z), Tensor::from_vector(tf, {B}, r.device), y);
  std::vector<float> wf(weights.begin(), weights.end());
  const Tensor w = Tensor::from_vector(wf, {B}, r.device);
  // hybrid: L_simple on the eps channels + lambda L_vlb on the variance channels (hybrid_loss.h).
  if (!hybrid) return ag::weighted_mse(out, ag::Var(target), w);
  diffusion::HybridLoss h = diffusion::hybrid_loss(r.schedule, ts, x, z, eps, out, w, 1e-3, importance);
  if (record) *record = LossRecord{ts, std::move(h.per_sample)};
  return h.loss;
}

// One step's VDM loss (vdm_loss.h), bits per dim: low-discrepancy t (VDM app. I.1), the schedule
// evaluated at the batch's times and at t = 0, 1 in one forward (gamma(0), gamma(1) enter the
// decoder and the prior terms), z_t differentiable in gamma, and the UNet on t's time input
// t T - 1 (make_denoiser's map). With the learned schedule the loss's gradient reaches the SNR
// net through gamma'(t), through z_t and through gamma(0), gamma(1): the plain joint gradient of
// VDM's code, not the variance-minimising schedule update of VDM sec. 5.2.
ag::Var vdm_step_loss(Run& r, const Tensor& x, const Tensor& y, int64_t s) {
  const TrainConfig& cfg = r.cfg;
  const int B = cfg.batch;
  const std::vector<double> t = diffusion::low_discrepancy_times(B, cfg.seed, stream(s, kTimesteps));
  std::vector<float> ts(static_cast<size_t>(B) + 2), tin(static_cast<size_t>(B));
  for (int b = 0; b < B; ++b) {
    ts[b] = static_cast<float>(t[b]);
    tin[b] = static_cast<float>(t[b] * cfg.timesteps - 1.0);
  }
  ts[B] = 0.f;
  ts[B + 1] = 1.f;
  ag::Var gamma, dgamma;  // (B + 2)
  if (r.snr) {
    nn::SNRNet::Output o = r.snr->forward(Tensor::from_vector(ts, {B + 2}, r.device));
    gamma = o.gamma;
    dgamma = o.dgamma;
  } else {  // the fixed schedule: constants
    std::vector<float> g(ts.size()), dg(ts.size());
    for (size_t i = 0; i < ts.size(); ++i) {
      g[i] = static_cast<float>(r.continuous->gamma(ts[i]));
      dg[i] = static_cast<float>(r.continuous->dgamma_dt(ts[i]));
    }
    gamma = ag::Var(Tensor::from_vector(g, {B + 2}, r.device));
    dgamma = ag::Var(Tensor::from_vector(dg, {B + 2}, r.device));
  }
  const Tensor eps = Tensor::randn(x.shape(), cfg.seed, stream(s, kNoise), r.device);
  const Tensor eps0 = Tensor::randn(x.shape(), cfg.seed, stream(s, kNoise0), r.device);
  ag::Var z = diffusion::vdm_q_sample(x, eps, ag::slice_last(gamma, 0, B));
  ag::Var eps_hat = r.unet->forward(z, Tensor::from_vector(tin, {B}, r.device), y);
  return diffusion::vdm_loss(x, eps, eps_hat, ag::slice_last(dgamma, 0, B), eps0, ag::slice_last(gamma, B, B + 1),
                             ag::slice_last(gamma, B + 1, B + 2))
      .loss;
}

}  // namespace

// ---- checkpoints -------------------------------------------------------------------------------

LoadedModel load_checkpoint(const std::string& path, Device device, bool ema, bool allow_nonfinite) {
  SafeTensors st = read_safetensors(path);
  std::vector<std::string> nonfinite = nonfinite_tensors(st);
  DF_CHECK(nonfinite.empty() || allow_nonfinite, path, ": tensor", nonfinite.size() > 1 ? "s " : " ",
           name_list(nonfinite), nonfinite.size() > 1 ? " hold" : " holds", " NaN or Inf values; the checkpoint is damaged. Use an earlier checkpoint, or load it anyway "
           "with --allow-nonfinite (diffuse sample, eval)");
  auto meta = [&](const char* key) {
    auto it = st.metadata.find(key);
    DF_CHECK(it != st.metadata.end(), path, ": not a diffuse checkpoint (metadata '", key, "' missing)");
    return it->second;
  };
  DF_CHECK(meta("format") == "diffuse-checkpoint-1", path, ": unknown checkpoint format '", meta("format"), "'");
  LoadedModel m;
  // std::stoll would throw std::invalid_argument, which is not the diffuse::Error a caller expects
  // for a malformed file, and accepts trailing junk.
  const std::string step = meta("step");
  const auto [end, ec] = std::from_chars(step.data(), step.data() + step.size(), m.step);
  DF_CHECK(ec == std::errc() && end == step.data() + step.size() && m.step >= 0, path, ": malformed step '", step,
           "' in the checkpoint metadata");
  std::map<std::string, Tensor> weights = with_prefix(st.tensors, ema ? "ema." : "model.");
  weights.erase("num_updates");
  // A learned schedule's weights: "snr.*" live, "ema.snr.*" averaged (the EMA tracks them with
  // the UNet's).
  std::map<std::string, Tensor> snr_weights = with_prefix(ema ? weights : st.tensors, "snr.");
  for (const auto& [name, t] : snr_weights) weights.erase("snr." + name);
  // The model is built from the metadata's config before its weights are matched against it. A
  // config that describes a far larger model than the file holds (a corrupt or hostile file:
  // found by fuzzing, where 200 bytes asked for 60 GB) is refused by the allocation limit instead
  // of allocated. A real checkpoint holds exactly the model's parameters, so the size classes of
  // its weights as f32, twice over, leave room for whatever construction allocates besides.
  size_t weight_bytes = size_t{1} << 20;
  for (const auto& [name, t] : weights)
    weight_bytes += 2 * allocation_size_class(static_cast<size_t>(t.numel()) * sizeof(float));
  try {
    m.config = TrainConfig::from_json(nlohmann::json::parse(meta("config")));
    nn::UNetConfig unet_config = nn::UNetConfig::from_json(nlohmann::json::parse(meta("unet")));
    HostAllocationLimit limit(weight_bytes, "the model that the checkpoint's config describes");
    m.unet = std::make_shared<nn::UNet>(unet_config, nn::UNet::Undrawn{});  // load_state fills it below
  } catch (const nlohmann::json::exception& e) {
    DF_FAIL(path, ": malformed config in the checkpoint metadata (", e.what(), ")");
  } catch (const Error& e) {
    DF_FAIL(path, ": ", e.what());
  }
  DF_CHECK(m.unet->config().learn_sigma == learned_variance(m.config), path, ": the UNet ",
           m.unet->config().learn_sigma ? "has" : "has no", " learned variance but the training objective is '",
           enum_name(m.config.objective), "'");
  try {
    m.unet->load_state(weights);
  } catch (const Error& e) {
    DF_FAIL(path, ": ", e.what());
  }
  m.snr = make_snr_net(m.config);
  DF_CHECK(m.snr || snr_weights.empty(), path, ": the checkpoint holds SNR-net weights (snr.*) but its config (objective '",
           enum_name(m.config.objective), "', schedule '", enum_name(m.config.schedule), "') has no learned schedule");
  if (m.snr) {
    try {
      m.snr->load_state(snr_weights);
    } catch (const Error& e) {
      DF_FAIL(path, ": the learned schedule: ", e.what());
    }
    m.snr->to(device);
  }
  m.unet->to(device);
  m.unet->eval();
  m.nonfinite = std::move(nonfinite);
  return m;
}

// ---- the loop ----------------------------------------------------------------------------------

std::string train(const TrainConfig& cfg_in, bool resume, const TrainCallbacks& cb) {
  Run r;
  r.cfg = cfg_in;
  // A missing GPU, or an option its step lacks, fails before anything is written; a resumed run's
  // stored options are checked once read.
  if (resume && fs::exists(checkpoint_path(r.cfg)))
    (void)resolve_device(r.cfg.device);
  else
    (void)choose_training_device(r.cfg, cuda_available());
  if (r.cfg.device == "auto" && !cuda_available()) (void)resolve_device("auto");  // its one notice: no GPU, and why
  // Until folder.keep() below, a refusal leaves the disk as it was.
  OutputFolder folder(r.cfg.out_dir);
  remove_stale_temporaries(r.cfg.out_dir, "checkpoint.safetensors");
  const std::string ckpt = checkpoint_path(r.cfg);
  SafeTensors resumed;
  bool resuming = resume && fs::exists(ckpt);
  if (resuming) {
    resumed = read_safetensors(ckpt);
    const std::vector<std::string> bad = nonfinite_tensors(resumed);
    DF_CHECK(bad.empty(), ckpt, ": tensor", bad.size() > 1 ? "s " : " ", name_list(bad),
             bad.size() > 1 ? " hold" : " holds", " NaN or Inf values; the checkpoint is damaged and the run cannot "
             "resume from it");
    auto it = resumed.metadata.find("config");
    DF_CHECK(it != resumed.metadata.end(), ckpt, ": no training config in the checkpoint; cannot resume");
    TrainConfig stored;
    try {
      stored = TrainConfig::from_json(nlohmann::json::parse(it->second));
    } catch (const nlohmann::json::exception& e) {
      DF_FAIL(ckpt, ": malformed training config in the checkpoint metadata (", e.what(), "); cannot resume");
    } catch (const Error& e) {
      DF_FAIL(ckpt, ": ", e.what(), "; cannot resume");
    }
    // The run continues as it was configured; only how long, how often and where may change.
    stored.steps = r.cfg.steps;
    stored.epochs = r.cfg.epochs;
    stored.log_every = r.cfg.log_every;
    stored.sample_every = r.cfg.sample_every;
    stored.checkpoint_every = r.cfg.checkpoint_every;
    stored.device = r.cfg.device;
    stored.cuda_graph = r.cfg.cuda_graph;
    stored.out_dir = r.cfg.out_dir;
    r.cfg = stored;
  }
  const TrainConfig& cfg = r.cfg;
  const TrainingDevice chosen = choose_training_device(cfg, cuda_available());  // the resumed run's settings
  r.device = chosen.device;
  if (!chosen.note.empty() && cb.on_message) cb.on_message(chosen.note);
  set_current_device(r.device);
  DatasetOptions data_options;
  data_options.labels = cfg.class_cond;  // an image folder's class sub-folders
  r.data = load_dataset(cfg.dataset, "train", data_options);
  if (cfg.epochs > 0) {  // whole passes over the training set, the last one possibly partial
    const double n = static_cast<double>(r.data.images.shape()[0]);
    r.cfg.steps = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(cfg.epochs * n / cfg.batch)));
  }
  const Shape& ishape = r.data.images.shape();
  DF_CHECK(ishape[1] == ishape[2], "dataset ", cfg.dataset, ": images are ", ishape[1], "x", ishape[2],
           "; the UNet needs square images");
  DF_CHECK(!cfg.class_cond || r.data.num_classes > 0, "--class-cond: dataset ", cfg.dataset, " has no labels");
  r.unet = std::make_shared<nn::UNet>(cfg.unet_config(static_cast<int>(ishape[1]), static_cast<int>(ishape[3]),
                                                      r.data.num_classes),
                                      cfg.seed);
  r.unet->to(r.device);
  r.unet->train();
  const bool vdm = continuous_time(cfg);
  if (vdm) {
    r.snr = make_snr_net(cfg);
    if (r.snr) {
      r.snr->to(r.device);
      r.continuous = std::make_shared<nn::SNRSchedule>(r.snr);
    } else {
      r.continuous = std::make_shared<diffusion::LinearLogSNR>(kVdmGammaMin, kVdmGammaMax);
    }
  } else {
    r.schedule = make_schedule(cfg);
    if (cfg.t_sampling == TSampling::importance)  // improved DDPM's settings: 10 losses per step, 1e-3 uniform
      r.t_sampler = std::make_unique<diffusion::LossSecondMomentResampler>(cfg.timesteps, 10, 1e-3);
  }

  AdamWOptions ao;
  ao.lr = static_cast<float>(cfg.lr);
  ao.beta1 = static_cast<float>(cfg.beta1);
  ao.beta2 = static_cast<float>(cfg.beta2);
  ao.eps = static_cast<float>(cfg.adam_eps);
  ao.weight_decay = static_cast<float>(cfg.weight_decay);
  ao.warmup_steps = cfg.warmup;
  auto params = r.unet->named_parameters();
  // The learned schedule's parameters join the UNet's: one optimizer, one gradient clip, one EMA
  // (VDM trains both with the same loss and optimizer), checkpointed as snr.*, ema.snr.*, opt.*.snr.*.
  if (r.snr)
    for (auto& [name, var] : r.snr->named_parameters()) params.emplace_back("snr." + name, var);
  if (r.device.is_cuda()) {
    r.dev = std::make_unique<DeviceTrainer>(r.unet, cfg);
    if (cb.on_message)
      cb.on_message("the whole step on " + r.device.str() + (cfg.cuda_graph ? ", captured as a CUDA graph" : ""));
  } else {
    r.opt = std::make_unique<AdamW>(params, ao);
    r.ema = std::make_unique<EMA>(params, static_cast<float>(cfg.ema_decay), cfg.ema_warmup);
  }
  data::BatcherOptions bo;
  bo.batch_size = cfg.batch;
  bo.seed = cfg.seed;
  bo.random_flip = cfg.flip;
  DF_CHECK(r.data.size() >= cfg.batch, "dataset ", cfg.dataset, " has ", r.data.size(), " images, fewer than --batch ",
           cfg.batch);
  r.batcher = std::make_unique<data::Batcher>(r.data, bo);

  if (resuming) {
    try {
      r.unet->load_state(with_prefix(resumed.tensors, "model."));
      if (r.snr) r.snr->load_state(with_prefix(resumed.tensors, "snr."));
      if (r.dev) {
        r.dev->load_state(resumed.tensors);
      } else {
        r.ema->load_state(resumed.tensors);
        r.opt->load_state(resumed.tensors);
      }
    } catch (const Error& e) {
      DF_FAIL(ckpt, ": cannot resume: ", e.what());
    }
    auto it = resumed.tensors.find("trainer.state");
    DF_CHECK(it != resumed.tensors.end() && it->second.numel() == 4, ckpt, ": trainer.state missing or malformed");
    std::vector<int64_t> s = it->second.to_vector_i64();
    r.step = s[0];
    r.batcher->set_state(data::BatcherState{s[1], s[2]});
    r.nonfinite_total = s[3];
    if (r.t_sampler) {
      auto l = resumed.tensors.find(kTSamplerLosses);
      auto c = resumed.tensors.find(kTSamplerCounts);
      const Shape want{r.t_sampler->T(), r.t_sampler->history()};
      DF_CHECK(l != resumed.tensors.end() && c != resumed.tensors.end() && l->second.dtype() == DType::f64 &&
                   l->second.shape() == want && c->second.shape() == Shape{r.t_sampler->T()},
               ckpt, ": the importance sampler's loss history (", kTSamplerLosses, ", ", kTSamplerCounts,
               ") is missing or malformed; cannot resume a run with t_sampling importance");
      diffusion::LossSecondMomentResampler::State st;
      st.losses.assign(l->second.data<double>(), l->second.data<double>() + l->second.numel());
      st.counts = c->second.to_vector_i64();
      try {
        r.t_sampler->set_state(st);
      } catch (const Error& e) {
        DF_FAIL(ckpt, ": cannot resume: ", e.message());
      }
    }
    if (cb.on_message) cb.on_message("resumed from " + ckpt + " at step " + std::to_string(r.step));
  }
  resumed = SafeTensors();

  // The CSV log: appended on resume, so one file tells the whole run.
  std::string log_path = (fs::path(cfg.out_dir) / "log.csv").string();
  bool new_log = !resuming || !fs::exists(log_path);
  std::ofstream log(log_path, new_log ? std::ios::trunc : std::ios::app);
  DF_CHECK(log.good(), "cannot write ", log_path);
  if (new_log) log << "step,loss,grad_norm,lr,images_per_s,nonfinite_skipped\n";
  folder.keep();

  const int B = cfg.batch;
  int64_t consecutive_bad = 0;
  auto lr_at = [&](int64_t t) { return r.dev ? r.dev->lr_at(t) : r.opt->lr_at(t); };
  auto t_last = std::chrono::steady_clock::now();
  double loss_acc = 0;
  int64_t loss_n = 0, since_log = 0;
  Tensor x, labels;

  // One step's outcome, taken in step order: on the cpu right after the step; on a GPU once its
  // loss and norm reach the host (device_trainer.h), a step or more later, so that the loop does
  // not wait for the device; a checkpoint, a sample grid and the end wait for the last ones.
  // `step` counts the steps done with it (1-based).
  auto account = [&](int64_t step, double lv, double gnorm, bool ok) {
    if (ok) {
      consecutive_bad = 0;
      loss_acc += lv;
      ++loss_n;
    } else {
      // A non-finite loss or gradient: skip the update, keep the weights, count it.
      ++r.nonfinite_total;
      DF_CHECK(++consecutive_bad < cfg.max_nonfinite, "the loss or gradient was not finite for ", consecutive_bad,
               " consecutive steps (at step ", step, "); stopping. Lower --lr or raise --grad-clip; the last "
               "checkpoint (", ckpt, ") holds finite weights");
    }
    ++since_log;
    if (step % cfg.log_every == 0 || step == cfg.steps) {
      auto now = std::chrono::steady_clock::now();
      double dt = std::chrono::duration<double>(now - t_last).count();
      t_last = now;
      StepStats st{step, loss_n ? loss_acc / loss_n : NAN, gnorm, lr_at(step),
                   dt > 0 ? since_log * B / dt : 0, r.nonfinite_total, cfg.steps};
      log << st.step << ',' << st.loss << ',' << st.grad_norm << ',' << st.lr << ',' << st.images_per_s << ','
          << st.nonfinite_skipped << '\n';
      log.flush();
      if (cb.on_step) cb.on_step(st);
      loss_acc = 0;
      loss_n = 0;
      since_log = 0;
    } else if (cb.on_step) {
      cb.on_step(StepStats{step, lv, gnorm, lr_at(step), 0, r.nonfinite_total, cfg.steps});
    }
  };
  auto take_device_results = [&](bool wait) {
    if (!r.dev) return;
    while (std::optional<DeviceTrainer::Result> d = wait ? r.dev->wait() : r.dev->poll())
      account(d->step, d->loss, d->grad_norm, d->applied);
  };

  while (r.step < cfg.steps) {
    if (cb.should_stop && cb.should_stop()) break;
    data::Batch batch = r.batcher->next();
    const int64_t s = r.step;
    if (r.dev) {
      // The whole step on the GPU; it skips a non-finite step itself (device_trainer.h).
      r.dev->step(batch.images);
      ++r.step;
      take_device_results(false);
    } else {
      double lv = 0, gnorm = 0;
      bool ok = false;
      x = batch.images.to(r.device);
      labels = batch.labels;
      Tensor y;
      if (r.unet->config().num_classes > 0) {
        // Classifier-free guidance: a share of the labels becomes the null class.
        std::vector<int64_t> l = labels.to_vector_i64();
        for (int b = 0; b < B; ++b)
          if (philox_uniform(cfg.seed, stream(s, kLabelDrop), static_cast<uint64_t>(b)) < cfg.label_dropout)
            l[b] = r.unet->config().num_classes;
        y = Tensor::from_vector_i64(l, {B}, r.device);
      }
      r.unet->set_dropout_seed(cfg.seed ^ stream(s, kDropout));
      LossRecord record;
      ag::Var loss = vdm ? vdm_step_loss(r, x, y, s) : ddpm_step_loss(r, x, y, s, r.t_sampler ? &record : nullptr);
      lv = loss.value().item();
      ok = std::isfinite(lv);
      if (ok) {
        ag::backward(loss);
        gnorm = clip_grad_norm(params, cfg.grad_clip > 0 ? cfg.grad_clip : 1e30);
        ok = std::isfinite(gnorm);
      } else {
        ag::clear_tape();
      }
      if (ok) r.opt->step(r.ema.get());
      // A skipped step leaves the loss history as it was, as it leaves the weights.
      if (ok && r.t_sampler) r.t_sampler->update(record.t, record.losses);
      r.opt->zero_grad();
      ++r.step;
      account(r.step, lv, gnorm, ok);
    }

    const bool checkpoint_now = cfg.checkpoint_every > 0 && r.step % cfg.checkpoint_every == 0 && r.step < cfg.steps;
    const bool samples_now = cfg.sample_every > 0 && r.step % cfg.sample_every == 0 && r.step < cfg.steps;
    if (checkpoint_now || samples_now) take_device_results(true);
    if (checkpoint_now) {
      write_checkpoint(r);
      if (cb.on_message) cb.on_message("checkpoint " + ckpt + " (step " + std::to_string(r.step) + ")");
    }
    if (samples_now) {
      std::string png = (fs::path(cfg.out_dir) / ("samples_" + std::to_string(r.step) + ".png")).string();
      write_png_grid(png, sample_grid(r, r.step), 2);
      if (cb.on_message) cb.on_message("samples " + png);
    }
  }
  take_device_results(true);
  write_checkpoint(r);
  if (cb.on_message) cb.on_message("checkpoint " + ckpt + " (step " + std::to_string(r.step) + ")");
  if (r.step >= cfg.steps) {
    std::string png = (fs::path(cfg.out_dir) / "samples_final.png").string();
    write_png_grid(png, sample_grid(r, r.step), 2);
    if (cb.on_message) cb.on_message("samples " + png);
  }
  return ckpt;
}

}  // namespace diffuse::train
