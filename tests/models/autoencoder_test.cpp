// The autoencoder of latent diffusion (models/nn/autoencoder.h): shapes and names, its config,
// the KL term against a hand computation, and the gradients of the whole encoder and decoder
// (every layer kind it uses: convolutions, time-free ResBlocks, the stride-2 conv, nearest
// upsampling, the middle attention, the reparameterised draw) against finite differences in f64.
#include <catch2/catch.hpp>

#include <cmath>
#include <set>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "autograd/elementwise.h"
#include "autograd/gradcheck.h"
#include "autograd/linalg.h"
#include "models/nn/autoencoder.h"
#include "tests/test_util.h"

using namespace diffuse;
using namespace diffuse::nn;

namespace {

// Small enough for finite differences: 4x4x1 images, two levels of 2 and 4 channels in one group,
// 2x2x2 latents.
AutoencoderConfig micro_config() {
  AutoencoderConfig c;
  c.image_size = 4;
  c.in_channels = 1;
  c.latent_channels = 2;
  c.base_channels = 2;
  c.channel_mult = {1, 2};
  c.num_res_blocks = 1;
  c.groups = 1;
  return c;
}

}  // namespace

TEST_CASE("the default autoencoder maps 28x28x1 to 7x7x4 latents and back", "[cpu][models][autoencoder]") {
  AutoencoderConfig c;
  CHECK(c.factor() == 4);
  CHECK(c.latent_size() == 7);
  Autoencoder ae(c, test::next_seed());
  ag::NoGrad ng;
  auto [mean, logvar] = ae.encode(ag::Var(test::random_tensor({3, 28, 28, 1})));
  CHECK(mean.shape() == Shape{3, 7, 7, 4});
  CHECK(logvar.shape() == Shape{3, 7, 7, 4});
  CHECK(ae.decode(mean).shape() == Shape{3, 28, 28, 1});
  CHECK_THROWS_WITH(ae.decode(ag::Var(Tensor::zeros({1, 14, 14, 4}))), Catch::Contains("expected latents"));
  CHECK_THROWS_WITH(ae.encode(ag::Var(Tensor::zeros({1, 28, 28, 3}))), Catch::Contains("expected images"));
  // The names docs/models.md lists, once each.
  std::set<std::string> names;
  for (auto& [n, v] : ae.named_parameters()) CHECK(names.insert(n).second);
  for (const char* n : {"encoder.conv_in.weight", "encoder.down.0.res.0.conv1.weight", "encoder.down.0.downsample.conv.weight",
                        "encoder.down.1.res.0.skip.weight", "encoder.mid.res1.norm1.weight", "encoder.mid.attn.qkv.weight",
                        "encoder.norm_out.weight", "encoder.conv_out.weight", "decoder.conv_in.weight",
                        "decoder.mid.res2.conv2.bias", "decoder.up.2.res.1.conv1.weight", "decoder.up.1.upsample.conv.weight",
                        "decoder.up.0.res.0.skip.weight", "decoder.norm_out.bias", "decoder.conv_out.weight"})
    CHECK(names.count(n) == 1);
  CHECK_FALSE(names.count("encoder.down.2.downsample.conv.weight"));  // the last level keeps its size
  CHECK_FALSE(names.count("decoder.up.0.upsample.conv.weight"));      // the first level is already full size
  CHECK_FALSE(names.count("encoder.down.0.res.0.emb_proj.weight"));   // no time conditioning
  // Initial values are a function of the seed and the names only.
  Autoencoder again(c, 5), same(c, 5);
  CHECK(again.state().at("decoder.conv_out.weight").to_vector() == same.state().at("decoder.conv_out.weight").to_vector());
}

TEST_CASE("the autoencoder config round-trips and refuses what it cannot build", "[cpu][models][autoencoder]") {
  AutoencoderConfig c = micro_config();
  c.norm_eps = 1e-5;
  const AutoencoderConfig d = AutoencoderConfig::from_json(nlohmann::json::parse(c.to_json().dump()));
  CHECK(d.to_json() == c.to_json());
  nlohmann::json j = c.to_json();
  j["latent_channel"] = 3;
  CHECK_THROWS_WITH(AutoencoderConfig::from_json(j), Catch::Contains("unknown key 'latent_channel'"));
  j = c.to_json();
  j["image_size"] = 6;
  j["channel_mult"] = {1, 1, 1};  // 6 -> 3 -> cannot halve again
  CHECK_THROWS_WITH(AutoencoderConfig::from_json(j), Catch::Contains("cannot be halved"));
  j = c.to_json();
  j["groups"] = 3;
  CHECK_THROWS_WITH(AutoencoderConfig::from_json(j), Catch::Contains("groups"));
  j = c.to_json();
  j["latent_channels"] = "four";
  CHECK_THROWS_WITH(AutoencoderConfig::from_json(j), Catch::Contains("'latent_channels'"));
  j = c.to_json();
  j["norm_eps"] = 0;
  CHECK_THROWS_WITH(AutoencoderConfig::from_json(j), Catch::Contains("norm_eps"));
  CHECK(AutoencoderConfig::from_json(nlohmann::json{{"latent_channels", 3}}).latent_channels == 3);
}

TEST_CASE("the KL term is the closed form of KL(N(mu, sigma^2) || N(0, 1)) summed per sample",
          "[cpu][models][autoencoder]") {
  // Two samples of three latents; by hand: 0.5 (mu^2 + sigma^2 - 1 - log sigma^2).
  const std::vector<float> mu = {0.f, 1.f, -2.f, 0.5f, 0.f, 0.f};
  const std::vector<float> lv = {0.f, 0.f, std::log(4.f), -1.f, 2.f, -3.f};
  ag::Var kl = gaussian_kl(ag::Var(Tensor::from_vector(mu, {2, 3})), ag::Var(Tensor::from_vector(lv, {2, 3})));
  REQUIRE(kl.shape() == Shape{2});
  const std::vector<float> got = kl.value().to_vector();
  double want[2] = {0, 0};
  for (int i = 0; i < 6; ++i)
    want[i / 3] += 0.5 * (double{mu[i]} * mu[i] + std::exp(double{lv[i]}) - 1 - lv[i]);
  // sample 0: 0 + 0.5 + 0.5 (4 + 4 - 1 - log 4) = 4 - log 2
  CHECK(want[0] == Approx(4 - std::log(2.0)).epsilon(1e-6));
  CHECK(got[0] == Approx(want[0]).epsilon(1e-6));
  CHECK(got[1] == Approx(want[1]).epsilon(1e-6));
  // Zero exactly at the prior.
  CHECK(gaussian_kl(ag::Var(Tensor::zeros({1, 2, 2, 1})), ag::Var(Tensor::zeros({1, 2, 2, 1}))).value().item() == 0.f);
  // Its gradient, in f64.
  auto r = ag::gradcheck([](const std::vector<ag::Var>& v) { return gaussian_kl(v[0], v[1]); },
                         {test::random_normal({2, 2, 2, 3}), test::random_tensor({2, 2, 2, 3}, -2.f, 2.f)});
  INFO(r.report);
  CHECK(r.ok);
}

TEST_CASE("the autoencoder's gradients match finite differences in f64 (input and parameters)",
          "[cpu][models][autoencoder][heavy]") {
#ifdef _OPENMP
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);  // thousands of tiny evaluations: a thread team per op only costs
#endif
  const AutoencoderConfig c = micro_config();
  Autoencoder ae(c, test::next_seed());
  ae.to(DType::f64);
  const int64_t B = 2;
  // A fixed draw for the reparameterised latent, so the logvar half of the encoder matters.
  const Tensor eps = test::random_normal({B, 2, 2, c.latent_channels}).to(DType::f64);
  // Random weights everywhere (the zero-initialised conv2 of each block would hide the gradient of
  // every layer before it), of a size that keeps activations of unit order.
  auto params = ae.named_parameters();
  std::vector<Tensor> inputs = {test::random_tensor({B, 4, 4, 1})};
  for (auto& [n, v] : params) inputs.push_back(test::random_tensor(v.shape(), -0.5f, 0.5f));
  INFO(ae.num_parameters() << " parameters");
  auto f = [&](const std::vector<ag::Var>& v) {
    ae.bind_parameters({v.begin() + 1, v.end()});
    auto [mean, logvar] = ae.encode(v[0]);
    ag::Var z = ag::add(mean, ag::mul(ag::exp(ag::mul_scalar(logvar, 0.5)), ag::Var(eps)));
    // The reconstruction and the KL: every output of the encoder reaches the result twice.
    ag::Var rec = ae.decode(z);
    return ag::concat_last({ag::reshape(rec, {B, 16}), ag::reshape(gaussian_kl(mean, logvar), {B, 1})});
  };
  auto r = ag::gradcheck(f, inputs);
  INFO(r.report);
  CHECK(r.ok);
#ifdef _OPENMP
  omp_set_num_threads(threads);
#endif
}
