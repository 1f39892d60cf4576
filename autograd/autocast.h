// autograd/autocast.h: bf16 mixed precision on a GPU (DESIGN.md "Mixed precision").
//
// The policy, while an Autocast scope is on for this thread:
//   - the matrix-product ops (linear, matmul, conv2d, attention), group_norm's input and the
//     embedding table run their CUDA float tensors in bf16: an f32 input is replaced by its bf16
//     version (autocast()), tensor cores multiply, accumulation and every statistic stay in f32
//     inside the kernels (GroupNorm's gains and shifts are read in f32 and their gradients come
//     out in f32);
//   - an elementwise op (and concat) whose float operands differ computes in the wider dtype, so a
//     loss against an f32 target is formed and reduced in f32;
//   - parameters stay f32 (the master weights the optimizer updates); the bf16 version of a
//     parameter is its persistent copy (VarImpl::lowp, written by the fused AdamW kernel and kept
//     current by Bf16Weights), not a cast per use; the gradient that reaches the parameter is the
//     bf16 gradient widened to f32.
// On the cpu, and with the scope off, every op computes in its inputs' dtype, as before.
#pragma once

#include <vector>

#include "autograd/tape.h"

namespace diffuse::ag {

class Autocast {
 public:
  explicit Autocast(bool bf16 = true);
  ~Autocast();
  Autocast(const Autocast&) = delete;
  Autocast& operator=(const Autocast&) = delete;

 private:
  bool prev_;
};

bool autocast_enabled();

// A differentiable dtype conversion: the gradient is converted back to x's dtype. x itself when it
// already has dtype t.
Var cast(const Var& x, DType t);

// x in the compute dtype of an autocast op: its bf16 version when autocast is on and x is an f32
// tensor on a GPU (the registered bf16 copy of a parameter, else cast(x, bf16)); x otherwise.
Var autocast(const Var& x);

// Both operands in one float dtype, the wider, for elementwise ops with mixed inputs.
void promote(Var& a, Var& b);

// The persistent bf16 copies of a list of f32 parameters on one GPU, in one flat buffer laid out
// by `offsets` (elements; the optimizer's ParamLayout, so the fused AdamW kernel writes it in the
// same pass as the weights). Each parameter's VarImpl::lowp becomes a view of its slice while this
// object lives. refresh() recomputes every copy from the current f32 values (after loading
// weights, swapping in the EMA, or any write that is not the optimizer's).
class Bf16Weights {
 public:
  Bf16Weights(const std::vector<Var>& params, const std::vector<int64_t>& offsets, int64_t total);
  ~Bf16Weights();
  Bf16Weights(const Bf16Weights&) = delete;
  Bf16Weights& operator=(const Bf16Weights&) = delete;

  void refresh();
  Tensor& buffer() { return buffer_; }

 private:
  std::vector<Var> params_;
  Tensor buffer_;
};

// Recomputes one parameter's registered bf16 copy from its value (no-op without a copy).
void refresh_lowp(const Var& p);

}  // namespace diffuse::ag
