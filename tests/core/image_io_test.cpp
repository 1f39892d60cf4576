// core/image_io: PNG round trips, the grid layout, the pixel mapping, resizing, JPEG decoding,
// and refusals that name the file.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include <stb/stb_image_write.h>

#include "core/file_io.h"
#include "core/image_io.h"
#include "tests/test_util.h"

using namespace diffuse;
namespace fs = std::filesystem;

namespace {

using test::TempDir;

// An (N, H, W, C) tensor whose values are exactly representable pixels p / 127.5 - 1.
Tensor random_pixels(const Shape& shape, std::mt19937_64& rng, std::vector<uint8_t>* bytes = nullptr) {
  Tensor t = Tensor::empty(shape);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) {
    uint8_t b = static_cast<uint8_t>(rng());
    if (bytes) bytes->push_back(b);
    p[i] = b / 127.5f - 1.0f;
  }
  return t;
}

}  // namespace

TEST_CASE("image_io: pixel mapping rounds, clamps and inverts the reader's", "[cpu][core][image_io]") {
  for (int p = 0; p < 256; ++p) CHECK(float_to_pixel(p / 127.5f - 1.0f) == p);
  CHECK(float_to_pixel(-1.0f) == 0);
  CHECK(float_to_pixel(1.0f) == 255);
  CHECK(float_to_pixel(0.0f) == 128);  // 127.5 rounds half up
  CHECK(float_to_pixel(-7.0f) == 0);
  CHECK(float_to_pixel(3.0f) == 255);
  CHECK(float_to_pixel(std::nanf("")) == 0);
  CHECK(float_to_pixel(INFINITY) == 255);
  CHECK(float_to_pixel(-INFINITY) == 0);
}

TEST_CASE("image_io: PNG write then read is exact, grey and RGB", "[cpu][core][image_io]") {
  std::mt19937_64 rng(test::next_seed());
  TempDir dir;
  for (int C : {1, 3}) {
    Tensor img = random_pixels({7, 5, C}, rng);
    const std::string path = dir / ("img" + std::to_string(C) + ".png");
    write_png(path, img);
    Tensor back = read_image(path);
    REQUIRE(back.shape() == img.shape());
    CHECK(back.to_vector() == img.to_vector());
    // (1, H, W, C) is accepted as one image.
    write_png(path, img.reshape({1, 7, 5, C}));
    CHECK(read_image(path).to_vector() == img.to_vector());
  }
  CHECK(fs::directory_iterator(dir.path) != fs::directory_iterator());
  for (const auto& e : fs::directory_iterator(dir.path))
    CHECK(e.path().filename().string().find(".tmp.") == std::string::npos);
}

TEST_CASE("image_io: upscaling repeats each pixel", "[cpu][core][image_io]") {
  std::mt19937_64 rng(test::next_seed());
  std::vector<uint8_t> bytes;
  Tensor img = random_pixels({3, 4, 1}, rng, &bytes);
  Image8 up = tensor_to_image(img, 3);
  REQUIRE(up.width == 12);
  REQUIRE(up.height == 9);
  for (int y = 0; y < 9; ++y)
    for (int x = 0; x < 12; ++x) CHECK(up.pixels[y * 12 + x] == bytes[(y / 3) * 4 + x / 3]);
}

TEST_CASE("image_io: grid places N images in a near-square grid with a border", "[cpu][core][image_io]") {
  std::mt19937_64 rng(test::next_seed());
  std::vector<uint8_t> bytes;
  const int N = 5, H = 3, W = 4, C = 3, S = 2, B = 2;
  Tensor batch = random_pixels({N, H, W, C}, rng, &bytes);
  Image8 g = make_grid(batch, S, B);
  // ceil(sqrt(5)) = 3 columns, 2 rows.
  REQUIRE(g.width == 3 * W * S + 4 * B);
  REQUIRE(g.height == 2 * H * S + 3 * B);
  REQUIRE(g.channels == C);
  auto at = [&](int x, int y, int c) { return g.pixels[(static_cast<size_t>(y) * g.width + x) * C + c]; };
  for (int n = 0; n < N; ++n) {
    int gx = B + (n % 3) * (W * S + B), gy = B + (n / 3) * (H * S + B);
    for (int y = 0; y < H * S; ++y)
      for (int x = 0; x < W * S; ++x)
        for (int c = 0; c < C; ++c) CHECK(at(gx + x, gy + y, c) == bytes[((n * H + y / S) * W + x / S) * C + c]);
  }
  // The border and the sixth (empty) cell are white.
  for (int x = 0; x < g.width; ++x) CHECK(at(x, 0, 0) == 255);
  for (int y = 0; y < g.height; ++y) CHECK(at(1, y, 2) == 255);
  int gx6 = B + 2 * (W * S + B), gy6 = B + (H * S + B);
  CHECK(at(gx6 + 1, gy6 + 1, 1) == 255);

  TempDir dir;
  write_png_grid(dir / "grid.png", batch, S, B);
  Image8 back = read_image_u8(dir / "grid.png");
  CHECK(back.width == g.width);
  CHECK(back.pixels == g.pixels);
}

TEST_CASE("image_io: grid refuses shapes it cannot draw", "[cpu][core][image_io]") {
  CHECK_THROWS_WITH(make_grid(Tensor::zeros({2, 4, 4, 2})), Catch::Contains("1 (grey) or 3 (RGB) channels"));
  CHECK_THROWS_WITH(make_grid(Tensor::zeros({4, 4})), Catch::Contains("(N, H, W, C)"));
  CHECK_THROWS_WITH(make_grid(Tensor::zeros({2, 4, 4, 1}, DType::i32)), Catch::Contains("float tensor"));
  CHECK_THROWS_WITH(tensor_to_image(Tensor::zeros({2, 4, 4, 1})), Catch::Contains("(1, H, W, C)"));
}

TEST_CASE("image_io: centre crop and area resize", "[cpu][core][image_io]") {
  // 6 wide, 4 high grey: the crop keeps columns 1..4; shrinking 4 -> 2 averages 2x2 blocks.
  Image8 img{6, 4, 1, {}};
  for (int y = 0; y < 4; ++y)
    for (int x = 0; x < 6; ++x) img.pixels.push_back(static_cast<uint8_t>(10 * y + x * 3 + (x == 0 || x == 5) * 100));
  Image8 r = center_crop_resize(img, 2);
  REQUIRE(r.width == 2);
  REQUIRE(r.height == 2);
  auto mean4 = [&](int x0, int y0) {
    int s = 0;
    for (int y = y0; y < y0 + 2; ++y)
      for (int x = x0; x < x0 + 2; ++x) s += img.pixels[y * 6 + x];
    return static_cast<int>(std::floor(s / 4.0 + 0.5));
  };
  CHECK(r.pixels[0] == mean4(1, 0));
  CHECK(r.pixels[1] == mean4(3, 0));
  CHECK(r.pixels[2] == mean4(1, 2));
  CHECK(r.pixels[3] == mean4(3, 2));
  // Tall image: the crop is vertical. Same size: the identity.
  Image8 tall{2, 4, 1, {0, 0, 1, 2, 3, 4, 9, 9}};
  Image8 same = center_crop_resize(tall, 2);
  CHECK(same.pixels == std::vector<uint8_t>{1, 2, 3, 4});
  // Enlarging a constant image keeps it constant; enlarging keeps a ramp monotone.
  Image8 flat{3, 3, 3, std::vector<uint8_t>(27, 77)};
  Image8 big = center_crop_resize(flat, 8);
  CHECK(big.pixels == std::vector<uint8_t>(8 * 8 * 3, 77));
  Image8 ramp{2, 2, 1, {0, 200, 0, 200}};
  Image8 up = center_crop_resize(ramp, 4);
  for (int x = 1; x < 4; ++x) CHECK(up.pixels[x] >= up.pixels[x - 1]);
  CHECK(up.pixels[0] == 0);
  CHECK(up.pixels[3] == 200);
  // A non-integer shrink (7 -> 3) still averages to the constant.
  Image8 odd{7, 7, 1, std::vector<uint8_t>(49, 201)};
  CHECK(center_crop_resize(odd, 3).pixels == std::vector<uint8_t>(9, 201));
}

TEST_CASE("image_io: reads JPEG and converts channels", "[cpu][core][image_io]") {
  TempDir dir;
  // A smooth RGB gradient through the library's own stb_image_write (quality 95).
  const int W = 16, H = 16;
  std::vector<uint8_t> px;
  for (int y = 0; y < H; ++y)
    for (int x = 0; x < W; ++x) {
      px.push_back(static_cast<uint8_t>(x * 15));
      px.push_back(static_cast<uint8_t>(y * 15));
      px.push_back(100);
    }
  std::vector<uint8_t> jpg;
  auto sink = [](void* ctx, void* data, int size) {
    auto* v = static_cast<std::vector<uint8_t>*>(ctx);
    v->insert(v->end(), static_cast<uint8_t*>(data), static_cast<uint8_t*>(data) + size);
  };
  REQUIRE(stbi_write_jpg_to_func(sink, &jpg, W, H, 3, px.data(), 95));
  write_file_atomic(dir / "g.jpg", jpg.data(), jpg.size());
  Image8 rgb = read_image_u8(dir / "g.jpg", 3);
  REQUIRE(rgb.width == W);
  REQUIRE(rgb.channels == 3);
  int worst = 0;
  for (size_t i = 0; i < px.size(); ++i) worst = std::max(worst, std::abs(int(rgb.pixels[i]) - int(px[i])));
  CHECK(worst <= 12);  // JPEG at quality 95 on a smooth gradient: a few levels of error
  Image8 grey = read_image_u8(dir / "g.jpg", 1);
  CHECK(grey.channels == 1);
  CHECK(grey.pixels.size() == static_cast<size_t>(W * H));
  // A grey PNG read as RGB repeats the value in all three channels.
  write_png(dir / "grey.png", Image8{2, 1, 1, {10, 250}});
  CHECK(read_image_u8(dir / "grey.png", 3).pixels == std::vector<uint8_t>{10, 10, 10, 250, 250, 250});
}

TEST_CASE("image_io: unreadable images are refused naming the file", "[cpu][core][image_io]") {
  TempDir dir;
  const std::string garbage = dir / "garbage.png";
  std::ofstream(garbage) << "this is not a PNG file at all";
  CHECK_THROWS_WITH(read_image(garbage), Catch::Contains(garbage) && Catch::Contains("cannot decode"));
  const std::string empty = dir / "empty.jpg";
  std::ofstream(empty).close();
  CHECK_THROWS_WITH(read_image(empty), Catch::Contains(empty) && Catch::Contains("empty"));
  CHECK_THROWS_WITH(read_image(dir / "missing.png"),
                    Catch::Contains("missing.png") && Catch::Contains("No such file"));
  // A PNG cut in half.
  std::mt19937_64 rng(test::next_seed());
  std::vector<uint8_t> png = encode_png(tensor_to_image(random_pixels({8, 8, 3}, rng)));
  const std::string cut = dir / "cut.png";
  write_file_atomic(cut, png.data(), png.size() / 2);
  CHECK_THROWS_WITH(read_image(cut), Catch::Contains(cut) && Catch::Contains("cannot decode"));
}

TEST_CASE("image_io: a write into a missing directory fails naming the path", "[cpu][core][image_io]") {
  TempDir dir;
  const std::string path = dir / "no/such/dir/out.png";
  CHECK_THROWS_WITH(write_png(path, Tensor::zeros({2, 2, 1})),
                    Catch::Contains(path) && Catch::Contains("No such file or directory"));
  CHECK(fs::is_empty(dir.path));
}

// Inputs found by fuzzing Debian's stb_image 2.27 (the decoder under read_image). Each must be
// refused before stb sees it: the first wrote past a Huffman table, the other two made a file of
// a few dozen bytes allocate gigabytes.
TEST_CASE("image_io: hostile files found by fuzzing are refused", "[cpu][core][image_io]") {
  // A DHT segment whose code counts sum past 256 (after fill bytes FF FF before the SOI).
  const std::vector<uint8_t> jpeg = {0xff, 0xff, 0xd8, 0xff, 0xe0, 0x00, 0x10, 0x4a, 0x46, 0x49, 0x46, 0x00,
                                     0xff, 0xc4, 0x00, 0x20, 0x00, 0x80, 0x80, 0x80, 0x00, 0x00, 0x00, 0x00,
                                     0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xd9};
  CHECK_THROWS_WITH(decode_image_u8(jpeg.data(), jpeg.size(), 3, "huff.jpg"),
                    Catch::Contains("huff.jpg") && Catch::Contains("Huffman table declares 384 codes"));

  std::mt19937_64 rng(test::next_seed());
  const std::vector<uint8_t> png = encode_png(tensor_to_image(random_pixels({4, 4, 3}, rng)));
  REQUIRE(decode_image_u8(png.data(), png.size(), 3, "ok.png").width == 4);
  // The IHDR chunk (at byte 8) claims 0x60000000 bytes.
  std::vector<uint8_t> big_chunk = png;
  big_chunk[8] = 0x60;
  CHECK_THROWS_WITH(decode_image_u8(big_chunk.data(), big_chunk.size(), 3, "chunk.png"),
                    Catch::Contains("chunk.png") && Catch::Contains("corrupt PNG (a chunk at byte 8 declares"));
  // IHDR claims 16000 x 16000 pixels (stb does not check the CRC, so the patch is enough).
  std::vector<uint8_t> huge = png;
  for (int o : {16, 20}) {
    huge[o] = 0;
    huge[o + 1] = 0;
    huge[o + 2] = 0x3e;
    huge[o + 3] = 0x80;
  }
  CHECK_THROWS_WITH(decode_image_u8(huge.data(), huge.size(), 3, "huge.png"),
                    Catch::Contains("huge.png") && Catch::Contains("claims 16000x16000 pixels"));
}

// A JPEG whose scan uses Huffman and quantisation tables that no DHT/DQT segment defines: stb
// 2.27 decoded it with whatever the heap held there (fuzz_images found it as an assertion that
// came and went with the heap's history). stb's allocations are now zeroed (core/stb_impl.cpp):
// the undefined tables decode every block as empty, so the image is flat 128 on every run, however
// dirty the heap was before.
TEST_CASE("image_io: a JPEG using tables it never defines decodes the same every time", "[cpu][core][image_io]") {
  std::vector<uint8_t> px(8 * 8 * 3);
  std::mt19937_64 rng(test::next_seed());
  for (auto& b : px) b = static_cast<uint8_t>(rng());
  std::vector<uint8_t> jpg;
  auto sink = [](void* ctx, void* data, int size) {
    auto* v = static_cast<std::vector<uint8_t>*>(ctx);
    v->insert(v->end(), static_cast<uint8_t*>(data), static_cast<uint8_t*>(data) + size);
  };
  REQUIRE(stbi_write_jpg_to_func(sink, &jpg, 8, 8, 3, px.data(), 90));
  // Drop every DQT (FF DB) and DHT (FF C4) segment; the rest (SOF, SOS, the scan) stays.
  std::vector<uint8_t> stripped(jpg.begin(), jpg.begin() + 2);
  size_t p = 2;
  int dropped = 0;
  while (p + 4 <= jpg.size() && jpg[p] == 0xFF && jpg[p + 1] != 0xDA) {
    const size_t len = 2 + ((size_t(jpg[p + 2]) << 8) | jpg[p + 3]);
    if (jpg[p + 1] == 0xDB || jpg[p + 1] == 0xC4) ++dropped;
    else stripped.insert(stripped.end(), jpg.begin() + p, jpg.begin() + p + len);
    p += len;
  }
  // Keep the SOS segment; replace the scan with zero bytes (no FF, so stb finds no marker in it
  // and reaches the EOI after the scan whatever the tables made of the bits).
  REQUIRE(p + 4 <= jpg.size());
  const size_t sos = 2 + ((size_t(jpg[p + 2]) << 8) | jpg[p + 3]);
  stripped.insert(stripped.end(), jpg.begin() + p, jpg.begin() + p + sos);
  stripped.insert(stripped.end(), 64, 0x00);
  stripped.insert(stripped.end(), {0xFF, 0xD9});
  REQUIRE(dropped >= 2);
  for (uint8_t fill : {0x00, 0x5A, 0xA5, 0xFF}) {
    INFO("heap filled with " << int(fill));
    // Leave freed heap memory full of `fill` where stb's next allocations will come from.
    for (size_t size : {size_t(24) << 10, size_t(96) << 10}) {
      void* junk = std::malloc(size);
      REQUIRE(junk != nullptr);
      std::memset(junk, fill, size);
      asm volatile("" : : "r"(junk) : "memory");  // keep the writes
      std::free(junk);
    }
    Image8 img = decode_image_u8(stripped.data(), stripped.size(), 3, "no-tables.jpg");
    REQUIRE(img.width == 8);
    REQUIRE(img.height == 8);
    CHECK(img.pixels == std::vector<uint8_t>(8 * 8 * 3, 128));
  }
}
