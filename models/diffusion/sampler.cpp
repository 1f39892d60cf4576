// models/diffusion/sampler.cpp: the sampler loops. Each step runs the denoiser once (on 2B with
// classifier-free guidance) and one fused kernels::sampler_step pass; the coefficients below are
// the whole difference between the samplers. Sources per formula are in sampler.h and
// docs/diffusion.md. B batch, N elements per sample, C = last dimension.
#include "models/diffusion/sampler.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/check.h"
#include "kernels/sampler_step.h"
#include "models/diffusion/langevin.h"

namespace diffuse::diffusion {
namespace {

using kernels::SamplerStepCoeffs;
using kernels::SamplerStepParams;
using kernels::StepPrediction;

Tensor cat0(const Tensor& a, const Tensor& b) {
  DF_CHECK(a.dtype() == b.dtype() && a.dim() == b.dim(), "cat0: ", a.str(), " and ", b.str());
  for (int d = 1; d < a.dim(); ++d) DF_CHECK(a.size(d) == b.size(d), "cat0: ", a.str(), " and ", b.str());
  std::vector<int64_t> dims = a.shape().vec();
  dims[0] += b.size(0);
  Tensor out = Tensor::empty(Shape(dims), a.dtype());
  std::memcpy(out.raw(), a.raw(), a.nbytes());
  std::memcpy(static_cast<char*>(out.raw()) + a.nbytes(), b.raw(), b.nbytes());
  return out;
}

StepPrediction to_step(Prediction p) {
  return p == Prediction::eps ? StepPrediction::eps : p == Prediction::x0 ? StepPrediction::x0 : StepPrediction::v;
}

Tensor initial_latent(const SamplerOptions& o) {
  if (o.z_T.defined()) {
    check_dtype(o.z_T, DType::f32, "sampler z_T");
    return o.z_T.to(Device::cpu()).clone();
  }
  DF_CHECK(o.shape.rank() >= 1 && o.shape.numel() > 0, "sampler: options.shape is empty");
  return Tensor::randn(o.shape, o.seed, 0);
}

// One denoiser evaluation with guidance. sigma_vp: the VP sigma of z, for the classifier shift.
struct Eval {
  Tensor cond, uncond, eps_shift;
};

Eval evaluate(const Denoiser& f, const Tensor& z, double t, double sigma_vp, const SamplerOptions& o) {
  DF_CHECK(f, "sampler: no denoiser");
  const int64_t B = z.size(0);
  Tensor tt = Tensor::full({B}, t);
  Eval e;
  const bool learned = o.variance == VarianceKind::learned;
  auto check_out = [&](const Tensor& out, int64_t rows) {
    DF_CHECK(out.defined() && out.dim() == z.dim() && out.size(0) == rows, "denoiser returned ",
             out.defined() ? out.str() : std::string("nothing"), " for z ", z.str());
    check_dtype(out, DType::f32, "denoiser output");
    check_device(out, Device::cpu(), "denoiser output");
    for (int d = 1; d < z.dim(); ++d) {
      const int64_t want = (learned && d == z.dim() - 1) ? 2 * z.size(d) : z.size(d);
      DF_CHECK(out.size(d) == want, "denoiser returned ", out.str(), " for z ", z.str(),
               learned ? " (learned variance: 2C channels)" : "");
    }
  };
  if (o.guidance.cfg_scale != 0) {
    DF_CHECK(o.labels.defined() && o.guidance.null_labels.defined(),
             "classifier-free guidance needs labels and guidance.null_labels");
    DF_CHECK(o.labels.size(0) == B && o.guidance.null_labels.size(0) == B, "guidance: labels must have B = ", B, " rows");
    Tensor out = f(cat0(z, z), cat0(tt, tt), cat0(o.labels, o.guidance.null_labels.to(o.labels.dtype())));
    check_out(out, 2 * B);
    e.cond = out.slice(0, B);
    e.uncond = out.slice(B, 2 * B);
  } else {
    e.cond = f(z, tt, o.labels);
    check_out(e.cond, B);
  }
  if (o.guidance.grad_log_p) {
    Tensor g = o.guidance.grad_log_p(z, tt, o.labels);
    check_same_shape(g, z, "classifier gradient");
    e.eps_shift = Tensor::empty(z.shape());
    const float* gp = g.data<float>();
    float* sp = e.eps_shift.data<float>();
    const float k = static_cast<float>(-sigma_vp * o.guidance.classifier_scale);
    for (int64_t i = 0; i < z.numel(); ++i) sp[i] = k * gp[i];
  }
  return e;
}

// Runs the fused step with one coefficient set for the whole batch; returns z_next.
Tensor run_step(const Eval& e, const Tensor& z, const SamplerStepCoeffs& k, const SamplerOptions& o, uint64_t offset,
                const Tensor& aux = Tensor(), Tensor* x0_out = nullptr) {
  const int B = static_cast<int>(z.size(0));
  std::vector<SamplerStepCoeffs> coeffs(B, k);
  SamplerStepParams p;
  p.prediction = to_step(o.prediction);
  p.coeffs = coeffs.data();
  p.guidance_scale = static_cast<float>(o.guidance.cfg_scale);
  p.clip_x0 = o.clip_x0;
  p.learned_variance = o.variance == VarianceKind::learned;
  p.channels = z.size(-1);
  p.aux = aux.defined() ? aux.data<float>() : nullptr;
  p.eps_shift = e.eps_shift.defined() ? e.eps_shift.data<float>() : nullptr;
  if (x0_out) {
    *x0_out = Tensor::empty(z.shape());
    p.x0_out = x0_out->data<float>();
  }
  p.seed = o.seed;
  p.offset = offset;
  Tensor next = Tensor::empty(z.shape());
  kernels::sampler_step_cpu(p, z.data<float>(), e.cond.data<float>(),
                            e.uncond.defined() ? e.uncond.data<float>() : nullptr, next.data<float>(),
                            z.numel() / B, B);
  return next;
}

}  // namespace

Level level_at(const Schedule& s, double t) {
  Level l;
  l.g = s.gamma(t);
  l.a2 = sigmoid(-l.g);
  l.s2 = sigmoid(l.g);
  l.a = std::sqrt(l.a2);
  l.s = std::sqrt(l.s2);
  return l;
}

Tensor grid_finish(const Schedule& s, Tensor z, const SamplerOptions& o) {
  const Level l0 = level_at(s, 0.0);
  float* p = z.data<float>();
  const float inv = static_cast<float>(1.0 / l0.a);
  for (int64_t i = 0; i < z.numel(); ++i) {
    if (l0.s2 > 0) p[i] *= inv;
    if (o.clip_x0) p[i] = std::clamp(p[i], -1.f, 1.f);
  }
  return z;
}

namespace {

void notify(const SamplerOptions& o, int k, int n, const Tensor& z, const Tensor& x0) {
  if (o.callback) o.callback(k, n, z, x0);
}

// Which DDPM/DDIM/VDM update: the coefficients of z_next = c_z z + c_x0 x0 + c_eps eps + noise.
enum class Update { ddpm, ddim, vdm };

// The coefficients of step k (from ts[k] to ts[k + 1]) of a grid sampler.
SamplerStepCoeffs grid_coeffs(const Schedule& sch, const std::vector<double>& ts, int k, const SamplerOptions& o,
                              Update u) {
  const int n = static_cast<int>(ts.size()) - 1;
  const Level lt = level_at(sch, ts[k]), ls = level_at(sch, ts[k + 1]);
  const bool last = k == n - 1;
  SamplerStepCoeffs c;
  c.alpha = static_cast<float>(lt.a);
  c.sigma = static_cast<float>(lt.s);
  switch (u) {
    case Update::ddpm: {
      // Posterior q(z_s | z_t, x0) between grid points (Ho et al. eq. 7 with the respaced
      // beta = 1 - alpha_bar_t / alpha_bar_s, improved-DDPM SpacedDiffusion).
      const double ratio = lt.a2 / ls.a2;  // 1 - beta
      const double beta = 1.0 - ratio;
      c.c_x0 = static_cast<float>(beta * ls.a / lt.s2);
      c.c_z = static_cast<float>(ls.s2 * std::sqrt(ratio) / lt.s2);
      const double beta_tilde = beta * ls.s2 / lt.s2;
      if (!last) {
        if (o.variance == VarianceKind::learned) {
          c.c_noise = 1;
          c.log_var_min = static_cast<float>(std::log(beta_tilde));
          c.log_var_max = static_cast<float>(std::log(beta));
        } else {
          c.c_noise = static_cast<float>(std::sqrt(o.variance == VarianceKind::beta ? beta : beta_tilde));
        }
      }
      break;
    }
    case Update::ddim: {
      // Song et al. 2021, eq. 12 and 16: sigma(eta) = eta sqrt((1-a_s)/(1-a_t)) sqrt(1 - a_t/a_s).
      const double sd = o.eta * std::sqrt(ls.s2 / lt.s2) * std::sqrt(std::max(0.0, 1.0 - lt.a2 / ls.a2));
      c.c_x0 = static_cast<float>(ls.a);
      c.c_eps = static_cast<float>(std::sqrt(std::max(0.0, ls.s2 - sd * sd)));
      c.c_noise = last ? 0.f : static_cast<float>(sd);
      break;
    }
    case Update::vdm: {
      // VDM app. A.4 / their sample_step: c = -expm1(g_s - g_t) = 1 - SNR_t / SNR_s,
      // z_s = sqrt(a_s / a_t) (z_t - sigma_t c eps) + sqrt((1 - alpha_s^2) c) noise.
      const double cc = -std::expm1(ls.g - lt.g);
      const double r = std::sqrt(ls.a2 / lt.a2);
      c.c_z = static_cast<float>(r);
      c.c_eps = static_cast<float>(-r * lt.s * cc);
      c.c_noise = last && ls.s2 == 0 ? 0.f : static_cast<float>(std::sqrt(ls.s2 * cc));
      break;
    }
  }
  return c;
}

Tensor grid_sampler(const Schedule& sch, const Denoiser& f, const SamplerOptions& o, Update u) {
  const std::vector<double> ts = sampling_times(sch, o);
  const int n = static_cast<int>(ts.size()) - 1;
  Tensor z = initial_latent(o);
  for (int k = 0; k < n; ++k) {
    const SamplerStepCoeffs c = grid_coeffs(sch, ts, k, o, u);
    Eval e = evaluate(f, z, ts[k], level_at(sch, ts[k]).s, o);
    Tensor x0;
    z = run_step(e, z, c, o, static_cast<uint64_t>(k) + 1, Tensor(), &x0);
    notify(o, k, n, z, x0);
  }
  return grid_finish(sch, z, o);
}

const DiscreteSchedule* as_discrete(const Schedule& s) { return dynamic_cast<const DiscreteSchedule*>(&s); }

// The default sigma_max of the karras spacing is the schedule's own sigma at t = 1, capped at
// EDM's sigma_max = 80 (Karras et al. 2022, sec. 5 and Table 1; in log-SNR, lambda >= -log 80,
// the role of diffusers' lambda_min_clipped). The cosine schedule's last beta is clipped to 0.999,
// which puts its t = 1 at sigma = 2e4: a rho = 7 ramp from there spends more than half its steps
// above sigma = 80, where data of unit scale is under 1/80 of z and the ODE is a plain rescaling,
// and leaves the remaining steps too long: at 10 to 50 calls DDIM erred 2x-2.5x more on that ramp
// than on the capped one and Heun 5x-7x (with EDM's trapezoid step, Heun's before, 40x DDIM's).
// Starting at 80 reads z_1 as a sample of that level, an error of about alpha(80) = 1/80 of the
// data mean, far below the solver error at 50 calls. The linear schedule (sigma(1) = 157) gains a
// little too; VDM's (12.2) is unchanged.
constexpr double kKarrasSigmaMaxCap = 80.0;

// The lowest noise level a sampler may ask the denoiser about: a discrete schedule's first
// trained step, a continuous schedule's sigma at t = 0. The karras spacing ends its ramp there,
// and Heun's step onto sigma = 0 takes its second stage only above it.
double lowest_sigma(const Schedule& sch) {
  const DiscreteSchedule* d = as_discrete(sch);
  return std::exp(0.5 * sch.gamma(d ? d->t_of(0) : 0.0));
}

// The karras spacing's sigmas, sigma_max > ... > sigma_min, 0 (o.steps + 1 values).
std::vector<double> karras_ramp(const Schedule& sch, const SamplerOptions& o) {
  DF_CHECK(o.steps >= 1, "sampler: steps = ", o.steps);
  double smax = o.sigma_max, smin = o.sigma_min;
  if (smax <= 0) smax = std::min(std::exp(0.5 * sch.gamma(1.0)), kKarrasSigmaMaxCap);
  if (smin <= 0) smin = lowest_sigma(sch);
  return karras_sigmas(o.steps, smin, smax, o.rho);
}

}  // namespace

std::vector<double> sampling_times(const Schedule& s, const SamplerOptions& o) {
  std::vector<double> ts;
  if (o.spacing == Spacing::karras && o.timesteps.empty() && o.section_counts.empty()) {
    // The EDM ramp's sigmas as times of the schedule (between a discrete schedule's steps), down
    // to its last nonzero sigma; then t = 0.
    const std::vector<double> sig = karras_ramp(s, o);
    for (size_t k = 0; k + 1 < sig.size(); ++k) ts.push_back(s.t_from_gamma(2.0 * std::log(sig[k])));
  } else if (const DiscreteSchedule* d = as_discrete(s)) {
    std::vector<int> use = o.timesteps;
    if (use.empty()) use = o.section_counts.empty() ? spaced_timesteps(*d, o.steps, o.spacing)
                                                    : section_timesteps(d->T(), o.section_counts);
    std::sort(use.begin(), use.end());
    use.erase(std::unique(use.begin(), use.end()), use.end());
    for (auto it = use.rbegin(); it != use.rend(); ++it) {
      DF_CHECK(*it >= 0 && *it < d->T(), "sampler: step ", *it, " outside [0, ", d->T(), ")");
      ts.push_back(d->t_of(*it));
    }
  } else {
    DF_CHECK(o.steps >= 1, "sampler: steps = ", o.steps);
    if (o.spacing == Spacing::logsnr) {
      // Uniform in gamma = -log SNR from gamma(1) down to gamma(0).
      const double g1 = s.gamma(1.0), g0 = s.gamma(0.0);
      DF_CHECK(std::isfinite(g0) && std::isfinite(g1), "sampler: logsnr spacing needs finite gamma at t = 0 and 1");
      for (int k = 0; k < o.steps; ++k) ts.push_back(k == 0 ? 1.0 : s.t_from_gamma(g1 + (g0 - g1) * k / o.steps));
    } else {
      for (int k = 0; k < o.steps; ++k) ts.push_back(1.0 - static_cast<double>(k) / o.steps);
    }
  }
  ts.push_back(0.0);
  return ts;
}

int discrete_index(float t, int T) { return std::clamp(static_cast<int>(std::lround(static_cast<double>(t) * T)) - 1, 0, T - 1); }

GridPlan grid_plan(SamplerKind kind, const Schedule& s, const SamplerOptions& o) {
  DF_CHECK(kind == SamplerKind::ddpm || kind == SamplerKind::ddim || kind == SamplerKind::vdm,
           "grid_plan: only the DDPM, DDIM and VDM samplers take one step per grid point");
  const Update u = kind == SamplerKind::ddpm ? Update::ddpm : kind == SamplerKind::ddim ? Update::ddim : Update::vdm;
  GridPlan p;
  p.times = sampling_times(s, o);
  const int n = static_cast<int>(p.times.size()) - 1;
  for (int k = 0; k < n; ++k) p.coeffs.push_back(grid_coeffs(s, p.times, k, o, u));
  const Level l0 = level_at(s, 0.0);
  p.alpha0 = l0.s2 > 0 ? l0.a : 1.0;
  return p;
}

Tensor sample_ddpm(const Schedule& s, const Denoiser& f, const SamplerOptions& o) { return grid_sampler(s, f, o, Update::ddpm); }
Tensor sample_ddim(const Schedule& s, const Denoiser& f, const SamplerOptions& o) { return grid_sampler(s, f, o, Update::ddim); }
Tensor sample_vdm(const Schedule& s, const Denoiser& f, const SamplerOptions& o) { return grid_sampler(s, f, o, Update::vdm); }

Tensor ddim_invert(const Schedule& sch, const Denoiser& f, const Tensor& x0, const SamplerOptions& o) {
  std::vector<double> ts = sampling_times(sch, o);
  std::reverse(ts.begin(), ts.end());  // 0 = u_0 < u_1 < ... < u_N
  const int n = static_cast<int>(ts.size()) - 1;
  SamplerOptions det = o;
  det.eta = 0;
  det.variance = VarianceKind::beta_tilde;
  Tensor z = x0.to(Device::cpu()).clone();
  // Mirror grid_finish(): data to z_0 = alpha(0) x0 where a continuous schedule has alpha(0) < 1.
  const Level l0 = level_at(sch, 0.0);
  if (l0.s2 > 0) {
    float* p = z.data<float>();
    for (int64_t i = 0; i < z.numel(); ++i) p[i] = static_cast<float>(p[i] * l0.a);
  }
  for (int k = 0; k < n; ++k) {
    const Level lu = level_at(sch, ts[k]), lt = level_at(sch, ts[k + 1]);
    SamplerStepCoeffs c;
    // The model is asked at the target time t on the current latent z_u. An eps prediction is
    // turned into x0 at z_u's own level (exact at u = 0, where sigma = 0); x0 and v predictions
    // need sigma > 0 to give eps, so they convert at the target level.
    const Level& conv = (o.prediction == Prediction::eps) ? lu : lt;
    c.alpha = static_cast<float>(conv.a);
    c.sigma = static_cast<float>(conv.s);
    c.c_x0 = static_cast<float>(lt.a);
    c.c_eps = static_cast<float>(lt.s);
    Eval e = evaluate(f, z, ts[k + 1], conv.s, det);
    Tensor x0k;
    z = run_step(e, z, c, det, static_cast<uint64_t>(k) + 1, Tensor(), &x0k);
    notify(o, k, n, z, x0k);
  }
  return z;
}

Tensor sample_dpmpp_2m(const Schedule& sch, const Denoiser& f, const SamplerOptions& o) {
  const std::vector<double> ts = sampling_times(sch, o);
  const int n = static_cast<int>(ts.size()) - 1;
  // The data end of the schedule: sigma = 0 at t = 0, and for a discrete schedule also its first
  // trained step, the lowest noise its network saw. Steps that end there are taken at first order,
  // as diffusers' DPMSolverMultistepScheduler takes its step onto sigma = 0 (its lower_order_final
  // changes nothing else for a second-order method; Algorithm 2 of the paper takes every step
  // after the first at second order). The reason is the step length:
  // onto sigma = 0 h is infinite, and onto the first trained step of a grid that contains it
  // (linspace, leading, logsnr) h is 3-5x the previous step on the linear schedule (lambda jumps
  // from ~1 to 4.6 at 10 steps), where the linear extrapolation of x0_hat in lambda overshoots a
  // posterior mean that has already saturated. On those grids the second-order last step made
  // 2M worse than DDIM (tests/diffusion/sampler_accuracy_test.cpp has the numbers).
  const DiscreteSchedule* d = as_discrete(sch);
  const double t_end = d ? d->t_of(0) : 0.0;
  Tensor z = initial_latent(o);
  Tensor x0_prev;
  double h_prev = 0;
  for (int k = 0; k < n; ++k) {
    const Level lt = level_at(sch, ts[k]), ls = level_at(sch, ts[k + 1]);
    SamplerStepCoeffs c;
    c.alpha = static_cast<float>(lt.a);
    c.sigma = static_cast<float>(lt.s);
    // lambda = log(alpha / sigma) = -gamma / 2; h = lambda_s - lambda_t (inf onto sigma = 0).
    const bool to_clean = ls.s2 == 0;
    const double h = to_clean ? std::numeric_limits<double>::infinity() : 0.5 * (lt.g - ls.g);
    const double em1 = to_clean ? -1.0 : std::expm1(-h);  // e^{-h} - 1
    c.c_z = static_cast<float>(to_clean ? 0.0 : ls.s / lt.s);
    const bool final_step = to_clean || ts[k + 1] <= t_end;
    if (!x0_prev.defined() || final_step) {
      // First order (DPM-Solver++(1) = DDIM): x_s = sigma_s/sigma_t x_t - alpha_s (e^{-h} - 1) x0.
      c.c_x0 = static_cast<float>(-ls.a * em1);
    } else {
      // D = (1 + 1/(2r)) x0_t - 1/(2r) x0_prev, r = h_prev / h (Algorithm 2, line 6-7).
      const double r = h_prev / h;
      c.c_x0 = static_cast<float>(-ls.a * em1 * (1.0 + 0.5 / r));
      c.c_aux = static_cast<float>(ls.a * em1 * 0.5 / r);
    }
    Eval e = evaluate(f, z, ts[k], lt.s, o);
    Tensor x0;
    z = run_step(e, z, c, o, static_cast<uint64_t>(k) + 1, x0_prev, &x0);
    x0_prev = x0;
    h_prev = h;
    notify(o, k, n, z, x0);
  }
  return grid_finish(sch, z, o);
}

namespace {

// EDM sigma and the VP level it corresponds to: z = x / sqrt(1 + sigma^2) (Karras et al. 2022,
// Table 1, VP column: s(t) = 1 / sqrt(1 + sigma^2)).
struct KarrasLevel {
  double sigma, a, s, t;
};
KarrasLevel karras_level(const Schedule& sch, double sigma) {
  KarrasLevel l;
  l.sigma = sigma;
  l.a = 1.0 / std::sqrt(1.0 + sigma * sigma);
  l.s = sigma * l.a;
  l.t = sch.t_from_gamma(2.0 * std::log(sigma));
  return l;
}

Tensor scaled(const Tensor& x, double k) {
  Tensor out = Tensor::empty(x.shape());
  const float* p = x.data<float>();
  float* q = out.data<float>();
  const float kf = static_cast<float>(k);
  for (int64_t i = 0; i < x.numel(); ++i) q[i] = p[i] * kf;
  return out;
}

// Heun's step sigma -> sn in two stages, in x = z / alpha. The first asks the denoiser at
// (x, sigma) for D0 and goes to sm by Euler: x_m = (sm/sigma) x + (1 - sm/sigma) D0. The second
// asks it at (x_m, sm) for D_m, and the step ends at x_next = kx x_m + k0 D0 + km D_m.
struct HeunStages {
  double sm, kx, k0, km;
};

// In lambda = -log sigma the ODE is dx/dlambda = D - x, and its exact step from lambda to
// lambda + h is x_next = e^{-h} x + integral over the step of e^{-(lambda + h - l)} D(l) dl (the
// exponential integrator of DPM-Solver, Lu et al. 2022, with the data prediction D as in
// DPM-Solver++). D constant gives Euler, e^{-h} x + (1 - e^{-h}) D0, which is DDIM's update; D
// linear in lambda adds (1 - (1 - e^{-h})/h) h D', the Taylor term integrated exactly. The second
// stage at the lambda-midpoint, sm = sqrt(sigma sn), estimates h D' by 2 (D_m - D0): second order
// (the error quarters when the steps double), DPM-Solver++'s singlestep second-order update with
// r1 = 1/2 and its reference code's solver_type "taylor". In x_m instead of x
// (x = (x_m - (1 - rho) D0) / rho, rho = sm/sigma = e^{-h/2}):
//   x_next = rho x_m + (1 - rho - c) D0 + c D_m,  c = 2 (1 - (1 - e^{-h})/h).
// Measured against the exact answer at equal calls (docs/diffusion.md, "Sampler accuracy"), the
// rules it replaced lost to DDIM at 10 calls on the geometric grids (logsnr, karras), whose sigma
// shrinks 6x-11x a step there: EDM's trapezoid in sigma (Karras et al. 2022, Algorithm 1), which
// weighs the slope at sn by the whole step, by up to 13x; the same exponential step with the
// second stage at sn (a trapezoid on D) by up to 1.5x. DPM-Solver++(2S)'s own weights (Algorithm
// 1, (1 - e^{-h}) D_m) drew level there and were 1.3x-3x less accurate than these at 20-50 calls.
//
// Onto sigma = 0, h is infinite and the lambda-midpoint is sigma = 0 itself; but in sigma the step
// is finite and dx/dsigma = (x - D)/sigma smooth, so it is the midpoint rule in sigma: sm = sigma/2,
// x_m = (x + D0)/2 (the same Euler stage), x_next = x - sigma (x_m - D_m)/(sigma/2) = 2 D_m - D0,
// D extrapolated linearly in sigma to 0. That step is the longest of a trailing grid (from its
// lowest step, sigma = 0.72 on the linear schedule at 10 calls); taken at first order, as EDM and
// DPM-Solver++ take it, it alone left Heun 1.2x behind DDIM there.
HeunStages heun_stages(double sigma, double sn) {
  if (sn == 0) return {0.5 * sigma, 0.0, -1.0, 2.0};
  const double h = std::log(sigma / sn);
  const double rho = std::exp(-0.5 * h);
  const double c = 2.0 * (1.0 + std::expm1(-h) / h);
  return {sigma * rho, rho, 1.0 - rho - c, c};
}

// Euler and Heun walk the sigmas of the spacing: the karras ramp itself (to sigma = 0), or the
// grid samplers' times (sampling_times) as sigma = exp(gamma / 2), ending where those end: t = 0,
// sigma = 0 on a discrete schedule, sigma(0) on a continuous one (and then x = z / alpha(0), the
// grid samplers' result too).
Tensor karras_sampler(const Schedule& sch, const Denoiser& f, const SamplerOptions& o, bool heun) {
  DF_CHECK(o.steps >= 1, "sampler: steps = ", o.steps);
  std::vector<double> sig;
  if (o.spacing == Spacing::karras && o.timesteps.empty() && o.section_counts.empty()) {
    sig = karras_ramp(sch, o);
  } else {
    for (double t : sampling_times(sch, o)) sig.push_back(std::exp(0.5 * sch.gamma(t)));
    if (as_discrete(sch)) sig.back() = 0;  // t = 0 of a discrete schedule is the data
  }
  const int n = static_cast<int>(sig.size()) - 1;
  const double smax = sig[0], lowest = lowest_sigma(sch);
  // x_N = z_1 / alpha: the VP prior N(0, I) at sigma_max seen in x = z / alpha.
  Tensor x = scaled(initial_latent(o), std::sqrt(1.0 + smax * smax));
  SamplerOptions det = o;
  det.variance = o.variance == VarianceKind::learned ? VarianceKind::learned : VarianceKind::beta_tilde;
  for (int k = 0; k < n; ++k) {
    const KarrasLevel l = karras_level(sch, sig[k]);
    const double sn = sig[k + 1];
    // Heun's step onto sigma = 0 is Euler's (x_next = D0) where its midpoint sigma/2 would ask
    // the denoiser below the lowest noise it knows: from the karras ramp's last sigma or a grid's
    // first trained step, where what is left is small (sigma = 0.01 on the linear schedule). EDM
    // also took a step from above sigma = 80 at first order, where its trapezoid diverged (error
    // 1e3 from the cosine schedule's sigma(1) = 2e4); the exponential step's weights stay bounded
    // (|c| <= 2) and it is as accurate or more without that exception, on every measured grid.
    const bool two_stage = heun && sn < l.sigma && (sn > 0 || 0.5 * l.sigma >= lowest);
    const HeunStages st = two_stage ? heun_stages(l.sigma, sn) : HeunStages{sn, 0, 0, 0};
    Tensor z = scaled(x, l.a);
    Eval e = evaluate(f, z, l.t, l.s, det);
    // Euler to st.sm (the step's end without a second stage): (sm/s) x + (1 - sm/s) D, x = z / alpha.
    SamplerStepCoeffs c;
    c.alpha = static_cast<float>(l.a);
    c.sigma = static_cast<float>(l.s);
    c.c_z = static_cast<float>(st.sm / l.sigma / l.a);
    c.c_x0 = static_cast<float>(1.0 - st.sm / l.sigma);
    Tensor x0;
    Tensor x_next = run_step(e, z, c, det, 0, Tensor(), &x0);
    if (two_stage) {
      const KarrasLevel lm = karras_level(sch, st.sm);
      const Tensor d0 = x0;
      Tensor zm = scaled(x_next, lm.a);
      Eval em = evaluate(f, zm, lm.t, lm.s, det);
      SamplerStepCoeffs cm;
      cm.alpha = static_cast<float>(lm.a);
      cm.sigma = static_cast<float>(lm.s);
      cm.c_z = static_cast<float>(st.kx / lm.a);
      cm.c_x0 = static_cast<float>(st.km);
      cm.c_aux = static_cast<float>(st.k0);
      x_next = run_step(em, zm, cm, det, 0, d0, &x0);
    }
    x = x_next;
    notify(o, k, n, x, x0);
  }
  if (o.clip_x0) {
    float* p = x.data<float>();
    for (int64_t i = 0; i < x.numel(); ++i) p[i] = std::clamp(p[i], -1.f, 1.f);
  }
  return x;
}

}  // namespace

Tensor sample_euler(const Schedule& s, const Denoiser& f, const SamplerOptions& o) { return karras_sampler(s, f, o, false); }
Tensor sample_heun(const Schedule& s, const Denoiser& f, const SamplerOptions& o) { return karras_sampler(s, f, o, true); }

SamplerKind parse_sampler(const std::string& name) { return parse_enum<SamplerKind>(name, "sampler"); }

Spacing sampler_spacing(SamplerKind kind, std::optional<Spacing> asked) {
  if (asked) return *asked;
  return kind == SamplerKind::euler || kind == SamplerKind::heun ? Spacing::karras : Spacing::linspace;
}

Tensor sample(SamplerKind kind, const Schedule& s, const Denoiser& f, const SamplerOptions& o) {
  switch (kind) {
    case SamplerKind::ddpm: return sample_ddpm(s, f, o);
    case SamplerKind::ddim: return sample_ddim(s, f, o);
    case SamplerKind::vdm: return sample_vdm(s, f, o);
    case SamplerKind::dpmpp_2m: return sample_dpmpp_2m(s, f, o);
    case SamplerKind::euler: return sample_euler(s, f, o);
    case SamplerKind::langevin: return sample_langevin(s, f, o);
    case SamplerKind::pc: return sample_pc(s, f, o);
    default: return sample_heun(s, f, o);
  }
}

Tensor denoise_step(const Schedule& s, const Denoiser& f, const Tensor& z, double t, const SamplerStepCoeffs& c,
                    const SamplerOptions& o, uint64_t offset, Tensor* x0_out) {
  // Exactly the loop body of grid_sampler, so a sampler built from it reproduces their steps.
  Eval e = evaluate(f, z, t, level_at(s, t).s, o);
  return run_step(e, z, c, o, offset, Tensor(), x0_out);
}

Tensor slerp(const Tensor& x, const Tensor& y, double a) {
  check_same_shape(x, y, "slerp");
  check_dtype(x, DType::f32, "slerp");
  const int64_t B = x.size(0), N = x.numel() / std::max<int64_t>(B, 1);
  Tensor out = Tensor::empty(x.shape());
  const float *p = x.data<float>(), *q = y.data<float>();
  float* o = out.data<float>();
  for (int64_t b = 0; b < B; ++b) {
    double dot = 0, nx = 0, ny = 0;
    for (int64_t j = b * N; j < (b + 1) * N; ++j) {
      dot += static_cast<double>(p[j]) * q[j];
      nx += static_cast<double>(p[j]) * p[j];
      ny += static_cast<double>(q[j]) * q[j];
    }
    const double cosv = std::clamp(dot / std::sqrt(nx * ny), -1.0, 1.0);
    const double th = std::acos(cosv);
    double wa, wb;
    if (std::sin(th) < 1e-6) {
      wa = 1.0 - a;  // (anti)parallel: fall back to the straight line
      wb = a;
    } else {
      wa = std::sin((1.0 - a) * th) / std::sin(th);
      wb = std::sin(a * th) / std::sin(th);
    }
    for (int64_t j = b * N; j < (b + 1) * N; ++j) o[j] = static_cast<float>(wa * p[j] + wb * q[j]);
  }
  return out;
}

}  // namespace diffuse::diffusion
