#include "models/train/autoencoder_trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "autograd/elementwise.h"
#include "autograd/tape.h"
#include "core/allocator.h"
#include "core/check.h"
#include "core/image_io.h"
#include "core/json_util.h"
#include "models/data/dataset.h"
#include "models/train/config.h"
#include "models/train/model_run.h"
#include "models/train/optim.h"
#include "models/train/run_folder.h"
#include "models/train/trainer.h"

namespace diffuse::train {

namespace fs = std::filesystem;

namespace {

constexpr const char* kFormat = "diffuse-autoencoder-1";
constexpr const char* kCheckpointName = "autoencoder.safetensors";
constexpr int kGridPairs = 16;  // inputs and reconstructions in each checkpoint's PNG grid

template <class C, class F>
void visit_fields(C& c, F&& f) {
  f("kl_weight", c.kl_weight);
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

// The run's draws (model_run.h): the posterior's from (seed, run_stream(step, kPosterior)).
constexpr uint64_t kPosterior = 1;

// One step's loss (autoencoder_trainer.h), with its two terms per pixel for the log.
struct Loss {
  ag::Var total;
  double mse = 0, kl = 0;
};
Loss autoencoder_loss(nn::Autoencoder& ae, const Tensor& x, double kl_weight, uint64_t seed, uint64_t offset) {
  auto [mean, logvar] = ae.encode(ag::Var(x));
  // z = mu + sigma eps, eps ~ N(0, I) from the step's own Philox stream.
  const Tensor eps = Tensor::randn(mean.shape(), seed, offset, x.device());
  ag::Var z = ag::add(mean, ag::mul(ag::exp(ag::mul_scalar(logvar, 0.5)), ag::Var(eps)));
  ag::Var rec = ag::mse(ae.decode(z), ag::Var(x));  // mean over pixels and batch: ||x - x_hat||^2 / D
  const double D = static_cast<double>(x.numel() / x.size(0));
  ag::Var kl = ag::mul_scalar(ag::mean_all(nn::gaussian_kl(mean, logvar)), 1.0 / D);  // KL per sample / D
  Loss l;
  l.total = ag::add(rec, ag::mul_scalar(kl, kl_weight));
  l.mse = rec.value().item();
  l.kl = kl.value().item();
  return l;
}

// Inputs and their reconstructions (posterior means), 8 to a row: a row of inputs, then the row
// of their reconstructions below it.
void write_reconstruction_grid(nn::Autoencoder& ae, const Tensor& images, const std::string& path) {
  const int64_t n = std::min<int64_t>(kGridPairs, images.size(0));
  const Tensor x = images.slice(0, n);
  const Tensor mean = encode_means(ae, x);
  const Tensor rec = decode_latents(ae, mean, 1.0);
  const int64_t cols = std::min<int64_t>(8, n);
  Shape s = x.shape();
  const int64_t rows = (n + cols - 1) / cols;
  s[0] = 2 * rows * cols;
  Tensor grid = Tensor::full(s, 1.0);  // white where a row is short
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t b = r * cols, e = std::min(n, b + cols);
    grid.slice(2 * r * cols, 2 * r * cols + (e - b)).copy_(x.slice(b, e));
    grid.slice((2 * r + 1) * cols, (2 * r + 1) * cols + (e - b)).copy_(rec.slice(b, e));
  }
  write_png(path, make_grid(grid, 2, 2, static_cast<int>(cols)));
}

}  // namespace

// ---- config ------------------------------------------------------------------------------------

nlohmann::json AutoencoderTrainConfig::to_json() const {
  nlohmann::json j;
  visit_fields(*this, [&](const char* key, const auto& field) { j[key] = field; });
  j["model"] = model;
  return j;
}

AutoencoderTrainConfig AutoencoderTrainConfig::from_json(const nlohmann::json& j) {
  DF_CHECK(j.is_object(), "autoencoder config: expected a JSON object");
  AutoencoderTrainConfig c;
  const nlohmann::json known = c.to_json();
  for (auto it = j.begin(); it != j.end(); ++it)
    DF_CHECK(known.contains(it.key()), "autoencoder config: unknown key '", it.key(), "'");
  visit_fields(c, [&](const char* key, auto& field) {
    if (j.contains(key) && !json_to(j.at(key), field))
      DF_FAIL("autoencoder config: key '", key, "' has the wrong type or is out of range: ", json_brief(j.at(key)));
  });
  if (j.contains("model")) {
    DF_CHECK(j["model"].is_object(), "autoencoder config: 'model' must be an object of autoencoder keys");
    c.model = j["model"];
  }
  c.validate();
  return c;
}

void AutoencoderTrainConfig::validate() const {
  DF_CHECK(kl_weight >= 0 && std::isfinite(kl_weight), "train-autoencoder: --kl-weight must be >= 0");
  DF_CHECK(lr > 0 && std::isfinite(lr), "train-autoencoder: --lr must be positive");
  DF_CHECK(weight_decay >= 0 && std::isfinite(weight_decay), "train-autoencoder: --weight-decay must be >= 0");
  DF_CHECK(warmup >= 0 && grad_clip >= 0 && std::isfinite(grad_clip),
           "train-autoencoder: --warmup and --grad-clip must be >= 0");
  DF_CHECK(batch >= 1 && batch <= 65536, "train-autoencoder: --batch must be in [1, 65536], not ", batch);
  DF_CHECK(steps >= 1, "train-autoencoder: --steps must be at least 1");
  DF_CHECK(log_every >= 1 && checkpoint_every >= 0 && eval_count >= 0,
           "train-autoencoder: --log-every must be >= 1, --checkpoint-every and --eval-count >= 0");
  DF_CHECK(model.is_object(), "train-autoencoder: --model must be a JSON object of autoencoder keys");
  check_device_spec(device, "autoencoder config");
}

nn::AutoencoderConfig AutoencoderTrainConfig::autoencoder_config(int image_size, int channels) const {
  nlohmann::json j = nn::AutoencoderConfig{}.to_json();
  j["image_size"] = image_size;
  j["in_channels"] = channels;
  for (auto it = model.begin(); it != model.end(); ++it) j[it.key()] = it.value();
  return nn::AutoencoderConfig::from_json(j);
}

// ---- encoding and decoding -----------------------------------------------------------------------

Tensor encode_means(nn::Autoencoder& ae, const Tensor& images, int batch) {
  const nn::AutoencoderConfig& c = ae.config();
  DF_CHECK(images.dim() == 4, "encode: images must be (N, H, W, C)");
  ag::NoGrad ng;
  const Device dev = ae.parameters().at(0).device();
  const int64_t n = images.size(0), s = c.latent_size();
  Tensor out = Tensor::empty({n, s, s, c.latent_channels});
  for (int64_t b = 0; b < n; b += batch) {
    const int64_t e = std::min<int64_t>(n, b + batch);
    out.slice(b, e).copy_(ae.encode(ag::Var(images.slice(b, e).to(dev))).first.value());
  }
  return out;
}

Tensor decode_latents(nn::Autoencoder& ae, const Tensor& latents, double scale, int batch) {
  const nn::AutoencoderConfig& c = ae.config();
  DF_CHECK(latents.dim() == 4, "decode: latents must be (N, h, w, C)");
  DF_CHECK(std::isfinite(scale) && scale > 0, "decode: the latent scale must be positive, not ", scale);
  ag::NoGrad ng;
  const Device dev = ae.parameters().at(0).device();
  const int64_t n = latents.size(0);
  Tensor out = Tensor::empty({n, c.image_size, c.image_size, c.in_channels});
  for (int64_t b = 0; b < n; b += batch) {
    const int64_t e = std::min<int64_t>(n, b + batch);
    ag::Var z(latents.slice(b, e).to(dev));
    if (scale != 1.0) z = ag::mul_scalar(z, 1.0 / scale);
    out.slice(b, e).copy_(ae.decode(z).value());
  }
  return out;
}

ReconstructionError reconstruction_error(nn::Autoencoder& ae, const Tensor& images, int batch) {
  ReconstructionError r;
  r.images = images.size(0);
  DF_CHECK(r.images > 0, "reconstruction_error: no images");
  double sq = 0;
  for (int64_t b = 0; b < r.images; b += batch) {
    const int64_t e = std::min<int64_t>(r.images, b + batch);
    const Tensor x = images.slice(b, e);
    const std::vector<float> xv = x.to_vector(), rv = decode_latents(ae, encode_means(ae, x, batch), 1.0, batch).to_vector();
    for (size_t i = 0; i < xv.size(); ++i) sq += (static_cast<double>(xv[i]) - rv[i]) * (static_cast<double>(xv[i]) - rv[i]);
  }
  r.mse = sq / static_cast<double>(images.numel());
  // On [0, 1] the error is mse / 4, and PSNR = 10 log10(1 / (mse / 4)).
  r.psnr = 10 * std::log10(4 / r.mse);
  return r;
}

// ---- the run -------------------------------------------------------------------------------------

std::string train_autoencoder(const AutoencoderTrainConfig& cfg_in, bool resume, const AutoencoderCallbacks& cb) {
  AutoencoderTrainConfig cfg = cfg_in;
  cfg.validate();
  const Device dev = resolve_device(cfg.device);  // a missing GPU is refused before anything is written
  OutputFolder folder(cfg.out_dir);  // until keep(), a refusal leaves the disk as it was
  remove_stale_temporaries(cfg.out_dir, kCheckpointName);
  const std::string ckpt = (fs::path(cfg.out_dir) / kCheckpointName).string();
  SafeTensors resumed;
  const bool resuming = resume && fs::exists(ckpt);
  if (resuming) {
    resumed = read_for_resume(ckpt, kFormat, "autoencoder");
    cfg = resumed_config(resumed, ckpt, cfg, "autoencoder");
  }
  data::Dataset data = load_dataset(cfg.dataset, "train");
  const Shape& ishape = data.images.shape();
  DF_CHECK(ishape.rank() == 4 && ishape[1] == ishape[2], "dataset ", cfg.dataset,
           ": the autoencoder needs square images");
  DF_CHECK(data.size() >= cfg.batch, "dataset ", cfg.dataset, " has ", data.size(), " images, fewer than --batch ",
           cfg.batch);
  auto net = std::make_shared<nn::Autoencoder>(
      cfg.autoencoder_config(static_cast<int>(ishape[1]), static_cast<int>(ishape[3])), cfg.seed);
  // The grids and the final score: the test split's first images (an image folder has none: its own).
  data::Dataset test = load_dataset(cfg.dataset, "test");
  auto params = net->named_parameters();
  AdamW opt(params, run_adamw(cfg.lr, cfg.weight_decay, cfg.warmup));
  // On a GPU: the replica that runs the passes, the grids and the score (model_run.h); `net` holds
  // the weights AdamW updates.
  std::shared_ptr<nn::Autoencoder> replica;
  NamedParams replica_params;
  if (dev.is_cuda()) {
    replica = std::make_shared<nn::Autoencoder>(net->config(), nn::Autoencoder::Undrawn{});
    replica->to(dev);
    replica_params = replica->named_parameters();
  }
  nn::Autoencoder& runner = replica ? *replica : *net;
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
  std::ofstream log = open_run_log((fs::path(cfg.out_dir) / "autoencoder_log.csv").string(), resuming,
                                   "step,loss,mse,kl,grad_norm,lr,images_per_s");
  folder.keep();
  if (replica && cb.on_message)
    cb.on_message("host-driven on " + dev.str() + ": the forward and backward passes on the device, AdamW on the cpu");

  auto write_checkpoint = [&] {
    write_run_checkpoint(ckpt, *net, opt, batcher, step,
                         {{"format", kFormat},
                          {"config", cfg.to_json().dump()},
                          {"autoencoder", net->config().to_json().dump()}});
    const std::string png = (fs::path(cfg.out_dir) / ("reconstructions_" + std::to_string(step) + ".png")).string();
    if (replica) copy_weights(params, replica_params);
    write_reconstruction_grid(runner, test.images, png);
    if (cb.on_message) cb.on_message("checkpoint " + ckpt + " (step " + std::to_string(step) + "), " + png);
  };

  double loss_acc = 0, mse_acc = 0, kl_acc = 0;
  int64_t n_acc = 0, since_log = 0;
  auto t_last = std::chrono::steady_clock::now();
  while (step < cfg.steps) {
    if (cb.should_stop && cb.should_stop()) break;
    data::Batch batch = batcher.next();
    if (replica) copy_weights(params, replica_params);
    Loss l = autoencoder_loss(runner, batch.images.to(dev), cfg.kl_weight, cfg.seed, run_stream(step, kPosterior));
    const double lv = l.total.value().item();
    const double gnorm = optimizer_step(l.total, params, opt, cfg.grad_clip, step, "autoencoder", ckpt,
                                        replica ? &replica_params : nullptr);
    ++step;
    loss_acc += lv;
    mse_acc += l.mse;
    kl_acc += l.kl;
    ++n_acc;
    ++since_log;
    if (step % cfg.log_every == 0 || step == cfg.steps) {
      const auto now = std::chrono::steady_clock::now();
      const double dt = std::chrono::duration<double>(now - t_last).count();
      t_last = now;
      AutoencoderStats st{step, cfg.steps, loss_acc / n_acc, mse_acc / n_acc, kl_acc / n_acc, gnorm, opt.lr_at(step),
                          dt > 0 ? since_log * cfg.batch / dt : 0};
      log << st.step << ',' << st.loss << ',' << st.mse << ',' << st.kl << ',' << st.grad_norm << ',' << st.lr << ','
          << st.images_per_s << '\n';
      log.flush();
      if (cb.on_step) cb.on_step(st);
      loss_acc = mse_acc = kl_acc = 0;
      n_acc = since_log = 0;
    }
    if (cfg.checkpoint_every > 0 && step % cfg.checkpoint_every == 0 && step < cfg.steps) write_checkpoint();
  }
  write_checkpoint();
  if (step >= cfg.steps && cfg.eval_count > 0) {
    const int64_t n = std::min<int64_t>(cfg.eval_count, test.size());
    const ReconstructionError r = reconstruction_error(runner, test.images.slice(0, n));
    const std::string eval_path = (fs::path(cfg.out_dir) / "autoencoder_eval.csv").string();
    std::ofstream ev(eval_path, std::ios::trunc);
    ev << "step,images,split,mse,psnr\n"
       << step << ',' << r.images << ',' << test.split << ',' << r.mse << ',' << r.psnr << '\n';
    DF_CHECK(ev.good(), "cannot write ", eval_path);
    if (cb.on_message) {
      char line[200];
      std::snprintf(line, sizeof line, "reconstruction of %lld %s images: MSE %.5f on [-1, 1], PSNR %.2f dB on [0, 1]",
                    static_cast<long long>(r.images), test.split == "test" ? "test" : "training", r.mse, r.psnr);
      cb.on_message(line);
    }
  }
  return ckpt;
}

// ---- loading -------------------------------------------------------------------------------------

namespace {

// The model a config describes, refused by the allocation limit when it is far larger than the
// weights the file holds (a corrupt or hostile config; load_checkpoint's reasoning).
std::shared_ptr<nn::Autoencoder> build_for(const nn::AutoencoderConfig& c, const std::map<std::string, Tensor>& weights) {
  size_t bytes = size_t{1} << 20;
  for (const auto& [name, t] : weights) bytes += 2 * allocation_size_class(static_cast<size_t>(t.numel()) * sizeof(float));
  HostAllocationLimit limit(bytes, "the autoencoder that the file's config describes");
  return std::make_shared<nn::Autoencoder>(c, nn::Autoencoder::Undrawn{});
}

}  // namespace

std::shared_ptr<nn::Autoencoder> autoencoder_from(const SafeTensors& st, const std::string& path) {
  auto it = st.metadata.find("autoencoder");
  DF_CHECK(it != st.metadata.end(), path, ": no autoencoder config (metadata 'autoencoder')");
  const std::map<std::string, Tensor> weights = with_prefix(st.tensors, "autoencoder.");
  std::shared_ptr<nn::Autoencoder> ae;
  try {
    ae = build_for(nn::AutoencoderConfig::from_json(nlohmann::json::parse(it->second)), weights);
    ae->load_state(weights);
  } catch (const nlohmann::json::exception& e) {
    DF_FAIL(path, ": malformed autoencoder config (", e.what(), ")");
  } catch (const Error& e) {
    DF_FAIL(path, ": the autoencoder: ", e.message());
  }
  ae->eval();
  return ae;
}

LoadedAutoencoder load_autoencoder(const std::string& path, Device device) {
  SafeTensors st = read_safetensors(path);
  auto f = st.metadata.find("format");
  DF_CHECK(f != st.metadata.end() && f->second == kFormat, path, " is not an autoencoder checkpoint (one written by "
           "`diffuse train-autoencoder`)");
  const std::vector<std::string> bad = nonfinite_tensors(st);
  DF_CHECK(bad.empty(), path, ": ", name_list(bad), " hold NaN or Inf values; the autoencoder checkpoint is damaged");
  LoadedAutoencoder a;
  nn::AutoencoderConfig ac;
  try {
    a.config = AutoencoderTrainConfig::from_json(nlohmann::json::parse(st.metadata.at("config")));
    ac = nn::AutoencoderConfig::from_json(nlohmann::json::parse(st.metadata.at("autoencoder")));
    const std::string step = st.metadata.at("step");
    size_t used = 0;
    a.step = std::stoll(step, &used);
    DF_CHECK(used == step.size() && a.step >= 0, "malformed step '", step, "'");
  } catch (const Error& e) {
    DF_FAIL(path, ": ", e.message());
  } catch (const std::exception& e) {
    DF_FAIL(path, ": malformed autoencoder metadata (", e.what(), ")");
  }
  const std::map<std::string, Tensor> weights = with_prefix(st.tensors, "model.");
  try {
    a.net = build_for(ac, weights);
    a.net->load_state(weights);
  } catch (const Error& e) {
    DF_FAIL(path, ": ", e.message());
  }
  a.net->to(device);
  a.net->eval();
  return a;
}

}  // namespace diffuse::train
