// models/diffusion/sampling_loop.cpp: the GPU sampling loop of sampling_loop.h. B batch,
// N elements per sample, C = last dimension.
#include "models/diffusion/sampling_loop.h"

#include <cstring>
#include <vector>

#include "core/check.h"
#include "core/graph.h"
#include "core/stream.h"

#if defined(DIFFUSE_HAVE_CUDA)
#include "core/tensor_cuda.h"
#include "kernels/sampler_step.h"
#endif

namespace diffuse::diffusion {

namespace {

using kernels::SamplerStepCoeffs;
constexpr int kCoeffFloats = 9;
static_assert(sizeof(SamplerStepCoeffs) == kCoeffFloats * sizeof(float), "SamplerStepCoeffs is plain floats");

kernels::StepPrediction to_step(Prediction p) {
  return p == Prediction::eps ? kernels::StepPrediction::eps
                              : p == Prediction::x0 ? kernels::StepPrediction::x0 : kernels::StepPrediction::v;
}

}  // namespace

SamplingLoop::SamplingLoop(const Schedule& s, LoopDenoiser f, SamplingLoopOptions o)
    : f_(std::move(f)), o_(std::move(o)) {
  const SamplerOptions& so = o_.sampler;
  DF_CHECK(f_, "SamplingLoop: no denoiser");
  DF_CHECK(o_.device.is_cuda() || !o_.graph, "SamplingLoop: CUDA graphs need a GPU; on ", o_.device.str(),
           " set graph = false");
  DF_CHECK(so.guidance.cfg_scale == 0 && !so.guidance.grad_log_p && !so.labels.defined() && !so.z_T.defined() &&
               !so.callback,
           "SamplingLoop: guidance, labels, z_T and callbacks need the host between steps; use sample()");
  DF_CHECK(so.shape.rank() >= 2 && so.shape.numel() > 0, "SamplingLoop: options.shape ", so.shape.str(),
           " must be (B, ..., C)");
  plan_ = grid_plan(o_.kind, s, so);
  steps_ = static_cast<int>(plan_.coeffs.size());
  DF_CHECK(steps_ >= 1, "SamplingLoop: no steps");
  batch_ = so.shape[0];
  finish_ = so.clip_x0 || plan_.alpha0 != 1.0;

  // The tables, built on the host once. Row `steps_` of the coefficients is the finishing pass:
  // with prediction eps, alpha = alpha(0), sigma = 0 and model output z, the kernel's x0 is
  // z / alpha(0), clipped with clip_x0, and c_x0 = 1 makes it the result (finish() of sampler.cpp).
  const int64_t B = batch_;
  std::vector<float> coeffs(static_cast<size_t>((steps_ + 1) * B * kCoeffFloats));
  std::vector<float> times(static_cast<size_t>(steps_ * B));
  for (int k = 0; k < steps_; ++k) {
    const float tk = o_.time_of ? o_.time_of(plan_.times[k]) : static_cast<float>(plan_.times[k]);
    for (int64_t b = 0; b < B; ++b) {
      times[static_cast<size_t>(k * B + b)] = tk;
      std::memcpy(&coeffs[static_cast<size_t>((k * B + b) * kCoeffFloats)], &plan_.coeffs[k], sizeof(SamplerStepCoeffs));
    }
  }
  SamplerStepCoeffs fin;
  fin.alpha = static_cast<float>(plan_.alpha0);
  fin.sigma = 0;
  fin.c_x0 = 1;
  for (int64_t b = 0; b < B; ++b)
    std::memcpy(&coeffs[static_cast<size_t>((steps_ * B + b) * kCoeffFloats)], &fin, sizeof(SamplerStepCoeffs));

  if (o_.device.is_cuda()) stream_ = std::make_unique<CudaStream>(o_.device);
  graph_ = std::make_unique<CudaGraph>();
  StreamGuard guard(stream());
  z_ = Tensor::empty(so.shape, DType::f32, o_.device);
  result_ = finish_ ? Tensor::empty(so.shape, DType::f32, o_.device) : z_;
  times_ = Tensor::from_vector(times, {steps_, B}).to(o_.device);
  coeffs_ = Tensor::from_vector(coeffs, {steps_ + 1, B, kCoeffFloats}).to(o_.device);
  word_ = Tensor::zeros({1}, DType::i64, o_.device);
  diffuse::synchronize(o_.device);  // set-up: the tables are on the device before the host copies go
}

SamplingLoop::~SamplingLoop() {
  StreamGuard guard(stream());
  graph_.reset();  // waits for a replay still running, then frees the graph's memory
  z_ = result_ = times_ = coeffs_ = word_ = Tensor();
}

bool SamplingLoop::captured() const { return graph_ && graph_->ready(); }
void* SamplingLoop::stream() const { return stream_ ? stream_->stream() : nullptr; }

void SamplingLoop::synchronize() {
  StreamGuard guard(stream());
  diffuse::synchronize(o_.device);
}

Tensor SamplingLoop::to_host() {
  StreamGuard guard(stream());
  return result_.to(Device::cpu());  // the copy waits for the stream
}

// One fused update: the CUDA kernel, or its reference loop when the sampler runs on the cpu.
void SamplingLoop::update(const kernels::SamplerStepParams& p, const Tensor& z, const Tensor& model_out,
                           Tensor& z_next) {
  if (o_.device.is_cpu()) {
    kernels::sampler_step_cpu(p, z.data<float>(), model_out.data<float>(), nullptr, z_next.data<float>(),
                              z.numel() / batch_, static_cast<int>(batch_));
    return;
  }
#if defined(DIFFUSE_HAVE_CUDA)
  cuda::sampler_step(p, z, model_out, Tensor(), z_next);
#else
  DF_FAIL("SamplingLoop on ", o_.device.str(), " in a build without CUDA");
#endif
}

void SamplingLoop::loop() {
  const SamplerOptions& so = o_.sampler;
  const int64_t B = batch_;
  kernels::SamplerStepParams p;
  p.prediction = to_step(so.prediction);
  p.clip_x0 = so.clip_x0;
  p.learned_variance = so.variance == VarianceKind::learned;
  p.channels = so.shape[so.shape.rank() - 1];
  p.seed = so.seed;
  p.seed_xor = static_cast<const uint64_t*>(word_.raw());
  const float* coeffs = coeffs_.data<float>();
  for (int k = 0; k < steps_; ++k) {
    const Tensor out = f_(z_, times_.select(k));
    DF_CHECK(out.defined() && out.dtype() == DType::f32 && out.device() == z_.device() &&
                 out.numel() == (p.learned_variance ? 2 : 1) * z_.numel(),
             "SamplingLoop: the denoiser returned ", out.defined() ? out.str() : std::string("nothing"), " for z ",
             z_.str());
    p.coeffs = reinterpret_cast<const SamplerStepCoeffs*>(coeffs + k * B * kCoeffFloats);
    p.offset = static_cast<uint64_t>(k) + 1;  // sample(): the noise of step k is (seed, k + 1)
    update(p, z_, out, z_);
  }
  if (finish_) {
    kernels::SamplerStepParams q;
    q.prediction = kernels::StepPrediction::eps;
    q.coeffs = reinterpret_cast<const SamplerStepCoeffs*>(coeffs + steps_ * B * kCoeffFloats);
    q.clip_x0 = so.clip_x0;
    q.channels = p.channels;
    update(q, z_, z_, result_);  // out of place: the kernel's model output may not alias what it writes
  }
}

const Tensor& SamplingLoop::run(uint64_t seed) {
  void* const caller = current_stream();
  StreamGuard guard(stream());
  // Joined to the caller's stream both ways by events, without a host wait: what the caller
  // queued before (the model's weights, a class label tensor) is read after it, and whatever the
  // caller queues after run() returns (reading the result it hands back) comes after the samples.
  if (o_.device.is_cuda()) stream_wait(stream(), caller, o_.device);
  // The run's inputs, outside any graph: z_1 from (seed, 0) and the word that turns the base seed
  // into `seed` for the step noise, seed = base ^ (base ^ seed).
  z_.normal_(seed, 0);
  const uint64_t word = o_.sampler.seed ^ seed;
  if (o_.device.is_cpu()) {
    *static_cast<uint64_t*>(word_.raw()) = word;
  } else {
#if defined(DIFFUSE_HAVE_CUDA)
    cuda::tensor_upload(word_.raw(), &word, sizeof word, stream());
#endif
  }
  if (o_.graph)
    run_captured(graph_, o_.device, [this] { loop(); });  // the first run samples, and is captured
  else
    loop();
  if (o_.device.is_cuda()) stream_wait(caller, stream(), o_.device);
  return result_;
}

}  // namespace diffuse::diffusion
