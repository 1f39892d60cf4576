// models/train/classifier.h: the image classifier of `diffuse train-classifier`, and what it is for.
//
// One model, the UNet's encoder with a pooled linear head (nn::EncoderClassifier, ADM sec. 4),
// trained by cross-entropy in one of two ways:
//   noise diffusion  on z_t = alpha_t x + sigma_t eps at a uniform step t of a DDPM schedule, the
//                    step as its time input: the noise-aware classifier of classifier guidance
//                    (Dhariwal & Nichol 2021), whose grad_z log p(y | z_t) steers any sampler;
//   noise none       on clean images, time input 0: the judge of samples. Its pooled features give
//                    `diffuse eval --fd` a feature distance (the Frechet distance of Gaussians
//                    fitted to the features, FID's formula on this network's features: not FID,
//                    and comparable only between runs scored by the same classifier), and its
//                    labels the accuracy of class-conditional or guided samples.
// Training runs on the cpu or, host-driven, on a GPU (`device`: the forward and backward passes on
// the device, AdamW on the host's weights; model_run.h), with the same run folder, log, atomic
// checkpoints and bit-exact resume as `diffuse train` (run_folder.h); every draw is a function of
// (seed, step), the same on either device.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/device.h"
#include "core/enum_names.h"
#include "models/diffusion/sampler.h"
#include "models/diffusion/schedule.h"
#include "models/nn/unet.h"
#include "models/train/config.h"

namespace diffuse::train {

enum class ClassifierNoise { diffusion, none };
inline constexpr EnumName<ClassifierNoise> kClassifierNoiseNames[] = {{ClassifierNoise::diffusion, "diffusion"},
                                                                      {ClassifierNoise::none, "none"}};
constexpr std::span<const EnumName<ClassifierNoise>> enum_table(ClassifierNoise) { return kClassifierNoiseNames; }

struct ClassifierConfig {
  std::string preset = "tiny";                      // the UNet preset whose encoder it is
  nlohmann::json model = nlohmann::json::object();  // UNetConfig keys overriding the preset
  ClassifierNoise noise = ClassifierNoise::diffusion;
  // noise diffusion: the DDPM schedule of its noise levels (linear or cosine betas, as `train`).
  // Guidance maps a sampler's time to this schedule's by log-SNR, so it steers a model trained on
  // another schedule too.
  ScheduleKind schedule = ScheduleKind::linear;
  int timesteps = 1000;
  double lr = 3e-4, weight_decay = 0.05;
  int64_t warmup = 100;
  double grad_clip = 1.0;  // 0: off
  int batch = 64;
  int64_t steps = 2000;
  std::string dataset = "fashion-mnist";
  bool flip = false;
  uint64_t seed = 0;
  std::string out_dir = "runs/classifier";
  int64_t log_every = 10;
  int64_t checkpoint_every = 500;  // 0: only at the end
  int eval_count = 2000;           // test images scored at the end (0: none)
  std::string device = "auto";     // cpu, cuda, cuda:N or auto (a GPU when one answers)

  nlohmann::json to_json() const;
  static ClassifierConfig from_json(const nlohmann::json& j);  // unknown keys and bad values are errors
  void validate() const;
};

struct ClassifierStats {
  int64_t step = 0, total_steps = 0;
  double loss = 0, accuracy = 0, grad_norm = 0, lr = 0, images_per_s = 0;
};
struct ClassifierCallbacks {
  std::function<void(const ClassifierStats&)> on_step;
  std::function<void(const std::string&)> on_message;
  std::function<bool()> should_stop;
};

// Runs (or resumes, when out_dir holds a classifier checkpoint and `resume` is set) a classifier
// run. Returns the checkpoint's path (out_dir/classifier.safetensors).
std::string train_classifier(const ClassifierConfig& cfg, bool resume, const ClassifierCallbacks& cb = {});

struct LoadedClassifier {
  std::shared_ptr<nn::EncoderClassifier> net;
  ClassifierConfig config;
  std::shared_ptr<const diffusion::DiscreteSchedule> schedule;  // noise diffusion only
  int64_t step = 0;
  Device device;
};
// Refuses a file that is not a classifier checkpoint, or whose tensors hold NaN or Inf, naming it.
LoadedClassifier load_classifier(const std::string& path, Device device);

// The classifier's time input for a sampler's continuous time t of `model` schedule: t's log-SNR
// located on the classifier's schedule, as its step index in [0, T - 1]; 0 for noise none.
float classifier_time(const LoadedClassifier& c, const diffusion::Schedule& model, double t);

// grad_z log p(y | z_t) for the samplers (diffusion::Guidance::grad_log_p), through the tape:
// z_t (B, H, W, C) cpu f32 in, the gradient (B, H, W, C) cpu f32 out.
diffusion::ClassifierGrad classifier_grad(std::shared_ptr<LoadedClassifier> c,
                                          std::shared_ptr<const diffusion::Schedule> model);

// Pooled features (N, D) f64 and predicted labels of clean images (N, H, W, C) in [-1, 1],
// `batch` at a time.
struct ClassifierOutputs {
  std::vector<double> features;  // row-major (N, D)
  int64_t dim = 0;
  std::vector<int64_t> labels;
};
ClassifierOutputs classify(LoadedClassifier& c, const Tensor& images, int batch = 256);

// The Frechet distance between Gaussians fitted to two feature sets (rows of `dim`):
// |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^1/2 S_b S_a^1/2)^1/2), in double.
double feature_distance(const std::vector<double>& a, const std::vector<double>& b, int64_t dim);

}  // namespace diffuse::train
