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
