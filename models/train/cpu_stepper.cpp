// models/train/cpu_stepper.cpp: the training step on the cpu (cpu_stepper.h). B batch.
#include "models/train/cpu_stepper.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "autograd/elementwise.h"
#include "autograd/linalg.h"
#include "core/check.h"
#include "kernels/noise.h"
#include "models/diffusion/hybrid_loss.h"
#include "models/diffusion/vdm_loss.h"
#include "models/train/super_res.h"
#include "models/train/train_step.h"

namespace diffuse::train {

CpuStepper::CpuStepper(const TrainConfig& cfg, std::shared_ptr<nn::UNet> unet, std::shared_ptr<nn::SNRNet> snr,
                       std::shared_ptr<const diffusion::Schedule> continuous)
    : cfg_(cfg), unet_(std::move(unet)), snr_(std::move(snr)), continuous_(std::move(continuous)) {
  DF_CHECK(unet_, "CpuStepper: no model");
  DF_CHECK(continuous_time(cfg_) == (continuous_ != nullptr), "CpuStepper: objective ", enum_name(cfg_.objective),
           continuous_ ? " with" : " without", " a continuous schedule");
  params_ = unet_->named_parameters();
  DF_CHECK(!params_.empty(), "CpuStepper: the model has no parameters");
  device_ = params_[0].second.device();
  if (!continuous_) {
    schedule_ = make_schedule(cfg_);
    t_sampler_ = make_t_sampler(cfg_);
  }
  // The learned schedule's parameters join the UNet's: one optimizer, one gradient clip, one EMA
  // (VDM trains both with the same loss and optimizer), checkpointed as snr.*, ema.snr.*, opt.*.snr.*.
  if (snr_)
    for (auto& [name, var] : snr_->named_parameters()) params_.emplace_back("snr." + name, var);
  opt_ = std::make_unique<AdamW>(params_, adamw_options(cfg_));
  ema_ = std::make_unique<EMA>(params_, static_cast<float>(cfg_.ema_decay), cfg_.ema_warmup);
}

void CpuStepper::step(const data::Batch& batch, int64_t s) {
  const int B = cfg_.batch;
  const Tensor x = batch.images.to(device_);
  Tensor y;
  if (unet_->config().num_classes > 0)  // classifier-free guidance: a share of the labels becomes the null class
    y = training_labels(batch.labels, B, unet_->config().num_classes, cfg_.label_dropout, cfg_.seed, s).to(device_);
  unet_->set_dropout_seed(dropout_seed(cfg_.seed, s));
  LossRecord record;
  ag::Var loss = continuous_ ? vdm_loss(x, y, s) : discrete_loss(x, y, s, t_sampler_ ? &record : nullptr);
  Result r;
  r.step = s + 1;
  r.loss = loss.value().item();
  if (std::isfinite(r.loss)) {
    ag::backward(loss);
    const double clip = max_grad_norm(cfg_);
    r.grad_norm = clip_grad_norm(params_, clip > 0 ? clip : std::numeric_limits<double>::infinity());
  } else {
    ag::clear_tape();  // no backward: the step is skipped whatever the gradient
  }
  r.applied = step_applied(r.loss, r.grad_norm);
  if (r.applied) {
    opt_->step(ema_.get());
    // A skipped step leaves the loss history as it was, as it leaves the weights.
    if (t_sampler_) t_sampler_->update(record.t, record.losses);
  }
  opt_->zero_grad();
  last_ = r;
}

std::optional<Stepper::Result> CpuStepper::poll() {
  std::optional<Result> r = last_;
  last_.reset();
  return r;
}

// One step's loss of a discrete objective: uniform steps, z_t and eps from the fused noising
// kernel, the UNet on the step index; the MSE to the prediction target (optionally Min-SNR
// weighted), or the hybrid loss.
// With t_sampling importance the steps come from the loss history (uniform, weight 1, until every
// step has its t_sampling_history losses), each sample's loss is weighted by 1 / (T p_t), and `record` receives the
// steps and the per-sample losses for the history, which step() adds once the step is taken.
ag::Var CpuStepper::discrete_loss(const Tensor& x, const Tensor& y, int64_t s, LossRecord* record) {
  const int B = cfg_.batch;
  const diffusion::Prediction pred = prediction_of(cfg_);
  StepDraw draw = draw_steps(cfg_.timesteps, B, cfg_.seed, s, t_sampler_.get());
  std::vector<int> ts = std::move(draw.t);
  const std::vector<double> importance = std::move(draw.importance);  // empty: uniform steps
  const NoiseLevels lv = noise_levels(std::move(ts), schedule_.alphas_cumprod(), pred, cfg_.loss_weight);
  std::vector<float> tf(B), alpha(B), sigma(B), wf(B);
  for (int b = 0; b < B; ++b) {
    tf[b] = static_cast<float>(lv.t[b]);
    alpha[b] = static_cast<float>(lv.alpha[b]);
    sigma[b] = static_cast<float>(lv.sigma[b]);
    wf[b] = static_cast<float>(lv.weight[b]);
  }
  Tensor z = Tensor::empty(x.shape(), DType::f32, device_), eps = Tensor::empty(x.shape(), DType::f32, device_);
  kernels::noise_forward(x, Tensor::from_vector(alpha, {B}, device_), Tensor::from_vector(sigma, {B}, device_),
                         cfg_.seed, stream_offset(s, Stream::noise), z, eps);
  Tensor target = pred == diffusion::Prediction::eps ? eps
                                                     : diffusion::prediction_target(pred, x, eps, lv.alpha, lv.sigma);
  // A super-resolution model: x's low-resolution image, augmented (super_res.h).
  nn::LowRes low;
  if (unet_->config().super_res())
    low = training_low_res(x, unet_->config(), schedule_, cfg_.timesteps, cfg_.super_res_aug, cfg_.seed, s);
  ag::Var out = unet_->forward(ag::Var(z), Tensor::from_vector(tf, {B}, device_), y, low);
  const Tensor w = Tensor::from_vector(wf, {B}, device_);
  // hybrid: L_simple on the eps channels + lambda L_vlb on the variance channels (hybrid_loss.h).
  if (!learned_variance(cfg_)) return ag::weighted_mse(out, ag::Var(target), w);
  diffusion::HybridLoss h = diffusion::hybrid_loss(schedule_, lv.t, x, z, eps, out, w, diffusion::kHybridLambda, importance);
  if (record) *record = LossRecord{lv.t, std::move(h.per_sample)};
  return h.loss;
}

// One step's VDM loss (vdm_loss.h), bits per dim: low-discrepancy t (VDM app. I.1), the schedule
// evaluated at the batch's times and at t = 0, 1 in one forward (gamma(0), gamma(1) enter the
// decoder and the prior terms), z_t differentiable in gamma, and the UNet on t's time input
// t T - 1 (make_denoiser's map). With the learned schedule the loss's gradient reaches the SNR
// net through gamma'(t), through z_t and through gamma(0), gamma(1): the plain joint gradient of
// VDM's code, not the variance-minimising schedule update of VDM sec. 5.2.
ag::Var CpuStepper::vdm_loss(const Tensor& x, const Tensor& y, int64_t s) {
  const int B = cfg_.batch;
  const std::vector<double> t = diffusion::low_discrepancy_times(B, cfg_.seed, stream_offset(s, Stream::timesteps));
  std::vector<float> ts(static_cast<size_t>(B) + 2), tin(static_cast<size_t>(B));
  for (int b = 0; b < B; ++b) {
    ts[b] = static_cast<float>(t[b]);
    tin[b] = static_cast<float>(t[b] * cfg_.timesteps - 1.0);
  }
  ts[B] = 0.f;
  ts[B + 1] = 1.f;
  ag::Var gamma, dgamma;  // (B + 2)
  if (snr_) {
    nn::SNRNet::Output o = snr_->forward(Tensor::from_vector(ts, {B + 2}, device_));
    gamma = o.gamma;
    dgamma = o.dgamma;
  } else {  // the fixed schedule: constants
    std::vector<float> g(ts.size()), dg(ts.size());
    for (size_t i = 0; i < ts.size(); ++i) {
      g[i] = static_cast<float>(continuous_->gamma(ts[i]));
      dg[i] = static_cast<float>(continuous_->dgamma_dt(ts[i]));
    }
    gamma = ag::Var(Tensor::from_vector(g, {B + 2}, device_));
    dgamma = ag::Var(Tensor::from_vector(dg, {B + 2}, device_));
  }
  const Tensor eps = Tensor::randn(x.shape(), cfg_.seed, stream_offset(s, Stream::noise), device_);
  const Tensor eps0 = Tensor::randn(x.shape(), cfg_.seed, stream_offset(s, Stream::noise0), device_);
  ag::Var z = diffusion::vdm_q_sample(x, eps, ag::slice_last(gamma, 0, B));
  ag::Var eps_hat = unet_->forward(z, Tensor::from_vector(tin, {B}, device_), y);
  return diffusion::vdm_loss(x, eps, eps_hat, ag::slice_last(dgamma, 0, B), eps0, ag::slice_last(gamma, B, B + 1),
                             ag::slice_last(gamma, B + 1, B + 2))
      .loss;
}

std::vector<std::pair<std::string, Tensor>> CpuStepper::state() {
  std::vector<std::pair<std::string, Tensor>> out;
  for (auto& [name, t] : ema_->state()) out.emplace_back(name, t);
  for (auto& [name, t] : opt_->state()) out.emplace_back(name, t);
  if (t_sampler_)
    for (auto& e : t_sampler_state(*t_sampler_)) out.push_back(std::move(e));
  return out;
}

void CpuStepper::load_state(const std::map<std::string, Tensor>& ckpt) {
  ema_->load_state(ckpt);
  opt_->load_state(ckpt);
  if (t_sampler_) load_t_sampler_state(*t_sampler_, ckpt);
}

}  // namespace diffuse::train
