// models/diffusion/sampling_loop.h: the sampling loop that stays on a device. On the cpu
// ([cpu]) it runs the fused step's reference loop and must give sample()'s bits: that checks the
// plan (grid_plan), the tables, the per-step Philox streams and the seed word. On a GPU ([cuda])
// with a UNet: the captured graph against the uncaptured loop, the steady state, and the cpu.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "core/allocator.h"
#include "core/device.h"
#include "core/stream.h"
#include "models/diffusion/sampling_loop.h"
#include "models/diffusion/sampler.h"
#include "models/diffusion/schedule.h"
#include "models/nn/unet.h"
#include "models/train/device_sampling.h"
#include "tests/test_util.h"

using namespace diffuse;
using namespace diffuse::diffusion;

namespace {

// Elements whose bits differ (f32).
int64_t mismatches(const Tensor& a, const Tensor& b) {
  if (!(a.shape() == b.shape())) return -1;
  const std::vector<float> x = a.to_vector(), y = b.to_vector();
  int64_t bad = 0;
  for (size_t i = 0; i < x.size(); ++i) bad += std::memcmp(&x[i], &y[i], sizeof(float)) != 0;
  return bad;
}

// A denoiser with some structure, the same on both sides: out = 0.6 z - 0.2 t (per sample).
Tensor affine_denoiser(const Tensor& z, const Tensor& t) {
  const int64_t B = z.size(0), N = z.numel() / B;
  Tensor out = Tensor::empty(z.shape());
  const float* zp = z.data<float>();
  const float* tp = t.data<float>();
  float* o = out.data<float>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = b * N; i < (b + 1) * N; ++i) o[i] = 0.6f * zp[i] - 0.2f * tp[b];
  return out;
}

}  // namespace

TEST_CASE("the device loop on the cpu gives sample()'s bits", "[cpu][diffusion]") {
  DiscreteSchedule lin = DiscreteSchedule::linear(1000), cos = DiscreteSchedule::cosine(1000);
  LinearLogSNR vdm;
  struct Run {
    const char* name;
    SamplerKind kind;
    const Schedule* sch;
    Prediction pred;
    VarianceKind var;
    double eta;
    bool clip;
  };
  const Run runs[] = {
      {"ddpm beta_tilde", SamplerKind::ddpm, &lin, Prediction::eps, VarianceKind::beta_tilde, 0, true},
      {"ddpm beta, x0", SamplerKind::ddpm, &cos, Prediction::x0, VarianceKind::beta, 0, false},
      {"ddim eta 0.7, v", SamplerKind::ddim, &lin, Prediction::v, VarianceKind::beta_tilde, 0.7, true},
      {"vdm", SamplerKind::vdm, &vdm, Prediction::eps, VarianceKind::beta_tilde, 0, false},
  };
  for (const Run& r : runs) {
    INFO(r.name);
    SamplerOptions o;
    o.shape = Shape{3, 4, 4, 2};
    o.seed = test::next_seed();
    o.steps = 7;
    o.prediction = r.pred;
    o.variance = r.var;
    o.eta = r.eta;
    o.clip_x0 = r.clip;
    const Denoiser f = [](const Tensor& z, const Tensor& t, const Tensor&) { return affine_denoiser(z, t); };
    SamplingLoopOptions d;
    d.kind = r.kind;
    d.sampler = o;
    d.graph = false;
    d.device = Device::cpu();
    SamplingLoop loop(*r.sch, affine_denoiser, d);
    CHECK(loop.steps() == 7);
    // Twice, with two seeds: the word, not a new plan, changes the noise.
    for (int rep = 0; rep < 2; ++rep) {
      const uint64_t seed = rep == 0 ? o.seed : test::next_seed();
      SamplerOptions os = o;
      os.seed = seed;
      const Tensor want = sample(r.kind, *r.sch, f, os);
      const Tensor got = loop.run(seed).clone();
      if (r.sch == &vdm) {
        // alpha(0) < 1: the loop divides by alpha(0) where finish() multiplies by its inverse,
        // one rounding apart (|x| <~ 10 here, so 1e-5 absolute is a few ulps).
        const test::Diff diff = test::compare(got, want, 1.0);
        CHECK(diff.nonfinite == 0);
        CHECK(diff.max_abs < 1e-5);
      } else {
        CHECK(mismatches(got, want) == 0);
      }
    }
  }
}

TEST_CASE("the device loop refuses what needs the host between steps", "[cpu][diffusion]") {
  DiscreteSchedule lin = DiscreteSchedule::linear(100);
  SamplingLoopOptions d;
  d.sampler.shape = Shape{2, 4, 4, 1};
  d.device = Device::cpu();
  d.graph = true;
  CHECK_THROWS_WITH(SamplingLoop(lin, affine_denoiser, d), Catch::Contains("graphs need a GPU"));
  d.graph = false;
  d.sampler.guidance.cfg_scale = 2;
  CHECK_THROWS_WITH(SamplingLoop(lin, affine_denoiser, d), Catch::Contains("guidance"));
  d.sampler.guidance.cfg_scale = 0;
  d.kind = SamplerKind::heun;
  CHECK_THROWS_WITH(SamplingLoop(lin, affine_denoiser, d), Catch::Contains("grid_plan"));
}

namespace {

// A small UNet with attention and every layer kind the presets use, on the cpu, with its
// zero-initialised layers (conv2, proj, out_conv) drawn at random: a fresh UNet outputs exactly 0.
// Only the [cuda] tests call it.
[[maybe_unused]] std::shared_ptr<nn::UNet> small_unet(uint64_t seed) {
  nn::UNetConfig c = nn::UNetConfig::preset("tiny");
  c.image_size = 8;
  c.attention_resolutions = {4};
  auto net = std::make_shared<nn::UNet>(c, seed);
  for (auto& [name, p] : net->named_parameters()) {
    const std::vector<float> v = p.value().to_vector();
    bool zero = true;
    for (float x : v) zero = zero && x == 0.f;
    if (zero) p.value().copy_(Tensor::rand(p.shape(), seed, nn::name_hash(name), -0.1f, 0.1f));
  }
  return net;
}

}  // namespace

TEST_CASE("the captured sampling loop replays the uncaptured one, with no allocation and no sync", "[cuda][diffusion]") {
#if defined(DIFFUSE_HAVE_CUDA)
  if (!cuda_available()) return;
  const Device gpu = Device::cuda(0);
  auto unet = small_unet(test::next_seed());
  unet->to(gpu);
  unet->eval();
  DiscreteSchedule lin = DiscreteSchedule::linear(1000);
  for (bool bf16 : {false, true}) {
    INFO("bf16 " << bf16);
    SamplingLoopOptions d;
    d.kind = SamplerKind::ddpm;  // ancestral: the step noise is drawn in the kernel every step
    d.sampler.shape = Shape{3, 8, 8, 1};
    d.sampler.steps = 6;
    d.sampler.clip_x0 = true;
    d.sampler.seed = 11;
    d.time_of = train::unet_time_of(1000);
    d.device = gpu;
    d.graph = false;
    SamplingLoop eager(lin, train::unet_device_denoiser(unet, bf16), d);
    d.graph = true;
    SamplingLoop graph(lin, train::unet_device_denoiser(unet, bf16), d);
    const uint64_t s1 = test::next_seed(), s2 = test::next_seed();
    graph.run(s1);  // uncaptured, then captured
    CHECK(graph.captured());
    // Same kernels, same inputs, deterministic kernels (no atomics; cuDNN's algorithm is chosen
    // once per shape and kept): the replay must give the uncaptured loop's bits.
    for (uint64_t s : {s1, s2, s1}) {
      eager.run(s);
      graph.run(s);
      CHECK(mismatches(graph.to_host(), eager.to_host()) == 0);
    }
    graph.run(s2);
    const Tensor a = graph.to_host();
    graph.run(s1);
    CHECK(mismatches(graph.to_host(), a) > 0);  // another seed, other noise

    // Steady state: no sync and no cudaMalloc; the graph allocates nothing at all.
    graph.synchronize();
    eager.synchronize();
    const uint64_t syncs = host_syncs();
    const MemoryStats m0 = cuda_memory_stats(gpu.index);
    for (int i = 0; i < 3; ++i) graph.run(test::next_seed());
    const MemoryStats m1 = cuda_memory_stats(gpu.index);
    CHECK(host_syncs() == syncs);
    CHECK(m1.system_allocs == m0.system_allocs);
    CHECK(m1.cache_hits == m0.cache_hits);
    for (int i = 0; i < 3; ++i) eager.run(test::next_seed());
    CHECK(host_syncs() == syncs);
    CHECK(cuda_memory_stats(gpu.index).system_allocs == m0.system_allocs);
  }
#endif
}

TEST_CASE("the device loop on a GPU samples what the cpu samples", "[cuda][diffusion]") {
#if defined(DIFFUSE_HAVE_CUDA)
  if (!cuda_available()) return;
  // f32 on both sides (no autocast); DDIM eta = 0 over 5 steps from the same z_1. The GPU's
  // convolutions and products may round differently (cuDNN may pick TF32 tensor-core algorithms
  // for f32, ~1e-3 relative per product), and 5 steps carry that through: 2e-2 absolute on
  // samples clipped to [-1, 1] is far above that and far below a wrong step (O(1)).
  const Device gpu = Device::cuda(0);
  const uint64_t init = test::next_seed();
  auto cpu_net = small_unet(init);
  auto gpu_net = small_unet(init);
  gpu_net->to(gpu);
  cpu_net->eval();
  gpu_net->eval();
  DiscreteSchedule lin = DiscreteSchedule::linear(1000);
  SamplingLoopOptions d;
  d.kind = SamplerKind::ddim;
  d.sampler.shape = Shape{2, 8, 8, 1};
  d.sampler.steps = 5;
  d.sampler.clip_x0 = true;
  d.time_of = train::unet_time_of(1000);
  d.device = gpu;
  SamplingLoop loop(lin, train::unet_device_denoiser(gpu_net, false), d);
  const uint64_t seed = test::next_seed();
  loop.run(seed);
  SamplerOptions o = d.sampler;
  o.seed = seed;
  const Denoiser f = [&](const Tensor& z, const Tensor& t, const Tensor&) {
    std::vector<float> tv = t.to_vector();
    for (float& v : tv) v = v * 1000.f - 1.f;
    ag::NoGrad ng;
    return cpu_net->forward(ag::Var(z), Tensor::from_vector(tv, {z.size(0)})).value();
  };
  const test::Diff diff = test::compare(loop.to_host(), sample(SamplerKind::ddim, lin, f, o), 1.0);
  INFO(diff.str());
  CHECK(diff.nonfinite == 0);
  CHECK(diff.max_abs < 2e-2);
#endif
}

TEST_CASE("the device loop is ordered with the caller's stream both ways", "[cuda][diffusion]") {
#if defined(DIFFUSE_HAVE_CUDA)
  if (!cuda_available()) return;
  // run() queues the samples on the sampler's own stream and returns at once. The result it hands
  // back, copied on the caller's (legacy) stream with no wait in between, must be the finished
  // samples: the caller's stream waits for the sampler's by an event. And the next run, which
  // overwrites that result, must wait for the caller's copy. Several UNet evaluations lie between
  // the start of a run and its result, so without the events the copies would read a partial result.
  const Device gpu = Device::cuda(0);
  auto unet = small_unet(test::next_seed());
  unet->to(gpu);
  unet->eval();
  DiscreteSchedule lin = DiscreteSchedule::linear(1000);
  SamplingLoopOptions d;
  d.kind = SamplerKind::ddim;
  d.sampler.shape = Shape{4, 8, 8, 1};
  d.sampler.steps = 8;
  d.sampler.clip_x0 = true;
  d.time_of = train::unet_time_of(1000);
  d.device = gpu;
  for (bool graph : {false, true}) {
    INFO("graph " << graph);
    d.graph = graph;
    SamplingLoop loop(lin, train::unet_device_denoiser(unet, false), d);
    const uint64_t s1 = test::next_seed(), s2 = test::next_seed();
    const Tensor a = loop.run(s1).clone();  // on the caller's stream, right after the run is queued
    const Tensor b = loop.run(s2).clone();  // this run may overwrite the result only after a's copy
    loop.synchronize();
    diffuse::synchronize(gpu);
    loop.run(s1);
    CHECK(mismatches(a.to(Device::cpu()), loop.to_host()) == 0);
    loop.run(s2);
    CHECK(mismatches(b.to(Device::cpu()), loop.to_host()) == 0);
  }
#endif
}
