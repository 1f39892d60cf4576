#include "models/nn/snr_net.h"

#include <cmath>

#include "autograd/elementwise.h"
#include "autograd/linalg.h"

namespace diffuse::nn {

namespace {
// softplus^{-1}(y) = log(exp(y) - 1): raw weights whose softplus is y.
float inv_softplus(float y) { return static_cast<float>(std::log(std::expm1(static_cast<double>(y)))); }
}  // namespace

SNRNet::SNRNet(int features, float gamma_min, float gamma_max, uint64_t seed) : features_(features) {
  DF_CHECK(features > 0 && gamma_max > gamma_min, "SNRNet: features ", features, ", gamma range [", gamma_min, ", ",
           gamma_max, "]");
  // l1 starts as the identity t -> t (softplus(w1) = 1, b1 = 0): with l2, l3 small the initial
  // schedule is close to linear in gamma from gamma_min to gamma_max, VDM's starting point.
  w1_ = &register_parameter("l1_weight", Tensor::full({1, 1}, inv_softplus(1.f)));
  b1_ = &register_parameter("l1_bias", Tensor::zeros({1}));
  w2_ = &register_parameter("l2_weight", Tensor::zeros({features, 1}), Init::normal(1.f));
  b2_ = &register_parameter("l2_bias", Tensor::zeros({features}), Init::normal(1.f));
  w3_ = &register_parameter("l3_weight", Tensor::zeros({1, features}), Init::normal(1.f));
  gamma_min_ = &register_parameter("gamma_min", Tensor::full({1}, gamma_min));
  gamma_max_ = &register_parameter("gamma_max", Tensor::full({1}, gamma_max));
  init_parameters(seed);
}

SNRNet::Output SNRNet::forward(const Tensor& t) const {
  DF_CHECK(t.defined() && t.dim() == 1, "SNRNet: t must be (B), got ", t.defined() ? t.shape().str() : "undefined");
  const int64_t B = t.numel();
  const DType dt = w1_->dtype();
  // The constants below follow the parameters' device, so the net trains beside the UNet.
  const Device dev = w1_->device();
  Tensor tt = (t.dtype() == dt ? t : t.to(dt)).to(dev).reshape({B, 1});
  const double inv_k = 1.0 / features_;

  // Value and tangent (d/dt) of g at x (N, 1), carried together.
  struct Dual {
    ag::Var v, d;
  };
  auto g = [&](const Tensor& x, bool tangent) {
    const int64_t N = x.size(0);
    ag::Var h1 = ag::positive_linear(ag::Var(x), *w1_, *b1_);                // (N, 1)
    ag::Var s = ag::sigmoid(ag::positive_linear(h1, *w2_, *b2_));             // (N, K)
    ag::Var v = ag::add(h1, ag::mul_scalar(ag::positive_linear(s, *w3_), inv_k));
    if (!tangent) return Dual{v, {}};
    // dh1/dt = softplus(w1); dz/dt = softplus(w2) dh1; ds = s (1 - s) dz; dg = dh1 + l3(ds) / K.
    ag::Var dh1 = ag::positive_linear(ag::Var(Tensor::full({N, 1}, 1.0, dt, dev)), *w1_);
    ag::Var dz = ag::positive_linear(dh1, *w2_);
    ag::Var ds = ag::mul(ag::mul(s, ag::add_scalar(ag::neg(s), 1.0)), dz);
    ag::Var d = ag::add(dh1, ag::mul_scalar(ag::positive_linear(ds, *w3_), inv_k));
    return Dual{v, d};
  };
  Dual gt = g(tt, true);
  ag::Var g0 = g(Tensor::zeros({1, 1}, dt, dev), false).v, g1 = g(Tensor::full({1, 1}, 1.0, dt, dev), false).v;
  // gamma = gmin + (gmax - gmin) (g(t) - g(0)) / (g(1) - g(0)); gamma' = (gmax - gmin) g'(t) / (g(1) - g(0)).
  ag::Var scale = ag::div(ag::sub(*gamma_max_, *gamma_min_), ag::sub(g1, g0));  // (1, 1)
  ag::Var gamma = ag::add(*gamma_min_, ag::mul(scale, ag::sub(gt.v, g0)));
  ag::Var dgamma = ag::mul(scale, gt.d);
  return {ag::reshape(gamma, {B}), ag::reshape(dgamma, {B})};
}

double SNRNet::gamma(double t) const {
  ag::NoGrad ng;
  return forward(Tensor::full({1}, t, w1_->dtype())).gamma.value().to(Device::cpu()).to(DType::f64).data<double>()[0];
}

double SNRNet::dgamma_dt(double t) const {
  ag::NoGrad ng;
  return forward(Tensor::full({1}, t, w1_->dtype())).dgamma.value().to(Device::cpu()).to(DType::f64).data<double>()[0];
}

}  // namespace diffuse::nn
