// models/train/trainer.h: the training loop of `diffuse train`, as a library.
//
// One step: a batch from the shuffled dataset; timesteps and noise from Philox streams keyed by
// (seed, step); the UNet's forward on z_t; the objective's loss; backward; clipping by global
// norm; AdamW and the EMA in one pass. Every random draw is a function of (seed, step), and the
// batcher's position is part of the checkpoint, so a resumed run repeats the uninterrupted run
// bit for bit on the cpu.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/device.h"
#include "core/enum_names.h"
#include "models/data/dataset.h"
#include "models/diffusion/sampler.h"
#include "models/diffusion/schedule.h"
#include "models/nn/autoencoder.h"
#include "models/nn/snr_net.h"
#include "models/nn/unet.h"
#include "models/train/config.h"

namespace diffuse::train {

struct StepStats {
  int64_t step = 0;           // steps done
  double loss = 0;
  double grad_norm = 0;
  double lr = 0;
  double images_per_s = 0;
  int64_t nonfinite_skipped = 0;
  int64_t total_steps = 0;    // the run's length (from --epochs once the dataset is known)
};

struct TrainCallbacks {
  std::function<void(const StepStats&)> on_step;
  std::function<void(const std::string&)> on_message;   // checkpoint and sample paths
  std::function<bool()> should_stop;                     // e.g. Ctrl-C: checkpoint and return
};

// Runs (or resumes, when out_dir holds a checkpoint and `resume` is set) a training run. Returns
// the path of the last checkpoint. Throws diffuse::Error on bad configuration, data or I/O.
std::string train(const TrainConfig& cfg, bool resume, const TrainCallbacks& cb = {});

struct DatasetOptions {
  // Image folders: label each image by its class sub-folder (the loader's class_labels).
  bool labels = false;
  // Image folders without @size: the side to resize to (0: 64); eval passes the model's own.
  int image_size = 0;
  int channels = 3;  // image folders: 3 (RGB) or 1 (grey)
};
// "fashion-mnist[:dir]", "mnist:<dir>", "idx:<images>,<labels>", "cifar10:<path>" or
// "images:<dir>[@size]"; split is "train" or "test". An image folder has no splits: both give all
// of its images, and the Dataset's split says "all".
data::Dataset load_dataset(const std::string& spec, const std::string& split, const DatasetOptions& options = {});

// A model loaded from a checkpoint, ready to sample (EMA weights unless ema = false).
struct LoadedModel {
  std::shared_ptr<nn::UNet> unet;
  std::shared_ptr<nn::SNRNet> snr;  // objective vdm with schedule learned (its EMA weights unless ema = false)
  TrainConfig config;
  int64_t step = 0;
  // A latent model (trained with --autoencoder): the autoencoder stored in the checkpoint, and the
  // factor its latents were scaled by; the UNet draws latents z, the images are decode(z / scale).
  std::shared_ptr<nn::Autoencoder> autoencoder;
  double latent_scale = 1;
  // allow_nonfinite: the tensors that held NaN or Inf (loaded anyway); empty otherwise.
  std::vector<std::string> nonfinite;
};
// Every floating-point tensor of the file is checked: one holding NaN or Inf makes the checkpoint
// refused, naming the tensor, unless allow_nonfinite (then it loads and m.nonfinite names them).
LoadedModel load_checkpoint(const std::string& path, Device device, bool ema = true, bool allow_nonfinite = false);

// The sampler's view of a trained UNet: the samplers pass continuous time t in [0, 1] with
// discrete step i at t = (i + 1) / T, while the network was trained on the step index i (DDPM's
// embedding scale), so t maps to t * T - 1. Inputs and outputs are cpu f32; the model runs on
// `device`. A UNet with a learned variance (objective hybrid) gives its first C channels, the
// prediction, which every sampler takes; with_variance keeps all 2C for the consumers of
// VarianceKind::learned (DDPM ancestral sampling, the VLB). `low`: a super-resolution model's
// conditioning (super_res.h make_sr_denoiser, which checks it), repeated k times for a batch of
// k times its rows (classifier-free guidance doubles the batch).
diffusion::Denoiser make_denoiser(std::shared_ptr<nn::UNet> unet, int timesteps, Device device,
                                  bool with_variance = false, const nn::LowRes& low = {});
// The schedule that samplers and bounds use with a loaded model: make_schedule's for a discrete
// objective; for vdm the learned SNRNet (nn::SNRSchedule over m.snr) or VDM's linear log-SNR.
std::shared_ptr<const diffusion::Schedule> model_schedule(const LoadedModel& m);

}  // namespace diffuse::train
