#include "models/train/optim.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numbers>

#include "core/profile.h"
#include "models/train/ema.h"
#include "models/train/state_entries.h"

namespace diffuse::train {

// ---- layout -----------------------------------------------------------------------------------

ParamLayout ParamLayout::of(const NamedParams& params) {
  ParamLayout l;
  for (const auto& [name, v] : params) {
    DF_CHECK(v.defined(), "parameter ", name, " is undefined");
    Segment s{name, l.total, v.numel(), v.shape()};
    l.total += (v.numel() + kAlign - 1) / kAlign * kAlign;
    l.segments.push_back(std::move(s));
  }
  return l;
}

bool ParamLayout::operator==(const ParamLayout& o) const {
  if (total != o.total || segments.size() != o.segments.size()) return false;
  for (size_t i = 0; i < segments.size(); ++i) {
    const Segment &a = segments[i], &b = o.segments[i];
    if (a.name != b.name || a.offset != b.offset || !(a.shape == b.shape)) return false;
  }
  return true;
}

Tensor ParamLayout::view(const Tensor& flat, size_t i) const {
  const Segment& s = segments.at(i);
  return flat.slice(s.offset, s.offset + s.numel).reshape(s.shape);
}

namespace {

void check_f32_cpu(const NamedParams& params, const char* who) {
  for (const auto& [name, v] : params) {
    DF_CHECK(v.dtype() == DType::f32, who, ": parameter ", name, " is ", dtype_name(v.dtype()),
             "; the optimizer state is f32");
    DF_CHECK(v.device().is_cpu(), who, ": parameter ", name, " is on ", v.device().str(),
             "; the cpu update needs the cpu (the CUDA update is the CUDA backend's)");
  }
}

// Copies the live parameter values into `flat` (padding zero).
Tensor gather_values(const NamedParams& params, const ParamLayout& l) {
  Tensor flat = Tensor::zeros({std::max<int64_t>(l.total, 1)});
  for (size_t i = 0; i < params.size(); ++i) l.view(flat, i).copy_(params[i].second.value());
  return flat;
}

}  // namespace

FlatParams::FlatParams(const NamedParams& params) : params_(params), layout_(ParamLayout::of(params)) {
  check_f32_cpu(params, "FlatParams");
  buffer_ = gather_values(params, layout_);
  grads_ = Tensor::zeros(buffer_.shape());
  for (size_t i = 0; i < params_.size(); ++i) {
    params_[i].second.value() = layout_.view(buffer_, i);
    params_[i].second.zero_grad();
  }
}

bool FlatParams::intact() const {
  for (size_t i = 0; i < params_.size(); ++i) {
    const Tensor& v = params_[i].second.value();
    if (!v.same_storage(buffer_) || v.raw() != layout_.view(buffer_, i).raw()) return false;
  }
  return true;
}

Tensor& FlatParams::gather_grads() {
  float* g = grads_.data<float>();
  for (size_t i = 0; i < params_.size(); ++i) {
    const Segment& s = layout_.segments[i];
    const ag::Var& p = params_[i].second;
    if (p.has_grad()) {
      DF_CHECK(p.grad().dtype() == DType::f32 && p.grad().numel() == s.numel, "gradient of ", s.name, " is ",
               p.grad().str());
      std::memcpy(g + s.offset, p.grad().data<float>(), static_cast<size_t>(s.numel) * sizeof(float));
    } else {
      std::memset(g + s.offset, 0, static_cast<size_t>(s.numel) * sizeof(float));
    }
  }
  return grads_;
}

// ---- the update ---------------------------------------------------------------------------------

void adamw_update(float* w, const float* g, float* m, float* v, float* ema, int64_t n,
                  const kernels::AdamWParams& s) {
  const float decay_factor = 1.f - s.lr * s.weight_decay;
  const float step_size = s.lr / s.bc1;
  const float b1 = s.beta1, b2 = s.beta2, c1 = 1.f - s.beta1, c2 = 1.f - s.beta2;
  // One pass: each element's w, m, v (and EMA) are read and written once, which is what bounds
  // this loop (about 20 bytes per parameter each way).
  if (ema) {
    const float d = s.ema_decay, cd = 1.f - s.ema_decay;
#pragma omp parallel for simd schedule(static) if (n > (1 << 16))
    for (int64_t i = 0; i < n; ++i) {
      float gi = g[i];
      float mi = b1 * m[i] + c1 * gi;
      float vi = b2 * v[i] + c2 * gi * gi;
      m[i] = mi;
      v[i] = vi;
      float wi = w[i] * decay_factor;
      wi -= step_size * mi / (std::sqrt(vi) / s.bc2_sqrt + s.eps);
      w[i] = wi;
      ema[i] = d * ema[i] + cd * wi;
    }
  } else {
#pragma omp parallel for simd schedule(static) if (n > (1 << 16))
    for (int64_t i = 0; i < n; ++i) {
      float gi = g[i];
      float mi = b1 * m[i] + c1 * gi;
      float vi = b2 * v[i] + c2 * gi * gi;
      m[i] = mi;
      v[i] = vi;
      float wi = w[i] * decay_factor;
      w[i] = wi - step_size * mi / (std::sqrt(vi) / s.bc2_sqrt + s.eps);
    }
  }
}

namespace {
void ema_only(const float* w, float* ema, int64_t n, float d) {
  const float cd = 1.f - d;
  for (int64_t i = 0; i < n; ++i) ema[i] = d * ema[i] + cd * w[i];
}
}  // namespace

AdamW::AdamW(NamedParams params, AdamWOptions opt)
    : params_(std::move(params)), opt_(opt), layout_(ParamLayout::of(params_)) {
  check_f32_cpu(params_, "AdamW");
  DF_CHECK(opt.lr >= 0.f && opt.eps > 0.f, "AdamW: lr ", opt.lr, ", eps ", opt.eps);
  DF_CHECK(opt.beta1 >= 0.f && opt.beta1 < 1.f && opt.beta2 >= 0.f && opt.beta2 < 1.f, "AdamW: betas ", opt.beta1,
           ", ", opt.beta2, " must be in [0, 1)");
  DF_CHECK(opt.warmup_steps >= 0, "AdamW: warmup_steps ", opt.warmup_steps);
  m_ = Tensor::zeros({std::max<int64_t>(layout_.total, 1)});
  v_ = Tensor::zeros(m_.shape());
  for (const auto& [name, p] : params_) decay_.push_back(opt.decay_vectors || p.dim() > 1);
  if (opt.flat) flat_ = std::make_unique<FlatParams>(params_);
}

float warmup_lr(const AdamWOptions& o, int64_t t) {
  if (o.warmup_steps > 0 && t < o.warmup_steps)
    return o.lr * static_cast<float>(t) / static_cast<float>(o.warmup_steps);
  if (o.decay_steps <= 0) return o.lr;
  const int64_t from = std::max<int64_t>(o.warmup_steps, 0);
  if (o.decay_steps <= from) return o.lr;
  const double p = std::clamp(static_cast<double>(t - from) / static_cast<double>(o.decay_steps - from), 0.0, 1.0);
  return static_cast<float>(static_cast<double>(o.lr) * 0.5 * (1.0 + std::cos(std::numbers::pi * p)));
}

kernels::AdamWParams adamw_step_at(const AdamWOptions& o, int64_t t) {
  kernels::AdamWParams s{};
  s.lr = warmup_lr(o, t);
  s.beta1 = o.beta1;
  s.beta2 = o.beta2;
  s.eps = o.eps;
  s.weight_decay = o.weight_decay;
  s.bc1 = static_cast<float>(1.0 - std::pow(static_cast<double>(o.beta1), static_cast<double>(t)));
  s.bc2_sqrt = static_cast<float>(std::sqrt(1.0 - std::pow(static_cast<double>(o.beta2), static_cast<double>(t))));
  return s;
}

float AdamW::lr_at(int64_t t) const { return warmup_lr(opt_, t); }

void AdamW::zero_grad() {
  for (auto& [n, p] : params_) p.zero_grad();
}

void AdamW::step(EMA* ema) {
  DF_PROFILE("adamw_ema_step");
  if (ema)
    DF_CHECK(ema->layout_ == layout_, "AdamW::step: the EMA tracks a different parameter list than the optimizer");
  kernels::AdamWParams s = adamw_step_at(opt_, step_ + 1);
  s.ema_decay = ema ? ema->next_decay() : 0.f;
  float* m = m_.data<float>();
  float* v = v_.data<float>();
  float* e = ema ? ema->shadow_.data<float>() : nullptr;

  const bool uniform_decay = opt_.weight_decay == 0.f || std::all_of(decay_.begin(), decay_.end(), [](char d) { return d; });
  if (flat_) {
    DF_CHECK(flat_->intact(), "AdamW: a parameter was moved out of the flat buffer (Module::to after flattening?)");
    float* w = flat_->buffer().data<float>();
    const float* g = flat_->gather_grads().data<float>();
    if (uniform_decay) {
      // The whole model in one loop, padding included (zero weights and gradients stay zero).
      s.weight_decay = opt_.weight_decay;
      adamw_update(w, g, m, v, e, layout_.total, s);
    } else {
      for (size_t i = 0; i < layout_.segments.size(); ++i) {
        const Segment& sg = layout_.segments[i];
        s.weight_decay = decay_[i] ? opt_.weight_decay : 0.f;
        adamw_update(w + sg.offset, g + sg.offset, m + sg.offset, v + sg.offset, e ? e + sg.offset : nullptr, sg.numel, s);
      }
    }
  } else {
    for (size_t i = 0; i < params_.size(); ++i) {
      const Segment& sg = layout_.segments[i];
      ag::Var& p = params_[i].second;
      DF_CHECK(p.value().dtype() == DType::f32 && p.numel() == sg.numel, "AdamW: parameter ", sg.name,
               " changed to ", p.value().str());
      float* w = p.value().data<float>();
      if (!p.has_grad()) {
        if (e) ema_only(w, e + sg.offset, sg.numel, s.ema_decay);
        continue;
      }
      const Tensor& gt = p.grad();
      DF_CHECK(gt.dtype() == DType::f32 && gt.numel() == sg.numel, "AdamW: gradient of ", sg.name, " is ", gt.str());
      s.weight_decay = decay_[i] ? opt_.weight_decay : 0.f;
      adamw_update(w, gt.data<float>(), m + sg.offset, v + sg.offset, e ? e + sg.offset : nullptr, sg.numel, s);
    }
  }
  ++step_;
  if (ema) ++ema->n_;
}

std::map<std::string, Tensor> AdamW::state() const {
  std::map<std::string, Tensor> out;
  for (size_t i = 0; i < layout_.segments.size(); ++i) {
    const std::string& n = layout_.segments[i].name;
    out.emplace("opt.m." + n, layout_.view(m_, i));
    out.emplace("opt.v." + n, layout_.view(v_, i));
  }
  out.emplace("opt.step", Tensor::from_vector_i64({step_}, {1}));
  return out;
}

void AdamW::load_state(const std::map<std::string, Tensor>& s) {
  StateEntries entries(s);
  std::vector<std::pair<const Tensor*, const Tensor*>> moments;
  for (const Segment& sg : layout_.segments)
    moments.emplace_back(entries.find("opt.m." + sg.name, sg.shape), entries.find("opt.v." + sg.name, sg.shape));
  const Tensor* step = entries.find("opt.step", Shape{1});
  entries.check("AdamW::load_state");
  for (size_t i = 0; i < layout_.segments.size(); ++i) {
    layout_.view(m_, i).copy_(moments[i].first->to(DType::f32));
    layout_.view(v_, i).copy_(moments[i].second->to(DType::f32));
  }
  step_ = step->to_vector_i64().at(0);
}

// ---- clipping -----------------------------------------------------------------------------------

double clip_grad_norm(const std::vector<ag::Var>& params, double max_norm) {
  DF_PROFILE("clip_grad_norm");
  double sq = 0;
  for (const auto& p : params) {
    if (!p.has_grad()) continue;
    const Tensor& g = p.grad();
    DF_CHECK(g.device().is_cpu(), "clip_grad_norm: a gradient on ", g.device().str(), " needs the CUDA backend");
    if (g.dtype() == DType::f64) {
      const double* d = g.data<double>();
      for (int64_t i = 0; i < g.numel(); ++i) sq += d[i] * d[i];
    } else {
      const float* d = g.data<float>();
      for (int64_t i = 0; i < g.numel(); ++i) sq += static_cast<double>(d[i]) * d[i];
    }
  }
  const double norm = std::sqrt(sq);
  // torch.nn.utils.clip_grad_norm_: the 1e-6 keeps the factor finite for a zero norm.
  const double factor = max_norm / (norm + 1e-6);
  if (factor >= 1.0) return norm;
  for (auto p : params) {
    if (!p.has_grad()) continue;
    const Tensor& g = p.grad();
    Tensor out = Tensor::empty(g.shape(), g.dtype(), g.device());
    if (g.dtype() == DType::f64) {
      const double* d = g.data<double>();
      double* o = out.data<double>();
      for (int64_t i = 0; i < g.numel(); ++i) o[i] = d[i] * factor;
    } else {
      const float* d = g.data<float>();
      float* o = out.data<float>();
      const float f = static_cast<float>(factor);
      for (int64_t i = 0; i < g.numel(); ++i) o[i] = d[i] * f;
    }
    p.set_grad(out);
  }
  return norm;
}

double clip_grad_norm(const NamedParams& params, double max_norm) {
  std::vector<ag::Var> ps;
  for (const auto& [n, p] : params) ps.push_back(p);
  return clip_grad_norm(ps, max_norm);
}

}  // namespace diffuse::train
