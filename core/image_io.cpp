#include "core/image_io.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/file_io.h"

// stb_image and stb_image_write themselves are compiled in core/stb_impl.cpp (with these settings).
#define STBI_ONLY_PNG
#define STBI_ONLY_JPEG
#define STBI_ONLY_BMP
#define STBI_MAX_DIMENSIONS (1 << 15)
#define STBI_FAILURE_USERMSG
#include <stb/stb_image.h>
#include <stb/stb_image_write.h>

namespace diffuse {

namespace {

// stb_image 2.27 (Debian's libstb-dev) trusts the code counts of a JPEG Huffman table: counts that
// sum past 256 write past stbi__huffman::size[257] (found by fuzzing; upstream added the check in
// 2.28). stb processes a DHT segment only right after the bytes FF C4, so checking the tables
// after every FF C4 in the file, read as stb reads them (0 past the end), refuses every file that
// could trigger it. Entropy-coded data never holds FF C4 (FF is stuffed as FF 00), so valid
// files pass.
void reject_overflowing_jpeg_huffman(const uint8_t* d, size_t n, const std::string& name) {
  // What stb takes for a JPEG: one or more FF, then D8 (it skips fill bytes before a marker).
  size_t soi = 0;
  while (soi < n && d[soi] == 0xFF) ++soi;
  if (soi == 0 || soi >= n || d[soi] != 0xD8) return;
  auto get8 = [&](size_t i) -> size_t { return i < n ? d[i] : 0; };
  for (size_t p = 0; p + 1 < n; ++p) {
    if (d[p] != 0xFF || d[p + 1] != 0xC4) continue;
    size_t q = p + 4;
    int64_t left = static_cast<int64_t>((get8(p + 2) << 8) | get8(p + 3)) - 2;  // segment length
    while (left > 0 && q < n) {
      size_t codes = 0;  // table: 1 byte class/id, 16 counts of codes per length, the symbols
      for (size_t i = 0; i < 16; ++i) codes += get8(q + 1 + i);
      if (codes > 256)
        DF_FAIL("cannot decode image '", name, "': corrupt JPEG (a Huffman table declares ", codes,
                " codes, at most 256 are possible)");
      q += 17 + codes;
      left -= static_cast<int64_t>(17 + codes);
    }
  }
}

// stb 2.27 grows its PNG data buffer to each IDAT chunk's declared length before reading it, so
// a 100-byte file declaring a 1.5 GB chunk allocates 2 GB. A chunk running past the end of the
// file is corrupt anyway: walk the chunks (4-byte length, 4-byte type, data, 4-byte CRC) first.
void reject_png_chunks_past_end(const uint8_t* d, size_t n, const std::string& name) {
  static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  if (n < 8 || std::memcmp(d, sig, 8) != 0) return;
  size_t p = 8;
  while (p + 8 <= n) {
    const size_t len = (size_t(d[p]) << 24) | (size_t(d[p + 1]) << 16) | (size_t(d[p + 2]) << 8) | d[p + 3];
    const bool iend = std::memcmp(d + p + 4, "IEND", 4) == 0;
    if (len > n - p - 8)
      DF_FAIL("cannot decode image '", name, "': corrupt PNG (a chunk at byte ", p, " declares ", len,
              " bytes of data, only ", n - p - 8, " remain)");
    if (iend) return;
    p += 12 + len;
  }
}

}  // namespace

Image8 decode_image_u8(const uint8_t* data, size_t n, int channels, const std::string& name) {
  DF_CHECK(channels >= 0 && channels <= 4, "read image '", name, "': channels must be 0..4, got ", channels);
  if (n == 0) DF_FAIL("cannot decode image '", name, "': the file is empty");
  if (n > static_cast<size_t>(std::numeric_limits<int>::max()))
    DF_FAIL("cannot decode image '", name, "': ", n, " bytes is too large");
  reject_overflowing_jpeg_huffman(data, n, name);
  reject_png_chunks_past_end(data, n, name);
  // A header may claim far more pixels than the bytes can encode (stb allocates for the claim
  // before reading the data). No real PNG or JPEG packs more than ~1032 (deflate's limit) or
  // ~128 (one JPEG block's minimal code) pixels per byte, so 4096 per byte plus 1 Mpixel leaves
  // every real file alone and caps what a tiny hostile file can make us allocate.
  int iw = 0, ih = 0, ic = 0;
  if (stbi_info_from_memory(data, static_cast<int>(n), &iw, &ih, &ic) &&
      static_cast<uint64_t>(iw) * static_cast<uint64_t>(ih) > 4096 * static_cast<uint64_t>(n) + (1u << 20))
    DF_FAIL("cannot decode image '", name, "': its header claims ", iw, "x", ih, " pixels, more than ", n,
            " bytes can hold (corrupt file)");
  int w = 0, h = 0, c = 0;
  stbi_uc* px = stbi_load_from_memory(data, static_cast<int>(n), &w, &h, &c, channels);
  if (!px) DF_FAIL("cannot decode image '", name, "': ", stbi_failure_reason());
  Image8 img;
  img.width = w;
  img.height = h;
  img.channels = channels ? channels : c;
  img.pixels.assign(px, px + static_cast<size_t>(w) * h * img.channels);
  stbi_image_free(px);
  return img;
}

Image8 read_image_u8(const std::string& path, int channels) {
  // 1 GiB: far above any image we train on, far below what would hurt.
  std::vector<uint8_t> bytes = read_file(path, size_t(1) << 30);
  return decode_image_u8(bytes.data(), bytes.size(), channels, path);
}

Tensor image_to_tensor(const Image8& img) {
  Tensor t = Tensor::empty({img.height, img.width, img.channels});
  float* p = t.data<float>();
  for (size_t i = 0; i < img.pixels.size(); ++i) p[i] = static_cast<float>(img.pixels[i]) / 127.5f - 1.0f;
  return t;
}

Tensor read_image(const std::string& path, int channels) { return image_to_tensor(read_image_u8(path, channels)); }

namespace {

// One output sample of a 1-D resampling: a weighted sum of source samples.
struct Tap {
  int first;                   // first source index
  std::vector<float> weights;  // weights for first, first + 1, ...
};

// Shrinking: each output pixel is the mean of the source interval it covers, pixels cut by the
// interval's ends weighted by their overlap (box filter). Enlarging: bilinear between the two
// nearest source centres, with pixel centres at +0.5 so the image is not shifted.
std::vector<Tap> resample_taps(int src, int dst) {
  std::vector<Tap> taps(dst);
  const double scale = static_cast<double>(src) / dst;
  for (int o = 0; o < dst; ++o) {
    Tap& t = taps[o];
    if (scale >= 1.0) {
      double lo = o * scale, hi = (o + 1) * scale;
      int i0 = static_cast<int>(std::floor(lo));
      int i1 = std::min(src, static_cast<int>(std::ceil(hi)));
      t.first = i0;
      for (int i = i0; i < i1; ++i) {
        double ov = std::min<double>(hi, i + 1) - std::max<double>(lo, i);
        t.weights.push_back(static_cast<float>(std::max(0.0, ov) / scale));
      }
    } else {
      double x = (o + 0.5) * scale - 0.5;
      int i0 = static_cast<int>(std::floor(x));
      double f = x - i0;
      int a = std::clamp(i0, 0, src - 1), b = std::clamp(i0 + 1, 0, src - 1);
      if (a == b) {
        t.first = a;
        t.weights = {1.0f};
      } else {
        t.first = a;
        t.weights = {static_cast<float>(1.0 - f), static_cast<float>(f)};
      }
    }
  }
  return taps;
}

}  // namespace

Image8 center_crop_resize(const Image8& img, int size) {
  DF_CHECK(size > 0, "center_crop_resize: size must be positive, got ", size);
  DF_CHECK(img.width > 0 && img.height > 0, "center_crop_resize: empty image");
  const int m = std::min(img.width, img.height), C = img.channels;
  const int x0 = (img.width - m) / 2, y0 = (img.height - m) / 2;
  std::vector<Tap> taps = resample_taps(m, size);
  // Horizontal pass over the cropped rows, then vertical, in float; round once at the end.
  std::vector<float> rows(static_cast<size_t>(m) * size * C);
  for (int y = 0; y < m; ++y) {
    const uint8_t* src = img.pixels.data() + (static_cast<size_t>(y0 + y) * img.width + x0) * C;
    for (int ox = 0; ox < size; ++ox) {
      const Tap& t = taps[ox];
      for (int c = 0; c < C; ++c) {
        float acc = 0;
        for (size_t k = 0; k < t.weights.size(); ++k) acc += t.weights[k] * src[(t.first + k) * C + c];
        rows[(static_cast<size_t>(y) * size + ox) * C + c] = acc;
      }
    }
  }
  Image8 out;
  out.width = out.height = size;
  out.channels = C;
  out.pixels.resize(static_cast<size_t>(size) * size * C);
  for (int oy = 0; oy < size; ++oy) {
    const Tap& t = taps[oy];
    for (int ox = 0; ox < size; ++ox)
      for (int c = 0; c < C; ++c) {
        float acc = 0;
        for (size_t k = 0; k < t.weights.size(); ++k)
          acc += t.weights[k] * rows[((t.first + k) * size + ox) * C + c];
        out.pixels[(static_cast<size_t>(oy) * size + ox) * C + c] =
            static_cast<uint8_t>(std::clamp(std::floor(acc + 0.5f), 0.0f, 255.0f));
      }
  }
  return out;
}

uint8_t float_to_pixel(float x) {
  if (!(x == x)) return 0;
  float v = std::floor((x + 1.0f) * 127.5f + 0.5f);
  return static_cast<uint8_t>(std::clamp(v, 0.0f, 255.0f));
}

namespace {

// Host f32 copy of an (N, H, W, C) batch with C of 1 or 3.
Tensor host_batch(const Tensor& t, const char* what) {
  DF_CHECK(t.defined(), what, ": undefined tensor");
  DF_CHECK(dtype_is_float(t.dtype()), what, ": expected a float tensor, got ", t.str());
  Tensor b = t.dim() == 3 ? t.reshape({1, t.size(0), t.size(1), t.size(2)}) : t;
  DF_CHECK(b.dim() == 4, what, ": expected (H, W, C) or (N, H, W, C), got ", t.str());
  DF_CHECK(b.size(3) == 1 || b.size(3) == 3, what, ": expected 1 (grey) or 3 (RGB) channels, got ", t.str());
  DF_CHECK(b.size(0) > 0 && b.size(1) > 0 && b.size(2) > 0, what, ": empty image batch ", t.str());
  return b.to(Device::cpu()).to(DType::f32);
}

constexpr uint8_t kBorder = 255;  // white: visible between dark-background samples (MNIST)

}  // namespace

Image8 make_grid(const Tensor& batch, int scale, int border, int cols) {
  DF_CHECK(scale >= 1 && scale <= 64, "make_grid: scale must be 1..64, got ", scale);
  DF_CHECK(border >= 0, "make_grid: negative border ", border);
  Tensor b = host_batch(batch, "make_grid");
  const int64_t N = b.size(0), H = b.size(1), W = b.size(2), C = b.size(3);
  if (cols <= 0) cols = static_cast<int>(std::ceil(std::sqrt(static_cast<double>(N))));
  const int64_t rows = (N + cols - 1) / cols;
  const int64_t cw = W * scale, ch = H * scale;
  const int64_t gw = cols * cw + (cols + 1) * border, gh = rows * ch + (rows + 1) * border;
  DF_CHECK(gw <= (1 << 15) && gh <= (1 << 15), "make_grid: a ", gw, "x", gh, " image is too large for PNG output");
  Image8 img;
  img.width = static_cast<int>(gw);
  img.height = static_cast<int>(gh);
  img.channels = static_cast<int>(C);
  img.pixels.assign(static_cast<size_t>(gw * gh * C), kBorder);
  const float* src = b.data<float>();
  for (int64_t n = 0; n < N; ++n) {
    const int64_t gx = border + (n % cols) * (cw + border), gy = border + (n / cols) * (ch + border);
    for (int64_t y = 0; y < ch; ++y)
      for (int64_t x = 0; x < cw; ++x)
        for (int64_t c = 0; c < C; ++c)
          img.pixels[((gy + y) * gw + gx + x) * C + c] =
              float_to_pixel(src[((n * H + y / scale) * W + x / scale) * C + c]);
  }
  return img;
}

Image8 tensor_to_image(const Tensor& image, int scale) {
  DF_CHECK(image.dim() == 3 || (image.dim() == 4 && image.size(0) == 1),
           "tensor_to_image: expected (H, W, C) or (1, H, W, C), got ", image.str());
  return make_grid(image, scale, 0, 1);
}

std::vector<uint8_t> encode_png(const Image8& img) {
  DF_CHECK(img.width > 0 && img.height > 0 && img.channels >= 1 && img.channels <= 4 &&
               img.pixels.size() == static_cast<size_t>(img.width) * img.height * img.channels,
           "encode_png: inconsistent image ", img.width, "x", img.height, "x", img.channels);
  std::vector<uint8_t> out;
  auto sink = [](void* ctx, void* data, int size) {
    auto* v = static_cast<std::vector<uint8_t>*>(ctx);
    v->insert(v->end(), static_cast<uint8_t*>(data), static_cast<uint8_t*>(data) + size);
  };
  int ok = stbi_write_png_to_func(sink, &out, img.width, img.height, img.channels, img.pixels.data(),
                                  img.width * img.channels);
  DF_CHECK(ok && !out.empty(), "encode_png: the PNG encoder failed");
  return out;
}

void write_png(const std::string& path, const Image8& img) {
  std::vector<uint8_t> png = encode_png(img);
  write_file_atomic(path, png.data(), png.size());
}

void write_png(const std::string& path, const Tensor& image, int scale) {
  write_png(path, tensor_to_image(image, scale));
}

void write_png_grid(const std::string& path, const Tensor& batch, int scale, int border) {
  write_png(path, make_grid(batch, scale, border));
}

}  // namespace diffuse
