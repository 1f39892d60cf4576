// models/train/device_sampling.cpp: the device sampling loop behind `diffuse sample`
// (device_sampling.h).
#include "models/train/device_sampling.h"

#include "autograd/autocast.h"
#include "autograd/tape.h"
#include "core/check.h"
#include "models/diffusion/sampling_loop.h"
#include "models/train/trainer.h"

namespace diffuse::train {

namespace {

bool same_plan(diffusion::SamplerKind ka, const diffusion::SamplerOptions& a, diffusion::SamplerKind kb,
               const diffusion::SamplerOptions& b) {
  return ka == kb && a.shape == b.shape && a.steps == b.steps && a.prediction == b.prediction &&
         a.clip_x0 == b.clip_x0 && a.spacing == b.spacing && a.variance == b.variance && a.eta == b.eta;
}

}  // namespace

bool device_loop_supports(diffusion::SamplerKind kind, const nn::UNetConfig& unet, const TrainConfig& cfg,
                          const diffusion::SamplerOptions& o) {
  using diffusion::SamplerKind;
  if (kind != SamplerKind::ddpm && kind != SamplerKind::ddim && kind != SamplerKind::vdm) return false;
  // The device loop calls the UNet on z_t and t alone: a super-resolution model's low-resolution
  // input goes the host-driven way.
  if (unet.super_res()) return false;
  if (unet.num_classes > 0 || o.labels.defined() || o.guidance.cfg_scale != 0 || o.guidance.grad_log_p) return false;
  if (o.z_T.defined() || !o.timesteps.empty() || !o.section_counts.empty()) return false;
  const bool learned = learned_variance(cfg);
  if (learned != (o.variance == diffusion::VarianceKind::learned)) return false;  // 2C outputs only for ddpm
  if (learned && kind != SamplerKind::ddpm) return false;
  return true;
}

DeviceSampling::DeviceSampling(std::shared_ptr<nn::UNet> unet, const TrainConfig& cfg, Device device, bool graph)
    : unet_(std::move(unet)), timesteps_(cfg.timesteps), device_(device), graph_(graph && device.is_cuda()) {
  DF_CHECK(unet_, "DeviceSampling: no model");
}

DeviceSampling::~DeviceSampling() = default;

Tensor DeviceSampling::sample(diffusion::SamplerKind kind, const diffusion::Schedule& s,
                              const diffusion::SamplerOptions& o) {
  if (!loop_ || !same_plan(kind, o, kind_, key_)) {
    loop_.reset();  // its buffers and graph go before the next one's
    diffusion::SamplingLoopOptions d;
    d.kind = kind;
    d.sampler = o;
    d.sampler.callback = nullptr;
    d.time_of = unet_time_of(timesteps_);
    d.graph = graph_;
    d.device = device_;
    // f32, as make_denoiser: the same images as the host-driven samplers on this device.
    loop_ = std::make_unique<diffusion::SamplingLoop>(s, unet_device_denoiser(unet_, false), d);
    kind_ = kind;
    key_ = d.sampler;
  }
  loop_->run(o.seed);
  Tensor out = loop_->to_host();
  if (o.callback) o.callback(loop_->steps() - 1, loop_->steps(), Tensor(), Tensor());
  return out;
}

diffusion::LoopDenoiser unet_device_denoiser(std::shared_ptr<nn::UNet> unet, bool bf16) {
  DF_CHECK(unet, "unet_device_denoiser: no model");
  return [unet, bf16](const Tensor& z, const Tensor& t) {
    ag::NoGrad no_grad;
    ag::Autocast autocast(bf16);
    Tensor out = unet->forward(ag::Var(z), t).value();
    return out.dtype() == DType::f32 ? out : out.to(DType::f32);
  };
}

std::function<float(double)> unet_time_of(int timesteps) {
  // make_denoiser: t goes through a f32 tensor, then v * float(T) - 1.f.
  return [timesteps](double t) { return static_cast<float>(t) * static_cast<float>(timesteps) - 1.f; };
}

}  // namespace diffuse::train
