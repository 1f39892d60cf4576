// The fused sampler step against a direct double-precision evaluation of its formula.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>

#include "core/philox.h"
#include "kernels/sampler_step.h"
#include "tests/test_util.h"

using namespace diffuse;
using namespace diffuse::kernels;

namespace {

struct Case {
  StepPrediction pred;
  bool clip, guided, learned, aux, shift;
};

// The formula of kernels/sampler_step.h written out once more, in double.
std::vector<float> reference(const SamplerStepParams& p, const std::vector<float>& z, const std::vector<float>& out,
                             const std::vector<float>* unc, int64_t N, int B) {
  std::vector<float> r(z.size());
  const int64_t C = p.channels;
  for (int b = 0; b < B; ++b) {
    const SamplerStepCoeffs& k = p.coeffs[b];
    for (int64_t e = 0; e < N; ++e) {
      const int64_t i = b * N + e;
      const int64_t o = p.learned_variance ? b * 2 * N + (e / C) * 2 * C + e % C : i;
      double m = out[o];
      if (unc) m = (1.0 + p.guidance_scale) * m - p.guidance_scale * (*unc)[o];
      double x0, eps;
      if (p.prediction == StepPrediction::eps) { eps = m; x0 = (z[i] - k.sigma * eps) / k.alpha; }
      else if (p.prediction == StepPrediction::x0) { x0 = m; eps = (z[i] - k.alpha * x0) / k.sigma; }
      else { x0 = k.alpha * z[i] - k.sigma * m; eps = k.sigma * z[i] + k.alpha * m; }
      if (p.clip_x0) { x0 = std::clamp(x0, -1.0, 1.0); eps = (z[i] - k.alpha * x0) / k.sigma; }
      if (p.eps_shift) { eps += p.eps_shift[i]; x0 = (z[i] - k.sigma * eps) / k.alpha; }
      double sd = k.c_noise;
      if (p.learned_variance) {
        const double v = 0.5 * (out[o + C] + 1.0);
        sd *= std::exp(0.5 * (v * k.log_var_max + (1 - v) * k.log_var_min));
      }
      double next = k.c_z * z[i] + k.c_x0 * x0 + k.c_eps * eps + sd * philox_normal(p.seed, p.offset, i);
      if (p.aux) next += k.c_aux * p.aux[i];
      r[i] = static_cast<float>(next);
    }
  }
  return r;
}

}  // namespace

TEST_CASE("sampler_step matches its formula", "[cpu][diffusion][kernels]") {
  const int B = 3;
  const int64_t H = 4, W = 5, C = 3, N = H * W * C;
  const Case cases[] = {
      {StepPrediction::eps, false, false, false, false, false}, {StepPrediction::x0, true, false, false, false, false},
      {StepPrediction::v, false, true, false, false, false},    {StepPrediction::eps, true, true, true, false, false},
      {StepPrediction::x0, false, false, false, true, false},   {StepPrediction::eps, false, false, false, false, true},
      {StepPrediction::v, true, true, false, true, true},
  };
  for (const Case& cs : cases) {
    std::vector<SamplerStepCoeffs> k(B);
    Tensor cf = test::random_tensor({B, 7}, 0.1f, 1.f);
    const float* c = cf.data<float>();
    for (int b = 0; b < B; ++b) {
      const double g = -3.0 + 3.0 * b;  // a spread of noise levels
      k[b].alpha = static_cast<float>(std::sqrt(1 / (1 + std::exp(g))));
      k[b].sigma = static_cast<float>(std::sqrt(1 / (1 + std::exp(-g))));
      k[b].c_z = c[b * 7 + 0];
      k[b].c_x0 = c[b * 7 + 1];
      k[b].c_eps = c[b * 7 + 2];
      k[b].c_aux = c[b * 7 + 3];
      k[b].c_noise = c[b * 7 + 4];
      k[b].log_var_min = -5 * c[b * 7 + 5];
      k[b].log_var_max = -2 * c[b * 7 + 6];
    }
    const int64_t out_n = cs.learned ? 2 * N : N;
    Tensor z = test::random_normal({B, H, W, C});
    Tensor out = test::random_tensor({B, out_n}), unc = test::random_tensor({B, out_n});
    Tensor aux = test::random_tensor({B, N}), shift = test::random_tensor({B, N}, -0.2f, 0.2f);
    SamplerStepParams p;
    p.prediction = cs.pred;
    p.coeffs = k.data();
    p.guidance_scale = 2.5f;
    p.clip_x0 = cs.clip;
    p.learned_variance = cs.learned;
    p.channels = C;
    p.aux = cs.aux ? aux.data<float>() : nullptr;
    p.eps_shift = cs.shift ? shift.data<float>() : nullptr;
    Tensor x0 = Tensor::empty({B, N}).poison_();
    p.x0_out = x0.data<float>();
    p.seed = test::next_seed();
    p.offset = 7;
    Tensor next = Tensor::empty({B, H, W, C}).poison_();
    sampler_step_cpu(p, z.data<float>(), out.data<float>(), cs.guided ? unc.data<float>() : nullptr, next.data<float>(), N, B);
    const std::vector<float> uv = unc.to_vector();
    std::vector<float> want = reference(p, z.to_vector(), out.to_vector(), cs.guided ? &uv : nullptr, N, B);
    INFO("prediction " << static_cast<int>(cs.pred) << " clip " << cs.clip << " guided " << cs.guided << " learned "
                       << cs.learned << " aux " << cs.aux << " shift " << cs.shift << ": " << test::compare(next.to_vector(), want).str());
    // f32 against double over a handful of operations on O(1) values, divided by alpha >= 0.2.
    CHECK(test::allclose(next.to_vector(), want, 1e-5, 2e-5));
    for (float v : x0.to_vector()) CHECK(std::isfinite(v));
  }
}

TEST_CASE("sampler_step noise is Tensor::randn of (seed, offset), and works in place", "[cpu][diffusion][kernels]") {
  const int B = 2;
  const int64_t N = 37;
  SamplerStepCoeffs k;
  k.alpha = 1;
  k.c_noise = 1;  // z_next = noise only
  std::vector<SamplerStepCoeffs> ks(B, k);
  SamplerStepParams p;
  p.coeffs = ks.data();
  p.seed = test::next_seed();
  p.offset = 3;
  Tensor z = test::random_normal({B, N}), out = test::random_normal({B, N});
  sampler_step_cpu(p, z.data<float>(), out.data<float>(), nullptr, z.data<float>(), N, B);
  CHECK(z.to_vector() == Tensor::randn({B, N}, p.seed, 3).to_vector());
}
