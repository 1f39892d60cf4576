// IDX files (LeCun's MNIST format, also Fashion-MNIST): a big-endian u32 magic 0x000008DD (08 =
// unsigned byte, DD = number of dimensions), DD big-endian u32 sizes, then the bytes row-major.
#include <sys/stat.h>
#include <zlib.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstring>

#include "core/file_io.h"
#include "models/data/dataset.h"
#include "models/data/pixels.h"

namespace diffuse::data {
namespace {

uint32_t be32(const uint8_t* p) {
  return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
}

std::string hex32(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}

bool exists(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0;
}

}  // namespace

std::vector<uint8_t> read_maybe_gzip(const std::string& path, size_t max_bytes) {
  std::vector<uint8_t> in = read_file(path, max_bytes);
  if (in.size() < 2 || in[0] != 0x1f || in[1] != 0x8b) return in;

  z_stream zs{};
  // 15 + 16: the largest window, and expect a gzip (not zlib) wrapper.
  if (inflateInit2(&zs, 15 + 16) != Z_OK) DF_FAIL("cannot decompress '", path, "': zlib failed to initialise");
  struct End {
    z_stream* z;
    ~End() { inflateEnd(z); }
  } end_guard{&zs};
  const uint8_t* const in_end = in.data() + in.size();
  zs.next_in = in.data();
  std::vector<uint8_t> out;
  size_t produced = 0;
  for (;;) {
    zs.avail_in = static_cast<uInt>(std::min<size_t>(in_end - zs.next_in, UINT_MAX));
    if (produced == out.size()) {
      if (produced > max_bytes)
        DF_FAIL("cannot decompress '", path, "': more than ", max_bytes, " bytes of output");
      out.resize(std::min(std::max<size_t>(out.size() * 2, in.size() * 4), max_bytes + 1));
    }
    zs.next_out = out.data() + produced;
    zs.avail_out = static_cast<uInt>(std::min<size_t>(out.size() - produced, UINT_MAX));
    const uInt room = zs.avail_out;
    int r = inflate(&zs, Z_NO_FLUSH);
    produced += room - zs.avail_out;
    if (produced > max_bytes) DF_FAIL("cannot decompress '", path, "': more than ", max_bytes, " bytes of output");
    if (r == Z_STREAM_END) {
      size_t left = static_cast<size_t>(in_end - zs.next_in);
      if (left == 0) break;
      // gzip allows several members back to back (`cat a.gz b.gz`); anything else is damage.
      if (left >= 2 && zs.next_in[0] == 0x1f && zs.next_in[1] == 0x8b) {
        inflateReset(&zs);
        continue;
      }
      DF_FAIL("cannot decompress '", path, "': ", left, " bytes of trailing data after the gzip stream");
    }
    if (r == Z_OK) continue;
    if (r == Z_BUF_ERROR && zs.next_in == in_end)
      DF_FAIL("cannot decompress '", path, "': truncated gzip stream (", in.size(), " compressed bytes, ", produced,
              " decompressed before it ended)");
    if (r == Z_BUF_ERROR) continue;  // the output was full: grow it
    DF_FAIL("cannot decompress '", path, "': corrupt gzip data (", zs.msg ? zs.msg : "zlib error " + std::to_string(r),
            ")");
  }
  out.resize(produced);
  return out;
}

Tensor parse_idx_images(const uint8_t* data, size_t n, const std::string& name) {
  // The magic first: a label file passed as images should say so, not that it is truncated.
  if (n >= 4 && be32(data) != 0x00000803u)
    DF_FAIL("'", name, "' is not an IDX image file: magic number ", hex32(be32(data)),
            ", expected 0x00000803 (unsigned bytes, 3 dimensions)");
  if (n < 16)
    DF_FAIL("IDX image file '", name, "' is truncated: expected at least 16 header bytes, found ", n);
  const uint64_t count = be32(data + 4), rows = be32(data + 8), cols = be32(data + 12);
  if (rows == 0 || cols == 0) DF_FAIL("IDX image file '", name, "' has images of ", rows, "x", cols, " pixels");
  if (count == 0) DF_FAIL("IDX image file '", name, "' holds no images");
  // Three u32 factors can exceed 64 bits; 128-bit arithmetic cannot overflow here.
  const unsigned __int128 expected = static_cast<unsigned __int128>(count) * rows * cols + 16;
  if (expected != n) {
    const std::string want = expected > UINT64_MAX ? std::string("more than 2^64") : std::to_string(uint64_t(expected));
    DF_FAIL("IDX image file '", name, "' is ", expected > n ? "truncated" : "too long", ": ", count, " images of ",
            rows, "x", cols, " need ", want, " bytes, found ", n);
  }
  Tensor t = Tensor::empty({int64_t(count), int64_t(rows), int64_t(cols), 1});
  detail::pixels_to_floats(data + 16, t.data<float>(), static_cast<size_t>(t.numel()));
  return t;
}

Tensor parse_idx_labels(const uint8_t* data, size_t n, const std::string& name) {
  if (n >= 4 && be32(data) != 0x00000801u)
    DF_FAIL("'", name, "' is not an IDX label file: magic number ", hex32(be32(data)),
            ", expected 0x00000801 (unsigned bytes, 1 dimension)");
  if (n < 8) DF_FAIL("IDX label file '", name, "' is truncated: expected at least 8 header bytes, found ", n);
  const uint64_t count = be32(data + 4);
  if (count + 8 != n)
    DF_FAIL("IDX label file '", name, "' is ", count + 8 > n ? "truncated" : "too long", ": ", count, " labels need ",
            count + 8, " bytes, found ", n);
  Tensor t = Tensor::empty({int64_t(count)}, DType::i64);
  int64_t* p = t.data<int64_t>();
  for (uint64_t i = 0; i < count; ++i) p[i] = data[8 + i];
  return t;
}

Dataset load_idx(const std::string& images_path, const std::string& labels_path) {
  std::vector<uint8_t> ib = read_maybe_gzip(images_path);
  std::vector<uint8_t> lb = read_maybe_gzip(labels_path);
  Dataset d;
  d.images = parse_idx_images(ib.data(), ib.size(), images_path);
  d.labels = parse_idx_labels(lb.data(), lb.size(), labels_path);
  if (d.images.size(0) != d.labels.size(0))
    DF_FAIL("IDX files disagree: '", images_path, "' has ", d.images.size(0), " images but '", labels_path, "' has ",
            d.labels.size(0), " labels");
  const int64_t* l = d.labels.data<int64_t>();
  d.num_classes = static_cast<int>(*std::max_element(l, l + d.labels.numel())) + 1;
  d.name = images_path;
  return d;
}

std::vector<std::string> fashion_mnist_class_names() {
  return {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"};
}

Dataset load_fashion_mnist(const std::string& split, const std::string& dir) {
  std::string prefix;
  if (split == "train") prefix = "train";
  else if (split == "test" || split == "t10k") prefix = "t10k";
  else DF_FAIL("Fashion-MNIST split must be 'train' or 'test', got '", split, "'");
  auto find = [&](const std::string& stem) {
    const std::string gz = dir + "/" + prefix + stem + ".gz", raw = dir + "/" + prefix + stem;
    if (exists(gz)) return gz;
    if (exists(raw)) return raw;
    DF_FAIL("Fashion-MNIST not found: neither '", gz, "' nor '", raw,
            "' exists (install the Debian package dataset-fashion-mnist, or pass its folder)");
  };
  const std::string images = find("-images-idx3-ubyte");
  const std::string labels = find("-labels-idx1-ubyte");
  Dataset d = load_idx(images, labels);
  // Ten classes by definition, even if a subset file happens to lack the last ones.
  DF_CHECK(d.num_classes <= 10, "Fashion-MNIST labels in '", dir, "' go up to ", d.num_classes - 1,
           "; expected 0..9");
  d.num_classes = 10;
  d.class_names = fashion_mnist_class_names();
  d.name = "fashion-mnist-" + split;
  return d;
}

}  // namespace diffuse::data
