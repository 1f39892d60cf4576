// kernels/cuda/sampler_step_cuda.cpp: the Tensor-level fused sampler step over the launcher of
// kernels/cuda/sampler_step.cu. Checks what the launchers cannot, allocates outputs and workspaces
// from the caching allocator and launches on the current stream; nothing here waits for the device.
#include <algorithm>
#include <cmath>

#include "core/check.h"
#include "core/stream.h"
#include "kernels/cuda/sampler_step.h"
#include "kernels/cuda/tensor_args.h"

namespace diffuse::cuda {

using namespace args;
using kernels::SamplerStepParams;

void sampler_step(const SamplerStepParams& p, const Tensor& z, const Tensor& model_out, const Tensor& model_out_uncond,
                  Tensor& z_next) {
  for (const Tensor* t : {&z, &model_out, const_cast<const Tensor*>(&z_next)}) {
    DF_CHECK(t->defined() && t->dtype() == DType::f32 && t->device().is_cuda(), "sampler_step: f32 GPU tensors, got ",
             t->defined() ? t->str() : std::string("undefined"));
    check_device(*t, z.device(), "sampler_step");
  }
  check_same_shape(z, z_next, "sampler_step");
  if (model_out_uncond.defined()) {
    check_same_shape(model_out, model_out_uncond, "sampler_step guidance");
    check_device(model_out_uncond, z.device(), "sampler_step");
  }
  const int64_t B = z.size(0), N = z.numel() / std::max<int64_t>(B, 1);
  DF_CHECK(model_out.numel() == (p.learned_variance ? 2 : 1) * z.numel(), "sampler_step: model output ",
           model_out.str(), " for z ", z.str());
  set_current_device(z.device());
  cuda::sampler_step(p, z.data<float>(), model_out.data<float>(),
                     model_out_uncond.defined() ? model_out_uncond.data<float>() : nullptr, z_next.data<float>(), N,
                     static_cast<int>(B), current_stream());
}

}  // namespace diffuse::cuda
