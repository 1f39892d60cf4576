#include "models/train/train_step.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

#include "core/check.h"
#include "core/philox.h"
#include "models/train/state_entries.h"

namespace diffuse::train {

NoiseLevels noise_levels(std::vector<int> t, const std::vector<double>& abar, diffusion::Prediction prediction,
                         LossWeight weight) {
  NoiseLevels n;
  const size_t B = t.size();
  n.alpha.resize(B);
  n.sigma.resize(B);
  n.weight.assign(B, 1.0);
  for (size_t b = 0; b < B; ++b) {
    DF_CHECK(t[b] >= 0 && static_cast<size_t>(t[b]) < abar.size(), "noise_levels: step ", t[b], " outside [0, ",
             abar.size(), ")");
    const double ab = abar[static_cast<size_t>(t[b])];
    n.alpha[b] = std::sqrt(ab);
    n.sigma[b] = std::sqrt(1 - ab);
    if (weight == LossWeight::min_snr) n.weight[b] = diffusion::min_snr_weight(prediction, ab / (1 - ab));
  }
  n.t = std::move(t);
  return n;
}

std::vector<int> uniform_steps(int T, int B, uint64_t seed, int64_t step) {
  return diffusion::uniform_timesteps(T, B, seed, stream_offset(step, Stream::timesteps));
}

std::unique_ptr<diffusion::LossSecondMomentResampler> make_t_sampler(const TrainConfig& c) {
  if (c.t_sampling != TSampling::importance || continuous_time(c)) return nullptr;
  return std::make_unique<diffusion::LossSecondMomentResampler>(c.timesteps, c.t_sampling_history, 1e-3);
}

StepDraw draw_steps(int T, int B, uint64_t seed, int64_t step, const diffusion::LossSecondMomentResampler* sampler) {
  StepDraw d;
  if (!sampler) {
    d.t = uniform_steps(T, B, seed, step);
    return d;
  }
  diffusion::LossSecondMomentResampler::Draw r = sampler->sample(B, seed, stream_offset(step, Stream::timesteps));
  d.t = std::move(r.t);
  d.importance = std::move(r.weights);
  return d;
}

namespace {
constexpr const char* kTSamplerLosses = "trainer.t_sampler.losses";
constexpr const char* kTSamplerCounts = "trainer.t_sampler.counts";
}  // namespace

std::vector<std::pair<std::string, Tensor>> t_sampler_state(const diffusion::LossSecondMomentResampler& sampler) {
  const diffusion::LossSecondMomentResampler::State st = sampler.state();
  Tensor losses = Tensor::empty({sampler.T(), sampler.history()}, DType::f64);
  std::copy(st.losses.begin(), st.losses.end(), losses.data<double>());
  return {{kTSamplerLosses, losses}, {kTSamplerCounts, Tensor::from_vector_i64(st.counts, {sampler.T()})}};
}

void load_t_sampler_state(diffusion::LossSecondMomentResampler& sampler, const std::map<std::string, Tensor>& ckpt) {
  StateEntries entries(ckpt);
  const Tensor* l = entries.find(kTSamplerLosses, Shape{sampler.T(), sampler.history()});
  const Tensor* c = entries.find(kTSamplerCounts, Shape{sampler.T()});
  entries.check("cannot resume a run with t_sampling importance (the importance sampler's loss history)");
  DF_CHECK(l->dtype() == DType::f64 && c->dtype() == DType::i64, "cannot resume a run with t_sampling importance: ",
           kTSamplerLosses, " must be f64 and ", kTSamplerCounts, " i64, got ", l->str(), ", ", c->str());
  diffusion::LossSecondMomentResampler::State st;
  st.losses.assign(l->data<double>(), l->data<double>() + l->numel());
  st.counts = c->to_vector_i64();
  sampler.set_state(st);
}

Tensor training_labels(const Tensor& labels, int64_t B, int num_classes, double dropout, uint64_t seed,
                       int64_t step) {
  DF_CHECK(labels.defined() && labels.dtype() == DType::i64 && labels.numel() == B, "a class-conditional model "
           "needs the batch's labels: i64 (", B, "), got ", labels.defined() ? labels.str() : std::string("none"));
  std::vector<int64_t> l = labels.to(Device::cpu()).to_vector_i64();
  for (int64_t b = 0; b < B; ++b)
    if (philox_uniform(seed, stream_offset(step, Stream::label_drop), static_cast<uint64_t>(b)) < dropout)
      l[static_cast<size_t>(b)] = num_classes;
  return Tensor::from_vector_i64(l, {B});
}

AdamWOptions adamw_options(const TrainConfig& c) {
  AdamWOptions o;
  o.lr = static_cast<float>(c.lr);
  o.beta1 = static_cast<float>(c.beta1);
  o.beta2 = static_cast<float>(c.beta2);
  o.eps = static_cast<float>(c.adam_eps);
  o.weight_decay = static_cast<float>(c.weight_decay);
  o.decay_vectors = true;
  o.warmup_steps = c.warmup;
  o.decay_steps = c.lr_schedule == LrSchedule::cosine ? c.steps : 0;
  return o;
}

double max_grad_norm(const TrainConfig& c) { return c.grad_clip > 0 ? c.grad_clip : 0; }

bool step_applied(double loss, double grad_norm) { return std::isfinite(loss) && std::isfinite(grad_norm); }

}  // namespace diffuse::train
