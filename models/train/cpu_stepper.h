// models/train/cpu_stepper.h: the training step on the cpu (stepper.h), for every objective.
//
// Step s: the labels of a class-conditional model, a share of them dropped to the null class for
// classifier-free guidance; the objective's loss (discrete: timesteps uniform or importance-
// sampled, z_t and eps from the fused noising kernel, the MSE to the prediction target, Min-SNR
// weighted or not, or the hybrid loss, with a super-resolution model's augmented low-resolution
// input (super_res.h); vdm: the VDM bound); backward; clipping by global norm;
// AdamW and the EMA in one pass. A step whose loss or gradient norm is not finite changes nothing
// (the weights, AdamW's state, the EMA and the importance sampler's loss history stay as they
// were). Each random draw is train_step.h's stream of (seed, s), so a resumed run repeats the
// uninterrupted one bit for bit.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "autograd/tape.h"
#include "models/diffusion/objective.h"
#include "models/diffusion/schedule.h"
#include "models/nn/snr_net.h"
#include "models/nn/unet.h"
#include "models/train/config.h"
#include "models/train/ema.h"
#include "models/train/optim.h"
#include "models/train/stepper.h"

namespace diffuse::train {

class CpuStepper final : public Stepper {
 public:
  // unet, and snr for objective vdm with the learned schedule (else null), built from cfg on the
  // cpu; continuous: objective vdm's schedule (over snr when learned), null for the discrete ones.
  CpuStepper(const TrainConfig& cfg, std::shared_ptr<nn::UNet> unet, std::shared_ptr<nn::SNRNet> snr,
             std::shared_ptr<const diffusion::Schedule> continuous);

  void step(const data::Batch& batch, int64_t s) override;
  std::optional<Result> poll() override;
  std::optional<Result> wait() override { return poll(); }
  float lr_at(int64_t t) const override { return opt_->lr_at(t); }
  void swap_ema() override { ema_->swap(); }
  std::vector<std::pair<std::string, Tensor>> state() override;
  void load_state(const std::map<std::string, Tensor>& ckpt) override;

 private:
  // The steps an importance-sampled step drew and each sample's loss (hybrid_loss.h's per_sample).
  struct LossRecord {
    std::vector<int> t;
    std::vector<double> losses;
  };
  ag::Var discrete_loss(const Tensor& x, const Tensor& y, int64_t s, LossRecord* record);
  ag::Var vdm_loss(const Tensor& x, const Tensor& y, int64_t s);

  TrainConfig cfg_;
  Device device_;
  std::shared_ptr<nn::UNet> unet_;
  std::shared_ptr<nn::SNRNet> snr_;
  std::shared_ptr<const diffusion::Schedule> continuous_;
  diffusion::DiscreteSchedule schedule_ = diffusion::DiscreteSchedule::linear(2);  // the discrete objectives'
  // t_sampling importance: the loss history behind the draws of t (checkpointed).
  std::unique_ptr<diffusion::LossSecondMomentResampler> t_sampler_;
  NamedParams params_;
  std::unique_ptr<AdamW> opt_;
  std::unique_ptr<EMA> ema_;
  std::optional<Result> last_;  // the last step's, until poll() returns it
};

}  // namespace diffuse::train
