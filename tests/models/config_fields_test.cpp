// The training config's one list of fields (models/train/config_fields.h): the JSON it gives is
// the checkpoint metadata's as it was, every key round-trips, and every refusal (unknown key,
// wrong type, a value outside its field's range) names its key.
#include <catch2/catch.hpp>

#include <set>
#include <string>

#include "models/train/config_fields.h"

using namespace diffuse;
using Catch::Matchers::Contains;
using train::TrainConfig;

TEST_CASE("training config fields: the default config's JSON is the checkpoint metadata's, byte for byte",
          "[cpu][train]") {
  // Written by the hand-listed to_json before the fields had one list; old checkpoints hold it.
  const std::string before =
      R"({"adam_eps":1e-08,"batch":64,"beta1":0.9,"beta2":0.999,"bf16":true,"checkpoint_every":500,)"
      R"("class_cond":false,"cuda_graph":true,"dataset":"fashion-mnist","device":"auto","ema_decay":0.999,)"
      R"("ema_warmup":true,"epochs":0.0,"flip":false,"grad_clip":1.0,"label_dropout":0.1,"log_every":10,)"
      R"("loss_weight":"none","lr":0.0002,"max_nonfinite":10,"model":{},"objective":"eps",)"
      R"("out_dir":"runs/diffuse","preset":"tiny","sample_count":64,"sample_every":500,"sample_steps":50,)"
      R"("schedule":"linear","seed":0,"steps":2000,"timesteps":1000,"warmup":100,"weight_decay":0.0})";
  CHECK(TrainConfig{}.to_json().dump() == before);
  CHECK(TrainConfig::from_json(nlohmann::json::parse(before)).to_json().dump() == before);
}

TEST_CASE("training config fields: every key round-trips; the keys written only when set stay so", "[cpu][train]") {
  const nlohmann::json j = {{"preset", "fmnist"},        {"model", {{"base_channels", 16}}},
                            {"objective", "hybrid"},     {"schedule", "custom"},
                            {"timesteps", 3},            {"betas", {0.1, 0.2, 0.3}},
                            {"loss_weight", "min-snr"},  {"t_sampling", "importance"},
                            {"t_sampling_history", 3},   {"lr_schedule", "cosine"},
                            {"lr", 1e-3},                {"beta1", 0.8},
                            {"beta2", 0.99},             {"adam_eps", 1e-6},
                            {"weight_decay", 0.01},      {"warmup", 7},
                            {"grad_clip", 0.5},          {"ema_decay", 0.99},
                            {"ema_warmup", false},       {"batch", 3},
                            {"steps", 11},               {"epochs", 1.5},
                            {"class_cond", true},        {"label_dropout", 0.2},
                            {"super_res", 14},           {"super_res_aug", 0.5},
                            {"dataset", "mnist:/data"},  {"flip", true},
                            {"seed", 18446744073709551615ull}, {"device", "cuda:1"},
                            {"bf16", false},             {"cuda_graph", false},
                            {"out_dir", "runs/x"},       {"log_every", 2},
                            {"sample_every", 0},         {"checkpoint_every", 0},
                            {"sample_count", 4},         {"sample_steps", 5},
                            {"max_nonfinite", 3}};
  std::set<std::string> keys;
  train::for_each_field([&](const auto& f) { keys.insert(std::string(f.key)); });
  // Every field but the ones this objective refuses (beta_start / beta_end go with linear, variance
  // with eps, x0 and v, autoencoder without flip: the next configs take them).
  for (const std::string& k : keys) {
    INFO(k);
    if (k != "beta_start" && k != "beta_end" && k != "variance" && k != "autoencoder") CHECK(j.contains(k));
  }
  CHECK(TrainConfig::from_json(j).to_json() == j);
  const nlohmann::json ranged = {{"beta_start", 2e-4}, {"beta_end", 0.03}, {"variance", "beta"}, {"objective", "v"}};
  const nlohmann::json back = TrainConfig::from_json(ranged).to_json();
  for (const char* k : {"beta_start", "beta_end", "variance", "objective"}) CHECK(back.at(k) == ranged.at(k));
  const nlohmann::json latent = {{"autoencoder", "runs/ae/autoencoder.safetensors"}, {"preset", "latent"}};
  CHECK(TrainConfig::from_json(latent).to_json().at("autoencoder") == latent.at("autoencoder"));
  nlohmann::json flipped = latent;
  flipped["flip"] = true;
  CHECK_THROWS_WITH(TrainConfig::from_json(flipped), Contains("flip with an autoencoder"));
  for (const char* objective : {"hybrid", "vdm"}) {
    nlohmann::json bound = latent;
    bound["objective"] = objective;
    CHECK_THROWS_WITH(TrainConfig::from_json(bound), Contains("with an autoencoder"));
  }
  nlohmann::json v = latent;
  v["objective"] = "v";
  CHECK_NOTHROW(TrainConfig::from_json(v));
  const nlohmann::json plain = TrainConfig{}.to_json();
  for (const char* k : {"beta_start", "beta_end", "betas", "variance", "t_sampling", "t_sampling_history", "super_res",
                        "super_res_aug", "autoencoder"})
    CHECK_FALSE(plain.contains(k));
}

TEST_CASE("training config fields: an unknown key, a wrong type and a value out of range are refused naming the key",
          "[cpu][train]") {
  CHECK_THROWS_WITH(TrainConfig::from_json({{"stepz", 3}}), Contains("unknown key 'stepz'"));
  // A wrong type for every key.
  train::for_each_field([&](const auto& f) {
    const std::string key(f.key);
    const nlohmann::json bad = key == "model" ? nlohmann::json(3) : nlohmann::json::object({{"x", 1}});
    INFO(key);
    CHECK_THROWS_WITH(TrainConfig::from_json({{key, bad}}), Contains("training config: key '" + key + "'"));
  });
  // A value outside its range for every field that has a check: each such field must be here.
  const std::vector<std::pair<std::string, nlohmann::json>> cases = {
      {"preset", "huge"}, {"model", {1, 2}},     {"timesteps", 1},       {"beta_start", 0.0},
      {"beta_end", 1.0},  {"betas", {0.5, 1.5}}, {"lr", 0.0},            {"ema_decay", 1.0},
      {"batch", 0},       {"steps", 0},          {"epochs", -1.0},       {"label_dropout", 1.0},
      {"device", "gpu"},  {"log_every", 0},      {"sample_count", 0},    {"sample_steps", 0},
      {"super_res", -1},  {"super_res_aug", 1.5}, {"t_sampling_history", 0}};
  std::set<std::string> covered;
  for (const auto& [key, value] : cases) {
    INFO(key << " = " << value.dump());
    covered.insert(key);
    CHECK_THROWS_WITH(TrainConfig::from_json({{key, value}}), Contains("training config: key '" + key));
  }
  train::for_each_field([&](const auto& f) {
    INFO(f.key);
    if (f.check) CHECK(covered.contains(std::string(f.key)));
  });
  // validate() checks a config built in code the same way.
  TrainConfig c;
  c.log_every = 0;  // train() divides by it
  CHECK_THROWS_WITH(c.validate(), Contains("key 'log_every' = 0: must be at least 1"));
  c = TrainConfig{};
  c.betas = {0.1, 1.0};
  CHECK_THROWS_WITH(c.validate(), Contains("key 'betas'") && Contains("entry 1 is outside (0, 1)"));
  CHECK_NOTHROW(TrainConfig{}.validate());
}
