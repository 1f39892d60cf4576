// models/train/device_train_step.h: a diffusion training step that stays on one GPU, captured once
// as a CUDA graph and replayed.
//
// One step, all on the device: the batch (a static buffer) is noised with eps drawn in the kernel,
// z_t = alpha_t x + sigma_t eps, into static buffers before the graph (see Randomness); the UNet's
// forward under bf16 autocast (its persistent bf16 weights, ag::Bf16Weights); the objective's
// per-sample weighted MSE, or objective hybrid's loss (hybrid_loss.h's hybrid_terms: the MSE on the
// eps channels and the VLB term of the variance channels from one kernel, weighted by the
// importance weights of a step drawn from the importance sampler; its per-sample losses kept on the
// device for the sampler's history, per_sample_losses); backward, every parameter's gradient accumulated in place into one
// flat f32 buffer; the squared global norm of that buffer (one fixed-order reduction); and one
// fused launch for clipping, AdamW, the EMA and the bf16 weight copy, which leaves everything
// unchanged, on the device, when the norm is not finite. The loss times 0 is added to that norm,
// so a non-finite loss skips the step too: a step is skipped exactly when its loss or its
// gradient is not finite, train_step.h's step_applied, as train() on the cpu skips it.
//
// What changes between steps reaches the device in one upload of a few KB before each step (a
// kernel whose arguments carry the bytes: no pinned memory, no wait): the timesteps, alpha_t,
// sigma_t, the loss weights and the importance weights of the batch, a super-resolution model's
// augmentation levels (its network input), a conditional model's label ids (a second upload, into a static i64 buffer that
// the graph's lookups read: the UNet reads labels on a GPU on the device only); the AdamW scalars
// of step t (learning rate with warm-up, bias corrections, EMA decay with warm-up), read by the
// update kernel when it runs; and
// a 64-bit word that the dropout kernels XOR into their seed (PhiloxSeedXorScope). The values are
// train_step.h's, ema.h's and optim.h's, the definitions the cpu step uses. Every kernel argument
// of the captured part is the same at every step, so with `graph` the step is captured at the end
// of the first one (which runs uncaptured, since cuDNN's algorithm search and cuBLASLt's heuristics
// wait for the GPU, which a capture cannot) and every later step is one upload, one copy of the
// batch (and of a super-resolution model's low-resolution image), the noising launch and one
// graph launch. Without `graph` the same code launches each
// kernel; both paths give the same bits. A batch of another shape drops the graph and captures again.
//
// Steady state, from the second step: no host-device synchronisation and no cudaMalloc (with the
// graph not even a cache lookup: its memory is its own pool, core/graph.h). The loss and the
// gradient norm stay on the device; loss() and grad_norm() read them, and wait. A training loop
// reads them late instead: queue_results copies them into a pinned host slot behind an event,
// read once the event is done (device_trainer.h's LaggedReadback).
//
// Streams. The step runs on a stream of its own. Each step() first makes that stream wait for the
// work the caller's current stream has queued (a batch or weights written there), and then makes
// the caller's stream wait for the step (a checkpoint or a sample grid that reads the weights
// next, or the reuse of the batch's block, come after it): events between the streams, no host
// wait.
//
// Randomness: step s (0-based) draws from train_step.h's streams, as train() does on the cpu: its
// timesteps on the host from (seed, s, timesteps) (uniform_steps, or the caller's draw from the
// importance sampler, draw_steps); its noise in the fused noising kernel from
// (seed, s, noise), launched before the graph with that offset as its argument; its dropout masks
// with the seed dropout_seed(seed, s), the UNet's dropout seed XOR the staged word. So both devices
// draw the same numbers for a step (Philox gives the same bits everywhere). The conditioning a
// step takes (the labels after classifier-free dropout, a super-resolution model's augmented
// low-resolution image) is drawn by the caller on the host, from the same streams and with the
// same functions as the cpu step (DeviceTrainer: train_step.h's training_labels, super_res.h's
// training_low_res). The step counter
// advances on the host, so a step that the device skipped (not finite) still counts for the
// warm-up and the bias corrections.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "models/nn/unet.h"
#include "models/train/config.h"
#include "models/train/optim.h"
#include "models/train/train_step.h"

namespace diffuse {
class CudaEvent;
class CudaGraph;
class CudaStream;
}  // namespace diffuse
namespace diffuse::ag {
class Bf16Weights;
}  // namespace diffuse::ag

namespace diffuse::train {

struct DeviceTrainOptions {
  int timesteps = 1000;
  // The schedule's alpha_bar per step, `timesteps` of them: train::make_schedule's, the one that
  // turns a training config into betas. Empty: DDPM's linear betas (DiscreteSchedule::linear).
  std::vector<double> alphas_cumprod;
  // eps | x0 | v | hybrid (eps plus a learned variance: L_simple + lambda L_vlb, hybrid_loss.h's
  // hybrid_terms, the VLB term in one kernel, learned_variance_vlb's device form)
  Objective objective = Objective::eps;
  // hybrid: the schedule's betas (the VLB term's constants; DiscreteSchedule(betas) is the run's
  // schedule). Empty: DDPM's linear betas.
  std::vector<double> betas;
  // hybrid: each step's loss is weighted by the importance weights step() takes (t_sampling
  // importance), and each sample's loss is kept for per_sample_losses().
  bool importance = false;
  LossWeight loss_weight = LossWeight::none;  // none | min-snr (gamma 5)
  // The defaults of train(): lr 2e-4 with 100 warm-up steps, then constant (flat is implied).
  // Designated, so a field added to AdamWOptions cannot shift the others (a positional list once
  // turned `flat` into decay_steps = 1: lr 0 after the first step).
  AdamWOptions adamw{.lr = 2e-4f, .warmup_steps = 100, .flat = true};
  double grad_clip = 1.0;  // global norm; 0: no clipping
  float ema_decay = 0.999f;
  bool ema_warmup = true;
  bool bf16 = true;   // activations in bf16 under autocast (f32 master weights either way)
  bool graph = true;  // capture the step once per shape and replay it
  uint64_t seed = 0;
};

class DeviceTrainStep {
 public:
  static constexpr int kResultSlots = 8;  // host slots of queue_results
  // unet: on a GPU, f32 parameters; class-conditional, cross-attention and super-resolution
  // models too (step()'s labels and low). Its parameters move into one flat buffer (each Var's value becomes a view
  // of it) with their gradients in a second one; do not move the model afterwards (Module::to).
  DeviceTrainStep(std::shared_ptr<nn::UNet> unet, const DeviceTrainOptions& o);
  ~DeviceTrainStep();
  DeviceTrainStep(const DeviceTrainStep&) = delete;
  DeviceTrainStep& operator=(const DeviceTrainStep&) = delete;

  // One step on x (B, H, W, C) f32 in [-1, 1], on this GPU (written on the caller's current
  // stream, or on stream()) or on the cpu. Returns without waiting for the device.
  // labels: a conditional model's, on the cpu, as UNet::forward takes them (class labels (B) i64
  // with the dropped ones already the null class, or undefined for all null), checked and turned
  // into the network's ids on the host (UNet::label_ids). low: a super-resolution model's
  // conditioning on the cpu (its augmented low-resolution image and levels, training_low_res),
  // required by one and refused by any other model.
  // draw: the step's timesteps and importance weights, drawn by the caller on the host
  // (train_step.h's draw_steps, from the importance sampler); empty: uniform_steps, the default.
  // With the option `importance`, every step needs its weights.
  void step(const Tensor& x, const Tensor& labels = {}, const nn::LowRes& low = {}, const StepDraw& draw = {});
  // Queues a copy of the last step's loss and squared gradient norm into host slot `slot` (of
  // kResultSlots) and records the slot's event; no wait. The slot must have been read (or never
  // used): the copy overwrites it.
  void queue_results(int slot);
  bool results_done(int slot) const;  // the slot's copy is complete; no wait
  void wait_results(int slot) const;  // the host waits for the slot's copy
  struct Results {
    float loss = 0;
    float sumsq = 0;  // the squared global gradient norm (NaN when the loss is not finite)
  };
  Results results(int slot) const;    // after results_done or wait_results

  // Objective hybrid: the last step's loss per sample (B), hybrid_loss.h's per_sample: what the
  // importance sampler's history takes. Waits for the step.
  std::vector<double> per_sample_losses();

  int64_t steps() const { return steps_; }
  bool captured() const;
  float loss();        // the last step's loss (waits)
  double grad_norm();  // the last step's global gradient norm before clipping (waits)
  void synchronize();
  void* stream() const;
  Device device() const { return device_; }

  // Restores a saved run, after the model's weights were written through their views into the
  // flat buffer (Module::load_state): AdamW's moments and the EMA (flat, ParamLayout order, any
  // device) and the number of steps done, which keys the next step's draws and scalars. Refreshes
  // the bf16 weight copies. A captured graph stays valid: it reads the same buffers.
  void restore(const Tensor& m, const Tensor& v, const Tensor& ema, int64_t steps);
  // Exchanges the weights with their EMA in place (sample with the EMA, then swap back) and
  // refreshes the bf16 copies. Waits for the device.
  void swap_ema();

  // The flat f32 buffers (ParamLayout order, on the device): weights, EMA, AdamW's moments.
  const ParamLayout& layout() const { return layout_; }
  const Tensor& weights() const { return w_; }
  const Tensor& ema() const { return ema_; }
  const Tensor& adam_m() const { return m_; }
  const Tensor& adam_v() const { return v_; }

 private:
  void stage(const Tensor& x, const Tensor& labels, const nn::LowRes& low, const StepDraw& draw);  // the step's inputs, outside any graph
  void body();                  // the step's device work: what a graph captures

  std::shared_ptr<nn::UNet> unet_;
  DeviceTrainOptions o_;
  diffusion::Prediction prediction_ = diffusion::Prediction::eps;  // what the network predicts: o_.objective's
  Device device_;
  ParamLayout layout_;
  std::vector<double> abar_;  // the schedule's alpha_bar per step
  int64_t steps_ = 0;
  std::unique_ptr<CudaStream> stream_;
  std::unique_ptr<CudaEvent> caller_ready_, step_done_;  // the joins with the caller's stream
  std::vector<std::unique_ptr<CudaEvent>> result_events_;
  [[maybe_unused]] float* pinned_results_ = nullptr;  // kResultSlots x (sumsq, loss), page-locked; CUDA builds
  std::unique_ptr<CudaGraph> graph_;
  std::unique_ptr<ag::Bf16Weights> lowp_;
  Tensor w_, g_, m_, v_, ema_;  // flat f32
  Tensor decay_mask_;           // u8, or undefined (weight decay everywhere)
  Tensor x_;                    // the batch (static: the graph reads it)
  Tensor z_, eps_;              // its noised version and the noise (static, drawn before the graph)
  Tensor staging_;  // f32: seed word, AdamW scalars, t, alpha, sigma, loss weights, aug levels, importance
  Tensor vlb_constants_;        // hybrid: the schedule's constants of the VLB kernel (static)
  Tensor per_sample_;           // hybrid: the last step's per-sample losses (B) f32 (static)
  std::vector<float> host_staging_;
  Tensor ids_;        // i64 label ids (B) or token ids (B, L) (static), or undefined: unconditional
  Tensor low_image_;  // a super-resolution model's low-resolution image (static), or undefined
  Tensor results_;  // f32 (sumsq, loss): one copy reads both
  Tensor sumsq_, reduce_ws_, loss_;  // views of results_, and the reduction's workspace
};

}  // namespace diffuse::train
