// kernels/group_norm.cpp: GroupNorm on Tensors (kernels/group_norm.h): allocates the outputs and runs
// the op where x lives: the cpu fast path of kernels/cpu/group_norm.cpp, or the GPU
// (kernels/cuda/group_norm_cuda.cpp: f32 statistics, any float dtype of scale and shift).
#include "kernels/group_norm.h"

#include "core/check.h"
#include "core/profile.h"
#include "kernels/backend.h"
#include "kernels/cuda/group_norm.h"

namespace diffuse::kernels {

namespace {
Tensor like_if(const Tensor& t, bool want) {
  return want && t.defined() ? Tensor::empty(t.shape(), t.dtype()) : Tensor();
}
}  // namespace

GroupNormResult group_norm_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& scale,
                                   const Tensor& shift, const GroupNormOptions& opt) {
  DF_PROFILE("group_norm_forward");
  if (x.device().is_cpu()) {
    GroupNormResult r;
    r.y = Tensor::empty(x.shape(), x.dtype());
    r.mean = Tensor::empty({x.size(0), opt.groups}, x.dtype());
    r.rstd = Tensor::empty({x.size(0), opt.groups}, x.dtype());
    cpu::group_norm_forward(x, gamma, beta, scale, shift, opt, r.y, r.mean, r.rstd);
    return r;
  }
  DF_ON_CUDA(x.device(), cuda::group_norm_forward(x, gamma, beta, scale, shift, opt));
  unsupported_device("group_norm", x.device());
}

GroupNormGrads group_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& mean, const Tensor& rstd,
                                   const Tensor& gamma, const Tensor& beta, const Tensor& scale,
                                   const Tensor& shift, const GroupNormOptions& opt) {
  DF_PROFILE("group_norm_backward");
  if (x.device().is_cpu()) {
    GroupNormGrads g;
    g.dx = Tensor::empty(x.shape(), x.dtype());
    g.dgamma = like_if(gamma, true);
    g.dbeta = like_if(beta, true);
    g.dscale = like_if(scale, true);
    g.dshift = like_if(shift, true);
    cpu::group_norm_backward(dy, x, mean, rstd, gamma, beta, scale, shift, opt, g);
    return g;
  }
  DF_ON_CUDA(x.device(), cuda::group_norm_backward(dy, x, mean, rstd, gamma, beta, scale, shift, opt));
  unsupported_device("group_norm", x.device());
}

}  // namespace diffuse::kernels
