// models/diffusion/langevin.h: score-based samplers that run Langevin dynamics on a trained
// denoiser: annealed Langevin dynamics (Song & Ermon 2019, "Generative Modeling by Estimating
// Gradients of the Data Distribution", Algorithm 1) and the predictor-corrector sampler (Song et
// al. 2021, "Score-Based Generative Modeling through Stochastic Differential Equations",
// Algorithms 2-5, and their code `score_sde_pytorch/sampling.py`).
//
// In diffuse's variance-preserving form z_t = alpha_t x + sigma_t eps the model's score is
//   s(z, t) = grad_z log q_t(z) = -eps_hat(z, t) / sigma_t,
// with eps_hat the guided noise prediction that every sampler uses (any objective: eps, x0, v,
// hybrid and vdm predictions are converted to eps by the fused step, sampler.h). One Langevin step
// at level t with step size h and fresh noise n ~ N(0, I) is
//   z <- z + h s(z, t) + sqrt(2 h) n  =  z - (h / sigma_t) eps_hat + sqrt(2 h) n,
// whose stationary distribution is q_t as h -> 0. Step sizes (alpha_k = 1 - beta_k =
// alpha_bar(t_k) / alpha_bar(t_{k+1}), the grid step that leaves t_k; r = SamplerOptions::snr):
//   noise_level  h = 2 alpha_k (r sigma_t)^2: score-SDE's `AnnealedLangevinDynamics` corrector,
//                which is NCSN's step alpha_i = eps sigma_i^2 / sigma_L^2 in VP form: NCSN moves
//                x = z / alpha by alpha_i / 2 times the score, which in z is a step of
//                h = eps sigma_t^2 / (2 sigma_L^2) (sigma_L NCSN's last, variance-exploding sigma),
//                so r^2 = eps / (4 alpha_k sigma_L^2): NCSN's eps = 2e-5, sigma_L = 0.01 is r = 0.22;
//   snr          h = 2 alpha_k (r ||n|| / ||s||)^2: score-SDE's Algorithm 5 (VP) and their
//                `LangevinCorrector`, with each norm the mean over the batch of the per-sample
//                norms, as their code takes it (one h for the batch; langevin.cpp says why not
//                per sample).
//
// Noise: z_1 from Philox (seed, 0) unless z_T is given (as every sampler); the predictor step k
// of the PC sampler from (seed, k + 1), the DDPM sampler's stream, so PC with no corrector steps
// is sample_ddpm exactly; Langevin step j at level k from (seed, langevin_offset(k, j)) >= 2^32.
#pragma once

#include <cstdint>

#include "core/tensor.h"
#include "models/diffusion/sampler.h"
#include "models/diffusion/schedule.h"

namespace diffuse::diffusion {

enum class LangevinStepSize { noise_level, snr };

// The Philox offset of Langevin step j at level (or predictor step) k: (k + 1) 2^32 + j, apart
// from the grid samplers' offsets k + 1.
uint64_t langevin_offset(int k, int j);

// o.corrector_steps Langevin steps at time t (> 0) from z; one denoiser call each. alpha_k enters
// the step size as above; k numbers the level for the noise streams. x0_out, when given, receives
// the data prediction of the last call.
Tensor langevin_correct(const Schedule& s, const Denoiser& f, const Tensor& z, double t, double alpha_k,
                        LangevinStepSize rule, const SamplerOptions& o, int k, Tensor* x0_out = nullptr);

// Annealed Langevin dynamics over the noise ladder t_0 > ... > t_{L-1} of sampling_times (L =
// o.steps levels of the model's own schedule, placed by o.spacing; `logsnr` gives NCSN's
// geometric sigmas): o.corrector_steps steps with the noise_level step size at each level, z
// carried unchanged from one level to the next (VP marginals all have about unit scale), then
// Tweedie's denoising at the last level, x = x0_hat(z, t_{L-1}) (NCSNv2's final step, score-SDE's
// `noise_removal`). Model calls: L * corrector_steps + 1.
Tensor sample_langevin(const Schedule& s, const Denoiser& f, const SamplerOptions& o);

// Predictor-corrector: at each grid time t_k, o.corrector_steps Langevin steps with the snr step
// size, then the ancestral DDPM predictor step t_k -> t_{k+1} (sample_ddpm's step with o.variance;
// score-SDE's `ancestral_sampling` predictor is its variance beta). The corrector runs before the
// predictor at the same t, as in their pc_sampler, so it never runs at t = 0. Model calls:
// steps * (corrector_steps + 1). With corrector_steps = 0 it is sample_ddpm, bit for bit.
Tensor sample_pc(const Schedule& s, const Denoiser& f, const SamplerOptions& o);

}  // namespace diffuse::diffusion
