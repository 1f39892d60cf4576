// models/train/device_train_step.cpp: the device training step and the UNet denoiser of device_train_step.h.
// B batch; n the flat parameter buffer's length (ParamLayout, padding included).
#include "models/train/device_train_step.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "autograd/autocast.h"
#include "autograd/elementwise.h"
#include "autograd/linalg.h"
#include "autograd/tape.h"
#include "core/check.h"
#include "core/graph.h"
#include "core/stream.h"
#include "kernels/elementwise.h"
#include "kernels/noise.h"
#include "models/diffusion/hybrid_loss.h"
#include "models/diffusion/objective.h"
#include "models/diffusion/schedule.h"
#include "models/train/ema.h"
#include "models/train/train_step.h"

#if defined(DIFFUSE_HAVE_CUDA)
#include <cuda_runtime.h>

#include "core/cuda_check.h"
#include "core/tensor_cuda.h"
#include "kernels/adamw.h"
#endif

namespace diffuse::train {

namespace {

// The staging buffer, in floats: the dropout seed word (8 bytes) at 0, AdamWParams at 4 (16-byte
// aligned), then t, alpha, sigma, the loss weights, a super-resolution model's augmentation
// levels and the importance weights, B each, from kArrays.
// Only the CUDA step reads them.
[[maybe_unused]] constexpr int64_t kWordAt = 0, kParamsAt = 4, kArrays = 16, kPerSample = 6;
#if defined(DIFFUSE_HAVE_CUDA)
static_assert(sizeof(kernels::AdamWParams) <= (kArrays - kParamsAt) * sizeof(float), "AdamWParams fits its slot");
#endif

// The step records its forward whatever the caller's grad mode is.
class GradMode {
 public:
  GradMode() : prev_(ag::grad_enabled()) { ag::set_grad_enabled(true); }
  ~GradMode() { ag::set_grad_enabled(prev_); }
  GradMode(const GradMode&) = delete;
  GradMode& operator=(const GradMode&) = delete;

 private:
  bool prev_;
};

diffusion::Prediction step_prediction(Objective objective) {
  DF_CHECK(objective == Objective::eps || objective == Objective::x0 || objective == Objective::v ||
               objective == Objective::hybrid,
           "DeviceTrainStep: objective '", enum_name(objective), "' (expected eps, x0, v or hybrid)");
  return prediction_of(objective);
}

}  // namespace

DeviceTrainStep::DeviceTrainStep(std::shared_ptr<nn::UNet> unet, const DeviceTrainOptions& o)
    : unet_(std::move(unet)), o_(o) {
  DF_CHECK(unet_, "DeviceTrainStep: no model");
  prediction_ = step_prediction(o_.objective);
  DF_CHECK(o_.timesteps >= 2, "DeviceTrainStep: timesteps ", o_.timesteps);
  const AdamWOptions& a = o_.adamw;
  DF_CHECK(a.lr >= 0.f && a.eps > 0.f && a.beta1 >= 0.f && a.beta1 < 1.f && a.beta2 >= 0.f && a.beta2 < 1.f &&
               a.warmup_steps >= 0,
           "DeviceTrainStep: AdamW lr ", a.lr, ", betas ", a.beta1, ", ", a.beta2, ", eps ", a.eps);
  DF_CHECK(o_.ema_decay >= 0.f && o_.ema_decay <= 1.f, "DeviceTrainStep: EMA decay ", o_.ema_decay);
  abar_ = o_.alphas_cumprod.empty() ? diffusion::DiscreteSchedule::linear(o_.timesteps).alphas_cumprod()
                                    : o_.alphas_cumprod;
  DF_CHECK(abar_.size() == static_cast<size_t>(o_.timesteps), "DeviceTrainStep: ", abar_.size(),
           " alphas_cumprod for ", o_.timesteps, " timesteps");
  DF_CHECK(!o_.importance || o_.objective == Objective::hybrid,
           "DeviceTrainStep: importance weights go with objective hybrid (its loss has the VLB term)");

  NamedParams params = unet_->named_parameters();
  DF_CHECK(!params.empty(), "DeviceTrainStep: the model has no parameters");
  device_ = params[0].second.device();
  for (const auto& [name, p] : params)
    DF_CHECK(p.device() == device_ && device_.is_cuda() && p.dtype() == DType::f32, "DeviceTrainStep: parameter ",
             name, " is ", p.value().str(), "; every parameter must be f32 on one GPU");
  layout_ = ParamLayout::of(params);

  stream_ = std::make_unique<CudaStream>(device_);
  caller_ready_ = std::make_unique<CudaEvent>(device_);
  step_done_ = std::make_unique<CudaEvent>(device_);
  for (int i = 0; i < kResultSlots; ++i) result_events_.push_back(std::make_unique<CudaEvent>(device_));
  graph_ = std::make_unique<CudaGraph>();
  StreamGuard guard(stream_->stream());
  const int64_t n = std::max<int64_t>(layout_.total, 1);
  // The flat buffers. Padding is zero in the weights and gradients, so the update keeps it zero.
  w_ = Tensor::zeros({n}, DType::f32, device_);
  g_ = Tensor::zeros({n}, DType::f32, device_);
  m_ = Tensor::zeros({n}, DType::f32, device_);
  v_ = Tensor::zeros({n}, DType::f32, device_);
  std::vector<ag::Var> vars;
  std::vector<int64_t> offsets;
  for (size_t i = 0; i < params.size(); ++i) {
    ag::Var& p = params[i].second;
    Tensor wv = layout_.view(w_, i);
    wv.copy_(p.value());
    p.value() = wv;
    p.impl()->grad = layout_.view(g_, i);  // backward adds into it (VarImpl::grad_in_place)
    p.impl()->grad_in_place = true;
    vars.push_back(p);
    offsets.push_back(layout_.segments[i].offset);
  }
  ema_ = w_.clone();
  if (o_.bf16) lowp_ = std::make_unique<ag::Bf16Weights>(vars, offsets, layout_.total);
  if (a.weight_decay != 0.f && !a.decay_vectors) {
    // AdamW's decay_vectors = false: no decay on one-dimensional parameters (biases, norms).
    std::vector<float> mask(static_cast<size_t>(n), 0.f);
    for (size_t i = 0; i < params.size(); ++i)
      if (params[i].second.dim() > 1)
        std::fill_n(mask.begin() + layout_.segments[i].offset, layout_.segments[i].numel, 1.f);
    decay_mask_ = Tensor::from_vector(mask, {n}).to(device_).to(DType::u8);
  }
  if (o_.objective == Objective::hybrid) {
    const diffusion::DiscreteSchedule sched = o_.betas.empty() ? diffusion::DiscreteSchedule::linear(o_.timesteps)
                                                               : diffusion::DiscreteSchedule(o_.betas);
    DF_CHECK(sched.T() == o_.timesteps, "DeviceTrainStep: ", sched.T(), " betas for ", o_.timesteps, " timesteps");
    vlb_constants_ = diffusion::vlb_constants(sched, device_);
  }
  results_ = Tensor::zeros({2}, DType::f32, device_);
  sumsq_ = results_.slice(0, 1);
  loss_ = results_.slice(1, 2);
#if defined(DIFFUSE_HAVE_CUDA)
  {
    void* p = nullptr;
    // Page-locked, so that the copy is asynchronous and the host reads what the event covers.
    const cudaError_t e = cudaHostAlloc(&p, sizeof(float) * 2 * kResultSlots, cudaHostAllocDefault);
    if (e != cudaSuccess) (void)cudaGetLastError();
    DF_CHECK(e == cudaSuccess, "DeviceTrainStep: cannot allocate ", sizeof(float) * 2 * kResultSlots,
             " bytes of page-locked host memory: ", cudaGetErrorString(e));
    pinned_results_ = static_cast<float*>(p);
  }
  reduce_ws_ = Tensor::empty({std::max<int64_t>(cuda::reduce_all_workspace(n), 1)}, DType::f32, device_);
#endif
  diffuse::synchronize(device_);  // set-up: the buffers are filled before the first step
}

DeviceTrainStep::~DeviceTrainStep() {
  if (!stream_) return;
  StreamGuard guard(stream_->stream());
  graph_.reset();  // waits for its last replay, then frees the graph's memory
  lowp_.reset();
#if defined(DIFFUSE_HAVE_CUDA)
  if (pinned_results_) {
    // Copies into the slots may still be queued.
    cudaStreamSynchronize(static_cast<cudaStream_t>(stream_->stream()));
    cudaFreeHost(pinned_results_);
    (void)cudaGetLastError();
  }
#endif
}

bool DeviceTrainStep::captured() const { return graph_ && graph_->ready(); }
void* DeviceTrainStep::stream() const { return stream_->stream(); }

void DeviceTrainStep::synchronize() {
  StreamGuard guard(stream_->stream());
  diffuse::synchronize(device_);
}

float DeviceTrainStep::loss() {
  StreamGuard guard(stream_->stream());
  return loss_.item();
}

double DeviceTrainStep::grad_norm() {
  StreamGuard guard(stream_->stream());
  return std::sqrt(static_cast<double>(sumsq_.item()));
}

#if defined(DIFFUSE_HAVE_CUDA)

void DeviceTrainStep::queue_results(int slot) {
  DF_CHECK(slot >= 0 && slot < kResultSlots, "DeviceTrainStep::queue_results: slot ", slot);
  const cudaStream_t s = static_cast<cudaStream_t>(stream_->stream());
  DF_CUDA_CHECK(cudaMemcpyAsync(pinned_results_ + 2 * slot, results_.raw(), 2 * sizeof(float),
                                cudaMemcpyDeviceToHost, s));
  result_events_[static_cast<size_t>(slot)]->record(s);
}

bool DeviceTrainStep::results_done(int slot) const { return result_events_.at(static_cast<size_t>(slot))->done(); }
void DeviceTrainStep::wait_results(int slot) const { result_events_.at(static_cast<size_t>(slot))->synchronize(); }

DeviceTrainStep::Results DeviceTrainStep::results(int slot) const {
  DF_CHECK(slot >= 0 && slot < kResultSlots, "DeviceTrainStep::results: slot ", slot);
  Results r;
  r.sumsq = pinned_results_[2 * slot];
  r.loss = pinned_results_[2 * slot + 1];
  return r;
}

std::vector<double> DeviceTrainStep::per_sample_losses() {
  DF_CHECK(per_sample_.defined(), "DeviceTrainStep::per_sample_losses: objective ", enum_name(o_.objective),
           " keeps no per-sample losses (hybrid does), or no step was taken");
  StreamGuard guard(stream_->stream());
  const std::vector<float> v = per_sample_.to(Device::cpu()).to_vector();
  return {v.begin(), v.end()};
}

void DeviceTrainStep::stage(const Tensor& x, const Tensor& labels, const nn::LowRes& low, const StepDraw& draw) {
  DF_CHECK(x.defined() && x.dim() == 4 && x.dtype() == DType::f32, "DeviceTrainStep: x must be f32 (B, H, W, C), got ",
           x.defined() ? x.str() : std::string("undefined"));
  const int64_t B = x.size(0);
  const nn::UNetConfig& c = unet_->config();
  // The labels as the network reads them, checked here on the host (the graph reads them on the device).
  const Tensor ids = unet_->label_ids(labels, B);
  DF_CHECK(low.defined() == c.super_res(), "DeviceTrainStep: ",
           c.super_res() ? "a super-resolution model needs its low-resolution conditioning"
                         : "low-resolution conditioning given to a model without super-resolution input");
  if (low.defined()) {
    const Shape want{B, c.low_res_size, c.low_res_size, c.low_res_channels};
    DF_CHECK(low.image.dtype() == DType::f32 && low.image.shape() == want && low.level.defined() &&
                 low.level.dtype() == DType::f32 && low.level.numel() == B,
             "DeviceTrainStep: expected a low-resolution image f32 ", want.str(), " and ", B, " f32 levels, got ",
             low.image.value().str(), ", ", low.level.defined() ? low.level.str() : std::string("no levels"));
  }
  if (!x_.defined() || !(x_.shape() == x.shape()) || (ids.defined() && !(ids_.shape() == ids.shape()))) {
    // A new shape: new static buffers, and a new capture (the old graph reads the old ones).
    graph_ = std::make_unique<CudaGraph>();
    x_ = Tensor::empty(x.shape(), DType::f32, device_);
    z_ = Tensor::empty(x.shape(), DType::f32, device_);
    eps_ = Tensor::empty(x.shape(), DType::f32, device_);
    staging_ = Tensor::zeros({kArrays + kPerSample * B}, DType::f32, device_);
    host_staging_.assign(static_cast<size_t>(kArrays + kPerSample * B), 0.f);
    ids_ = ids.defined() ? Tensor::zeros(ids.shape(), DType::i64, device_) : Tensor();
    low_image_ = low.defined() ? Tensor::zeros(low.image.shape(), DType::f32, device_) : Tensor();
    per_sample_ = o_.objective == Objective::hybrid ? Tensor::zeros({B}, DType::f32, device_) : Tensor();
  }
  x_.copy_(x);
  if (low.defined()) low_image_.copy_(low.image.value());
  // Into the buffer the graph's lookups read, in stream order before the graph (as the staging below).
  if (ids.defined())
    cuda::tensor_upload(ids_.raw(), ids.data<int64_t>(), ids.numel() * sizeof(int64_t), stream_->stream());

  // Step s's draws and scalars, by train_step.h's definitions, as the cpu step takes them.
  const int64_t s = steps_;
  float* h = host_staging_.data();
  // The dropout kernels key their masks by (seed ^ word): dropout_seed(seed, s), the cpu's.
  const uint64_t word = stream_offset(s, Stream::dropout);
  std::memcpy(h + kWordAt, &word, sizeof word);
  kernels::AdamWParams p = adamw_step_at(o_.adamw, s + 1);
  p.ema_decay = ema_decay_at(o_.ema_decay, o_.ema_warmup, s);
  p.max_grad_norm = static_cast<float>(o_.grad_clip > 0 ? o_.grad_clip : 0);
  p.skip_nonfinite = 1;
  std::memcpy(h + kParamsAt, &p, sizeof p);
  // The timesteps: the caller's draw (train_step.h's draw_steps, as the cpu step draws them), or
  // uniform_steps.
  DF_CHECK(draw.t.empty() || static_cast<int64_t>(draw.t.size()) == B, "DeviceTrainStep: ", draw.t.size(),
           " timesteps for a batch of ", B);
  DF_CHECK(!o_.importance || static_cast<int64_t>(draw.importance.size()) == B, "DeviceTrainStep: ",
           draw.importance.size(), " importance weights for a batch of ", B, " (the option importance needs them)");
  const NoiseLevels lv = noise_levels(
      draw.t.empty() ? uniform_steps(o_.timesteps, static_cast<int>(B), o_.seed, s) : draw.t, abar_, prediction_,
      o_.loss_weight);
  for (int64_t b = 0; b < B; ++b) {
    h[kArrays + b] = static_cast<float>(lv.t[b]);
    h[kArrays + B + b] = static_cast<float>(lv.alpha[b]);
    h[kArrays + 2 * B + b] = static_cast<float>(lv.sigma[b]);
    h[kArrays + 3 * B + b] = static_cast<float>(lv.weight[b]);
  }
  if (low.defined()) {
    const std::vector<float> levels = low.level.to(Device::cpu()).to_vector();
    std::copy(levels.begin(), levels.end(), h + kArrays + 4 * B);
  }
  for (int64_t b = 0; b < B; ++b)
    h[kArrays + 5 * B + b] = o_.importance ? static_cast<float>(draw.importance[static_cast<size_t>(b)]) : 1.f;
  cuda::tensor_upload(staging_.raw(), h, host_staging_.size() * sizeof(float), stream_->stream());
  // z_t and eps from the fused noising kernel, here and not in the graph: its (seed, offset) are
  // the step's own arguments, the cpu step's stream (seed, s, noise), so both devices noise a batch
  // alike. One launch outside the graph, ordered after the upload on this stream.
  kernels::noise_forward(x_, staging_.slice(kArrays + B, kArrays + 2 * B),
                         staging_.slice(kArrays + 2 * B, kArrays + 3 * B), o_.seed, stream_offset(s, Stream::noise), z_,
                         eps_);
}

void DeviceTrainStep::body() {
  const int64_t B = x_.size(0), n = g_.numel();
  const Tensor t = staging_.slice(kArrays, kArrays + B);
  const Tensor alpha = staging_.slice(kArrays + B, kArrays + 2 * B);
  const Tensor sigma = staging_.slice(kArrays + 2 * B, kArrays + 3 * B);
  const Tensor weights = staging_.slice(kArrays + 3 * B, kArrays + 4 * B);
  const auto* word = reinterpret_cast<const uint64_t*>(staging_.data<float>() + kWordAt);
  const auto* params = reinterpret_cast<const kernels::AdamWParams*>(staging_.data<float>() + kParamsAt);

  PhiloxSeedXorScope seeds(word);
  ag::Autocast autocast(o_.bf16);
  GradMode grad_on;
  g_.zero_();  // one fill for every gradient (they are views of g_)
  const Tensor& eps = eps_;
  Tensor target;
  switch (prediction_) {
    case diffusion::Prediction::eps: target = eps; break;
    case diffusion::Prediction::x0: target = x_; break;
    default: {  // v = alpha eps - sigma x (Salimans & Ho 2022)
      const Tensor a4 = alpha.reshape({B, 1, 1, 1}), s4 = sigma.reshape({B, 1, 1, 1});
      target = kernels::sub(kernels::mul(eps, a4), kernels::mul(x_, s4));
    }
  }
  // The word turns seed into dropout_seed(seed, s) when the kernels run; the per-call offsets
  // restart here, as they do at each step on the cpu.
  unet_->set_dropout_seed(o_.seed);
  nn::LowRes low;
  if (low_image_.defined()) low = nn::LowRes{ag::Var(low_image_), staging_.slice(kArrays + 4 * B, kArrays + 5 * B)};
  ag::Var out = unet_->forward(ag::Var(z_), t, ids_, low);
  ag::Var loss;
  if (o_.objective == Objective::hybrid) {
    // hybrid_loss.h's loss, as CpuStepper's: the eps channels' weighted MSE, and the VLB term of the
    // variance channels with the mean detached (eps_hat's value: a plain tensor), from the kernel.
    const int64_t C = x_.size(-1);
    ag::Var eps_hat = ag::slice_last(out, 0, C), raw = ag::slice_last(out, C, 2 * C);
    ag::Var vlb = diffusion::learned_variance_vlb(vlb_constants_, t, x_, z_, eps_hat.value(), raw);
    const Tensor importance = o_.importance ? staging_.slice(kArrays + 5 * B, kArrays + 6 * B) : Tensor();
    diffusion::HybridLoss h =
        diffusion::hybrid_terms(eps_hat, vlb, eps, weights, importance, diffusion::kHybridLambda, o_.timesteps);
    loss = h.loss;
    per_sample_.copy_(h.per_sample_losses);
  } else {
    loss = ag::weighted_mse(out, ag::Var(target), weights);
  }
  ag::backward(loss);
  cuda::reduce_all(g_.data<float>(), n, kernels::ReduceOp::sum_squares, reduce_ws_.data<float>(),
                   sumsq_.data<float>(), stream_->stream());
  // sumsq += 0 * loss: NaN when the loss is not finite, so the update below skips the step (the
  // gradient of an infinite loss can be finite).
  DF_CHECK(loss.value().dtype() == DType::f32 && loss.value().numel() == 1, "DeviceTrainStep: loss ",
           loss.value().str());
  cuda::axpby(0.f, loss.value().raw(), 1.f, sumsq_.raw(), DType::f32, 1, stream_->stream());
  kernels::AdamWParams host_params;  // ignored: the kernel reads `params` on the device
  cuda::adamw_update(w_.data<float>(), g_.data<float>(), m_.data<float>(), v_.data<float>(), ema_.data<float>(),
                     lowp_ ? lowp_->buffer().raw() : nullptr,
                     decay_mask_.defined() ? decay_mask_.data<uint8_t>() : nullptr, sumsq_.data<float>(), n,
                     host_params, stream_->stream(), params);
  loss_.copy_(loss.value().reshape({1}));
}

void DeviceTrainStep::restore(const Tensor& m, const Tensor& v, const Tensor& ema, int64_t steps) {
  DF_CHECK(m.numel() == m_.numel() && v.numel() == v_.numel() && ema.numel() == ema_.numel() &&
               m.dtype() == DType::f32 && v.dtype() == DType::f32 && ema.dtype() == DType::f32,
           "DeviceTrainStep::restore: expected three f32 buffers of ", m_.numel(), " elements, got ", m.str(), ", ",
           v.str(), ", ", ema.str());
  DF_CHECK(steps >= 0, "DeviceTrainStep::restore: steps ", steps);
  diffuse::synchronize(device_);  // the weights were written on another stream
  StreamGuard guard(stream_->stream());
  m_.copy_(m.reshape(m_.shape()));
  v_.copy_(v.reshape(v_.shape()));
  ema_.copy_(ema.reshape(ema_.shape()));
  if (lowp_) lowp_->refresh();
  steps_ = steps;
  diffuse::synchronize(device_);
}

void DeviceTrainStep::swap_ema() {
  StreamGuard guard(stream_->stream());
  cuda::swap(w_.data<float>(), ema_.data<float>(), w_.numel(), stream_->stream());
  if (lowp_) lowp_->refresh();
  diffuse::synchronize(device_);
}

void DeviceTrainStep::step(const Tensor& x, const Tensor& labels, const nn::LowRes& low, const StepDraw& draw) {
  unet_->train();
  void* const caller = current_stream();
  StreamGuard guard(stream_->stream());
  set_current_device(device_);
  caller_ready_->record(caller);
  caller_ready_->block(stream_->stream());
  stage(x, labels, low, draw);
  const auto run = [this] {
    try {
      body();
    } catch (...) {
      ag::clear_tape();  // the nodes an interrupted forward or backward left
      throw;
    }
  };
  if (o_.graph)
    run_captured(graph_, device_, run);  // the first step runs, and is captured for the later ones
  else
    run();
  ++steps_;
  step_done_->record(stream_->stream());
  step_done_->block(caller);
}

#else  // a build without CUDA: the constructor's CudaStream has already refused

void DeviceTrainStep::stage(const Tensor&, const Tensor&, const nn::LowRes&, const StepDraw&) {
  DF_FAIL("DeviceTrainStep in a build without CUDA");
}
void DeviceTrainStep::body() { DF_FAIL("DeviceTrainStep in a build without CUDA"); }
void DeviceTrainStep::step(const Tensor&, const Tensor&, const nn::LowRes&, const StepDraw&) {
  DF_FAIL("DeviceTrainStep in a build without CUDA");
}
void DeviceTrainStep::restore(const Tensor&, const Tensor&, const Tensor&, int64_t) {
  DF_FAIL("DeviceTrainStep in a build without CUDA");
}
void DeviceTrainStep::swap_ema() { DF_FAIL("DeviceTrainStep in a build without CUDA"); }
void DeviceTrainStep::queue_results(int) { DF_FAIL("DeviceTrainStep in a build without CUDA"); }
bool DeviceTrainStep::results_done(int) const { return true; }
std::vector<double> DeviceTrainStep::per_sample_losses() { DF_FAIL("DeviceTrainStep in a build without CUDA"); }
void DeviceTrainStep::wait_results(int) const {}
DeviceTrainStep::Results DeviceTrainStep::results(int) const { return {}; }

#endif

}  // namespace diffuse::train
