// CIFAR-10 binary batches (https://www.cs.toronto.edu/~kriz/cifar.html): records of 1 label byte
// then 3072 bytes, the 32x32 red plane, green plane, blue plane; converted here to HWC.
#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <filesystem>

#include "core/file_io.h"
#include "models/data/dataset.h"
#include "models/data/pixels.h"

namespace diffuse::data {
namespace {

constexpr size_t kSide = 32, kPlane = kSide * kSide, kRecord = 1 + 3 * kPlane;  // 3073

bool is_dir(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

}  // namespace

std::vector<std::string> cifar10_class_names() {
  return {"airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"};
}

Dataset parse_cifar10(const uint8_t* data, size_t n, const std::string& name) {
  if (n == 0) DF_FAIL("CIFAR-10 file '", name, "' is empty");
  if (n % kRecord != 0)
    DF_FAIL("CIFAR-10 file '", name, "' is ", n, " bytes, not a whole number of ", kRecord, "-byte records (",
            n / kRecord, " records and ", n % kRecord, " bytes left over)");
  const int64_t N = static_cast<int64_t>(n / kRecord);
  Dataset d;
  d.images = Tensor::empty({N, int64_t(kSide), int64_t(kSide), 3});
  d.labels = Tensor::empty({N}, DType::i64);
  float* img = d.images.data<float>();
  int64_t* lab = d.labels.data<int64_t>();
  for (int64_t i = 0; i < N; ++i) {
    const uint8_t* rec = data + i * kRecord;
    if (rec[0] >= 10)
      DF_FAIL("CIFAR-10 file '", name, "': record ", i, " has label ", int(rec[0]), "; CIFAR-10 labels are 0..9");
    lab[i] = rec[0];
    float* out = img + i * 3 * kPlane;
    for (size_t p = 0; p < kPlane; ++p)
      for (size_t c = 0; c < 3; ++c) out[p * 3 + c] = detail::pixel_to_float(rec[1 + c * kPlane + p]);
  }
  d.num_classes = 10;
  d.class_names = cifar10_class_names();
  d.name = name;
  return d;
}

Dataset load_cifar10(const std::string& path, const std::string& split) {
  std::vector<std::string> files;
  if (!is_dir(path)) {
    files.push_back(path);  // one batch file; read_file reports it if it does not exist
  } else {
    std::string dir = is_dir(path + "/cifar-10-batches-bin") ? path + "/cifar-10-batches-bin" : path;
    if (split == "train") {
      std::error_code ec;
      for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
        const std::string f = e.path().filename().string();
        if (f.rfind("data_batch_", 0) == 0 && f.size() > 4 && f.compare(f.size() - 4, 4, ".bin") == 0)
          files.push_back(e.path().string());
      }
      if (ec) DF_FAIL("cannot list CIFAR-10 folder '", dir, "': ", ec.message());
      std::sort(files.begin(), files.end());
    } else if (split == "test") {
      if (std::filesystem::exists(dir + "/test_batch.bin")) files.push_back(dir + "/test_batch.bin");
    } else {
      DF_FAIL("CIFAR-10 split must be 'train' or 'test', got '", split, "'");
    }
    if (files.empty())
      DF_FAIL("no CIFAR-10 ", split, " batches in '", dir, "' (looking for ",
              split == "train" ? "data_batch_*.bin" : "test_batch.bin", ")");
  }
  std::vector<Dataset> parts;
  int64_t total = 0;
  for (const std::string& f : files) {
    std::vector<uint8_t> bytes = read_file(f);
    parts.push_back(parse_cifar10(bytes.data(), bytes.size(), f));
    total += parts.back().size();
  }
  if (parts.size() == 1) {
    parts[0].name = "cifar10-" + split;
    return parts[0];
  }
  Dataset d;
  d.images = Tensor::empty({total, int64_t(kSide), int64_t(kSide), 3});
  d.labels = Tensor::empty({total}, DType::i64);
  int64_t at = 0;
  for (const Dataset& p : parts) {
    d.images.slice(at, at + p.size()).copy_(p.images);
    d.labels.slice(at, at + p.size()).copy_(p.labels);
    at += p.size();
  }
  d.num_classes = 10;
  d.class_names = cifar10_class_names();
  d.name = "cifar10-" + split;
  return d;
}

}  // namespace diffuse::data
