// nn::Module: dotted names, deferred name-keyed init, load_state errors, dtype conversion.
#include <catch2/catch.hpp>

#include <cmath>

#include "models/nn/module.h"
#include "tests/test_util.h"

using namespace diffuse;
using namespace diffuse::nn;

namespace {

struct Leaf : Module {
  Leaf(int64_t in, int64_t out) {
    register_parameter("weight", Tensor::zeros({out, in}), Init::weight(in, out));
    register_parameter("bias", Tensor::zeros({out}), Init::bias(in));
  }
};

struct Block : Module {
  explicit Block(bool extra) {
    register_module("conv1", std::make_shared<Leaf>(4, 8));
    if (extra) register_module("extra", std::make_shared<Leaf>(8, 8));
    register_module("conv2", std::make_shared<Leaf>(8, 4));
    register_parameter("gain", Tensor::zeros({4}), Init::ones());
  }
};

struct Net : Module {
  explicit Net(bool extra, bool front = false) {
    if (front) register_module("front", std::make_shared<Leaf>(3, 3));
    auto down = register_module("down", std::make_shared<ModuleList<Block>>());
    down->push_back(std::make_shared<Block>(false));
    down->push_back(std::make_shared<Block>(extra));
    register_parameter("scale", Tensor::full({1}, 0.5), Init::keep());
  }
};

}  // namespace

TEST_CASE("parameters have stable dotted names in registration order", "[cpu][models]") {
  Net net(false);
  auto names = net.named_parameters();
  std::vector<std::string> got;
  for (auto& [n, v] : names) got.push_back(n);
  CHECK(got == std::vector<std::string>{"down.0.conv1.weight", "down.0.conv1.bias", "down.0.conv2.weight",
                                        "down.0.conv2.bias",   "down.0.gain",       "down.1.conv1.weight",
                                        "down.1.conv1.bias",   "down.1.conv2.weight", "down.1.conv2.bias",
                                        "down.1.gain",         "scale"});
  CHECK(net.num_parameters() == 2 * (32 + 8 + 32 + 4 + 4) + 1);
  for (auto& v : net.parameters()) CHECK(v.requires_grad());
  CHECK_THROWS_AS(net.register_parameter("scale", Tensor::zeros({1})), Error);  // duplicate
  CHECK_THROWS_AS(net.register_parameter("a.b", Tensor::zeros({1})), Error);    // dots are separators
}

TEST_CASE("init depends on the seed and the name, not on construction order", "[cpu][models]") {
  const uint64_t seed = test::next_seed();
  Net a(false), b(true, /*front=*/true);  // b has extra layers before and between a's
  a.init_parameters(seed);
  b.init_parameters(seed);
  auto sa = a.state(), sb = b.state();
  for (auto& [name, t] : sa) {
    CAPTURE(name);
    CHECK(t.to_vector() == sb.at(name).to_vector());
  }
  // The pytorch scheme's bounds: U(-1/sqrt(fan_in), 1/sqrt(fan_in)); gains one; keep kept.
  auto w = sa.at("down.0.conv2.weight").to_vector();  // fan_in 8
  float lo = 1, hi = -1;
  for (float x : w) lo = std::min(lo, x), hi = std::max(hi, x);
  CHECK(lo >= -1 / std::sqrt(8.f));
  CHECK(hi <= 1 / std::sqrt(8.f));
  CHECK(hi - lo > 0.3f);  // 32 draws spread over most of [-0.35, 0.35]
  CHECK(sa.at("down.0.gain").to_vector() == std::vector<float>(4, 1.f));
  CHECK(sa.at("scale").to_vector() == std::vector<float>{0.5f});
  // Distinct names draw distinct streams.
  CHECK(sa.at("down.0.conv1.weight").to_vector() != sa.at("down.1.conv1.weight").to_vector());
  // Another seed, other values; the ddpm scheme zeroes biases and uses the fan_avg bound.
  Net c(false);
  c.init_parameters(seed + 1);
  CHECK(c.state().at("down.0.conv1.weight").to_vector() != sa.at("down.0.conv1.weight").to_vector());
  c.init_parameters(seed, InitScheme::ddpm);
  CHECK(c.state().at("down.0.conv1.bias").to_vector() == std::vector<float>(8, 0.f));
  for (float x : c.state().at("down.0.conv1.weight").to_vector()) CHECK(std::fabs(x) <= std::sqrt(3.f / 6.f));
}

TEST_CASE("load_state names missing, unexpected and mis-shaped parameters", "[cpu][models]") {
  Net net(false);
  net.init_parameters(test::next_seed());
  auto s = net.state();
  std::map<std::string, Tensor> copy;
  for (auto& [k, v] : s) copy[k] = v.clone();
  Net other(false);
  other.load_state(copy);
  CHECK(other.state().at("down.1.conv2.weight").to_vector() == s.at("down.1.conv2.weight").to_vector());

  auto bad = copy;
  bad.erase("down.0.gain");
  bad["down.9.conv1.weight"] = Tensor::zeros({2});
  bad["down.1.conv1.weight"] = Tensor::zeros({8, 5});
  const auto before = other.state().at("down.1.conv2.weight").to_vector();
  try {
    other.load_state(bad);
    FAIL("expected an error");
  } catch (const Error& e) {
    std::string m = e.what();
    CHECK_THAT(m, Catch::Contains("3 problem(s)"));
    CHECK_THAT(m, Catch::Contains("missing: down.0.gain [4]"));
    CHECK_THAT(m, Catch::Contains("unexpected: down.9.conv1.weight [2]"));
    CHECK_THAT(m, Catch::Contains("shape mismatch: down.1.conv1.weight is [8, 4] in the model but [8, 5] in the state"));
  }
  CHECK(other.state().at("down.1.conv2.weight").to_vector() == before);  // nothing copied
}

TEST_CASE("to(dtype) converts in place and keeps the variables", "[cpu][models]") {
  Net net(false);
  net.init_parameters(test::next_seed());
  auto before = net.named_parameters();
  const auto v32 = before[0].second.value().to_vector();
  net.to(DType::f64);
  auto after = net.named_parameters();
  for (size_t i = 0; i < before.size(); ++i) {
    CHECK(after[i].second.impl() == before[i].second.impl());
    CHECK(after[i].second.dtype() == DType::f64);
  }
  CHECK(after[0].second.value().to_vector() == v32);
  net.to(DType::f32);
  CHECK(net.named_parameters()[0].second.dtype() == DType::f32);
  net.train(false);
  CHECK_FALSE(net.is_training());
  CHECK_FALSE(net.children()[0].second->is_training());
}

TEST_CASE("bind_parameters swaps the variables under the layers and gives the old ones back", "[cpu][models]") {
  Net net(false);
  auto before = net.parameters();
  std::vector<ag::Var> fresh;
  for (auto& v : before) fresh.push_back(ag::Var(v.value().clone(), true));
  auto old = net.bind_parameters(fresh);
  CHECK(old.size() == before.size());
  CHECK(old[0].impl() == before[0].impl());
  CHECK(net.parameters()[3].impl() == fresh[3].impl());
  fresh.pop_back();
  CHECK_THROWS_AS(net.bind_parameters(fresh), Error);  // one short
  net.bind_parameters(old);
  CHECK(net.parameters()[0].impl() == before[0].impl());
}
