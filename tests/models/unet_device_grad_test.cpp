// A small UNet in f32 on the device under test against the same model in f64 on the cpu: the
// loss and every parameter's gradient, from the same weights, inputs, noise, timesteps, labels
// and dropout masks (Philox, the same on every device). Registered for the GPU ([cuda]) and for
// the cpu's f32 fast path ([cpu]), so the comparison itself runs in every CI.
//
// Tolerance. Each gradient is the end of a chain of ~30 f32 ops (convolutions of <= 1152-term
// sums, GroupNorm statistics, softmax, skip concatenations); run in f32 against f64 it keeps about
// 6 significant digits: the cpu's f32 path measures at most 3e-6 of |want| + max|want| over every
// element of every gradient. A GPU computes in f32 too (cuBLASLt and cuDNN without TF32, f32
// statistics), with other summation orders, so the bound is rtol 1e-4 with a floor of 1e-4
// max|want| per parameter (an element that cancels to near zero is held to its tensor's scale),
// 30x the cpu's own error. The loss, a mean of squares, to 1e-5 relative.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <map>
#include <numbers>
#include <string>
#include <utility>
#include <vector>

#include "autograd/elementwise.h"
#include "autograd/tape.h"
#include "core/device.h"
#include "core/tensor.h"
#include "models/nn/unet.h"
#include "tests/test_util.h"

using namespace diffuse;

namespace {

// 12x12 images down to 6x6 (and 3x3): odd spatial sizes at the bottom, three input channels.
// `ddpm`: attention at 3x3 (9 tokens), 2 heads of 8 channels (the materialised attention on a
// GPU), batch 3. `adm`: scale-shift norm, up/down sampling inside ResBlocks, learned sigma, class
// labels and dropout, attention at 6x6 with heads of 32 channels (the flash kernels), batch 1.
nn::UNetConfig config(bool adm) {
  nn::UNetConfig c;
  c.in_channels = 3;
  c.out_channels = 3;
  c.image_size = 12;
  c.num_res_blocks = 1;
  if (adm) {
    c.base_channels = 32;
    c.channel_mult = {1, 2};
    c.attention_resolutions = {6};
    c.head_channels = 32;
    c.groups = 8;
    c.scale_shift_norm = true;
    c.resblock_updown = true;
    c.learn_sigma = true;
    c.num_classes = 3;
    c.dropout = 0.1f;
  } else {
    c.base_channels = 8;
    c.channel_mult = {1, 2, 2};
    c.attention_resolutions = {3};
    c.num_heads = 2;
    c.groups = 4;
    c.init = nn::InitScheme::ddpm;
  }
  return c;
}

struct Batch {
  Tensor z, target, t, labels;  // cpu f32 (labels i64 or undefined)
};

struct Result {
  double loss = 0;
  std::vector<std::pair<std::string, Tensor>> grads;  // cpu f64, in named_parameters() order
};

// One forward and backward of the model with weights `state`, in `dtype` on `d`: an
// eps-prediction regression, mse(UNet(z, t, labels), target) over every output channel (the
// learned-variance ones too, so every parameter has a gradient).
Result loss_and_grads(const nn::UNetConfig& c, const std::map<std::string, Tensor>& state, const Batch& in, Device d,
                      DType dtype) {
  nn::UNet net(c, nn::UNet::Undrawn{});
  net.load_state(state);
  net.to(dtype);
  net.to(d);
  net.train();
  net.set_dropout_seed(0xd40u);
  ag::Var z(in.z.to(dtype).to(d));
  const ag::Var out = net.forward(z, in.t.to(d), in.labels.defined() ? in.labels.to(d) : Tensor());
  const ag::Var loss = ag::mse(out, ag::Var(in.target.to(dtype).to(d)));
  ag::backward(loss);
  Result r;
  r.loss = test::f64_values(loss.value().to(Device::cpu()).to(DType::f64))[0];
  for (const auto& [name, v] : net.named_parameters())
    r.grads.emplace_back(name, v.has_grad() ? v.grad().to(Device::cpu()).to(DType::f64) : Tensor());
  return r;
}

double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double a : v) m = std::max(m, std::fabs(a));
  return m;
}

void check_unet_on(Device d) {
  for (bool adm : {false, true}) {
    const nn::UNetConfig c = config(adm);
    const int64_t B = adm ? 1 : 3, S = c.image_size;
    INFO((adm ? "adm" : "ddpm") << " UNet, batch " << B << ", on " << d.str() << ", seed " << test::run_seed());
    // Drawn weights plus a perturbation, so no parameter is zero (the zero-initialised ends of the
    // residual branches and the output conv would otherwise hide every gradient upstream of them).
    nn::UNet init(c, test::next_seed());
    std::map<std::string, Tensor> state;
    for (const auto& [name, value] : init.state()) {
      const std::vector<float> w = value.to_vector(), e = test::random_tensor(value.shape(), -0.05f, 0.05f).to_vector();
      std::vector<float> s(w.size());
      for (size_t i = 0; i < w.size(); ++i) s[i] = w[i] + e[i];
      state[name] = Tensor::from_vector(s, value.shape());
    }
    Batch in;
    const Tensor x0 = test::random_tensor({B, S, S, c.in_channels}),
                 eps = test::random_normal({B, S, S, c.in_channels});
    in.t = test::random_tensor({B}, 0.f, 1000.f);
    // z = alpha x0 + sigma eps at the timestep's noise level (a cosine schedule's, for scale).
    const std::vector<float> tv = in.t.to_vector(), xv = x0.to_vector(), ev = eps.to_vector();
    std::vector<float> zv(xv.size());
    const int64_t per = S * S * c.in_channels;
    for (int64_t b = 0; b < B; ++b) {
      const double a = std::cos(0.5 * std::numbers::pi * tv[b] / 1000.0),
                   s = std::sin(0.5 * std::numbers::pi * tv[b] / 1000.0);
      for (int64_t i = 0; i < per; ++i) zv[b * per + i] = static_cast<float>(a * xv[b * per + i] + s * ev[b * per + i]);
    }
    in.z = Tensor::from_vector(zv, x0.shape());
    in.target = test::random_normal({B, S, S, c.output_channels()});
    if (adm) in.labels = Tensor::from_vector_i64({2}, {B});

    const Result want = loss_and_grads(c, state, in, Device::cpu(), DType::f64);
    const Result got = loss_and_grads(c, state, in, d, DType::f32);
    INFO("loss " << got.loss << ", f64 reference " << want.loss);
    CHECK(std::fabs(got.loss - want.loss) <= 1e-5 * std::fabs(want.loss));
    REQUIRE(got.grads.size() == want.grads.size());
    double worst = 0;
    std::string worst_name;
    for (size_t i = 0; i < want.grads.size(); ++i) {
      const auto& [name, w] = want.grads[i];
      const Tensor& g = got.grads[i].second;
      INFO("gradient of " << name);
      REQUIRE(w.defined());
      REQUIRE(g.defined());
      REQUIRE(g.shape() == w.shape());
      const std::vector<double> gv = test::f64_values(g), wv = test::f64_values(w);
      const double scale = max_abs(wv);
      CHECK(scale > 0);  // a gradient that vanishes would compare nothing
      double err = 0;
      for (size_t j = 0; j < wv.size(); ++j) err = std::max(err, std::fabs(gv[j] - wv[j]) / (std::fabs(wv[j]) + scale));
      if (err > worst) worst = err, worst_name = name;
      INFO("max |got - want| / (|want| + max|want|) = " << err);
      CHECK(test::allclose(gv, wv, 1e-4, 1e-4 * scale));
    }
    WARN((adm ? "adm" : "ddpm") << " UNet on " << d.str() << ": " << want.grads.size()
                                << " gradients, the worst relative error " << worst << " (" << worst_name << ")");
  }
}

}  // namespace

TEST_CASE("a small UNet in f32 on the cpu: loss and every parameter gradient match the f64 cpu model",
          "[cpu][models]") {
  check_unet_on(Device::cpu());
}

TEST_CASE("a small UNet in f32 on the GPU: loss and every parameter gradient match the f64 cpu model",
          "[cuda][models]") {
#if defined(DIFFUSE_HAVE_CUDA)
  if (cuda_available()) check_unet_on(Device::cuda(0));
#endif
}
