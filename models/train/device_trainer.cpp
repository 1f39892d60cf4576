// models/train/device_trainer.cpp: DeviceTrainStep behind train()'s loop (device_trainer.h).
// n the flat buffers' length (ParamLayout, padding included).
#include "models/train/device_trainer.h"

#include <cmath>
#include <utility>

#include "core/check.h"
#include "core/device.h"
#include "models/train/device_train_step.h"
#include "models/train/state_entries.h"
#include "models/train/super_res.h"
#include "models/train/train_step.h"
#include "models/train/trainer.h"

namespace diffuse::train {

LaggedReadback::LaggedReadback(int slots) {
  DF_CHECK(slots >= 1, "LaggedReadback: ", slots, " slots");
  for (int i = slots - 1; i >= 0; --i) free_.push_back(i);
}

LaggedReadback::Values LaggedReadback::take(Source& src) {
  const auto [step, slot] = pending_.front();
  pending_.pop_front();
  Values v = src.read(slot);
  v.step = step;
  free_.push_back(slot);
  return v;
}

void LaggedReadback::push(int64_t step, Source& src) {
  if (free_.empty()) {
    // Every slot holds an unread step: the oldest is as many steps behind; keep it on the host.
    src.wait(pending_.front().second);
    ready_.push_back(take(src));
  }
  const int slot = free_.back();
  free_.pop_back();
  src.queue(slot);
  pending_.emplace_back(step, slot);
}

std::optional<LaggedReadback::Values> LaggedReadback::poll(Source& src) {
  if (ready_.empty() && !pending_.empty() && src.done(pending_.front().second)) ready_.push_back(take(src));
  if (ready_.empty()) return std::nullopt;
  Values v = ready_.front();
  ready_.pop_front();
  return v;
}

std::optional<LaggedReadback::Values> LaggedReadback::wait(Source& src) {
  if (ready_.empty() && !pending_.empty()) {
    src.wait(pending_.front().second);
    ready_.push_back(take(src));
  }
  return poll(src);
}

class DeviceTrainer::Slots final : public LaggedReadback::Source {
 public:
  explicit Slots(DeviceTrainStep& s) : s_(s) {}
  void queue(int slot) override { s_.queue_results(slot); }
  bool done(int slot) override { return s_.results_done(slot); }
  void wait(int slot) override { s_.wait_results(slot); }
  LaggedReadback::Values read(int slot) override {
    const DeviceTrainStep::Results r = s_.results(slot);
    LaggedReadback::Values v;
    v.loss = r.loss;
    v.sumsq = r.sumsq;
    return v;
  }

 private:
  DeviceTrainStep& s_;
};

void check_device_training(const TrainConfig& cfg) {
  const Device d = resolve_device(cfg.device);
  if (!d.is_cuda()) return;
  // What the step lacks is decided once, where train() chooses its device (trainer.h).
  const std::string unsupported = device_step_unsupported(cfg);
  DF_CHECK(unsupported.empty(), unsupported, " is not supported by the GPU training step (--device ", cfg.device,
           "); train it with --device cpu");
}

namespace {

// The model's config, once the run is known to suit the device step.
nn::UNetConfig checked_config(const std::shared_ptr<nn::UNet>& unet, const TrainConfig& cfg) {
  check_device_training(cfg);
  DF_CHECK(unet, "DeviceTrainer: no model");
  return unet->config();
}

}  // namespace

DeviceTrainer::DeviceTrainer(std::shared_ptr<nn::UNet> unet, const TrainConfig& cfg)
    : unet_(checked_config(unet, cfg)),
      schedule_(make_schedule(cfg)),
      timesteps_(cfg.timesteps),
      label_dropout_(cfg.label_dropout),
      super_res_aug_(cfg.super_res_aug),
      seed_(cfg.seed),
      readback_(DeviceTrainStep::kResultSlots) {
  DeviceTrainOptions o;
  o.timesteps = cfg.timesteps;
  o.alphas_cumprod = schedule_.alphas_cumprod();
  o.objective = cfg.objective;
  o.betas = schedule_.betas();
  t_sampler_ = make_t_sampler(cfg);
  o.importance = t_sampler_ != nullptr;
  o.loss_weight = cfg.loss_weight;
  adamw_ = adamw_options(cfg);
  adamw_.flat = true;
  o.adamw = adamw_;
  o.grad_clip = max_grad_norm(cfg);
  o.ema_decay = static_cast<float>(cfg.ema_decay);
  o.ema_warmup = cfg.ema_warmup;
  o.bf16 = cfg.bf16;
  o.graph = cfg.cuda_graph;
  o.seed = cfg.seed;
  step_ = std::make_unique<DeviceTrainStep>(std::move(unet), o);
  slots_ = std::make_unique<Slots>(*step_);
}

DeviceTrainer::~DeviceTrainer() = default;

bool DeviceTrainer::captured() const { return step_->captured(); }

void DeviceTrainer::load_state(const std::map<std::string, Tensor>& ckpt) {
  const ParamLayout& layout = step_->layout();
  const int64_t n = step_->weights().numel();
  StateEntries entries(ckpt);
  // The flat buffers on the cpu (padding zero), filled segment by segment, then one copy each.
  Tensor m = Tensor::zeros({n}), v = Tensor::zeros({n}), ema = Tensor::zeros({n});
  for (size_t i = 0; i < layout.segments.size(); ++i) {
    const Segment& sg = layout.segments[i];
    if (const Tensor* t = entries.find("opt.m." + sg.name, sg.shape)) layout.view(m, i).copy_(t->to(DType::f32));
    if (const Tensor* t = entries.find("opt.v." + sg.name, sg.shape)) layout.view(v, i).copy_(t->to(DType::f32));
    if (const Tensor* t = entries.find("ema." + sg.name, sg.shape)) layout.view(ema, i).copy_(t->to(DType::f32));
  }
  const Tensor* st = entries.find("trainer.state", Shape{4});
  entries.check("the GPU training step cannot restore the checkpoint");
  const int64_t steps = st->to_vector_i64().at(0);
  if (t_sampler_) load_t_sampler_state(*t_sampler_, ckpt);
  pending_t_.clear();
  step_->restore(m, v, ema, steps);
}

void DeviceTrainer::record_losses() {
  if (!t_sampler_ || pending_t_.empty()) return;
  // CpuStepper::step's rule: a skipped step leaves the history as it was, as it leaves the weights.
  const std::vector<double> losses = step_->per_sample_losses();
  if (step_applied(step_->loss(), step_->grad_norm())) t_sampler_->update(pending_t_, losses);
  pending_t_.clear();
}

std::vector<std::pair<std::string, Tensor>> DeviceTrainer::state() {
  record_losses();
  step_->synchronize();
  const ParamLayout& layout = step_->layout();
  const Tensor m = step_->adam_m().to(Device::cpu()), v = step_->adam_v().to(Device::cpu()),
               ema = step_->ema().to(Device::cpu());
  std::vector<std::pair<std::string, Tensor>> out;
  for (size_t i = 0; i < layout.segments.size(); ++i) {
    const std::string& name = layout.segments[i].name;
    out.emplace_back("opt.m." + name, layout.view(m, i));
    out.emplace_back("opt.v." + name, layout.view(v, i));
    out.emplace_back("ema." + name, layout.view(ema, i));
  }
  out.emplace_back("opt.step", Tensor::from_vector_i64({step_->steps()}, {1}));
  out.emplace_back("ema.num_updates", Tensor::from_vector_i64({step_->steps()}, {1}));
  if (t_sampler_)
    for (auto& e : t_sampler_state(*t_sampler_)) out.push_back(std::move(e));
  return out;
}

void DeviceTrainer::step(const data::Batch& batch, int64_t s) {
  DF_CHECK(s == step_->steps(), "DeviceTrainer: step ", s, " after ", step_->steps(), " steps");
  const Tensor& x = batch.images;
  DF_CHECK(x.defined() && x.dim() == 4, "DeviceTrainer: images must be (B, H, W, C)");
  // CpuStepper::step's conditioning, by the same definitions (train_step.h, super_res.h), on the cpu.
  Tensor labels;
  if (unet_.num_classes > 0) labels = training_labels(batch.labels, x.size(0), unet_.num_classes, label_dropout_, seed_, s);
  nn::LowRes low;
  if (unet_.super_res())
    low = training_low_res(x.to(Device::cpu()), unet_, schedule_, timesteps_, super_res_aug_, seed_, s);
  // The timesteps, as CpuStepper draws them: from the importance sampler's history, which first
  // takes the last step's losses, or uniformly.
  record_losses();
  StepDraw draw = draw_steps(timesteps_, static_cast<int>(x.size(0)), seed_, s, t_sampler_.get());
  step_->step(x, labels, low, draw);
  if (t_sampler_) pending_t_ = std::move(draw.t);
  readback_.push(step_->steps(), *slots_);
}

void DeviceTrainer::step(const Tensor& images) {
  data::Batch b;
  b.images = images;
  step(b, step_->steps());
}

namespace {

Stepper::Result result_of(const LaggedReadback::Values& v) {
  Stepper::Result r;
  r.step = v.step;
  r.loss = v.loss;
  r.grad_norm = std::sqrt(static_cast<double>(v.sumsq));
  // The device skipped the update exactly when this is false: the norm it tested was poisoned by a
  // non-finite loss (device_train_step.h).
  r.applied = step_applied(r.loss, r.grad_norm);
  return r;
}

}  // namespace

std::optional<Stepper::Result> DeviceTrainer::poll() {
  const std::optional<LaggedReadback::Values> v = readback_.poll(*slots_);
  if (!v) return std::nullopt;
  return result_of(*v);
}

std::optional<Stepper::Result> DeviceTrainer::wait() {
  const std::optional<LaggedReadback::Values> v = readback_.wait(*slots_);
  if (!v) return std::nullopt;
  return result_of(*v);
}

float DeviceTrainer::lr_at(int64_t t) const { return warmup_lr(adamw_, t); }

void DeviceTrainer::swap_ema() { step_->swap_ema(); }

}  // namespace diffuse::train
