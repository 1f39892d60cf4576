// kernels/cuda/attention.cu under the emulator ([emu]) and on a GPU ([cuda]) against double
// loops of kernels/attention.h's formulas (materialising P, as kernels::ref does); and the bf16
// tensor-core kernels of kernels/cuda/attention_tc.cu against the same loops and the SIMT kernels,
// under the emulator (whose mma.sync is kernels/simt's warp collective) and on a GPU.
//
// Tolerances. f32: a score is a D-term dot product (D <= 64) of values in [-1, 1], scaled by
// 1/sqrt(D): its f32 error is at most 64 eps * 8 = 3e-5 absolute, which P inherits as a relative
// error; out, dV, dQ, dK are P-weighted sums of <= 100 terms accumulated in f32, and dS subtracts
// Delta from dP. So each output is within ~1e-4 of its own scale: rtol 1e-4 with an absolute floor
// of 1e-4 * max|want| for elements near zero. bf16: the inputs are rounded to bf16 before both
// sides see them; the outputs add one bf16 rounding (2^-8 of the value): rtol 8e-3. And backward
// reads the bf16-rounded forward output in Delta = rowsum(dO * O), an error spread over every dS of
// the row, so a gradient element is within a bf16 rounding of the largest one: atol 8e-3 * max|want|.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "core/device.h"
#include "core/stream.h"
#include "core/tensor.h"
#include "kernels/cuda/attention.h"
#include "tests/emu_test_util.h"
#include "tests/test_util.h"

using namespace diffuse;
using namespace diffuse::test;

namespace {

struct Geo {
  int64_t B, Tq, Tk;
  int heads, D;
};

struct Grads {
  std::vector<float> out, dq, dk, dv;
};

Grads reference(const Geo& g, const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v,
                const std::vector<float>& dout) {
  const int64_t C = static_cast<int64_t>(g.heads) * g.D;
  const double scale = 1.0 / std::sqrt(double(g.D));
  Grads r;
  r.out.assign(q.size(), 0.f), r.dq.assign(q.size(), 0.f), r.dk.assign(k.size(), 0.f), r.dv.assign(v.size(), 0.f);
  std::vector<double> P(g.Tq * g.Tk), dP(g.Tq * g.Tk);
  for (int64_t b = 0; b < g.B; ++b)
    for (int h = 0; h < g.heads; ++h) {
      auto Q = [&](int64_t i, int d) { return double(q[(b * g.Tq + i) * C + h * g.D + d]); };
      auto K = [&](int64_t j, int d) { return double(k[(b * g.Tk + j) * C + h * g.D + d]); };
      auto V = [&](int64_t j, int d) { return double(v[(b * g.Tk + j) * C + h * g.D + d]); };
      auto dO = [&](int64_t i, int d) { return double(dout[(b * g.Tq + i) * C + h * g.D + d]); };
      for (int64_t i = 0; i < g.Tq; ++i) {
        double m = -INFINITY, l = 0;
        for (int64_t j = 0; j < g.Tk; ++j) {
          double s = 0;
          for (int d = 0; d < g.D; ++d) s += Q(i, d) * K(j, d);
          P[i * g.Tk + j] = s * scale;
          m = std::max(m, s * scale);
        }
        for (int64_t j = 0; j < g.Tk; ++j) l += (P[i * g.Tk + j] = std::exp(P[i * g.Tk + j] - m));
        for (int64_t j = 0; j < g.Tk; ++j) P[i * g.Tk + j] /= l;
        for (int d = 0; d < g.D; ++d) {
          double o = 0;
          for (int64_t j = 0; j < g.Tk; ++j) o += P[i * g.Tk + j] * V(j, d);
          r.out[(b * g.Tq + i) * C + h * g.D + d] = float(o);
        }
        double rowsum = 0;
        for (int64_t j = 0; j < g.Tk; ++j) {
          double dp = 0;
          for (int d = 0; d < g.D; ++d) dp += dO(i, d) * V(j, d);
          dP[i * g.Tk + j] = dp;
          rowsum += dp * P[i * g.Tk + j];
        }
        for (int64_t j = 0; j < g.Tk; ++j) dP[i * g.Tk + j] = P[i * g.Tk + j] * (dP[i * g.Tk + j] - rowsum);  // dS
      }
      for (int64_t i = 0; i < g.Tq; ++i)
        for (int d = 0; d < g.D; ++d) {
          double a = 0;
          for (int64_t j = 0; j < g.Tk; ++j) a += dP[i * g.Tk + j] * K(j, d);
          r.dq[(b * g.Tq + i) * C + h * g.D + d] = float(a * scale);
        }
      for (int64_t j = 0; j < g.Tk; ++j)
        for (int d = 0; d < g.D; ++d) {
          double a = 0, c = 0;
          for (int64_t i = 0; i < g.Tq; ++i) a += dP[i * g.Tk + j] * Q(i, d), c += P[i * g.Tk + j] * dO(i, d);
          r.dk[(b * g.Tk + j) * C + h * g.D + d] = float(a * scale);
          r.dv[(b * g.Tk + j) * C + h * g.D + d] = float(c);
        }
    }
  return r;
}

double max_abs(const std::vector<float>& v) {
  double m = 0;
  for (float a : v) m = std::max(m, double(std::fabs(a)));
  return m;
}

void check_close(const char* what, const std::vector<float>& got, const std::vector<float>& want, DType t) {
  std::vector<float> w = want;
  if (t != DType::f32) w = Tensor::from_vector(want, {static_cast<int64_t>(want.size())}).to(t).to_vector();
  INFO(what << ": " << compare(got, w).str());
  CHECK(allclose(got, w, t == DType::f32 ? 1e-4 : 8e-3, (t == DType::f32 ? 1e-4 : 8e-3) * max_abs(want)));
}

struct Inputs {
  Tensor q, k, v, dout;
};

Inputs make_inputs(const Geo& g, DType t) {
  const int64_t C = static_cast<int64_t>(g.heads) * g.D;
  return {random_tensor({g.B, g.Tq, C}).to(t), random_tensor({g.B, g.Tk, C}).to(t), random_tensor({g.B, g.Tk, C}).to(t),
          random_tensor({g.B, g.Tq, C}).to(t)};
}

template <class Run>
void check_geo(Run&& run, const Geo& g, DType t) {
  INFO(dtype_name(t) << " B=" << g.B << " Tq=" << g.Tq << " Tk=" << g.Tk << " heads=" << g.heads << " D=" << g.D);
  const Inputs in = make_inputs(g, t);
  const Grads want = reference(g, in.q.to_vector(), in.k.to_vector(), in.v.to_vector(), in.dout.to_vector());
  const Grads got = run(in, g, t);
  check_close("out", got.out, want.out, t);
  check_close("dq", got.dq, want.dq, t);
  check_close("dk", got.dk, want.dk, t);
  check_close("dv", got.dv, want.dv, t);
}

}  // namespace

#if defined(DIFFUSE_HAVE_SIMT)

TEST_CASE("flash attention under the emulator matches the materialised reference", "[emu][kernels]") {
  // Self-attention with an odd length; cross-attention with Tq over one block (64) and Tk under a
  // tile (32); many key tiles and two dK/dV blocks (Tk > 64); batch 1 and several heads.
  const Geo geos[] = {{1, 37, 37, 1, 64}, {2, 70, 19, 2, 32}, {1, 5, 100, 2, 64}, {1, 33, 33, 3, 32}};
  for_each_order([&] {
    for (const Geo& g : geos)
      for (DType t : {DType::f32, DType::bf16})
        check_geo(
            [](const Inputs& in, const Geo& g, DType t) {
              Tensor out = Tensor::empty(in.q.shape(), t).poison_();
              Tensor lse = Tensor::empty({g.B, g.heads, g.Tq}).poison_();
              emu::attention_forward(in.q.raw(), in.k.raw(), in.v.raw(), out.raw(), lse.data<float>(), t, g.B, g.Tq,
                                     g.Tk, g.heads, g.D, nullptr);
              Tensor dq = Tensor::empty(in.q.shape(), t).poison_(), dk = Tensor::empty(in.k.shape(), t).poison_();
              Tensor dv = Tensor::empty(in.v.shape(), t).poison_();
              Tensor ws = Tensor::empty({static_cast<int64_t>(emu::attention_backward_workspace_bytes(g.B, g.Tq, g.heads) / 4)})
                              .poison_();
              emu::attention_backward(in.dout.raw(), in.q.raw(), in.k.raw(), in.v.raw(), out.raw(), lse.data<float>(),
                                      dq.raw(), dk.raw(), dv.raw(), t, g.B, g.Tq, g.Tk, g.heads, g.D, ws.raw(),
                                      nullptr);
              return Grads{out.to_vector(), dq.to_vector(), dk.to_vector(), dv.to_vector()};
            },
            g, t);
  });
}

// The tensor-core launchers compiled for the emulator (kernels/cuda/attention_tc.cu), whose
// mma.sync is kernels/simt's warp collective; kernels/cuda/attention.h declares them for the GPU
// build only.
namespace diffuse::emu {
bool attention_tc_supported(DType dtype, int D, std::initializer_list<const void*> ptrs);
void attention_tc_forward(const void* q, const void* k, const void* v, void* out, float* lse, int64_t B, int64_t Tq,
                          int64_t Tk, int heads, int D, void* stream);
void attention_tc_backward(const void* dout, const void* q, const void* k, const void* v, const void* out,
                           const float* lse, void* dq, void* dk, void* dv, int64_t B, int64_t Tq, int64_t Tk, int heads,
                           int D, void* workspace, void* stream);
}  // namespace diffuse::emu

// The bf16 tensor-core kernels under the emulator against the double reference and against the
// SIMT kernels on the same inputs, with the [cuda] test's tolerances (below): the tensor-core
// kernels round P (and dS in backward) to bf16 before the second product, one more bf16 rounding
// (2^-8 relative) of every term of a sum on top of the outputs' own and of the bf16 forward output
// that Delta reads, so twice the SIMT bound against the reference (rtol 1.6e-2, atol 1.6e-2 *
// max|want|) and the sum of the two bounds between the two kernels (2.4e-2). The emulated mma sums
// its products exactly and rounds once, at least as accurate as the GPU's f32 accumulation, so the
// GPU's bounds hold here too. Batch 1; odd token counts (partial tiles in every kernel); Tq over one
// block of 64 rows; Tk under one dQ key tile (32) and over one forward tile (64); both head dims.
TEST_CASE("tensor-core flash attention under the emulator matches the reference and the SIMT kernels",
          "[emu][kernels]") {
  const Geo geos[] = {{1, 37, 37, 1, 64}, {1, 5, 100, 2, 64}, {1, 70, 19, 2, 32}, {1, 33, 33, 3, 32}};
  const DType t = DType::bf16;
  for_each_order([&] {
    for (const Geo& g : geos) {
      INFO("B=" << g.B << " Tq=" << g.Tq << " Tk=" << g.Tk << " heads=" << g.heads << " D=" << g.D);
      const Inputs in = make_inputs(g, t);
      REQUIRE(emu::attention_tc_supported(t, g.D, {in.q.raw(), in.k.raw(), in.v.raw(), in.dout.raw()}));
      const Grads want = reference(g, in.q.to_vector(), in.k.to_vector(), in.v.to_vector(), in.dout.to_vector());
      auto run = [&](bool tc) {
        Tensor out = Tensor::empty(in.q.shape(), t).poison_();
        Tensor lse = Tensor::empty({g.B, g.heads, g.Tq}).poison_();
        Tensor dq = Tensor::empty(in.q.shape(), t).poison_(), dk = Tensor::empty(in.k.shape(), t).poison_();
        Tensor dv = Tensor::empty(in.v.shape(), t).poison_();
        Tensor ws =
            Tensor::empty({static_cast<int64_t>(emu::attention_backward_workspace_bytes(g.B, g.Tq, g.heads) / 4)}).poison_();
        if (tc) {
          emu::attention_tc_forward(in.q.raw(), in.k.raw(), in.v.raw(), out.raw(), lse.data<float>(), g.B, g.Tq, g.Tk,
                                    g.heads, g.D, nullptr);
          emu::attention_tc_backward(in.dout.raw(), in.q.raw(), in.k.raw(), in.v.raw(), out.raw(), lse.data<float>(),
                                     dq.raw(), dk.raw(), dv.raw(), g.B, g.Tq, g.Tk, g.heads, g.D, ws.raw(), nullptr);
        } else {
          emu::attention_forward(in.q.raw(), in.k.raw(), in.v.raw(), out.raw(), lse.data<float>(), t, g.B, g.Tq, g.Tk,
                                 g.heads, g.D, nullptr);
          emu::attention_backward(in.dout.raw(), in.q.raw(), in.k.raw(), in.v.raw(), out.raw(), lse.data<float>(),
                                  dq.raw(), dk.raw(), dv.raw(), t, g.B, g.Tq, g.Tk, g.heads, g.D, ws.raw(), nullptr);
        }
        return std::pair<Grads, std::vector<float>>{Grads{out.to_vector(), dq.to_vector(), dk.to_vector(), dv.to_vector()},
                                                    lse.to_vector()};
      };
      const auto [tc, tc_lse] = run(true);
      const auto [simt, simt_lse] = run(false);
      const std::pair<const char*, const std::vector<float> Grads::*> parts[] = {
          {"out", &Grads::out}, {"dq", &Grads::dq}, {"dk", &Grads::dk}, {"dv", &Grads::dv}};
      for (const auto& [name, member] : parts) {
        const std::vector<float>& w = want.*member;
        INFO(name << " tensor cores vs reference: " << compare(tc.*member, w).str());
        CHECK(allclose(tc.*member, w, 1.6e-2, 1.6e-2 * max_abs(w)));
        INFO(name << " tensor cores vs SIMT: " << compare(tc.*member, simt.*member).str());
        CHECK(allclose(tc.*member, simt.*member, 2.4e-2, 2.4e-2 * max_abs(w)));
      }
      // The log-sum-exp is f32 on both sides, from scores that differ only in summation order.
      INFO("lse: " << compare(tc_lse, simt_lse).str());
      CHECK(allclose(tc_lse, simt_lse, 1e-4, 1e-4));
    }
  });
}

#endif  // DIFFUSE_HAVE_SIMT

TEST_CASE("flash attention on the GPU matches the materialised reference", "[cuda][kernels]") {
#if defined(DIFFUSE_HAVE_CUDA)
  if (!cuda_available()) return;
  const Device gpu = Device::cuda(0);
  // UNet attention at 16x16 (T = 256) with 4 heads of 64, and a cross-attention shape.
  const Geo geos[] = {{4, 256, 256, 4, 64}, {2, 100, 77, 8, 32}};
  for (const Geo& g : geos)
    for (DType t : {DType::f32, DType::bf16})
      check_geo(
          [gpu](const Inputs& in, const Geo& g, DType t) {
            Tensor q = in.q.to(gpu), k = in.k.to(gpu), v = in.v.to(gpu), dout = in.dout.to(gpu);
            Tensor out = Tensor::empty(in.q.shape(), t, gpu).poison_();
            Tensor lse = Tensor::empty({g.B, g.heads, g.Tq}, DType::f32, gpu);
            cuda::attention_forward(q.raw(), k.raw(), v.raw(), out.raw(), lse.data<float>(), t, g.B, g.Tq, g.Tk,
                                    g.heads, g.D, current_stream());
            Tensor dq = Tensor::empty(in.q.shape(), t, gpu).poison_(), dk = Tensor::empty(in.k.shape(), t, gpu).poison_();
            Tensor dv = Tensor::empty(in.v.shape(), t, gpu).poison_();
            Tensor ws = Tensor::empty({g.B * g.heads * g.Tq}, DType::f32, gpu);
            cuda::attention_backward(dout.raw(), q.raw(), k.raw(), v.raw(), out.raw(), lse.data<float>(), dq.raw(),
                                     dk.raw(), dv.raw(), t, g.B, g.Tq, g.Tk, g.heads, g.D, ws.raw(), current_stream());
            return Grads{out.to_vector(), dq.to_vector(), dk.to_vector(), dv.to_vector()};
          },
          g, t);
#endif
}

// The bf16 tensor-core kernels (kernels/cuda/attention_tc.cu) against the double reference and
// against the SIMT kernels on the same inputs. Tolerances: the tensor-core kernels round P (and
// dS in backward) to bf16 before the second product, where the SIMT ones keep them in f32: one more
// bf16 rounding (2^-8 relative) of every term of a sum, on top of the output's own rounding and
// the bf16 forward output that Delta reads. So twice the SIMT bound above against the reference
// (rtol 1.6e-2, atol 1.6e-2 * max|want|), and the sum of the two bounds between the two kernels
// (2.4e-2). Odd token counts (37, 100, 77: partial tiles in every kernel), batch 1, cross-attention
// both ways, both head dims, and the UNet's 16x16 shape.
TEST_CASE("tensor-core flash attention matches the SIMT kernels and the reference", "[cuda][kernels]") {
#if defined(DIFFUSE_HAVE_CUDA)
  if (!cuda_available()) return;
  const Device gpu = Device::cuda(0);
  set_current_device(gpu);
  const Geo geos[] = {{1, 37, 37, 1, 64}, {1, 5, 100, 2, 64}, {2, 100, 77, 8, 32}, {1, 33, 33, 3, 32},
                      {4, 256, 256, 4, 64}};
  const DType t = DType::bf16;
  for (const Geo& g : geos) {
    INFO("B=" << g.B << " Tq=" << g.Tq << " Tk=" << g.Tk << " heads=" << g.heads << " D=" << g.D);
    const Inputs in = make_inputs(g, t);
    Tensor q = in.q.to(gpu), k = in.k.to(gpu), v = in.v.to(gpu), dout = in.dout.to(gpu);
    REQUIRE(cuda::attention_tc_supported(t, g.D, {q.raw(), k.raw(), v.raw(), dout.raw()}) ==
            (cuda_devices().at(0).cc_major >= 8));
    if (cuda_devices().at(0).cc_major < 8) return;
    const Grads want = reference(g, in.q.to_vector(), in.k.to_vector(), in.v.to_vector(), in.dout.to_vector());
    auto run = [&](bool tc) {
      Tensor out = Tensor::empty(in.q.shape(), t, gpu).poison_();
      Tensor lse = Tensor::empty({g.B, g.heads, g.Tq}, DType::f32, gpu).poison_();
      Tensor dq = Tensor::empty(in.q.shape(), t, gpu).poison_();
      Tensor dk = Tensor::empty(in.k.shape(), t, gpu).poison_(), dv = Tensor::empty(in.v.shape(), t, gpu).poison_();
      Tensor ws = Tensor::empty({g.B * g.heads * g.Tq}, DType::f32, gpu).poison_();
      if (tc) {
        cuda::attention_tc_forward(q.raw(), k.raw(), v.raw(), out.raw(), lse.data<float>(), g.B, g.Tq, g.Tk, g.heads,
                                   g.D, current_stream());
        cuda::attention_tc_backward(dout.raw(), q.raw(), k.raw(), v.raw(), out.raw(), lse.data<float>(), dq.raw(),
                                    dk.raw(), dv.raw(), g.B, g.Tq, g.Tk, g.heads, g.D, ws.raw(), current_stream());
      } else {
        cuda::attention_forward(q.raw(), k.raw(), v.raw(), out.raw(), lse.data<float>(), t, g.B, g.Tq, g.Tk, g.heads,
                                g.D, current_stream());
        cuda::attention_backward(dout.raw(), q.raw(), k.raw(), v.raw(), out.raw(), lse.data<float>(), dq.raw(),
                                 dk.raw(), dv.raw(), t, g.B, g.Tq, g.Tk, g.heads, g.D, ws.raw(), current_stream());
      }
      return std::pair<Grads, std::vector<float>>{
          Grads{out.to_vector(), dq.to_vector(), dk.to_vector(), dv.to_vector()}, lse.to_vector()};
    };
    const auto [tc, tc_lse] = run(true);
    const auto [simt, simt_lse] = run(false);
    const std::pair<const char*, const std::vector<float> Grads::*> parts[] = {
        {"out", &Grads::out}, {"dq", &Grads::dq}, {"dk", &Grads::dk}, {"dv", &Grads::dv}};
    for (const auto& [name, member] : parts) {
      const std::vector<float>& w = want.*member;
      INFO(name << " tensor cores vs reference: " << compare(tc.*member, w).str());
      CHECK(allclose(tc.*member, w, 1.6e-2, 1.6e-2 * max_abs(w)));
      INFO(name << " tensor cores vs SIMT: " << compare(tc.*member, simt.*member).str());
      CHECK(allclose(tc.*member, simt.*member, 2.4e-2, 2.4e-2 * max_abs(w)));
    }
    // The log-sum-exp is f32 on both sides, from scores that differ only in summation order (the
    // bf16 products are exact in f32): f32 agreement.
    INFO("lse: " << compare(tc_lse, simt_lse).str());
    CHECK(allclose(tc_lse, simt_lse, 1e-4, 1e-4));
    // The dispatch picks the tensor-core kernels for bf16 on this GPU: the same bits (the kernels
    // are deterministic, with no atomics).
    const kernels::AttentionResult fwd = cuda::attention_forward(q, k, v, g.heads);
    CHECK(fwd.out.to_vector() == tc.out);
    CHECK(fwd.saved.to_vector() == tc_lse);
    const kernels::AttentionGrads grads = cuda::attention_backward(dout, q, k, v, fwd, g.heads);
    CHECK(grads.dq.to_vector() == tc.dq);
    CHECK(grads.dk.to_vector() == tc.dk);
    CHECK(grads.dv.to_vector() == tc.dv);
  }
#endif
}
