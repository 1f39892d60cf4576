// kernels/conv2d.cpp: 2-D convolution, NHWC (kernels/conv2d.h): the cpu reference loops and fast
// path (oneDNN or im2col + GEMM), and the Tensor-level op, which runs on x's device: the cpu here or
// cuDNN (kernels/cuda/conv2d_cuda.cpp).
//
// Shapes: B batch, H W input spatial, Ho Wo output spatial, Cin Cout channels, KH KW kernel.
// x (B, H, W, Cin), w (Cout, KH, KW, Cin), y (B, Ho, Wo, Cout), Ho = (H + 2 pad - KH) / stride + 1.
//
// Fast path. One output pixel is the dot product of its input patch (KH*KW runs of Cin
// contiguous values in NHWC) with a weight row, so the convolution is a GEMM of the patch matrix
// "cols" (M = B*Ho*Wo rows, K = KH*KW*Cin) with w^T (K x Cout):
//   forward           y     = cols w^T (+ bias)      M x Cout x K
//   backward-weights  dw    = gy^T cols              Cout x K x M
//   backward-data     dcols = gy w, scattered back into dx (col2im)
//   bias              db    = column sums of gy
// cols is never materialised whole (it is KH*KW times the input: 58 MB for a 3x3 over
// (64,28,28,32)): the rows are cut into chunks of ~kChunkBytes of cols, each built in a
// thread-local scratch that stays in L2 and consumed at once by a single-threaded GEMM, with the
// chunks split across OpenMP threads. A 1x1 stride-1 unpadded convolution needs no cols: its
// chunks are rows of x itself (and of dx in backward-data).
// Backward-data scatters overlapping patches, so its chunks are whole images per thread (patches
// of different images never overlap); backward-weights sums per-thread partial dw in a fixed
// order, so results do not depend on timing.
//
// f32 with oneDNN: its convolution primitives instead (forward, backward-data, backward-weights
// with the bias gradient), NHWC activations as they are, the weights reordered per call into the
// blocked layout the primitive asks for (a few hundred KB at most: under 1% of a call's bytes).
// One primitive per geometry, pass and thread count, created on first use and kept (a training
// step meets ~20 geometries). bench/cpu_conv at the tiny UNet's 12 shapes, batch 64, the three
// passes summed, 2 threads of the idle AVX-512 target: 160.6 ms im2col + sgemm against 124.4 ms
// (the weight reorders included; the 3x3 stem's backward-weights 1.8 -> 0.3 ms, the 28x28x32
// one's 8.5 -> 4.2).
// oneDNN 2.6 runs NHWC only with blocked weights (NHWC and OHWI both fixed: its reference
// loops, 100x slower). Its results are deterministic for a given thread count, as ours are.
// f64 (gradchecks) and builds without oneDNN take the im2col path.
#include "kernels/conv2d.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "core/check.h"
#include "core/profile.h"
#include "kernels/backend.h"
#include "kernels/cpu/row_chunks.h"
#include "kernels/gemm.h"

#if defined(DIFFUSE_HAVE_DNNL)
#include <dnnl.hpp>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#endif

namespace diffuse::kernels {

namespace {

struct Geometry {
  int64_t B, H, W, Cin, Cout, KH, KW, Ho, Wo;
  int stride, pad;
  int64_t M() const { return B * Ho * Wo; }    // GEMM rows: output pixels
  int64_t K() const { return KH * KW * Cin; }  // GEMM depth: patch length
  bool direct() const { return KH == 1 && KW == 1 && stride == 1 && pad == 0; }  // x is cols
};

Geometry geometry(const Tensor& x, const Tensor& w, const Tensor& bias, const Conv2dParams& p) {
  DF_CHECK(x.dtype() == w.dtype() && (x.dtype() == DType::f32 || x.dtype() == DType::f64), "conv2d: x ", x.str(),
           ", weight ", w.str(), " (cpu: f32 or f64, the same)");
  DF_CHECK(x.dim() == 4, "conv2d: x must be (B,H,W,Cin), got ", x.shape().str());
  DF_CHECK(w.dim() == 4, "conv2d: weight must be (Cout,KH,KW,Cin), got ", w.shape().str());
  DF_CHECK(x.size(3) == w.size(3), "conv2d: x has ", x.size(3), " channels, weight expects ", w.size(3));
  DF_CHECK(p.stride >= 1 && p.padding >= 0, "conv2d: stride ", p.stride, ", padding ", p.padding);
  Geometry g{x.size(0), x.size(1), x.size(2), x.size(3), w.size(0), w.size(1), w.size(2), 0, 0, p.stride, p.padding};
  DF_CHECK(g.H + 2 * g.pad >= g.KH && g.W + 2 * g.pad >= g.KW, "conv2d: kernel ", g.KH, "x", g.KW,
           " larger than the padded input ", x.shape().str());
  DF_CHECK(!bias.defined() || (bias.dim() == 1 && bias.size(0) == g.Cout && bias.dtype() == x.dtype()),
           "conv2d: bias ", bias.str(), " for ", g.Cout, " output channels of ", x.str());
  g.Ho = (g.H + 2 * g.pad - g.KH) / g.stride + 1;
  g.Wo = (g.W + 2 * g.pad - g.KW) / g.stride + 1;
  return g;
}

void check_out(const Tensor& t, const Shape& s, DType dt, const char* what) {
  DF_CHECK(t.defined() && t.shape() == s && t.dtype() == dt && t.device().is_cpu(), "conv2d: ", what, " is ",
           t.str(), ", expected ", s.str());
}

void check_grads(const Tensor& gy, const Tensor& x, const Tensor& w, const Geometry& g, const Conv2dGrads& r) {
  DF_CHECK(gy.shape() == Shape({g.B, g.Ho, g.Wo, g.Cout}) && gy.dtype() == x.dtype(), "conv2d backward: gradient ",
           gy.str(), " for output (", g.B, ", ", g.Ho, ", ", g.Wo, ", ", g.Cout, ")");
  if (r.dx.defined()) check_out(r.dx, x.shape(), x.dtype(), "dx");
  if (r.dw.defined()) check_out(r.dw, w.shape(), x.dtype(), "dw");
  if (r.db.defined()) check_out(r.db, Shape{g.Cout}, x.dtype(), "db");
}

// ---- reference: the plain loops, accumulating in double -----------------------------------------

template <class T>
void ref_forward(const T* x, const T* w, const T* bias, T* y, const Geometry& g) {
  for (int64_t b = 0; b < g.B; ++b)
    for (int64_t ho = 0; ho < g.Ho; ++ho)
      for (int64_t wo = 0; wo < g.Wo; ++wo)
        for (int64_t co = 0; co < g.Cout; ++co) {
          double acc = bias ? static_cast<double>(bias[co]) : 0.0;
          for (int64_t kh = 0; kh < g.KH; ++kh)
            for (int64_t kw = 0; kw < g.KW; ++kw) {
              const int64_t hi = ho * g.stride - g.pad + kh, wi = wo * g.stride - g.pad + kw;
              if (hi < 0 || hi >= g.H || wi < 0 || wi >= g.W) continue;  // zero padding
              for (int64_t ci = 0; ci < g.Cin; ++ci)
                acc += static_cast<double>(x[((b * g.H + hi) * g.W + wi) * g.Cin + ci]) *
                       static_cast<double>(w[((co * g.KH + kh) * g.KW + kw) * g.Cin + ci]);
            }
          y[((b * g.Ho + ho) * g.Wo + wo) * g.Cout + co] = static_cast<T>(acc);
        }
}

// Each gradient element is one sum, written once: dx as a gather over the output pixels whose
// patch covers the input pixel (ho * stride - pad + kh == hi), dw over all output pixels.
template <class T>
void ref_backward(const T* gy, const T* x, const T* w, T* dx, T* dw, T* db, const Geometry& g) {
  auto G = [&](int64_t b, int64_t ho, int64_t wo, int64_t co) {
    return static_cast<double>(gy[((b * g.Ho + ho) * g.Wo + wo) * g.Cout + co]);
  };
  if (db)
    for (int64_t co = 0; co < g.Cout; ++co) {
      double acc = 0;
      for (int64_t b = 0; b < g.B; ++b)
        for (int64_t ho = 0; ho < g.Ho; ++ho)
          for (int64_t wo = 0; wo < g.Wo; ++wo) acc += G(b, ho, wo, co);
      db[co] = static_cast<T>(acc);
    }
  if (dw)
    for (int64_t co = 0; co < g.Cout; ++co)
      for (int64_t kh = 0; kh < g.KH; ++kh)
        for (int64_t kw = 0; kw < g.KW; ++kw)
          for (int64_t ci = 0; ci < g.Cin; ++ci) {
            double acc = 0;
            for (int64_t b = 0; b < g.B; ++b)
              for (int64_t ho = 0; ho < g.Ho; ++ho)
                for (int64_t wo = 0; wo < g.Wo; ++wo) {
                  const int64_t hi = ho * g.stride - g.pad + kh, wi = wo * g.stride - g.pad + kw;
                  if (hi < 0 || hi >= g.H || wi < 0 || wi >= g.W) continue;
                  acc += G(b, ho, wo, co) * static_cast<double>(x[((b * g.H + hi) * g.W + wi) * g.Cin + ci]);
                }
            dw[((co * g.KH + kh) * g.KW + kw) * g.Cin + ci] = static_cast<T>(acc);
          }
  if (dx)
    for (int64_t b = 0; b < g.B; ++b)
      for (int64_t hi = 0; hi < g.H; ++hi)
        for (int64_t wi = 0; wi < g.W; ++wi)
          for (int64_t ci = 0; ci < g.Cin; ++ci) {
            double acc = 0;
            for (int64_t kh = 0; kh < g.KH; ++kh)
              for (int64_t kw = 0; kw < g.KW; ++kw) {
                const int64_t th = hi + g.pad - kh, tw = wi + g.pad - kw;  // = ho * stride, wo * stride
                if (th < 0 || tw < 0 || th % g.stride != 0 || tw % g.stride != 0) continue;
                const int64_t ho = th / g.stride, wo = tw / g.stride;
                if (ho >= g.Ho || wo >= g.Wo) continue;
                for (int64_t co = 0; co < g.Cout; ++co)
                  acc += G(b, ho, wo, co) * static_cast<double>(w[((co * g.KH + kh) * g.KW + kw) * g.Cin + ci]);
              }
            dx[((b * g.H + hi) * g.W + wi) * g.Cin + ci] = static_cast<T>(acc);
          }
}

// ---- fast path ----------------------------------------------------------------------------------

int64_t chunk_rows(const Geometry& g, size_t elem) { return rows::chunk_rows(g.K(), elem); }

// Thread-local scratch, reused across calls: a training step calls conv2d dozens of times with
// a handful of sizes, and a fresh allocation per call would page-fault its way through memory.
// Slot 0 holds a cols chunk (forward, backward-weights), slot 1 a dcols chunk (backward-data).
template <class T>
T* scratch(int slot, size_t n) {
  thread_local std::vector<T> buf[2];
  if (buf[slot].size() < n) buf[slot].resize(n);
  return buf[slot].data();
}

// Rows [m0, m1) of cols: for each output pixel, its KH*KW input runs of Cin (zeros outside).
template <class T>
void im2col_rows(const T* x, T* cols, const Geometry& g, int64_t m0, int64_t m1) {
  const int64_t K = g.K(), Cin = g.Cin;
  int64_t b = m0 / (g.Ho * g.Wo), ho = m0 / g.Wo % g.Ho, wo = m0 % g.Wo;
  for (int64_t m = m0; m < m1; ++m) {
    T* row = cols + (m - m0) * K;
    for (int64_t kh = 0; kh < g.KH; ++kh) {
      const int64_t hi = ho * g.stride - g.pad + kh;
      T* dst = row + kh * g.KW * Cin;
      if (hi < 0 || hi >= g.H) {
        std::memset(dst, 0, sizeof(T) * g.KW * Cin);
        continue;
      }
      const T* src = x + (b * g.H + hi) * g.W * Cin;
      for (int64_t kw = 0; kw < g.KW; ++kw) {
        const int64_t wi = wo * g.stride - g.pad + kw;
        if (wi < 0 || wi >= g.W)
          std::memset(dst + kw * Cin, 0, sizeof(T) * Cin);
        else
          std::memcpy(dst + kw * Cin, src + wi * Cin, sizeof(T) * Cin);
      }
    }
    if (++wo == g.Wo) {
      wo = 0;
      if (++ho == g.Ho) ho = 0, ++b;
    }
  }
}

// dx += the patches of dcols rows [m0, m1) scattered back to their input pixels.
template <class T>
void col2im_rows(const T* dcols, T* dx, const Geometry& g, int64_t m0, int64_t m1) {
  const int64_t K = g.K(), Cin = g.Cin;
  int64_t b = m0 / (g.Ho * g.Wo), ho = m0 / g.Wo % g.Ho, wo = m0 % g.Wo;
  for (int64_t m = m0; m < m1; ++m) {
    const T* row = dcols + (m - m0) * K;
    for (int64_t kh = 0; kh < g.KH; ++kh) {
      const int64_t hi = ho * g.stride - g.pad + kh;
      if (hi < 0 || hi >= g.H) continue;
      T* dst = dx + (b * g.H + hi) * g.W * Cin;
      for (int64_t kw = 0; kw < g.KW; ++kw) {
        const int64_t wi = wo * g.stride - g.pad + kw;
        if (wi < 0 || wi >= g.W) continue;
        const T* src = row + (kh * g.KW + kw) * Cin;
        T* d = dst + wi * Cin;
#pragma omp simd
        for (int64_t c = 0; c < Cin; ++c) d[c] += src[c];
      }
    }
    if (++wo == g.Wo) {
      wo = 0;
      if (++ho == g.Ho) ho = 0, ++b;
    }
  }
}

// Rows [m0, m1) of cols: x itself for a 1x1 stride-1 unpadded conv, else built in `scratch`.
template <class T>
const T* cols_rows(const T* x, T* scratch_rows, const Geometry& g, int64_t m0, int64_t m1) {
  if (g.direct()) return x + m0 * g.K();
  im2col_rows(x, scratch_rows, g, m0, m1);
  return scratch_rows;
}

template <class T>
void fast_forward(const T* x, const T* w, const T* bias, T* y, const Geometry& g) {
  const int64_t K = g.K(), N = g.Cout, R = chunk_rows(g, sizeof(T));
  const T beta = bias ? T(1) : T(0);
  rows::for_each_chunk(g.M(), R, [&](int, int64_t m0, int64_t m1) {
    const T* cols = cols_rows(x, g.direct() ? nullptr : scratch<T>(0, static_cast<size_t>(R * K)), g, m0, m1);
    if (bias)  // C starts at the bias and the GEMM adds onto it: one pass over y
      for (int64_t m = m0; m < m1; ++m) std::memcpy(y + m * N, bias, sizeof(T) * N);
    rows::chunk_gemm(false, true, m1 - m0, N, K, T(1), cols, K, w, K, beta, y + m0 * N, N);
  });
}

// dw = gy^T cols, chunk by chunk (per-thread partials, kernels/cpu/row_chunks.h), even for a
// 1x1 conv: OpenBLAS threading one tall-skinny Cout x Cin x 50k product measured 3-6x slower.
template <class T>
void weight_grad(const T* gy, const T* x, T* dw, const Geometry& g) {
  const int64_t K = g.K(), R = chunk_rows(g, sizeof(T));
  rows::gemm_tn_over_rows(
      g.M(), g.Cout, K, gy,
      [&](int64_t m0, int64_t m1) {
        return cols_rows(x, g.direct() ? nullptr : scratch<T>(0, static_cast<size_t>(R * K)), g, m0, m1);
      },
      dw, R);
}

template <class T>
void data_grad(const T* gy, const T* w, T* dx, const Geometry& g) {
  const int64_t K = g.K(), N = g.Cout, P = g.Ho * g.Wo, HWC = g.H * g.W * g.Cin;
  if (g.direct()) {  // dcols is dx: any chunking, straight into dx
    rows::for_each_chunk(g.M(), chunk_rows(g, sizeof(T)), [&](int, int64_t m0, int64_t m1) {
      rows::chunk_gemm(false, false, m1 - m0, K, N, T(1), gy + m0 * N, N, w, K, T(0), dx + m0 * K, K);
    });
    return;
  }
  // Chunks never straddle an image boundary, and each thread takes whole images, so the scatter
  // of one thread never touches another's dx. A chunk is part of one image (large images) or
  // several whole images (small ones: one 7x7 image is 49 rows, too few for a GEMM at full rate).
  const int64_t R0 = chunk_rows(g, sizeof(T));
  const int64_t per_image = P >= R0 ? (P + R0 - 1) / R0 : 1;  // chunks per image
  const int64_t images = P >= R0 ? 1 : std::max<int64_t>(1, R0 / P);  // images per chunk
  const int64_t R = P >= R0 ? R0 : images * P;
  auto run = [&](int64_t b0, int64_t b1) {  // images [b0, b1)
    if (b0 >= b1) return;
    T* dcols = scratch<T>(1, static_cast<size_t>(R * K));
    std::fill(dx + b0 * HWC, dx + b1 * HWC, T(0));
    for (int64_t b = b0; b < b1; b += images)
      for (int64_t c = 0; c < per_image; ++c) {
        const int64_t m0 = b * P + c * R, m1 = std::min({m0 + R, (b + 1) * P + (images - 1) * P, b1 * P});
        rows::chunk_gemm(false, false, m1 - m0, K, N, T(1), gy + m0 * N, N, w, K, T(0), dcols, K);
        col2im_rows(dcols, dx, g, m0, m1);
      }
  };
  // With fewer images than threads, one thread runs and the GEMM library threads each chunk.
  const int nt = static_cast<int>(std::min<int64_t>(rows::max_threads(), g.B));
  if (nt <= 1) {
    run(0, g.B);
    return;
  }
  rows::parallel_serial_blas(nt, [&](int t, int T_) { run(rows::share(g.B, t, T_), rows::share(g.B, t + 1, T_)); });
}

#if defined(DIFFUSE_HAVE_DNNL)
// ---- oneDNN primitives (f32) --------------------------------------------------------------------

namespace onednn {

using dnnl::memory;
using Tag = memory::format_tag;

dnnl::engine& engine() {
  static dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}

struct Reorder {
  dnnl::reorder::primitive_desc pd;
  dnnl::reorder prim;
};

// The primitives of one geometry at one thread count. Created once, then shared: executing a
// primitive is thread-safe, as each call brings its own scratchpad (scratchpad_mode::user).
struct Convs {
  bool usable = true;  // false where oneDNN has only its reference loops (then im2col runs)
  dnnl::convolution_forward::primitive_desc fwd_pd;
  dnnl::convolution_forward fwd;
  Reorder w_to_fwd;  // OHWI weights -> the forward's layout
  // Made on the first backward.
  bool have_bwd = false;
  dnnl::convolution_backward_data::primitive_desc bd_pd;
  dnnl::convolution_backward_data bd;
  Reorder w_to_bd;
  dnnl::convolution_backward_weights::primitive_desc bw_pd;
  dnnl::convolution_backward_weights bw;
  Reorder dw_from_bw;  // the backward-weights' layout -> OHWI
};

struct Key {
  int64_t B, H, W, Cin, Cout, KH, KW;
  int stride, pad, threads;
  bool bias;
  bool operator==(const Key&) const = default;
};

memory::desc md(memory::dims d, Tag t) { return memory::desc(d, memory::data_type::f32, t); }
memory::desc x_md(const Geometry& g) { return md({g.B, g.Cin, g.H, g.W}, Tag::nhwc); }
memory::desc y_md(const Geometry& g) { return md({g.B, g.Cout, g.Ho, g.Wo}, Tag::nhwc); }
memory::desc w_md(const Geometry& g, Tag t) { return md({g.Cout, g.Cin, g.KH, g.KW}, t); }
memory::desc b_md(const Geometry& g) { return md({g.Cout}, Tag::x); }

dnnl::primitive_attr user_scratchpad() {
  dnnl::primitive_attr a;
  a.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return a;
}

Reorder reorder(const memory::desc& from, const memory::desc& to) {
  dnnl::reorder::primitive_desc pd(engine(), from, engine(), to, user_scratchpad());
  return {pd, dnnl::reorder(pd)};
}

bool is_ref(const char* impl) { return std::string(impl).rfind("ref", 0) == 0; }

void make_forward(Convs& c, const Geometry& g, bool bias) {
  const memory::dims s{g.stride, g.stride}, p{g.pad, g.pad};
  const memory::desc w_any = w_md(g, Tag::any);
  auto d = bias ? dnnl::convolution_forward::desc(dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
                                                   x_md(g), w_any, b_md(g), y_md(g), s, p, p)
                : dnnl::convolution_forward::desc(dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
                                                   x_md(g), w_any, y_md(g), s, p, p);
  c.fwd_pd = dnnl::convolution_forward::primitive_desc(d, user_scratchpad(), engine());
  c.fwd = dnnl::convolution_forward(c.fwd_pd);
  c.w_to_fwd = reorder(w_md(g, Tag::ohwi), c.fwd_pd.weights_desc());
  if (is_ref(c.fwd_pd.impl_info_str())) c.usable = false;
}

void make_backward(Convs& c, const Geometry& g, bool bias) {
  const memory::dims s{g.stride, g.stride}, p{g.pad, g.pad};
  const memory::desc w_any = w_md(g, Tag::any);
  dnnl::convolution_backward_data::desc dd(dnnl::algorithm::convolution_direct, x_md(g), w_any, y_md(g), s, p, p);
  c.bd_pd = dnnl::convolution_backward_data::primitive_desc(dd, user_scratchpad(), engine(), c.fwd_pd);
  c.bd = dnnl::convolution_backward_data(c.bd_pd);
  c.w_to_bd = reorder(w_md(g, Tag::ohwi), c.bd_pd.weights_desc());
  auto wd = bias ? dnnl::convolution_backward_weights::desc(dnnl::algorithm::convolution_direct, x_md(g), w_any,
                                                            b_md(g), y_md(g), s, p, p)
                 : dnnl::convolution_backward_weights::desc(dnnl::algorithm::convolution_direct, x_md(g), w_any,
                                                            y_md(g), s, p, p);
  c.bw_pd = dnnl::convolution_backward_weights::primitive_desc(wd, user_scratchpad(), engine(), c.fwd_pd);
  c.bw = dnnl::convolution_backward_weights(c.bw_pd);
  c.dw_from_bw = reorder(c.bw_pd.diff_weights_desc(), w_md(g, Tag::ohwi));
  c.have_bwd = true;
  if (is_ref(c.bd_pd.impl_info_str()) || is_ref(c.bw_pd.impl_info_str())) c.usable = false;
}

// The primitives for (g, bias) at this thread count, created on first use; nullptr where oneDNN
// has no fast implementation for the geometry (then the im2col path runs; not seen so far).
// Entries are never removed, so a pointer handed out stays valid.
Convs* convs(const Geometry& g, bool bias, bool backward) {
  static std::mutex mu;
  static std::vector<std::pair<Key, std::unique_ptr<Convs>>> cache;  // a few dozen geometries
  const Key k{g.B, g.H, g.W, g.Cin, g.Cout, g.KH, g.KW, g.stride, g.pad, rows::max_threads(), bias};
  std::lock_guard<std::mutex> lock(mu);
  auto it = std::find_if(cache.begin(), cache.end(), [&](const auto& e) { return e.first == k; });
  if (it == cache.end()) {
    cache.emplace_back(k, std::make_unique<Convs>());
    it = cache.end() - 1;
    try {
      make_forward(*it->second, g, bias);
    } catch (const dnnl::error&) {
      it->second->usable = false;
    }
  }
  Convs* c = it->second.get();
  if (c->usable && backward && !c->have_bwd) {
    try {
      make_backward(*c, g, bias);
    } catch (const dnnl::error&) {
      c->usable = false;
    }
  }
  return c->usable ? c : nullptr;
}

// Per-thread buffers, reused across calls: 0 the weights in a primitive's layout, 1 the weight
// gradient in the backward-weights' layout, 2 a primitive's scratchpad.
float* buffer(int slot, size_t bytes) {
  thread_local std::vector<float> buf[3];
  const size_t n = (bytes + sizeof(float) - 1) / sizeof(float);
  if (buf[slot].size() < n) buf[slot].resize(n);
  return buf[slot].data();
}

dnnl::stream& stream() {
  thread_local dnnl::stream s(engine());
  return s;
}

void execute(const dnnl::primitive& prim, const memory::desc& scratch, std::unordered_map<int, memory> args) {
  if (scratch.get_size() > 0) args.emplace(DNNL_ARG_SCRATCHPAD, memory(scratch, engine(), buffer(2, scratch.get_size())));
  prim.execute(stream(), args);
  stream().wait();
}

memory mem(const memory::desc& d, const float* p) { return memory(d, engine(), const_cast<float*>(p)); }

// The weights in `layout`, by `r` into buffer slot 0.
memory weights(const Geometry& g, const float* w, const Reorder& r) {
  const memory::desc& layout = r.pd.dst_desc();
  memory out = mem(layout, buffer(0, layout.get_size()));
  execute(r.prim, r.pd.scratchpad_desc(), {{DNNL_ARG_FROM, mem(w_md(g, Tag::ohwi), w)}, {DNNL_ARG_TO, out}});
  return out;
}

bool forward(const float* x, const float* w, const float* bias, float* y, const Geometry& g) {
  Convs* c = convs(g, bias != nullptr, false);
  if (!c) return false;
  std::unordered_map<int, memory> args{{DNNL_ARG_SRC, mem(x_md(g), x)},
                                       {DNNL_ARG_WEIGHTS, weights(g, w, c->w_to_fwd)},
                                       {DNNL_ARG_DST, mem(y_md(g), y)}};
  if (bias) args.emplace(DNNL_ARG_BIAS, mem(b_md(g), bias));
  execute(c->fwd, c->fwd_pd.scratchpad_desc(), std::move(args));
  return true;
}

bool backward(const float* gy, const float* x, const float* w, float* dx, float* dw, float* db, const Geometry& g) {
  // db comes with dw from the backward-weights primitive; db alone is the column sums' job.
  Convs* c = convs(g, db != nullptr && dw != nullptr, true);
  if (!c) return false;
  if (dx)
    execute(c->bd, c->bd_pd.scratchpad_desc(),
            {{DNNL_ARG_DIFF_DST, mem(y_md(g), gy)},
             {DNNL_ARG_WEIGHTS, weights(g, w, c->w_to_bd)},
             {DNNL_ARG_DIFF_SRC, mem(x_md(g), dx)}});
  if (dw) {
    const memory::desc& dw_layout = c->bw_pd.diff_weights_desc();
    memory dw_blocked = mem(dw_layout, buffer(1, dw_layout.get_size()));
    std::unordered_map<int, memory> args{
        {DNNL_ARG_DIFF_DST, mem(y_md(g), gy)}, {DNNL_ARG_SRC, mem(x_md(g), x)}, {DNNL_ARG_DIFF_WEIGHTS, dw_blocked}};
    if (db) args.emplace(DNNL_ARG_DIFF_BIAS, mem(b_md(g), db));
    execute(c->bw, c->bw_pd.scratchpad_desc(), std::move(args));
    execute(c->dw_from_bw.prim, c->dw_from_bw.pd.scratchpad_desc(),
            {{DNNL_ARG_FROM, dw_blocked}, {DNNL_ARG_TO, mem(w_md(g, Tag::ohwi), dw)}});
  } else if (db) {
    rows::column_sums(gy, g.M(), g.Cout, db);
  }
  return true;
}

}  // namespace onednn
#endif

template <class T>
const T* ptr(const Tensor& t) {
  return t.defined() ? t.data<T>() : nullptr;
}
template <class T>
T* mut(Tensor& t) {
  return t.defined() ? t.data<T>() : nullptr;
}

}  // namespace

Shape conv2d_output_shape(const Shape& xs, const Shape& ws, const Conv2dParams& p) {
  DF_CHECK(xs.rank() == 4 && ws.rank() == 4 && p.stride >= 1 && p.padding >= 0, "conv2d: x ", xs.str(), ", weight ",
           ws.str(), ", stride ", p.stride, ", padding ", p.padding);
  DF_CHECK(xs[1] + 2 * p.padding >= ws[1] && xs[2] + 2 * p.padding >= ws[2], "conv2d: kernel ", ws[1], "x", ws[2],
           " larger than the padded input ", xs.str());
  const int64_t Ho = (xs[1] + 2 * p.padding - ws[1]) / p.stride + 1;
  const int64_t Wo = (xs[2] + 2 * p.padding - ws[2]) / p.stride + 1;
  return Shape{xs[0], Ho, Wo, ws[0]};
}

namespace cpu {
void conv2d_forward(const Tensor& x, const Tensor& w, const Tensor& bias, const Conv2dParams& p, Tensor& y) {
  const Geometry g = geometry(x, w, bias, p);
  check_out(y, Shape{g.B, g.Ho, g.Wo, g.Cout}, x.dtype(), "y");
  if (x.dtype() == DType::f64) {
    fast_forward(x.data<double>(), w.data<double>(), ptr<double>(bias), y.data<double>(), g);
    return;
  }
#if defined(DIFFUSE_HAVE_DNNL)
  if (onednn::forward(x.data<float>(), w.data<float>(), ptr<float>(bias), y.data<float>(), g)) return;
#endif
  fast_forward(x.data<float>(), w.data<float>(), ptr<float>(bias), y.data<float>(), g);
}

void conv2d_backward(const Tensor& gy, const Tensor& x, const Tensor& w, const Conv2dParams& p, Conv2dGrads& r) {
  const Geometry g = geometry(x, w, Tensor(), p);
  check_grads(gy, x, w, g, r);
  auto run = [&](auto tag) {
    using T = decltype(tag);
    if (r.db.defined()) rows::column_sums(gy.data<T>(), g.M(), g.Cout, r.db.data<T>());
    if (r.dw.defined()) weight_grad(gy.data<T>(), x.data<T>(), r.dw.data<T>(), g);
    if (r.dx.defined()) data_grad(gy.data<T>(), w.data<T>(), r.dx.data<T>(), g);
  };
  if (x.dtype() == DType::f64) {
    run(double{});
    return;
  }
#if defined(DIFFUSE_HAVE_DNNL)
  if (onednn::backward(gy.data<float>(), x.data<float>(), w.data<float>(), mut<float>(r.dx), mut<float>(r.dw),
                       mut<float>(r.db), g))
    return;
#endif
  run(float{});
}
}  // namespace cpu

namespace ref {
void conv2d_forward(const Tensor& x, const Tensor& w, const Tensor& bias, const Conv2dParams& p, Tensor& y) {
  const Geometry g = geometry(x, w, bias, p);
  check_out(y, Shape{g.B, g.Ho, g.Wo, g.Cout}, x.dtype(), "y");
  if (x.dtype() == DType::f64)
    ref_forward(x.data<double>(), w.data<double>(), ptr<double>(bias), y.data<double>(), g);
  else
    ref_forward(x.data<float>(), w.data<float>(), ptr<float>(bias), y.data<float>(), g);
}

void conv2d_backward(const Tensor& gy, const Tensor& x, const Tensor& w, const Conv2dParams& p, Conv2dGrads& r) {
  const Geometry g = geometry(x, w, Tensor(), p);
  check_grads(gy, x, w, g, r);
  if (x.dtype() == DType::f64)
    ref_backward(gy.data<double>(), x.data<double>(), w.data<double>(), mut<double>(r.dx), mut<double>(r.dw),
                 mut<double>(r.db), g);
  else
    ref_backward(gy.data<float>(), x.data<float>(), w.data<float>(), mut<float>(r.dx), mut<float>(r.dw),
                 mut<float>(r.db), g);
}
}  // namespace ref

}  // namespace diffuse::kernels

namespace diffuse::kernels {

Tensor conv2d_forward(const Tensor& x, const Tensor& w, const Tensor& bias, const Conv2dParams& p) {
  DF_PROFILE("conv2d_forward");
  if (x.device().is_cpu()) {
    Tensor y = Tensor::empty(conv2d_output_shape(x.shape(), w.shape(), p), x.dtype());
    cpu::conv2d_forward(x, w, bias, p, y);
    return y;
  }
  DF_ON_CUDA(x.device(), cuda::conv2d_forward(x, w, bias, p));  // cuDNN, NHWC
  unsupported_device("conv2d", x.device());
}

Conv2dGrads conv2d_backward(const Tensor& gy, const Tensor& x, const Tensor& w, const Conv2dParams& p, bool need_x,
                            bool need_w, bool need_b) {
  DF_PROFILE("conv2d_backward");
  if (x.device().is_cpu()) {
    Conv2dGrads r;
    if (need_x) r.dx = Tensor::empty(x.shape(), x.dtype());
    if (need_w) r.dw = Tensor::empty(w.shape(), w.dtype());
    if (need_b) r.db = Tensor::empty({w.size(0)}, w.dtype());
    cpu::conv2d_backward(gy, x, w, p, r);
    return r;
  }
  DF_ON_CUDA(x.device(), cuda::conv2d_backward(gy, x, w, p, need_x, need_w, need_b));
  unsupported_device("conv2d", x.device());
}

}  // namespace diffuse::kernels
