// models/train/optim.h: AdamW with linear warm-up, gradient clipping, and the flat parameter
// layout that the fused update (and its CUDA twin) runs over.
//
// Layout. The optimizer state (m, v) and the EMA weights live in flat f32 buffers, one segment
// per parameter in named_parameters() order, each segment starting at a multiple of kAlign
// elements (so a vectorised kernel never straddles two parameters in one 64-byte load). In flat
// mode the parameters themselves are moved into such a buffer too (each Var's value becomes a
// slice + reshape view of it) and their gradients are gathered into a fourth buffer of the same
// layout, so one update loop covers the whole model: what the CUDA kernel does in one launch.
//
// The update (Loshchilov & Hutter 2019, "Decoupled weight decay", Algorithm 2; bias correction of
// Kingma & Ba 2015), per element, written as PyTorch's torch.optim.AdamW so results match it:
//   w -= lr * wd * w
//   m  = b1 m + (1 - b1) g ;  v = b2 v + (1 - b2) g^2
//   w -= (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
//   ema = d ema + (1 - d) w            (fused, when an EMA is passed to step())
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "autograd/tape.h"
#include "core/tensor.h"
#include "kernels/adamw.h"

namespace diffuse::train {

class EMA;
using NamedParams = std::vector<std::pair<std::string, ag::Var>>;

struct Segment {
  std::string name;
  int64_t offset = 0, numel = 0;  // elements into the flat buffer
  Shape shape;
};

// Where each parameter sits in a flat buffer. Depends only on the names and shapes, so the
// optimizer, the EMA and the flat parameters built from the same list agree.
struct ParamLayout {
  static constexpr int64_t kAlign = 16;  // elements: 64 bytes of f32
  std::vector<Segment> segments;
  int64_t total = 0;  // buffer length, padding included

  static ParamLayout of(const NamedParams& params);
  bool operator==(const ParamLayout& o) const;
  Tensor view(const Tensor& flat, size_t i) const;  // segment i of `flat` as a tensor of its shape
};

// The parameters moved into one flat f32 buffer (padding zero). Every Var keeps its identity; its
// value becomes a view of the buffer. Anything that replaces a value afterwards (Module::to)
// undoes this for that parameter.
class FlatParams {
 public:
  explicit FlatParams(const NamedParams& params);
  const ParamLayout& layout() const { return layout_; }
  Tensor& buffer() { return buffer_; }
  // Copies every gradient into the flat gradient buffer (zeros where a parameter has none) and
  // returns it.
  Tensor& gather_grads();
  // True while every parameter's value is still its view of the buffer.
  bool intact() const;

 private:
  NamedParams params_;
  ParamLayout layout_;
  Tensor buffer_, grads_;
};

struct AdamWOptions {
  float lr = 1e-4f;
  float beta1 = 0.9f, beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0.f;
  // false: no weight decay on parameters with one dimension (biases, norm gains and shifts).
  bool decay_vectors = true;
  int64_t warmup_steps = 0;  // lr rises linearly over the first warmup_steps steps: lr * t / warmup
  // > 0: after the warm-up the lr follows a half cosine from lr at step warmup_steps down to 0 at
  // step decay_steps (and stays 0 after it); 0: constant.
  int64_t decay_steps = 0;
  bool flat = false;         // move the parameters into one flat buffer (see FlatParams)
};

class AdamW {
 public:
  // params: the model's named_parameters(); all f32 (the optimizer state is f32).
  AdamW(NamedParams params, AdamWOptions opt = {});

  // One update of every parameter, at lr_at(steps() + 1). Parameters without a gradient are
  // skipped in per-parameter mode (as PyTorch does) and see a zero gradient in flat mode. With
  // an EMA built on the same parameters, its update runs in the same pass.
  void step(EMA* ema = nullptr);
  void zero_grad();

  float lr_at(int64_t t) const;  // the learning rate of step t (1-based): warmup_lr
  int64_t steps() const { return step_; }
  void set_lr(float lr) { opt_.lr = lr; }
  const AdamWOptions& options() const { return opt_; }
  const ParamLayout& layout() const { return layout_; }
  FlatParams* flat() { return flat_.get(); }

  // "opt.m.<name>", "opt.v.<name>" (views of the state) and "opt.step" (i64 {1}).
  std::map<std::string, Tensor> state() const;
  // Restores exactly what state() exported; other keys are ignored (a checkpoint holds weights
  // and EMA too). Missing or mis-shaped entries throw, naming them.
  void load_state(const std::map<std::string, Tensor>& s);

 private:
  NamedParams params_;
  AdamWOptions opt_;
  ParamLayout layout_;
  Tensor m_, v_;
  std::vector<char> decay_;  // per segment
  std::unique_ptr<FlatParams> flat_;
  int64_t step_ = 0;
};

// The per-element update over n elements (the loop the CUDA kernel mirrors), with one step's scalars
// in the kernel's own struct (kernels/adamw.h). ema may be null. max_grad_norm and skip_nonfinite
// are the kernel's: on the cpu, clip_grad_norm clips and the caller skips.
void adamw_update(float* w, const float* g, float* m, float* v, float* ema, int64_t n,
                  const kernels::AdamWParams& s);

// The schedule of AdamW's scalars, the one definition that AdamW::step on the cpu and the device
// training step (which stages them for its update kernel) both use.
// The learning rate of step t (1-based): lr * t / warmup_steps during the warm-up, then lr, or
// with decay_steps the half cosine lr * (1 + cos(pi * p)) / 2, p = (t - warmup) / (decay - warmup)
// clamped to [0, 1].
float warmup_lr(const AdamWOptions& o, int64_t t);
// Step t's scalars: warmup_lr, the betas, eps, weight_decay and the bias corrections 1 - beta1^t
// and sqrt(1 - beta2^t) (in double, rounded once); ema_decay, max_grad_norm and skip_nonfinite are
// left 0 for the caller.
kernels::AdamWParams adamw_step_at(const AdamWOptions& o, int64_t t);

// Scales every gradient by max_norm / total_norm when the global L2 norm exceeds max_norm.
// Returns the norm before clipping (accumulated in double). Gradients are replaced, not written in
// place, since a gradient may share storage with another's.
double clip_grad_norm(const std::vector<ag::Var>& params, double max_norm);
double clip_grad_norm(const NamedParams& params, double max_norm);

}  // namespace diffuse::train
