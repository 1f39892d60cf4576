// kernels/cuda/noise.cu under the emulator: the seed word of a captured graph's replay, a launch
// argument the op table's entry (tests/kernels/op_table.cpp, add_noise: every shape, alignment,
// the launch without eps, the cpu path, the GPU) does not set.
//
// Tolerance: none. eps must be Tensor::randn(shape, seed, offset) bit for bit (the Philox
// transform is correctly rounded op by op), and z = alpha x + sigma eps is formed with two rounded
// products and a rounded sum on every device, which is what this f32 loop computes (the tests are
// compiled with -ffp-contract=off).
#include <catch2/catch.hpp>

#include <vector>

#include "core/tensor.h"
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

#endif  // DIFFUSE_HAVE_SIMT
