// kernels/cuda/sampler_step.cu under the emulator ([emu]) and on a GPU ([cuda]) against
// kernels::sampler_step_cpu (kernels/sampler_step.cpp), over every option.
//
// Tolerance: the kernel evaluates the reference's f32 expressions in the same order (the noise is
// the same Philox variate, bit for bit). On the GPU nvcc may fuse a product and a sum into an FMA,
// changing each rounding by <= 1 ulp; ~10 roundings, amplified at most 1 / min(alpha, sigma) = 5 by
// the divisions of the conversions, give < 10 * 5 * 6e-8 = 3e-6 of values that are O(1) here:
// rtol = atol = 1e-5. (Under the emulator the results are in fact identical.)
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <vector>

#include "core/device.h"
#include "core/stream.h"
#include "core/tensor.h"
#include "kernels/sampler_step.h"
#include "tests/emu_test_util.h"
#include "tests/test_util.h"

using namespace diffuse;
using namespace diffuse::test;
using kernels::SamplerStepCoeffs;
using kernels::SamplerStepParams;
using kernels::StepPrediction;

namespace {

struct Options {
  StepPrediction prediction;
  bool guidance, clip, shift, aux, learned, x0_out;
};

std::vector<Options> all_options() {
  std::vector<Options> v;
  for (StepPrediction pr : {StepPrediction::eps, StepPrediction::x0, StepPrediction::v})
    for (int mask = 0; mask < 64; mask += 1) {
      // Each flag alone, and all together: 6 + 1 + none per prediction type.
      if (mask != 0 && mask != 63 && (mask & (mask - 1)) != 0) continue;
      v.push_back({pr, bool(mask & 1), bool(mask & 2), bool(mask & 4), bool(mask & 8), bool(mask & 16), bool(mask & 32)});
    }
  return v;
}

std::vector<SamplerStepCoeffs> random_coeffs(int batch) {
  std::vector<float> r = random_tensor({batch, 9}, 0.f, 1.f).to_vector();
  std::vector<SamplerStepCoeffs> c(batch);
  for (int b = 0; b < batch; ++b) {
    const float* u = &r[b * 9];
    const float theta = 0.2f + 1.1f * u[0];  // alpha, sigma >= ~0.2
    c[b].alpha = std::cos(theta);
    c[b].sigma = std::sin(theta);
    c[b].c_z = 2 * u[1] - 1, c[b].c_x0 = 2 * u[2] - 1, c[b].c_eps = 2 * u[3] - 1, c[b].c_aux = 2 * u[4] - 1;
    // The last sample draws no noise, so its zero-skip path runs too (batch 1 draws some).
    c[b].c_noise = (b == batch - 1 && batch > 1) ? 0.f : 0.1f + u[5];
    c[b].log_var_min = -6.f * u[6] - 1.f;
    c[b].log_var_max = c[b].log_var_min + 2.f * u[7];
  }
  return c;
}

struct Case {
  SamplerStepParams p;
  std::vector<SamplerStepCoeffs> coeffs;
  Tensor z, model, uncond, aux, shift;
  int batch;
  int64_t N;
};

Case make_case(const Options& o, int batch, int64_t C, int64_t N) {
  Case c;
  c.batch = batch, c.N = N;
  c.coeffs = random_coeffs(batch);
  const int64_t out_n = o.learned ? 2 * N : N;
  c.z = random_tensor({batch, N}, -2.f, 2.f);
  c.model = random_tensor({batch, out_n}, -1.5f, 1.5f);
  if (o.guidance) c.uncond = random_tensor({batch, out_n}, -1.5f, 1.5f);
  if (o.aux) c.aux = random_tensor({batch, N});
  if (o.shift) c.shift = random_tensor({batch, N}, -0.3f, 0.3f);
  c.p.prediction = o.prediction;
  c.p.guidance_scale = 1.7f;
  c.p.clip_x0 = o.clip;
  c.p.clip_min = -0.8f, c.p.clip_max = 0.9f;  // some x0 get clipped
  c.p.learned_variance = o.learned;
  c.p.channels = C;
  c.p.seed = next_seed();
  c.p.offset = next_seed() % 1000;
  return c;
}

struct Result {
  Tensor z_next, x0;
};

Result run_cpu(const Case& c, bool want_x0) {
  SamplerStepParams p = c.p;
  p.coeffs = c.coeffs.data();
  p.aux = c.aux.defined() ? c.aux.data<float>() : nullptr;
  p.eps_shift = c.shift.defined() ? c.shift.data<float>() : nullptr;
  Result r{Tensor::empty({c.batch, c.N}).poison_(), Tensor::empty({c.batch, c.N}).poison_()};
  p.x0_out = want_x0 ? r.x0.data<float>() : nullptr;
  kernels::sampler_step_cpu(p, c.z.data<float>(), c.model.data<float>(),
                            c.uncond.defined() ? c.uncond.data<float>() : nullptr, r.z_next.data<float>(), c.N, c.batch);
  return r;
}

void check_result(const Result& got, const Result& want, bool x0) {
  INFO("z_next " << compare(got.z_next, want.z_next).str());
  CHECK(allclose(got.z_next, want.z_next, 1e-5, 1e-5));
  if (x0) {
    INFO("x0 " << compare(got.x0, want.x0).str());
    CHECK(allclose(got.x0, want.x0, 1e-5, 1e-5));
  }
}

}  // namespace

#if defined(DIFFUSE_HAVE_SIMT)

TEST_CASE("sampler_step under the emulator matches sampler_step_cpu for every option", "[emu][kernels]") {
  struct Shape { int batch; int64_t C, N; };
  // N = 15 (C = 3): Philox blocks straddle samples; batch 1; a larger N = 3 * 37.
  const Shape shapes[] = {{1, 3, 15}, {3, 3, 15}, {2, 3, 111}};
  for_each_order([&] {
    for (const Options& o : all_options()) {
      for (const Shape& s : shapes) {
        INFO("prediction " << int(o.prediction) << " guidance " << o.guidance << " clip " << o.clip << " shift "
                           << o.shift << " aux " << o.aux << " learned " << o.learned << " x0 " << o.x0_out
                           << " B=" << s.batch << " N=" << s.N);
        Case c = make_case(o, s.batch, s.C, s.N);
        const Result want = run_cpu(c, o.x0_out);
        SamplerStepParams p = c.p;
        p.coeffs = c.coeffs.data();
        p.aux = c.aux.defined() ? c.aux.data<float>() : nullptr;
        p.eps_shift = c.shift.defined() ? c.shift.data<float>() : nullptr;
        Result got{Tensor::empty({s.batch, s.N}).poison_(), Tensor::empty({s.batch, s.N}).poison_()};
        p.x0_out = o.x0_out ? got.x0.data<float>() : nullptr;
        emu::sampler_step(p, c.z.data<float>(), c.model.data<float>(),
                          c.uncond.defined() ? c.uncond.data<float>() : nullptr, got.z_next.data<float>(), s.N,
                          s.batch, nullptr);
        check_result(got, want, o.x0_out);
        // In place: z_next aliasing z.
        Tensor zz = c.z.clone();
        p.x0_out = nullptr;
        emu::sampler_step(p, zz.data<float>(), c.model.data<float>(),
                          c.uncond.defined() ? c.uncond.data<float>() : nullptr, zz.data<float>(), s.N, s.batch,
                          nullptr);
        CHECK(allclose(zz, want.z_next, 1e-5, 1e-5));
      }
    }
  });
}

TEST_CASE("sampler_step under the emulator draws seed ^ *seed_xor when the word is given", "[emu][kernels]") {
  // The word a captured CUDA graph rewrites between replays: the noise must be that of the
  // combined seed, as sampler_step_cpu draws it with the plain seed.
  Options o{StepPrediction::eps, false, false, false, false, false, false};
  Case c = make_case(o, 2, 3, 15);
  const uint64_t word = 0x1234abcdull;
  Case plain = c;
  plain.p.seed = c.p.seed ^ word;
  const Result want = run_cpu(plain, false);
  SamplerStepParams p = c.p;
  p.coeffs = c.coeffs.data();
  p.seed_xor = &word;
  Tensor got = Tensor::empty({c.batch, c.N}).poison_();
  emu::sampler_step(p, c.z.data<float>(), c.model.data<float>(), nullptr, got.data<float>(), c.N, c.batch, nullptr);
  CHECK(bit_mismatches(got, want.z_next) == 0);
}

#endif  // DIFFUSE_HAVE_SIMT

TEST_CASE("sampler_step on the GPU matches sampler_step_cpu", "[cuda][kernels]") {
#if defined(DIFFUSE_HAVE_CUDA)
  if (!cuda_available()) return;
  const Device gpu = Device::cuda(0);
  for (const Options& o : all_options()) {
    const int batch = 5;
    const int64_t C = 3, N = 3 * 33 * 31;
    Case c = make_case(o, batch, C, N);
    const Result want = run_cpu(c, o.x0_out);
    // The coefficients travel as raw bytes in a u8 tensor.
    const int64_t cb = static_cast<int64_t>(sizeof(SamplerStepCoeffs)) * batch;
    Tensor coeffs = Tensor::empty({cb}, DType::u8);
    std::memcpy(coeffs.raw(), c.coeffs.data(), static_cast<size_t>(cb));
    Tensor coeffs_d = coeffs.to(gpu), z_d = c.z.to(gpu), m_d = c.model.to(gpu);
    Tensor u_d = c.uncond.defined() ? c.uncond.to(gpu) : Tensor(), a_d = c.aux.defined() ? c.aux.to(gpu) : Tensor();
    Tensor s_d = c.shift.defined() ? c.shift.to(gpu) : Tensor();
    Result got{Tensor::empty({batch, N}, DType::f32, gpu).poison_(), Tensor::empty({batch, N}, DType::f32, gpu).poison_()};
    SamplerStepParams p = c.p;
    p.coeffs = static_cast<const SamplerStepCoeffs*>(coeffs_d.raw());
    p.aux = a_d.defined() ? a_d.data<float>() : nullptr;
    p.eps_shift = s_d.defined() ? s_d.data<float>() : nullptr;
    p.x0_out = o.x0_out ? got.x0.data<float>() : nullptr;
    // The Tensor-level op (its checks, then the launcher on the current stream).
    cuda::sampler_step(p, z_d.reshape({batch, N}), m_d.reshape({batch, m_d.numel() / batch}), u_d, got.z_next);
    check_result(Result{got.z_next.to(Device::cpu()), got.x0.to(Device::cpu())}, want, o.x0_out);
  }
#endif
}
