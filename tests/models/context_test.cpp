// Cross-attention conditioning: the transformer layers (LayerNorm, GELU, cross-attention with
// Tq != Tk, the GEGLU feed-forward, the BasicTransformerBlock and the SpatialTransformer) and a
// UNet with a context gradchecked in f64; the tokeniser; the config keys; labels and prompts.
#include <catch2/catch.hpp>

#include <cmath>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "autograd/gradcheck.h"
#include "models/data/dataset.h"
#include "models/interop/diffusers.h"
#include "models/nn/unet.h"
#include "tests/models/micro_unet.h"
#include "tests/test_util.h"

using namespace diffuse;
using namespace diffuse::nn;

namespace {

// Finite differences over thousands of tiny ops: one thread (unet_gradcheck_test.cpp says why).
struct OneThread {
#ifdef _OPENMP
  int threads = omp_get_max_threads();
  OneThread() { omp_set_num_threads(1); }
  ~OneThread() { omp_set_num_threads(threads); }
#endif
};

// The module's input(s) then every parameter, random (so no zero-initialised end hides a
// gradient), checked in f64.
template <class F>
ag::GradcheckResult check_module(Module& m, std::vector<Tensor> inputs, F&& f) {
  m.to(DType::f64);
  const size_t n_in = inputs.size();
  for (auto& [name, v] : m.named_parameters()) inputs.push_back(test::random_tensor(v.shape(), -0.5f, 0.5f));
  return ag::gradcheck(
      [&](const std::vector<ag::Var>& v) {
        m.bind_parameters({v.begin() + static_cast<std::ptrdiff_t>(n_in), v.end()});
        return f(v);
      },
      inputs);
}

// 4x4 images, two levels (2 and 4 channels), a SpatialTransformer at 2x2 and in the middle, 2
// heads, a context of 3 tokens of 5 channels over the words of three class names.
UNetConfig micro_context_config() {
  UNetConfig c = test::micro_unet_config();
  c.attention_resolutions = {};
  c.num_classes = 3;
  c.context_dim = 5;
  c.context_resolutions = {2};
  c.context_tokens = 3;
  c.class_names = {"Ankle boot", "boot", "T-shirt/top"};
  c.vocabulary = context_vocabulary(c.class_names);
  return c;
}

}  // namespace

TEST_CASE("LayerNorm normalises each row over the last dimension", "[cpu][models]") {
  LayerNorm ln(6);
  ln.init_parameters(0, InitScheme::pytorch);  // gamma 1, beta 0
  ln.to(DType::f64);
  const Tensor x = test::random_tensor({2, 3, 6}, -3.f, 3.f).to(DType::f64);
  const std::vector<double> y = test::f64_values(ln.forward(ag::Var(x)).value()), xv = test::f64_values(x);
  for (int r = 0; r < 6; ++r) {
    double mean = 0, var = 0;
    for (int i = 0; i < 6; ++i) mean += xv[r * 6 + i] / 6;
    for (int i = 0; i < 6; ++i) var += (xv[r * 6 + i] - mean) * (xv[r * 6 + i] - mean) / 6;
    for (int i = 0; i < 6; ++i) CHECK(y[r * 6 + i] == Approx((xv[r * 6 + i] - mean) / std::sqrt(var + 1e-5)).margin(1e-9));
  }
}

TEST_CASE("gelu_tanh is the tanh GELU", "[cpu][models]") {
  const std::vector<double> xs = {-3, -1, -0.25, 0, 0.5, 2};
  const Tensor x = Tensor::from_vector(std::vector<float>(xs.begin(), xs.end()), {6}).to(DType::f64);
  const std::vector<double> y = test::f64_values(gelu_tanh(ag::Var(x)).value());
  for (size_t i = 0; i < xs.size(); ++i) {
    const double v = xs[i];
    CHECK(y[i] == Approx(0.5 * v * (1 + std::tanh(std::sqrt(2 / M_PI) * (v + 0.044715 * v * v * v)))).margin(1e-12));
  }
}

TEST_CASE("the transformer layers' gradients match finite differences in f64", "[cpu][models]") {
  OneThread one;
  const int64_t B = 2, Tq = 5, Tk = 3, C = 4, Dc = 6;
  SECTION("LayerNorm") {
    LayerNorm m(C);
    auto r = check_module(m, {test::random_tensor({B, Tq, C}, -2.f, 2.f)},
                          [&](const std::vector<ag::Var>& v) { return m.forward(v[0]); });
    INFO(r.report);
    CHECK(r.ok);
  }
  SECTION("cross-attention, Tq != Tk, 2 heads") {
    CrossAttention m(C, Dc, 2);
    auto r = check_module(m, {test::random_tensor({B, Tq, C}, -2.f, 2.f), test::random_tensor({B, Tk, Dc}, -2.f, 2.f)},
                          [&](const std::vector<ag::Var>& v) { return m.forward(v[0], v[1]); });
    INFO(r.report);
    CHECK(r.ok);
  }
  SECTION("GEGLU feed-forward") {
    FeedForward m(C, 2);
    auto r = check_module(m, {test::random_tensor({B, Tq, C}, -2.f, 2.f)},
                          [&](const std::vector<ag::Var>& v) { return m.forward(v[0]); });
    INFO(r.report);
    CHECK(r.ok);
  }
  SECTION("TransformerBlock: self-attention, cross-attention, feed-forward") {
    TransformerBlock m(C, Dc, 2);
    auto r = check_module(m, {test::random_tensor({B, Tq, C}, -2.f, 2.f), test::random_tensor({B, Tk, Dc}, -2.f, 2.f)},
                          [&](const std::vector<ag::Var>& v) { return m.forward(v[0], v[1]); });
    INFO(r.report);
    CHECK(r.ok);
  }
  SECTION("SpatialTransformer on a 2x3 image") {
    SpatialTransformer m(C, Dc, 2, 1);
    auto r = check_module(m, {test::random_tensor({B, 2, 3, C}, -2.f, 2.f), test::random_tensor({B, Tk, Dc}, -2.f, 2.f)},
                          [&](const std::vector<ag::Var>& v) { return m.forward(v[0], v[1]); });
    INFO(r.report);
    CHECK(r.ok);
  }
}

TEST_CASE("a UNet with a context: gradients match finite differences in f64", "[cpu][models][heavy]") {
  OneThread one;
  const UNetConfig c = micro_context_config();
  UNet net(c, test::next_seed());
  const auto state = net.state();
  for (const char* n : {"context.tokens.weight", "context.positions", "down.1.xattn.0.block.attn2.to_k.weight",
                        "mid.xattn.proj_out.weight", "up.1.xattn.1.block.ff.proj.weight", "up.1.xattn.0.norm.weight"})
    CHECK(state.count(n) == 1);
  CHECK_FALSE(state.count("label_emb.weight"));  // labels condition through their words
  CHECK_FALSE(state.count("mid.attn.qkv.weight"));
  CHECK(state.at("context.tokens.weight").shape() == Shape{5, 5});  // pad + ankle, boot, t-shirt, top
  const int64_t B = 3;
  Tensor t = test::random_tensor({B}, 0.f, 1000.f);
  // A label, the null label, a class name of two words.
  Tensor labels = Tensor::from_vector_i64({0, 3, 2}, {B});
  auto r = check_module(net, {test::random_normal({B, 4, 4, 1})}, [&](const std::vector<ag::Var>& v) {
    return net.forward(v[0], t, labels);
  });
  INFO(net.num_parameters() << " parameters; " << r.report);
  CHECK(r.ok);
}

TEST_CASE("prompt words and the vocabulary of class names", "[cpu][models]") {
  CHECK(prompt_words("T-shirt/top") == std::vector<std::string>{"t-shirt", "top"});
  CHECK(prompt_words("  Ankle   BOOT ") == std::vector<std::string>{"ankle", "boot"});
  CHECK(prompt_words("/ /").empty());
  CHECK(context_vocabulary(data::fashion_mnist_class_names()) ==
        std::vector<std::string>{"t-shirt", "top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                                 "sneaker", "bag", "ankle", "boot"});
  const UNetConfig c = micro_context_config();  // ankle, boot, t-shirt, top; 3 tokens
  CHECK(c.tokenize("ankle boot") == std::vector<int64_t>{1, 2, 0});
  CHECK(c.tokenize("BOOT ankle") == std::vector<int64_t>{2, 1, 0});
  CHECK(c.tokenize("") == std::vector<int64_t>{0, 0, 0});  // the null context
  CHECK(c.tokenize("top/boot/boot") == std::vector<int64_t>{4, 2, 2});
  CHECK_THROWS_WITH(c.tokenize("red boot"), Catch::Contains("does not know the word 'red'") &&
                                                Catch::Contains("known: ankle, boot, t-shirt, top"));
  CHECK_THROWS_WITH(c.tokenize("boot boot boot boot"), Catch::Contains("4 words") && Catch::Contains("at most 3"));
  CHECK_THROWS_WITH(UNetConfig{}.tokenize("boot"), Catch::Contains("no cross-attention"));
}

TEST_CASE("a label conditions exactly as its class name's tokens; the null label as the empty prompt", "[cpu][models]") {
  const UNetConfig c = micro_context_config();
  UNet net(c, test::next_seed());
  // proj_out starts at zero (the blocks are the identity): give every weight a value.
  for (auto& [name, v] : net.named_parameters()) v.value().copy_(test::random_tensor(v.shape(), -0.5f, 0.5f));
  net.eval();
  const int64_t B = 4;
  const Tensor x = test::random_normal({B, 4, 4, 1});
  const Tensor t = test::random_tensor({B}, 0.f, 1000.f);
  const Tensor labels = Tensor::from_vector_i64({0, 2, 3, 1}, {B});
  std::vector<int64_t> ids;
  for (const char* p : {"ankle boot", "t-shirt/top", "", "boot"})
    for (int64_t id : c.tokenize(p)) ids.push_back(id);
  const Tensor by_label = net.forward(ag::Var(x), t, labels).value();
  const Tensor by_tokens = net.forward(ag::Var(x), t, Tensor::from_vector_i64(ids, {B, 3})).value();
  CHECK(by_label.to_vector() == by_tokens.to_vector());
  const Tensor unlabelled = net.forward(ag::Var(x), t).value();  // no labels: the null context
  CHECK(unlabelled.slice(2, 3).to_vector() == by_label.slice(2, 3).to_vector());
  // The context matters: another prompt, another output.
  const Tensor other = net.forward(ag::Var(x.slice(0, 1)), t.slice(0, 1), Tensor::from_vector_i64({0}, {1})).value();
  const Tensor swapped = net.forward(ag::Var(x.slice(0, 1)), t.slice(0, 1),
                                     Tensor::from_vector_i64(c.tokenize("boot ankle"), {1, 3})).value();
  CHECK(other.to_vector() != swapped.to_vector());  // word order reaches the model (positions)
  CHECK_THROWS_WITH(net.forward(ag::Var(x), t, Tensor::from_vector_i64(std::vector<int64_t>(B * 3, 5), {B, 3})),
                    Catch::Contains("token id 5 outside [0, 4]"));
  CHECK_THROWS_WITH(net.forward(ag::Var(x), t, Tensor::from_vector_i64({0, 1, 2, 4}, {B})),
                    Catch::Contains("label 4 outside [0, 3]"));
}

TEST_CASE("the cross-attention config keys: JSON round trip and refusals", "[cpu][models]") {
  const UNetConfig c = micro_context_config();
  const nlohmann::json j = c.to_json();
  const UNetConfig back = UNetConfig::from_json(j);
  CHECK(back.to_json() == j);
  CHECK(back.vocabulary == c.vocabulary);
  // A config without these keys writes none of them (older checkpoints read and write as before).
  for (const char* k : {"context_dim", "context_resolutions", "context_tokens", "class_names", "vocabulary"})
    CHECK_FALSE(UNetConfig{}.to_json().contains(k));
  // Without a vocabulary, the class names' words.
  nlohmann::json no_vocab = j;
  no_vocab.erase("vocabulary");
  CHECK(UNetConfig::from_json(no_vocab).vocabulary == c.vocabulary);
  auto refused = [&](const char* key, const nlohmann::json& value, const char* why) {
    nlohmann::json bad = j;
    if (value.is_null()) bad.erase(key);
    else bad[key] = value;
    CAPTURE(key, value.dump());
    CHECK_THROWS_WITH(UNetConfig::from_json(bad), Catch::Contains(why));
  };
  refused("class_names", nlohmann::json::array({"boot", "ankle"}), "one class name per class");
  refused("class_names", nlohmann::json::array({"boot", "ankle", "red"}), "'red' is not in the vocabulary");
  refused("class_names", nlohmann::json::array({"boot", "ankle", " / "}), "has no words");
  refused("context_tokens", 1, "more than context_tokens 1");
  refused("context_tokens", 0, "context_tokens must be in [1, 1024]");
  refused("context_resolutions", nlohmann::json::array({3}), "not a feature-map size");
  refused("vocabulary", nlohmann::json::array({"ankle", "boot", "t-shirt", "top", "boot"}), "'boot' appears twice");
  refused("vocabulary", nlohmann::json::array({"Ankle", "boot", "t-shirt", "top"}), "not one lower-case word");
  refused("vocabulary", nlohmann::json::array({"ankle boot", "t-shirt", "top"}), "not one lower-case word");
  refused("vocabulary", nlohmann::json::array(), "vocabulary must hold 1 to");
  refused("context_dim", -1, "context_dim must be in");
  refused("class_names", 7, "bad value for 'class_names'");
  nlohmann::json plain = UNetConfig{}.to_json();
  plain["context_resolutions"] = {16};
  CHECK_THROWS_WITH(UNetConfig::from_json(plain), Catch::Contains("need context_dim > 0"));
  plain.erase("context_resolutions");
  plain["contex_dim"] = 8;
  CHECK_THROWS_WITH(UNetConfig::from_json(plain), Catch::Contains("unknown key 'contex_dim'"));
  // diffusers' UNet2DModel has no cross-attention: the export refuses, naming the key.
  CHECK_THROWS_WITH(interop::diffusers_config_from_unet(c), Catch::Contains("context_dim = 5"));
}
