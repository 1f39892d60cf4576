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
#include "kernels/cuda/elementwise.h"
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
        emu::axpby(a, static_cast<float*>(EmuLaunch::at(xb, skew)), b, static_cast<float*>(EmuLaunch::at(yb, skew)), n,
                   nullptr);
        Tensor got = EmuLaunch::finish(yb, n, skew);
        CHECK(allclose(got.to_vector(), want, 1e-6, 2e-6));
        Tensor zb = EmuLaunch::buffer(n, DType::f32, skew);  // NaN-poisoned: must not be read
        emu::axpby(a, static_cast<float*>(EmuLaunch::at(xb, skew)), 0.f, static_cast<float*>(EmuLaunch::at(zb, skew)),
                   n, nullptr);
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
  cuda::axpby(0.5f, x.to(gpu).data<float>(), 2.f, yd.data<float>(), n, current_stream());
  std::vector<float> xv = x.to_vector(), yv = y.to_vector(), want(n);
  for (int64_t i = 0; i < n; ++i) want[i] = 0.5f * xv[i] + 2.f * yv[i];
  CHECK(allclose(yd.to(Device::cpu()).to_vector(), want, 1e-6, 2e-6));  // the GPU may fuse into an FMA
#endif
}
