// The fuzzing seed corpus (tests/corpus, written by tests/corpus/make_corpus.py) doubles as a
// regression test: every ok_* file loads with its reader and every bad_* file is refused with a
// diffuse::Error that names it.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <filesystem>

#include "core/file_io.h"
#include "core/image_io.h"
#include "core/safetensors.h"
#include "models/data/dataset.h"
#include "models/nn/unet.h"
#include "models/train/autoencoder_trainer.h"
#include "models/train/trainer.h"

using namespace diffuse;
namespace fs = std::filesystem;

namespace {

// The corpus lives in the source tree; tests run from the build tree. Look upward from the
// executable and from the working directory (or take DIFFUSE_SOURCE_DIR).
std::string corpus_dir() {
  std::vector<fs::path> starts;
  if (const char* e = std::getenv("DIFFUSE_SOURCE_DIR")) starts.emplace_back(e);
  std::error_code ec;
  starts.push_back(fs::read_symlink("/proc/self/exe", ec).parent_path());
  starts.push_back(fs::current_path(ec));
  for (fs::path p : starts)
    for (; !p.empty(); p = p.parent_path()) {
      if (fs::exists(p / "tests/corpus/make_corpus.py", ec)) return (p / "tests/corpus").string();
      if (p == p.parent_path()) break;
    }
  return {};
}

// Runs `load` on every file of the folder: ok_* must load, bad_* must throw an Error naming it
// (or, with names_path false, any diffuse::Error: a config parser never sees a path).
template <class F>
void check_folder(const std::string& sub, F&& load, bool names_path = true) {
  const std::string root = corpus_dir();
  INFO("tests/corpus must be found (run from the build folder of a checkout, or set DIFFUSE_SOURCE_DIR)");
  REQUIRE(!root.empty());
  int ok = 0, bad = 0;
  for (const auto& e : fs::directory_iterator(root + "/" + sub)) {
    const std::string name = e.path().filename().string(), path = e.path().string();
    INFO(path);
    if (name.rfind("ok_", 0) == 0) {
      CHECK_NOTHROW(load(path));
      ++ok;
    } else if (name.rfind("bad_", 0) == 0) {
      if (names_path) CHECK_THROWS_WITH(load(path), Catch::Contains(path));
      else CHECK_THROWS_AS(load(path), Error);
      ++bad;
    }
  }
  CHECK(ok >= 1);
  CHECK(bad >= 1);
}

}  // namespace

TEST_CASE("corpus: safetensors", "[cpu][data][corpus]") {
  check_folder("safetensors", [](const std::string& p) { read_safetensors(p); });
}

TEST_CASE("corpus: idx", "[cpu][data][corpus]") {
  check_folder("idx", [](const std::string& p) {
    std::vector<uint8_t> b = data::read_maybe_gzip(p);
    if (p.find("labels") != std::string::npos) data::parse_idx_labels(b.data(), b.size(), p);
    else data::parse_idx_images(b.data(), b.size(), p);
  });
}

TEST_CASE("corpus: cifar", "[cpu][data][corpus]") {
  check_folder("cifar", [](const std::string& p) { data::load_cifar10(p); });
}

TEST_CASE("corpus: images", "[cpu][data][corpus]") {
  check_folder("images", [](const std::string& p) { read_image(p, 3); });
}

// The seeds of tests/fuzz/fuzz_checkpoint (written by tests/fuzz/make_fuzz_seeds): a real tiny
// checkpoint loads with EMA and with live weights; wrong names, wrong shapes, a missing tensor, a
// config of another model and plain safetensors are refused naming the file.
TEST_CASE("corpus: checkpoint", "[cpu][data][corpus]") {
  check_folder("checkpoint", [](const std::string& p) {
    train::load_checkpoint(p, Device::cpu(), true);
    train::load_checkpoint(p, Device::cpu(), false);
  });
}

// The seeds of tests/fuzz/fuzz_autoencoder: a tiny autoencoder checkpoint loads; a missing, a
// renamed and a misshapen weight, a config far larger than its weights, a diffusion checkpoint and
// plain safetensors are refused naming the file. (A latent diffusion checkpoint, with the
// autoencoder inside, is in checkpoint/.)
TEST_CASE("corpus: autoencoder", "[cpu][data][corpus]") {
  check_folder("autoencoder", [](const std::string& p) { train::load_autoencoder(p, Device::cpu()); });
}

namespace {
nlohmann::json read_json(const std::string& p) {
  std::vector<uint8_t> b = read_file(p);
  return nlohmann::json::parse(b.begin(), b.end());
}
}  // namespace

TEST_CASE("corpus: configs", "[cpu][data][corpus]") {
  check_folder("unet_config", [](const std::string& p) { nn::UNetConfig::from_json(read_json(p)); }, false);
  check_folder("train_config", [](const std::string& p) {
    train::TrainConfig::from_json(read_json(p)).unet_config(28, 1, 10);
  }, false);
}

// The config JSON is what checkpoints and model files hold, so its text is pinned: each preset
// writes exactly the committed ok_<preset>.json (make_fuzz_seeds wrote those from to_json().dump()),
// and every config the C++ code wrote (the seeds, a checkpoint's "unet" metadata) reads and writes
// back byte for byte. The enumerations (init, time_embedding) travel as their names.
TEST_CASE("corpus: the UNet config JSON text is stable", "[cpu][data][corpus]") {
  const std::string root = corpus_dir();
  REQUIRE(!root.empty());
  auto text_of = [](const std::string& p) {
    std::vector<uint8_t> b = read_file(p);
    return std::string(b.begin(), b.end());
  };
  auto round_trip = [](const std::string& text) {
    return nn::UNetConfig::from_json(nlohmann::json::parse(text)).to_json().dump();
  };
  for (const std::string& name : nn::UNetConfig::preset_names()) {
    INFO(name);
    const std::string text = text_of(root + "/unet_config/ok_" + name + ".json");
    CHECK(nn::UNetConfig::preset(name).to_json().dump() == text);
    CHECK(round_trip(text) == text);
  }
  CHECK(nn::UNetConfig::preset("ddpm-cifar10").init == nn::InitScheme::ddpm);
  CHECK(nn::UNetConfig::preset("ddpm-cifar10").time_embedding == nn::TimeEmbeddingKind::ddpm);
  for (const char* name : {"ok_tiny_run.json", "ok_super_res.json"}) {
    INFO(name);
    const std::string text = text_of(root + "/unet_config/" + name);
    CHECK(round_trip(text) == text);
  }
  const std::string unet = read_safetensors(root + "/checkpoint/ok_tiny.safetensors").metadata.at("unet");
  CHECK(round_trip(unet) == unet);
  // Each enumeration key refuses a name outside its table, naming the key and the valid names,
  // and a value that is not a string.
  const nlohmann::json base = nlohmann::json::parse(unet);
  for (const auto& [key, valid] : {std::pair<std::string, std::string>{"init", "pytorch or ddpm"},
                                   std::pair<std::string, std::string>{"time_embedding", "adm or ddpm"}}) {
    INFO(key);
    nlohmann::json j = base;
    j[key] = "xavier";
    CHECK_THROWS_WITH(nn::UNetConfig::from_json(j),
                      Catch::Contains("unknown " + key + " 'xavier'") && Catch::Contains(valid));
    j[key] = 1;
    CHECK_THROWS_WITH(nn::UNetConfig::from_json(j), Catch::Contains("'" + key + "'"));
  }
}
