// models/train/ema.h: the exponential moving average of the weights that diffusion models are
// sampled with (DDPM uses decay 0.9999).
//
// shadow = d * shadow + (1 - d) * w after every optimizer step. With warm-up the decay of update
// n (0-based) is min(decay, (1 + n) / (10 + n)) (TensorFlow's ExponentialMovingAverage with
// num_updates), so early averages are not dominated by the random initial weights.
// The shadow lives in one flat f32 buffer with the optimizer's ParamLayout; AdamW::step(&ema)
// updates it in the same pass as the weights.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "models/train/optim.h"

namespace diffuse::train {

// The decay of update n (0-based): decay, or with warm-up min(decay, (1 + n) / (10 + n)). The one
// definition that the cpu EMA and the device training step (which stages it for its update
// kernel) both use.
float ema_decay_at(float decay, bool warmup, int64_t n);

class EMA {
 public:
  // Starts as a copy of the parameters.
  explicit EMA(NamedParams params, float decay = 0.9999f, bool warmup = false);

  float next_decay() const;  // the decay the next update uses
  void update();             // an update on its own (when the optimizer step is not fused)
  int64_t num_updates() const { return n_; }
  float decay() const { return decay_; }
  const ParamLayout& layout() const { return layout_; }

  Tensor shadow(const std::string& name) const;  // a view of one parameter's average
  // Writes the averages into `params` (matched by name: a second model of the same config, to
  // sample with) ...
  void copy_to(const NamedParams& params) const;
  // ... or exchanges them with the live weights of the tracked parameters (evaluate, then swap
  // back).
  void swap();

  // "ema.<name>" (views) and "ema.num_updates" (i64 {1}); load_state restores them exactly and
  // ignores other keys.
  std::map<std::string, Tensor> state() const;
  void load_state(const std::map<std::string, Tensor>& s);

 private:
  friend class AdamW;
  NamedParams params_;
  ParamLayout layout_;
  Tensor shadow_;
  float decay_;
  bool warmup_;
  int64_t n_ = 0;
};

}  // namespace diffuse::train
