// models/data/dataset.h: training data in memory, and the batcher that feeds it to training.
//
// Every loader returns images as (N, H, W, C) f32 in [-1, 1] (pixel byte p -> p / 127.5 - 1,
// NHWC because the whole engine is channels-last) and labels as (N) i64. Every malformed input
// is one diffuse::Error that names the file and says what is wrong. Parsers that take bytes
// (parse_idx_*, parse_cifar10) are the entry points a fuzzer drives.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace diffuse::data {

struct Dataset {
  Tensor images;        // (N, H, W, C) f32 in [-1, 1]; the 2-D toy sets: (N, 2)
  Tensor labels;        // (N) i64, or undefined when the set has no labels
  int num_classes = 0;  // 0 when unlabelled
  // The name of each class (label i: class_names[i]) where the source has names: Fashion-MNIST's
  // and CIFAR-10's ten, an image folder's class sub-folders; empty otherwise. A cross-attention
  // model conditions on their words (models/nn/unet.h).
  std::vector<std::string> class_names;
  std::string name;
  // Which images these are: "train" or "test" for a source with splits, "all" for one without
  // (an image folder), so an evaluation can say what it scored.
  std::string split;
  int64_t size() const { return images.defined() ? images.size(0) : 0; }
};

// ---- IDX (MNIST, Fashion-MNIST) -------------------------------------------------------------

// Debian's dataset-fashion-mnist installs the four .gz files here.
inline constexpr const char* kFashionMnistDir = "/usr/share/datasets/fashion-mnist";
// Fashion-MNIST's class names, label 0 to 9 (Xiao et al. 2017, table 1).
std::vector<std::string> fashion_mnist_class_names();
// CIFAR-10's class names, label 0 to 9 (batches.meta.txt).
std::vector<std::string> cifar10_class_names();

// split: "train" (60000 images) or "test" (10000; "t10k" also accepted). Files are
// {train,t10k}-{images-idx3,labels-idx1}-ubyte, gzipped (.gz) or not.
Dataset load_fashion_mnist(const std::string& split, const std::string& dir = kFashionMnistDir);
// Any IDX pair: an image file (magic 0x00000803: N, rows, cols of u8) and a label file (magic
// 0x00000801: N u8). Either may be gzipped (detected by its magic bytes, not its name).
Dataset load_idx(const std::string& images_path, const std::string& labels_path);
// The same from decompressed bytes. Images: (N, rows, cols, 1); labels: (N).
Tensor parse_idx_images(const uint8_t* data, size_t n, const std::string& name_for_errors);
Tensor parse_idx_labels(const uint8_t* data, size_t n, const std::string& name_for_errors);

// The file's bytes, inflated when it starts with the gzip magic (1f 8b); a corrupt or truncated
// stream, or more than max_bytes of output, throws naming the file.
std::vector<uint8_t> read_maybe_gzip(const std::string& path, size_t max_bytes = size_t(1) << 32);

// ---- CIFAR-10 binary batches ----------------------------------------------------------------

// path: one batch file, or a folder holding data_batch_*.bin (split "train") and test_batch.bin
// (split "test"), directly or in its cifar-10-batches-bin sub-folder. Each record is 1 label byte
// then 3072 bytes of 32x32 planes R, G, B; images come back HWC (N, 32, 32, 3).
Dataset load_cifar10(const std::string& path, const std::string& split = "train");
Dataset parse_cifar10(const uint8_t* data, size_t n, const std::string& name_for_errors);

// ---- a folder of images ---------------------------------------------------------------------

struct ImageFolderOptions {
  int size = 64;              // output is size x size: short side resized to it, centre-cropped
  int channels = 3;           // 3: RGB, 1: grey
  bool class_labels = false;  // label = index of the immediate sub-folder, sub-folders sorted
};
// PNG / JPEG / BMP files (by extension, case-insensitive), in sorted path order; other files are
// skipped. Without class labels the folder is searched recursively. An image that fails to
// decode is an error naming it; no images at all is an error naming the folder.
Dataset load_image_folder(const std::string& dir, const ImageFolderOptions& options = {});

// ---- 2-D toy sets ---------------------------------------------------------------------------
// (N, 2) f32 points, scaled to roughly unit variance per axis and centred; point i depends only
// on (seed, i), drawn from Philox streams, so a prefix of a larger set is the smaller set.

Dataset swiss_roll(int64_t n, uint64_t seed);      // unlabelled
Dataset eight_gaussians(int64_t n, uint64_t seed);  // label = mode 0..7
Dataset two_moons(int64_t n, uint64_t seed);        // label = moon 0..1
// By name: "swiss_roll", "8gaussians" (or "eight_gaussians"), "moons" (or "two_moons").
Dataset toy_2d(const std::string& name, int64_t n, uint64_t seed);

// ---- batches --------------------------------------------------------------------------------

struct BatcherOptions {
  int64_t batch_size = 64;
  uint64_t seed = 0;
  bool shuffle = true;
  bool drop_last = true;     // false: the last batch of an epoch may be smaller
  bool random_flip = false;  // mirror each image horizontally with probability 1/2 (NHWC only)
};

// Where a batcher is: restoring it gives exactly the batches that would have followed.
struct BatcherState {
  int64_t epoch = 0;
  int64_t position = 0;  // index into this epoch's order of the next sample
};

struct Batch {
  Tensor images;  // (B, ...) f32, a copy
  Tensor labels;  // (B) i64, or undefined
  int64_t epoch = 0;
};

// Epoch e visits the samples in a permutation drawn from Philox (seed, stream e); a sample's flip
// is drawn from (seed, epoch, position), so neither depends on how the run was split into
// resumed pieces. next() moves on to the next epoch by itself.
class Batcher {
 public:
  Batcher(const Dataset& data, const BatcherOptions& options);

  Batch next();
  int64_t batches_per_epoch() const;
  BatcherState state() const { return state_; }
  void set_state(const BatcherState& s);
  // This epoch's visiting order (tests, debugging).
  const std::vector<int64_t>& order() const { return order_; }

 private:
  void start_epoch(int64_t epoch);

  Dataset data_;
  BatcherOptions opt_;
  BatcherState state_;
  std::vector<int64_t> order_;
};

// The permutation of 0..n-1 for (seed, epoch): Fisher-Yates with Philox draws.
std::vector<int64_t> epoch_permutation(int64_t n, uint64_t seed, int64_t epoch);

}  // namespace diffuse::data
