// 2-D toy distributions for checking a diffusion model by eye. Point i uses only Philox elements
// keyed by (seed, i): stream offset 0 holds uniforms, offset 1 normals (2 per point).
// Centring and scale constants are the exact moments of each noiseless shape plus the noise,
// computed once (numerically, 10^7-point midpoint rule) so they do not depend on n.
#include <cmath>
#include <numbers>

#include "core/philox.h"
#include "models/data/dataset.h"

namespace diffuse::data {
namespace {

constexpr double kPi = std::numbers::pi;

Dataset make(int64_t n, const char* name, bool labelled, int classes) {
  DF_CHECK(n > 0, name, ": number of points must be positive, got ", n);
  Dataset d;
  d.images = Tensor::empty({n, 2});
  if (labelled) d.labels = Tensor::empty({n}, DType::i64);
  d.num_classes = classes;
  d.name = name;
  return d;
}

}  // namespace

Dataset swiss_roll(int64_t n, uint64_t seed) {
  // t uniform on [1.5 pi, 4.5 pi], point (t cos t, t sin t) + N(0, 0.5^2): mean (2.0, 0.2122);
  // per-axis variances 43.86 and 48.32 (+0.25 noise), so one isotropic scale 6.808 keeps the
  // shape and gives unit variance on average over the two axes.
  constexpr double kNoise = 0.5, kMx = 2.0, kMy = 0.2122066, kScale = 6.808;
  Dataset d = make(n, "swiss_roll", false, 0);
  float* p = d.images.data<float>();
  for (int64_t i = 0; i < n; ++i) {
    double t = 1.5 * kPi * (1.0 + 2.0 * philox_uniform(seed, 0, uint64_t(i)));
    double x = t * std::cos(t) + kNoise * philox_normal(seed, 1, 2 * uint64_t(i));
    double y = t * std::sin(t) + kNoise * philox_normal(seed, 1, 2 * uint64_t(i) + 1);
    p[2 * i] = static_cast<float>((x - kMx) / kScale);
    p[2 * i + 1] = static_cast<float>((y - kMy) / kScale);
  }
  return d;
}

Dataset eight_gaussians(int64_t n, uint64_t seed) {
  // Modes on a circle of radius r at angles k pi/4, isotropic sigma: the per-axis variance is
  // r^2/2 + sigma^2, which r = sqrt(2 (1 - sigma^2)) makes exactly 1.
  constexpr double kSigma = 0.1;
  const double r = std::sqrt(2.0 * (1.0 - kSigma * kSigma));
  Dataset d = make(n, "8gaussians", true, 8);
  float* p = d.images.data<float>();
  int64_t* l = d.labels.data<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    int k = std::min(7, static_cast<int>(philox_uniform(seed, 0, uint64_t(i)) * 8.0f));
    double a = k * kPi / 4;
    p[2 * i] = static_cast<float>(r * std::cos(a) + kSigma * philox_normal(seed, 1, 2 * uint64_t(i)));
    p[2 * i + 1] = static_cast<float>(r * std::sin(a) + kSigma * philox_normal(seed, 1, 2 * uint64_t(i) + 1));
    l[i] = k;
  }
  return d;
}

Dataset two_moons(int64_t n, uint64_t seed) {
  // As scikit-learn's make_moons: upper moon (cos a, sin a), lower (1 - cos a, 0.5 - sin a), a
  // uniform on [0, pi], N(0, 0.1^2) noise. Mean (0.5, 0.25); variances 0.76 and 0.2542, so the
  // isotropic scale sqrt((0.76 + 0.2542) / 2) = 0.7121 gives unit variance averaged over axes.
  constexpr double kNoise = 0.1, kMx = 0.5, kMy = 0.25, kScale = 0.7121;
  Dataset d = make(n, "moons", true, 2);
  float* p = d.images.data<float>();
  int64_t* l = d.labels.data<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    int moon = philox_uniform(seed, 0, 2 * uint64_t(i)) < 0.5f ? 0 : 1;
    double a = kPi * philox_uniform(seed, 0, 2 * uint64_t(i) + 1);
    double x = moon == 0 ? std::cos(a) : 1.0 - std::cos(a);
    double y = moon == 0 ? std::sin(a) : 0.5 - std::sin(a);
    x += kNoise * philox_normal(seed, 1, 2 * uint64_t(i));
    y += kNoise * philox_normal(seed, 1, 2 * uint64_t(i) + 1);
    p[2 * i] = static_cast<float>((x - kMx) / kScale);
    p[2 * i + 1] = static_cast<float>((y - kMy) / kScale);
    l[i] = moon;
  }
  return d;
}

Dataset toy_2d(const std::string& name, int64_t n, uint64_t seed) {
  if (name == "swiss_roll" || name == "swissroll") return swiss_roll(n, seed);
  if (name == "8gaussians" || name == "eight_gaussians") return eight_gaussians(n, seed);
  if (name == "moons" || name == "two_moons") return two_moons(n, seed);
  DF_FAIL("unknown 2-D toy set '", name, "' (expected swiss_roll, 8gaussians or moons)");
}

}  // namespace diffuse::data
