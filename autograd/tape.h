// autograd/tape.h: the tape. While grad mode is on and an input requires a gradient, each op
// records a node: its inputs, the closure that holds what it saved, and its backward rule.
// backward(loss) walks the tape in reverse, hands each node the gradient of its output, and
// accumulates what the node returns into its inputs' gradients; then it frees what the nodes
// saved. Leaves (parameters, or inputs marked requires_grad) keep their .grad; intermediate
// gradients are dropped as soon as their node has run.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace diffuse::ag {

struct VarImpl {
  Tensor value;
  Tensor grad;  // undefined until a backward reaches this variable
  bool requires_grad = false;
  bool is_leaf = true;
  // Mixed precision (autograd/autocast.h): a bf16 copy of `value` that whoever writes the value
  // keeps current (the fused AdamW kernel, EMA swaps), read by ops under autocast instead of a cast
  // per use. Undefined when there is none.
  Tensor lowp;
  // The gradient is a buffer owned elsewhere (a slice of an optimizer's flat gradient buffer on a
  // GPU): backward adds into it in place instead of replacing it, and zero_grad() zeroes it, so
  // gradients land where the fused update reads them without a gather or an allocation.
  bool grad_in_place = false;
};

// A tensor in the graph. Copies share the same variable (value, gradient).
class Var {
 public:
  Var() = default;
  explicit Var(Tensor value, bool requires_grad = false);

  bool defined() const { return impl_ != nullptr; }
  const Tensor& value() const;
  Tensor& value();  // for in-place updates outside the graph (optimizers)
  const Tensor& grad() const;
  bool has_grad() const { return impl_ && impl_->grad.defined(); }
  void set_grad(Tensor g);
  void zero_grad();  // drops the gradient (zeroes it when in place); the next backward starts from zero
  bool requires_grad() const { return impl_ && impl_->requires_grad; }
  void set_requires_grad(bool r);
  Var detach() const { return Var(value(), false); }

  const Shape& shape() const { return value().shape(); }
  int64_t size(int d) const { return value().size(d); }
  int dim() const { return value().dim(); }
  int64_t numel() const { return value().numel(); }
  DType dtype() const { return value().dtype(); }
  Device device() const { return value().device(); }

  VarImpl* impl() const { return impl_.get(); }
  const std::shared_ptr<VarImpl>& shared() const { return impl_; }

 private:
  std::shared_ptr<VarImpl> impl_;
};

// One gradient per input, in order; an undefined Tensor means "no gradient for that input".
// The tensors returned must not alias the inputs' values; views of grad_out are fine.
using BackwardFn = std::function<std::vector<Tensor>(const Tensor& grad_out)>;

// Wraps `out` as the result of op `name`. When grad mode is on and some input requires a
// gradient, records a node with `backward`; otherwise drops `backward` (and what it captured).
Var record(const char* name, Tensor out, std::vector<Var> inputs, BackwardFn backward);

// Runs the tape backward from `root`, seeded with `grad` (default: ones, for a scalar root).
// Clears the tape.
void backward(const Var& root, Tensor grad = {});

bool grad_enabled();
void set_grad_enabled(bool on);

// Scope without recording (sampling, EMA updates, evaluation).
class NoGrad {
 public:
  NoGrad() : prev_(grad_enabled()) { set_grad_enabled(false); }
  ~NoGrad() { set_grad_enabled(prev_); }
  NoGrad(const NoGrad&) = delete;
  NoGrad& operator=(const NoGrad&) = delete;

 private:
  bool prev_;
};

void clear_tape();        // forget every recorded node (and free what they saved)
size_t tape_size();       // nodes recorded since the last backward or clear

// A recorded node as a reader outside the engine sees it: the op's name (record's `name`) and the
// shapes of its inputs, in order (an optional input left undefined: Shape(), rank 0), and of its
// output. bench/e2e counts a forward's FLOPs from these.
struct TapeOp {
  const char* name;
  std::vector<Shape> inputs;
  Shape output;
};
std::vector<TapeOp> tape_ops();  // the nodes recorded since the last backward or clear, in order

// g += x, out of place when g may be shared: the one accumulation rule of the engine.
Tensor accumulate(const Tensor& g, const Tensor& x);

}  // namespace diffuse::ag
