// make_fuzz_seeds: writes the seeds that only the library can produce, into the corpus folders
// under tests/corpus: a real (tiny) checkpoint and its broken variants, and the configs of the
// presets. Run from the repository root after changing the checkpoint format or the configs:
//   build-fuzz/fuzz/make_fuzz_seeds tests/corpus
// ok_* files must load and bad_* files must be refused (tests/models/corpus_test.cpp checks both).
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "core/file_io.h"
#include "core/safetensors.h"
#include "models/nn/unet.h"
#include "models/train/trainer.h"

using namespace diffuse;
namespace fs = std::filesystem;

namespace {

void put(const fs::path& file, const std::string& text) {
  fs::create_directories(file.parent_path());
  write_file_atomic(file.string(), text.data(), text.size());
  std::printf("%s\n", file.c_str());
}

void put_st(const fs::path& file, const SafeTensors& st) {
  std::vector<std::pair<std::string, Tensor>> list(st.tensors.begin(), st.tensors.end());
  std::vector<uint8_t> b = serialize_safetensors(list, st.metadata);
  put(file, std::string(b.begin(), b.end()));
}

// An IDX pair of n random-looking 4x4 images with labels 0..1, in dir.
std::string write_idx(const fs::path& dir, int n) {
  std::string img = {0, 0, 8, 3, 0, 0, 0, static_cast<char>(n), 0, 0, 0, 4, 0, 0, 0, 4};
  for (int i = 0; i < n * 16; ++i) img.push_back(static_cast<char>((i * 97 + 13) & 255));
  std::string lab = {0, 0, 8, 1, 0, 0, 0, static_cast<char>(n)};
  for (int i = 0; i < n; ++i) lab.push_back(static_cast<char>(i & 1));
  put(dir / "images-idx3-ubyte", img);
  put(dir / "labels-idx1-ubyte", lab);
  return "idx:" + (dir / "images-idx3-ubyte").string() + "," + (dir / "labels-idx1-ubyte").string();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: make_fuzz_seeds <tests/corpus>\n");
    return 2;
  }
  const fs::path root = argv[1];
  try {
    // ---- configs: every preset as the checkpoint metadata stores it, and the CLI's overrides
    for (const std::string& p : nn::UNetConfig::preset_names())
      put(root / "unet_config" / ("ok_" + p + ".json"), nn::UNetConfig::preset(p).to_json().dump());
    train::TrainConfig tc;
    put(root / "train_config" / "ok_default.json", tc.to_json().dump());

    // ---- a checkpoint of the smallest model that has every kind of layer: one level of 4x4
    // images, 4 channels in 2 groups, one ResBlock, the middle block's attention, class labels.
    const fs::path tmp = fs::temp_directory_path() / ("make_fuzz_seeds." + std::to_string(::getpid()));
    tc.preset = "tiny";
    tc.model = {{"base_channels", 4}, {"channel_mult", {1}}, {"groups", 2}, {"attention_resolutions", nlohmann::json::array()}};
    tc.dataset = write_idx(tmp / "data", 4);
    tc.class_cond = true;
    tc.batch = 2;
    tc.steps = 1;
    tc.timesteps = 10;
    tc.sample_every = 0;
    tc.checkpoint_every = 0;
    tc.sample_count = 1;
    tc.sample_steps = 1;
    tc.device = "cpu";
    tc.out_dir = (tmp / "run").string();
    put(root / "train_config" / "ok_tiny_run.json", tc.to_json().dump());
    put(root / "unet_config" / "ok_tiny_run.json", tc.unet_config(4, 1, 2).to_json().dump());
    const std::string ckpt = train::train(tc, false);
    SafeTensors st = read_safetensors(ckpt);
    fs::remove_all(tmp);
    // Without the optimizer and trainer state, which a load for sampling never reads: half the
    // header to parse, so the fuzzer spends its executions on what the loader checks.
    for (auto it = st.tensors.begin(); it != st.tensors.end();)
      it = it->first.rfind("opt.", 0) == 0 || it->first.rfind("trainer.", 0) == 0 ? st.tensors.erase(it) : std::next(it);
    put_st(root / "checkpoint" / "ok_tiny.safetensors", st);

    // The refusals a loader must give for a file that is a checkpoint, but not of this model.
    SafeTensors missing = st;  // a weight is missing
    missing.tensors.erase("ema.conv_in.weight");
    put_st(root / "checkpoint" / "bad_missing_tensor.safetensors", missing);
    SafeTensors renamed = st;  // a weight under a name the model does not have
    renamed.tensors["ema.conv_in.weights"] = renamed.tensors.at("ema.conv_in.weight");
    renamed.tensors.erase("ema.conv_in.weight");
    put_st(root / "checkpoint" / "bad_wrong_name.safetensors", renamed);
    SafeTensors reshaped = st;  // a weight of the wrong shape
    Tensor& w = reshaped.tensors.at("ema.conv_in.weight");
    w = w.reshape({w.numel()});
    put_st(root / "checkpoint" / "bad_wrong_shape.safetensors", reshaped);
    SafeTensors other = st;  // the config of another model than the weights
    nlohmann::json u = nlohmann::json::parse(other.metadata.at("unet"));
    u["base_channels"] = 8;
    other.metadata["unet"] = u.dump();
    put_st(root / "checkpoint" / "bad_other_config.safetensors", other);
    SafeTensors no_meta = st;  // plain safetensors, not a checkpoint
    no_meta.metadata.clear();
    put_st(root / "checkpoint" / "bad_no_metadata.safetensors", no_meta);
  } catch (const Error& e) {
    std::fprintf(stderr, "make_fuzz_seeds: %s\n", e.what());
    return 1;
  }
  return 0;
}
