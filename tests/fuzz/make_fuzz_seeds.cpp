// make_fuzz_seeds: writes the seeds that only the library can produce, into the corpus folders
// under tests/corpus: a real (tiny) checkpoint and its broken variants, the same model as a
// diffusers folder with each scheduler configuration, an autoencoder checkpoint and a latent
// diffusion checkpoint with their broken variants, and the configs of the presets. Run from the
// repository root after changing the checkpoint format or the configs (the checkpoints' configs
// name a temporary folder, so every run rewrites them; commit only the files that changed for a
// reason):
//   build-fuzz/fuzz/make_fuzz_seeds tests/corpus
// ok_* files must load and bad_* files must be refused (tests/models/corpus_test.cpp checks both).
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "core/file_io.h"
#include "core/safetensors.h"
#include "models/interop/diffusers.h"
#include "models/nn/unet.h"
#include "models/train/autoencoder_trainer.h"
#include "models/train/trainer.h"
#include "tests/fuzz/diffusers_input.h"

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

std::string text_of(const fs::path& file) {
  const std::vector<uint8_t> b = read_file(file.string());
  return std::string(b.begin(), b.end());
}

std::string bytes_of(const SafeTensors& st) {
  std::vector<std::pair<std::string, Tensor>> list(st.tensors.begin(), st.tensors.end());
  const std::vector<uint8_t> b = serialize_safetensors(list, st.metadata);
  return std::string(b.begin(), b.end());
}

// The seeds of fuzz_diffusers (tests/fuzz/diffusers_input.h): the tiny checkpoint exported as a
// diffusers folder, with each scheduler configuration the importer takes (T = 10, as trained) and
// the refusals: betas out of range or of the wrong count, a variance and a zero-SNR rescale diffuse
// has no counterpart for, a block type it lacks, weights missing, misshapen, or far fewer than the
// config describes.
void diffusers_seeds(const fs::path& root, const std::string& ckpt, const fs::path& tmp) {
  const fs::path dir = tmp / "diffusers";
  interop::export_diffusers(ckpt, dir.string());
  const std::string config = text_of(dir / "config.json");
  const std::string weights = text_of(dir / "diffusion_pytorch_model.safetensors");
  const fs::path out = root / "diffusers";
  auto seed = [&](const std::string& name, const std::string& cfg, const nlohmann::json& sched, const std::string& w) {
    put(out / name, fuzz::join_diffusers_input(cfg, sched.is_null() ? std::string() : sched.dump(), w));
  };
  const nlohmann::json ddpm = {{"_class_name", "DDPMScheduler"}, {"num_train_timesteps", 10}};
  auto with = [&](nlohmann::json patch) {
    nlohmann::json s = ddpm;
    s.merge_patch(patch);
    return s;
  };
  std::vector<double> betas;
  for (int i = 0; i < 10; ++i) betas.push_back(0.01 + 0.03 * i * i / 81.0);
  seed("ok_exported", config, nlohmann::json::parse(text_of(dir / "scheduler_config.json")), weights);
  seed("ok_no_scheduler", config, nullptr, weights);
  seed("ok_linear_range", config, with({{"beta_start", 0.001}, {"beta_end", 0.2}, {"variance_type", "fixed_large"}}),
       weights);
  seed("ok_scaled_linear", config,
       with({{"beta_schedule", "scaled_linear"}, {"beta_start", 0.00085}, {"beta_end", 0.012}, {"clip_sample", false},
             {"timestep_spacing", "leading"}}),
       weights);
  seed("ok_trained_betas", config, with({{"trained_betas", betas}, {"prediction_type", "v_prediction"}}), weights);
  seed("ok_sigmoid", config, with({{"beta_schedule", "sigmoid"}, {"variance_type", "fixed_small_log"}}), weights);
  seed("ok_cosine", config, with({{"beta_schedule", "squaredcos_cap_v2"}, {"prediction_type", "sample"}}), weights);
  seed("bad_beta_end", config, with({{"beta_end", 1.5}}), weights);
  const std::vector<double> nine(betas.begin() + 1, betas.end());
  seed("bad_trained_betas_count", config, with({{"trained_betas", nine}}), weights);
  std::vector<double> zero = betas;
  zero[4] = 0;
  seed("bad_trained_betas_zero", config, with({{"trained_betas", zero}}), weights);
  seed("bad_variance", config, with({{"variance_type", "fixed_large_log"}}), weights);
  seed("bad_zero_snr", config, with({{"rescale_betas_zero_snr", true}}), weights);
  nlohmann::json block = nlohmann::json::parse(config);
  block["down_block_types"][0] = "SkipDownBlock2D";
  seed("bad_block_type", block.dump(), ddpm, weights);
  nlohmann::json larger = nlohmann::json::parse(config);
  larger["block_out_channels"] = {4096};
  seed("bad_larger_model", larger.dump(), ddpm, weights);
  SafeTensors st = read_safetensors((dir / "diffusion_pytorch_model.safetensors").string());
  SafeTensors missing = st;
  missing.tensors.erase("conv_in.weight");
  seed("bad_missing_tensor", config, ddpm, bytes_of(missing));
  SafeTensors reshaped = st;
  Tensor& w = reshaped.tensors.at("conv_in.weight");
  w = w.reshape({w.numel()});
  seed("bad_wrong_shape", config, ddpm, bytes_of(reshaped));
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
    diffusers_seeds(root, ckpt, tmp);
    SafeTensors st = read_safetensors(ckpt);
    // Without the optimizer and trainer state, which a load for sampling never reads: half the
    // header to parse, so the fuzzer spends its executions on what the loader checks.
    auto model_only = [](SafeTensors& s) {
      for (auto it = s.tensors.begin(); it != s.tensors.end();)
        it = it->first.rfind("opt.", 0) == 0 || it->first.rfind("trainer.", 0) == 0 ? s.tensors.erase(it) : std::next(it);
    };
    model_only(st);
    put_st(root / "checkpoint" / "ok_tiny.safetensors", st);

    // The same model with cross-attention: a context of 2 tokens of 4 channels over the words of
    // two class names, a SpatialTransformer in the middle block. Its config carries the class
    // names and the vocabulary, which the loader reads back; a vocabulary of one more word than
    // the weights have rows for must be refused.
    train::TrainConfig cc = tc;  // a copy: the seeds below start from the plain model again
    cc.model["context_dim"] = 4;
    cc.model["context_tokens"] = 2;
    cc.model["class_names"] = {"Ankle boot", "T-shirt/top"};
    cc.out_dir = (tmp / "context").string();
    SafeTensors ctx = read_safetensors(train::train(cc, false));
    fs::remove_all(tmp);
    model_only(ctx);
    put_st(root / "checkpoint" / "ok_context.safetensors", ctx);
    SafeTensors more_words = ctx;
    nlohmann::json cu = nlohmann::json::parse(more_words.metadata.at("unet"));
    cu["vocabulary"].push_back("sandal");
    more_words.metadata["unet"] = cu.dump();
    put_st(root / "checkpoint" / "bad_context_vocabulary.safetensors", more_words);

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

    // ---- a super-resolution checkpoint (models/train/super_res.h): 4x4 images conditioned on
    // their 2x2 area averages (conv_in reads 2 channels; aug.fc1, aug.fc2 embed the level).
    train::TrainConfig sr = tc;
    sr.class_cond = false;
    sr.super_res = 2;
    sr.super_res_aug = 0.3;
    sr.dataset = write_idx(tmp / "data", 4);
    sr.out_dir = (tmp / "sr").string();
    train::TrainConfig sr28 = sr;  // the configs' seeds are read at 28x28 (corpus_test.cpp)
    sr28.super_res = 14;
    put(root / "train_config" / "ok_super_res.json", sr28.to_json().dump());
    put(root / "unet_config" / "ok_super_res.json", sr.unet_config(4, 1, 0).to_json().dump());
    SafeTensors srst = read_safetensors(train::train(sr, false));
    fs::remove_all(tmp);
    for (auto it = srst.tensors.begin(); it != srst.tensors.end();)
      it = it->first.rfind("opt.", 0) == 0 || it->first.rfind("trainer.", 0) == 0 ? srst.tensors.erase(it) : std::next(it);
    put_st(root / "checkpoint" / "ok_super_res.safetensors", srst);
    SafeTensors disagree = srst;  // the training config's low resolution is not the UNet's
    nlohmann::json dc = nlohmann::json::parse(disagree.metadata.at("config"));
    dc["super_res"] = 1;
    disagree.metadata["config"] = dc.dump();
    put_st(root / "checkpoint" / "bad_super_res_mismatch.safetensors", disagree);
    SafeTensors plain = srst;  // an ordinary UNet's config over a super-resolution model's weights
    nlohmann::json pu = nlohmann::json::parse(plain.metadata.at("unet"));
    pu.erase("low_res_channels");
    pu.erase("low_res_size");
    plain.metadata["unet"] = pu.dump();
    nlohmann::json pc = nlohmann::json::parse(plain.metadata.at("config"));
    pc.erase("super_res");
    pc.erase("super_res_aug");
    plain.metadata["config"] = pc.dump();
    put_st(root / "checkpoint" / "bad_super_res_as_plain.safetensors", plain);
    // ---- latent diffusion: an autoencoder checkpoint (4x4x1 images -> 2x2x2 latents, 2 and 4
    // channels in one group) and a latent model trained on it, each with its refusals.
    train::AutoencoderTrainConfig ac;
    ac.model = {{"base_channels", 2}, {"channel_mult", {1, 2}}, {"latent_channels", 2}, {"groups", 1}};
    ac.dataset = write_idx(tmp / "data", 4);
    ac.batch = 2;
    ac.steps = 1;
    ac.checkpoint_every = 0;
    ac.eval_count = 0;
    ac.out_dir = (tmp / "ae").string();
    ac.device = "cpu";
    const std::string ae = train::train_autoencoder(ac, false);
    train::TrainConfig lc = tc;
    lc.autoencoder = ae;
    lc.model = {{"base_channels", 4}, {"channel_mult", {1}}, {"groups", 2}, {"attention_resolutions", nlohmann::json::array()}};
    lc.out_dir = (tmp / "latent").string();
    const std::string latent = train::train(lc, false);
    SafeTensors ast = read_safetensors(ae);
    SafeTensors lst = read_safetensors(latent);
    fs::remove_all(tmp);
    for (SafeTensors* s : {&ast, &lst})
      for (auto it = s->tensors.begin(); it != s->tensors.end();)
        it = it->first.rfind("opt.", 0) == 0 || it->first.rfind("trainer.", 0) == 0 ? s->tensors.erase(it) : std::next(it);
    const fs::path ad = root / "autoencoder";
    put_st(ad / "ok_tiny.safetensors", ast);
    SafeTensors a_missing = ast;
    a_missing.tensors.erase("model.decoder.conv_out.weight");
    put_st(ad / "bad_missing_tensor.safetensors", a_missing);
    SafeTensors a_renamed = ast;
    a_renamed.tensors["model.encoder.conv_in.weights"] = a_renamed.tensors.at("model.encoder.conv_in.weight");
    a_renamed.tensors.erase("model.encoder.conv_in.weight");
    put_st(ad / "bad_wrong_name.safetensors", a_renamed);
    SafeTensors a_reshaped = ast;
    Tensor& aw = a_reshaped.tensors.at("model.encoder.conv_out.weight");
    aw = aw.reshape({aw.numel()});
    put_st(ad / "bad_wrong_shape.safetensors", a_reshaped);
    SafeTensors a_other = ast;
    nlohmann::json acfg = nlohmann::json::parse(a_other.metadata.at("autoencoder"));
    acfg["base_channels"] = 4096;  // far larger than the weights: refused before it is allocated
    a_other.metadata["autoencoder"] = acfg.dump();
    put_st(ad / "bad_other_config.safetensors", a_other);
    SafeTensors a_diffusion = st;  // a diffusion checkpoint is not an autoencoder
    put_st(ad / "bad_diffusion_checkpoint.safetensors", a_diffusion);
    SafeTensors a_no_meta = ast;
    a_no_meta.metadata.clear();
    put_st(ad / "bad_no_metadata.safetensors", a_no_meta);

    put_st(root / "checkpoint" / "ok_latent.safetensors", lst);
    SafeTensors l_missing = lst;  // the stored autoencoder lacks a weight
    l_missing.tensors.erase("autoencoder.decoder.conv_in.weight");
    put_st(root / "checkpoint" / "bad_latent_missing_autoencoder_tensor.safetensors", l_missing);
    SafeTensors l_scale = lst;
    l_scale.metadata["latent_scale"] = "-0.5";
    put_st(root / "checkpoint" / "bad_latent_scale.safetensors", l_scale);
    SafeTensors l_shape = lst;  // a UNet for 4x4 inputs (the same weights) over 2x2 latents
    nlohmann::json ucfg = nlohmann::json::parse(l_shape.metadata.at("unet"));
    ucfg["image_size"] = 4;
    l_shape.metadata["unet"] = ucfg.dump();
    put_st(root / "checkpoint" / "bad_latent_other_size.safetensors", l_shape);
    SafeTensors l_no_ae = lst;  // the config names an autoencoder, none is stored
    l_no_ae.metadata.erase("autoencoder");
    put_st(root / "checkpoint" / "bad_latent_no_autoencoder.safetensors", l_no_ae);
  } catch (const Error& e) {
    std::fprintf(stderr, "make_fuzz_seeds: %s\n", e.what());
    return 1;
  }
  return 0;
}
