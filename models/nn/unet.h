// models/nn/unet.h: the diffusion UNet of DDPM (Ho et al. 2020) and its improved variants
// (Nichol & Dhariwal 2021, "Improved DDPM"; Dhariwal & Nichol 2021, "ADM"), as one configurable
// model, and the noisy classifier for classifier guidance built from its encoder half.
//
// Shape of the network (L = channel_mult.size() levels, ch = base_channels):
//   emb   = time.fc2(SiLU(time.fc1(timestep_embedding(t, ch))))    (+ label_emb(label))
//           (+ aug.fc2(SiLU(aug.fc1(timestep_embedding(s, ch)))) for a super-resolution model)
//   ctx   = context.tokens(ids) + context.positions   (a cross-attention model: context_dim > 0)
//   h     = conv_in(x)                                                 -> skip
//           (a super-resolution model: conv_in(concat(x, upsample(z_low))), see LowRes below)
//   down.i: num_res_blocks x [ResBlock (+ AttentionBlock at attention resolutions)]  -> skip each
//           then, except at the last level, downsample (conv stride 2 or ResBlock down) -> skip
//   mid:  ResBlock, AttentionBlock, ResBlock
//   up.i (i = L-1 .. 0): num_res_blocks+1 x [concat(h, skip.pop()); ResBlock (+ Attention)]
//           then, except at level 0, upsample (nearest + conv, or ResBlock up)
//   out   = out_conv(SiLU(out_norm(h)))     out_conv zero-initialised
// A cross-attention model (context_dim > 0, LDM's use_spatial_transformer) has a SpatialTransformer
// attending to ctx in place of the AttentionBlock at each size of context_resolutions (xattn.<j>
// instead of attn.<j>) and in the middle (mid.xattn instead of mid.attn), and no label_emb: a
// label conditions through its class name's words.
// Parameter names (docs/models.md): time.fc1, time.fc2, label_emb, aug.fc1, aug.fc2, context.tokens,
// context.positions, conv_in, down.<i>.res.<j>, down.<i>.attn.<j> (or xattn.<j>),
// down.<i>.downsample, mid.res1, mid.attn (or mid.xattn), mid.res2, up.<i>.res.<j>,
// up.<i>.attn.<j> (or xattn.<j>), up.<i>.upsample, out_norm, out_conv; then the layer's own
// names (layers.h), e.g. down.1.res.0.conv1.weight.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/enum_names.h"
#include "models/nn/layers.h"
#include "models/nn/module.h"

namespace diffuse::nn {

class UNetDownLevel;
class UNetUpLevel;
class UNetMid;
class ContextEncoder;

// The words of a prompt or a class name: ASCII lower-cased, split at white space and '/', empty
// pieces dropped ("T-shirt/top" -> "t-shirt", "top").
std::vector<std::string> prompt_words(std::string_view text);
// The vocabulary of a cross-attention model: the words of the class names, each once, in the order
// they first appear.
std::vector<std::string> context_vocabulary(const std::vector<std::string>& class_names);

// The sinusoidal features of t (UNetConfig::time_embedding): ADM's [cos, sin] or DDPM's [sin, cos].
enum class TimeEmbeddingKind { adm, ddpm };
inline constexpr EnumName<TimeEmbeddingKind> kTimeEmbeddingNames[] = {{TimeEmbeddingKind::adm, "adm"},
                                                                      {TimeEmbeddingKind::ddpm, "ddpm"}};
constexpr std::span<const EnumName<TimeEmbeddingKind>> enum_table(TimeEmbeddingKind) { return kTimeEmbeddingNames; }

struct UNetConfig {
  int in_channels = 3;
  int out_channels = 3;  // the model's own output; learn_sigma doubles it (see output_channels())
  int image_size = 32;
  int base_channels = 128;
  std::vector<int> channel_mult = {1, 2, 2, 2};
  int num_res_blocks = 2;
  std::vector<int> attention_resolutions = {16};  // feature-map sizes (H) that get attention
  int num_heads = 1;        // used when head_channels <= 0
  int head_channels = -1;   // > 0: heads = channels / head_channels (ADM's num_head_channels)
  float dropout = 0.f;
  int groups = 32;
  // Every GroupNorm's epsilon (ResBlocks, attention, the output norm). diffusers' google/ddpm-*
  // models use 1e-6; double so that a config's JSON value reads back exactly.
  double norm_eps = 1e-5;
  // The stride-2 downsampling conv (conv_resample, not resblock_updown): 1 pads every side by 1;
  // 0 is diffusers' Downsample2D(padding=0) of the google/ddpm-* models, one zero row at the
  // bottom and one zero column at the right, then an unpadded conv (the output pixel o reads
  // input rows 2o..2o+2 instead of 2o-1..2o+1).
  int downsample_padding = 1;
  int num_classes = 0;      // 0: unconditional; else an embedding of num_classes + 1 rows (the
                            // last, index num_classes, is the null label for classifier-free guidance)
  // Super-resolution (a cascade's second stage; Saharia et al. 2021, SR3; Ho et al. 2021, CDM):
  // low_res_channels > 0 conditions the model on a low_res_size x low_res_size image of that many
  // channels, upsampled by nearest neighbour to image_size and concatenated to x before conv_in,
  // and on its augmentation level s (an embedding like the timestep's, added to it). image_size
  // must be low_res_size times a power of two (2, 4, ...). 0 and 0: an ordinary model. Both are
  // written to the JSON only when set.
  int low_res_channels = 0;
  int low_res_size = 0;
  bool scale_shift_norm = false;
  bool resblock_updown = false;
  bool rescale_residual = false;
  bool learn_sigma = false;  // output 2 * out_channels: epsilon and the variance interpolation v
  bool conv_resample = true; // downsample/upsample with a conv (else avg pool / plain nearest)
  InitScheme init = InitScheme::pytorch;  // module.h; "pytorch" or "ddpm" in the JSON
  // Sinusoidal features of t: adm ([cos, sin], frequencies exp(-ln(1e4) i / half)) or ddpm
  // ([sin, cos], exp(-ln(1e4) i / (half - 1))). kernels/time_embedding.h.
  TimeEmbeddingKind time_embedding = TimeEmbeddingKind::adm;
  // Cross-attention conditioning (Rombach et al. 2022, sec. 3.3). context_dim > 0: the model
  // attends to a context of context_tokens learned word embeddings (context_dim wide) through a
  // SpatialTransformer at each size in context_resolutions (instead of an AttentionBlock there,
  // whether or not attention_resolutions lists it) and in the middle block. The words come from
  // the class names: label i conditions on the words of class_names[i], the null label on an
  // empty context (every token the pad, id 0). vocabulary: the known words, word k has token id
  // k + 1; stored, with the class names, so a checkpoint tokenises on its own. All five keys are
  // written only when context_dim > 0.
  int context_dim = 0;
  std::vector<int> context_resolutions;
  int context_tokens = 8;
  std::vector<std::string> class_names;
  std::vector<std::string> vocabulary;

  int output_channels() const { return learn_sigma ? 2 * out_channels : out_channels; }
  bool super_res() const { return low_res_channels > 0; }
  int low_res_factor() const { return super_res() ? image_size / low_res_size : 1; }  // a power of two
  int emb_channels() const { return 4 * base_channels; }
  bool has_context() const { return context_dim > 0; }
  // A prompt's token ids, context_tokens of them (the words' ids, then pads): a word outside the
  // vocabulary or more than context_tokens words is refused, naming the known words. "" gives the
  // null context.
  std::vector<int64_t> tokenize(std::string_view prompt) const;
  void validate() const;  // throws with the offending key
  void validate_context() const;  // the cross-attention keys (part of validate)

  nlohmann::json to_json() const;
  // Unknown keys are an error (a typo would otherwise silently train a different model); missing
  // keys keep their defaults.
  static UNetConfig from_json(const nlohmann::json& j);

  // Named presets (docs/models.md):
  //   ddpm-cifar10  DDPM's CIFAR-10 model, 35.7M parameters
  //   fmnist        28x28x1 on a GPU
  //   tiny          28x28x1 for CPU training
  //   imagenet64    improved DDPM's ImageNet 64x64 model (learned sigma, scale-shift, updown)
  //   latent        7x7x4 latents of the default autoencoder (latent diffusion on the cpu)
  static UNetConfig preset(const std::string& name);
  static std::vector<std::string> preset_names();
};

// A super-resolution model's conditioning: the augmented low-resolution image z_s (B, low_res_size,
// low_res_size, low_res_channels), a Var so that a gradient reaches it, and its augmentation level
// s (B) f32, on the same scale as the timestep t (the network's time input: s T - 1 for level s in
// [0, 1] of a T-step schedule, as make_denoiser maps t).
struct LowRes {
  ag::Var image;
  Tensor level;
  bool defined() const { return image.defined(); }
};

// Nearest-neighbour upsampling by `factor` (a power of two) and area averaging by it, (B, H, W, C):
// the resampling of a super-resolution model's conditioning. area_downsample(nearest_upsample(x))
// is x exactly: the model sees each low-resolution pixel's value on the pixels it averages.
ag::Var nearest_upsample(const ag::Var& x, int factor);
Tensor area_downsample(const Tensor& x, int factor);

class UNet : public Module {
 public:
  // Builds the tree and draws the parameters from `seed` with cfg.init.
  explicit UNet(const UNetConfig& cfg, uint64_t seed = 0);
  // Builds the tree with every parameter 0, drawing nothing: for a model whose parameters
  // load_state() is about to replace, all of them (it refuses a state with one missing), as
  // train::load_checkpoint does. Drawing them would be wasted start-up time (Philox for every
  // weight: 35.7M of them for ddpm-cifar10).
  struct Undrawn {};
  UNet(const UNetConfig& cfg, Undrawn);

  // x (B, H, W, in_channels) with H = W = image_size; t (B) f32 timesteps on DDPM's scale
  // (0..1000, what the time embedding expects); labels (B) i64 in [0, num_classes] or undefined
  // (then the null label num_classes when the model is class-conditional). A cross-attention
  // model also takes token ids (B, context_tokens) i64 in [0, vocabulary size] as `labels`
  // (tokenize()): a prompt; a label is the same as its class name's tokens.
  // low: a super-resolution model's conditioning (LowRes), required by one and refused by any
  // other. Returns (B, H, W, output_channels()).
  // Labels on the cpu are checked here, on the host. Labels on a GPU are taken as label_ids() made
  // them, checked by the caller, and read on the device only: a training step captured as a CUDA
  // graph reads no labels on the host (an id out of range there gives NaN rows, not an error).
  ag::Var forward(const ag::Var& x, const Tensor& t, const Tensor& labels = {}, const LowRes& low = {});
  // The labels as the network reads them, checked on the host, on the cpu: a class-conditional
  // model's ids (B) i64 in [0, num_classes] (undefined labels: the null label), a cross-attention
  // model's token ids (B, context_tokens); undefined for an unconditional model (which refuses
  // labels). forward() on a GPU takes them as they are.
  Tensor label_ids(const Tensor& labels, int64_t B) const;

  const UNetConfig& config() const { return cfg_; }
  // Dropout masks are drawn from (dropout_seed, a per-call counter): the same seed and call
  // sequence give the same masks.
  void set_dropout_seed(uint64_t seed) { dropout_seed_ = seed; calls_ = 0; }

 private:
  UNet(const UNetConfig& cfg, uint64_t seed, bool draw);
  // A cross-attention model's token ids (B, context_tokens) on the cpu from `labels` (forward()).
  Tensor context_ids(const Tensor& labels, int64_t B) const;
  UNetConfig cfg_;
  std::shared_ptr<Linear> time_fc1_, time_fc2_;
  std::shared_ptr<Embedding> label_emb_;
  std::shared_ptr<Linear> aug_fc1_, aug_fc2_;  // super-resolution: the augmentation level's MLP
  std::shared_ptr<ContextEncoder> context_;
  std::shared_ptr<Conv2d> conv_in_;
  std::shared_ptr<ModuleList<UNetDownLevel>> down_;
  std::shared_ptr<UNetMid> mid_;
  std::shared_ptr<ModuleList<UNetUpLevel>> up_;
  std::shared_ptr<GroupNorm> out_norm_;
  std::shared_ptr<Conv2d> out_conv_;
  uint64_t dropout_seed_ = 0x5eed;
  uint64_t calls_ = 0;
};

// The noisy-image classifier of classifier guidance (ADM, sec. 4): the UNet's encoder (conv_in,
// the down levels, the middle block) then GroupNorm, SiLU, global average pool and a linear head.
// Timestep-conditioned like the UNet; label_emb is never built (num_classes is the head's size).
class EncoderClassifier : public Module {
 public:
  EncoderClassifier(const UNetConfig& cfg, int num_classes, uint64_t seed = 0);
  ag::Var forward(const ag::Var& x, const Tensor& t);  // -> logits (B, num_classes)
  // The pooled features the head reads, (B, C): what a feature distance compares.
  ag::Var features(const ag::Var& x, const Tensor& t);
  ag::Var head(const ag::Var& features) { return head_->forward(features); }  // features -> logits
  const UNetConfig& config() const { return cfg_; }
  int num_classes() const { return num_classes_; }
  void set_dropout_seed(uint64_t seed) { dropout_seed_ = seed; calls_ = 0; }

 private:
  UNetConfig cfg_;
  int num_classes_;
  std::shared_ptr<Linear> time_fc1_, time_fc2_;
  std::shared_ptr<Conv2d> conv_in_;
  std::shared_ptr<ModuleList<UNetDownLevel>> down_;
  std::shared_ptr<UNetMid> mid_;
  std::shared_ptr<GroupNorm> out_norm_;
  std::shared_ptr<Linear> head_;
  uint64_t dropout_seed_ = 0x5eed;
  uint64_t calls_ = 0;
};

}  // namespace diffuse::nn
