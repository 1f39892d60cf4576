// models/train/device_trainer.h: train()'s step on a GPU (stepper.h; CpuStepper is the cpu's).
// The loop of trainer.cpp is one code path for both devices (batches, the CSV log, progress,
// sample grids, checkpoints, resume, Ctrl-C, counting non-finite steps); on a GPU the step, the
// optimizer and the EMA are DeviceTrainStep's (device_train_step.h: the whole step on the device,
// captured as a CUDA graph with cuda_graph, launched kernel by kernel without), and this class
// reads its results back late and translates between its flat device buffers and the
// checkpoint's names.
//
// Checkpoints are the cpu trainer's: "ema.<name>", "ema.num_updates", "opt.m.<name>",
// "opt.v.<name>", "opt.step", so a run may resume on the other device. On the device the step
// counter counts every step, skipped ones included (their randomness and their warm-up position
// are those of the step index), so opt.step and ema.num_updates are the steps done; on the cpu
// they count the updates made. Objective vdm (continuous time, a learned schedule), which the device
// step does not do, is refused before the run starts, by check_device_training.
//
// Objective hybrid trains on the device (the VLB term in one kernel). With t_sampling importance
// the timesteps are drawn here on the host from the importance sampler, as CpuStepper draws them
// (train_step.h's make_t_sampler, draw_steps), and each step's per-sample losses come back to its
// history before the next draw, when the step was applied, as on the cpu: that read waits for the
// step, so such a run keeps the device one step ahead at most. The history is checkpointed under
// the cpu's names (t_sampler_state), so a run resumes on either device.
//
// A step's conditioning is decided here on the host, as CpuStepper decides it, with the same
// functions and Philox streams: the labels with classifier-free dropout (training_labels) and a
// super-resolution model's augmented low-resolution image (training_low_res, on the cpu batch);
// DeviceTrainStep uploads them. A latent model's batches arrive as the scaled latents, encoded on
// the cpu by train()'s loop for either device.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "models/diffusion/objective.h"
#include "models/diffusion/schedule.h"
#include "models/nn/unet.h"
#include "models/train/optim.h"
#include "models/train/stepper.h"

namespace diffuse::train {

struct TrainConfig;
class DeviceTrainStep;

// When cfg.device resolves to a GPU: throws one error naming the first option the device step
// does not support. Resolving the device also throws when the GPU asked for is missing. Called
// before the output folder is made, so a refused run writes nothing.
void check_device_training(const TrainConfig& cfg);

// Reading a step's results late, the host's side only (so the cpu tier tests it). Each step's
// values go to one of `slots` host slots behind an event; step k's are read once that event is
// done, at a later step, in step order, so the loop never waits for the step it just queued. When
// every slot holds an unread step, the oldest is waited for and kept on the host (the device is
// then `slots` steps ahead: back-pressure, not a stall).
class LaggedReadback {
 public:
  struct Values {
    int64_t step = 0;  // steps done when the values were queued (1-based step index)
    float loss = 0;
    float sumsq = 0;
  };
  // The device's side: DeviceTrainStep on a GPU, a fake in the tests.
  class Source {
   public:
    virtual ~Source() = default;
    virtual void queue(int slot) = 0;        // copy the last step's values into the slot; no wait
    virtual bool done(int slot) = 0;         // the slot's copy is complete; no wait
    virtual void wait(int slot) = 0;         // the host waits for the slot's copy
    virtual Values read(int slot) = 0;       // the copied values (step left 0)
  };

  explicit LaggedReadback(int slots);
  void push(int64_t step, Source& src);            // after step `step` was queued
  std::optional<Values> poll(Source& src);         // the oldest unread step if it is done; no wait
  std::optional<Values> wait(Source& src);         // the oldest unread step, waiting; none if none
  int64_t unread() const { return static_cast<int64_t>(ready_.size() + pending_.size()); }

 private:
  Values take(Source& src);  // the oldest pending slot, done: read it and free it

  std::deque<std::pair<int64_t, int>> pending_;  // (step, slot), oldest first
  std::deque<Values> ready_;                     // read back, not yet returned
  std::vector<int> free_;
};

class DeviceTrainer final : public Stepper {
 public:
  // unet: built from cfg, its weights final (loaded, when resuming), on the GPU. Its parameters
  // move into the step's flat buffer; they stay its views for the run.
  DeviceTrainer(std::shared_ptr<nn::UNet> unet, const TrainConfig& cfg);
  ~DeviceTrainer();
  DeviceTrainer(const DeviceTrainer&) = delete;
  DeviceTrainer& operator=(const DeviceTrainer&) = delete;

  // Restores the EMA, the moments and the step counter ("trainer.state"[0]) from a checkpoint's
  // tensors. Missing or mis-shaped entries throw, naming them.
  void load_state(const std::map<std::string, Tensor>& ckpt) override;
  // ema.* and opt.* as the cpu's EMA::state() and AdamW::state() name them, on the cpu.
  std::vector<std::pair<std::string, Tensor>> state() override;

  // Queues one step on the batch (images (B, H, W, C) f32 and, for a class-conditional model,
  // labels, on the cpu); does not wait for it. The step index is the device step's own count (s
  // must equal it).
  void step(const data::Batch& batch, int64_t s) override;
  void step(const Tensor& images);  // step(a batch of images without labels, the steps done)
  // Results come back late (LaggedReadback); applied false: the device left every buffer as it was.
  std::optional<Result> poll() override;
  std::optional<Result> wait() override;
  float lr_at(int64_t t) const override;  // warmup_lr, as AdamW::lr_at
  void swap_ema() override;
  bool captured() const;

 private:
  class Slots;  // LaggedReadback::Source over DeviceTrainStep's result slots
  // t_sampling importance: the last step's timesteps go to the history once its losses are read.
  void record_losses();

  nn::UNetConfig unet_;  // the model's config: what conditioning a step draws
  diffusion::DiscreteSchedule schedule_;  // the run's (make_schedule): the augmentation's levels
  int timesteps_;
  double label_dropout_, super_res_aug_;
  uint64_t seed_;
  std::unique_ptr<DeviceTrainStep> step_;
  std::unique_ptr<Slots> slots_;
  LaggedReadback readback_;
  AdamWOptions adamw_;
  std::unique_ptr<diffusion::LossSecondMomentResampler> t_sampler_;  // t_sampling importance, else null
  std::vector<int> pending_t_;  // the last step's timesteps, not yet in t_sampler_'s history
};

}  // namespace diffuse::train
