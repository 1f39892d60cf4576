// models/diffusion/vdm_loss.h: the training loss of Variational Diffusion Models (Kingma et al.
// 2021, VDM) as ag ops, differentiable in the network's output AND in the noise schedule, so a
// learned schedule (models/nn/snr_net.h) trains with the same loss as the network.
//
// Per sample (VDM eq. 11, 17; their `model_vdm.py` VDM.__call__ with sm_n_timesteps = 0):
//   -log p(x) <= L_T + L_0 + L_inf
//   L_T   = KL(q(z_1 | x) || N(0, I)) = 0.5 sum_j (alpha_1^2 x_j^2 + sigma_1^2 - log sigma_1^2 - 1)
//   L_0   = -log p(x | z_0), z_0 = alpha_0 x + sigma_0 eps_0, VDM's decoder: per element a softmax
//           over the 256 levels x_k with logits -0.5 e^{-gamma_0} (z_0 / alpha_0 - x_k)^2
//   L_inf = 0.5 gamma'(t) ||eps - eps_hat(z_t; t)||^2,  z_t = alpha_t x + sigma_t eps
// with alpha^2 = sigmoid(-gamma), sigma^2 = sigmoid(gamma) (schedule.h). gamma enters L_inf
// through gamma'(t) and through z_t (a differentiable q_sample); L_T through gamma_1 and L_0
// through gamma_0. The decoder term is one op with an analytic backward in gamma_0; everything
// else is composed from autograd primitives (elementwise.h), which have their own gradchecks.
//
// Units: each term per sample in nats, summed over the sample's N elements; VdmLoss reports the
// batch means in bits per dim (divided by N ln 2), as VDM's `rescale_to_bpd`.
//
// Shapes: B batch, N elements per sample; x, eps, eps0, eps_hat (B, ...) of one shape. The
// schedule's values: gamma_t, dgamma_t (B); gamma_0, gamma_1 {1}.
#pragma once

#include "autograd/tape.h"
#include "core/tensor.h"

namespace diffuse::diffusion {

// z = alpha(gamma_b) x + sigma(gamma_b) eps per sample, differentiable in gamma (B) (and in
// nothing else: x and eps are data and noise).
ag::Var vdm_q_sample(const Tensor& x, const Tensor& eps, const ag::Var& gamma);

// L_T per sample (B), nats; gamma_1 {1}.
ag::Var vdm_prior_kl(const Tensor& x, const ag::Var& gamma1);

// L_0 per sample (B), nats, for z_0 = alpha_0 x + sigma_0 eps_0, i.e. z_0 / alpha_0 =
// x + e^{gamma_0 / 2} eps_0. One op, differentiable in gamma_0 {1}: with u_k = z_0/alpha_0 - x_k
// and l_k = -0.5 e^{-g} u_k^2, dl_k/dg = 0.5 e^{-g} u_k (x - x_k), and per element
// d(-log softmax_j)/dg = sum_k p_k dl_k/dg - dl_j/dg. Math in double on the host; x must lie on
// the 256 levels 2k/255 - 1. Equals likelihood.h's vdm_reconstruction_nll(x, z_0, gamma_0).
ag::Var vdm_reconstruction_nll(const Tensor& x, const Tensor& eps0, const ag::Var& gamma0);

// L_inf per sample (B), nats: 0.5 gamma'(t_b) ||eps_b - eps_hat_b||^2, differentiable in eps_hat
// and in gamma' (B).
ag::Var vdm_diffusion_loss(const Tensor& eps, const ag::Var& eps_hat, const ag::Var& dgamma);

struct VdmLoss {
  ag::Var loss;                              // {1}: mean_b (L_T + L_0 + L_inf) / (N ln 2), bits per dim
  ag::Var prior, reconstruction, diffusion;  // {1} each: the batch means of the parts, bits per dim
};
// The three terms together. eps_hat is the network's eps prediction at z_t = vdm_q_sample(x,
// eps, gamma_t); eps0 is the noise of z_0.
VdmLoss vdm_loss(const Tensor& x, const Tensor& eps, const ag::Var& eps_hat, const ag::Var& dgamma_t,
                 const Tensor& eps0, const ag::Var& gamma0, const ag::Var& gamma1);

}  // namespace diffuse::diffusion
