// Likelihood bounds of discretized Gaussian data under the exact (Gaussian-optimal) denoiser.
#include <catch2/catch.hpp>

#include <cmath>
#include <numbers>

#include "models/diffusion/likelihood.h"
#include "tests/diffusion/oracle.h"
#include "tests/test_util.h"

using namespace diffuse;
using namespace diffuse::diffusion;
using diffuse::test::Mixture;
using diffuse::test::Oracle;

namespace {

// Data on the 256 levels 2k/255 - 1: a Gaussian N(mu, s^2) rounded to the nearest level (bins of
// width 2/255, end bins open), as 8-bit pixels are. As a mixture of point masses (stdev 0) its
// optimal denoiser is exact at every noise level, including where it snaps to the grid.
Mixture discretized_gaussian(double mu, double s) {
  Mixture m;
  auto cdf = [&](double x) { return 0.5 * std::erfc(-(x - mu) / (s * std::numbers::sqrt2)); };
  for (int k = 0; k < 256; ++k) {
    const double x = 2.0 * k / 255 - 1;
    const double p = (k == 255 ? 1.0 : cdf(x + 1.0 / 255)) - (k == 0 ? 0.0 : cdf(x - 1.0 / 255));
    if (p < 1e-13) continue;  // below f32 resolution of the posterior weights
    m.weight.push_back(p);
    m.mean.push_back({x});
    m.stdev.push_back({0.0});
  }
  double tot = 0;
  for (double w : m.weight) tot += w;
  for (double& w : m.weight) w /= tot;
  return m;
}

// Its entropy in bits: the best any model can do, and the limit of an exact model's bound.
double entropy_bits(const Mixture& m) {
  double h = 0;
  for (double p : m.weight) h -= p * std::log2(p);
  return h;
}

}  // namespace

TEST_CASE("discrete VLB of the exact model approaches the data entropy as T grows", "[cpu][diffusion]") {
  // With the exact denoiser E[x | z_t] the slack left in the bound is the Gaussian form of
  // p(x_{t-1} | x_t), which vanishes as the steps shrink (Sohl-Dickstein et al. 2015 sec. 2.2;
  // VDM sec. 4 and app. F: the discrete bound decreases with T towards the continuous one), so
  // bits/dim falls towards the entropy H from above. T steps of VDM's log-SNR schedule keep the
  // ends fixed (sigma at the first step ~1e-3, below half a bin) while T grows.
  Mixture g = discretized_gaussian(0.1, 0.1);
  const double H = entropy_bits(g);
  Tensor x0 = g.sample(1000, test::next_seed());
  LinearLogSNR vdm;
  std::vector<BitsPerDim> r;
  for (int T : {10, 100, 1000}) {
    DiscreteSchedule sch = DiscreteSchedule::from_continuous(vdm, T);
    Oracle oracle{&sch, g};
    VlbOptions o;
    o.seed = test::next_seed();
    r.push_back(vlb_bits_per_dim(sch, oracle.fn(), x0, o));
    INFO("T " << T << ": bound " << r.back().bpd << " +- " << r.back().stderr_bpd << " (prior " << r.back().prior_bpd
              << ", diffusion " << r.back().diffusion_bpd << ", decoder " << r.back().decoder_bpd << "), entropy " << H
              << ", seed " << test::run_seed());
    // An upper bound in expectation.
    CHECK(r.back().bpd > H - 5 * r.back().stderr_bpd);
    if (T == 1000) {
      // Typical values: 13.3, 6.3-6.4, 5.9-6.0 against H = 5.72 (B = 1000, standard errors ~0.07-0.1;
      // the decoder term is noisy: a rare sample whose bin is missed costs -log(1e-12) = 40 bits).
      CHECK(r[1].bpd < r[0].bpd);
      CHECK(r[2].bpd < r[1].bpd + std::hypot(r[1].stderr_bpd, r[2].stderr_bpd));
      CHECK(r[2].bpd - H < 0.1 + 5 * r[2].stderr_bpd);
      // The stratified estimate (50 strata, one step each) agrees with the full sum.
      o.strata = 50;
      BitsPerDim st = vlb_bits_per_dim(sch, oracle.fn(), x0, o);
      INFO("stratified " << st.bpd << " +- " << st.stderr_bpd);
      CHECK(std::fabs(st.bpd - r[2].bpd) < 5 * std::hypot(st.stderr_bpd, r[2].stderr_bpd));
      CHECK(st.decoder_bpd == Approx(r[2].decoder_bpd));
      CHECK(st.prior_bpd == Approx(r[2].prior_bpd));
    }
  }
}

TEST_CASE("VDM continuous bound of the exact model is the data entropy", "[cpu][diffusion]") {
  // Continuous time with the exact denoiser leaves only the prior's and the decoder's slack
  // (both ~1e-2 bits here): H <= E[bound] <= H + prior + decoder.
  Mixture g = discretized_gaussian(0.1, 0.1);
  const double H = entropy_bits(g);
  Tensor x0 = g.sample(1000, test::next_seed());
  LinearLogSNR sch;
  Oracle oracle{&sch, g};
  VdmBoundOptions o;
  o.seed = test::next_seed();
  o.t_samples = 32;
  BitsPerDim r = vdm_bits_per_dim(sch, oracle.fn(), x0, o);
  INFO("bound " << r.bpd << " +- " << r.stderr_bpd << " (prior " << r.prior_bpd << ", diffusion " << r.diffusion_bpd
                << ", decoder " << r.decoder_bpd << "), entropy " << H << ", seed " << test::run_seed());
  CHECK(r.bpd > H - 5 * r.stderr_bpd);
  CHECK(r.bpd < H + r.prior_bpd + r.decoder_bpd + 5 * r.stderr_bpd);
  CHECK(r.decoder_bpd < 0.05);
}
