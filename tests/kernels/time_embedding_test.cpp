// kernels/time_embedding.h against the two published formulas, written here as their sources
// write them (DDPM's diffusion_utils and ADM's guided_diffusion/nn.py), evaluated in double.
//
// Tolerance: the kernel rounds a double result once to f32 (<= 6e-8 for values in [-1, 1]); the
// two formulas compute the frequency in a different order (1e-16 relative), which the angle
// (<= 1e3 rad) turns into <= 1e-13 absolute: atol 1e-7.
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "core/tensor.h"
#include "kernels/time_embedding.h"
#include "tests/test_util.h"

using namespace diffuse;
using namespace diffuse::test;
using kernels::TimeEmbeddingOptions;

namespace {

// DDPM: emb = log(10000) / (half - 1); emb = exp(arange(half) * -emb); emb = t * emb;
// concat([sin, cos]); zero pad for odd dim.
std::vector<double> ddpm(const std::vector<float>& t, int dim) {
  const int half = dim / 2;
  const double e = std::log(10000.0) / (half - 1);
  std::vector<double> out(t.size() * dim, 0.0);
  for (size_t b = 0; b < t.size(); ++b)
    for (int i = 0; i < half; ++i) {
      const double a = t[b] * std::exp(i * -e);
      out[b * dim + i] = std::sin(a);
      out[b * dim + half + i] = std::cos(a);
    }
  return out;
}

// ADM: freqs = exp(-log(max_period) * arange(half) / half); args = t * freqs; [cos, sin].
std::vector<double> adm(const std::vector<float>& t, int dim, double max_period) {
  const int half = dim / 2;
  std::vector<double> out(t.size() * dim, 0.0);
  for (size_t b = 0; b < t.size(); ++b)
    for (int i = 0; i < half; ++i) {
      const double a = t[b] * std::exp(-std::log(max_period) * i / half);
      out[b * dim + i] = std::cos(a);
      out[b * dim + half + i] = std::sin(a);
    }
  return out;
}

bool near(const std::vector<float>& got, const std::vector<double>& want, double atol) {
  if (got.size() != want.size()) return false;
  for (size_t i = 0; i < got.size(); ++i)
    if (!(std::fabs(got[i] - want[i]) <= atol)) return false;
  return true;
}

}  // namespace

TEST_CASE("timestep_embedding reproduces DDPM and ADM", "[cpu][kernels]") {
  for (int64_t B : {1, 5}) {
    for (int dim : {4, 7, 32, 129}) {
      INFO("B " << B << " dim " << dim);
      Tensor t = random_tensor({B}, 0.f, 1000.f);
      const std::vector<float> tv = t.to_vector();
      TimeEmbeddingOptions d;
      d.flip_sin_to_cos = false;
      d.downscale_freq_shift = 1.f;
      Tensor out = Tensor::empty({B, dim});
      out.poison_();
      kernels::cpu::timestep_embedding(t, dim, d, out);
      CHECK(near(out.to_vector(), ddpm(tv, dim), 1e-7));
      TimeEmbeddingOptions a;
      a.flip_sin_to_cos = true;
      a.downscale_freq_shift = 0.f;
      a.max_period = 500.f;
      CHECK(near(kernels::timestep_embedding(t, dim, a).to_vector(), adm(tv, dim, 500.0), 1e-7));
      // scale multiplies the angle: scale s at t equals scale 1 at s t.
      a.scale = 0.25f;
      Tensor ts = Tensor::from_vector([&] {
        std::vector<float> v(tv);
        for (float& x : v) x *= 0.25f;  // exact (a power of two)
        return v;
      }(), {B});
      CHECK(near(kernels::timestep_embedding(t, dim, a).to_vector(), adm(ts.to_vector(), dim, 500.0), 1e-7));
    }
  }
}

TEST_CASE("timestep_embedding: defaults, t = 0, odd width, errors", "[cpu][kernels]") {
  Tensor t = Tensor::from_vector({0.f}, {1});
  std::vector<float> e = kernels::timestep_embedding(t, 5).to_vector();  // defaults: [cos, sin], pad
  CHECK(e == std::vector<float>{1.f, 1.f, 0.f, 0.f, 0.f});
  CHECK_THROWS_AS(kernels::timestep_embedding(t, 2), Error);  // half - shift = 0 with the default shift 1
  CHECK_THROWS_AS(kernels::timestep_embedding(Tensor::zeros({2, 1}), 8), Error);
  TimeEmbeddingOptions a;
  a.downscale_freq_shift = 0.f;
  CHECK(kernels::timestep_embedding(t, 2, a).to_vector() == std::vector<float>{1.f, 0.f});
}
