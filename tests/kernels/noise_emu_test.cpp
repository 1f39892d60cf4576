// kernels/cuda/noise.cu under the emulator ([emu]) and on a GPU ([cuda]).
//
// Tolerance: none. eps must be Tensor::randn(shape, seed, offset) bit for bit (the Philox
// transform is correctly rounded op by op), and z = alpha x + sigma eps is formed with two rounded
// products and a rounded sum on every device, which is what this f32 loop computes (the tests are
// compiled with -ffp-contract=off).
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "core/device.h"
#include "core/stream.h"
#include "core/tensor.h"
#include "kernels/cuda/noise.h"
#include "kernels/noise.h"
#include "tests/emu_test_util.h"
#include "tests/test_util.h"

using namespace diffuse;
using namespace diffuse::test;

namespace {

struct Inputs {
  Tensor x, alpha, sigma;
};

Inputs make_inputs(int64_t batch, int64_t per_sample) {
  // alpha in (0, 1], sigma in (0, 1]: the range of a variance-preserving schedule.
  return {random_tensor({batch, per_sample}), random_tensor({batch}, 0.05f, 1.f), random_tensor({batch}, 0.05f, 1.f)};
}

Tensor z_reference(const Inputs& in, const Tensor& eps) {
  const int64_t B = in.x.size(0), N = in.x.size(1);
  std::vector<float> x = in.x.to_vector(), a = in.alpha.to_vector(), s = in.sigma.to_vector(), e = eps.to_vector();
  std::vector<float> z(static_cast<size_t>(B * N));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = b * N; i < (b + 1) * N; ++i) z[i] = a[b] * x[i] + s[b] * e[i];
  return Tensor::from_vector(z, {B, N});
}

}  // namespace

#if defined(DIFFUSE_HAVE_SIMT)

TEST_CASE("noise_forward under the emulator: eps is the CPU's Philox stream, z exact", "[emu][kernels]") {
  struct Case { int64_t batch, per_sample; };
  // N % 4 != 0 makes Philox blocks straddle samples; N = 1 puts 4 samples in one block.
  const Case cases[] = {{1, 5}, {3, 7}, {5, 1}, {2, 1024}, {4, 333}};
  for_each_order([&] {
    for (const Case& c : cases) {
      for (int64_t skew : {0L, 1L}) {
        INFO("B=" << c.batch << " N=" << c.per_sample << " skew=" << skew);
        const int64_t n = c.batch * c.per_sample;
        const uint64_t seed = next_seed(), offset = next_seed() % 100000;
        Inputs in = make_inputs(c.batch, c.per_sample);
        Tensor xb = Tensor::empty({n + skew}).poison_();
        xb.slice(skew, n + skew).copy_(in.x.flatten());
        Tensor zb = Tensor::empty({n + skew + 1}).poison_(), eb = Tensor::empty({n + skew + 1}).poison_();
        emu::noise_forward(xb.data<float>() + skew, in.alpha.data<float>(), in.sigma.data<float>(),
                           zb.data<float>() + skew, eb.data<float>() + skew, c.batch, c.per_sample, seed, offset,
                           nullptr);
        const Tensor want_eps = Tensor::randn({c.batch, c.per_sample}, seed, offset);
        CHECK(bit_mismatches(eb.slice(skew, n + skew).reshape({c.batch, c.per_sample}), want_eps) == 0);
        CHECK(bit_mismatches(zb.slice(skew, n + skew).reshape({c.batch, c.per_sample}), z_reference(in, want_eps)) == 0);
        CHECK(std::isnan(zb.to_vector()[static_cast<size_t>(n + skew)]));
        CHECK(std::isnan(eb.to_vector()[static_cast<size_t>(n + skew)]));
        // Without eps: the same z.
        Tensor z2 = Tensor::empty({c.batch, c.per_sample}).poison_();
        emu::noise_forward(in.x.data<float>(), in.alpha.data<float>(), in.sigma.data<float>(), z2.data<float>(),
                           nullptr, c.batch, c.per_sample, seed, offset, nullptr);
        CHECK(bit_mismatches(z2, z_reference(in, want_eps)) == 0);
      }
    }
  });
}

TEST_CASE("noise_forward under the emulator: the seed word of a graph replay XORs the seed", "[emu][kernels]") {
  // A captured training step keeps its launch arguments; the device word decides the noise.
  const int64_t B = 3, N = 37;
  const uint64_t seed = next_seed(), word = next_seed();
  Inputs in = make_inputs(B, N);
  Tensor z = Tensor::empty({B, N}).poison_(), eps = Tensor::empty({B, N}).poison_();
  emu::noise_forward(in.x.data<float>(), in.alpha.data<float>(), in.sigma.data<float>(), z.data<float>(),
                     eps.data<float>(), B, N, seed, 5, nullptr, &word);
  const Tensor want_eps = Tensor::randn({B, N}, seed ^ word, 5);
  CHECK(bit_mismatches(eps, want_eps) == 0);
  CHECK(bit_mismatches(z, z_reference(in, want_eps)) == 0);
}

// Tied to the cpu path itself (kernels/cpu/noise.cpp), which the rest of the engine uses.
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

#endif  // DIFFUSE_HAVE_SIMT

TEST_CASE("noise_forward on the GPU draws the CPU's noise", "[cuda][kernels]") {
#if defined(DIFFUSE_HAVE_CUDA)
  if (!cuda_available()) return;
  const Device gpu = Device::cuda(0);
  for (auto [B, N] : {std::pair<int64_t, int64_t>{1, 3 * 64 * 64}, {7, 3 * 32 * 32 + 1}, {64, 12289}}) {
    INFO("B=" << B << " N=" << N);
    const uint64_t seed = next_seed();
    Inputs in = make_inputs(B, N);
    Tensor z = Tensor::empty({B, N}, DType::f32, gpu).poison_(), eps = Tensor::empty({B, N}, DType::f32, gpu).poison_();
    cuda::noise_forward(in.x.to(gpu).data<float>(), in.alpha.to(gpu).data<float>(), in.sigma.to(gpu).data<float>(),
                        z.data<float>(), eps.data<float>(), B, N, seed, 3, current_stream());
    const Tensor want_eps = Tensor::randn({B, N}, seed, 3);
    CHECK(bit_mismatches(eps.to(Device::cpu()), want_eps) == 0);
    CHECK(bit_mismatches(z.to(Device::cpu()), z_reference(in, want_eps)) == 0);
  }
#endif
}
