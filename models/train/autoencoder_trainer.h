// models/train/autoencoder_trainer.h: the first stage of latent diffusion, `diffuse
// train-autoencoder`, and what the latent diffusion model does with it.
//
// Training (Rombach et al. 2022, sec. 3.1; the KL-regularised variant): an image x in [-1, 1]
// is encoded to q(z | x) = N(mu, diag(sigma^2)), z = mu + sigma * eps is drawn (the
// reparameterisation of Kingma & Welling 2014), decoded to x_hat, and the loss per pixel is
//   L = ||x - x_hat||^2 / D  +  kl_weight * KL(q(z | x) || N(0, I)) / D,      D = H W C,
// averaged over the batch: the squared error per pixel and the KL per sample scaled by the same
// 1/D, so kl_weight is LDM's ratio of the two per-sample sums (their KL-f4 models use 1e-6).
// L2 rather than LDM's L1: LDM pairs L1 with a perceptual (LPIPS) and an adversarial loss, neither
// of which exists here; alone, L2 is the Gaussian decoder's log-likelihood and what PSNR scores.
// Training runs on the cpu or, host-driven, on a GPU (`device`: the forward and backward passes on
// the device, AdamW on the host's weights; model_run.h), with the run folder, log, atomic
// checkpoints and bit-exact resume of `diffuse train` (run_folder.h); every draw is a function of
// (seed, step), the same on either device.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "core/device.h"
#include "core/safetensors.h"
#include "core/tensor.h"
#include "models/nn/autoencoder.h"

namespace diffuse::train {

struct AutoencoderTrainConfig {
  nlohmann::json model = nlohmann::json::object();  // AutoencoderConfig keys over the defaults
  double kl_weight = 1e-6;
  double lr = 1e-3, weight_decay = 0.0;
  int64_t warmup = 100;
  double grad_clip = 1.0;  // 0: off
  int batch = 32;
  int64_t steps = 2000;
  std::string dataset = "fashion-mnist";
  bool flip = false;
  uint64_t seed = 0;
  std::string out_dir = "runs/autoencoder";
  int64_t log_every = 10;
  int64_t checkpoint_every = 500;  // 0: only at the end
  int eval_count = 2000;           // test images whose reconstruction error is reported at the end (0: none)
  std::string device = "auto";     // cpu, cuda, cuda:N or auto (a GPU when one answers)

  nlohmann::json to_json() const;
  static AutoencoderTrainConfig from_json(const nlohmann::json& j);  // unknown keys and bad values are errors
  void validate() const;
  // The model's config: the defaults, the dataset's image size and channels, then `model`.
  nn::AutoencoderConfig autoencoder_config(int image_size, int channels) const;
};

struct AutoencoderStats {
  int64_t step = 0, total_steps = 0;
  double loss = 0, mse = 0, kl = 0, grad_norm = 0, lr = 0, images_per_s = 0;
};
struct AutoencoderCallbacks {
  std::function<void(const AutoencoderStats&)> on_step;
  std::function<void(const std::string&)> on_message;
  std::function<bool()> should_stop;
};

// The reconstruction error of the posterior means on `images` (N, H, W, C) in [-1, 1]: the mean
// squared error on that scale, and the PSNR of the images mapped to [0, 1] (10 log10(4 / mse)).
struct ReconstructionError {
  int64_t images = 0;
  double mse = 0, psnr = 0;
};
ReconstructionError reconstruction_error(nn::Autoencoder& ae, const Tensor& images, int batch = 256);

// Runs (or resumes, when out_dir holds an autoencoder checkpoint and `resume` is set) a run.
// Returns the checkpoint's path (out_dir/autoencoder.safetensors).
std::string train_autoencoder(const AutoencoderTrainConfig& cfg, bool resume, const AutoencoderCallbacks& cb = {});

struct LoadedAutoencoder {
  std::shared_ptr<nn::Autoencoder> net;
  AutoencoderTrainConfig config;
  int64_t step = 0;
};
// Refuses a file that is not an autoencoder checkpoint, or whose tensors hold NaN or Inf, naming it.
LoadedAutoencoder load_autoencoder(const std::string& path, Device device = Device::cpu());

// The autoencoder inside a latent diffusion checkpoint: metadata "autoencoder" (its config) and
// tensors "autoencoder.<name>". Refuses a malformed config or weights, naming `path`.
std::shared_ptr<nn::Autoencoder> autoencoder_from(const SafeTensors& st, const std::string& path);

// The posterior means of `images` (N, H, W, C), `batch` at a time, on the cpu: (N, h, w, Z).
Tensor encode_means(nn::Autoencoder& ae, const Tensor& images, int batch = 256);
// Images (N, H, W, C) of latents (N, h, w, Z) that a latent model drew on its unit-variance scale:
// decode(z / scale), `batch` at a time, on the autoencoder's device; returned on the cpu.
Tensor decode_latents(nn::Autoencoder& ae, const Tensor& latents, double scale, int batch = 256);

}  // namespace diffuse::train
