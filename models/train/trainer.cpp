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

#include "autograd/tape.h"
#include "core/allocator.h"
#include "core/check.h"
#include "core/file_io.h"
#include "core/image_io.h"
#include "core/json_util.h"
#include "core/safetensors.h"
#include "models/data/dataset.h"
#include "models/diffusion/objective.h"
#include "models/diffusion/sampler.h"
#include "models/diffusion/schedule.h"
#include "models/train/autoencoder_trainer.h"
#include "models/train/cpu_stepper.h"
#include "models/train/device_trainer.h"
#include "models/train/run_folder.h"
#include "models/train/super_res.h"

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

namespace {

// `t` repeated k times along the batch.
Tensor repeat_rows(const Tensor& t, int64_t k) {
  if (k == 1) return t;
  std::vector<int64_t> dims = t.shape().vec();
  const int64_t n = dims[0];
  dims[0] = n * k;
  Tensor out = Tensor::empty(Shape(dims), t.dtype(), t.device());
  for (int64_t i = 0; i < k; ++i) out.slice(i * n, (i + 1) * n).copy_(t);
  return out;
}

}  // namespace

diffusion::Denoiser make_denoiser(std::shared_ptr<nn::UNet> unet, int timesteps, Device device, bool with_variance,
                                  const nn::LowRes& low) {
  const bool learned = unet->config().learn_sigma;
  DF_CHECK(!with_variance || learned, "make_denoiser: the variance channels were asked for, but the UNet has no "
           "learned variance (learn_sigma)");
  const Tensor image = low.defined() ? low.image.value().to(device) : Tensor();
  const Tensor level = low.defined() ? low.level.to(device) : Tensor();
  return [unet, timesteps, device, learned, with_variance, image, level](const Tensor& z, const Tensor& t,
                                                                         const Tensor& labels) {
    const int64_t B = z.size(0);
    std::vector<float> steps = t.to_vector();
    for (float& v : steps) v = v * static_cast<float>(timesteps) - 1.f;
    Tensor tt = Tensor::from_vector(steps, {static_cast<int64_t>(steps.size())}, device);
    nn::LowRes cond;
    if (image.defined()) {
      const int64_t n = image.size(0);
      DF_CHECK(n > 0 && B % n == 0, "super-resolution denoiser: a batch of ", B, " for ", n, " low-resolution images");
      cond = nn::LowRes{ag::Var(repeat_rows(image, B / n)), repeat_rows(level, B / n)};
    }
    // Labels on the cpu: forward() checks them there and moves their ids to the device.
    ag::Var out = unet->forward(ag::Var(z.to(device)), tt, labels.defined() ? labels.to(Device::cpu()) : labels, cond);
    Tensor host = out.value().to(Device::cpu());
    if (learned && !with_variance) return diffusion::split_learned_variance(host).first;
    return host;
  };
}

namespace {

std::string idx_file(const std::string& dir, const std::string& stem) {
  for (const char* ext : {"-ubyte.gz", "-ubyte", ".gz", ""}) {
    std::string p = (fs::path(dir) / (stem + ext)).string();
    if (fs::exists(p)) return p;
  }
  DF_FAIL("dataset folder ", dir, " has no ", stem, "-ubyte[.gz]");
}

// "@size" ends a spec: removed from `text` and returned (0 when there is none). An '@' inside a
// path (one followed by a '/') is part of the path.
int take_size_suffix(std::string& text, const std::string& spec) {
  const auto at = text.rfind('@');
  if (at == std::string::npos || text.find('/', at) != std::string::npos) return 0;
  const std::string size = text.substr(at + 1);
  int v = 0;
  const auto [end, ec] = std::from_chars(size.data(), size.data() + size.size(), v);
  DF_CHECK(!size.empty() && ec == std::errc() && end == size.data() + size.size() && v >= 1 && v <= 4096,
           "dataset '", spec, "': the size after '@' must be a whole number of pixels from 1 to 4096, not '", size,
           "' (images:<dir>@64 resizes every image to 64x64; fashion-mnist@14 area-averages to 14x14)");
  text = text.substr(0, at);
  return v;
}

// A set of fixed-size images area-averaged down to size x size (the native size divided by a power
// of two: each output pixel the mean of the block it covers, no interpolation to choose).
data::Dataset area_resized(data::Dataset d, int size, const std::string& spec) {
  const int64_t H = d.images.size(1), W = d.images.size(2);
  const int64_t f = H % size == 0 ? H / size : 0;
  DF_CHECK(H == W && f > 0 && (f & (f - 1)) == 0, "dataset '", spec, "': its ", H, "x", W, " images area-average "
           "only to their size divided by a power of two (", H, ", ", H / 2, ", ", H / 4, ", ...), not to ", size);
  if (f > 1) d.images = nn::area_downsample(d.images, static_cast<int>(f));
  return d;
}

}  // namespace

data::Dataset load_dataset(const std::string& spec, const std::string& split, const DatasetOptions& options) {
  std::string kind = spec, arg;
  if (auto colon = spec.find(':'); colon != std::string::npos) {
    kind = spec.substr(0, colon);
    arg = spec.substr(colon + 1);
  }
  // A fixed-size source with "@size" (fashion-mnist@14, mnist:<dir>@7): loaded, then area-averaged.
  if (kind != "images") {
    std::string plain = spec;
    if (const int size = take_size_suffix(plain, spec); size > 0)
      return area_resized(load_dataset(plain, split, options), size, spec);
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
    if (const int size = take_size_suffix(arg, spec); size > 0) o.size = size;
    return with_split(data::load_image_folder(arg, o), "all");
  }
  DF_FAIL("unknown dataset '", spec, "' (expected fashion-mnist[:dir], mnist:<dir>, idx:<images>,<labels>, "
          "cifar10:<path> or images:<dir>[@size]; any of them with @size)");
}

namespace {

std::string checkpoint_path(const TrainConfig& c) { return (fs::path(c.out_dir) / "checkpoint.safetensors").string(); }

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
  DF_CHECK(m.unet->config().low_res_size == m.config.super_res, path, ": the UNet's low_res_size (",
           m.unet->config().low_res_size, ") is not the training config's super_res (", m.config.super_res, ")");
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
  // A latent model: its autoencoder and scale, and the UNet's input must be its latents.
  const bool has_ae = st.metadata.count("autoencoder") > 0;
  DF_CHECK(has_ae == !m.config.autoencoder.empty(), path, ": ",
           has_ae ? "an autoencoder is stored but the training config names none"
                  : "the training config names an autoencoder but none is stored (metadata 'autoencoder')");
  if (has_ae) {
    m.autoencoder = autoencoder_from(st, path);
    const std::string scale = meta("latent_scale");
    const auto [send, sec] = std::from_chars(scale.data(), scale.data() + scale.size(), m.latent_scale);
    DF_CHECK(sec == std::errc() && send == scale.data() + scale.size() && std::isfinite(m.latent_scale) &&
                 m.latent_scale > 0,
             path, ": malformed latent_scale '", scale, "' in the checkpoint metadata");
    const nn::AutoencoderConfig& ac = m.autoencoder->config();
    const nn::UNetConfig& uc = m.unet->config();
    DF_CHECK(uc.image_size == ac.latent_size() && uc.in_channels == ac.latent_channels &&
                 uc.out_channels == ac.latent_channels,
             path, ": the UNet takes ", uc.image_size, "x", uc.image_size, "x", uc.in_channels,
             " inputs but the autoencoder's latents are ", ac.latent_size(), "x", ac.latent_size(), "x",
             ac.latent_channels);
    m.autoencoder->to(device);
  }
  m.unet->to(device);
  m.unet->eval();
  m.nonfinite = std::move(nonfinite);
  return m;
}

// ---- the run -----------------------------------------------------------------------------------

namespace {

// A training run: its config (a resumed run's stored one), data and model, the step on its device,
// and where the loop stands.
struct Run {
  TrainConfig cfg;
  std::string ckpt;  // the checkpoint's path
  Device device;
  data::Dataset data;
  std::shared_ptr<nn::UNet> unet;
  std::shared_ptr<nn::SNRNet> snr;  // vdm with the learned schedule: trained by the same optimizer
  std::shared_ptr<const diffusion::Schedule> continuous;  // vdm: the schedule the sample grids use
  diffusion::DiscreteSchedule schedule = diffusion::DiscreteSchedule::linear(2);  // the other objectives'
  std::unique_ptr<Stepper> stepper;  // CpuStepper, or DeviceTrainer on a GPU: the step, AdamW, the EMA
  std::unique_ptr<data::Batcher> batcher;
  // Latent diffusion (--autoencoder): the first stage, and the factor that scales its posterior
  // means to unit variance (open_autoencoder); data.images keeps the images.
  std::shared_ptr<nn::Autoencoder> ae;
  double latent_scale = 1;
  Shape latent_shape;  // (N, h, w, c) of the data set's latents
  int64_t step = 0;
  int64_t nonfinite_total = 0;
};

// A missing GPU, or an option its step lacks, fails before anything is written; a resumed run's
// stored options are checked once read (open).
void check_device_first(const TrainConfig& cfg, bool resuming) {
  if (resuming)
    (void)resolve_device(cfg.device);
  else
    (void)choose_training_device(cfg, cuda_available());
  if (cfg.device == "auto" && !cuda_available()) (void)resolve_device("auto");  // its one notice: no GPU, and why
}

// The checkpoint a run resumes from, refused when it holds a non-finite tensor, and the config the
// run continues with: the stored one, where only how long, how often and where may change.
TrainConfig read_resumable(const std::string& ckpt, const TrainConfig& given, SafeTensors& resumed) {
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
  stored.steps = given.steps;
  stored.epochs = given.epochs;
  stored.log_every = given.log_every;
  stored.sample_every = given.sample_every;
  stored.checkpoint_every = given.checkpoint_every;
  stored.device = given.device;
  stored.cuda_graph = given.cuda_graph;
  stored.out_dir = given.out_dir;
  return stored;
}

// Latent diffusion: the autoencoder (the resumed checkpoint's own, or the file --autoencoder names)
// and the scale factor s = 1 / std of its posterior means over every element of the first
// kScaleImages training images (LDM's scale_factor, which LDM measures on one batch), so that the
// latents s mu(x) the UNet learns have unit variance, as the noise schedule assumes. A resumed run
// reads the factor it stored. Each batch is encoded when it is drawn (latents_of): the posterior
// mean, not a draw from it, since with a KL weight of 1e-6 the posterior is far narrower than the
// data's spread, and a fixed encoding keeps the data a function of the checkpoint alone; a short
// run encodes no more images than it trains on, and none before its first step.
constexpr int64_t kScaleImages = 2048;

void open_autoencoder(Run& r, const SafeTensors* resumed, const TrainCallbacks& cb) {
  const TrainConfig& cfg = r.cfg;
  cfg.validate();  // what a latent run cannot do (--flip) is refused there, for callers of train() too
  if (resumed) {
    r.ae = autoencoder_from(*resumed, r.ckpt);
    auto it = resumed->metadata.find("latent_scale");
    DF_CHECK(it != resumed->metadata.end(), r.ckpt, ": no latent_scale in the checkpoint; cannot resume");
    const std::string& text = it->second;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), r.latent_scale);
    DF_CHECK(ec == std::errc() && end == text.data() + text.size() && std::isfinite(r.latent_scale) &&
                 r.latent_scale > 0,
             r.ckpt, ": malformed latent_scale '", text, "'; cannot resume");
  } else {
    r.ae = load_autoencoder(cfg.autoencoder).net;
  }
  const nn::AutoencoderConfig& ac = r.ae->config();
  const Shape& s = r.data.images.shape();
  DF_CHECK(s.rank() == 4 && s[1] == ac.image_size && s[2] == ac.image_size && s[3] == ac.in_channels, "dataset ",
           cfg.dataset, ": images are ", s.str(), " but the autoencoder takes ", ac.image_size, "x", ac.image_size,
           "x", ac.in_channels);
  r.latent_shape = Shape{s[0], ac.latent_size(), ac.latent_size(), ac.latent_channels};
  if (!resumed) {
    const Tensor z = encode_means(*r.ae, r.data.images.slice(0, std::min(kScaleImages, s[0])));
    const float* p = z.data<float>();
    const int64_t n = z.numel();
    double mean = 0, sq = 0;
    for (int64_t i = 0; i < n; ++i) mean += p[i];
    mean /= static_cast<double>(n);
    for (int64_t i = 0; i < n; ++i) sq += (p[i] - mean) * (p[i] - mean);
    const double sd = std::sqrt(sq / static_cast<double>(std::max<int64_t>(n - 1, 1)));
    DF_CHECK(std::isfinite(sd) && sd > 0, "the autoencoder's latents of ", cfg.dataset, " have standard deviation ",
             sd, "; cannot scale them to unit variance");
    r.latent_scale = 1 / sd;
  }
  if (cb.on_message) {
    char line[200];
    std::snprintf(line, sizeof line, "latent diffusion: %dx%dx%d latents, scale factor %.6g", ac.latent_size(),
                  ac.latent_size(), ac.latent_channels, r.latent_scale);
    cb.on_message(line);
  }
}

// A batch of images as the scaled latents the UNet learns: s mu(x).
data::Batch latents_of(const Run& r, data::Batch b) {
  Tensor z = encode_means(*r.ae, b.images);
  float* p = z.data<float>();
  for (int64_t i = 0; i < z.numel(); ++i) p[i] = static_cast<float>(p[i] * r.latent_scale);
  b.images = z;
  return b;
}

// The run's device, data and model, and its step there.
void open(Run& r, const SafeTensors* resumed, const TrainCallbacks& cb) {
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
  if (!cfg.autoencoder.empty()) open_autoencoder(r, resumed, cb);
  const Shape ishape = r.ae ? r.latent_shape : r.data.images.shape();  // what the UNet learns
  DF_CHECK(ishape[1] == ishape[2], "dataset ", cfg.dataset, ": images are ", ishape[1], "x", ishape[2],
           "; the UNet needs square images");
  DF_CHECK(!cfg.class_cond || r.data.num_classes > 0, "--class-cond: dataset ", cfg.dataset, " has no labels");
  nn::UNetConfig unet_config;
  try {
    unet_config = cfg.unet_config(static_cast<int>(ishape[1]), static_cast<int>(ishape[3]), r.data.num_classes,
                                  r.data.class_names);
  } catch (const Error& e) {
    if (!r.ae) throw;
    DF_FAIL(e.message(), " (the UNet's inputs are the autoencoder's ", ishape[1], "x", ishape[2], "x", ishape[3],
            " latents: choose a preset whose levels fit them, e.g. --preset latent for 7x7, or give --model "
            "'{\"channel_mult\": [1]}')");
  }
  r.unet = std::make_shared<nn::UNet>(unet_config, cfg.seed);
  r.unet->to(r.device);
  r.unet->train();
  if (continuous_time(cfg)) {
    r.snr = make_snr_net(cfg);
    if (r.snr) {
      r.snr->to(r.device);
      r.continuous = std::make_shared<nn::SNRSchedule>(r.snr);
    } else {
      r.continuous = std::make_shared<diffusion::LinearLogSNR>(kVdmGammaMin, kVdmGammaMax);
    }
  } else {
    r.schedule = make_schedule(cfg);
  }
  if (r.device.is_cuda()) {
    r.stepper = std::make_unique<DeviceTrainer>(r.unet, cfg);
    if (cb.on_message)
      cb.on_message("the whole step on " + r.device.str() + (cfg.cuda_graph ? ", captured as a CUDA graph" : ""));
  } else {
    r.stepper = std::make_unique<CpuStepper>(cfg, r.unet, r.snr, r.continuous);
  }
  data::BatcherOptions bo;
  bo.batch_size = cfg.batch;
  bo.seed = cfg.seed;
  bo.random_flip = cfg.flip;
  DF_CHECK(r.data.size() >= cfg.batch, "dataset ", cfg.dataset, " has ", r.data.size(), " images, fewer than --batch ",
           cfg.batch);
  r.batcher = std::make_unique<data::Batcher>(r.data, bo);
}

// The weights, the step's state (AdamW, the EMA, ...) and where the loop stood, from the checkpoint.
void restore(Run& r, const SafeTensors& resumed, const TrainCallbacks& cb) {
  try {
    r.unet->load_state(with_prefix(resumed.tensors, "model."));
    if (r.snr) r.snr->load_state(with_prefix(resumed.tensors, "snr."));
    r.stepper->load_state(resumed.tensors);
  } catch (const Error& e) {
    DF_FAIL(r.ckpt, ": cannot resume: ", e.message());
  }
  auto it = resumed.tensors.find("trainer.state");
  DF_CHECK(it != resumed.tensors.end() && it->second.numel() == 4, r.ckpt, ": trainer.state missing or malformed");
  std::vector<int64_t> s = it->second.to_vector_i64();
  r.step = s[0];
  r.batcher->set_state(data::BatcherState{s[1], s[2]});
  r.nonfinite_total = s[3];
  if (cb.on_message) cb.on_message("resumed from " + r.ckpt + " at step " + std::to_string(r.step));
}

void write_checkpoint(Run& r, const TrainCallbacks& cb) {
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
  for (auto& entry : r.stepper->state()) tensors.push_back(std::move(entry));
  data::BatcherState bs = r.batcher->state();
  tensors.emplace_back("trainer.state", Tensor::from_vector_i64({r.step, bs.epoch, bs.position, r.nonfinite_total}, {4}));
  std::map<std::string, std::string> meta{{"format", "diffuse-checkpoint-1"},
                                          {"config", r.cfg.to_json().dump()},
                                          {"unet", r.unet->config().to_json().dump()},
                                          {"step", std::to_string(r.step)},
                                          {"num_classes", std::to_string(r.data.num_classes)}};
  if (r.ae) {
    // The autoencoder travels with the model, so sampling needs no other file.
    for (auto& [name, var] : r.ae->named_parameters()) tensors.emplace_back("autoencoder." + name, var.value());
    meta["autoencoder"] = r.ae->config().to_json().dump();
    char scale[40];
    std::snprintf(scale, sizeof scale, "%.17g", r.latent_scale);  // reads back to the same double
    meta["latent_scale"] = scale;
  }
  write_safetensors_atomic(r.ckpt, tensors, meta);
  if (cb.on_message) cb.on_message("checkpoint " + r.ckpt + " (step " + std::to_string(r.step) + ")");
}

// A PNG grid of EMA samples, out_dir/<name>.png: the same noise at every grid, so grids show progress.
void write_samples(Run& r, const std::string& name, const TrainCallbacks& cb) {
  r.stepper->swap_ema();  // EMA weights in, sample, live weights back
  Tensor x;
  {
    ag::NoGrad ng;
    r.unet->eval();
    diffusion::SamplerOptions o;
    const Shape shape = r.ae ? r.latent_shape : r.data.images.shape();
    o.shape = Shape{r.cfg.sample_count, shape[1], shape[2], shape[3]};
    o.seed = r.cfg.seed + 1;
    o.steps = r.cfg.sample_steps;
    o.prediction = prediction_of(r.cfg);
    o.clip_x0 = !r.ae;  // latents have no [-1, 1] range to clip to
    if (r.unet->config().num_classes > 0) {
      std::vector<int64_t> labels(static_cast<size_t>(r.cfg.sample_count));
      for (size_t i = 0; i < labels.size(); ++i) labels[i] = static_cast<int64_t>(i) % r.unet->config().num_classes;
      o.labels = Tensor::from_vector_i64(labels, {r.cfg.sample_count});
    }
    diffusion::Denoiser f;
    if (r.unet->config().super_res()) {
      // Conditioned on the first training images, area-averaged down and augmented to the level
      // `diffuse sample --cascade` uses by default (super_res.h).
      const int64_t n = r.cfg.sample_count, N = r.data.size();
      Tensor x0 = Tensor::empty(o.shape);
      for (int64_t i = 0; i < n; ++i) x0.slice(i, i + 1).copy_(r.data.images.slice(i % N, i % N + 1));
      const Tensor low = nn::area_downsample(x0, r.unet->config().low_res_factor());
      f = make_sr_denoiser(r.unet, r.cfg.timesteps, r.device,
                           augment_low_res(low, std::vector<double>(static_cast<size_t>(n), kDefaultAugLevel),
                                           r.schedule, r.cfg.timesteps, aug_seed(o.seed), 0));
    } else {
      f = make_denoiser(r.unet, r.cfg.timesteps, r.device);
    }
    // vdm: VDM's own ancestral sampler on the (EMA) learned schedule.
    x = r.continuous ? diffusion::sample(diffusion::SamplerKind::vdm, *r.continuous, f, o)
                     : diffusion::sample(diffusion::SamplerKind::ddim, r.schedule, f, o);
    if (r.ae) x = decode_latents(*r.ae, x, r.latent_scale);
    r.unet->train();
  }
  r.stepper->swap_ema();
  const std::string png = (fs::path(r.cfg.out_dir) / (name + ".png")).string();
  write_png_grid(png, x, 2);
  if (cb.on_message) cb.on_message("samples " + png);
}

// Each step's outcome, taken in step order (stepper.h): the count of non-finite steps (too many in
// a row stop the run), the CSV log (appended on resume, so one file tells the whole run) and the
// per-step callback. `step` counts the steps done with it (1-based).
class RunLog {
 public:
  RunLog(Run& r, bool resuming, const TrainCallbacks& cb) : r_(r), cb_(cb) {
    const std::string path = (fs::path(r.cfg.out_dir) / "log.csv").string();
    const bool fresh = !resuming || !fs::exists(path);
    file_.open(path, fresh ? std::ios::trunc : std::ios::app);
    DF_CHECK(file_.good(), "cannot write ", path);
    if (fresh) file_ << "step,loss,grad_norm,lr,images_per_s,nonfinite_skipped\n";
  }

  // The results the step has ready (wait: every result, waiting for the device).
  void take(bool wait) {
    while (std::optional<Stepper::Result> res = wait ? r_.stepper->wait() : r_.stepper->poll()) account(*res);
  }

 private:
  void account(const Stepper::Result& res) {
    const TrainConfig& cfg = r_.cfg;
    if (res.applied) {
      consecutive_bad_ = 0;
      loss_acc_ += res.loss;
      ++loss_n_;
    } else {
      // A non-finite loss or gradient: the step changed nothing; count it.
      ++r_.nonfinite_total;
      DF_CHECK(++consecutive_bad_ < cfg.max_nonfinite, "the loss or gradient was not finite for ", consecutive_bad_,
               " consecutive steps (at step ", res.step, "); stopping. Lower --lr or raise --grad-clip; the last "
               "checkpoint (", r_.ckpt, ") holds finite weights");
    }
    ++since_log_;
    const double lr = r_.stepper->lr_at(res.step);
    if (res.step % cfg.log_every == 0 || res.step == cfg.steps) {
      const auto now = std::chrono::steady_clock::now();
      const double dt = std::chrono::duration<double>(now - t_last_).count();
      t_last_ = now;
      StepStats st{res.step, loss_n_ ? loss_acc_ / loss_n_ : NAN, res.grad_norm, lr,
                   dt > 0 ? since_log_ * cfg.batch / dt : 0, r_.nonfinite_total, cfg.steps};
      file_ << st.step << ',' << st.loss << ',' << st.grad_norm << ',' << st.lr << ',' << st.images_per_s << ','
            << st.nonfinite_skipped << '\n';
      file_.flush();
      if (cb_.on_step) cb_.on_step(st);
      loss_acc_ = 0;
      loss_n_ = 0;
      since_log_ = 0;
    } else if (cb_.on_step) {
      cb_.on_step(StepStats{res.step, res.loss, res.grad_norm, lr, 0, r_.nonfinite_total, cfg.steps});
    }
  }

  Run& r_;
  const TrainCallbacks& cb_;
  std::ofstream file_;
  std::chrono::steady_clock::time_point t_last_ = std::chrono::steady_clock::now();
  double loss_acc_ = 0;
  int64_t loss_n_ = 0, since_log_ = 0, consecutive_bad_ = 0;
};

}  // namespace

std::string train(const TrainConfig& cfg_in, bool resume, const TrainCallbacks& cb) {
  Run r;
  r.cfg = cfg_in;
  r.ckpt = checkpoint_path(cfg_in);
  const bool resuming = resume && fs::exists(r.ckpt);
  check_device_first(cfg_in, resuming);
  OutputFolder folder(cfg_in.out_dir);  // until keep(), a refusal leaves the disk as it was
  remove_stale_temporaries(cfg_in.out_dir, "checkpoint.safetensors");
  SafeTensors resumed;
  if (resuming) r.cfg = read_resumable(r.ckpt, cfg_in, resumed);
  open(r, resuming ? &resumed : nullptr, cb);
  if (resuming) restore(r, resumed, cb);
  resumed = SafeTensors();
  RunLog log(r, resuming, cb);
  folder.keep();

  const TrainConfig& cfg = r.cfg;
  while (r.step < cfg.steps && !(cb.should_stop && cb.should_stop())) {
    r.stepper->step(r.ae ? latents_of(r, r.batcher->next()) : r.batcher->next(), r.step);
    ++r.step;
    log.take(false);
    const bool checkpoint_now = cfg.checkpoint_every > 0 && r.step % cfg.checkpoint_every == 0 && r.step < cfg.steps;
    const bool samples_now = cfg.sample_every > 0 && r.step % cfg.sample_every == 0 && r.step < cfg.steps;
    if (checkpoint_now || samples_now) log.take(true);  // what they write waits for the steps before
    if (checkpoint_now) write_checkpoint(r, cb);
    if (samples_now) write_samples(r, "samples_" + std::to_string(r.step), cb);
  }
  log.take(true);
  write_checkpoint(r, cb);
  if (r.step >= cfg.steps) write_samples(r, "samples_final", cb);
  return r.ckpt;
}

}  // namespace diffuse::train
