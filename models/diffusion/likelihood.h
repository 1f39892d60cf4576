// models/diffusion/likelihood.h: bits per dimension of data under a denoiser.
//
// Discrete time: the variational bound of Ho et al. 2020 eq. 5 as improved-DDPM computes it
// (`calc_bpd_loop`): -log p(x0) <= L_T + sum_{i>=1} L_i + L_0 with L_T = prior_kl, L_i the
// Gaussian KL between q(x_{i-1} | x_i, x0) and p(x_{i-1} | x_i), L_0 the discretized decoder
// (objective.h). Either every term (T denoiser calls) or a stratified estimate: the steps
// 1..T-1 split into K equal strata, one uniform step per stratum and sample, weighted by the
// stratum's size; L_0 and L_T are always exact. The standard error is over the batch, so it holds
// the data's spread and the estimate's.
//
// Continuous time (Kingma et al. 2021, VDM eq. 11-17): -log p(x) <= KL(q(z_1|x) || N(0, I))
// + E[-log p(x | z_0)] + L_inf, with L_inf = 0.5 E_{t, eps}[gamma'(t) ||eps - eps_hat||^2] by Monte
// Carlo over low-discrepancy t, and p(x | z_0) the VDM decoder: per element a softmax over the 256
// levels x_k with logits -0.5 e^{-gamma(0)} (z_0 / alpha_0 - x_k)^2 (their `EncDec.logprob`).
//
// Data x0 (B, ...) f32 in [-1, 1] on the 256 levels 2k/255 - 1 (uint8 pixels / 127.5 - 1).
#pragma once

#include <vector>

#include "core/tensor.h"
#include "models/diffusion/objective.h"
#include "models/diffusion/sampler.h"
#include "models/diffusion/schedule.h"

namespace diffuse::diffusion {

struct BitsPerDim {
  double bpd = 0;        // mean over the batch of the per-sample bound
  double stderr_bpd = 0;  // standard error of that mean
  double prior_bpd = 0, diffusion_bpd = 0, decoder_bpd = 0;  // the three parts (batch means)
  std::vector<double> per_sample;  // each sample's bound, bits per dim
};

struct VlbOptions {
  Prediction prediction = Prediction::eps;
  VarianceKind variance = VarianceKind::beta_tilde;
  bool clip_x0 = false;
  Tensor labels;      // (B) or undefined, passed to the denoiser
  uint64_t seed = 0;  // Philox: noise of the forward process and the strata draws
  int strata = 0;     // 0: all T terms; K > 0: stratified estimate with K strata
};
BitsPerDim vlb_bits_per_dim(const DiscreteSchedule& s, const Denoiser& f, const Tensor& x0, const VlbOptions& o);

struct VdmBoundOptions {
  Prediction prediction = Prediction::eps;
  Tensor labels;
  uint64_t seed = 0;
  int t_samples = 1;  // Monte Carlo draws of (t, eps) per sample for L_inf
};
BitsPerDim vdm_bits_per_dim(const Schedule& s, const Denoiser& f, const Tensor& x0, const VdmBoundOptions& o);

// -log p(x | z_0) per sample, nats, for VDM's decoder at gamma(0) = gamma0.
Tensor vdm_reconstruction_nll(const Tensor& x0, const Tensor& z0, double gamma0);

}  // namespace diffuse::diffusion
