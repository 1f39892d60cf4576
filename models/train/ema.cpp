#include "models/train/ema.h"

#include <algorithm>
#include <vector>

#include "models/train/state_entries.h"

namespace diffuse::train {

EMA::EMA(NamedParams params, float decay, bool warmup)
    : params_(std::move(params)), layout_(ParamLayout::of(params_)), decay_(decay), warmup_(warmup) {
  DF_CHECK(decay >= 0.f && decay <= 1.f, "EMA decay ", decay, " outside [0, 1]");
  shadow_ = Tensor::zeros({std::max<int64_t>(layout_.total, 1)});
  for (size_t i = 0; i < params_.size(); ++i) {
    const ag::Var& p = params_[i].second;
    DF_CHECK(p.dtype() == DType::f32 && p.device().is_cpu(), "EMA: parameter ", params_[i].first, " is ",
             p.value().str(), "; the cpu EMA keeps f32 weights");
    layout_.view(shadow_, i).copy_(p.value());
  }
}

float ema_decay_at(float decay, bool warmup, int64_t n) {
  if (!warmup) return decay;
  const double nd = static_cast<double>(n);
  return std::min(decay, static_cast<float>((1.0 + nd) / (10.0 + nd)));
}

float EMA::next_decay() const { return ema_decay_at(decay_, warmup_, n_); }

void EMA::update() {
  const float d = next_decay(), cd = 1.f - d;
  float* e = shadow_.data<float>();
  for (size_t i = 0; i < params_.size(); ++i) {
    const Segment& s = layout_.segments[i];
    const float* w = params_[i].second.value().data<float>();
    float* es = e + s.offset;
    for (int64_t k = 0; k < s.numel; ++k) es[k] = d * es[k] + cd * w[k];
  }
  ++n_;
}

Tensor EMA::shadow(const std::string& name) const {
  for (size_t i = 0; i < layout_.segments.size(); ++i)
    if (layout_.segments[i].name == name) return layout_.view(shadow_, i);
  DF_FAIL("EMA: no parameter named '", name, "'");
}

void EMA::copy_to(const NamedParams& params) const {
  DF_CHECK(ParamLayout::of(params) == layout_, "EMA::copy_to: the target's parameters differ from the tracked ones");
  for (size_t i = 0; i < params.size(); ++i) {
    ag::Var p = params[i].second;  // shares the variable
    Tensor& dst = p.value();
    Tensor src = layout_.view(shadow_, i);
    dst.copy_(dst.dtype() == DType::f32 ? src : src.to(dst.dtype()));
  }
}

void EMA::swap() {
  float* e = shadow_.data<float>();
  for (size_t i = 0; i < params_.size(); ++i) {
    const Segment& s = layout_.segments[i];
    float* w = params_[i].second.value().data<float>();
    std::swap_ranges(w, w + s.numel, e + s.offset);
  }
}

std::map<std::string, Tensor> EMA::state() const {
  std::map<std::string, Tensor> out;
  for (size_t i = 0; i < layout_.segments.size(); ++i)
    out.emplace("ema." + layout_.segments[i].name, layout_.view(shadow_, i));
  out.emplace("ema.num_updates", Tensor::from_vector_i64({n_}, {1}));
  return out;
}

void EMA::load_state(const std::map<std::string, Tensor>& s) {
  StateEntries entries(s);
  std::vector<const Tensor*> shadows;
  for (const Segment& sg : layout_.segments) shadows.push_back(entries.find("ema." + sg.name, sg.shape));
  const Tensor* n = entries.find("ema.num_updates", Shape{1});
  entries.check("EMA::load_state");
  for (size_t i = 0; i < layout_.segments.size(); ++i) layout_.view(shadow_, i).copy_(shadows[i]->to(DType::f32));
  n_ = n->to_vector_i64().at(0);
}

}  // namespace diffuse::train
