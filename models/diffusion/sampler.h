// models/diffusion/sampler.h: samplers that take any denoiser and any schedule.
//
// The denoiser is a plain callable, so research code plugs in its own network:
//
//   Tensor f(const Tensor& z_t, const Tensor& t, const Tensor& labels)
//     z_t    (B, ...) f32 cpu: the noisy latent, z_t = alpha_t x + sigma_t eps (schedule.h);
//     t      (B) f32: CONTINUOUS time in [0, 1]. For a discrete schedule of T steps, step i
//            (0-based, the original index even after respacing) is t = (i + 1) / T, so a network
//            trained on integer steps uses i = round(t * T) - 1 (see discrete_index()). The
//            Karras samplers pass t = schedule.t_from_gamma(2 log sigma), which may fall between
//            the steps of a discrete schedule;
//     labels (B) class labels (any dtype), or undefined for an unconditional model;
//   returns (B, ...) the prediction named by SamplerOptions::prediction (eps, x0 or v), or, with
//   VarianceKind::learned, (B, ..., 2C): prediction then raw variance channels (objective.h).
//
// With classifier-free guidance the sampler calls the denoiser ONCE per step on a 2B batch:
// z and t repeated, labels [labels; guidance.null_labels].
//
// Every sampler returns x0-space samples (B, ...): it integrates from t = 1 to t = 0 and divides
// by alpha(0) where a continuous schedule leaves alpha(0) < 1. Noise comes from Philox: z_1 from
// stream (seed, 0) unless options.z_T is given, the noise of step k (0-based) from (seed, k + 1),
// so a seed gives the same samples on every device.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "kernels/sampler_step.h"
#include "models/diffusion/objective.h"
#include "models/diffusion/schedule.h"

namespace diffuse::diffusion {

using Denoiser = std::function<Tensor(const Tensor& z_t, const Tensor& t, const Tensor& labels)>;
// grad_z log p(y | z_t) of a noisy classifier (Dhariwal & Nichol 2021, sec. 4): (B, ...).
using ClassifierGrad = std::function<Tensor(const Tensor& z_t, const Tensor& t, const Tensor& y)>;

struct Guidance {
  // Classifier-free guidance weight w: pred = (1 + w) pred(z, y) - w pred(z, null) (Ho & Salimans
  // 2022, eq. 6). 0 turns it off (one denoiser call on B).
  double cfg_scale = 0;
  Tensor null_labels;  // (B) labels of the unconditional branch, needed when cfg_scale != 0
  // Classifier guidance: eps <- eps - sigma_t * classifier_scale * grad_log_p (Dhariwal & Nichol
  // 2021, Algorithm 2; used by every sampler through the eps it derives).
  ClassifierGrad grad_log_p;
  double classifier_scale = 1;
};

struct SamplerOptions {
  Shape shape;             // (B, ...) of the samples; C is the last dimension
  uint64_t seed = 0;
  int steps = 50;
  Prediction prediction = Prediction::eps;
  bool clip_x0 = false;    // clip the data prediction (and the result) to [-1, 1]
  Tensor labels;           // (B) or undefined
  Guidance guidance;
  Tensor z_T;              // the start latent at t = 1; undefined: randn(shape, seed, 0)

  // Which steps of a discrete schedule to visit: `timesteps` (0-based original indices) if not
  // empty, else `section_counts` ("10,10,20" or "ddim50") if not empty, else `steps` by `spacing`.
  // Continuous schedules use t_k = 1 - k / steps, or uniform log-SNR with Spacing::logsnr.
  // Every sampler works on every spacing; at equal model calls DPM-Solver++(2M) is at least as
  // accurate as DDIM on all of them, and furthest ahead on trailing and logsnr grids
  // (docs/diffusion.md, "Sampler accuracy", has the measured errors).
  Spacing spacing = Spacing::linspace;
  std::string section_counts;
  std::vector<int> timesteps;

  VarianceKind variance = VarianceKind::beta_tilde;  // DDPM ancestral
  double eta = 0;                                    // DDIM: 0 deterministic, 1 DDPM-like
  // Karras samplers (Euler, Heun): EDM sigmas; 0 takes them from the schedule's ends, with
  // sigma_max capped at EDM's 80 (sampler.cpp says why).
  double sigma_min = 0, sigma_max = 0, rho = 7;
  // Langevin correctors (langevin.h): steps per noise level (annealed Langevin) or per predictor
  // step (predictor-corrector), and the signal-to-noise ratio r of the step size. Defaults as the
  // score-SDE code (Song et al. 2021): one step, r = 0.16.
  int corrector_steps = 1;
  double snr = 0.16;
  // Called after every step with (step, steps, z after the step, x0 prediction of the step).
  std::function<void(int, int, const Tensor&, const Tensor&)> callback;
};

// The time grid t_0 = first step > ... > t_{N-1} > t_N = 0 that the grid samplers visit.
std::vector<double> sampling_times(const Schedule& s, const SamplerOptions& o);
// 0-based discrete step index of a denoiser time t for a T-step schedule: round(t T) - 1.
int discrete_index(float t, int T);

// DDPM ancestral sampling (Ho et al. 2020, Algorithm 2) on the (respaced) grid: the posterior
// q(z_s | z_t, x0_hat) with variance beta, beta_tilde or learned (Nichol & Dhariwal 2021, eq. 15).
Tensor sample_ddpm(const Schedule& s, const Denoiser& f, const SamplerOptions& o);
// DDIM (Song et al. 2021, eq. 12 with sigma_t(eta) of eq. 16).
Tensor sample_ddim(const Schedule& s, const Denoiser& f, const SamplerOptions& o);
// Deterministic DDIM run backwards: x0 (B, ...) -> z_1 on the same grid that sample_ddim
// integrates (Song et al. 2021 sec. 4.3; each step evaluates the model at the step's target time
// on the current latent, as in null-text inversion, Mokady et al. 2023). o.shape is ignored.
Tensor ddim_invert(const Schedule& s, const Denoiser& f, const Tensor& x0, const SamplerOptions& o);
// VDM ancestral sampling in continuous time (Kingma et al. 2021, app. A.4: p(z_s | z_t) with
// c = -expm1(gamma_s - gamma_t)); clip_x0 clips the x0 behind eps as in their sampler.
Tensor sample_vdm(const Schedule& s, const Denoiser& f, const SamplerOptions& o);
// DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2), data prediction, multistep,
// lambda = -gamma / 2; first order on the first step and on every step that ends at the data end
// of the schedule: sigma = 0, t = 0, or a discrete schedule's first trained step.
Tensor sample_dpmpp_2m(const Schedule& s, const Denoiser& f, const SamplerOptions& o);
// Euler and Heun in x = z / alpha on the sigmas sigma = e^{gamma/2} of the spacing's grid (karras:
// EDM's rho = 7 ramp; Karras et al. 2022, Algorithm 1 without churn, Table 1's VP scaling), where
// dx/dsigma = (x - D(x; sigma)) / sigma. Euler: x' = (sigma'/sigma) x + (1 - sigma'/sigma) D,
// DDIM's update. Heun is second order with two denoiser calls a step: the exponential-integrator
// step of DPM-Solver++ with its second stage at the log-sigma midpoint, and onto sigma = 0 the
// midpoint rule in sigma, or Euler from the lowest sigma the schedule knows (sampler.cpp derives
// them): 2 steps calls, 2 steps - 1 where the last step is Euler's.
Tensor sample_euler(const Schedule& s, const Denoiser& f, const SamplerOptions& o);
Tensor sample_heun(const Schedule& s, const Denoiser& f, const SamplerOptions& o);

// langevin (annealed Langevin dynamics) and pc (predictor-corrector) live in langevin.h.
enum class SamplerKind { ddpm, ddim, vdm, dpmpp_2m, euler, heun, langevin, pc };
inline constexpr EnumName<SamplerKind> kSamplerNames[] = {
    {SamplerKind::ddpm, "ddpm"},   {SamplerKind::ddim, "ddim"}, {SamplerKind::dpmpp_2m, "dpm++2m"},
    {SamplerKind::euler, "euler"}, {SamplerKind::heun, "heun"}, {SamplerKind::vdm, "vdm"},
    {SamplerKind::langevin, "langevin"}, {SamplerKind::pc, "pc"}};
constexpr std::span<const EnumName<SamplerKind>> enum_table(SamplerKind) { return kSamplerNames; }
// The names of kSamplerNames, exactly; anything else is refused with the list.
SamplerKind parse_sampler(const std::string& name);
// The spacing a sampler walks: `asked` where given, else its default, karras (EDM's sigma ramp,
// the grid Euler and Heun were designed on; Karras et al. 2022) for euler and heun and linspace for
// the others. The one definition `diffuse sample` and the C API share.
Spacing sampler_spacing(SamplerKind kind, std::optional<Spacing> asked);
Tensor sample(SamplerKind kind, const Schedule& s, const Denoiser& f, const SamplerOptions& o);

// The whole plan of a DDPM, DDIM or VDM run, computed on the host before any step: the time grid
// (t_0 > ... > t_N = 0) and the coefficients of each of the N fused steps, exactly those the
// sampler itself uses (the same code computes them). A loop that stays on a GPU (sampling_loop.h)
// uploads it once and replays it; options that need the host between steps (guidance, callbacks)
// are not part of a plan.
struct GridPlan {
  std::vector<double> times;
  std::vector<kernels::SamplerStepCoeffs> coeffs;  // step k: from times[k] to times[k + 1]
  double alpha0 = 1;  // what the result is divided by at t = 0 (1 where sigma(0) = 0)
};
GridPlan grid_plan(SamplerKind kind, const Schedule& s, const SamplerOptions& o);

// One step as the grid samplers take it, for samplers built on them (langevin.h): one denoiser
// call at time t on z (classifier-free guidance on 2B rows; classifier guidance shifting eps by
// -sigma_t s grad log p) and one fused kernels::sampler_step pass with coefficients `c` for every
// sample, its noise from Philox (o.seed, offset). x0_out, when given, receives the data prediction.
// With c = {alpha_t, sigma_t, c_eps = 1} it returns the guided (and, with clip_x0, re-derived) eps.
Tensor denoise_step(const Schedule& s, const Denoiser& f, const Tensor& z, double t,
                    const kernels::SamplerStepCoeffs& c, const SamplerOptions& o, uint64_t offset,
                    Tensor* x0_out = nullptr);

// A schedule's noise level at t, from one gamma(t): alpha_t^2 = sigmoid(-gamma), sigma_t^2 =
// sigmoid(gamma) and their roots. Exact at the ends: sigma = 0 at t = 0 of a discrete schedule,
// where gamma = -inf. The grid samplers' coefficients start here, and langevin.h's.
struct Level {
  double g, a2, s2, a, s;
};
Level level_at(const Schedule& s, double t);

// The end of every grid sampler (and of those built on them): z at t = 0 back to data space,
// divided by alpha(0) where sigma(0) > 0, then clipped to [-1, 1] with o.clip_x0. In place.
Tensor grid_finish(const Schedule& s, Tensor z, const SamplerOptions& o);

// Spherical interpolation of two latents per sample (Shoemake 1985; DDIM sec. 5.3):
// sin((1-a) th)/sin th * x + sin(a th)/sin th * y, th the angle between x_b and y_b.
Tensor slerp(const Tensor& x, const Tensor& y, double a);

}  // namespace diffuse::diffusion
