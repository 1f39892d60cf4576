// models/nn/layers.h: the layers of the DDPM / improved-DDPM / ADM UNets, on the ag ops.
//
// Layout: images NHWC (B, H, W, C); token sequences (B, T, C). Weights: Linear (Out, In),
// Conv2d (Cout, KH, KW, Cin) as in ops_contract.md.
//
// Parameter names inside each layer (the last parts of the dotted names):
//   Linear, Conv2d:  weight, bias
//   GroupNorm:       weight, bias                           (gamma, beta)
//   Embedding:       weight                                 (K, D)
//   AttentionBlock:  norm.{weight,bias} qkv.{weight,bias} proj.{weight,bias}
//   LayerNorm:       weight, bias                           (gamma, beta)
//   CrossAttention:  to_q.weight to_k.weight to_v.weight to_out.{weight,bias}
//   FeedForward:     proj.{weight,bias} (GEGLU: value | gate) out.{weight,bias}
//   TransformerBlock: norm1 attn1 norm2 attn2 norm3 ff
//   SpatialTransformer: norm proj_in block proj_out
//   ResBlock:        norm1 conv1 emb_proj norm2 conv2 [skip]
//   Downsample:      [conv]     Upsample: [conv]
#pragma once

#include <cstdint>
#include <memory>

#include "autograd/tape.h"
#include "models/nn/module.h"

namespace diffuse::nn {

// The Philox stream a dropout call draws from. A forward pass hands each dropout site its own
// offset, so masks differ between sites and steps but repeat for the same (seed, step).
struct DropoutKey {
  uint64_t seed = 0;
  uint64_t offset = 0;
  DropoutKey sub(uint64_t site) const;  // a distinct stream for one site
};

class Linear : public Module {
 public:
  // zero_init: weight and bias start at zero (the projection that closes a residual branch).
  Linear(int64_t in, int64_t out, bool bias = true, bool zero_init = false);
  ag::Var forward(const ag::Var& x) const;  // (..., In) -> (..., Out)
  int64_t in_features() const { return in_; }
  int64_t out_features() const { return out_; }

 private:
  int64_t in_, out_;
  ag::Var *weight_ = nullptr, *bias_ = nullptr;  // owned by Module (stable slots)
};

class Conv2d : public Module {
 public:
  // kernel 3 pads 1 ("same" at stride 1; halves even sizes at stride 2), kernel 1 pads 0; padding
  // >= 0 overrides that (Downsample pads its input itself for diffusers' asymmetric padding).
  Conv2d(int64_t in, int64_t out, int kernel = 3, int stride = 1, bool zero_init = false, int padding = -1);
  ag::Var forward(const ag::Var& x) const;  // (B, H, W, Cin) -> (B, Ho, Wo, Cout)

 private:
  int64_t in_, out_;
  int kernel_, stride_, padding_;
  ag::Var *weight_ = nullptr, *bias_ = nullptr;  // owned by Module (stable slots)
};

class GroupNorm : public Module {
 public:
  GroupNorm(int groups, int64_t channels, float eps = 1e-5f);
  // y = act((xhat * gamma + beta) * (1 + scale) + shift), act = SiLU when silu: the fused op.
  ag::Var forward(const ag::Var& x, bool silu = false, const ag::Var& scale = {}, const ag::Var& shift = {}) const;
  int groups() const { return groups_; }
  float eps() const { return eps_; }

 private:
  int groups_;
  float eps_;
  ag::Var *weight_ = nullptr, *bias_ = nullptr;  // owned by Module (stable slots)
};

class Embedding : public Module {
 public:
  Embedding(int64_t num, int64_t dim);
  ag::Var forward(const Tensor& ids) const;  // i64 (B) -> (B, D)

 private:
  ag::Var* weight_ = nullptr;
};

// Self-attention over the H*W pixels of an image (DDPM's AttnBlock, ADM's AttentionBlock):
// x + proj(attention(qkv(GroupNorm(x)))), proj zero-initialised so the block starts as identity.
class AttentionBlock : public Module {
 public:
  // heads > 0: that many heads; else head_channels > 0: channels / head_channels heads. norm_eps:
  // the GroupNorm's epsilon.
  AttentionBlock(int64_t channels, int groups, int heads, int head_channels = -1, float norm_eps = 1e-5f);
  ag::Var forward(const ag::Var& x) const;  // (B, H, W, C) -> same
  int heads() const { return heads_; }

 private:
  int64_t channels_;
  int heads_;
  std::shared_ptr<GroupNorm> norm_;
  std::shared_ptr<Linear> qkv_, proj_;
};

// LayerNorm (Ba et al. 2016) over the last dimension of (..., C): each row normalised by its own
// mean and biased variance, then gamma and beta. GroupNorm with one group on the (rows, C) view
// computes exactly that (kernels/group_norm.h: x (B, C), one group of C channels per row), so it
// is no op of its own and runs wherever the GroupNorm does.
class LayerNorm : public Module {
 public:
  explicit LayerNorm(int64_t dim, float eps = 1e-5f);
  ag::Var forward(const ag::Var& x) const;

 private:
  int64_t dim_;
  float eps_;
  ag::Var *weight_ = nullptr, *bias_ = nullptr;  // owned by Module (stable slots)
};

// LDM's CrossAttention (Rombach et al. 2022, sec. 3.3): queries from x (B, Tq, C), keys and values
// from a context (B, Tk, Dc), Tk independent of Tq; without a context it is self-attention on x.
//   Q = x W_q,  K = ctx W_k,  V = ctx W_v  (no biases),  out = to_out(softmax(Q K^T / sqrt(d)) V)
// per head of d = C / heads channels. to_out is a plain Linear with a bias.
class CrossAttention : public Module {
 public:
  CrossAttention(int64_t channels, int64_t context_dim, int heads);
  ag::Var forward(const ag::Var& x, const ag::Var& context = {}) const;  // (B, Tq, C) -> same

 private:
  int64_t channels_, context_dim_;
  int heads_;
  std::shared_ptr<Linear> to_q_, to_k_, to_v_, to_out_;
};

// LDM's gated feed-forward (GEGLU, Shazeer 2020): out(a * GELU(g)), (a | g) = proj(x), 4C inner
// channels. GELU is the tanh form, 0.5 g (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3))) (Hendrycks &
// Gimpel 2016), built from the elementwise ops.
class FeedForward : public Module {
 public:
  explicit FeedForward(int64_t channels, int mult = 4);
  ag::Var forward(const ag::Var& x) const;  // (..., C) -> same

 private:
  int64_t inner_;
  std::shared_ptr<Linear> proj_, out_;
};

// GELU, tanh form (see FeedForward).
ag::Var gelu_tanh(const ag::Var& x);

// LDM's BasicTransformerBlock: three pre-LayerNorm residual branches on tokens (B, T, C):
//   x = x + attn1(norm1(x))             self-attention
//   x = x + attn2(norm2(x), context)    cross-attention to the context (B, Tk, Dc)
//   x = x + ff(norm3(x))                GEGLU feed-forward
class TransformerBlock : public Module {
 public:
  TransformerBlock(int64_t channels, int64_t context_dim, int heads);
  ag::Var forward(const ag::Var& x, const ag::Var& context) const;

 private:
  std::shared_ptr<LayerNorm> norm1_, norm2_, norm3_;
  std::shared_ptr<CrossAttention> attn1_, attn2_;
  std::shared_ptr<FeedForward> ff_;
};

// LDM's SpatialTransformer (depth 1): an image block that attends to a context.
//   h = proj_in(GroupNorm(x)) as (B, H*W, C) tokens;  h = block(h, context);  out = x + proj_out(h)
// proj_in and proj_out are LDM's 1x1 convs, i.e. Linears over the channels of NHWC; proj_out is
// zero-initialised, so the block starts as the identity.
class SpatialTransformer : public Module {
 public:
  SpatialTransformer(int64_t channels, int64_t context_dim, int groups, int heads, float norm_eps = 1e-5f);
  ag::Var forward(const ag::Var& x, const ag::Var& context) const;  // (B, H, W, C) -> same

 private:
  int64_t channels_;
  std::shared_ptr<GroupNorm> norm_;
  std::shared_ptr<Linear> proj_in_, proj_out_;
  std::shared_ptr<TransformerBlock> block_;
};

struct ResBlockOptions {
  int64_t in_channels = 0, out_channels = 0, emb_channels = 0;  // emb_channels 0: no conditioning
  int groups = 32;
  float norm_eps = 1e-5f;  // both GroupNorms' epsilon
  float dropout = 0.f;
  bool scale_shift_norm = false;  // AdaGN (improved DDPM / ADM): emb -> (scale, shift) of norm2
  bool rescale = false;           // output (skip + h) / sqrt(2) (NCSN++ / score SDE)
  enum class Resample : uint8_t { none, up, down } resample = Resample::none;  // BigGAN-style up/down
};

// The residual block of DDPM (Ho et al. 2020, appendix B) and ADM (Dhariwal & Nichol 2021):
//   h = conv1(resample(SiLU(GN1(x))))
//   plain:        h = conv2(dropout(SiLU(GN2(h + emb_proj(SiLU(emb))))))
//   scale-shift:  (s, b) = emb_proj(SiLU(emb));  h = conv2(dropout(SiLU(GN2(h) * (1 + s) + b)))
//   out = skip(resample(x)) + h   [ / sqrt(2) when rescale ]
// conv2 is zero-initialised: every block starts as its skip path. skip is a 1x1 conv when the
// channel count changes, else the identity. Resampling inside the block (resblock_updown) is
// parameter-free: nearest 2x up, 2x2 average pool down, applied to both paths.
class ResBlock : public Module {
 public:
  explicit ResBlock(const ResBlockOptions& o);
  // emb_act: SiLU(emb), (B, emb_channels) (computed once per forward by the caller, since every
  // block's projection starts with that SiLU); undefined when emb_channels is 0.
  ag::Var forward(const ag::Var& x, const ag::Var& emb_act, DropoutKey key) const;
  const ResBlockOptions& options() const { return o_; }

 private:
  ResBlockOptions o_;
  std::shared_ptr<GroupNorm> norm1_, norm2_;
  std::shared_ptr<Conv2d> conv1_, conv2_, skip_;
  std::shared_ptr<Linear> emb_proj_;
};

// Halves H and W (even): a 3x3 conv with stride 2 (use_conv), or a 2x2 average pool. The conv's
// padding: 1 on every side, or 0: diffusers' Downsample2D(padding=0), which pads one zero row at
// the bottom and one zero column at the right (F.pad(x, (0, 1, 0, 1))) and convolves unpadded.
class Downsample : public Module {
 public:
  Downsample(int64_t channels, bool use_conv, int padding = 1);
  ag::Var forward(const ag::Var& x) const;

 private:
  std::shared_ptr<Conv2d> conv_;
  int padding_ = 1;
};

// Doubles H and W: nearest neighbour, then a 3x3 conv (use_conv).
class Upsample : public Module {
 public:
  Upsample(int64_t channels, bool use_conv);
  ag::Var forward(const ag::Var& x) const;

 private:
  std::shared_ptr<Conv2d> conv_;
};

}  // namespace diffuse::nn
