// models/data: IDX, CIFAR-10, image folders, 2-D toy sets and the batcher; every malformed input
// has its own test that checks the error names the file and the problem.
#include <catch2/catch.hpp>

#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>

#include "core/file_io.h"
#include "core/image_io.h"
#include "models/data/dataset.h"
#include "tests/test_util.h"

using namespace diffuse;
using namespace diffuse::data;
namespace fs = std::filesystem;

namespace {

using test::TempDir;

void put(const std::string& path, const std::vector<uint8_t>& b) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

std::vector<uint8_t> gzip_bytes(const std::vector<uint8_t>& raw) {
  z_stream zs{};
  REQUIRE(deflateInit2(&zs, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) == Z_OK);
  std::vector<uint8_t> out(deflateBound(&zs, raw.size()) + 64);
  zs.next_in = const_cast<uint8_t*>(raw.data());
  zs.avail_in = static_cast<uInt>(raw.size());
  zs.next_out = out.data();
  zs.avail_out = static_cast<uInt>(out.size());
  REQUIRE(deflate(&zs, Z_FINISH) == Z_STREAM_END);
  out.resize(zs.total_out);
  deflateEnd(&zs);
  return out;
}

void be32(std::vector<uint8_t>& b, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) b.push_back(static_cast<uint8_t>(v >> s));
}

std::vector<uint8_t> idx_images(uint32_t n, uint32_t rows, uint32_t cols, const std::vector<uint8_t>& px,
                                uint32_t magic = 0x803) {
  std::vector<uint8_t> b;
  be32(b, magic);
  be32(b, n);
  be32(b, rows);
  be32(b, cols);
  b.insert(b.end(), px.begin(), px.end());
  return b;
}

std::vector<uint8_t> idx_labels(const std::vector<uint8_t>& labels, uint32_t magic = 0x801) {
  std::vector<uint8_t> b;
  be32(b, magic);
  be32(b, static_cast<uint32_t>(labels.size()));
  b.insert(b.end(), labels.begin(), labels.end());
  return b;
}

std::vector<uint8_t> random_bytes(size_t n, std::mt19937_64& rng) {
  std::vector<uint8_t> v(n);
  for (auto& x : v) x = static_cast<uint8_t>(rng());
  return v;
}

// The error `f` throws; fails the test if it throws nothing or something else.
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  FAIL("expected diffuse::Error");
  return {};
}

bool has(const std::string& s, const std::string& needle) {
  UNSCOPED_INFO("message: " << s);
  return s.find(needle) != std::string::npos;
}

}  // namespace

// ---- IDX ------------------------------------------------------------------------------------

TEST_CASE("idx: raw and gzipped files load to NHWC in [-1, 1]", "[cpu][data][idx]") {
  std::mt19937_64 rng(test::next_seed());
  TempDir dir;
  const uint32_t N = 7, R = 5, C = 4;
  std::vector<uint8_t> px = random_bytes(N * R * C, rng);
  px[0] = 0;
  px[1] = 255;
  std::vector<uint8_t> lab{3, 0, 9, 1, 1, 2, 5};
  put(dir / "img", idx_images(N, R, C, px));
  put(dir / "lab", idx_labels(lab));
  put(dir / "img.gz", gzip_bytes(idx_images(N, R, C, px)));
  put(dir / "lab.gz", gzip_bytes(idx_labels(lab)));
  for (auto [ip, lp] : {std::pair{"img", "lab"}, std::pair{"img.gz", "lab.gz"}, std::pair{"img.gz", "lab"}}) {
    Dataset d = load_idx(dir / ip, dir / lp);
    REQUIRE(d.images.shape() == Shape{N, R, C, 1});
    REQUIRE(d.labels.dtype() == DType::i64);
    CHECK(d.labels.to_vector_i64() == std::vector<int64_t>(lab.begin(), lab.end()));
    CHECK(d.num_classes == 10);
    std::vector<float> v = d.images.to_vector();
    for (size_t i = 0; i < px.size(); ++i) CHECK(v[i] == px[i] / 127.5f - 1.0f);
    CHECK(v[0] == -1.0f);
    CHECK(v[1] == 1.0f);
  }
}

TEST_CASE("idx rejects: truncated image file", "[cpu][data][idx]") {
  TempDir dir;
  std::vector<uint8_t> b = idx_images(10, 28, 28, std::vector<uint8_t>(10 * 28 * 28 - 100, 7));
  put(dir / "img", b);
  put(dir / "lab", idx_labels(std::vector<uint8_t>(10, 1)));
  std::string e = error_of([&] { load_idx(dir / "img", dir / "lab"); });
  CHECK(has(e, dir / "img"));
  CHECK(has(e, "truncated"));
  CHECK(has(e, "need 7856 bytes, found 7756"));
  // Truncated inside the header, and truncated after gzip (the check runs on the inflated bytes).
  put(dir / "short", std::vector<uint8_t>{0, 0, 8, 3, 0, 0});
  e = error_of([&] { load_idx(dir / "short", dir / "lab"); });
  CHECK(has(e, dir / "short"));
  CHECK(has(e, "at least 16 header bytes, found 6"));
  put(dir / "img.gz", gzip_bytes(b));
  e = error_of([&] { load_idx(dir / "img.gz", dir / "lab"); });
  CHECK(has(e, dir / "img.gz"));
  CHECK(has(e, "found 7756"));
}

TEST_CASE("idx rejects: truncated or over-long label file", "[cpu][data][idx]") {
  TempDir dir;
  put(dir / "img", idx_images(4, 2, 2, std::vector<uint8_t>(16, 1)));
  std::vector<uint8_t> lab = idx_labels({1, 2, 3, 4});
  lab.pop_back();
  put(dir / "lab", lab);
  std::string e = error_of([&] { load_idx(dir / "img", dir / "lab"); });
  CHECK(has(e, dir / "lab"));
  CHECK(has(e, "truncated: 4 labels need 12 bytes, found 11"));
  lab.push_back(4);
  lab.push_back(99);
  put(dir / "lab", lab);
  e = error_of([&] { load_idx(dir / "img", dir / "lab"); });
  CHECK(has(e, "too long"));
  CHECK(has(e, "found 13"));
}

TEST_CASE("idx rejects: trailing bytes after the images", "[cpu][data][idx]") {
  TempDir dir;
  put(dir / "img", idx_images(2, 2, 2, std::vector<uint8_t>(9, 1)));
  put(dir / "lab", idx_labels({0, 1}));
  std::string e = error_of([&] { load_idx(dir / "img", dir / "lab"); });
  CHECK(has(e, dir / "img"));
  CHECK(has(e, "too long: 2 images of 2x2 need 24 bytes, found 25"));
}

TEST_CASE("idx rejects: wrong magic numbers", "[cpu][data][idx]") {
  TempDir dir;
  put(dir / "img", idx_images(2, 2, 2, std::vector<uint8_t>(8, 1)));
  put(dir / "lab", idx_labels({0, 1}));
  // Files swapped: each has the other's magic.
  std::string e = error_of([&] { load_idx(dir / "lab", dir / "img"); });
  CHECK(has(e, dir / "lab"));
  CHECK(has(e, "magic number 0x00000801, expected 0x00000803"));
  e = error_of([&] { load_idx(dir / "img", dir / "img"); });
  CHECK(has(e, "magic number 0x00000803, expected 0x00000801"));
  // Some other file altogether.
  put(dir / "png", {0x89, 'P', 'N', 'G', 13, 10, 26, 10, 0, 0, 0, 0, 0, 0, 0, 0});
  e = error_of([&] { load_idx(dir / "png", dir / "lab"); });
  CHECK(has(e, dir / "png"));
  CHECK(has(e, "not an IDX image file: magic number 0x89504e47"));
}

TEST_CASE("idx rejects: image and label counts differ", "[cpu][data][idx]") {
  TempDir dir;
  put(dir / "img", idx_images(3, 2, 2, std::vector<uint8_t>(12, 1)));
  put(dir / "lab", idx_labels({0, 1}));
  std::string e = error_of([&] { load_idx(dir / "img", dir / "lab"); });
  CHECK(has(e, dir / "img"));
  CHECK(has(e, dir / "lab"));
  CHECK(has(e, "has 3 images but"));
  CHECK(has(e, "has 2 labels"));
}

TEST_CASE("idx rejects: sizes whose product overflows", "[cpu][data][idx]") {
  std::vector<uint8_t> b = idx_images(0xffffffffu, 0xffffffffu, 0xffffffffu, {1, 2, 3});
  std::string e = error_of([&] { parse_idx_images(b.data(), b.size(), "huge.idx"); });
  CHECK(has(e, "huge.idx"));
  CHECK(has(e, "more than 2^64 bytes, found 19"));
  b = idx_images(3, 0, 5, {});
  CHECK(has(error_of([&] { parse_idx_images(b.data(), b.size(), "zero.idx"); }), "images of 0x5 pixels"));
}

TEST_CASE("gzip rejects: garbage after the gzip magic", "[cpu][data][gzip]") {
  TempDir dir;
  std::mt19937_64 rng(test::next_seed());
  std::vector<uint8_t> junk = random_bytes(200, rng);
  junk[0] = 0x1f;
  junk[1] = 0x8b;
  junk[2] = 8;     // deflate, so the header parse gets past the method byte
  junk[3] = 0xe0;  // reserved flag bits set: zlib must refuse the header
  put(dir / "junk.gz", junk);
  std::string e = error_of([&] { read_maybe_gzip(dir / "junk.gz"); });
  CHECK(has(e, dir / "junk.gz"));
  CHECK(has(e, "corrupt gzip data"));
  // A valid header followed by a corrupted deflate body.
  std::vector<uint8_t> gz = gzip_bytes(random_bytes(5000, rng));
  for (size_t i = 12; i < gz.size() - 8; i += 3) gz[i] ^= 0x5a;
  put(dir / "bad.gz", gz);
  e = error_of([&] { read_maybe_gzip(dir / "bad.gz"); });
  CHECK(has(e, dir / "bad.gz"));
  CHECK((has(e, "corrupt gzip data") || has(e, "truncated gzip stream")));
}

TEST_CASE("gzip rejects: truncated stream and trailing data", "[cpu][data][gzip]") {
  TempDir dir;
  std::mt19937_64 rng(test::next_seed());
  std::vector<uint8_t> raw = random_bytes(20000, rng);
  std::vector<uint8_t> gz = gzip_bytes(raw);
  put(dir / "cut.gz", std::vector<uint8_t>(gz.begin(), gz.begin() + static_cast<std::ptrdiff_t>(gz.size() / 2)));
  std::string e = error_of([&] { read_maybe_gzip(dir / "cut.gz"); });
  CHECK(has(e, dir / "cut.gz"));
  CHECK(has(e, "truncated gzip stream"));
  // Cut inside the 8-byte trailer (CRC and length): the data is all there but unverified.
  put(dir / "notrailer.gz", std::vector<uint8_t>(gz.begin(), gz.end() - 3));
  CHECK(has(error_of([&] { read_maybe_gzip(dir / "notrailer.gz"); }), "truncated gzip stream"));
  std::vector<uint8_t> tail = gz;
  tail.insert(tail.end(), {'x', 'y', 'z'});
  put(dir / "tail.gz", tail);
  e = error_of([&] { read_maybe_gzip(dir / "tail.gz"); });
  CHECK(has(e, dir / "tail.gz"));
  CHECK(has(e, "3 bytes of trailing data"));
  // Two members back to back (as `cat a.gz b.gz`) are one stream by the gzip spec.
  std::vector<uint8_t> two = gz;
  std::vector<uint8_t> gz2 = gzip_bytes({1, 2, 3});
  two.insert(two.end(), gz2.begin(), gz2.end());
  put(dir / "two.gz", two);
  std::vector<uint8_t> both = raw;
  both.insert(both.end(), {1, 2, 3});
  CHECK(read_maybe_gzip(dir / "two.gz") == both);
  put(dir / "ok.gz", gz);
  CHECK(read_maybe_gzip(dir / "ok.gz") == raw);
  // The output cap guards against decompression bombs: 10^6 zeros compress to ~1 KB.
  put(dir / "bomb.gz", gzip_bytes(std::vector<uint8_t>(1000000, 0)));
  e = error_of([&] { read_maybe_gzip(dir / "bomb.gz", 10000); });
  CHECK(has(e, dir / "bomb.gz"));
  CHECK(has(e, "more than 10000 bytes of output"));
}

TEST_CASE("idx: random truncations and byte flips fail cleanly", "[cpu][data][idx]") {
  std::mt19937_64 rng(test::next_seed());
  std::vector<uint8_t> good = idx_images(3, 4, 5, random_bytes(60, rng));
  for (size_t len = 0; len < good.size(); ++len)
    CHECK_THROWS_AS(parse_idx_images(good.data(), len, "cut"), Error);
  for (int it = 0; it < 500; ++it) {
    std::vector<uint8_t> m = good;
    m[rng() % 16] = static_cast<uint8_t>(rng());
    try {
      Tensor t = parse_idx_images(m.data(), m.size(), "m");
      CHECK(t.numel() == 60);
    } catch (const Error& e) {
      CHECK(has(e.what(), "'m'"));
    }
  }
}

TEST_CASE("fashion-mnist: the Debian package loads", "[cpu][data][idx]") {
  // scripts/install-deps.sh installs the package: its absence is a failed install, not a skip.
  INFO(kFashionMnistDir << " must hold Debian's dataset-fashion-mnist (scripts/install-deps.sh installs it)");
  REQUIRE(fs::exists(std::string(kFashionMnistDir) + "/train-images-idx3-ubyte.gz"));
  for (auto [split, n] : {std::pair{"train", 60000}, std::pair{"test", 10000}}) {
    Dataset d = load_fashion_mnist(split);
    REQUIRE(d.images.shape() == Shape{n, 28, 28, 1});
    REQUIRE(d.labels.shape() == Shape{n});
    CHECK(d.num_classes == 10);
    std::vector<float> v = d.images.to_vector();
    auto [lo, hi] = std::minmax_element(v.begin(), v.end());
    CHECK(*lo == -1.0f);
    CHECK(*hi == 1.0f);
    // Every value is a pixel byte mapped exactly.
    for (size_t i = 0; i < v.size(); i += 997) CHECK(std::fabs((v[i] + 1.0f) * 127.5f - std::round((v[i] + 1.0f) * 127.5f)) < 1e-3);
    // Fashion-MNIST is balanced: n / 10 images per class.
    std::vector<int64_t> count(10);
    for (int64_t l : d.labels.to_vector_i64()) {
      REQUIRE(l >= 0);
      REQUIRE(l < 10);
      ++count[l];
    }
    CHECK(count == std::vector<int64_t>(10, n / 10));
  }
}

TEST_CASE("fashion-mnist: a missing folder says what to install", "[cpu][data][idx]") {
  std::string e = error_of([] { load_fashion_mnist("train", "/nonexistent/fmnist"); });
  CHECK(has(e, "/nonexistent/fmnist/train-images-idx3-ubyte.gz"));
  CHECK(has(e, "dataset-fashion-mnist"));
  CHECK(has(error_of([] { load_fashion_mnist("validation"); }), "'validation'"));
}

// ---- CIFAR-10 -------------------------------------------------------------------------------

namespace {

// n records; record i has label labels[i] and channel c of pixel p equal to (i * 7 + c * 50 + p) & 255.
std::vector<uint8_t> cifar_bytes(const std::vector<uint8_t>& labels) {
  std::vector<uint8_t> b;
  for (size_t i = 0; i < labels.size(); ++i) {
    b.push_back(labels[i]);
    for (int c = 0; c < 3; ++c)
      for (int p = 0; p < 1024; ++p) b.push_back(static_cast<uint8_t>((i * 7 + c * 50 + p) & 255));
  }
  return b;
}

}  // namespace

TEST_CASE("cifar10: records become HWC images and labels", "[cpu][data][cifar]") {
  TempDir dir;
  put(dir / "one.bin", cifar_bytes({4, 9, 0}));
  Dataset d = load_cifar10(dir / "one.bin");
  REQUIRE(d.images.shape() == Shape{3, 32, 32, 3});
  CHECK(d.labels.to_vector_i64() == std::vector<int64_t>{4, 9, 0});
  CHECK(d.num_classes == 10);
  std::vector<float> v = d.images.to_vector();
  for (int i = 0; i < 3; ++i)
    for (int p = 0; p < 1024; p += 37)
      for (int c = 0; c < 3; ++c)
        CHECK(v[(i * 1024 + p) * 3 + c] == static_cast<float>((i * 7 + c * 50 + p) & 255) / 127.5f - 1.0f);
}

TEST_CASE("cifar10: a folder of batches, train and test", "[cpu][data][cifar]") {
  TempDir dir;
  const std::string sub = dir / "cifar-10-batches-bin";
  put(sub + "/data_batch_2.bin", cifar_bytes({2, 2}));
  put(sub + "/data_batch_1.bin", cifar_bytes({1}));
  put(sub + "/test_batch.bin", cifar_bytes({7, 8, 9}));
  put(sub + "/batches.meta.txt", {'a', '\n'});
  Dataset tr = load_cifar10(dir.path, "train");
  CHECK(tr.labels.to_vector_i64() == std::vector<int64_t>{1, 2, 2});  // batch files in sorted order
  // The second image is record 0 of data_batch_2: pixel 0 channel 1 = 50.
  CHECK(tr.images.to_vector()[1 * 3072 + 1] == 50 / 127.5f - 1.0f);
  Dataset te = load_cifar10(sub, "test");
  CHECK(te.size() == 3);
  CHECK(te.name == "cifar10-test");
}

TEST_CASE("cifar10 rejects: size not a multiple of 3073", "[cpu][data][cifar]") {
  TempDir dir;
  std::vector<uint8_t> b = cifar_bytes({1, 2});
  b.resize(b.size() - 5);
  put(dir / "bad.bin", b);
  std::string e = error_of([&] { load_cifar10(dir / "bad.bin"); });
  CHECK(has(e, dir / "bad.bin"));
  CHECK(has(e, "6141 bytes, not a whole number of 3073-byte records (1 records and 3068 bytes left over)"));
  put(dir / "empty.bin", {});
  CHECK(has(error_of([&] { load_cifar10(dir / "empty.bin"); }), "is empty"));
}

TEST_CASE("cifar10 rejects: label out of range", "[cpu][data][cifar]") {
  TempDir dir;
  put(dir / "lab.bin", cifar_bytes({3, 10, 1}));
  std::string e = error_of([&] { load_cifar10(dir / "lab.bin"); });
  CHECK(has(e, dir / "lab.bin"));
  CHECK(has(e, "record 1 has label 10"));
}

TEST_CASE("cifar10 rejects: folder without batches, missing file", "[cpu][data][cifar]") {
  TempDir dir;
  std::string e = error_of([&] { load_cifar10(dir.path, "train"); });
  CHECK(has(e, dir.path));
  CHECK(has(e, "data_batch_*.bin"));
  CHECK(has(error_of([&] { load_cifar10(dir.path, "test"); }), "test_batch.bin"));
  e = error_of([&] { load_cifar10(dir / "nope.bin"); });
  CHECK(has(e, "nope.bin"));
  CHECK(has(e, "No such file"));
}

// ---- image folders --------------------------------------------------------------------------

namespace {

void put_png(const std::string& path, int w, int h, int c, uint8_t value) {
  fs::create_directories(fs::path(path).parent_path());
  write_png(path, Image8{w, h, c, std::vector<uint8_t>(static_cast<size_t>(w) * h * c, value)});
}

}  // namespace

TEST_CASE("image folder: resize, crop, channels and sub-folder labels", "[cpu][data][folder]") {
  TempDir dir;
  // Constant images survive resizing exactly, so each output is checkable by value.
  put_png(dir / "cats/b.png", 40, 20, 3, 10);
  put_png(dir / "cats/a.PNG", 8, 8, 1, 20);
  put_png(dir / "dogs/x/deep.png", 5, 9, 3, 30);
  put_png(dir / "ants/z.png", 16, 16, 3, 40);
  put(dir / "dogs/notes.txt", {'h', 'i'});
  ImageFolderOptions opt;
  opt.size = 12;
  opt.class_labels = true;
  Dataset d = load_image_folder(dir.path, opt);
  REQUIRE(d.images.shape() == Shape{4, 12, 12, 3});
  CHECK(d.num_classes == 3);  // ants, cats, dogs
  CHECK(d.labels.to_vector_i64() == std::vector<int64_t>{0, 1, 1, 2});
  std::vector<float> v = d.images.to_vector();
  const uint8_t want[] = {40, 20, 10, 30};  // ants/z, cats/a.PNG, cats/b, dogs/x/deep
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 12 * 12 * 3; j += 13) CHECK(v[i * 432 + j] == want[i] / 127.5f - 1.0f);

  opt.class_labels = false;
  opt.channels = 1;
  opt.size = 5;
  Dataset g = load_image_folder(dir.path, opt);
  CHECK(g.images.shape() == Shape{4, 5, 5, 1});
  CHECK(!g.labels.defined());
  CHECK(g.num_classes == 0);
}

TEST_CASE("image folder: the crop keeps the centre", "[cpu][data][folder]") {
  TempDir dir;
  // 6 x 2 image: left two columns 0, middle two 200, right two 0. Crop to 2 x 2 = the middle.
  Image8 img{6, 2, 1, {0, 0, 200, 200, 0, 0, 0, 0, 200, 200, 0, 0}};
  write_png(dir / "wide.png", img);
  ImageFolderOptions opt;
  opt.size = 2;
  opt.channels = 1;
  Dataset d = load_image_folder(dir.path, opt);
  CHECK(d.images.to_vector() == std::vector<float>(4, 200 / 127.5f - 1.0f));
}

TEST_CASE("image folder rejects: an unreadable image", "[cpu][data][folder]") {
  TempDir dir;
  put_png(dir / "good.png", 4, 4, 3, 1);
  put(dir / "broken.jpg", {0xff, 0xd8, 0xff, 0xe0, 0, 0x10, 'J', 'F', 'I', 'F'});
  std::string e = error_of([&] { load_image_folder(dir.path); });
  CHECK(has(e, dir / "broken.jpg"));
  CHECK(has(e, "cannot decode"));
}

TEST_CASE("image folder rejects: empty folder, no images, not a folder", "[cpu][data][folder]") {
  TempDir dir;
  std::string e = error_of([&] { load_image_folder(dir.path); });
  CHECK(has(e, dir.path));
  CHECK(has(e, "holds no images"));
  put(dir / "readme.txt", {'x'});
  fs::create_directories(dir / "classA");
  ImageFolderOptions opt;
  opt.class_labels = true;
  e = error_of([&] { load_image_folder(dir.path, opt); });
  CHECK(has(e, "holds no images"));
  CHECK(has(e, "class sub-folders"));
  e = error_of([&] { load_image_folder(dir / "readme.txt"); });
  CHECK(has(e, "readme.txt"));
  CHECK(has(e, "not a directory"));
}

TEST_CASE("image folder rejects: loose image when labelling by sub-folder", "[cpu][data][folder]") {
  TempDir dir;
  put_png(dir / "a/x.png", 4, 4, 3, 1);
  put_png(dir / "loose.png", 4, 4, 3, 1);
  ImageFolderOptions opt;
  opt.class_labels = true;
  std::string e = error_of([&] { load_image_folder(dir.path, opt); });
  CHECK(has(e, dir / "loose.png"));
  CHECK(has(e, "not inside a class sub-folder"));
}

// ---- 2-D toy sets ---------------------------------------------------------------------------

TEST_CASE("toy 2-D sets: deterministic, prefix-stable, centred, unit variance", "[cpu][data][toy]") {
  const uint64_t seed = test::next_seed();
  INFO("seed " << seed);
  for (const char* name : {"swiss_roll", "8gaussians", "moons"}) {
    INFO(name);
    const int64_t n = 20000;
    Dataset a = toy_2d(name, n, seed);
    REQUIRE(a.images.shape() == Shape{n, 2});
    CHECK(a.images.to_vector() == toy_2d(name, n, seed).images.to_vector());
    std::vector<float> pre = toy_2d(name, 100, seed).images.to_vector();
    std::vector<float> all = a.images.to_vector();
    CHECK(std::equal(pre.begin(), pre.end(), all.begin()));
    CHECK(toy_2d(name, 100, seed + 1).images.to_vector() != pre);
    double mx = 0, my = 0, vx = 0, vy = 0;
    for (int64_t i = 0; i < n; ++i) {
      mx += all[2 * i];
      my += all[2 * i + 1];
    }
    mx /= n;
    my /= n;
    for (int64_t i = 0; i < n; ++i) {
      vx += (all[2 * i] - mx) * (all[2 * i] - mx);
      vy += (all[2 * i + 1] - my) * (all[2 * i + 1] - my);
    }
    vx /= n;
    vy /= n;
    // Sampling error at n = 20000: about 0.01 on the means and 1-2% on the variances; the
    // moments were computed for the exact distributions, so 0.05 and 10% leave a wide margin.
    CHECK(std::fabs(mx) < 0.05);
    CHECK(std::fabs(my) < 0.05);
    CHECK((vx + vy) / 2 == Approx(1.0).epsilon(0.1));
    CHECK(vx > 0.3);
    CHECK(vy > 0.3);
  }
}

TEST_CASE("toy 2-D sets: labels match the shape", "[cpu][data][toy]") {
  const uint64_t seed = test::next_seed();
  Dataset g = eight_gaussians(4000, seed);
  CHECK(g.num_classes == 8);
  std::vector<float> p = g.images.to_vector();
  std::vector<int64_t> l = g.labels.to_vector_i64();
  std::vector<int> count(8);
  const double r = std::sqrt(2.0 * (1 - 0.01));
  for (size_t i = 0; i < l.size(); ++i) {
    REQUIRE(l[i] >= 0);
    REQUIRE(l[i] < 8);
    ++count[l[i]];
    double a = l[i] * M_PI / 4;
    // sigma = 0.1: a point 0.6 (6 sigma) from its mode would happen once in ~10^7 draws.
    CHECK(std::hypot(p[2 * i] - r * std::cos(a), p[2 * i + 1] - r * std::sin(a)) < 0.6);
  }
  for (int c : count) CHECK(c > 400);  // 500 expected, sd ~21
  Dataset m = two_moons(4000, seed);
  std::vector<int64_t> ml = m.labels.to_vector_i64();
  int64_t ones = std::count(ml.begin(), ml.end(), 1);
  CHECK(ones > 1800);
  CHECK(ones < 2200);
  CHECK(!swiss_roll(10, seed).labels.defined());
  CHECK_THROWS_WITH(toy_2d("spiral", 10, seed), Catch::Contains("unknown 2-D toy set 'spiral'"));
}

// ---- the batcher ----------------------------------------------------------------------------

namespace {

// N "images" of shape (1, W, 1) whose pixel w is i * 100 + w, and labels i: a batch row tells
// which sample it came from and whether it was mirrored.
Dataset indexed(int64_t n, int64_t W = 3) {
  Dataset d;
  d.images = Tensor::empty({n, 1, W, 1});
  float* p = d.images.data<float>();
  for (int64_t i = 0; i < n; ++i)
    for (int64_t w = 0; w < W; ++w) p[i * W + w] = static_cast<float>(i * 100 + w);
  std::vector<int64_t> l(n);
  for (int64_t i = 0; i < n; ++i) l[i] = i;
  d.labels = Tensor::from_vector_i64(l, {n});
  d.num_classes = static_cast<int>(n);
  d.name = "indexed";
  return d;
}

}  // namespace

TEST_CASE("batcher: an epoch visits every sample once, in a seeded order", "[cpu][data][batcher]") {
  const int64_t n = 103;
  BatcherOptions o;
  o.batch_size = 10;
  o.seed = test::next_seed();
  Batcher b(indexed(n), o);
  CHECK(b.batches_per_epoch() == 10);  // drop_last
  std::set<int64_t> seen;
  std::vector<int64_t> order0;
  for (int k = 0; k < 10; ++k) {
    Batch x = b.next();
    CHECK(x.epoch == 0);
    REQUIRE(x.images.shape() == Shape{10, 1, 3, 1});
    std::vector<int64_t> l = x.labels.to_vector_i64();
    std::vector<float> v = x.images.to_vector();
    for (int j = 0; j < 10; ++j) {
      CHECK(v[j * 3] == static_cast<float>(l[j] * 100));  // images and labels stay paired
      seen.insert(l[j]);
      order0.push_back(l[j]);
    }
  }
  CHECK(seen.size() == 100);
  std::vector<int64_t> identity(100);
  for (int i = 0; i < 100; ++i) identity[i] = i;
  CHECK(order0 != identity);
  // The 11th batch starts epoch 1 with a different order; the same seed gives the same order.
  Batch x = b.next();
  CHECK(x.epoch == 1);
  CHECK(b.order() == epoch_permutation(n, o.seed, 1));
  CHECK(epoch_permutation(n, o.seed, 1) != epoch_permutation(n, o.seed, 0));
  CHECK(epoch_permutation(n, o.seed + 1, 0) != epoch_permutation(n, o.seed, 0));
  std::vector<int64_t> p = epoch_permutation(n, o.seed, 5);
  REQUIRE(p.size() == static_cast<size_t>(n));
  std::sort(p.begin(), p.end());
  for (int64_t i = 0; i < n; ++i) CHECK(p[i] == i);  // a permutation
}

TEST_CASE("batcher: keep_last and no shuffle", "[cpu][data][batcher]") {
  BatcherOptions o;
  o.batch_size = 4;
  o.shuffle = false;
  o.drop_last = false;
  Batcher b(indexed(10), o);
  CHECK(b.batches_per_epoch() == 3);
  CHECK(b.next().labels.to_vector_i64() == std::vector<int64_t>{0, 1, 2, 3});
  CHECK(b.next().labels.to_vector_i64() == std::vector<int64_t>{4, 5, 6, 7});
  Batch last = b.next();
  CHECK(last.images.shape() == Shape{2, 1, 3, 1});
  CHECK(last.labels.to_vector_i64() == std::vector<int64_t>{8, 9});
  Batch again = b.next();
  CHECK(again.epoch == 1);
  CHECK(again.labels.to_vector_i64() == std::vector<int64_t>{0, 1, 2, 3});
  o.drop_last = true;
  o.batch_size = 11;
  CHECK_THROWS_WITH(Batcher(indexed(10), o), Catch::Contains("fewer than one batch of 11"));
}

TEST_CASE("batcher: random flips mirror about half the images along W", "[cpu][data][batcher]") {
  BatcherOptions o;
  o.batch_size = 50;
  o.seed = test::next_seed();
  o.random_flip = true;
  const int64_t W = 4;
  Batcher b(indexed(200, W), o);
  int flipped = 0, total = 0;
  for (int k = 0; k < 8; ++k) {
    Batch x = b.next();
    std::vector<float> v = x.images.to_vector();
    std::vector<int64_t> l = x.labels.to_vector_i64();
    for (int j = 0; j < 50; ++j) {
      bool f = v[j * W] == static_cast<float>(l[j] * 100 + W - 1);
      for (int64_t w = 0; w < W; ++w)
        CHECK(v[j * W + w] == static_cast<float>(l[j] * 100 + (f ? W - 1 - w : w)));
      flipped += f;
      ++total;
    }
  }
  // 400 fair coin flips: mean 200, sd 10.
  CHECK(flipped > 150);
  CHECK(flipped < 250);
  CHECK(total == 400);
  o.random_flip = true;
  CHECK_THROWS_WITH(Batcher(toy_2d("moons", 100, 1), o), Catch::Contains("random_flip needs (N, H, W, C)"));
}

TEST_CASE("batcher: a restored state replays exactly the same batches", "[cpu][data][batcher]") {
  BatcherOptions o;
  o.batch_size = 7;
  o.seed = test::next_seed();
  o.random_flip = true;
  Dataset d = indexed(30, 5);
  Batcher a(d, o);
  for (int k = 0; k < 5; ++k) a.next();  // into epoch 1 (4 batches per epoch)
  BatcherState s = a.state();
  CHECK(s.epoch == 1);
  CHECK(s.position == 7);
  std::vector<Batch> want;
  for (int k = 0; k < 9; ++k) want.push_back(a.next());  // crosses two more epoch boundaries

  Batcher c(d, o);  // a fresh process resuming from the two integers
  c.set_state(BatcherState{s.epoch, s.position});
  for (int k = 0; k < 9; ++k) {
    Batch x = c.next();
    CHECK(x.epoch == want[k].epoch);
    CHECK(x.labels.to_vector_i64() == want[k].labels.to_vector_i64());
    CHECK(x.images.to_vector() == want[k].images.to_vector());
  }
  CHECK(c.state().epoch == a.state().epoch);
  CHECK(c.state().position == a.state().position);
  CHECK_THROWS_WITH(c.set_state({0, 31}), Catch::Contains("invalid state"));
}
