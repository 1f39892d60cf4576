// models/train/device_sampling.h: what `diffuse sample` sends to the device loop, and that the loop
// gives the host-driven sampler's images. On the cpu ([cpu]) the loop runs the fused step's
// reference code and must give sample()'s bits with the same UNet (ddpm, ddim; vdm within a few
// ulps: the loop divides by alpha(0) where sample() multiplies by its inverse). On a GPU ([cuda]):
// graph on against graph off, bit for bit.
#include <catch2/catch.hpp>

#include <cstring>
#include <memory>
#include <vector>

#include "autograd/tape.h"
#include "core/device.h"
#include "models/train/device_sampling.h"
#include "models/train/trainer.h"
#include "tests/test_util.h"

using namespace diffuse;
using diffusion::SamplerKind;

namespace {

int64_t mismatches(const Tensor& a, const Tensor& b) {
  if (!(a.shape() == b.shape())) return -1;
  const std::vector<float> x = a.to_vector(), y = b.to_vector();
  int64_t bad = 0;
  for (size_t i = 0; i < x.size(); ++i) bad += std::memcmp(&x[i], &y[i], sizeof(float)) != 0;
  return bad;
}

train::TrainConfig small_config(const std::string& objective) {
  train::TrainConfig c;
  c.objective = parse_enum<train::Objective>(objective, "objective");
  c.model = {{"base_channels", 8}, {"channel_mult", {1, 2}}, {"num_res_blocks", 1}, {"attention_resolutions", {4}},
             {"groups", 4}};
  return c;
}

diffusion::SamplerOptions options(int batch, bool learned) {
  diffusion::SamplerOptions o;
  o.shape = Shape{batch, 8, 8, 1};
  o.steps = 4;
  o.clip_x0 = true;
  o.seed = test::next_seed();
  if (learned) o.variance = diffusion::VarianceKind::learned;
  return o;
}

}  // namespace

TEST_CASE("sample's device loop takes ddpm, ddim and vdm on unconditional models", "[cpu][models]") {
  const train::TrainConfig eps = small_config("eps"), hybrid = small_config("hybrid");
  const nn::UNetConfig u = eps.unet_config(8, 1, 0), uh = hybrid.unet_config(8, 1, 0);
  const diffusion::SamplerOptions o = options(2, false), ol = options(2, true);
  for (SamplerKind k : {SamplerKind::ddpm, SamplerKind::ddim, SamplerKind::vdm}) CHECK(train::device_loop_supports(k, u, eps, o));
  for (SamplerKind k : {SamplerKind::dpmpp_2m, SamplerKind::euler, SamplerKind::heun})
    CHECK_FALSE(train::device_loop_supports(k, u, eps, o));
  // A learned variance: ddpm uses all 2C channels; the others would need the first C.
  CHECK(train::device_loop_supports(SamplerKind::ddpm, uh, hybrid, ol));
  CHECK_FALSE(train::device_loop_supports(SamplerKind::ddim, uh, hybrid, o));
  // Labels and guidance need the host between steps.
  nn::UNetConfig uc = u;
  uc.num_classes = 10;
  CHECK_FALSE(train::device_loop_supports(SamplerKind::ddim, uc, eps, o));
  diffusion::SamplerOptions g = o;
  g.guidance.cfg_scale = 2;
  CHECK_FALSE(train::device_loop_supports(SamplerKind::ddim, u, eps, g));
}

TEST_CASE("sample's device loop on the cpu gives the host-driven sampler's images", "[cpu][models]") {
  for (const char* objective : {"eps", "hybrid"}) {
    const train::TrainConfig cfg = small_config(objective);
    const bool learned = train::learned_variance(cfg);
    auto unet = std::make_shared<nn::UNet>(cfg.unet_config(8, 1, 0), test::next_seed());
    unet->eval();
    const diffusion::DiscreteSchedule sched = train::make_schedule(cfg);
    train::DeviceSampling loop(unet, cfg, Device::cpu(), true);  // graph: ignored on the cpu
    ag::NoGrad ng;
    for (SamplerKind k : {SamplerKind::ddpm, SamplerKind::ddim, SamplerKind::vdm}) {
      const bool lv = learned && k == SamplerKind::ddpm;
      if (learned && !lv) continue;
      INFO(objective << " sampler " << static_cast<int>(k));
      const diffusion::Denoiser f = train::make_denoiser(unet, cfg.timesteps, Device::cpu(), lv);
      // Two seeds through one loop (and a callback, called once), then another batch size.
      for (int batch : {3, 3, 2}) {
        diffusion::SamplerOptions o = options(batch, lv);
        int calls = 0;
        o.callback = [&](int, int, const Tensor&, const Tensor&) { ++calls; };
        REQUIRE(train::device_loop_supports(k, unet->config(), cfg, o));
        const Tensor got = loop.sample(k, sched, o);
        CHECK(calls == 1);
        o.callback = nullptr;
        const Tensor want = diffusion::sample(k, sched, f, o);
        if (k == SamplerKind::vdm) {
          const test::Diff d = test::compare(got, want, 1.0);
          CHECK(d.nonfinite == 0);
          CHECK(d.max_abs < 1e-5);
        } else {
          CHECK(mismatches(got, want) == 0);
        }
      }
    }
  }
}

TEST_CASE("sample's device loop on a GPU: graph on == graph off", "[cuda][models]") {
  if (!cuda_available()) return;
  const train::TrainConfig cfg = small_config("eps");
  auto unet = std::make_shared<nn::UNet>(cfg.unet_config(8, 1, 0), test::next_seed());
  unet->to(Device::cuda(0));
  unet->eval();
  const diffusion::DiscreteSchedule sched = train::make_schedule(cfg);
  train::DeviceSampling on(unet, cfg, Device::cuda(0), true), off(unet, cfg, Device::cuda(0), false);
  ag::NoGrad ng;
  for (SamplerKind k : {SamplerKind::ddpm, SamplerKind::ddim}) {
    const diffusion::SamplerOptions o = options(3, false);
    for (int rep = 0; rep < 2; ++rep) CHECK(mismatches(on.sample(k, sched, o), off.sample(k, sched, o)) == 0);
  }
}
