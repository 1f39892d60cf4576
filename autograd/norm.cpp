// autograd/norm.cpp: the Var-level GroupNorm. Forward keeps x and the per-(b, g) statistics;
// backward recomputes the pre-activation from them (kernels/group_norm.h).
#include "autograd/norm.h"

#include "autograd/autocast.h"

#include "kernels/group_norm.h"

namespace diffuse::ag {

Var group_norm(const Var& x_in, const Var& gamma, const Var& beta, int groups, float eps, const Var& scale,
               const Var& shift, bool silu) {
  // Under mixed precision x goes in as bf16; gamma, beta, scale and shift are read in f32 by the
  // GPU kernel whatever their dtype, and their gradients come back in their own.
  const Var x = autocast(x_in);
  auto val = [](const Var& v) { return v.defined() ? v.value() : Tensor(); };
  const kernels::GroupNormOptions opt{groups, eps, silu};
  Tensor xv = x.value(), gv = val(gamma), bv = val(beta), sv = val(scale), tv = val(shift);
  kernels::GroupNormResult r = kernels::group_norm_forward(xv, gv, bv, sv, tv, opt);
  Tensor mean = r.mean, rstd = r.rstd;
  return record("group_norm", r.y, {x, gamma, beta, scale, shift},
                [xv, gv, bv, sv, tv, mean, rstd, opt](const Tensor& dy) {
                  kernels::GroupNormGrads g = kernels::group_norm_backward(dy, xv, mean, rstd, gv, bv, sv, tv, opt);
                  return std::vector<Tensor>{g.dx, g.dgamma, g.dbeta, g.dscale, g.dshift};
                });
}

}  // namespace diffuse::ag
