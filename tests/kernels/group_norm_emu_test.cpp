// kernels/cuda/group_norm.cu under the emulator ([emu]) and on a GPU ([cuda]) against double loops
// of the formulas in kernels/group_norm.h (the same math as kernels::ref in
// kernels/cpu/group_norm.cpp), on every path: fused one-pass, split over blocks, split of one.
//
// Tolerances. f32 forward: the statistics are f32 (sums or Welford partials over <= a few
// thousand terms, relative error ~(k + log2 n) eps < 1e-6), so xhat is within ~1e-6 and z, O(1)
// to O(10) here, within rtol = atol = 1e-5. f32 backward: every gradient is a sum of up to B*N
// f32 terms (U, V per channel, then the group means) and dx subtracts two such means, so the
// absolute error scales with the largest gradient: atol 1e-4 * max|want|, rtol 1e-4 (dx: see
// below). bf16: the
// reference is fed the same bf16-rounded inputs; the bf16 outputs add one rounding, 2^-8 of the
// value: rtol 8e-3 (the f32 parameter gradients keep the f32 bound).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/device.h"
#include "core/stream.h"
#include "core/tensor.h"
#include "kernels/cuda/group_norm.h"
#include "tests/emu_test_util.h"
#include "tests/test_util.h"

using namespace diffuse;
using namespace diffuse::test;
using kernels::GroupNormLaunch;

namespace {

struct Dims {
  int64_t B, N, C;
  int G;
};

struct Inputs {
  Tensor x, dy, gamma, beta, scale, shift;  // x, dy in the activation dtype; the rest f32 or undefined
};

struct Outputs {
  std::vector<float> y, mean, rstd, dx, dgamma, dbeta, dscale, dshift;
};

const float* ptr(const Tensor& t) { return t.defined() ? t.data<float>() : nullptr; }

Inputs make_inputs(const Dims& d, DType t, bool affine, bool adagn) {
  Inputs in;
  // An offset mean (+1.5) so that a variance formula with cancellation would show.
  in.x = random_tensor({d.B, d.N, d.C}, -0.5f, 3.5f).to(t);
  in.dy = random_tensor({d.B, d.N, d.C}).to(t);
  if (affine) in.gamma = random_tensor({d.C}, 0.5f, 1.5f), in.beta = random_tensor({d.C}, -0.5f, 0.5f);
  if (adagn) in.scale = random_tensor({d.B, d.C}, -0.5f, 0.5f), in.shift = random_tensor({d.B, d.C}, -0.5f, 0.5f);
  return in;
}

// The formulas of kernels/group_norm.h in double, per (b, g).
Outputs reference(const Inputs& in, const Dims& d, float eps, bool silu) {
  const std::vector<float> x = in.x.to_vector(), dy = in.dy.to_vector();
  const float *ga = ptr(in.gamma), *be = ptr(in.beta), *sc = ptr(in.scale), *sh = ptr(in.shift);
  const int64_t Cg = d.C / d.G;
  Outputs o;
  o.y.resize(x.size()), o.dx.resize(x.size()), o.mean.resize(d.B * d.G), o.rstd.resize(d.B * d.G);
  std::vector<double> dgamma(d.C, 0), dbeta(d.C, 0), dscale(d.B * d.C, 0), dshift(d.B * d.C, 0);
  auto sig = [](double z) { return 1.0 / (1.0 + std::exp(-z)); };
  for (int64_t b = 0; b < d.B; ++b)
    for (int64_t g = 0; g < d.G; ++g) {
      auto idx = [&](int64_t n, int64_t j) { return (b * d.N + n) * d.C + g * Cg + j; };
      double sum = 0, ss = 0;
      for (int64_t n = 0; n < d.N; ++n)
        for (int64_t j = 0; j < Cg; ++j) sum += x[idx(n, j)];
      const double cnt = double(d.N * Cg), mu = sum / cnt;
      for (int64_t n = 0; n < d.N; ++n)
        for (int64_t j = 0; j < Cg; ++j) ss += (x[idx(n, j)] - mu) * (x[idx(n, j)] - mu);
      const double rs = 1.0 / std::sqrt(ss / cnt + eps);
      o.mean[b * d.G + g] = float(mu), o.rstd[b * d.G + g] = float(rs);
      double m1 = 0, m2 = 0;
      std::vector<double> dxh(d.N * Cg), xh(d.N * Cg);
      for (int64_t n = 0; n < d.N; ++n)
        for (int64_t j = 0; j < Cg; ++j) {
          const int64_t c = g * Cg + j, i = idx(n, j);
          const double xhat = (x[i] - mu) * rs, gc = ga ? ga[c] : 1.0, bc = be ? be[c] : 0.0;
          const double s1 = sc ? 1.0 + sc[b * d.C + c] : 1.0;
          const double h = xhat * gc + bc, z = h * s1 + (sh ? sh[b * d.C + c] : 0.0);
          o.y[i] = float(silu ? z * sig(z) : z);
          double u = dy[i];
          if (silu) u *= sig(z) * (1.0 + z * (1.0 - sig(z)));
          dshift[b * d.C + c] += u, dscale[b * d.C + c] += u * h;
          dgamma[c] += u * s1 * xhat, dbeta[c] += u * s1;
          xh[n * Cg + j] = xhat, dxh[n * Cg + j] = u * s1 * gc;
          m1 += dxh[n * Cg + j], m2 += dxh[n * Cg + j] * xhat;
        }
      m1 /= cnt, m2 /= cnt;
      for (int64_t n = 0; n < d.N; ++n)
        for (int64_t j = 0; j < Cg; ++j)
          o.dx[idx(n, j)] = float(rs * (dxh[n * Cg + j] - m1 - xh[n * Cg + j] * m2));
    }
  auto f = [](const std::vector<double>& v) { return std::vector<float>(v.begin(), v.end()); };
  o.dgamma = f(dgamma), o.dbeta = f(dbeta), o.dscale = f(dscale), o.dshift = f(dshift);
  return o;
}

std::vector<float> rounded(const std::vector<float>& v, DType t) {
  return Tensor::from_vector(v, {static_cast<int64_t>(v.size())}).to(t).to_vector();
}

double max_abs(const std::vector<float>& v) {
  double m = 0;
  for (float a : v) m = std::max(m, double(std::fabs(a)));
  return m;
}

void check_close(const char* what, const std::vector<float>& got, const std::vector<float>& want, double rtol,
                 double atol_rel_max, double atol_floor) {
  const double atol = std::max(atol_floor, atol_rel_max * max_abs(want));
  INFO(what << ": " << compare(got, want).str());
  CHECK(allclose(got, want, rtol, atol));
}

// Runs forward and backward through `run` (emu or cuda) and checks everything.
template <class Run>
void check_case(Run&& run, const Dims& d, DType t, bool affine, bool adagn, bool silu, const GroupNormLaunch& how) {
  INFO(dtype_name(t) << " B=" << d.B << " N=" << d.N << " C=" << d.C << " G=" << d.G << " affine=" << affine
                     << " adagn=" << adagn << " silu=" << silu << " splits=" << how.splits
                     << " fused=" << how.allow_fused);
  const float eps = 1e-5f;
  const Inputs in = make_inputs(d, t, affine, adagn);
  const Outputs want = reference(in, d, eps, silu);
  const Outputs got = run(in, d, t, eps, silu, how, affine, adagn);
  const bool f32 = t == DType::f32;
  // A group of nearly equal values has a large rstd, and x - mean, tiny, carries the f32 mean's
  // rounding (~eps |x|) times rstd into xhat: an absolute floor of 8 eps |x|max rstd (gamma (1+s)
  // < 2.25). The reference rounds nothing until the end, so this is f32 statistics' own error.
  const double rstd_max = max_abs(want.rstd), ulp_x = 6e-8 * max_abs(in.x.to_vector());
  check_close("y", got.y, f32 ? want.y : rounded(want.y, t), f32 ? 1e-5 : 8e-3, 0,
              std::max(1e-5, 8 * ulp_x * rstd_max * 2.25));
  check_close("mean", got.mean, want.mean, 1e-5, 0, 1e-6);
  check_close("rstd", got.rstd, want.rstd, 1e-5, 0, 0);
  // dx = rstd (dxhat - m1 - xhat m2) cancels: each term is O(max|dxhat|) (|dxhat| <= |dy| gamma (1+s)
  // < 2.5 here) with an f32 error of a few ulp, and the difference is scaled by rstd, which is
  // large for a group of nearly equal values: an absolute floor of 16 eps * 2.5 * max rstd; and
  // xhat's error above enters times m2 and rstd once more: 8 eps |x|max rstd^2 * 2.5.
  check_close("dx", got.dx, f32 ? want.dx : rounded(want.dx, t), f32 ? 1e-4 : 8e-3, 1e-4,
              std::max(4e-6 * rstd_max, 8 * ulp_x * rstd_max * rstd_max * 2.5));
  if (affine) {
    check_close("dgamma", got.dgamma, want.dgamma, 1e-4, 1e-4, 0);
    check_close("dbeta", got.dbeta, want.dbeta, 1e-4, 1e-4, 0);
  }
  if (adagn) {
    check_close("dscale", got.dscale, want.dscale, 1e-4, 1e-4, 0);
    check_close("dshift", got.dshift, want.dshift, 1e-4, 1e-4, 0);
  }
}

#if defined(DIFFUSE_HAVE_SIMT)
struct EmuRun {
  Outputs operator()(const Inputs& in, const Dims& d, DType t, float eps, bool silu, const GroupNormLaunch& how,
                     bool affine, bool adagn) const {
    Tensor y = Tensor::empty(in.x.shape(), t).poison_(), dx = Tensor::empty(in.x.shape(), t).poison_();
    Tensor mean = Tensor::empty({d.B, d.G}).poison_(), rstd = Tensor::empty({d.B, d.G}).poison_();
    Tensor dg = Tensor::empty({d.C}).poison_(), db = Tensor::empty({d.C}).poison_();
    Tensor ds = Tensor::empty({d.B, d.C}).poison_(), dh = Tensor::empty({d.B, d.C}).poison_();
    const std::size_t wsb = emu::group_norm_workspace_bytes(d.B, d.N, d.C, d.G, how);
    Tensor ws = Tensor::empty({static_cast<int64_t>(wsb / 4)}).poison_();
    emu::group_norm_forward(in.x.raw(), y.raw(), t, ptr(in.gamma), ptr(in.beta), ptr(in.scale), ptr(in.shift),
                            mean.data<float>(), rstd.data<float>(), d.B, d.N, d.C, d.G, eps, silu, ws.raw(), nullptr,
                            how);
    emu::group_norm_backward(in.dy.raw(), in.x.raw(), dx.raw(), t, mean.data<float>(), rstd.data<float>(),
                             ptr(in.gamma), ptr(in.beta), ptr(in.scale), ptr(in.shift),
                             affine ? dg.data<float>() : nullptr, affine ? db.data<float>() : nullptr,
                             adagn ? ds.data<float>() : nullptr, adagn ? dh.data<float>() : nullptr, d.B, d.N, d.C,
                             d.G, silu, ws.raw(), nullptr, how);
    return {y.to_vector(), mean.to_vector(), rstd.to_vector(), dx.to_vector(),
            dg.to_vector(), db.to_vector(),  ds.to_vector(),   dh.to_vector()};
  }
};
#endif

}  // namespace

#if defined(DIFFUSE_HAVE_SIMT)

TEST_CASE("group_norm under the emulator: fused, split and single-block paths match the reference",
          "[emu][kernels]") {
  struct Case {
    Dims d;
    GroupNormLaunch how;
  };
  const Case cases[] = {
      {{2, 9, 12, 4}, {1, true}},      // fused: one block per (b, g), the group in shared memory
      {{1, 7, 6, 2}, {1, false}},      // split of one (the stats, finalize, apply kernels), batch 1
      {{2, 50, 40, 8}, {3, true}},     // three blocks per group; C > 32: two channel tiles in backward
      {{1, 600, 6, 2}, {0, true}},     // automatic: small batch splits (2 forward, 10 backward)
      {{3, 1, 8, 4}, {0, true}},       // N = 1: a (B, C) input
  };
  for_each_order([&] {
    for (const Case& c : cases)
      for (DType t : {DType::f32, DType::bf16})
        for (int opts = 0; opts < 8; ++opts)
          check_case(EmuRun{}, c.d, t, opts & 1, opts & 2, opts & 4, c.how);
  });
}

#endif  // DIFFUSE_HAVE_SIMT

TEST_CASE("group_norm on the GPU matches the reference", "[cuda][kernels]") {
#if defined(DIFFUSE_HAVE_CUDA)
  if (!cuda_available()) return;
  const Device gpu = Device::cuda(0);
  auto run = [gpu](const Inputs& in, const Dims& d, DType t, float eps, bool silu, const GroupNormLaunch& how,
                   bool affine, bool adagn) {
    auto dev = [gpu](const Tensor& x) { return x.defined() ? x.to(gpu) : Tensor(); };
    Inputs g{dev(in.x), dev(in.dy), dev(in.gamma), dev(in.beta), dev(in.scale), dev(in.shift)};
    Tensor y = Tensor::empty(in.x.shape(), t, gpu).poison_(), dx = Tensor::empty(in.x.shape(), t, gpu).poison_();
    Tensor mean = Tensor::empty({d.B, d.G}, DType::f32, gpu), rstd = Tensor::empty({d.B, d.G}, DType::f32, gpu);
    Tensor dg = Tensor::empty({d.C}, DType::f32, gpu), db = Tensor::empty({d.C}, DType::f32, gpu);
    Tensor ds = Tensor::empty({d.B, d.C}, DType::f32, gpu), dh = Tensor::empty({d.B, d.C}, DType::f32, gpu);
    const std::size_t wsb = cuda::group_norm_workspace_bytes(d.B, d.N, d.C, d.G, how);
    Tensor ws = Tensor::empty({static_cast<int64_t>(wsb / 4) + 1}, DType::f32, gpu);
    cuda::group_norm_forward(g.x.raw(), y.raw(), t, ptr(g.gamma), ptr(g.beta), ptr(g.scale), ptr(g.shift),
                             mean.data<float>(), rstd.data<float>(), d.B, d.N, d.C, d.G, eps, silu, ws.raw(),
                             current_stream(), how);
    cuda::group_norm_backward(g.dy.raw(), g.x.raw(), dx.raw(), t, mean.data<float>(), rstd.data<float>(),
                              ptr(g.gamma), ptr(g.beta), ptr(g.scale), ptr(g.shift), affine ? dg.data<float>() : nullptr,
                              affine ? db.data<float>() : nullptr, adagn ? ds.data<float>() : nullptr,
                              adagn ? dh.data<float>() : nullptr, d.B, d.N, d.C, d.G, silu, ws.raw(),
                              current_stream(), how);
    return Outputs{y.to_vector(), mean.to_vector(), rstd.to_vector(), dx.to_vector(),
                   dg.to_vector(), db.to_vector(),  ds.to_vector(),   dh.to_vector()};
  };
  // UNet shapes: 32x32x128 at batch 64 (fused), 64x64x256 at batch 1 (split), 8x8x512.
  const Dims shapes[] = {{64, 1024, 128, 32}, {1, 4096, 256, 32}, {16, 64, 512, 32}};
  for (const Dims& d : shapes)
    for (DType t : {DType::f32, DType::bf16}) check_case(run, d, t, true, true, true, GroupNormLaunch{});
#endif
}
