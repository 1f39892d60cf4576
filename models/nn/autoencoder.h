// models/nn/autoencoder.h: the KL-regularised autoencoder of latent diffusion (Rombach et al. 2022,
// "High-Resolution Image Synthesis with Latent Diffusion Models", sec. 3.1 and appendix G: the
// "KL-reg" first stage), built from the UNet's layers (layers.h) without time conditioning.
//
// Shape (L = channel_mult.size() levels, ch = base_channels; L - 1 halvings, f = 2^(L-1)):
//   encoder: conv_in -> down.i: num_res_blocks x ResBlock, then (i < L-1) a stride-2 conv
//            -> mid: ResBlock, AttentionBlock, ResBlock -> SiLU(norm_out) -> conv_out
//            -> 2 x latent_channels: the posterior's mean and log-variance
//   decoder: conv_in (latent_channels -> ch * mult[L-1]) -> mid: ResBlock, AttentionBlock, ResBlock
//            -> up.i (i = L-1 .. 0): (num_res_blocks + 1) x ResBlock, then (i > 0) nearest 2x + conv
//            -> SiLU(norm_out) -> conv_out -> in_channels
// An image (B, H, W, C) in [-1, 1] maps to a Gaussian posterior q(z | x) = N(mean, diag(exp(logvar)))
// over latents (B, H/f, W/f, latent_channels); decode(z) maps a latent back to an image.
// LDM's quant_conv / post_quant_conv (1x1 convs between the two halves) are left out: conv_out
// and the decoder's conv_in already end and start at the latent.
//
// Parameter names (docs/models.md): encoder.conv_in, encoder.down.<i>.res.<j>,
// encoder.down.<i>.downsample.conv, encoder.mid.{res1,attn,res2}, encoder.norm_out,
// encoder.conv_out; decoder.conv_in, decoder.mid.{res1,attn,res2}, decoder.up.<i>.res.<j>,
// decoder.up.<i>.upsample.conv, decoder.norm_out, decoder.conv_out; then the layer's own
// (layers.h), e.g. encoder.down.0.res.0.conv1.weight.
#pragma once

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "models/nn/layers.h"
#include "models/nn/module.h"

namespace diffuse::nn {

struct AutoencoderConfig {
  int image_size = 28;
  int in_channels = 1;
  int latent_channels = 4;
  // Sized for the cpu: 16, 32, 64 channels at 28, 14, 7 keep the 28x28 convolutions, most of the
  // cost, narrow (LDM's are 128 wide and up).
  int base_channels = 16;
  // One entry per level; channel_mult.size() - 1 is the number of 2x downsamplings. {1, 2, 4}:
  // 28x28 -> 7x7 (f = 4, the shape of LDM's KL-f4 models).
  std::vector<int> channel_mult = {1, 2, 4};
  int num_res_blocks = 1;
  int groups = 8;
  double norm_eps = 1e-6;  // LDM's first stage uses 1e-6

  int factor() const { return 1 << (channel_mult.size() - 1); }
  int latent_size() const { return image_size / factor(); }
  void validate() const;  // throws naming the key
  nlohmann::json to_json() const;
  // Unknown keys are an error; missing keys keep their defaults. Validates.
  static AutoencoderConfig from_json(const nlohmann::json& j);
};

class AEEncoderLevel;
class AEDecoderLevel;
class AEMid;

class Autoencoder : public Module {
 public:
  explicit Autoencoder(const AutoencoderConfig& cfg, uint64_t seed = 0);
  // Every parameter 0, nothing drawn: for a model whose load_state follows (UNet::Undrawn's reason).
  struct Undrawn {};
  Autoencoder(const AutoencoderConfig& cfg, Undrawn);

  // x (B, H, W, in_channels) -> (mean, logvar), each (B, h, w, latent_channels).
  std::pair<ag::Var, ag::Var> encode(const ag::Var& x);
  // z (B, h, w, latent_channels) -> (B, H, W, in_channels).
  ag::Var decode(const ag::Var& z);
  const AutoencoderConfig& config() const { return cfg_; }

 private:
  Autoencoder(const AutoencoderConfig& cfg, uint64_t seed, bool draw);
  AutoencoderConfig cfg_;
  std::shared_ptr<Module> encoder_, decoder_;
  std::shared_ptr<Conv2d> enc_in_, enc_out_, dec_in_, dec_out_;
  std::shared_ptr<GroupNorm> enc_norm_, dec_norm_;
  std::shared_ptr<ModuleList<AEEncoderLevel>> down_;
  std::shared_ptr<ModuleList<AEDecoderLevel>> up_;
  std::shared_ptr<AEMid> enc_mid_, dec_mid_;
};

// KL(N(mean, diag(exp(logvar))) || N(0, I)) of each sample, summed over its latent elements
// (Kingma & Welling 2014, appendix B): 0.5 sum (mean^2 + exp(logvar) - 1 - logvar). (B, ...) -> (B).
ag::Var gaussian_kl(const ag::Var& mean, const ag::Var& logvar);

}  // namespace diffuse::nn
