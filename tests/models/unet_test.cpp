// The UNet: presets and their parameter counts, config JSON, names, forward shapes, the
// classifier. The gradcheck is in unet_gradcheck_test.cpp.
#include <catch2/catch.hpp>

#include <chrono>
#include <cmath>
#include <set>
#include <string>
#include <vector>

#include "models/nn/unet.h"
#include "tests/test_util.h"

using namespace diffuse;
using namespace diffuse::nn;

namespace {

Tensor timesteps(int64_t B) {
  auto u = test::random_tensor({B}, 0.f, 1000.f).to_vector();
  return Tensor::from_vector(u, {B});
}

// Every GroupNorm in the tree under m, with its dotted name.
void group_norms(const Module& m, const std::string& prefix, std::vector<std::pair<std::string, const GroupNorm*>>& out) {
  if (auto* g = dynamic_cast<const GroupNorm*>(&m)) out.emplace_back(prefix, g);
  for (const auto& [name, child] : m.children()) group_norms(*child, prefix + name + ".", out);
}

}  // namespace

TEST_CASE("ddpm-cifar10 has the paper's 35.7M parameters", "[cpu][models]") {
  UNet net(UNetConfig::preset("ddpm-cifar10"));
  const int64_t n = net.num_parameters();
  INFO("ddpm-cifar10: " << n << " parameters");
  CHECK(std::llabs(n - 35'700'000) <= 50'000);
}

TEST_CASE("parameter names are unique, dotted and stable", "[cpu][models]") {
  for (const auto& name : UNetConfig::preset_names()) {
    if (name == "ddpm-cifar10" || name == "imagenet64") continue;  // big; counted elsewhere
    UNet net(UNetConfig::preset(name));
    std::set<std::string> seen;
    for (auto& [n, v] : net.named_parameters()) {
      CAPTURE(n);
      CHECK(seen.insert(n).second);
    }
  }
  UNet net(UNetConfig::preset("tiny"));
  auto s = net.state();
  for (const char* n : {"time.fc1.weight", "time.fc2.bias", "conv_in.weight", "down.0.res.0.conv1.weight",
                        "down.1.res.0.skip.weight", "down.0.downsample.conv.weight", "down.2.attn.0.qkv.weight",
                        "mid.res1.norm1.weight", "mid.attn.proj.weight", "mid.res2.conv2.bias",
                        "up.2.res.1.emb_proj.weight", "up.1.upsample.conv.weight", "up.0.res.1.skip.weight",
                        "out_norm.weight", "out_conv.weight"})
    CHECK(s.count(n) == 1);
  CHECK_FALSE(s.count("down.2.downsample.conv.weight"));  // the last level does not downsample
  CHECK_FALSE(s.count("down.1.attn.0.qkv.weight"));       // attention only at 7x7
  // The first names, in order: what a checkpoint lists first.
  auto np = net.named_parameters();
  CHECK(np[0].first == "time.fc1.weight");
  CHECK(np[4].first == "conv_in.weight");
}

TEST_CASE("init is reproducible from the seed, and the fresh model outputs zero", "[cpu][models]") {
  auto c = UNetConfig::preset("tiny");
  const uint64_t seed = test::next_seed();
  UNet a(c, seed), b(c, seed), other(c, seed + 1);
  CHECK(a.state().at("down.1.res.0.conv1.weight").to_vector() == b.state().at("down.1.res.0.conv1.weight").to_vector());
  CHECK(a.state().at("down.1.res.0.conv1.weight").to_vector() !=
        other.state().at("down.1.res.0.conv1.weight").to_vector());
  // Zero-initialised ends: conv2 of every block, attention proj, out_conv.
  int zeroed = 0;
  for (auto& [n, t] : a.state())
    if (n.find(".conv2.") != std::string::npos || n.find(".attn.proj.") != std::string::npos ||
        (n.find(".attn.") != std::string::npos && n.find(".proj.") != std::string::npos) ||
        n.rfind("out_conv.", 0) == 0) {
      CAPTURE(n);
      CHECK(t.to_vector() == std::vector<float>(t.numel(), 0.f));
      ++zeroed;
    }
  CHECK(zeroed == 2 * (11 + 4) + 2);  // 11 ResBlocks, 4 attention blocks, out_conv: weight and bias
  ag::NoGrad ng;
  ag::Var y = a.forward(ag::Var(test::random_normal({2, 28, 28, 1})), timesteps(2));
  for (float v : y.value().to_vector()) CHECK(v == 0.f);
}

TEST_CASE("an undrawn UNet has the drawn one's parameters, all 0, until load_state fills them", "[cpu][models]") {
  auto c = UNetConfig::preset("tiny");
  c.num_classes = 3;
  const UNet drawn(c, test::next_seed());
  UNet undrawn(c, UNet::Undrawn{});
  const auto want = drawn.state(), got = undrawn.state();
  REQUIRE(got.size() == want.size());
  for (const auto& [name, t] : got) {
    CAPTURE(name);
    REQUIRE(want.count(name));
    CHECK(t.shape() == want.at(name).shape());
    CHECK(t.to_vector() == std::vector<float>(t.numel(), 0.f));
  }
  undrawn.load_state(want);
  for (const auto& [name, t] : undrawn.state()) CHECK(t.to_vector() == want.at(name).to_vector());
}

TEST_CASE("config JSON round-trips and rejects unknown keys", "[cpu][models]") {
  for (const auto& name : UNetConfig::preset_names()) {
    auto c = UNetConfig::preset(name);
    auto j = c.to_json();
    auto d = UNetConfig::from_json(nlohmann::json::parse(j.dump()));
    CHECK(d.to_json() == j);
  }
  auto j = UNetConfig::preset("tiny").to_json();
  j["base_channel"] = 32;
  CHECK_THROWS_WITH(UNetConfig::from_json(j), Catch::Contains("unknown key 'base_channel'"));
  auto k = UNetConfig::preset("tiny").to_json();
  k["groups"] = 5;  // 32 channels in 5 groups
  CHECK_THROWS_WITH(UNetConfig::from_json(k), Catch::Contains("groups"));
  auto h = UNetConfig::preset("tiny").to_json();
  h["head_channels"] = 12;  // 16, 32, 32 channels
  CHECK_THROWS_WITH(UNetConfig::from_json(h), Catch::Contains("head_channels 12 does not divide 16"));
  h["head_channels"] = 16;
  CHECK(UNetConfig::from_json(h).head_channels == 16);
  auto m = UNetConfig::preset("tiny").to_json();
  m["image_size"] = 30;  // 30 -> 15 -> cannot halve again
  CHECK_THROWS_AS(UNetConfig::from_json(m), Error);
  auto partial = UNetConfig::from_json(nlohmann::json{{"base_channels", 16}, {"groups", 8}});
  CHECK(partial.base_channels == 16);
  CHECK(partial.channel_mult == UNetConfig{}.channel_mult);
  CHECK_THROWS_AS(UNetConfig::preset("cifar"), Error);
}

TEST_CASE("UNet forward shapes for the small presets and variants", "[cpu][models]") {
  ag::NoGrad ng;  // shapes only: no graph
  for (const char* name : {"tiny", "fmnist"}) {
    CAPTURE(name);
    auto c = UNetConfig::preset(name);
    UNet net(c, test::next_seed());
    const int64_t B = name[0] == 't' ? 2 : 1;  // fmnist is the GPU model: one sample is enough here
    ag::Var x(test::random_normal({B, c.image_size, c.image_size, c.in_channels}));
    ag::Var y = net.forward(x, timesteps(B));
    CHECK(y.shape() == Shape{B, c.image_size, c.image_size, c.output_channels()});
  }
  // Class-conditional, learned sigma, scale-shift, resblock up/down, rescale, avg-pool resampling.
  auto c = UNetConfig::preset("tiny");
  c.num_classes = 10;
  c.learn_sigma = true;
  c.scale_shift_norm = true;
  c.resblock_updown = true;
  c.rescale_residual = true;
  c.head_channels = 16;
  c.dropout = 0.1f;
  UNet net(c, test::next_seed());
  ag::Var x(test::random_normal({3, 28, 28, 1}));
  Tensor labels = Tensor::from_vector_i64({0, 9, 10}, {3});  // 10: the null label
  CHECK(net.forward(x, timesteps(3), labels).shape() == Shape{3, 28, 28, 2});
  CHECK(net.forward(x, timesteps(3)).shape() == Shape{3, 28, 28, 2});  // all null
  CHECK_THROWS_AS(net.forward(x, timesteps(3), Tensor::from_vector_i64({0, 11, 1}, {3})), Error);
  CHECK_THROWS_AS(net.forward(ag::Var(test::random_normal({3, 32, 32, 1})), timesteps(3)), Error);
  c.resblock_updown = false;
  c.conv_resample = false;
  UNet pooled(c, 1);
  CHECK(pooled.forward(x, timesteps(3), labels).shape() == Shape{3, 28, 28, 2});
}

TEST_CASE("the noisy classifier maps images to logits", "[cpu][models]") {
  auto c = UNetConfig::preset("tiny");
  EncoderClassifier clf(c, 10, test::next_seed());
  CHECK(clf.state().count("head.weight") == 1);
  CHECK(clf.state().count("up.0.res.0.conv1.weight") == 0);
  ag::Var x(test::random_normal({2, 28, 28, 1}), true);
  ag::Var logits = clf.forward(x, timesteps(2));
  CHECK(logits.shape() == Shape{2, 10});
  ag::clear_tape();
}

TEST_CASE("norm_eps and downsample_padding: absent from a default config, round-tripped when set", "[cpu][models]") {
  // A default config's JSON is what it was before these keys existed (checkpoint metadata).
  for (const auto& name : UNetConfig::preset_names()) {
    const auto j = UNetConfig::preset(name).to_json();
    CHECK(!j.contains("norm_eps"));
    CHECK(!j.contains("downsample_padding"));
  }
  auto c = UNetConfig::preset("tiny");
  c.norm_eps = 1e-6;
  c.downsample_padding = 0;
  const auto j = c.to_json();
  CHECK(j.at("norm_eps") == 1e-6);
  CHECK(j.at("downsample_padding") == 0);
  const auto d = UNetConfig::from_json(nlohmann::json::parse(j.dump()));
  CHECK(d.norm_eps == 1e-6);
  CHECK(d.downsample_padding == 0);
  CHECK(d.to_json() == j);
  for (const nlohmann::json& bad : {nlohmann::json{{"norm_eps", 0}}, nlohmann::json{{"norm_eps", -1e-5}},
                                    nlohmann::json{{"norm_eps", "1e-6"}}, nlohmann::json{{"downsample_padding", 2}},
                                    nlohmann::json{{"downsample_padding", -1}}}) {
    CAPTURE(bad.dump());
    auto k = UNetConfig::preset("tiny").to_json();
    k.update(bad);
    CHECK_THROWS_WITH(UNetConfig::from_json(k), Catch::Contains(bad.begin().key()));
  }
}

TEST_CASE("norm_eps reaches every GroupNorm of the UNet and the classifier", "[cpu][models]") {
  auto c = UNetConfig::preset("tiny");
  c.norm_eps = 1e-6;
  UNet net(c, UNet::Undrawn{});
  EncoderClassifier clf(c, 3, 1);
  for (const Module* m : {static_cast<const Module*>(&net), static_cast<const Module*>(&clf)}) {
    std::vector<std::pair<std::string, const GroupNorm*>> norms;
    group_norms(*m, "", norms);
    // ResBlocks' norm1 / norm2, attention norms, out_norm.
    CHECK(norms.size() > 8);
    for (const auto& [name, g] : norms) {
      CAPTURE(name);
      CHECK(g->eps() == 1e-6f);
    }
  }
  std::vector<std::pair<std::string, const GroupNorm*>> defaults;
  UNet plain(UNetConfig::preset("tiny"), UNet::Undrawn{});
  group_norms(plain, "", defaults);
  for (const auto& [name, g] : defaults) CHECK(g->eps() == 1e-5f);
}

TEST_CASE("Downsample pads 1 on every side, or (padding 0) as diffusers: a zero bottom row and right column",
          "[cpu][models]") {
  ag::NoGrad ng;
  const int64_t B = 2, H = 6, W = 6, C = 3;
  for (int padding : {1, 0}) {
    CAPTURE(padding);
    Downsample d(C, true, padding);
    d.init_parameters(test::next_seed());
    const Tensor x = test::random_normal({B, H, W, C});
    const Tensor y = d.forward(ag::Var(x)).value();
    REQUIRE(y.shape() == Shape{B, H / 2, W / 2, C});
    const auto st = d.state();
    const Tensor& w = st.at("conv.weight");  // (Cout, 3, 3, Cin)
    const Tensor& bias = st.at("conv.bias");
    // Output pixel o reads input rows 2o - 1 .. 2o + 1 (padding 1) or 2o .. 2o + 2 (padding 0),
    // zero outside the image.
    const int64_t off = padding == 1 ? -1 : 0;
    const float *xp = x.data<float>(), *wp = w.data<float>(), *bp = bias.data<float>(), *yp = y.data<float>();
    double worst = 0;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t oy = 0; oy < H / 2; ++oy)
        for (int64_t ox = 0; ox < W / 2; ++ox)
          for (int64_t co = 0; co < C; ++co) {
            double acc = bp[co];
            for (int64_t ky = 0; ky < 3; ++ky)
              for (int64_t kx = 0; kx < 3; ++kx) {
                const int64_t iy = 2 * oy + ky + off, ix = 2 * ox + kx + off;
                if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                for (int64_t ci = 0; ci < C; ++ci)
                  acc += double{wp[((co * 3 + ky) * 3 + kx) * C + ci]} * xp[((b * H + iy) * W + ix) * C + ci];
              }
            worst = std::max(worst, std::abs(acc - yp[((b * (H / 2) + oy) * (W / 2) + ox) * C + co]));
          }
    // 27 f32 products of unit-order values: rounding alone, ~1e-6.
    CHECK(worst < 1e-5);
  }
  CHECK_THROWS_AS(Downsample(C, true, 2), Error);
}
