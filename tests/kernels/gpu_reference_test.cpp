// The device paths of the dense ops against the CPU reference loops (kernels::gemm_reference and
// kernels::ref): the GEMM launcher (cuBLASLt on a GPU), matmul and linear, conv2d forward,
// backward-data and backward-filter (cuDNN), and attention forward and backward (the
// materialised cuBLASLt path and the flash kernels, tensor-core ones for bf16).
//
// Each comparison is a function of the device under test, registered twice: [cuda] with the GPU,
// and [cpu] with the cpu, where it checks the fast path (OpenBLAS / oneDNN) on the cases the cpu
// has (f32), so the comparison code itself runs in every CI. Outputs that the caller allocates
// are NaN-filled first; outputs that an op allocates itself come from an allocator cache that
// holds only NaN-filled blocks of their sizes (poison_next_allocations). Either way an element the
// op leaves unwritten fails.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "core/allocator.h"
#include "core/device.h"
#include "core/tensor.h"
#include "kernels/attention.h"
#include "kernels/conv2d.h"
#include "kernels/gemm.h"
#include "kernels/loss.h"
#include "kernels/matmul.h"
#if defined(DIFFUSE_HAVE_CUDA)
#endif
#include "tests/test_util.h"

using namespace diffuse;
using namespace diffuse::kernels;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// The dtypes the device under test computes in: the cpu has f32 (and f64), a GPU f32 and bf16.
std::vector<DType> float_dtypes(Device d) {
  if (d.is_cpu()) return {DType::f32};
  return {DType::f32, DType::bf16};
}

// Empties the allocator cache of `d`, then leaves in it four NaN-filled blocks of each size, which
// the next allocations of those sizes take (free lists per size class, last freed first): an op
// that allocates its own outputs then hands back poisoned memory wherever it writes nothing.
void poison_next_allocations(Device d, const std::vector<std::pair<Shape, DType>>& outputs) {
  if (d.is_cpu())
    cpu_empty_cache();
  else
    cuda_empty_cache(d.index);
  std::vector<Tensor> blocks;
  for (const auto& [shape, dtype] : outputs)
    for (int i = 0; i < 4; ++i) blocks.push_back(Tensor::empty(shape, dtype, d).poison_());
}

std::vector<double> values(const Tensor& t) { return test::f64_values(t.to(Device::cpu()).to(DType::f64)); }

double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double a : v) m = std::max(m, std::fabs(a));
  return m;
}

// Every element within rtol |want| + atol_scale max|want| (the floor for elements that cancel to
// near zero), and finite: a poisoned, unwritten element fails.
void check_close(const std::string& what, const Tensor& got, const Tensor& want, double rtol, double atol_scale) {
  REQUIRE(got.defined());
  REQUIRE(got.shape() == want.shape());
  const std::vector<double> g = values(got), w = values(want);
  INFO(what << " " << got.str() << ": "
            << test::compare(got.to(Device::cpu()).to(DType::f32), want.to(DType::f32)).str());
  CHECK(test::allclose(g, w, rtol, atol_scale * max_abs(w)));
}

// A tensor of integers in [-2, 2] (exact in bf16), from a fresh seed.
Tensor small_ints(const Shape& s) {
  std::mt19937_64 rng(test::next_seed());
  std::uniform_int_distribution<int> u(-2, 2);
  std::vector<float> v(static_cast<size_t>(s.numel()));
  for (float& x : v) x = static_cast<float>(u(rng));
  return Tensor::from_vector(v, s);
}

// ---- GEMM: the launcher, every transpose, dtype, batch stride and the bias epilogue -------------
//
// Exact. Inputs are integers in [-2, 2], K <= 31, alpha = 0.5 and a bias in [-2, 2]: every product
// and partial sum is an integer of magnitude <= 124, and the result a multiple of 0.5 of magnitude
// <= 64.5, all exact in bf16 (8 significant bits) and f32 in any order of summation; so any
// difference from the reference is a wrong element, not rounding.

struct GemmCase {
  bool ta = false, tb = false;
  DType ab = DType::f32, c = DType::f32;
  int64_t M = 0, N = 0, K = 0, batch = 1;
  bool broadcast_a = false, broadcast_b = false;  // batch stride 0: one matrix for every batch
  bool bias = false;
};

// A batch of row-major matrices (rows x cols, leading dimension ld, `stride` elements apart) in a
// buffer that is NaN everywhere else (row padding, the gaps between matrices): a launcher that
// reads outside its matrices fails.
struct Strided {
  int64_t rows = 0, cols = 0, ld = 0, stride = 0, batch = 1;
  std::vector<float> buf;
  int64_t size() const { return (batch - 1) * stride + rows * ld; }
  float& at(int64_t b, int64_t r, int64_t c) { return buf[b * stride + r * ld + c]; }
};

Strided strided(int64_t rows, int64_t cols, int64_t pad, int64_t batch, bool broadcast) {
  Strided s;
  s.rows = rows, s.cols = cols, s.ld = cols + pad, s.batch = batch;
  s.stride = broadcast ? 0 : rows * s.ld + 5;
  s.buf.assign(static_cast<size_t>(s.size()), static_cast<float>(kNaN));
  const std::vector<float> v = small_ints({broadcast ? 1 : batch, rows, cols}).to_vector();
  for (int64_t b = 0; b < (broadcast ? 1 : batch); ++b)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) s.at(b, r, c) = v[(b * rows + r) * cols + c];
  return s;
}

// C from the launcher under test: kernels::gemm once per batch on the cpu (the bias as C's initial
// value with beta = 1, the cpu GEMM has no epilogue), cuda::gemm (one strided-batched cuBLASLt call,
// the bias in its epilogue) on a GPU. C arrives NaN-filled and goes back with its padding.
std::vector<float> run_gemm(Device d, const GemmCase& c, const Strided& A, const Strided& B, const Tensor& bias,
                            Strided C) {
  const float alpha = 0.5f;
  if (d.is_cpu()) {
    REQUIRE(c.ab == DType::f32);
    REQUIRE(c.c == DType::f32);
    const std::vector<float> bv = c.bias ? bias.to_vector() : std::vector<float>{};
    for (int64_t b = 0; b < c.batch; ++b) {
      if (c.bias)
        for (int64_t m = 0; m < c.M; ++m)
          for (int64_t n = 0; n < c.N; ++n) C.at(b, m, n) = bv[n];
      kernels::gemm(c.ta, c.tb, c.M, c.N, c.K, alpha, A.buf.data() + b * A.stride, A.ld, B.buf.data() + b * B.stride,
                    B.ld, c.bias ? 1.f : 0.f, C.buf.data() + b * C.stride, C.ld);
    }
    return C.buf;
  }
#if defined(DIFFUSE_HAVE_CUDA)
  auto upload = [&](const std::vector<float>& v, DType t) {
    return Tensor::from_vector(v, {static_cast<int64_t>(v.size())}).to(t).to(d);
  };
  const Tensor a = upload(A.buf, c.ab), b = upload(B.buf, c.ab);
  Tensor out = upload(C.buf, c.c);
  const Tensor bias_d = c.bias ? bias.to(c.c).to(d) : Tensor();
  cuda::GemmOperand oa{a.raw(), A.ld, A.stride, c.ta}, ob{b.raw(), B.ld, B.stride, c.tb};
  cuda::gemm(c.ab, c.c, c.M, c.N, c.K, alpha, oa, ob, 0.f, out.raw(), C.ld, C.stride, c.batch,
            c.bias ? bias_d.raw() : nullptr);
  return out.to_vector();
#else
  FAIL("no GPU in this build");
  return {};
#endif
}

void check_gemm(Device d, const GemmCase& c) {
  INFO("gemm " << (c.ta ? "T" : "N") << (c.tb ? "T" : "N") << " " << dtype_name(c.ab) << "->" << dtype_name(c.c)
               << " M=" << c.M << " N=" << c.N << " K=" << c.K << " batch=" << c.batch << " stride_a "
               << (c.broadcast_a ? "0" : "full") << " stride_b " << (c.broadcast_b ? "0" : "full")
               << (c.bias ? " bias" : "") << ", seed " << test::run_seed());
  const Strided A = c.ta ? strided(c.K, c.M, 2, c.batch, c.broadcast_a) : strided(c.M, c.K, 2, c.batch, c.broadcast_a);
  const Strided B = c.tb ? strided(c.N, c.K, 1, c.batch, c.broadcast_b) : strided(c.K, c.N, 1, c.batch, c.broadcast_b);
  const Tensor bias = small_ints({c.N});
  Strided C;
  C.rows = c.M, C.cols = c.N, C.ld = c.N + 3, C.batch = c.batch, C.stride = c.M * C.ld + 4;
  C.buf.assign(static_cast<size_t>(C.size()), static_cast<float>(kNaN));

  // The oracle: the reference loops, C starting as the bias with beta = 1 (C = alpha AB + bias).
  Strided want = C;
  const std::vector<float> bv = bias.to_vector();
  for (int64_t b = 0; b < c.batch; ++b) {
    for (int64_t m = 0; m < c.M; ++m)
      for (int64_t n = 0; n < c.N; ++n) want.at(b, m, n) = c.bias ? bv[n] : 0.f;
    kernels::gemm_reference<float>(c.ta, c.tb, c.M, c.N, c.K, 0.5f, A.buf.data() + b * A.stride, A.ld,
                                   B.buf.data() + b * B.stride, B.ld, c.bias ? 1.f : 0.f,
                                   want.buf.data() + b * want.stride, want.ld);
  }

  const std::vector<float> got = run_gemm(d, c, A, B, bias, C);
  REQUIRE(got.size() == want.buf.size());
  int64_t wrong = 0, touched = 0, first_wrong = -1;
  for (int64_t b = 0; b < c.batch; ++b)
    for (int64_t m = 0; m < c.M; ++m)
      for (int64_t n = 0; n < C.ld; ++n) {
        const int64_t i = b * C.stride + m * C.ld + n;
        if (n >= c.N) {
          touched += !std::isnan(got[i]);  // row padding: never written
        } else if (!(got[i] == want.buf[i])) {
          if (first_wrong < 0) first_wrong = i;
          ++wrong;
        }
      }
  for (int64_t b = 0; b + 1 < c.batch; ++b)  // the gaps between the batch's matrices
    for (int64_t i = b * C.stride + c.M * C.ld; i < (b + 1) * C.stride; ++i) touched += !std::isnan(got[i]);
  INFO("first wrong element " << first_wrong << ": got " << (first_wrong >= 0 ? got[first_wrong] : 0.f) << ", want "
                              << (first_wrong >= 0 ? want.buf[first_wrong] : 0.f));
  CHECK(wrong == 0);
  CHECK(touched == 0);
}

void gemm_cases(Device d) {
  struct Batching {
    int64_t M, N, K, batch;
    bool broadcast_a, broadcast_b;
  };
  const Batching batchings[] = {
      {13, 7, 29, 1, false, false},  // one matrix
      {1, 17, 31, 3, false, false},  // one row per batch, the largest K the exactness allows
      {13, 7, 29, 3, false, false}, {11, 9, 23, 3, true, false},  // A broadcast (stride 0)
      {11, 9, 23, 3, false, true},                                // B broadcast
  };
  std::vector<std::pair<DType, DType>> dtypes = {{DType::f32, DType::f32}};
  if (d.is_cuda()) dtypes.insert(dtypes.end(), {{DType::bf16, DType::bf16}, {DType::bf16, DType::f32}});
  for (const auto& [ab, cd] : dtypes)
    for (bool ta : {false, true})
      for (bool tb : {false, true})
        for (const Batching& bt : batchings)
          for (bool bias : {false, true}) {
            GemmCase c;
            c.ta = ta, c.tb = tb, c.ab = ab, c.c = cd;
            c.M = bt.M, c.N = bt.N, c.K = bt.K, c.batch = bt.batch;
            c.broadcast_a = bt.broadcast_a, c.broadcast_b = bt.broadcast_b;
            c.bias = bias;
            check_gemm(d, c);
          }
}

// ---- matmul and linear: the Tensor-level products, forward and backward ----------------------------
//
// Exact, as the GEMM above: integer inputs in [-2, 2] and every sum over at most 31 terms (db sums
// M <= 31 values), so each result is an integer of magnitude <= 124, exact in bf16 and f32.

void matmul_linear_cases(Device d) {
  for (DType t : float_dtypes(d)) {
    auto on = [&](const Tensor& x) { return x.to(t).to(d); };
    for (int64_t Bt : {int64_t{0}, int64_t{3}}) {  // 0: the unbatched (M,K) x (K,N)
      const int64_t M = 9, K = 31, N = 5;
      INFO("matmul " << dtype_name(t) << " batch " << Bt << ", seed " << test::run_seed());
      const Tensor a = Bt ? small_ints({Bt, M, K}) : small_ints({M, K});
      const Tensor b = Bt ? small_ints({Bt, K, N}) : small_ints({K, N});
      const Tensor g = Bt ? small_ints({Bt, M, N}) : small_ints({M, N});
      Tensor y = Tensor::empty(Bt ? Shape{Bt, M, N} : Shape{M, N}).poison_();
      ref::matmul_forward(a, b, y);
      MatmulGrads want{Tensor::empty(a.shape()).poison_(), Tensor::empty(b.shape()).poison_()};
      ref::matmul_backward(g, a, b, want);
      const Tensor ad = on(a), bd = on(b), gd = on(g);
      poison_next_allocations(d, {{y.shape(), t}});
      check_close("matmul y", matmul_forward(ad, bd), y, 0, 0);
      poison_next_allocations(d, {{a.shape(), t}, {b.shape(), t}});
      const MatmulGrads got = matmul_backward(gd, ad, bd, true, true);
      check_close("matmul da", got.da, want.da, 0, 0);
      check_close("matmul db", got.db, want.db, 0, 0);
    }
    for (int64_t Bt : {int64_t{0}, int64_t{2}}) {
      // An empty inner dimension (K = 0): y is the empty sum, 0, on every device (cuBLASLt refuses
      // K = 0, so the GPU path fills y itself, per batch); the output is poisoned first.
      INFO("matmul K = 0, " << dtype_name(t) << " batch " << Bt);
      const Shape as = Bt ? Shape{Bt, 4, 0} : Shape{4, 0}, bs = Bt ? Shape{Bt, 0, 6} : Shape{0, 6};
      const Shape ys = Bt ? Shape{Bt, 4, 6} : Shape{4, 6};
      poison_next_allocations(d, {{ys, t}});
      const Tensor y = matmul_forward(on(Tensor::empty(as)), on(Tensor::empty(bs)));
      REQUIRE(y.shape() == ys);
      const std::vector<float> v = y.to(DType::f32).to(Device::cpu()).to_vector();
      CHECK(v == std::vector<float>(v.size(), 0.f));
    }
    for (bool with_bias : {false, true}) {
      const int64_t B = 3, T = 7, In = 29, Out = 11;  // x (B, T, In): M = 21 rows
      INFO("linear " << dtype_name(t) << (with_bias ? " with bias" : "") << ", seed " << test::run_seed());
      const Tensor x = small_ints({B, T, In}), w = small_ints({Out, In}), g = small_ints({B, T, Out});
      const Tensor bias = with_bias ? small_ints({Out}) : Tensor();
      Tensor y = Tensor::empty({B, T, Out}).poison_();
      ref::linear_forward(x, w, bias, y);
      LinearGrads want{Tensor::empty(x.shape()).poison_(), Tensor::empty(w.shape()).poison_(),
                       with_bias ? Tensor::empty({Out}).poison_() : Tensor()};
      ref::linear_backward(g, x, w, want);
      const Tensor xd = on(x), wd = on(w), gd = on(g), bd = with_bias ? on(bias) : Tensor();
      poison_next_allocations(d, {{y.shape(), t}});
      check_close("linear y", linear_forward(xd, wd, bd), y, 0, 0);
      poison_next_allocations(d, {{x.shape(), t}, {w.shape(), t}, {{Out}, t}});
      const LinearGrads got = linear_backward(gd, xd, wd, true, true, with_bias);
      check_close("linear dx", got.dx, want.dx, 0, 0);
      check_close("linear dw", got.dw, want.dw, 0, 0);
      if (with_bias) check_close("linear db", got.db, want.db, 0, 0);
    }
  }
}

// ---- conv2d: forward, backward-data, backward-filter ------------------------------------------------
//
// The oracle is kernels::ref in f64 on the inputs as the device sees them (rounded to bf16 for a
// bf16 run). f32: an output is a sum of n <= 400 products (KH KW Cin forward, KH KW Cout
// backward-data, B Ho Wo backward-filter) accumulated in f32; its rounding error grows like
// sqrt(n) eps |terms| ~ 1e-6 of the output's scale for random signs, so rtol 1e-5 (with the same
// floor times max|want| for elements that cancel) leaves 10x for cuDNN's summation orders and
// transforms (FMA math only, no TF32). bf16: f32 accumulation, then one bf16 rounding of the
// output (2^-9 relative): rtol 1e-2, floor 1e-2 max|want|.

struct ConvCase {
  int64_t B, H, W, Cin, Cout, K;
  int stride, padding;
};

void conv2d_cases(Device d) {
  const ConvCase cases[] = {
      {1, 7, 9, 1, 5, 3, 1, 1},      // one input channel, batch 1
      {2, 9, 7, 3, 8, 3, 2, 1},      // three input channels (an RGB conv_in), stride 2
      {3, 5, 5, 16, 7, 1, 1, 0},     // 1x1 (the skip projection)
      {1, 11, 13, 16, 16, 3, 2, 1},  // a downsampling conv, batch 1
      {2, 7, 5, 3, 4, 5, 1, 2},      // 5x5
      {1, 9, 9, 16, 3, 3, 1, 0},     // no padding
  };
  for (DType t : float_dtypes(d))
    for (const ConvCase& c : cases) {
      INFO("conv2d " << dtype_name(t) << " x (" << c.B << "," << c.H << "," << c.W << "," << c.Cin << ") w (" << c.Cout
                     << "," << c.K << "," << c.K << "," << c.Cin << ") stride " << c.stride << " padding " << c.padding
                     << ", seed " << test::run_seed());
      const Conv2dParams p{c.stride, c.padding};
      // The device's inputs; the oracle sees the same values in f64.
      const Tensor x = test::random_tensor({c.B, c.H, c.W, c.Cin}).to(t);
      const Tensor w = test::random_tensor({c.Cout, c.K, c.K, c.Cin}).to(t);
      const Tensor bias = test::random_tensor({c.Cout}).to(t);
      const Shape ys = conv2d_output_shape(x.shape(), w.shape(), p);
      const Tensor gy = test::random_tensor(ys).to(t);
      const Tensor x64 = x.to(DType::f64), w64 = w.to(DType::f64), b64 = bias.to(DType::f64), gy64 = gy.to(DType::f64);
      Tensor y = Tensor::empty(ys, DType::f64).poison_();
      ref::conv2d_forward(x64, w64, b64, p, y);
      Conv2dGrads want{Tensor::empty(x.shape(), DType::f64).poison_(), Tensor::empty(w.shape(), DType::f64).poison_(),
                       Tensor::empty({c.Cout}, DType::f64).poison_()};
      ref::conv2d_backward(gy64, x64, w64, p, want);

      const double tol = t == DType::f32 ? 1e-5 : 1e-2;
      const Tensor xd = x.to(d), wd = w.to(d), bd = bias.to(d), gyd = gy.to(d);
      poison_next_allocations(d, {{ys, t}});
      check_close("conv2d y", conv2d_forward(xd, wd, bd, p), y, tol, tol);
      poison_next_allocations(d, {{x.shape(), t}, {w.shape(), t}, {{c.Cout}, t}});
      const Conv2dGrads got = conv2d_backward(gyd, xd, wd, p, true, true, true);
      check_close("conv2d dx (backward-data)", got.dx, want.dx, tol, tol);
      check_close("conv2d dw (backward-filter)", got.dw, want.dw, tol, tol);
      check_close("conv2d db", got.db, want.db, tol, tol);
    }
}

// ---- attention: forward and backward ----------------------------------------------------------------
//
// The oracle is kernels::ref in f64 on the device's inputs. On a GPU, head dims 32 and 64 run the
// flash kernels (the bf16 tensor-core ones for bf16), other head dims the materialised path (S and
// P per head on cuBLASLt); the cpu runs its per-head GEMMs for all. Tolerances as argued for the
// flash kernels' entries in op_table_test.cpp: f32: a score is a D-term dot product (D <= 64) of values in [-1, 1], its
// f32 error ~3e-5 absolute, inherited by P as a relative error and by the P-weighted sums: rtol
// 1e-4, floor 1e-4 max|want|. bf16: the inputs are rounded before both sides see them; the output
// adds a bf16 rounding (2^-8), and P or dS are rounded to bf16 before their second product (the
// materialised path keeps P in bf16, the tensor-core kernels round both): twice that, rtol 1.6e-2,
// floor 1.6e-2 max|want| (backward reads the bf16 forward output in rowsum(dO * O), an error spread
// over the whole row).

struct AttnCase {
  int64_t B, Tq, Tk;
  int heads, D;
};

void attention_cases(Device d) {
  const AttnCase cases[] = {
      {1, 35, 35, 3, 16},  // materialised on a GPU, self-attention, batch 1
      {2, 21, 9, 2, 24},   // materialised, cross-attention
      {2, 15, 15, 4, 8},   // materialised, small heads
      {1, 33, 33, 2, 32},  // flash, D = 32
      {3, 17, 45, 1, 64},  // flash, D = 64, cross-attention
  };
  for (DType t : float_dtypes(d))
    for (const AttnCase& c : cases) {
      const int64_t C = static_cast<int64_t>(c.heads) * c.D;
      INFO("attention " << dtype_name(t) << " B=" << c.B << " Tq=" << c.Tq << " Tk=" << c.Tk << " heads=" << c.heads
                        << " D=" << c.D << ", seed " << test::run_seed());
      const Tensor q = test::random_tensor({c.B, c.Tq, C}).to(t), k = test::random_tensor({c.B, c.Tk, C}).to(t);
      const Tensor v = test::random_tensor({c.B, c.Tk, C}).to(t), dout = test::random_tensor({c.B, c.Tq, C}).to(t);
      const Tensor q64 = q.to(DType::f64), k64 = k.to(DType::f64), v64 = v.to(DType::f64), do64 = dout.to(DType::f64);
      Tensor out = Tensor::empty(q.shape(), DType::f64).poison_();
      Tensor P = Tensor::empty({c.B, c.heads, c.Tq, c.Tk}, DType::f64).poison_();
      ref::attention_forward(q64, k64, v64, c.heads, out, P);
      Tensor dq = Tensor::empty(q.shape(), DType::f64).poison_(), dk = Tensor::empty(k.shape(), DType::f64).poison_();
      Tensor dv = Tensor::empty(v.shape(), DType::f64).poison_();
      ref::attention_backward(do64, q64, k64, v64, P, c.heads, dq, dk, dv);

      const double tol = t == DType::f32 ? 1e-4 : 1.6e-2;
      const Tensor qd = q.to(d), kd = k.to(d), vd = v.to(d), dod = dout.to(d);
      poison_next_allocations(d, {{q.shape(), t}, {P.shape(), t}});
      const AttentionResult fwd = attention_forward(qd, kd, vd, c.heads);
      check_close("attention out", fwd.out, out, tol, tol);
      if (fwd.saved.dim() == 4) check_close("attention P", fwd.saved, P, tol, tol);  // the materialised paths
      poison_next_allocations(d, {{q.shape(), t}, {k.shape(), t}});
      const AttentionGrads got = attention_backward(dod, qd, kd, vd, fwd, c.heads);
      check_close("attention dq", got.dq, dq, tol, tol);
      check_close("attention dk", got.dk, dk, tol, tol);
      check_close("attention dv", got.dv, dv, tol, tol);
    }
}

bool have_gpu() {
#if defined(DIFFUSE_HAVE_CUDA)
  return cuda_available();
#else
  return false;
#endif
}

}  // namespace

TEST_CASE("poison_next_allocations: the next allocations of a primed size come back NaN", "[cpu][kernels]") {
  const Shape s{3, 7, 5};
  poison_next_allocations(Device::cpu(), {{s, DType::f32}});
  for (int i = 0; i < 4; ++i) {
    const std::vector<float> v = Tensor::empty(s).to_vector();
    CHECK(std::all_of(v.begin(), v.end(), [](float a) { return std::isnan(a); }));
  }
}

TEST_CASE("gemm: the cpu fast path equals gemm_reference (transposes, batch strides, bias)", "[cpu][kernels]") {
  gemm_cases(Device::cpu());
}

TEST_CASE("gemm: cuBLASLt equals gemm_reference (transposes, f32/bf16, batch strides, bias epilogue)",
          "[cuda][kernels]") {
  if (have_gpu()) gemm_cases(Device::cuda(0));
}

TEST_CASE("matmul and linear: the cpu fast path equals the reference, forward and backward", "[cpu][kernels]") {
  matmul_linear_cases(Device::cpu());
}

TEST_CASE("matmul and linear: the GPU equals the reference, forward and backward", "[cuda][kernels]") {
  if (have_gpu()) matmul_linear_cases(Device::cuda(0));
}

TEST_CASE("conv2d: the cpu fast path matches the f64 reference (forward, backward-data, backward-filter)",
          "[cpu][kernels]") {
  conv2d_cases(Device::cpu());
}

TEST_CASE("conv2d: cuDNN matches the f64 reference (forward, backward-data, backward-filter)", "[cuda][kernels]") {
  if (have_gpu()) conv2d_cases(Device::cuda(0));
}

TEST_CASE("attention: the cpu fast path matches the f64 reference, forward and backward", "[cpu][kernels]") {
  attention_cases(Device::cpu());
}

TEST_CASE("attention: the materialised and flash paths on the GPU match the f64 reference, forward and backward",
          "[cuda][kernels]") {
  if (have_gpu()) attention_cases(Device::cuda(0));
}

// Cross-entropy through the Tensor-level op on the GPU (f32 and bf16 logits; the loss is f32 either
// way) against the cpu's, forward and backward, outputs poisoned first. The GPU sums each row in
// another order: 1e-5 relative on O(1) values, with the mean over B rows of the loss.
TEST_CASE("cross_entropy: the GPU equals the cpu, forward and backward", "[cuda][kernels]") {
  if (!have_gpu()) return;
  const Device d = Device::cuda(0);
  for (const int64_t B : {int64_t{1}, int64_t{13}})
    for (const int64_t K : {int64_t{10}, int64_t{1001}})
      for (DType t : {DType::f32, DType::bf16}) {
        INFO("B " << B << " K " << K << " " << dtype_name(t) << ", seed " << test::run_seed());
        const Tensor logits = test::random_tensor({B, K}, -4.f, 4.f).to(t);
        std::vector<int64_t> l(static_cast<size_t>(B));
        std::mt19937_64 rng(test::next_seed());
        for (int64_t& v : l) v = static_cast<int64_t>(rng() % static_cast<uint64_t>(K));
        const Tensor labels = Tensor::from_vector_i64(l, {B});
        // The cpu on the same values in f32 (the GPU reads bf16 logits as f32 too).
        const Tensor x32 = logits.to(DType::f32);
        const CrossEntropyResult want = cross_entropy_forward(x32, labels);
        const Tensor dloss = Tensor::full({1}, 0.75, DType::f32);
        const Tensor dwant = cross_entropy_backward(dloss, x32, labels, want.lse);
        poison_next_allocations(d, {{Shape{1}, DType::f32}, {Shape{B}, DType::f32}});
        const CrossEntropyResult got = cross_entropy_forward(logits.to(d), labels.to(d));
        check_close("cross_entropy loss", got.loss, want.loss, 1e-5, 0);
        check_close("cross_entropy lse", got.lse, want.lse, 1e-5, 0);
        poison_next_allocations(d, {{Shape{B, K}, DType::f32}});
        const Tensor dgot = cross_entropy_backward(dloss.to(d), logits.to(d), labels.to(d), got.lse);
        REQUIRE(dgot.dtype() == t);
        check_close("cross_entropy dlogits", dgot, dwant, t == DType::bf16 ? 1.0 / 128 : 1e-5, 1e-6);
      }
}

// The matrix rate the benchmarks report shares of: one small n^3 GEMM timed with events.
TEST_CASE("measure_bf16_gemm_tflops times a GEMM and gives a positive rate", "[cuda][kernels]") {
#if defined(DIFFUSE_HAVE_CUDA)
  if (!have_gpu()) return;
  const double r = cuda::measure_bf16_gemm_tflops(64);
  CHECK(std::isfinite(r));
  CHECK(r > 0);
#endif
}
