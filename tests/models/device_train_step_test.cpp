// models/train/device_train_step.h: the training step that stays on a GPU ([cuda]): the captured graph
// against the uncaptured step, bit for bit; the steady state (no sync, no cudaMalloc); that it
// trains; and the kernel of objective hybrid's VLB term against its cpu reference. On the cpu
// ([cpu]) only its refusals.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

#include "autograd/elementwise.h"
#include "autograd/tape.h"
#include "core/allocator.h"
#include "core/device.h"
#include "core/stream.h"
#include "models/diffusion/hybrid_loss.h"
#include "models/nn/unet.h"
#include "models/train/device_trainer.h"
#include "models/train/device_train_step.h"
#include "models/train/trainer.h"
#include "tests/test_util.h"

using namespace diffuse;

namespace {

// tiny at 8x8 with attention at 4x4, dropout on (the seed word reaches the dropout kernels too).
nn::UNetConfig small_config() {
  nn::UNetConfig c = nn::UNetConfig::preset("tiny");
  c.image_size = 8;
  c.attention_resolutions = {4};
  c.dropout = 0.1f;
  return c;
}

// Only the [cuda] tests call it.
[[maybe_unused]] int64_t mismatches(const Tensor& a, const Tensor& b) {
  if (!(a.shape() == b.shape())) return -1;
  const std::vector<float> x = a.to_vector(), y = b.to_vector();
  int64_t bad = 0;
  for (size_t i = 0; i < x.size(); ++i) bad += std::memcmp(&x[i], &y[i], sizeof(float)) != 0;
  return bad;
}

}  // namespace

TEST_CASE("the device training step refuses a model on the cpu or another objective", "[cpu][models]") {
  auto net = std::make_shared<nn::UNet>(small_config(), 1);
  train::DeviceTrainOptions o;
  CHECK_THROWS_WITH(train::DeviceTrainStep(net, o), Catch::Contains("one GPU"));
  nn::UNetConfig c = small_config();
  c.num_classes = 3;  // a class-conditional model is refused for its device only
  CHECK_THROWS_WITH(train::DeviceTrainStep(std::make_shared<nn::UNet>(c, 1), o), Catch::Contains("one GPU"));
  o.objective = train::Objective::vdm;  // the device step regresses eps, x0 or v, or trains hybrid
  CHECK_THROWS_WITH(train::DeviceTrainStep(net, o), Catch::Contains("objective"));
}

TEST_CASE("the learned-variance VLB term on the device agrees with the cpu reference, value and gradient",
          "[cuda][models]") {
#if defined(DIFFUSE_HAVE_CUDA)
  if (!cuda_available()) return;
  const Device gpu = Device::cuda(0);
  // T = 10 (DDPM's linear betas scaled), so that t = 0 (the decoder), t = 1 (beta_tilde clipped) and
  // the last step all come up; one sample per listed step, 6x5x3 elements each, odd so that a
  // block's threads do unequal work.
  const diffusion::DiscreteSchedule s = diffusion::DiscreteSchedule::linear(10);
  const std::vector<int> steps = {0, 1, 4, 9, 0, 7};
  const int64_t B = static_cast<int64_t>(steps.size());
  const Shape shape{B, 6, 5, 3};
  // x0 on the 256 data levels, both end bins included; x_t = alpha x0 + sigma eps; a prediction off
  // by 0.3 eps-units; raw variances in [-1.2, 1.2] (the network's output is not clamped).
  Tensor x0 = test::random_tensor(shape);
  float* x = x0.data<float>();
  for (int64_t j = 0; j < x0.numel(); ++j) x[j] = std::round((x[j] + 1.f) * 127.5f) / 127.5f - 1.f;
  x[0] = -1.f;
  x[x0.numel() - 1] = 1.f;
  const Tensor eps = test::random_normal(shape), n = test::random_normal(shape);
  Tensor xt = Tensor::empty(shape), pred = Tensor::empty(shape);
  const int64_t N = x0.numel() / B;
  for (int64_t b = 0; b < B; ++b) {
    const double ab = s.alphas_cumprod()[steps[b]];
    for (int64_t j = b * N; j < (b + 1) * N; ++j) {
      xt.data<float>()[j] = static_cast<float>(std::sqrt(ab) * x[j] + std::sqrt(1 - ab) * eps.data<float>()[j]);
      pred.data<float>()[j] = eps.data<float>()[j] + 0.3f * n.data<float>()[j];
    }
  }
  const Tensor raw = test::random_tensor(shape, -1.2f, 1.2f);
  const Tensor g = test::random_tensor({B}, 0.5f, 2.f);  // the incoming gradient of each sample's term

  ag::Var r_cpu(raw.clone(), true);
  ag::Var want = diffusion::learned_variance_vlb(s, steps, x0, xt, pred, r_cpu);
  ag::backward(ag::sum_all(ag::mul(want, ag::Var(g))));
  std::vector<float> tf(steps.begin(), steps.end());
  ag::Var r_gpu(raw.to(gpu), true);
  ag::Var got = diffusion::learned_variance_vlb(diffusion::vlb_constants(s, gpu), Tensor::from_vector(tf, {B}, gpu),
                                                x0.to(gpu), xt.to(gpu), pred.to(gpu), r_gpu);
  ag::backward(ag::sum_all(ag::mul(got, ag::Var(g.to(gpu)))));
  // The kernel follows the reference's double math with the same f32 roundings of its inputs, the
  // prediction's x0 and the means; what differs is the order of each sample's sum (a tree of 256
  // partial sums against one loop) and, on a GPU, the last bits of its double exp, log and erfc:
  // ~1e-15 relative before the f32 rounding of the outputs. So both within 2 f32 ulps (2.4e-7
  // relative) of the largest value; a wrong step, branch or constant moves them by percents.
  const std::vector<float> wv = want.value().to_vector(), gv = got.value().to(Device::cpu()).to_vector();
  REQUIRE(gv.size() == wv.size());
  double scale = 0;
  for (float v : wv) scale = std::max(scale, std::fabs(static_cast<double>(v)));
  for (size_t b = 0; b < wv.size(); ++b) {
    INFO("sample " << b << " step " << steps[b] << ": " << gv[b] << " vs " << wv[b]);
    CHECK(std::fabs(gv[b] - wv[b]) <= 2.4e-7 * scale);
  }
  const std::vector<float> wg = r_cpu.grad().to_vector(), gg = r_gpu.grad().to(Device::cpu()).to_vector();
  REQUIRE(gg.size() == wg.size());
  double gscale = 0, worst = 0;
  for (float v : wg) gscale = std::max(gscale, std::fabs(static_cast<double>(v)));
  for (size_t j = 0; j < wg.size(); ++j) worst = std::max(worst, std::fabs(static_cast<double>(gg[j]) - wg[j]));
  INFO("largest gradient difference " << worst << " of " << gscale);
  CHECK(gscale > 0);
  CHECK(worst <= 2.4e-7 * gscale);
#endif
}

TEST_CASE("the captured training step replays the uncaptured one bit for bit", "[cuda][models]") {
#if defined(DIFFUSE_HAVE_CUDA)
  if (!cuda_available()) return;
  const Device gpu = Device::cuda(0);
  const uint64_t init = test::next_seed();
  for (const char* objective : {"eps", "v"}) {
    INFO("objective " << objective);
    auto a = std::make_shared<nn::UNet>(small_config(), init);
    auto b = std::make_shared<nn::UNet>(small_config(), init);
    a->to(gpu);
    b->to(gpu);
    train::DeviceTrainOptions o;
    o.seed = test::next_seed();
    o.objective = parse_enum<train::Objective>(objective, "objective");
    o.loss_weight = train::LossWeight::min_snr;
    o.adamw.lr = 1e-3f;
    o.adamw.warmup_steps = 3;
    o.adamw.weight_decay = 0.01f;
    o.adamw.decay_vectors = false;
    o.graph = true;
    train::DeviceTrainStep graph(a, o);
    o.graph = false;
    train::DeviceTrainStep eager(b, o);
    std::vector<Tensor> data;
    for (int i = 0; i < 3; ++i) data.push_back(test::random_tensor({5, 8, 8, 1}).to(gpu));
    // Same kernels on the same inputs, all deterministic (fixed-order reductions, no atomics,
    // cuDNN's algorithm chosen once per shape and kept, the same cuBLASLt plans): equal bits. A
    // difference means the graph reads something the uncaptured step recomputes, e.g. a frozen
    // argument where a staged device value belongs.
    for (int s = 0; s < 5; ++s) {
      INFO("step " << s);
      graph.step(data[s % 3]);
      eager.step(data[s % 3]);
      CHECK(graph.captured());
      CHECK(graph.loss() == eager.loss());
      CHECK(graph.grad_norm() == eager.grad_norm());
    }
    CHECK(mismatches(graph.weights(), eager.weights()) == 0);
    CHECK(mismatches(graph.ema(), eager.ema()) == 0);
    CHECK(mismatches(graph.adam_m(), eager.adam_m()) == 0);
    CHECK(mismatches(graph.adam_v(), eager.adam_v()) == 0);
    // Updates happened (the two are not merely both unchanged): the EMA lags the weights.
    CHECK(mismatches(graph.weights(), graph.ema()) > 0);
  }
#endif
}

TEST_CASE("the captured step reads each step's labels and low-resolution image, bit for bit as the uncaptured one",
          "[cuda][models]") {
#if defined(DIFFUSE_HAVE_CUDA)
  if (!cuda_available()) return;
  const Device gpu = Device::cuda(0);
  const int64_t B = 5;
  // A class-conditional model (label_emb), a cross-attention one (labels become class-name tokens)
  // and a super-resolution one (an upsampled 4x4 image and its augmentation level).
  nn::UNetConfig cond = small_config();
  cond.num_classes = 3;
  nn::UNetConfig xattn = small_config();
  xattn.attention_resolutions = {};
  xattn.num_classes = 3;
  xattn.context_dim = 8;
  xattn.context_resolutions = {4};
  xattn.context_tokens = 2;
  xattn.class_names = {"red shoe", "blue", "red coat"};
  xattn.vocabulary = nn::context_vocabulary(xattn.class_names);
  nn::UNetConfig sr = small_config();
  sr.low_res_channels = 1;
  sr.low_res_size = 4;
  const uint64_t init = test::next_seed();
  for (const auto& [what, c] : {std::pair<const char*, nn::UNetConfig>{"class-conditional", cond},
                                {"cross-attention", xattn}, {"super-resolution", sr}}) {
    INFO(what);
    auto a = std::make_shared<nn::UNet>(c, init);
    auto b = std::make_shared<nn::UNet>(c, init);
    a->to(gpu);
    b->to(gpu);
    train::DeviceTrainOptions o;
    o.seed = test::next_seed();
    o.objective = train::Objective::v;
    o.adamw.lr = 1e-3f;
    o.adamw.warmup_steps = 0;
    o.graph = true;
    train::DeviceTrainStep graph(a, o);
    o.graph = false;
    train::DeviceTrainStep eager(b, o);
    // Other labels (the null label 3 among them) and another low-resolution image at every step:
    // a graph that froze the first step's would part from the uncaptured step at the second.
    const Tensor x = test::random_tensor({B, 8, 8, 1}).to(gpu);
    // Step s's conditioning; step `other_from` on with other labels, all 1, or other images.
    std::vector<Tensor> images;
    for (int s = 0; s < 5; ++s) images.push_back(test::random_tensor({B, 4, 4, 1}));
    auto conditioning = [&](int s, bool other) {
      std::pair<Tensor, nn::LowRes> in;
      if (c.num_classes > 0) {
        std::vector<int64_t> l(static_cast<size_t>(B));
        for (int64_t i = 0; i < B; ++i) l[static_cast<size_t>(i)] = other ? 1 : (i + s) % 4;
        in.first = Tensor::from_vector_i64(l, {B});
      } else {
        std::vector<float> levels(static_cast<size_t>(B));
        for (int64_t i = 0; i < B; ++i) levels[static_cast<size_t>(i)] = static_cast<float>(100 * (s + i));
        in.second = nn::LowRes{ag::Var(images[other ? 4 : s]), Tensor::from_vector(levels, {B})};
      }
      return in;
    };
    uint64_t syncs = 0;
    std::vector<double> norms;
    for (int s = 0; s < 4; ++s) {
      INFO("step " << s);
      const auto [labels, low] = conditioning(s, false);
      graph.step(x, labels, low);
      eager.step(x, labels, low);
      if (s >= 1) CHECK(host_syncs() == syncs);  // from the second step: no wait for the device
      CHECK(graph.captured());
      CHECK(graph.loss() == eager.loss());
      CHECK(graph.grad_norm() == eager.grad_norm());
      norms.push_back(graph.grad_norm());
      syncs = host_syncs();
    }
    CHECK(mismatches(graph.weights(), eager.weights()) == 0);
    CHECK(mismatches(graph.ema(), eager.ema()) == 0);
    CHECK(mismatches(graph.adam_m(), eager.adam_m()) == 0);
    // The conditioning reaches the step: the same first step, then other labels (or another
    // low-resolution image) from the second on, against the same conditioning throughout; after the
    // third step the weights differ. Not sooner, for labels: the residual branches' output
    // convolutions start at zero, so the first forward is the same for any label; the second
    // forward still is (the label's path into a branch, its embedding projection, had no gradient
    // in the first step and is still zero), and although the second gradient of that projection
    // depends on the labels, a parameter's first Adam update is lr * g / |g| up to eps, the same
    // for any g of the same sign. The third forward reads the labels, and so does every update.
    // (The gradient norm is not compared: the conditioning's share of it after one or two steps
    // can sit below its f32 rounding.)
    auto fresh_same = std::make_shared<nn::UNet>(c, init), fresh_other = std::make_shared<nn::UNet>(c, init);
    fresh_same->to(gpu);
    fresh_other->to(gpu);
    train::DeviceTrainStep same(fresh_same, o), other(fresh_other, o);
    for (int s = 0; s < 3; ++s) {
      const auto [labels, low] = conditioning(s, false);
      same.step(x, labels, low);
      const auto [other_labels, other_low] = conditioning(s, s >= 1);
      other.step(x, other_labels, other_low);
    }
    CHECK(same.grad_norm() == norms[2]);
    CHECK(mismatches(other.weights(), same.weights()) > 0);
  }
  // What the step cannot take is refused on the host, before anything runs.
  auto plain = std::make_shared<nn::UNet>(small_config(), init);
  plain->to(gpu);
  train::DeviceTrainStep step(plain, train::DeviceTrainOptions{});
  const Tensor x = test::random_tensor({B, 8, 8, 1});
  CHECK_THROWS_WITH(step.step(x, Tensor::from_vector_i64(std::vector<int64_t>(B, 0), {B})),
                    Catch::Contains("unconditional"));
  CHECK_THROWS_WITH(step.step(x, Tensor(), nn::LowRes{ag::Var(test::random_tensor({B, 4, 4, 1})), Tensor::zeros({B})}),
                    Catch::Contains("without super-resolution"));
  auto conditional = std::make_shared<nn::UNet>(cond, init);
  conditional->to(gpu);
  train::DeviceTrainStep cstep(conditional, train::DeviceTrainOptions{});
  CHECK_THROWS_WITH(cstep.step(x, Tensor::from_vector_i64(std::vector<int64_t>(B, 4), {B})),
                    Catch::Contains("label 4 outside [0, 3]"));
#endif
}

TEST_CASE("the device training step has a steady state without syncs or allocations", "[cuda][models]") {
#if defined(DIFFUSE_HAVE_CUDA)
  if (!cuda_available()) return;
  const Device gpu = Device::cuda(0);
  for (bool graph : {true, false}) {
    INFO("graph " << graph);
    auto net = std::make_shared<nn::UNet>(small_config(), test::next_seed());
    net->to(gpu);
    train::DeviceTrainOptions o;
    o.graph = graph;
    o.seed = test::next_seed();
    train::DeviceTrainStep step(net, o);
    const Tensor x = test::random_tensor({4, 8, 8, 1}).to(gpu);
    const Tensor x_host = test::random_tensor({4, 8, 8, 1});
    step.step(x);  // the first step: algorithm searches, plans, the capture
    step.synchronize();
    const uint64_t syncs = host_syncs();
    const MemoryStats m0 = cuda_memory_stats(gpu.index);
    for (int i = 0; i < 4; ++i) step.step(i % 2 ? x : x_host);  // from the device and from the host
    const MemoryStats m1 = cuda_memory_stats(gpu.index);
    CHECK(host_syncs() == syncs);
    CHECK(m1.system_allocs == m0.system_allocs);
    if (graph) CHECK(m1.cache_hits == m0.cache_hits);  // a replay allocates nothing at all
    CHECK(std::isfinite(step.loss()));
  }
#endif
}

TEST_CASE("the device training step learns a fixed batch", "[cuda][models]") {
#if defined(DIFFUSE_HAVE_CUDA)
  if (!cuda_available()) return;
  // A weak end-to-end check that gradients, clipping and AdamW point downhill: on one batch the
  // mean loss of the last 10 of 30 steps is below 0.8 times that of the first 10. One noise level,
  // nearly: over T = 1000 the timesteps of a batch of 8 spread its loss so much that 10-step means
  // varied by ~10%, and a seed failed the margin after 60 steps (0.853, seed 2706845417568123016,
  // seen on the simulated device); with two close levels only the noise draws vary, and the last
  // means are ~0.2 of the first ones after 30 steps.
  const Device gpu = Device::cuda(0);
  nn::UNetConfig c = small_config();
  c.dropout = 0;
  auto net = std::make_shared<nn::UNet>(c, test::next_seed());
  net->to(gpu);
  train::DeviceTrainOptions o;
  o.seed = test::next_seed();
  o.adamw.lr = 2e-3f;
  o.adamw.warmup_steps = 5;
  o.objective = train::Objective::x0;  // the clean batch itself: a fixed target the net can memorise
  o.timesteps = 2;
  o.alphas_cumprod = {0.9, 0.89};  // sigma_t ~ 0.32 at both steps
  train::DeviceTrainStep step(net, o);
  const Tensor x = test::random_tensor({8, 8, 8, 1}).to(gpu);
  double first = 0, last = 0;
  for (int s = 0; s < 30; ++s) {
    step.step(x);
    if (s < 10) first += step.loss();
    if (s >= 20) last += step.loss();
  }
  INFO("first 10: " << first / 10 << ", last 10: " << last / 10);
  CHECK(last < 0.8 * first);
#endif
}

TEST_CASE("the device trainer reads each step's loss late, without waiting in the steady state", "[cuda][models]") {
#if defined(DIFFUSE_HAVE_CUDA)
  if (!cuda_available()) return;
  const Device gpu = Device::cuda(0);
  const uint64_t init = test::next_seed();
  train::TrainConfig cfg;
  cfg.device = "cuda";
  cfg.seed = test::next_seed();
  cfg.warmup = 2;
  auto a = std::make_shared<nn::UNet>(small_config(), init);
  auto b = std::make_shared<nn::UNet>(small_config(), init);
  a->to(gpu);
  b->to(gpu);
  train::DeviceTrainer lagged(a, cfg);
  // The reference: the same step, read synchronously after each step.
  train::DeviceTrainOptions o;
  o.seed = cfg.seed;
  o.adamw.lr = static_cast<float>(cfg.lr);
  o.adamw.warmup_steps = cfg.warmup;
  o.adamw.weight_decay = static_cast<float>(cfg.weight_decay);
  o.ema_decay = static_cast<float>(cfg.ema_decay);
  o.grad_clip = cfg.grad_clip;
  train::DeviceTrainStep eager(b, o);
  const Tensor x = test::random_tensor({4, 8, 8, 1});
  std::vector<float> ref_loss;
  std::vector<double> ref_norm;
  const int steps = train::DeviceTrainStep::kResultSlots;  // 1 + (slots - 1) never fills the slots
  for (int s = 0; s < steps; ++s) {
    eager.step(x);
    ref_loss.push_back(eager.loss());
    ref_norm.push_back(eager.grad_norm());
  }
  std::vector<train::DeviceTrainer::Result> got;
  lagged.step(x);  // the first step: searches, plans, the capture
  while (auto r = lagged.wait()) got.push_back(*r);
  const uint64_t syncs = host_syncs();
  for (int s = 1; s < steps; ++s) {
    lagged.step(x);
    while (auto r = lagged.poll()) got.push_back(*r);
  }
  // Fewer steps than slots: nothing was waited for, whatever the device's pace.
  CHECK(host_syncs() == syncs);
  while (auto r = lagged.wait()) got.push_back(*r);
  REQUIRE(got.size() == static_cast<size_t>(steps));
  for (size_t i = 0; i < got.size(); ++i) {
    INFO("step " << i + 1);
    CHECK(got[i].step == static_cast<int64_t>(i) + 1);
    CHECK(got[i].loss == static_cast<double>(ref_loss[i]));
    CHECK(got[i].grad_norm == ref_norm[i]);
    CHECK(got[i].applied);
  }
#endif
}

TEST_CASE("the device step is ordered with the caller's stream both ways", "[cuda][models]") {
#if defined(DIFFUSE_HAVE_CUDA)
  if (!cuda_available()) return;
  const Device gpu = Device::cuda(0);
  auto net = std::make_shared<nn::UNet>(small_config(), test::next_seed());
  net->to(gpu);
  train::DeviceTrainOptions o;
  o.seed = test::next_seed();
  train::DeviceTrainStep step(net, o);
  const Tensor host = test::random_tensor({4, 8, 8, 1});
  for (int s = 0; s < 4; ++s) {
    // A batch written on the caller's stream (legacy) just before the step, and freed right after:
    // the step reads it after the write, and the caller's stream reuses its block after the read.
    {
      Tensor x = Tensor::empty(host.shape(), DType::f32, gpu);
      x.fill_(1e30);
      x.copy_(host);
      step.step(x);
    }
    Tensor scribble = Tensor::full(host.shape(), 1e30, DType::f32, gpu);  // likely x's block
    // The weights, read on the caller's stream without a wait: the step's, after its update.
    const Tensor w_caller = step.weights().to(Device::cpu());
    step.synchronize();
    CHECK(mismatches(w_caller, step.weights().to(Device::cpu())) == 0);
    CHECK(std::isfinite(step.loss()));
    CHECK(std::isfinite(step.grad_norm()));
  }
#endif
}
