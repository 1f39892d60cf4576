// models/train/stepper.h: a run's training step on its device, as train()'s loop drives it.
//
// CpuStepper (cpu_stepper.h) runs the step on the cpu; DeviceTrainer (device_trainer.h) runs it on
// a GPU, the whole step on the device. Both take every decision of the step from train_step.h
// (the draws, the warm-ups, the bias corrections, clipping, the EMA, skipping a non-finite step),
// and they differ where the hardware does: the cpu has a step's loss at once, while the GPU's
// reaches the host a step or more later, so that the loop does not wait for the device. The loop
// therefore takes results in step order through poll() and wait(), whichever device runs them.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "models/data/dataset.h"

namespace diffuse::train {

class Stepper {
 public:
  struct Result {
    int64_t step = 0;      // steps done after it (1-based step index)
    double loss = 0;       // the batch's loss
    double grad_norm = 0;  // before clipping
    bool applied = false;  // false: not finite (step_applied), and the step changed nothing
  };

  virtual ~Stepper() = default;

  // Step s (0-based) on a batch of the cpu. May return before the step is done.
  virtual void step(const data::Batch& batch, int64_t s) = 0;
  // The results of the steps taken, in order, each once: poll() returns the oldest only once it is
  // on the host (no wait), wait() waits for it. Empty when every result was returned.
  virtual std::optional<Result> poll() = 0;
  virtual std::optional<Result> wait() = 0;
  virtual float lr_at(int64_t t) const = 0;  // the learning rate of step t (1-based)
  virtual void swap_ema() = 0;               // weights <-> EMA, for the sample grids (swap again to undo)

  // The step's part of a checkpoint: the EMA ("ema.*"), AdamW's state ("opt.*") and whatever else
  // the step keeps; load_state restores it from a checkpoint's tensors, naming what is missing.
  virtual std::vector<std::pair<std::string, Tensor>> state() = 0;
  virtual void load_state(const std::map<std::string, Tensor>& ckpt) = 0;
};

}  // namespace diffuse::train
