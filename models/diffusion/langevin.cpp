// models/diffusion/langevin.cpp: annealed Langevin dynamics and the predictor-corrector sampler;
// the equations and their sources are in langevin.h and docs/diffusion.md. B batch, N elements
// per sample.
#include "models/diffusion/langevin.h"

#include <algorithm>
#include <cmath>

#include "core/check.h"

namespace diffuse::diffusion {
namespace {

using kernels::SamplerStepCoeffs;

Tensor start_latent(const SamplerOptions& o) {
  if (o.z_T.defined()) {
    check_dtype(o.z_T, DType::f32, "sampler z_T");
    return o.z_T.to(Device::cpu()).clone();
  }
  DF_CHECK(o.shape.rank() >= 1 && o.shape.numel() > 0, "sampler: options.shape is empty");
  return Tensor::randn(o.shape, o.seed, 0);
}

// alpha_k = 1 - beta_k of the grid step t_k -> t_{k+1}.
double step_alpha(const Schedule& sch, const std::vector<double>& ts, int k) {
  return level_at(sch, ts[k]).a2 / level_at(sch, ts[k + 1]).a2;
}

void check_langevin_options(const SamplerOptions& o, const char* name, int min_steps) {
  DF_CHECK(o.corrector_steps >= min_steps, name, ": corrector steps = ", o.corrector_steps, " (expected ",
           min_steps == 0 ? "0 or more" : "1 or more", ")");
  DF_CHECK(std::isfinite(o.snr) && o.snr > 0, name, ": snr = ", o.snr, " (expected a positive number; the "
           "score-SDE default is 0.16)");
}

}  // namespace

uint64_t langevin_offset(int k, int j) {
  DF_CHECK(k >= 0 && j >= 0, "langevin_offset: level ", k, ", step ", j);
  return (static_cast<uint64_t>(k) + 1) << 32 | static_cast<uint64_t>(j);
}

Tensor langevin_correct(const Schedule& sch, const Denoiser& f, const Tensor& z_in, double t, double alpha_k,
                        LangevinStepSize rule, const SamplerOptions& o, int k, Tensor* x0_out) {
  const Level l = level_at(sch, t);
  DF_CHECK(l.s2 > 0, "langevin: the score needs sigma > 0 (t = ", t, ")");
  Tensor z = z_in.clone();
  const int64_t B = z.size(0), N = z.numel() / B;
  // The fused step with c_eps = 1 returns eps_hat after guidance, the prediction's conversion and
  // clip_x0, the same eps every other sampler steps with.
  SamplerStepCoeffs c;
  c.alpha = static_cast<float>(l.a);
  c.sigma = static_cast<float>(l.s);
  c.c_eps = 1;
  const double r = o.snr;
  for (int j = 0; j < o.corrector_steps; ++j) {
    const Tensor eps = denoise_step(sch, f, z, t, c, o, 0, x0_out);
    const Tensor n = Tensor::randn(z.shape(), o.seed, langevin_offset(k, j));
    const float* ep = eps.data<float>();
    const float* np = n.data<float>();
    float* zp = z.data<float>();
    double h = 2.0 * alpha_k * (r * l.s) * (r * l.s);
    if (rule == LangevinStepSize::snr) {
      // ||s|| = ||eps_hat|| / sigma; each norm is the batch mean of the per-sample norms, as in the
      // score-SDE code. A sample's own ||n_b||^2 / ||s_b||^2 is a ratio of chi-square-like
      // variables with N degrees of freedom: concentrated for images, heavy-tailed in a few
      // dimensions (infinite variance at N <= 4; on 3-D Gaussian data PC at 100 steps erred 0.59
      // in W2 with per-sample norms, 0.03 with these). A zero score takes no step.
      double mean_ne = 0, mean_nn = 0;
      for (int64_t b = 0; b < B; ++b) {
        double ne = 0, nn = 0;
        for (int64_t i = b * N; i < (b + 1) * N; ++i) {
          ne += static_cast<double>(ep[i]) * ep[i];
          nn += static_cast<double>(np[i]) * np[i];
        }
        mean_ne += std::sqrt(ne) / static_cast<double>(B);
        mean_nn += std::sqrt(nn) / static_cast<double>(B);
      }
      h = mean_ne > 0 ? 2.0 * alpha_k * (r * mean_nn * l.s / mean_ne) * (r * mean_nn * l.s / mean_ne) : 0.0;
    }
    const double ce = -h / l.s, cn = std::sqrt(2.0 * h);
    for (int64_t i = 0; i < B * N; ++i) zp[i] = static_cast<float>(zp[i] + ce * ep[i] + cn * np[i]);
  }
  return z;
}

Tensor sample_langevin(const Schedule& sch, const Denoiser& f, const SamplerOptions& o) {
  check_langevin_options(o, "langevin", 1);
  const std::vector<double> ts = sampling_times(sch, o);
  const int L = static_cast<int>(ts.size()) - 1;  // the levels; ts[L] = 0 is not one
  Tensor z = start_latent(o);
  for (int k = 0; k < L; ++k) {
    Tensor x0;
    z = langevin_correct(sch, f, z, ts[k], step_alpha(sch, ts, k), LangevinStepSize::noise_level, o, k, &x0);
    if (o.callback) o.callback(k, L, z, x0);
  }
  // Tweedie's formula at the last level: E[x | z] = (z + sigma^2 s(z)) / alpha = x0_hat; with
  // clip_x0 the kernel clips it.
  const Level l = level_at(sch, ts[L - 1]);
  SamplerStepCoeffs c;
  c.alpha = static_cast<float>(l.a);
  c.sigma = static_cast<float>(l.s);
  c.c_x0 = 1;
  return denoise_step(sch, f, z, ts[L - 1], c, o, 0);
}

Tensor sample_pc(const Schedule& sch, const Denoiser& f, const SamplerOptions& o) {
  check_langevin_options(o, "pc", 0);
  // The predictor's coefficients are sample_ddpm's own (grid_plan computes them with the same code).
  const GridPlan plan = grid_plan(SamplerKind::ddpm, sch, o);
  const std::vector<double>& ts = plan.times;
  const int n = static_cast<int>(ts.size()) - 1;
  Tensor z = start_latent(o);
  for (int k = 0; k < n; ++k) {
    if (o.corrector_steps > 0)
      z = langevin_correct(sch, f, z, ts[k], step_alpha(sch, ts, k), LangevinStepSize::snr, o, k);
    Tensor x0;
    z = denoise_step(sch, f, z, ts[k], plan.coeffs[k], o, static_cast<uint64_t>(k) + 1, &x0);
    if (o.callback) o.callback(k, n, z, x0);
  }
  return grid_finish(sch, z, o);  // as every grid sampler ends
}

}  // namespace diffuse::diffusion
