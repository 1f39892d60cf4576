// The emulated kernels of kernels/cuda against the committed CPU references of kernels/cpu (the
// per-op [emu] tests check the formulas against double loops of their own; this file ties each
// kernel to the oracle the rest of the engine uses, so the two cannot drift apart). One odd shape
// per op, every thread order; tolerances as argued in each op's own test.
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "core/tensor.h"
#include "kernels/attention.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/group_norm.h"
#include "kernels/cuda/noise.h"
#include "kernels/cuda/softmax.h"
#include "kernels/cuda/time_embedding.h"
#include "kernels/group_norm.h"
#include "kernels/loss.h"
#include "kernels/noise.h"
#include "kernels/softmax.h"
#include "kernels/time_embedding.h"
#include "tests/emu_test_util.h"
#include "tests/test_util.h"

#if defined(DIFFUSE_HAVE_SIMT)

using namespace diffuse;
using namespace diffuse::test;

namespace {

double max_abs(const Tensor& t) {
  double m = 0;
  for (float v : t.to_vector()) m = std::max(m, double(std::fabs(v)));
  return m;
}

}  // namespace

TEST_CASE("noise_forward under the emulator equals kernels::cpu::noise_forward bit for bit", "[emu][kernels]") {
  for_each_order([] {
    const int64_t B = 3, N = 5 * 7;
    Tensor x = random_tensor({B, 5, 7}), alpha = random_tensor({B}, 0.1f, 1.f), sigma = random_tensor({B}, 0.1f, 1.f);
    Tensor z = Tensor::empty(x.shape()).poison_(), eps = Tensor::empty(x.shape()).poison_();
    Tensor zc = Tensor::empty(x.shape()), ec = Tensor::empty(x.shape());
    const uint64_t seed = next_seed();
    kernels::cpu::noise_forward(x, alpha, sigma, seed, 11, zc, ec);
    emu::noise_forward(x.data<float>(), alpha.data<float>(), sigma.data<float>(), z.data<float>(), eps.data<float>(),
                       B, N, seed, 11, nullptr);
    CHECK(bit_mismatches(eps, ec) == 0);
    CHECK(bit_mismatches(z, zc) == 0);
  });
}

TEST_CASE("timestep_embedding under the emulator matches kernels::cpu::timestep_embedding", "[emu][kernels]") {
  for_each_order([] {
    for (int dim : {33, 64}) {
      kernels::TimeEmbeddingOptions o;
      Tensor t = random_tensor({5}, 0.f, 1000.f);
      Tensor want = Tensor::empty({5, dim}), got = Tensor::empty({5, dim}).poison_();
      kernels::cpu::timestep_embedding(t, dim, o, want);
      emu::timestep_embedding(t.data<float>(), got.data<float>(), 5, dim, o, nullptr);
      INFO(compare(got, want).str());
      CHECK(allclose(got, want, 0.0, 1.2e-7));  // both round a double evaluation once
    }
  });
}

TEST_CASE("softmax and cross entropy under the emulator match kernels::ref / kernels::cpu", "[emu][kernels]") {
  for_each_order([] {
    Tensor x = random_tensor({5, 37}, -6.f, 6.f);
    Tensor want = Tensor::empty(x.shape()), got = Tensor::empty(x.shape()).poison_();
    kernels::ref::softmax_last_forward(x, want);
    emu::softmax_forward(x.raw(), got.raw(), DType::f32, 5, 37, nullptr);
    CHECK(allclose(got, want, 1e-5, 1e-9));
    Tensor dy = random_tensor(x.shape()), dwant = Tensor::empty(x.shape()), dgot = Tensor::empty(x.shape()).poison_();
    kernels::ref::softmax_last_backward(dy, want, dwant);
    emu::softmax_backward(dy.raw(), want.raw(), dgot.raw(), DType::f32, 5, 37, nullptr);
    CHECK(allclose(dgot, dwant, 1e-5, 1e-6));

    Tensor labels = Tensor::from_vector_i64({0, 36, 5, 17, 2}, {5});
    Tensor loss = Tensor::empty({1}), lse = Tensor::empty({5});
    kernels::cpu::cross_entropy_forward(x, labels, loss, lse);
    Tensor gl = Tensor::empty({5}).poison_(), grl = Tensor::empty({5}).poison_(), gloss = Tensor::empty({1}).poison_();
    emu::cross_entropy_forward(x.data<float>(), labels.data<int64_t>(), gl.data<float>(), grl.data<float>(),
                               gloss.data<float>(), 5, 37, nullptr);
    CHECK(allclose(gl, lse, 1e-5, 1e-6));
    CHECK(allclose(gloss, loss, 1e-5, 1e-6));
  });
}

TEST_CASE("group_norm under the emulator matches kernels::ref::group_norm", "[emu][kernels]") {
  for_each_order([] {
    const int64_t B = 2, H = 3, W = 5, C = 12;
    const int G = 4;
    Tensor x = random_tensor({B, H, W, C}, -0.5f, 3.5f), dy = random_tensor({B, H, W, C});
    Tensor gamma = random_tensor({C}, 0.5f, 1.5f), beta = random_tensor({C}, -0.5f, 0.5f);
    Tensor scale = random_tensor({B, C}, -0.5f, 0.5f), shift = random_tensor({B, C}, -0.5f, 0.5f);
    kernels::GroupNormOptions o;
    o.groups = G, o.silu = true;
    Tensor y = Tensor::empty(x.shape()), mean = Tensor::empty({B, G}), rstd = Tensor::empty({B, G});
    kernels::ref::group_norm_forward(x, gamma, beta, scale, shift, o, y, mean, rstd);
    kernels::GroupNormGrads g{Tensor::empty(x.shape()), Tensor::empty({C}), Tensor::empty({C}), Tensor::empty({B, C}),
                              Tensor::empty({B, C})};
    kernels::ref::group_norm_backward(dy, x, mean, rstd, gamma, beta, scale, shift, o, g);

    Tensor gy = Tensor::empty(x.shape()).poison_(), gm = Tensor::empty({B, G}).poison_();
    Tensor gr = Tensor::empty({B, G}).poison_(), gdx = Tensor::empty(x.shape()).poison_();
    Tensor gdg = Tensor::empty({C}).poison_(), gdb = Tensor::empty({C}).poison_();
    Tensor gds = Tensor::empty({B, C}).poison_(), gdh = Tensor::empty({B, C}).poison_();
    // Both paths: the fused one-pass forward, and three blocks per group.
    for (kernels::GroupNormLaunch how : {kernels::GroupNormLaunch{1, true}, kernels::GroupNormLaunch{3, true}}) {
      Tensor ws = Tensor::empty({static_cast<int64_t>(emu::group_norm_workspace_bytes(B, H * W, C, G, how) / 4)});
      emu::group_norm_forward(x.raw(), gy.raw(), DType::f32, gamma.data<float>(), beta.data<float>(),
                              scale.data<float>(), shift.data<float>(), gm.data<float>(), gr.data<float>(), B, H * W, C,
                              G, o.eps, true, ws.raw(), nullptr, how);
      emu::group_norm_backward(dy.raw(), x.raw(), gdx.raw(), DType::f32, gm.data<float>(), gr.data<float>(),
                               gamma.data<float>(), beta.data<float>(), scale.data<float>(), shift.data<float>(),
                               gdg.data<float>(), gdb.data<float>(), gds.data<float>(), gdh.data<float>(), B, H * W, C,
                               G, true, ws.raw(), nullptr, how);
      CHECK(allclose(gy, y, 1e-5, 1e-5));
      CHECK(allclose(gm, mean, 1e-5, 1e-6));
      CHECK(allclose(gr, rstd, 1e-5, 0));
      CHECK(allclose(gdx, g.dx, 1e-4, 1e-4 * max_abs(g.dx)));
      CHECK(allclose(gdg, g.dgamma, 1e-4, 1e-4 * max_abs(g.dgamma)));
      CHECK(allclose(gdb, g.dbeta, 1e-4, 1e-4 * max_abs(g.dbeta)));
      CHECK(allclose(gds, g.dscale, 1e-4, 1e-4 * max_abs(g.dscale)));
      CHECK(allclose(gdh, g.dshift, 1e-4, 1e-4 * max_abs(g.dshift)));
    }
  });
}

TEST_CASE("attention under the emulator matches kernels::ref::attention", "[emu][kernels]") {
  for_each_order([] {
    const int64_t B = 2, Tq = 21, Tk = 45;
    const int heads = 2, D = 32;
    const int64_t C = heads * D;
    Tensor q = random_tensor({B, Tq, C}), k = random_tensor({B, Tk, C}), v = random_tensor({B, Tk, C});
    Tensor dout = random_tensor({B, Tq, C});
    Tensor out = Tensor::empty({B, Tq, C}), p = Tensor::empty({B, heads, Tq, Tk});
    kernels::ref::attention_forward(q, k, v, heads, out, p);
    Tensor dq = Tensor::empty(q.shape()), dk = Tensor::empty(k.shape()), dv = Tensor::empty(v.shape());
    kernels::ref::attention_backward(dout, q, k, v, p, heads, dq, dk, dv);

    Tensor gout = Tensor::empty(out.shape()).poison_(), lse = Tensor::empty({B, heads, Tq}).poison_();
    emu::attention_forward(q.raw(), k.raw(), v.raw(), gout.raw(), lse.data<float>(), DType::f32, B, Tq, Tk, heads, D,
                           nullptr);
    Tensor gdq = Tensor::empty(q.shape()).poison_(), gdk = Tensor::empty(k.shape()).poison_();
    Tensor gdv = Tensor::empty(v.shape()).poison_(), ws = Tensor::empty({B * heads * Tq});
    emu::attention_backward(dout.raw(), q.raw(), k.raw(), v.raw(), gout.raw(), lse.data<float>(), gdq.raw(), gdk.raw(),
                            gdv.raw(), DType::f32, B, Tq, Tk, heads, D, ws.raw(), nullptr);
    CHECK(allclose(gout, out, 1e-4, 1e-4 * max_abs(out)));
    CHECK(allclose(gdq, dq, 1e-4, 1e-4 * max_abs(dq)));
    CHECK(allclose(gdk, dk, 1e-4, 1e-4 * max_abs(dk)));
    CHECK(allclose(gdv, dv, 1e-4, 1e-4 * max_abs(dv)));
  });
}

#endif  // DIFFUSE_HAVE_SIMT
