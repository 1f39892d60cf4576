// models/nn/snr_net.h: the learned noise schedule of Variational Diffusion Models (Kingma et al.
// 2021, appendix H "learned noise schedule"): a monotone network for gamma(t) = -log SNR(t).
//
//   g(t)     = l1(t) + l3(sigmoid(l2(l1(t)))) / K     l1: 1->1, l2: 1->K, l3: K->1 (no bias)
//   gamma(t) = gamma_min + (gamma_max - gamma_min) * (g(t) - g(0)) / (g(1) - g(0))
// Every layer is ag::positive_linear (weights through softplus) and sigmoid is increasing, so g
// and gamma increase in t; the normalisation pins gamma(0) = gamma_min and gamma(1) = gamma_max,
// the two learnable endpoints (VDM learns them to minimise the prior and reconstruction terms).
// The 1/K keeps l3's sum of K positive terms of unit order, as in VDM's code.
//
// gamma'(t), the weight of VDM's continuous-time loss (eq. 17), is computed exactly by
// forward-mode differentiation through the same layers (a tangent carried next to each
// activation), as ag ops: it is differentiable with respect to the parameters, which VDM needs
// to learn the schedule by minimising the loss variance.
#pragma once

#include <memory>

#include "models/diffusion/schedule.h"
#include "models/nn/module.h"

namespace diffuse::nn {

class SNRNet : public Module {
 public:
  explicit SNRNet(int features = 1024, float gamma_min = -13.3f, float gamma_max = 5.f, uint64_t seed = 0);

  struct Output {
    ag::Var gamma;   // (B)
    ag::Var dgamma;  // (B): d gamma / dt
  };
  // t (B) in [0, 1], f32 (or the parameters' dtype).
  Output forward(const Tensor& t) const;
  // Scalar conveniences for samplers (no graph recorded).
  double gamma(double t) const;
  double dgamma_dt(double t) const;

 private:
  int features_;
  ag::Var *w1_, *b1_, *w2_, *b2_, *w3_, *gamma_min_, *gamma_max_;
};

// The samplers' and the bound's view of a trained SNRNet: a continuous diffusion::Schedule whose
// gamma(t) and gamma'(t) are the network's (one forward each, no graph). The net is shared, so
// an EMA swap or a later load shows through.
class SNRSchedule : public diffusion::Schedule {
 public:
  explicit SNRSchedule(std::shared_ptr<const SNRNet> net) : net_(std::move(net)) {}
  double gamma(double t) const override { return net_->gamma(t); }
  double dgamma_dt(double t) const override { return net_->dgamma_dt(t); }
  std::string name() const override { return "learned"; }

 private:
  std::shared_ptr<const SNRNet> net_;
};

}  // namespace diffuse::nn
