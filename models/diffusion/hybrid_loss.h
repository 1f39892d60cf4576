// models/diffusion/hybrid_loss.h: the hybrid objective of improved DDPM (Nichol & Dhariwal 2021,
// sec. 3.1, eq. 16): L_hybrid = L_simple + lambda L_vlb, lambda = 0.001, for a network with a
// learned variance (2C output channels: eps, then the raw variance r; objective.h).
//
// The VLB part trains only the variance: the mean behind it is detached (their code's
// `frozen_out`), so L_simple alone drives the eps channels. It is one differentiable op,
// learned_variance_vlb, whose forward is objective.h's math (p_mean_variance, q_posterior,
// normal_kl, the discretized decoder) and whose backward in r is analytic:
//   t > 0: L_t = sum_j KL(N(mu~, beta~) || N(mu, Sigma)), dKL/d log Sigma = normal_kl_dlv2;
//   t = 0: L_0 = -sum_j log p_disc(x_j; mu, log_scale = log Sigma / 2),
//          d/d log_scale from kernels::discretized_gaussian_decoder (log p and its derivative at once);
//   log Sigma = v log beta_t + (1 - v) log beta~_t, v = (r + 1)/2, so d log Sigma/dr = (log beta_t - log beta~_t)/2.
//
// Units as improved-diffusion's `_vb_terms_bpd`: bits per dim, the per-sample sum divided by
// N ln 2. L_vlb = sum_t L_t is estimated per sample by T L_t at the uniformly drawn t, so lambda
// L_vlb = (lambda T) L_t: with lambda = 0.001 this is their default RESCALED_MSE loss
// (`vb *= num_timesteps / 1000`), and exactly L_simple + L_t at T = 1000.
//
// Shapes: B batch, N elements per sample, the last dimension C channels (NHWC images).
// learned_variance_vlb runs on the host: B N closed-form terms beside a UNet forward; inputs on
// another device are copied, and the output and gradient go back to the variance channels' device
// and dtype. Its device form (the constants and steps as tensors) runs the same math in one kernel
// on the GPU (kernels/cuda/learned_variance_vlb.cu), with no host copy and no wait, so the device
// training step captures it in its graph; hybrid_terms, the rest of the loss, is one definition
// for both.
#pragma once

#include <vector>

#include "autograd/tape.h"
#include "core/tensor.h"
#include "models/diffusion/objective.h"
#include "models/diffusion/schedule.h"

namespace diffuse::diffusion {

// Per-sample VLB term L_{t_b} in bits per dim, (B), differentiable in `raw` only.
//   steps (B) 0-based step indices; x0, xt, pred, raw (B, ..., C) of one shape.
//   pred is the network's prediction (of kind `p`), taken as a constant (stop-gradient).
// f32 or f64 (the output and gradient have raw's dtype; the math is double throughout).
ag::Var learned_variance_vlb(const DiscreteSchedule& s, const std::vector<int>& steps, const Tensor& x0,
                             const Tensor& xt, const Tensor& pred, const ag::Var& raw, Prediction p = Prediction::eps);

// The device form. constants: vlb_constants(s, device); steps f32 (B) on raw's device, each
// sample's 0-based step (the UNet's time input); x0, xt, pred (a constant: the stop-gradient on
// the mean) and raw (B, ..., C) on a GPU, f32 or bf16. The value is f32 (B); the gradient has raw's
// dtype. The cpu form above is its reference.
ag::Var learned_variance_vlb(const Tensor& constants, const Tensor& steps, const Tensor& x0, const Tensor& xt,
                             const Tensor& pred, const ag::Var& raw);
// The schedule's per-step constants that the device form reads (kernels/learned_variance_vlb.h),
// on `device`. Made once, outside any captured graph.
Tensor vlb_constants(const DiscreteSchedule& s, Device device);

// Improved DDPM's lambda, the VLB term's weight in L_hybrid (both training steps use it).
inline constexpr double kHybridLambda = 1e-3;

struct HybridLoss {
  ag::Var loss;  // {1}: mse + lambda T vlb
  ag::Var mse;   // {1}: mean_b u_b w_b ||eps - eps_hat||^2 / N on the first C channels
  ag::Var vlb;   // {1}: mean_b u_b L_{t_b}, bits per dim (gradient into the last C channels only)
  // (B) each sample's own loss w_b ||eps - eps_hat||^2 / N + lambda T L_{t_b}, without u_b: what
  // importance sampling of t records per step (LossSecondMomentResampler::update).
  std::vector<double> per_sample;
  // The same per-sample losses as an f32 tensor (B) on the loss's device (hybrid_terms; per_sample
  // is read from it by hybrid_loss).
  Tensor per_sample_losses;
};
// out (B, ..., 2C) the network's output, eps the noise behind xt = alpha x0 + sigma eps, weights
// (B) per-sample weights of the mse part (1, or Min-SNR; not applied to the VLB). importance: (B)
// weights u_b of each sample's whole loss, 1 / (T p_t) when t was drawn from p_t (improved DDPM
// sec. 3.3), so the loss stays an unbiased estimate of the uniform-t loss; empty: all 1.
HybridLoss hybrid_loss(const DiscreteSchedule& s, const std::vector<int>& steps, const Tensor& x0, const Tensor& xt,
                       const Tensor& eps, const ag::Var& out, const Tensor& weights, double lambda = kHybridLambda,
                       const std::vector<double>& importance = {});
// The loss from its parts, on any device, what hybrid_loss and the device training step both
// call: eps_hat the eps channels of the output, vlb the per-sample VLB term (B) from either form
// of learned_variance_vlb, eps the noise, weights (B) f32, importance (B) f32 u_b or undefined
// (all 1), T the schedule's steps. per_sample stays empty (a host copy would wait for the device).
HybridLoss hybrid_terms(const ag::Var& eps_hat, const ag::Var& vlb, const Tensor& eps, const Tensor& weights,
                        const Tensor& importance, double lambda, int T);

}  // namespace diffuse::diffusion
