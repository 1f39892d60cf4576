// kernels/cuda/adamw.cu under the emulator ([emu]) and on a GPU ([cuda]) against a plain f32 loop
// of models/train/optim.cpp's adamw_update (repeated here so this test pins the formula).
//
// Tolerance: the kernel performs the loop's f32 operations in the same order (sqrt and division
// correctly rounded on both devices); under the emulator the results are identical. On the GPU an
// FMA may replace a product and a sum (<= 1 ulp each): m and v stay within a few ulp, and the
// update lr * m / (sqrt(v) / bc2 + eps) within a few ulp of itself, so rtol 1e-6 with atol 1e-7
// (for m near a cancellation) covers both. The bf16 copy must be exactly bf16(w) of the kernel's w.
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "core/device.h"
#include "core/stream.h"
#include "core/tensor.h"
#include "kernels/adamw.h"
#include "tests/emu_test_util.h"
#include "tests/test_util.h"

using namespace diffuse;
using namespace diffuse::test;
using kernels::AdamWParams;

namespace {

struct State {
  Tensor w, g, m, v, ema;
  Tensor mask;  // u8, or undefined
};

State random_state(int64_t n, bool ema, bool mask) {
  State s{random_tensor({n}), random_tensor({n}, -0.5f, 0.5f), random_tensor({n}, -0.1f, 0.1f),
          random_tensor({n}, 0.f, 0.05f), ema ? random_tensor({n}) : Tensor(), Tensor()};
  if (mask) s.mask = random_tensor({n}, 0.f, 2.f).to(DType::u8);  // 0 or 1
  return s;
}

AdamWParams params(int64_t t, float max_norm) {
  AdamWParams p;
  p.lr = 1e-3f, p.beta1 = 0.9f, p.beta2 = 0.999f, p.eps = 1e-8f, p.weight_decay = 0.1f;
  p.bc1 = static_cast<float>(1.0 - std::pow(0.9, double(t)));
  p.bc2_sqrt = static_cast<float>(std::sqrt(1.0 - std::pow(0.999, double(t))));
  p.ema_decay = 0.995f;
  p.max_grad_norm = max_norm;
  return p;
}

// The reference loop (clipping factor as the kernel forms it, from the f32 squared norm).
State reference(const State& in, const AdamWParams& p, const float* grad_sumsq) {
  State s{in.w.clone(), in.g, in.m.clone(), in.v.clone(), in.ema.defined() ? in.ema.clone() : Tensor(), in.mask};
  float clip = 1.f;
  if (grad_sumsq && p.max_grad_norm > 0) {
    const float f = p.max_grad_norm / (std::sqrt(*grad_sumsq) + 1e-6f);
    if (f < 1.f) clip = f;
  }
  const float decay_factor = 1.f - p.lr * p.weight_decay, step_size = p.lr / p.bc1;
  const float b1 = p.beta1, b2 = p.beta2, c1 = 1.f - p.beta1, c2 = 1.f - p.beta2;
  float *w = s.w.data<float>(), *m = s.m.data<float>(), *v = s.v.data<float>();
  float* e = s.ema.defined() ? s.ema.data<float>() : nullptr;
  const float* g = s.g.data<float>();
  const uint8_t* mk = s.mask.defined() ? s.mask.data<uint8_t>() : nullptr;
  for (int64_t i = 0; i < s.w.numel(); ++i) {
    const float gi = g[i] * clip;
    const float mi = b1 * m[i] + c1 * gi;
    const float vi = b2 * v[i] + c2 * gi * gi;
    m[i] = mi, v[i] = vi;
    float wi = (!mk || mk[i]) ? w[i] * decay_factor : w[i];
    wi -= step_size * mi / (std::sqrt(vi) / p.bc2_sqrt + p.eps);
    w[i] = wi;
    if (e) e[i] = p.ema_decay * e[i] + (1.f - p.ema_decay) * wi;
  }
  return s;
}

void check_state(const State& got, const State& want, const Tensor& w_bf16) {
  INFO("w " << compare(got.w, want.w).str());
  CHECK(allclose(got.w, want.w, 1e-6, 1e-7));
  INFO("m " << compare(got.m, want.m).str());
  CHECK(allclose(got.m, want.m, 1e-6, 1e-7));
  INFO("v " << compare(got.v, want.v).str());
  CHECK(allclose(got.v, want.v, 1e-6, 1e-7));
  if (want.ema.defined()) CHECK(allclose(got.ema, want.ema, 1e-6, 1e-7));
  if (w_bf16.defined()) CHECK(bit_mismatches(w_bf16, got.w.to(DType::bf16)) == 0);
}

}  // namespace

#if defined(DIFFUSE_HAVE_SIMT)

TEST_CASE("adamw_update under the emulator matches the reference loop", "[emu][kernels]") {
  for_each_order([] {
    for (int64_t n : {1L, 7L, 1027L}) {
      for (int64_t skew : {0L, 1L}) {  // skew 1: unaligned buffers, the one-element path
        for (int opts = 0; opts < 8; ++opts) {
          const bool ema = opts & 1, mask = opts & 2, bf16 = opts & 4;
          // No clipping, clipping that does not bite (norm below max), clipping that does.
          for (float max_norm : {0.f, 1e6f, 0.05f}) {
            INFO("n=" << n << " skew=" << skew << " ema=" << ema << " mask=" << mask << " bf16=" << bf16
                      << " max_norm=" << max_norm);
            State in = random_state(n, ema, mask);
            double sq = 0;
            for (float x : in.g.to_vector()) sq += double(x) * x;
            const float sumsq = static_cast<float>(sq);
            const AdamWParams p = params(3, max_norm);
            const State want = reference(in, p, max_norm > 0 ? &sumsq : nullptr);

            // Buffers offset by `skew` floats (and bytes for the mask / bf16 copy).
            auto placed = [&](const Tensor& t) {
              Tensor b = Tensor::empty({n + skew}, t.dtype()).poison_();
              b.slice(skew, n + skew).copy_(t);
              return b;
            };
            auto at = [&](Tensor& b) { return static_cast<char*>(b.raw()) + skew * dtype_size(b.dtype()); };
            Tensor wb = placed(in.w), gb = placed(in.g), mb = placed(in.m), vb = placed(in.v);
            Tensor eb = ema ? placed(in.ema) : Tensor(), kb = mask ? placed(in.mask) : Tensor();
            Tensor bb = bf16 ? Tensor::empty({n + skew}, DType::bf16).poison_() : Tensor();
            emu::adamw_update(reinterpret_cast<float*>(at(wb)), reinterpret_cast<float*>(at(gb)),
                              reinterpret_cast<float*>(at(mb)), reinterpret_cast<float*>(at(vb)),
                              ema ? reinterpret_cast<float*>(at(eb)) : nullptr, bf16 ? at(bb) : nullptr,
                              mask ? reinterpret_cast<uint8_t*>(at(kb)) : nullptr, max_norm > 0 ? &sumsq : nullptr, n,
                              p, nullptr);
            auto out = [&](const Tensor& b) { return b.defined() ? b.slice(skew, n + skew).clone() : Tensor(); };
            State got{out(wb), in.g, out(mb), out(vb), out(eb), in.mask};
            check_state(got, want, out(bb));
            CHECK(bit_mismatches(out(gb), in.g) == 0);  // the gradient is left alone
          }
        }
      }
    }
  });
}

TEST_CASE("adamw_update under the emulator: scalars read from device memory, non-finite norms skipped",
          "[emu][kernels]") {
  // The scalars a captured graph reads when it runs must give what the by-value launch gives.
  for_each_order([] {
    const int64_t n = 1027;
    State in = random_state(n, true, true);
    double sq = 0;
    for (float x : in.g.to_vector()) sq += double(x) * x;
    const float sumsq = static_cast<float>(sq);
    AdamWParams p = params(5, 0.05f);
    p.skip_nonfinite = 1;
    const State want = reference(in, p, &sumsq);
    State got{in.w.clone(), in.g, in.m.clone(), in.v.clone(), in.ema.clone(), in.mask};
    Tensor bb = Tensor::empty({n}, DType::bf16).poison_();
    AdamWParams garbage;  // what the by-value argument holds is ignored
    garbage.bc1 = garbage.bc2_sqrt = 1.f;
    emu::adamw_update(got.w.data<float>(), in.g.data<float>(), got.m.data<float>(), got.v.data<float>(),
                      got.ema.data<float>(), bb.raw(), in.mask.data<uint8_t>(), &sumsq, n, garbage, nullptr, &p);
    check_state(got, want, bb);
    // A non-finite squared norm: nothing moves, not even the bf16 copy.
    for (float bad : {INFINITY, NAN}) {
      State same{got.w.clone(), in.g, got.m.clone(), got.v.clone(), got.ema.clone(), in.mask};
      Tensor bb2 = bb.clone();
      emu::adamw_update(same.w.data<float>(), in.g.data<float>(), same.m.data<float>(), same.v.data<float>(),
                        same.ema.data<float>(), bb2.raw(), in.mask.data<uint8_t>(), &bad, n, p, nullptr);
      CHECK(bit_mismatches(same.w, got.w) == 0);
      CHECK(bit_mismatches(same.m, got.m) == 0);
      CHECK(bit_mismatches(same.v, got.v) == 0);
      CHECK(bit_mismatches(same.ema, got.ema) == 0);
      CHECK(bit_mismatches(bb2, bb) == 0);
    }
  });
}

#endif  // DIFFUSE_HAVE_SIMT

TEST_CASE("adamw_update on the GPU matches the reference loop", "[cuda][kernels]") {
#if defined(DIFFUSE_HAVE_CUDA)
  if (!cuda_available()) return;
  const Device gpu = Device::cuda(0);
  const int64_t n = 1000003;
  State in = random_state(n, true, true);
  double sq = 0;
  for (float x : in.g.to_vector()) sq += double(x) * x;
  const float sumsq = static_cast<float>(sq);
  const AdamWParams p = params(10, 1.f);
  const State want = reference(in, p, &sumsq);
  Tensor w = in.w.to(gpu), g = in.g.to(gpu), m = in.m.to(gpu), v = in.v.to(gpu), e = in.ema.to(gpu);
  Tensor k = in.mask.to(gpu), s = Tensor::from_vector({sumsq}, {1}).to(gpu);
  Tensor b = Tensor::empty({n}, DType::bf16, gpu).poison_();
  cuda::adamw_update(w.data<float>(), g.data<float>(), m.data<float>(), v.data<float>(), e.data<float>(), b.raw(),
                     k.data<uint8_t>(), s.data<float>(), n, p, current_stream());
  State got{w.to(Device::cpu()), in.g, m.to(Device::cpu()), v.to(Device::cpu()), e.to(Device::cpu()), in.mask};
  check_state(got, want, b.to(Device::cpu()));
#endif
}
