// kernels/cuda/elementwise.cu under the emulator ([emu]) and on a GPU ([cuda]), against plain
// double-precision loops written here (the reference of the op's math).
//
// Tolerances. f32: the kernel rounds ~5 times and its expf is within 2 ulp (CUDA's documented
// bound; exact under the emulator); sigmoid does not amplify the relative error of exp, so the
// result is within ~4 ulp = 5e-7 relative: rtol 2e-6. silu' = s (1 + x (1 - s)) cancels near its
// zero at x = -1.28, where the absolute error is ~|x| eps: atol 1e-6 (times |dy| <= 1). bf16: the
// f32 result is rounded once to 8 bits of mantissa, and a 1e-6 difference may flip that
// rounding, so one bf16 ulp (2^-7 relative at worst): rtol 8e-3.
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "core/device.h"
#include "core/stream.h"
#include "core/tensor.h"
#include "kernels/elementwise.h"
#include "tests/emu_test_util.h"
#include "tests/test_util.h"

using namespace diffuse;
using namespace diffuse::test;

namespace {

double silu_ref(double x) { return x / (1.0 + std::exp(-x)); }
double silu_grad_ref(double x) {
  const double s = 1.0 / (1.0 + std::exp(-x));
  return s * (1.0 + x * (1.0 - s));
}

struct Tol {
  double rtol, atol;
};
Tol tol_for(DType t) { return t == DType::f32 ? Tol{2e-6, 1e-6} : Tol{8e-3, 1e-6}; }

// Inputs of a dtype (values exactly representable in it), as f32 for the references.
Tensor input(int64_t n, DType t, float lo = -6.f, float hi = 6.f) { return random_tensor({n}, lo, hi).to(t); }

// Runs the three ops through `ns` (diffuse::emu or diffuse::cuda launchers wrapped in lambdas)
// on buffers from `alloc` and checks them.
template <class Launch>
void check_ops(Launch&& launch, int64_t n, DType t, int64_t skew) {
  INFO(dtype_name(t) << " n=" << n << " skew=" << skew);
  const Tol tol = tol_for(t);
  Tensor x = input(n, t), dy = input(n, t, -1.f, 1.f), dx0 = input(n, t, -1.f, 1.f);
  const std::vector<float> xv = x.to_vector(), dyv = dy.to_vector(), dx0v = dx0.to_vector();
  std::vector<float> y_ref(n), g_ref(n), ga_ref(n);
  for (int64_t i = 0; i < n; ++i) {
    y_ref[i] = static_cast<float>(silu_ref(xv[i]));
    g_ref[i] = static_cast<float>(dyv[i] * silu_grad_ref(xv[i]));
    ga_ref[i] = static_cast<float>(dx0v[i] + dyv[i] * silu_grad_ref(xv[i]));
  }
  // The same rounding to the storage type that the kernel's last step does.
  auto stored = [&](std::vector<float> v) { return Tensor::from_vector(v, {n}).to(t).to_vector(); };

  Tensor y = launch.silu_forward(x, skew);
  INFO("silu_forward " << compare(y.to_vector(), stored(y_ref)).str());
  CHECK(allclose(y.to_vector(), stored(y_ref), tol.rtol, tol.atol));

  Tensor g = launch.silu_backward(x, dy, Tensor(), skew);
  INFO("silu_backward " << compare(g.to_vector(), stored(g_ref)).str());
  CHECK(allclose(g.to_vector(), stored(g_ref), tol.rtol, tol.atol));

  Tensor ga = launch.silu_backward(x, dy, dx0, skew);
  INFO("silu_backward accumulate " << compare(ga.to_vector(), stored(ga_ref)).str());
  CHECK(allclose(ga.to_vector(), stored(ga_ref), tol.rtol, tol.atol));
}

#if defined(DIFFUSE_HAVE_SIMT)
// Host buffers offset by `skew` elements, so skew 1 takes the unaligned path; the element before
// and after the range stay poisoned.
struct EmuLaunch {
  static Tensor buffer(int64_t n, DType t, int64_t skew) { return Tensor::empty({n + skew + 1}, t).poison_(); }
  static void* at(Tensor& b, int64_t skew) { return static_cast<char*>(b.raw()) + skew * dtype_size(b.dtype()); }
  static Tensor placed(const Tensor& src, int64_t skew) {
    Tensor b = buffer(src.numel(), src.dtype(), skew);
    b.slice(skew, skew + src.numel()).copy_(src);
    return b;
  }
  static Tensor finish(const Tensor& b, int64_t n, int64_t skew) {
    const std::vector<float> v = b.to_vector();
    CHECK(std::isnan(v[static_cast<size_t>(n + skew)]));
    if (skew) CHECK(std::isnan(v[0]));
    return b.slice(skew, skew + n).clone();
  }
  Tensor silu_forward(const Tensor& x, int64_t skew) {
    const int64_t n = x.numel();
    Tensor xb = placed(x, skew), yb = buffer(n, x.dtype(), skew);
    emu::silu_forward(at(xb, skew), at(yb, skew), x.dtype(), n, nullptr);
    return finish(yb, n, skew);
  }
  Tensor silu_backward(const Tensor& x, const Tensor& dy, const Tensor& dx0, int64_t skew) {
    const int64_t n = x.numel();
    Tensor xb = placed(x, skew), gb = placed(dy, skew);
    Tensor db = dx0.defined() ? placed(dx0, skew) : buffer(n, x.dtype(), skew);
    emu::silu_backward(at(xb, skew), at(gb, skew), at(db, skew), x.dtype(), n, dx0.defined(), nullptr);
    return finish(db, n, skew);
  }
};
#endif

}  // namespace

#if defined(DIFFUSE_HAVE_SIMT)

TEST_CASE("silu forward and backward under the emulator match the reference", "[emu][kernels]") {
  for_each_order([] {
    for (DType t : {DType::f32, DType::bf16})
      for (int64_t n : {1L, 5L, 4099L})
        for (int64_t skew : {0L, 1L}) check_ops(EmuLaunch{}, n, t, skew);
  });
}

TEST_CASE("silu forward in place under the emulator", "[emu][kernels]") {
  Tensor x = input(1003, DType::f32);
  Tensor want = x.clone();
  emu::silu_forward(want.raw(), want.raw(), DType::f32, want.numel(), nullptr);  // reference run, out of place below
  Tensor y = Tensor::empty(x.shape()).poison_();
  emu::silu_forward(x.raw(), y.raw(), DType::f32, x.numel(), nullptr);
  CHECK(bit_mismatches(want, y) == 0);
}

TEST_CASE("axpby under the emulator: b = 0 ignores y, else a x + b y", "[emu][kernels]") {
  for_each_order([] {
    for (int64_t n : {1L, 7L, 2051L}) {
      for (int64_t skew : {0L, 1L}) {
        INFO("n=" << n << " skew=" << skew);
        Tensor x = random_tensor({n}), y0 = random_tensor({n});
        const float a = 0.75f, b = -1.25f;
        std::vector<float> xv = x.to_vector(), yv = y0.to_vector(), want(n), want0(n);
        // a x + b y in f32 with two roundings of products and one of the sum: the kernel's
        // operations exactly (the emulator build does not contract into an FMA), so allow
        // only float noise: rtol 1e-6 of the larger term.
        for (int64_t i = 0; i < n; ++i) {
          want[i] = static_cast<float>(double(a) * xv[i] + double(b) * yv[i]);
          want0[i] = a * xv[i];
        }
        Tensor xb = EmuLaunch::placed(x, skew), yb = EmuLaunch::placed(y0, skew);
        emu::axpby(a, EmuLaunch::at(xb, skew), b, EmuLaunch::at(yb, skew), DType::f32, n, nullptr);
        Tensor got = EmuLaunch::finish(yb, n, skew);
        CHECK(allclose(got.to_vector(), want, 1e-6, 2e-6));
        Tensor zb = EmuLaunch::buffer(n, DType::f32, skew);  // NaN-poisoned: must not be read
        emu::axpby(a, EmuLaunch::at(xb, skew), 0.f, EmuLaunch::at(zb, skew), DType::f32, n, nullptr);
        CHECK(EmuLaunch::finish(zb, n, skew).to_vector() == want0);
      }
    }
  });
}

#endif  // DIFFUSE_HAVE_SIMT

TEST_CASE("elementwise kernels on the GPU match the reference", "[cuda][kernels]") {
#if defined(DIFFUSE_HAVE_CUDA)
  if (!cuda_available()) return;
  const Device gpu = Device::cuda(0);
  struct CudaLaunch {
    Device gpu;
    Tensor silu_forward(const Tensor& x, int64_t) {
      Tensor xd = x.to(gpu), yd = Tensor::empty(x.shape(), x.dtype(), gpu).poison_();
      cuda::silu_forward(xd.raw(), yd.raw(), x.dtype(), x.numel(), current_stream());
      return yd.to(Device::cpu());
    }
    Tensor silu_backward(const Tensor& x, const Tensor& dy, const Tensor& dx0, int64_t) {
      Tensor xd = x.to(gpu), gd = dy.to(gpu);
      Tensor dd = dx0.defined() ? dx0.to(gpu) : Tensor::empty(x.shape(), x.dtype(), gpu).poison_();
      cuda::silu_backward(xd.raw(), gd.raw(), dd.raw(), x.dtype(), x.numel(), dx0.defined(), current_stream());
      return dd.to(Device::cpu());
    }
  };
  for (DType t : {DType::f32, DType::bf16})
    for (int64_t n : {1L, 5L, 1000003L}) check_ops(CudaLaunch{gpu}, n, t, 0);
  const int64_t n = 1000003;
  Tensor x = random_tensor({n}), y = random_tensor({n});
  Tensor yd = y.to(gpu);
  cuda::axpby(0.5f, x.to(gpu).raw(), 2.f, yd.raw(), DType::f32, n, current_stream());
  std::vector<float> xv = x.to_vector(), yv = y.to_vector(), want(n);
  for (int64_t i = 0; i < n; ++i) want[i] = 0.5f * xv[i] + 2.f * yv[i];
  CHECK(allclose(yd.to(Device::cpu()).to_vector(), want, 1e-6, 2e-6));  // the GPU may fuse into an FMA
#endif
}

// ---- broadcast binary ops, unary ops, affine maps, dropout, swap ---------------------------------
//
// Each check runs the launchers of one backend (the emulator on host buffers, or the GPU) through a
// table of their function pointers, against the cpu reference loops of kernels/elementwise.h run in
// f64 on the same inputs. Tolerances: f32 binary ops are one rounding of the exact result (add, sub,
// mul of f32 inputs are exact in double; div is rounded twice): rtol 2.4e-7. Unary ops: the rtol of
// silu above (2e-6, the GPU's expf/log1pf/tanhf are within 2 ulp), atol 1e-6 near roots; log and sqrt
// run on positive inputs. bf16: the f32 result rounded once to bf16, which a last-bit difference in
// the f32 value may flip: one bf16 ulp, rtol 8e-3 (atol 1e-6 for results near zero).


namespace {

using kernels::BinaryOp;
using kernels::Dims;
using kernels::UnaryOp;

struct ElementwiseOps {
  decltype(&emu::binary_forward) binary_forward;
  decltype(&emu::broadcast_to) broadcast_to;
  decltype(&emu::unary_forward) unary_forward;
  decltype(&emu::unary_backward) unary_backward;
  decltype(&emu::affine) affine;
  decltype(&emu::axpby) axpby;
  decltype(&emu::dropout) dropout;
  decltype(&emu::swap) swap;
  Device device;
};
#define DF_ELEMENTWISE_OPS(ns, dev)                                                                       \
  ElementwiseOps {                                                                                      \
    &ns::binary_forward, &ns::broadcast_to, &ns::unary_forward, &ns::unary_backward, &ns::affine,       \
        &ns::axpby, &ns::dropout, &ns::swap, dev                                                        \
  }

Dims dims_of(const Shape& s) {
  Dims d;
  d.rank = s.rank();
  for (int i = 0; i < s.rank(); ++i) d.d[i] = s[i];
  return d;
}

// A poisoned output on the backend's device.
Tensor out_on(const ElementwiseOps& ops, const Shape& s, DType t) { return Tensor::empty(s, t, ops.device).poison_(); }

Tol elementwise_tol(DType t, double f32_rtol) { return t == DType::f32 ? Tol{f32_rtol, 1e-6} : Tol{8e-3, 1e-6}; }

// want (f64 reference values) rounded to the storage type, as the kernel's last step does.
std::vector<float> stored_as(const Tensor& want64, DType t) { return want64.to(DType::f32).to(t).to_vector(); }

void check_elementwise_ops(const ElementwiseOps& ops) {
  const Device cpu = Device::cpu();
  struct Case {
    Shape a, b;
  };
  // Same shape (packs), bias (C) onto (B,H,W,C), per-sample scalar, (B,1,1,C) time projection, both
  // sides broadcasting, rank mismatch, one element, an odd innermost size (no packs).
  const Case cases[] = {{{3, 5, 16}, {3, 5, 16}}, {{2, 3, 5, 16}, {16}},     {{3, 4, 5, 8}, {3, 1, 1, 1}},
                        {{2, 4, 4, 24}, {2, 1, 1, 24}}, {{3, 1, 8}, {1, 5, 8}}, {{4, 1}, {1, 6}},
                        {{1}, {2, 3}},              {{5, 1, 3, 1}, {4, 1, 2}}, {{2, 3, 7}, {7}}};
  for (DType t : {DType::f32, DType::bf16}) {
    for (const Case& c : cases) {
      for (BinaryOp op : {BinaryOp::add, BinaryOp::sub, BinaryOp::mul, BinaryOp::div}) {
        INFO(dtype_name(t) << " " << c.a.str() << " op " << c.b.str() << " (" << int(op) << ")");
        // div: b away from zero, so the quotient's rounding is the only error.
        Tensor a = random_tensor(c.a).to(t), b = random_tensor(c.b, 0.5f, 2.f).to(t);
        Tensor want = Tensor::empty(kernels::broadcast_shape(c.a, c.b), DType::f64);
        kernels::ref::binary_forward(op, a.to(DType::f64), b.to(DType::f64), want);
        Tensor ad = a.to(ops.device), bd = b.to(ops.device), out = out_on(ops, want.shape(), t);
        ops.binary_forward(op, ad.raw(), dims_of(c.a), bd.raw(), dims_of(c.b), out.raw(), t, current_stream());
        const Tol tol = elementwise_tol(t, 2.4e-7);
        INFO(compare(out.to(cpu).to_vector(), stored_as(want, t)).str());
        CHECK(allclose(out.to(cpu).to_vector(), stored_as(want, t), tol.rtol, tol.atol));
      }
      // broadcast_to: b repeated to the broadcast shape, exactly.
      const Shape o = kernels::broadcast_shape(c.a, c.b);
      Tensor b = random_tensor(c.b).to(t);
      Tensor want = Tensor::empty(o, DType::f64);
      kernels::ref::broadcast_to(b.to(DType::f64), want);
      Tensor out = out_on(ops, o, t);
      ops.broadcast_to(b.to(ops.device).raw(), dims_of(c.b), out.raw(), dims_of(o), t, current_stream());
      CHECK(out.to(cpu).to_vector() == stored_as(want, t));
    }
    // Unary ops over a length with a pack remainder; log and sqrt on positive inputs.
    const int64_t n = 1037;
    for (UnaryOp op : {UnaryOp::silu, UnaryOp::sigmoid, UnaryOp::softplus, UnaryOp::exp, UnaryOp::log,
                       UnaryOp::tanh, UnaryOp::square, UnaryOp::sqrt, UnaryOp::neg}) {
      INFO(dtype_name(t) << " " << kernels::unary_name(op));
      const bool positive = op == UnaryOp::log || op == UnaryOp::sqrt;
      Tensor x = (positive ? random_tensor({n}, 0.05f, 4.f) : random_tensor({n}, -5.f, 5.f)).to(t);
      Tensor dy = random_tensor({n}).to(t), dx0 = random_tensor({n}).to(t);
      Tensor y64 = Tensor::empty({n}, DType::f64), g64 = Tensor::empty({n}, DType::f64);
      kernels::ref::unary_forward(op, x.to(DType::f64), y64);
      kernels::ref::unary_backward(op, dy.to(DType::f64), x.to(DType::f64), g64);
      Tensor xd = x.to(ops.device), dyd = dy.to(ops.device);
      Tensor y = out_on(ops, {n}, t), g = out_on(ops, {n}, t), ga = dx0.to(ops.device).clone();
      ops.unary_forward(op, xd.raw(), y.raw(), t, n, current_stream());
      ops.unary_backward(op, xd.raw(), dyd.raw(), g.raw(), t, n, false, current_stream());
      ops.unary_backward(op, xd.raw(), dyd.raw(), ga.raw(), t, n, true, current_stream());
      const Tol tol = elementwise_tol(t, 2e-6);
      INFO("forward " << compare(y.to(cpu).to_vector(), stored_as(y64, t)).str());
      CHECK(allclose(y.to(cpu).to_vector(), stored_as(y64, t), tol.rtol, tol.atol));
      INFO("backward " << compare(g.to(cpu).to_vector(), stored_as(g64, t)).str());
      CHECK(allclose(g.to(cpu).to_vector(), stored_as(g64, t), tol.rtol, tol.atol));
      // Accumulating: dx0 + dy f'(x), rounded once.
      std::vector<float> ga_want(n), g64v = g64.to_vector(), d0 = dx0.to_vector();
      for (int64_t i = 0; i < n; ++i) ga_want[i] = static_cast<float>(double(d0[i]) + double(g64v[i]));
      const std::vector<float> ga_stored = Tensor::from_vector(ga_want, {n}).to(t).to_vector();
      CHECK(allclose(ga.to(cpu).to_vector(), ga_stored, t == DType::f32 ? 4e-6 : 8e-3, 2e-6));
    }
    // affine y = a x + b in place; axpby both forms.
    Tensor x = random_tensor({n}).to(t), y0 = random_tensor({n}).to(t);
    std::vector<float> xv = x.to_vector(), yv = y0.to_vector(), aff(n), axb(n);
    for (int64_t i = 0; i < n; ++i) {
      aff[i] = static_cast<float>(1.5 * xv[i] - 0.25);
      axb[i] = static_cast<float>(0.5 * xv[i] - 2.0 * yv[i]);
    }
    // clone(): under the emulator to(cpu) is the tensor itself, and these run in place.
    Tensor xd = x.to(ops.device).clone();
    ops.affine(xd.raw(), xd.raw(), 1.5f, -0.25f, t, n, current_stream());
    CHECK(allclose(xd.to(cpu).to_vector(), Tensor::from_vector(aff, {n}).to(t).to_vector(), t == DType::f32 ? 1e-6 : 8e-3,
                   1e-6));
    Tensor yd = y0.to(ops.device).clone();
    ops.axpby(0.5f, x.to(ops.device).raw(), -2.f, yd.raw(), t, n, current_stream());
    CHECK(allclose(yd.to(cpu).to_vector(), Tensor::from_vector(axb, {n}).to(t).to_vector(), t == DType::f32 ? 1e-6 : 8e-3,
                   2e-6));
    // Dropout: the cpu's mask and scale, exactly (f32), with and without a device seed word.
    const float p = 0.3f;
    const uint64_t seed = next_seed(), offset = 17, mask_word = 0x5a5a1234ull;
    Tensor want = kernels::dropout_forward(x.to(DType::f32), p, seed, offset).to(t);
    Tensor dd = out_on(ops, {n}, t);
    ops.dropout(x.to(ops.device).raw(), dd.raw(), t, n, p, seed, offset, nullptr, current_stream());
    CHECK(bit_mismatches(dd.to(cpu), want) == 0);
    Tensor word = Tensor::from_vector_i64({static_cast<int64_t>(mask_word)}, {1}, ops.device);
    Tensor want_x = kernels::dropout_forward(x.to(DType::f32), p, seed ^ mask_word, offset).to(t);
    ops.dropout(x.to(ops.device).raw(), dd.raw(), t, n, p, seed, offset,
                static_cast<const uint64_t*>(word.raw()), current_stream());
    CHECK(bit_mismatches(dd.to(cpu), want_x) == 0);
  }
  // swap
  Tensor a = random_tensor({1001}), b = random_tensor({1001});
  Tensor ad = a.to(ops.device).clone(), bd = b.to(ops.device).clone();
  ops.swap(ad.data<float>(), bd.data<float>(), 1001, current_stream());
  CHECK(ad.to(cpu).to_vector() == b.to_vector());
  CHECK(bd.to(cpu).to_vector() == a.to_vector());
}

}  // namespace

#if defined(DIFFUSE_HAVE_SIMT)
TEST_CASE("broadcast binary, unary, affine, dropout and swap kernels under the emulator", "[emu][kernels]") {
  for_each_order([] { check_elementwise_ops(DF_ELEMENTWISE_OPS(emu, Device::cpu())); });
}
#endif

TEST_CASE("broadcast binary, unary, affine, dropout and swap kernels on the GPU", "[cuda][kernels]") {
#if defined(DIFFUSE_HAVE_CUDA)
  if (!cuda_available()) return;
  check_elementwise_ops(DF_ELEMENTWISE_OPS(cuda, Device::cuda(0)));
#endif
}
