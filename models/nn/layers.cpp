#include "models/nn/layers.h"

#include <cmath>

#include "autograd/attention.h"
#include "autograd/elementwise.h"
#include "autograd/linalg.h"
#include "autograd/norm.h"
#include "core/splitmix.h"

namespace diffuse::nn {

DropoutKey DropoutKey::sub(uint64_t site) const {
  // splitmix64 of (offset, site): offsets of different sites never line up in practice.
  return {seed, splitmix64(offset + 0x9E3779B97F4A7C15ull * site)};
}

// ---- Linear -----------------------------------------------------------------------------------

Linear::Linear(int64_t in, int64_t out, bool bias, bool zero_init) : in_(in), out_(out) {
  DF_CHECK(in > 0 && out > 0, "Linear(", in, ", ", out, ")");
  weight_ = &register_parameter("weight", Tensor::zeros({out, in}), zero_init ? Init::zeros() : Init::weight(in, out));
  if (bias) bias_ = &register_parameter("bias", Tensor::zeros({out}), zero_init ? Init::zeros() : Init::bias(in));
}

ag::Var Linear::forward(const ag::Var& x) const { return ag::linear(x, *weight_, bias_ ? *bias_ : ag::Var()); }

// ---- Conv2d -----------------------------------------------------------------------------------

Conv2d::Conv2d(int64_t in, int64_t out, int kernel, int stride, bool zero_init, int padding)
    : in_(in), out_(out), kernel_(kernel), stride_(stride), padding_(padding < 0 ? kernel / 2 : padding) {
  DF_CHECK(kernel == 1 || kernel == 3, "Conv2d supports 1x1 and 3x3 kernels, got ", kernel);
  DF_CHECK(stride == 1 || stride == 2, "Conv2d stride must be 1 or 2, got ", stride);
  DF_CHECK(padding_ <= kernel / 2, "Conv2d padding must be at most ", kernel / 2, ", got ", padding);
  const int64_t k2 = int64_t{kernel} * kernel;
  weight_ = &register_parameter("weight", Tensor::zeros({out, kernel, kernel, in}),
                               zero_init ? Init::zeros() : Init::weight(k2 * in, k2 * out));
  bias_ = &register_parameter("bias", Tensor::zeros({out}), zero_init ? Init::zeros() : Init::bias(k2 * in));
}

ag::Var Conv2d::forward(const ag::Var& x) const {
  DF_CHECK(x.dim() == 4 && x.size(3) == in_, "Conv2d(", in_, " -> ", out_, ") got input ", x.shape().str());
  // A 1x1 conv at stride 1 is a matrix product over the channels: the weight (Cout,1,1,Cin) is a
  // view of (Cout, Cin), so take the plain GEMM path.
  if (kernel_ == 1 && stride_ == 1) return ag::linear(x, ag::reshape(*weight_, {out_, in_}), *bias_);
  return ag::conv2d(x, *weight_, *bias_, ag::Conv2dOptions{stride_, padding_});
}

// ---- GroupNorm --------------------------------------------------------------------------------

GroupNorm::GroupNorm(int groups, int64_t channels, float eps) : groups_(groups), eps_(eps) {
  DF_CHECK(groups > 0 && channels % groups == 0, "GroupNorm: ", channels, " channels in ", groups, " groups");
  weight_ = &register_parameter("weight", Tensor::zeros({channels}), Init::ones());
  bias_ = &register_parameter("bias", Tensor::zeros({channels}), Init::zeros());
}

ag::Var GroupNorm::forward(const ag::Var& x, bool silu, const ag::Var& scale, const ag::Var& shift) const {
  return ag::group_norm(x, *weight_, *bias_, groups_, eps_, scale, shift, silu);
}

// ---- Embedding --------------------------------------------------------------------------------

Embedding::Embedding(int64_t num, int64_t dim) {
  weight_ = &register_parameter("weight", Tensor::zeros({num, dim}), Init::normal(1.f));
}

ag::Var Embedding::forward(const Tensor& ids) const { return ag::embedding(ids, *weight_); }

// ---- AttentionBlock ---------------------------------------------------------------------------

AttentionBlock::AttentionBlock(int64_t channels, int groups, int heads, int head_channels, float norm_eps)
    : channels_(channels) {
  if (heads > 0) {
    heads_ = heads;
  } else {
    DF_CHECK(head_channels > 0, "AttentionBlock needs heads or head_channels");
    DF_CHECK(channels % head_channels == 0, "AttentionBlock: ", channels, " channels, ", head_channels, " per head");
    heads_ = static_cast<int>(channels / head_channels);
  }
  DF_CHECK(channels % heads_ == 0, "AttentionBlock: ", channels, " channels in ", heads_, " heads");
  norm_ = register_module("norm", std::make_shared<GroupNorm>(groups, channels, norm_eps));
  qkv_ = register_module("qkv", std::make_shared<Linear>(channels, 3 * channels));
  proj_ = register_module("proj", std::make_shared<Linear>(channels, channels, true, /*zero_init=*/true));
}

ag::Var AttentionBlock::forward(const ag::Var& x) const {
  const Shape s = x.shape();
  const int64_t B = s[0], T = s[1] * s[2], C = channels_;
  DF_CHECK(x.dim() == 4 && s[3] == C, "AttentionBlock(", C, ") got input ", s.str());
  ag::Var h = ag::reshape(norm_->forward(x), {B, T, C});
  ag::Var qkv = qkv_->forward(h);  // (B, T, 3C): q | k | v along the channels
  ag::Var a = ag::attention(ag::slice_last(qkv, 0, C), ag::slice_last(qkv, C, 2 * C), ag::slice_last(qkv, 2 * C, 3 * C),
                            heads_);
  return ag::add(x, ag::reshape(proj_->forward(a), s));
}

// ---- LayerNorm --------------------------------------------------------------------------------

LayerNorm::LayerNorm(int64_t dim, float eps) : dim_(dim), eps_(eps) {
  DF_CHECK(dim > 0, "LayerNorm(", dim, ")");
  weight_ = &register_parameter("weight", Tensor::zeros({dim}), Init::ones());
  bias_ = &register_parameter("bias", Tensor::zeros({dim}), Init::zeros());
}

ag::Var LayerNorm::forward(const ag::Var& x) const {
  const Shape s = x.shape();
  DF_CHECK(x.dim() >= 2 && s[x.dim() - 1] == dim_, "LayerNorm(", dim_, ") got input ", s.str());
  const int64_t rows = x.numel() / dim_;
  return ag::reshape(ag::group_norm(ag::reshape(x, {rows, dim_}), *weight_, *bias_, 1, eps_), s);
}

// ---- CrossAttention, FeedForward, TransformerBlock, SpatialTransformer ----------------------------

CrossAttention::CrossAttention(int64_t channels, int64_t context_dim, int heads)
    : channels_(channels), context_dim_(context_dim), heads_(heads) {
  DF_CHECK(heads > 0 && channels % heads == 0, "CrossAttention: ", channels, " channels in ", heads, " heads");
  DF_CHECK(context_dim > 0, "CrossAttention: context_dim ", context_dim);
  to_q_ = register_module("to_q", std::make_shared<Linear>(channels, channels, /*bias=*/false));
  to_k_ = register_module("to_k", std::make_shared<Linear>(context_dim, channels, false));
  to_v_ = register_module("to_v", std::make_shared<Linear>(context_dim, channels, false));
  to_out_ = register_module("to_out", std::make_shared<Linear>(channels, channels));
}

ag::Var CrossAttention::forward(const ag::Var& x, const ag::Var& context) const {
  DF_CHECK(x.dim() == 3 && x.size(2) == channels_, "CrossAttention(", channels_, ") got input ", x.shape().str());
  const ag::Var& c = context.defined() ? context : x;
  DF_CHECK(c.dim() == 3 && c.size(0) == x.size(0) && c.size(2) == context_dim_, "CrossAttention: context ",
           c.shape().str(), " for input ", x.shape().str(), " (expected (", x.size(0), ", T, ", context_dim_, "))");
  return to_out_->forward(ag::attention(to_q_->forward(x), to_k_->forward(c), to_v_->forward(c), heads_));
}

ag::Var gelu_tanh(const ag::Var& x) {
  constexpr double kSqrt2OverPi = 0.7978845608028654;
  ag::Var inner = ag::add(x, ag::mul_scalar(ag::mul(x, ag::square(x)), 0.044715));
  ag::Var t = ag::add_scalar(ag::tanh(ag::mul_scalar(inner, kSqrt2OverPi)), 1.0);
  return ag::mul(ag::mul_scalar(x, 0.5), t);
}

FeedForward::FeedForward(int64_t channels, int mult) : inner_(channels * mult) {
  DF_CHECK(channels > 0 && mult > 0, "FeedForward(", channels, ", ", mult, ")");
  proj_ = register_module("proj", std::make_shared<Linear>(channels, 2 * inner_));
  out_ = register_module("out", std::make_shared<Linear>(inner_, channels));
}

ag::Var FeedForward::forward(const ag::Var& x) const {
  ag::Var h = proj_->forward(x);  // (..., 2 inner): the value, then the gate (LDM's GEGLU chunk order)
  return out_->forward(ag::mul(ag::slice_last(h, 0, inner_), gelu_tanh(ag::slice_last(h, inner_, 2 * inner_))));
}

TransformerBlock::TransformerBlock(int64_t channels, int64_t context_dim, int heads) {
  norm1_ = register_module("norm1", std::make_shared<LayerNorm>(channels));
  attn1_ = register_module("attn1", std::make_shared<CrossAttention>(channels, channels, heads));
  norm2_ = register_module("norm2", std::make_shared<LayerNorm>(channels));
  attn2_ = register_module("attn2", std::make_shared<CrossAttention>(channels, context_dim, heads));
  norm3_ = register_module("norm3", std::make_shared<LayerNorm>(channels));
  ff_ = register_module("ff", std::make_shared<FeedForward>(channels));
}

ag::Var TransformerBlock::forward(const ag::Var& x, const ag::Var& context) const {
  DF_CHECK(context.defined(), "TransformerBlock: no context");
  ag::Var h = ag::add(x, attn1_->forward(norm1_->forward(x)));
  h = ag::add(h, attn2_->forward(norm2_->forward(h), context));
  return ag::add(h, ff_->forward(norm3_->forward(h)));
}

SpatialTransformer::SpatialTransformer(int64_t channels, int64_t context_dim, int groups, int heads, float norm_eps)
    : channels_(channels) {
  norm_ = register_module("norm", std::make_shared<GroupNorm>(groups, channels, norm_eps));
  proj_in_ = register_module("proj_in", std::make_shared<Linear>(channels, channels));
  block_ = register_module("block", std::make_shared<TransformerBlock>(channels, context_dim, heads));
  proj_out_ = register_module("proj_out", std::make_shared<Linear>(channels, channels, true, /*zero_init=*/true));
}

ag::Var SpatialTransformer::forward(const ag::Var& x, const ag::Var& context) const {
  const Shape s = x.shape();
  DF_CHECK(x.dim() == 4 && s[3] == channels_, "SpatialTransformer(", channels_, ") got input ", s.str());
  ag::Var h = ag::reshape(proj_in_->forward(norm_->forward(x)), {s[0], s[1] * s[2], channels_});
  h = block_->forward(h, context);
  return ag::add(x, ag::reshape(proj_out_->forward(h), s));
}

// ---- ResBlock ---------------------------------------------------------------------------------

ResBlock::ResBlock(const ResBlockOptions& o) : o_(o) {
  DF_CHECK(o.in_channels > 0 && o.out_channels > 0, "ResBlock channels ", o.in_channels, " -> ", o.out_channels);
  norm1_ = register_module("norm1", std::make_shared<GroupNorm>(o.groups, o.in_channels, o.norm_eps));
  conv1_ = register_module("conv1", std::make_shared<Conv2d>(o.in_channels, o.out_channels, 3));
  if (o.emb_channels > 0)
    emb_proj_ = register_module(
        "emb_proj", std::make_shared<Linear>(o.emb_channels, o.scale_shift_norm ? 2 * o.out_channels : o.out_channels));
  norm2_ = register_module("norm2", std::make_shared<GroupNorm>(o.groups, o.out_channels, o.norm_eps));
  conv2_ = register_module("conv2", std::make_shared<Conv2d>(o.out_channels, o.out_channels, 3, 1, /*zero_init=*/true));
  if (o.in_channels != o.out_channels)
    skip_ = register_module("skip", std::make_shared<Conv2d>(o.in_channels, o.out_channels, 1));
}

namespace {
ag::Var resample(const ag::Var& x, ResBlockOptions::Resample r) {
  switch (r) {
    case ResBlockOptions::Resample::up: return ag::upsample_nearest2x(x);
    case ResBlockOptions::Resample::down: return ag::avg_pool2x(x);
    default: return x;
  }
}
}  // namespace

ag::Var ResBlock::forward(const ag::Var& x, const ag::Var& emb_act, DropoutKey key) const {
  const int64_t B = x.size(0), C = o_.out_channels;
  ag::Var h = norm1_->forward(x, /*silu=*/true);
  // ADM resamples after the first norm+SiLU, before conv1, so conv1 runs at the output size.
  h = conv1_->forward(resample(h, o_.resample));
  ag::Var xs = resample(x, o_.resample);
  if (emb_proj_) {
    DF_CHECK(emb_act.defined(), "ResBlock built with emb_channels ", o_.emb_channels, " needs an embedding");
    ag::Var e = emb_proj_->forward(emb_act);  // (B, C) or (B, 2C)
    if (o_.scale_shift_norm) {
      h = norm2_->forward(h, true, ag::slice_last(e, 0, C), ag::slice_last(e, C, 2 * C));
    } else {
      h = ag::add(h, ag::reshape(e, {B, 1, 1, C}));
      h = norm2_->forward(h, true);
    }
  } else {
    h = norm2_->forward(h, true);
  }
  if (o_.dropout > 0.f && is_training()) h = ag::dropout(h, o_.dropout, key.seed, key.offset, true);
  h = conv2_->forward(h);
  ag::Var out = ag::add(skip_ ? skip_->forward(xs) : xs, h);
  if (o_.rescale) out = ag::mul_scalar(out, 1.0 / std::sqrt(2.0));
  return out;
}

// ---- Downsample / Upsample ---------------------------------------------------------------------

Downsample::Downsample(int64_t channels, bool use_conv, int padding) : padding_(padding) {
  DF_CHECK(padding == 0 || padding == 1, "Downsample padding must be 0 or 1, got ", padding);
  if (use_conv)
    conv_ = register_module("conv", std::make_shared<Conv2d>(channels, channels, 3, 2, /*zero_init=*/false, padding));
}

namespace {
// (B, H, W, C) -> (B, H+1, W+1, C), zeros in the last row and column: F.pad(x, (0, 1, 0, 1)) in
// NHWC. Built from concat_last over flattened trailing dims (contiguous rows, so appending C zeros
// to each row of W*C values is a zero column, and (W+1)*C zeros per image a zero row): it runs on
// every device the concat does, with concat's backward (a slice) as its gradient.
ag::Var pad_bottom_right(const ag::Var& x) {
  const int64_t B = x.size(0), H = x.size(1), W = x.size(2), C = x.size(3);
  const ag::Var zero_col(Tensor::zeros({B * H, C}, x.dtype(), x.device()));
  const ag::Var zero_row(Tensor::zeros({B, (W + 1) * C}, x.dtype(), x.device()));
  ag::Var h = ag::concat_last({ag::reshape(x, {B * H, W * C}), zero_col});
  h = ag::concat_last({ag::reshape(h, {B, H * (W + 1) * C}), zero_row});
  return ag::reshape(h, {B, H + 1, W + 1, C});
}
}  // namespace

ag::Var Downsample::forward(const ag::Var& x) const {
  if (!conv_) return ag::avg_pool2x(x);
  return conv_->forward(padding_ == 0 ? pad_bottom_right(x) : x);
}

Upsample::Upsample(int64_t channels, bool use_conv) {
  if (use_conv) conv_ = register_module("conv", std::make_shared<Conv2d>(channels, channels, 3));
}

ag::Var Upsample::forward(const ag::Var& x) const {
  ag::Var h = ag::upsample_nearest2x(x);
  return conv_ ? conv_->forward(h) : h;
}

}  // namespace diffuse::nn
