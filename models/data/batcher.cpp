#include <algorithm>
#include <cstring>

#include "core/philox.h"
#include "models/data/dataset.h"

namespace diffuse::data {
namespace {

// Philox counter offsets: epoch e shuffles from stream 2e and flips from stream 2e + 1, all under
// the key `seed`, so no two epochs (and no two uses) share random numbers.
uint64_t shuffle_stream(int64_t epoch) { return static_cast<uint64_t>(epoch) << 1; }
uint64_t flip_stream(int64_t epoch) { return (static_cast<uint64_t>(epoch) << 1) | 1u; }

}  // namespace

std::vector<int64_t> epoch_permutation(int64_t n, uint64_t seed, int64_t epoch) {
  std::vector<int64_t> order(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) order[i] = i;
  for (int64_t i = n - 1; i > 0; --i) {
    // 64 random bits scaled to [0, i] (Lemire's multiply-shift; the bias is below 2^-30 for any
    // dataset that fits in memory).
    Philox4 r = philox_block(seed, shuffle_stream(epoch), static_cast<uint64_t>(i));
    uint64_t bits = (static_cast<uint64_t>(r.v[1]) << 32) | r.v[0];
    auto j = static_cast<int64_t>((static_cast<unsigned __int128>(bits) * static_cast<uint64_t>(i + 1)) >> 64);
    std::swap(order[i], order[j]);
  }
  return order;
}

Batcher::Batcher(const Dataset& data, const BatcherOptions& options) : data_(data), opt_(options) {
  DF_CHECK(data_.images.defined() && data_.size() > 0, "Batcher: dataset '", data_.name, "' is empty");
  DF_CHECK(data_.images.dtype() == DType::f32 && data_.images.device().is_cpu(),
           "Batcher: images must be f32 on the cpu, got ", data_.images.str());
  DF_CHECK(!data_.labels.defined() || (data_.labels.dtype() == DType::i64 && data_.labels.dim() == 1 &&
                                       data_.labels.size(0) == data_.size()),
           "Batcher: labels must be (N) i64 matching the images, got ", data_.labels.str());
  DF_CHECK(opt_.batch_size > 0, "Batcher: batch size must be positive, got ", opt_.batch_size);
  DF_CHECK(!opt_.drop_last || opt_.batch_size <= data_.size(), "Batcher: dataset '", data_.name, "' has ",
           data_.size(), " samples, fewer than one batch of ", opt_.batch_size, " (drop_last)");
  DF_CHECK(!opt_.random_flip || data_.images.dim() == 4, "Batcher: random_flip needs (N, H, W, C) images, got ",
           data_.images.str());
  start_epoch(0);
}

void Batcher::start_epoch(int64_t epoch) {
  state_.epoch = epoch;
  state_.position = 0;
  if (opt_.shuffle) {
    order_ = epoch_permutation(data_.size(), opt_.seed, epoch);
  } else {
    order_.resize(static_cast<size_t>(data_.size()));
    for (int64_t i = 0; i < data_.size(); ++i) order_[i] = i;
  }
}

int64_t Batcher::batches_per_epoch() const {
  const int64_t n = data_.size(), b = opt_.batch_size;
  return opt_.drop_last ? n / b : (n + b - 1) / b;
}

void Batcher::set_state(const BatcherState& s) {
  DF_CHECK(s.epoch >= 0 && s.position >= 0 && s.position <= data_.size(), "Batcher: invalid state (epoch ",
           s.epoch, ", position ", s.position, ") for a dataset of ", data_.size());
  start_epoch(s.epoch);
  state_.position = s.position;
}

Batch Batcher::next() {
  const int64_t n = data_.size();
  const bool epoch_done = opt_.drop_last ? state_.position + opt_.batch_size > n : state_.position >= n;
  if (epoch_done) start_epoch(state_.epoch + 1);
  const int64_t take = std::min(opt_.batch_size, n - state_.position);

  Batch b;
  b.epoch = state_.epoch;
  std::vector<int64_t> dims = data_.images.shape().vec();
  dims[0] = take;
  b.images = Tensor::empty(Shape(dims));
  const int64_t row = data_.images.numel() / n;
  const float* src = data_.images.data<float>();
  float* dst = b.images.data<float>();
  const int64_t W = data_.images.dim() == 4 ? data_.images.size(2) : 0;
  const int64_t C = data_.images.dim() == 4 ? data_.images.size(3) : 0;
  for (int64_t k = 0; k < take; ++k) {
    const int64_t pos = state_.position + k;
    const float* s = src + order_[pos] * row;
    float* d = dst + k * row;
    const bool flip =
        opt_.random_flip && philox_uniform(opt_.seed, flip_stream(state_.epoch), static_cast<uint64_t>(pos)) < 0.5f;
    if (!flip) {
      std::memcpy(d, s, static_cast<size_t>(row) * sizeof(float));
    } else {
      // Mirror along W: pixel (h, w) takes (h, W - 1 - w), channels kept in order.
      const int64_t H = row / (W * C);
      for (int64_t h = 0; h < H; ++h)
        for (int64_t w = 0; w < W; ++w)
          std::memcpy(d + (h * W + w) * C, s + (h * W + (W - 1 - w)) * C, static_cast<size_t>(C) * sizeof(float));
    }
  }
  if (data_.labels.defined()) {
    b.labels = Tensor::empty({take}, DType::i64);
    const int64_t* ls = data_.labels.data<int64_t>();
    int64_t* ld = b.labels.data<int64_t>();
    for (int64_t k = 0; k < take; ++k) ld[k] = ls[order_[state_.position + k]];
  }
  state_.position += take;
  return b;
}

}  // namespace diffuse::data
