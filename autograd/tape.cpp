#include "autograd/tape.h"

#include "core/check.h"
#include "core/profile.h"
#include "kernels/elementwise.h"

namespace diffuse::ag {

namespace {

struct Node {
  const char* name;
  std::shared_ptr<VarImpl> output;  // held until the node has run: its gradient lands there
  std::vector<Var> inputs;
  BackwardFn backward;
};

thread_local std::vector<Node> g_tape;
thread_local bool g_grad_enabled = true;

}  // namespace

Var::Var(Tensor value, bool requires_grad) : impl_(std::make_shared<VarImpl>()) {
  impl_->value = std::move(value);
  impl_->requires_grad = requires_grad;
}

const Tensor& Var::value() const {
  DF_CHECK(impl_, "use of an undefined variable");
  return impl_->value;
}

Tensor& Var::value() {
  DF_CHECK(impl_, "use of an undefined variable");
  return impl_->value;
}

const Tensor& Var::grad() const {
  DF_CHECK(impl_, "use of an undefined variable");
  return impl_->grad;
}

void Var::set_grad(Tensor g) {
  DF_CHECK(impl_, "use of an undefined variable");
  if (g.defined()) check_same_shape(g, impl_->value, "set_grad");
  impl_->grad = std::move(g);
}

void Var::zero_grad() {
  if (!impl_) return;
  if (impl_->grad_in_place && impl_->grad.defined()) impl_->grad.zero_();
  else impl_->grad = Tensor();
}

void Var::set_requires_grad(bool r) {
  DF_CHECK(impl_, "use of an undefined variable");
  impl_->requires_grad = r;
}

bool grad_enabled() { return g_grad_enabled; }
void set_grad_enabled(bool on) { g_grad_enabled = on; }
void clear_tape() { g_tape.clear(); }
size_t tape_size() { return g_tape.size(); }

std::vector<TapeOp> tape_ops() {
  std::vector<TapeOp> ops;
  ops.reserve(g_tape.size());
  for (const Node& n : g_tape) {
    TapeOp op{n.name, {}, n.output->value.shape()};
    for (const Var& v : n.inputs) op.inputs.push_back(v.defined() ? v.shape() : Shape());
    ops.push_back(std::move(op));
  }
  return ops;
}

Var record(const char* name, Tensor out, std::vector<Var> inputs, BackwardFn backward) {
  bool needs = false;
  if (g_grad_enabled)
    for (const Var& v : inputs) needs = needs || v.requires_grad();
  Var result(std::move(out), needs);
  if (needs) {
    result.impl()->is_leaf = false;
    g_tape.push_back(Node{name, result.shared(), std::move(inputs), std::move(backward)});
  }
  return result;
}

namespace {

template <class T>
void add_into(T* out, const T* a, const T* b, int64_t n) {
#pragma omp parallel for if (n > 65536)
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

}  // namespace

Tensor accumulate(const Tensor& g, const Tensor& x) {
  if (!g.defined()) return x;
  check_same_shape(g, x, "gradient accumulation");
  DF_CHECK(g.dtype() == x.dtype() && g.device() == x.device(), "gradient accumulation: ", g.str(), " += ", x.str());
  // Elsewhere than the cpu: one elementwise add kernel (kernels/elementwise.h dispatches by device).
  if (!g.device().is_cpu()) return kernels::add(g, x);
  Tensor out = Tensor::empty(g.shape(), g.dtype(), g.device());
  if (g.dtype() == DType::f64)
    add_into(out.data<double>(), g.data<double>(), x.data<double>(), g.numel());
  else
    add_into(out.data<float>(), g.data<float>(), x.data<float>(), g.numel());
  return out;
}

void backward(const Var& root, Tensor grad) {
  // Its self time is the backward pass less the ops it runs: the tape walk and its bookkeeping.
  DF_PROFILE("autograd_backward");
  DF_CHECK(root.defined(), "backward of an undefined variable");
  if (!grad.defined()) {
    DF_CHECK(root.numel() == 1, "backward needs a gradient for the non-scalar ", root.value().str());
    grad = Tensor::full(root.shape(), 1.0, root.dtype(), root.device());
  }
  check_same_shape(grad, root.value(), "backward seed");
  VarImpl* r = root.impl();
  r->grad = accumulate(r->grad, grad);

  // Nodes were appended in execution order, so reverse order is a valid topological order.
  std::vector<Node> tape;
  tape.swap(g_tape);
  for (auto it = tape.rbegin(); it != tape.rend(); ++it) {
    std::shared_ptr<VarImpl> out = std::move(it->output);
    if (!out || !out->grad.defined()) {
      it->backward = nullptr;
      continue;
    }
    std::vector<Tensor> grads = it->backward(out->grad);
    DF_CHECK(grads.size() == it->inputs.size(), "backward of ", it->name, " returned ", grads.size(),
             " gradients for ", it->inputs.size(), " inputs");
    if (!out->is_leaf) out->grad = Tensor();  // an intermediate gradient is used once
    for (size_t i = 0; i < grads.size(); ++i) {
      VarImpl* in = it->inputs[i].impl();
      if (!in || !in->requires_grad || !grads[i].defined()) continue;
      DF_CHECK(grads[i].shape() == in->value.shape(), "backward of ", it->name, ": gradient ", i, " is ",
               grads[i].shape().str(), ", input is ", in->value.shape().str());
      if (in->grad_in_place && in->grad.defined()) {
        DF_CHECK(grads[i].dtype() == in->grad.dtype(), "backward of ", it->name, ": gradient ", i, " is ",
                 grads[i].str(), ", the in-place buffer ", in->grad.str());
        kernels::add_(in->grad, grads[i]);
      } else {
        in->grad = accumulate(in->grad, grads[i]);
      }
    }
    it->backward = nullptr;  // free what the node saved
    it->inputs.clear();
  }
}

}  // namespace diffuse::ag
