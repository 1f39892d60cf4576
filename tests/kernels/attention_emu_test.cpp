// The bf16 tensor-core flash attention of kernels/cuda/attention_tc.cu, under the emulator ([emu],
// whose mma.sync is kernels/simt's warp collective) and on a GPU ([cuda]), against kernels::ref
// (f64, P materialised) and against the SIMT kernels of kernels/cuda/attention.cu on the same
// inputs; on a GPU, also that the dispatch picks them. The SIMT kernels against the reference are
// in the op table (op_table_test.cpp), with the argument for the SIMT bounds the tolerances below
// build on.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "core/device.h"
#include "core/stream.h"
#include "core/tensor.h"
#include "kernels/attention.h"
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

// kernels::ref in f64 (P materialised) on the same inputs, rounded to f32.
Grads reference(const Geo& g, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& dout) {
  const Tensor q64 = q.to(DType::f64), k64 = k.to(DType::f64), v64 = v.to(DType::f64), do64 = dout.to(DType::f64);
  Tensor out = Tensor::empty(q.shape(), DType::f64), p = Tensor::empty({g.B, g.heads, g.Tq, g.Tk}, DType::f64);
  kernels::ref::attention_forward(q64, k64, v64, g.heads, out, p);
  Tensor dq = Tensor::empty(q.shape(), DType::f64), dk = Tensor::empty(k.shape(), DType::f64);
  Tensor dv = Tensor::empty(v.shape(), DType::f64);
  kernels::ref::attention_backward(do64, q64, k64, v64, p, g.heads, dq, dk, dv);
  return {out.to_vector(), dq.to_vector(), dk.to_vector(), dv.to_vector()};
}

double max_abs(const std::vector<float>& v) {
  double m = 0;
  for (float a : v) m = std::max(m, double(std::fabs(a)));
  return m;
}

struct Inputs {
  Tensor q, k, v, dout;
};

Inputs make_inputs(const Geo& g, DType t) {
  const int64_t C = static_cast<int64_t>(g.heads) * g.D;
  return {random_tensor({g.B, g.Tq, C}).to(t), random_tensor({g.B, g.Tk, C}).to(t), random_tensor({g.B, g.Tk, C}).to(t),
          random_tensor({g.B, g.Tq, C}).to(t)};
}

}  // namespace

#if defined(DIFFUSE_HAVE_SIMT)

// The tensor-core launchers compiled for the emulator (kernels/cuda/attention_tc.cu), whose
// mma.sync is kernels/simt's warp collective; kernels/attention.h declares them for the GPU
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
      const Grads want = reference(g, in.q, in.k, in.v, in.dout);
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
    const Grads want = reference(g, in.q, in.k, in.v, in.dout);
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
