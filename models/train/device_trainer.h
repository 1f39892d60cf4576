// models/train/device_trainer.h: the device side of train() for a run on a GPU. The loop of
// trainer.cpp stays one code path for both devices (batches, the CSV log, progress, sample grids,
// checkpoints, resume, Ctrl-C, counting non-finite steps); on a GPU its step, the optimizer and
// the EMA are DeviceTrainStep's (graph_step.h: the whole step on the device, captured as a CUDA
// graph with cuda_graph, launched kernel by kernel without), and this class translates between
// that step's flat device buffers and the checkpoint's names.
//
// Checkpoints are the cpu trainer's: "ema.<name>", "ema.num_updates", "opt.m.<name>",
// "opt.v.<name>", "opt.step", so a run may resume on the other device. On the device the step
// counter counts every step, skipped ones included (their randomness and their warm-up position
// are those of the step index), so opt.step and ema.num_updates are the steps done; on the cpu
// they count the updates made. What the device step does not do (class conditioning, the hybrid
// objective) is refused before the run starts, by check_device_training.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "core/tensor.h"
#include "models/nn/unet.h"
#include "models/train/optim.h"

namespace diffuse::train {

struct TrainConfig;
class DeviceTrainStep;

// When cfg.device resolves to a GPU: throws one error naming the first option the device step
// does not support. Resolving the device also throws when the GPU asked for is missing. Called
// before the output folder is made, so a refused run writes nothing.
void check_device_training(const TrainConfig& cfg);

class DeviceTrainer {
 public:
  // unet: built from cfg, its weights final (loaded, when resuming), on the GPU. Its parameters
  // move into the step's flat buffer; they stay its views for the run.
  DeviceTrainer(std::shared_ptr<nn::UNet> unet, const TrainConfig& cfg);
  ~DeviceTrainer();
  DeviceTrainer(const DeviceTrainer&) = delete;
  DeviceTrainer& operator=(const DeviceTrainer&) = delete;

  // Restores the EMA, the moments and the step counter ("trainer.state"[0]) from a checkpoint's
  // tensors. Missing or mis-shaped entries throw, naming them.
  void load_state(const std::map<std::string, Tensor>& ckpt);
  // ema.* and opt.* as the cpu's EMA::state() and AdamW::state() name them, on the cpu.
  std::map<std::string, Tensor> state();

  struct Result {
    double loss = 0;       // the batch's loss
    double grad_norm = 0;  // before clipping
    bool applied = false;  // false: not finite, and the device left every buffer as it was
  };
  // One step on the batch (B, H, W, C) f32 on the cpu; waits for the loss and the norm.
  Result step(const Tensor& images);
  float lr_at(int64_t t) const;  // the learning rate of step t (1-based), as AdamW::lr_at
  void swap_ema();               // weights <-> EMA, for the sample grids (swap again to undo)
  bool captured() const;

 private:
  std::unique_ptr<DeviceTrainStep> step_;
  AdamWOptions adamw_;
};

}  // namespace diffuse::train
