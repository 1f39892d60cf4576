// kernels/elementwise.cpp: binary ops with broadcasting, unary ops, reductions, in-place helpers and
// dropout (kernels/elementwise.h): the cpu reference loops and fast path, and the Tensor-level ops,
// which run on the tensors' device: the cpu here or the GPU's (kernels/cuda/elementwise.cu, over
// elementwise.cu's and reduce.cu's kernels). The composite ops (the binary backward, the means)
// are written once here on top of them.
//
// Glossary: n elements of the output; a, b the operands; "layout" the broadcast iteration:
// the output's dimensions with size-1 ones dropped and neighbours that broadcast the same way
// merged, each operand with an element stride per dimension (0 where it is broadcast). After
// merging, the common cases are one or two loops: same shape -> [n] (1, 1); bias (C) onto
// (B,H,W,C) -> [BHW, C] with b strides (0, 1); per-sample (B,1,1,1) onto (B,H,W,C) -> [B, HWC]
// with b strides (1, 0). The innermost stride of either operand is 0 or 1, so the inner loop is
// one of four plain loops gcc vectorises.
#include "kernels/elementwise.h"

#include <algorithm>
#include <cmath>

#include "core/check.h"
#include "core/philox.h"
#include "core/profile.h"
#include "kernels/backend.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace diffuse::kernels {

namespace {

// Below this many elements a thread team costs more than the loop (a few microseconds).
constexpr int64_t kParallelMin = 32768;

// body(begin, end) over contiguous, equal shares of [0, n): one share per thread, so a split
// is deterministic for a thread count and each thread streams one block of memory.
template <class F>
void parallel_ranges(int64_t n, F&& body) {
#ifdef _OPENMP
  if (n > kParallelMin && omp_get_max_threads() > 1) {
#pragma omp parallel
    {
      const int64_t t = omp_get_thread_num(), T = omp_get_num_threads();
      body(n * t / T, n * (t + 1) / T);
    }
    return;
  }
#endif
  body(int64_t{0}, n);
}

int num_shares([[maybe_unused]] int64_t n) {
#ifdef _OPENMP
  if (n > kParallelMin) return omp_get_max_threads();
#endif
  return 1;
}

// Calls f(float{}) or f(double{}) for x's dtype.
template <class F>
void dispatch_float(DType t, const char* what, F&& f) {
  if (t == DType::f32)
    f(float{});
  else if (t == DType::f64)
    f(double{});
  else
    DF_FAIL(what, ": dtype ", dtype_name(t), " (f32 or f64 expected)");
}

// ---- the broadcast layout -------------------------------------------------------------------
struct Layout {
  int rank = 0;
  int64_t size[kMaxDims] = {};
  int64_t sa[kMaxDims] = {}, sb[kMaxDims] = {};
};

// Element strides of `s` right-aligned into rank r; size-1 dimensions get stride 0, so they
// broadcast (and where the output is size 1 too they are dropped anyway).
void aligned_strides(const Shape& s, int r, int64_t* st) {
  const int off = r - s.rank();
  int64_t acc = 1;
  for (int i = r - 1; i >= 0; --i) {
    const int64_t d = i >= off ? s[i - off] : 1;
    st[i] = d == 1 ? 0 : acc;
    acc *= d;
  }
}

// a and b must broadcast to out (checked by the callers).
Layout make_layout(const Shape& out, const Shape& a, const Shape& b) {
  const int r = out.rank();
  int64_t sa[kMaxDims], sb[kMaxDims];
  aligned_strides(a, r, sa);
  aligned_strides(b, r, sb);
  Layout L;
  for (int i = 0; i < r; ++i) {
    const int64_t n = out[i];
    if (n == 1) continue;
    const int p = L.rank - 1;
    // Dimension i continues dimension p in memory for both operands: merge them.
    if (p >= 0 && L.sa[p] == sa[i] * n && L.sb[p] == sb[i] * n) {
      L.size[p] *= n;
      L.sa[p] = sa[i];
      L.sb[p] = sb[i];
      continue;
    }
    L.size[L.rank] = n;
    L.sa[L.rank] = sa[i];
    L.sb[L.rank] = sb[i];
    ++L.rank;
  }
  if (L.rank == 0) {  // one element
    L.rank = 1;
    L.size[0] = 1;
  }
  return L;
}

// f(out_index, a_offset, b_offset, len, sa, sb) for the runs of the innermost dimension that
// make up output elements [begin, end); sa, sb (0 or 1) are the innermost strides.
template <class F>
void for_runs(const Layout& L, int64_t begin, int64_t end, F&& f) {
  if (begin >= end) return;
  const int r = L.rank;
  const int64_t inner = L.size[r - 1], ia = L.sa[r - 1], ib = L.sb[r - 1];
  int64_t idx[kMaxDims] = {};
  int64_t o = begin / inner, j = begin % inner, oa = 0, ob = 0;
  for (int d = r - 2; d >= 0; --d) {
    idx[d] = o % L.size[d];
    o /= L.size[d];
    oa += idx[d] * L.sa[d];
    ob += idx[d] * L.sb[d];
  }
  int64_t i = begin;
  while (i < end) {
    const int64_t len = std::min(inner - j, end - i);
    f(i, oa + j * ia, ob + j * ib, len, ia, ib);
    i += len;
    j = 0;
    for (int d = r - 2; d >= 0; --d) {  // odometer over the outer dimensions
      oa += L.sa[d];
      ob += L.sb[d];
      if (++idx[d] < L.size[d]) break;
      oa -= L.sa[d] * L.size[d];
      ob -= L.sb[d] * L.size[d];
      idx[d] = 0;
    }
  }
}

bool broadcasts_to(const Shape& s, const Shape& to) {
  if (s.rank() > to.rank()) return false;
  for (int i = 1; i <= s.rank(); ++i)
    if (s[-i] != 1 && s[-i] != to[-i]) return false;
  return true;
}

// ---- binary ---------------------------------------------------------------------------------
template <class T>
T apply(BinaryOp op, T a, T b) {
  switch (op) {
    case BinaryOp::add: return a + b;
    case BinaryOp::sub: return a - b;
    case BinaryOp::mul: return a * b;
    case BinaryOp::div: return a / b;
  }
  return a;
}

// One run: the four stride cases as separate plain loops (each vectorises).
template <class T, class Op>
void run(T* o, const T* a, int64_t sa, const T* b, int64_t sb, int64_t len, Op op) {
  if (sa && sb) {
    for (int64_t k = 0; k < len; ++k) o[k] = op(a[k], b[k]);
  } else if (sa) {
    const T bv = *b;
    for (int64_t k = 0; k < len; ++k) o[k] = op(a[k], bv);
  } else if (sb) {
    const T av = *a;
    for (int64_t k = 0; k < len; ++k) o[k] = op(av, b[k]);
  } else {
    const T v = op(*a, *b);
    for (int64_t k = 0; k < len; ++k) o[k] = v;
  }
}

template <class T, class Op>
void binary_loop(const Layout& L, int64_t n, const T* a, const T* b, T* o, Op op) {
  parallel_ranges(n, [&](int64_t begin, int64_t end) {
    for_runs(L, begin, end, [&](int64_t i, int64_t oa, int64_t ob, int64_t len, int64_t sa, int64_t sb) {
      run(o + i, a + oa, sa, b + ob, sb, len, op);
    });
  });
}

template <class T>
void binary_typed(BinaryOp op, const Tensor& a, const Tensor& b, Tensor& out) {
  const Layout L = make_layout(out.shape(), a.shape(), b.shape());
  const T* pa = a.data<T>();
  const T* pb = b.data<T>();
  T* po = out.data<T>();
  const int64_t n = out.numel();
  // The op is a template argument of the loop, not a switch inside it, so each loop vectorises.
  switch (op) {
    case BinaryOp::add: binary_loop(L, n, pa, pb, po, [](T x, T y) { return x + y; }); break;
    case BinaryOp::sub: binary_loop(L, n, pa, pb, po, [](T x, T y) { return x - y; }); break;
    case BinaryOp::mul: binary_loop(L, n, pa, pb, po, [](T x, T y) { return x * y; }); break;
    case BinaryOp::div: binary_loop(L, n, pa, pb, po, [](T x, T y) { return x / y; }); break;
  }
}

void check_binary(const Tensor& a, const Tensor& b, const Tensor& out, const char* what) {
  DF_CHECK(a.defined() && b.defined() && out.defined(), what, ": undefined operand");
  DF_CHECK(a.dtype() == b.dtype() && a.dtype() == out.dtype(), what, ": dtypes differ: ", a.str(), ", ", b.str(),
           " -> ", out.str());
  DF_CHECK(out.shape() == broadcast_shape(a.shape(), b.shape()), what, ": output ", out.str(), " for ", a.str(),
           " and ", b.str());
}

// ---- sum_to ---------------------------------------------------------------------------------
// Each share of g accumulates into its own double buffer of out's size (f32 gradients summed
// over many rows keep their precision; shares make it parallel without atomics), then the
// buffers are added in a fixed order, so the result is deterministic for a thread count.
template <class T>
void sum_to_typed(const Tensor& g, Tensor& out) {
  // Iterate over g's shape: "a" is g itself, "b" is out broadcast (stride 0 where summed).
  const Layout L = make_layout(g.shape(), g.shape(), out.shape());
  const int64_t n = g.numel(), m = out.numel();
  const T* pg = g.data<T>();
  const int shares = num_shares(n);
  std::vector<double> acc(static_cast<size_t>(shares) * m, 0.0);
  auto body = [&](int share, int64_t begin, int64_t end) {
    double* s = acc.data() + static_cast<size_t>(share) * m;
    for_runs(L, begin, end, [&](int64_t, int64_t og, int64_t oo, int64_t len, int64_t, int64_t so) {
      const T* x = pg + og;
      double* y = s + oo;
      if (so) {
        for (int64_t k = 0; k < len; ++k) y[k] += static_cast<double>(x[k]);
      } else {
        // Eight independent partial sums: without -ffast-math gcc may not reassociate one
        // running sum, so the lanes are written out (a vector register's worth of doubles).
        double p[8] = {};
        int64_t k = 0;
        for (; k + 8 <= len; k += 8)
          for (int l = 0; l < 8; ++l) p[l] += static_cast<double>(x[k + l]);
        double t = ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]));
        for (; k < len; ++k) t += static_cast<double>(x[k]);
        *y += t;
      }
    });
  };
  if (shares > 1) {
#ifdef _OPENMP
#pragma omp parallel num_threads(shares)
    {
      const int64_t t = omp_get_thread_num(), T_ = omp_get_num_threads();
      body(static_cast<int>(t), n * t / T_, n * (t + 1) / T_);
    }
#endif
  } else {
    body(0, 0, n);
  }
  T* po = out.data<T>();
  for (int64_t j = 0; j < m; ++j) {
    double t = acc[j];
    for (int s = 1; s < shares; ++s) t += acc[static_cast<size_t>(s) * m + j];
    po[j] = static_cast<T>(t);
  }
}

// ---- unary ----------------------------------------------------------------------------------
template <class T> T sigmoid_of(T x) { return T(1) / (T(1) + std::exp(-x)); }

template <class T>
T unary_f(UnaryOp op, T x) {
  switch (op) {
    case UnaryOp::silu: return x * sigmoid_of(x);
    case UnaryOp::sigmoid: return sigmoid_of(x);
    // max(x,0) + log1p(exp(-|x|)): exp never overflows, and for x << 0 log1p keeps exp(x).
    case UnaryOp::softplus: return std::max(x, T(0)) + std::log1p(std::exp(-std::abs(x)));
    case UnaryOp::exp: return std::exp(x);
    case UnaryOp::log: return std::log(x);
    case UnaryOp::tanh: return std::tanh(x);
    case UnaryOp::square: return x * x;
    case UnaryOp::sqrt: return std::sqrt(x);
    case UnaryOp::neg: return -x;
  }
  return x;
}

// f'(x)
template <class T>
T unary_df(UnaryOp op, T x) {
  switch (op) {
    case UnaryOp::silu: {
      const T s = sigmoid_of(x);
      return s * (T(1) + x * (T(1) - s));
    }
    case UnaryOp::sigmoid: {
      const T s = sigmoid_of(x);
      return s * (T(1) - s);
    }
    case UnaryOp::softplus: return sigmoid_of(x);
    case UnaryOp::exp: return std::exp(x);
    case UnaryOp::log: return T(1) / x;
    case UnaryOp::tanh: {
      const T t = std::tanh(x);
      return T(1) - t * t;
    }
    case UnaryOp::square: return T(2) * x;
    case UnaryOp::sqrt: return T(0.5) / std::sqrt(x);
    case UnaryOp::neg: return T(-1);
  }
  return x;
}

template <class T, class F>
void map_loop(int64_t n, F&& f) {
#pragma omp parallel for if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) f(i);
}

// The op is fixed per loop (a lambda per case), so the switch is outside the element loop.
template <class T>
void unary_forward_typed(UnaryOp op, const T* x, T* y, int64_t n) {
  auto go = [&](auto f) { map_loop<T>(n, [&](int64_t i) { y[i] = f(x[i]); }); };
  switch (op) {
    case UnaryOp::silu: go([](T v) { return unary_f(UnaryOp::silu, v); }); break;
    case UnaryOp::sigmoid: go([](T v) { return unary_f(UnaryOp::sigmoid, v); }); break;
    case UnaryOp::softplus: go([](T v) { return unary_f(UnaryOp::softplus, v); }); break;
    case UnaryOp::exp: go([](T v) { return unary_f(UnaryOp::exp, v); }); break;
    case UnaryOp::log: go([](T v) { return unary_f(UnaryOp::log, v); }); break;
    case UnaryOp::tanh: go([](T v) { return unary_f(UnaryOp::tanh, v); }); break;
    case UnaryOp::square: go([](T v) { return v * v; }); break;
    case UnaryOp::sqrt: go([](T v) { return std::sqrt(v); }); break;
    case UnaryOp::neg: go([](T v) { return -v; }); break;
  }
}

template <class T>
void unary_backward_typed(UnaryOp op, const T* dy, const T* x, T* dx, int64_t n) {
  auto go = [&](auto f) { map_loop<T>(n, [&](int64_t i) { dx[i] = dy[i] * f(x[i]); }); };
  switch (op) {
    case UnaryOp::silu: go([](T v) { return unary_df(UnaryOp::silu, v); }); break;
    case UnaryOp::sigmoid: go([](T v) { return unary_df(UnaryOp::sigmoid, v); }); break;
    case UnaryOp::softplus: go([](T v) { return unary_df(UnaryOp::softplus, v); }); break;
    case UnaryOp::exp: go([](T v) { return std::exp(v); }); break;
    case UnaryOp::log: go([](T v) { return T(1) / v; }); break;
    case UnaryOp::tanh: go([](T v) { return unary_df(UnaryOp::tanh, v); }); break;
    case UnaryOp::square: go([](T v) { return T(2) * v; }); break;
    case UnaryOp::sqrt: go([](T v) { return T(0.5) / std::sqrt(v); }); break;
    case UnaryOp::neg: go([](T) { return T(-1); }); break;
  }
}

// ---- reductions -----------------------------------------------------------------------------
// The keepdim shape of reducing `axes` of `s`, and the count of elements summed per output.
Shape keepdim_shape(const Shape& s, const std::vector<int>& axes, int64_t* count) {
  Shape k = s;
  bool seen[kMaxDims] = {};
  int64_t c = 1;
  for (int a : axes) {
    const int d = a < 0 ? a + s.rank() : a;
    DF_CHECK(d >= 0 && d < s.rank(), "reduction axis ", a, " out of range for ", s.str());
    DF_CHECK(!seen[d], "reduction axis ", a, " repeated");
    seen[d] = true;
    c *= s[d];
    k[d] = 1;
  }
  if (count) *count = c;
  return k;
}

Shape reduced_shape(const Shape& s, const std::vector<int>& axes, bool keepdim) {
  Shape k = keepdim_shape(s, axes, nullptr);
  if (keepdim) return k;
  bool drop[kMaxDims] = {};
  for (int a : axes) drop[a < 0 ? a + s.rank() : a] = true;
  std::vector<int64_t> d;
  for (int i = 0; i < s.rank(); ++i)
    if (!drop[i]) d.push_back(s[i]);
  if (d.empty()) d.push_back(1);
  return Shape(d);
}

void check_cpu(const Tensor& x, const char* what) {
  DF_CHECK(x.defined(), what, ": undefined tensor");
  if (!x.device().is_cpu()) DF_FAIL(what, " on ", x.device().str(), " needs the CUDA backend");
}

// ---- the reference: multi-index loops in double -----------------------------------------------
// The offset into `s` (right-aligned, broadcast) of the output multi-index idx of rank r.
int64_t ref_offset(const Shape& s, const int64_t* idx, int r) {
  int64_t off = 0;
  const int shift = r - s.rank();
  for (int i = 0; i < s.rank(); ++i) off = off * s[i] + (s[i] == 1 ? 0 : idx[i + shift]);
  return off;
}

void ref_unravel(int64_t flat, const Shape& s, int64_t* idx) {
  for (int i = s.rank() - 1; i >= 0; --i) {
    idx[i] = flat % s[i];
    flat /= s[i];
  }
}

std::vector<double> as_double(const Tensor& t) {
  std::vector<double> v(static_cast<size_t>(t.numel()));
  if (t.dtype() == DType::f64)
    std::copy(t.data<double>(), t.data<double>() + t.numel(), v.begin());
  else
    std::copy(t.data<float>(), t.data<float>() + t.numel(), v.begin());
  return v;
}

void store_double(const std::vector<double>& v, Tensor& t) {
  if (t.dtype() == DType::f64)
    std::copy(v.begin(), v.end(), t.data<double>());
  else
    for (size_t i = 0; i < v.size(); ++i) t.data<float>()[i] = static_cast<float>(v[i]);
}

}  // namespace

// ---- shapes ---------------------------------------------------------------------------------
Shape broadcast_shape(const Shape& a, const Shape& b) {
  const int r = std::max(a.rank(), b.rank());
  std::vector<int64_t> d(static_cast<size_t>(r));
  for (int i = 1; i <= r; ++i) {
    const int64_t x = i <= a.rank() ? a[-i] : 1, y = i <= b.rank() ? b[-i] : 1;
    DF_CHECK(x == y || x == 1 || y == 1, "shapes ", a.str(), " and ", b.str(), " do not broadcast");
    d[static_cast<size_t>(r - i)] = x == 1 ? y : x;
  }
  return Shape(d);
}

const char* unary_name(UnaryOp op) {
  switch (op) {
    case UnaryOp::silu: return "silu";
    case UnaryOp::sigmoid: return "sigmoid";
    case UnaryOp::softplus: return "softplus";
    case UnaryOp::exp: return "exp";
    case UnaryOp::log: return "log";
    case UnaryOp::tanh: return "tanh";
    case UnaryOp::square: return "square";
    case UnaryOp::sqrt: return "sqrt";
    case UnaryOp::neg: return "neg";
  }
  return "?";
}

// ---- cpu fast path --------------------------------------------------------------------------
namespace cpu {

void binary_forward(BinaryOp op, const Tensor& a, const Tensor& b, Tensor& out) {
  check_binary(a, b, out, "binary op");
  dispatch_float(a.dtype(), "binary op", [&](auto t) { binary_typed<decltype(t)>(op, a, b, out); });
}

void sum_to(const Tensor& g, Tensor& out) {
  DF_CHECK(g.dtype() == out.dtype(), "sum_to: ", g.str(), " -> ", out.str());
  DF_CHECK(broadcasts_to(out.shape(), g.shape()), "sum_to: ", out.shape().str(), " does not broadcast to ",
           g.shape().str());
  dispatch_float(g.dtype(), "sum_to", [&](auto t) { sum_to_typed<decltype(t)>(g, out); });
}

void broadcast_to(const Tensor& x, Tensor& out) {
  DF_CHECK(x.dtype() == out.dtype(), "broadcast_to: ", x.str(), " -> ", out.str());
  DF_CHECK(broadcasts_to(x.shape(), out.shape()), "broadcast_to: ", x.shape().str(), " does not broadcast to ",
           out.shape().str());
  dispatch_float(x.dtype(), "broadcast_to", [&](auto t) {
    using T = decltype(t);
    const Layout L = make_layout(out.shape(), out.shape(), x.shape());
    binary_loop(L, out.numel(), x.data<T>(), x.data<T>(), out.data<T>(), [](T, T v) { return v; });
  });
}

void unary_forward(UnaryOp op, const Tensor& x, Tensor& y) {
  check_same_shape(x, y, unary_name(op));
  DF_CHECK(x.dtype() == y.dtype(), unary_name(op), ": ", x.str(), " -> ", y.str());
  dispatch_float(x.dtype(), unary_name(op),
                 [&](auto t) { using T = decltype(t); unary_forward_typed(op, x.data<T>(), y.data<T>(), x.numel()); });
}

void unary_backward(UnaryOp op, const Tensor& dy, const Tensor& x, Tensor& dx) {
  check_same_shape(x, dy, unary_name(op));
  check_same_shape(x, dx, unary_name(op));
  DF_CHECK(x.dtype() == dy.dtype() && x.dtype() == dx.dtype(), unary_name(op), " backward: dtypes differ");
  dispatch_float(x.dtype(), unary_name(op), [&](auto t) {
    using T = decltype(t);
    unary_backward_typed(op, dy.data<T>(), x.data<T>(), dx.data<T>(), x.numel());
  });
}

void sum(const Tensor& x, const std::vector<int>& axes, Tensor& out) {
  Shape k = keepdim_shape(x.shape(), axes, nullptr);
  DF_CHECK(out.numel() == k.numel(), "sum: output ", out.str(), " for ", x.str());
  Tensor o = out.reshape(k);
  sum_to(x, o);
}

}  // namespace cpu

// ---- reference ------------------------------------------------------------------------------
namespace ref {

void binary_forward(BinaryOp op, const Tensor& a, const Tensor& b, Tensor& out) {
  check_binary(a, b, out, "binary op");
  const std::vector<double> va = as_double(a), vb = as_double(b);
  std::vector<double> vo(static_cast<size_t>(out.numel()));
  int64_t idx[kMaxDims];
  const int r = out.dim();
  for (int64_t i = 0; i < out.numel(); ++i) {
    ref_unravel(i, out.shape(), idx);
    vo[i] = apply(op, va[ref_offset(a.shape(), idx, r)], vb[ref_offset(b.shape(), idx, r)]);
  }
  store_double(vo, out);
}

void sum_to(const Tensor& g, Tensor& out) {
  DF_CHECK(broadcasts_to(out.shape(), g.shape()), "sum_to: ", out.str(), " vs ", g.str());
  const std::vector<double> vg = as_double(g);
  std::vector<double> vo(static_cast<size_t>(out.numel()), 0.0);
  int64_t idx[kMaxDims];
  for (int64_t i = 0; i < g.numel(); ++i) {
    ref_unravel(i, g.shape(), idx);
    vo[ref_offset(out.shape(), idx, g.dim())] += vg[i];
  }
  store_double(vo, out);
}

void broadcast_to(const Tensor& x, Tensor& out) {
  DF_CHECK(broadcasts_to(x.shape(), out.shape()), "broadcast_to: ", x.str(), " vs ", out.str());
  const std::vector<double> vx = as_double(x);
  std::vector<double> vo(static_cast<size_t>(out.numel()));
  int64_t idx[kMaxDims];
  for (int64_t i = 0; i < out.numel(); ++i) {
    ref_unravel(i, out.shape(), idx);
    vo[i] = vx[ref_offset(x.shape(), idx, out.dim())];
  }
  store_double(vo, out);
}

// Textbook forms, deliberately not the fast path's: softplus as log(1 + e^x) on whichever side
// keeps e^. <= 1, tanh' as 1/cosh^2, sigmoid via tanh.
void unary_forward(UnaryOp op, const Tensor& x, Tensor& y) {
  check_same_shape(x, y, unary_name(op));
  std::vector<double> v = as_double(x);
  for (double& e : v) {
    switch (op) {
      case UnaryOp::silu: e = e * 0.5 * (1 + std::tanh(e / 2)); break;
      case UnaryOp::sigmoid: e = 0.5 * (1 + std::tanh(e / 2)); break;
      case UnaryOp::softplus: e = e > 0 ? e + std::log1p(std::exp(-e)) : std::log1p(std::exp(e)); break;
      case UnaryOp::exp: e = std::exp(e); break;
      case UnaryOp::log: e = std::log(e); break;
      case UnaryOp::tanh: e = std::tanh(e); break;
      case UnaryOp::square: e = e * e; break;
      case UnaryOp::sqrt: e = std::sqrt(e); break;
      case UnaryOp::neg: e = -e; break;
    }
  }
  store_double(v, y);
}

void unary_backward(UnaryOp op, const Tensor& dy, const Tensor& x, Tensor& dx) {
  check_same_shape(x, dy, unary_name(op));
  check_same_shape(x, dx, unary_name(op));
  const std::vector<double> vx = as_double(x), vg = as_double(dy);
  std::vector<double> v(vx.size());
  for (size_t i = 0; i < vx.size(); ++i) {
    const double e = vx[i], s = 0.5 * (1 + std::tanh(e / 2));
    double d = 0;
    switch (op) {
      case UnaryOp::silu: d = s + e * s * (1 - s); break;
      case UnaryOp::sigmoid: d = s * (1 - s); break;
      case UnaryOp::softplus: d = s; break;
      case UnaryOp::exp: d = std::exp(e); break;
      case UnaryOp::log: d = 1 / e; break;
      case UnaryOp::tanh: d = 1 / (std::cosh(e) * std::cosh(e)); break;
      case UnaryOp::square: d = 2 * e; break;
      case UnaryOp::sqrt: d = 0.5 / std::sqrt(e); break;
      case UnaryOp::neg: d = -1; break;
    }
    v[i] = vg[i] * d;
  }
  store_double(v, dx);
}

void sum(const Tensor& x, const std::vector<int>& axes, Tensor& out) {
  Shape k = keepdim_shape(x.shape(), axes, nullptr);
  DF_CHECK(out.numel() == k.numel(), "sum: output ", out.str(), " for ", x.str());
  Tensor o = out.reshape(k);
  sum_to(x, o);
}

}  // namespace ref

// ---- dispatch -------------------------------------------------------------------------------
// ---- the allocating cpu forms of the public functions (kernels/elementwise.cpp) -----------------
namespace cpu {

Tensor binary_forward(BinaryOp op, const Tensor& a, const Tensor& b) {
  check_cpu(a, "binary op");
  check_cpu(b, "binary op");
  Tensor out = Tensor::empty(broadcast_shape(a.shape(), b.shape()), a.dtype(), a.device());
  cpu::binary_forward(op, a, b, out);
  return out;
}

Tensor sum_to(const Tensor& g, const Shape& shape) {
  check_cpu(g, "sum_to");
  if (g.shape() == shape) return g;
  Tensor out = Tensor::empty(shape, g.dtype(), g.device());
  cpu::sum_to(g, out);
  return out;
}

Tensor broadcast_to(const Tensor& x, const Shape& shape) {
  check_cpu(x, "broadcast_to");
  Tensor out = Tensor::empty(shape, x.dtype(), x.device());
  cpu::broadcast_to(x, out);
  return out;
}

Tensor unary_forward(UnaryOp op, const Tensor& x) {
  check_cpu(x, unary_name(op));
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  cpu::unary_forward(op, x, y);
  return y;
}

Tensor unary_backward(UnaryOp op, const Tensor& dy, const Tensor& x) {
  check_cpu(x, unary_name(op));
  Tensor dx = Tensor::empty(x.shape(), x.dtype(), x.device());
  cpu::unary_backward(op, dy, x, dx);
  return dx;
}

Tensor add_scalar(const Tensor& x, double s) {
  check_cpu(x, "add_scalar");
  Tensor y = x.clone();
  dispatch_float(x.dtype(), "add_scalar", [&](auto t) {
    using T = decltype(t);
    T* p = y.data<T>();
    const T v = static_cast<T>(s);
    map_loop<T>(y.numel(), [&](int64_t i) { p[i] += v; });
  });
  return y;
}

Tensor mul_scalar(const Tensor& x, double s) {
  Tensor y = x.clone();
  scale_(y, s);
  return y;
}

void axpby(double a, const Tensor& x, double b, Tensor& y) {
  check_cpu(y, "axpby");
  check_same_shape(x, y, "axpby");
  DF_CHECK(x.dtype() == y.dtype(), "axpby: ", x.str(), ", ", y.str());
  dispatch_float(y.dtype(), "axpby", [&](auto t) {
    using T = decltype(t);
    const T* px = x.data<T>();
    T* py = y.data<T>();
    const T ta = static_cast<T>(a), tb = static_cast<T>(b);
    if (b == 0)  // y is only written, as BLAS's beta = 0
      map_loop<T>(y.numel(), [&](int64_t i) { py[i] = ta * px[i]; });
    else
      map_loop<T>(y.numel(), [&](int64_t i) { py[i] = ta * px[i] + tb * py[i]; });
  });
}

void add_(Tensor& y, const Tensor& x, double alpha) {
  check_cpu(y, "add_");
  check_same_shape(x, y, "add_");
  DF_CHECK(x.dtype() == y.dtype(), "add_: ", x.str(), ", ", y.str());
  dispatch_float(y.dtype(), "add_", [&](auto t) {
    using T = decltype(t);
    const T* px = x.data<T>();
    T* py = y.data<T>();
    const T ta = static_cast<T>(alpha);
    map_loop<T>(y.numel(), [&](int64_t i) { py[i] += ta * px[i]; });
  });
}

void scale_(Tensor& y, double s) {
  check_cpu(y, "scale_");
  dispatch_float(y.dtype(), "scale_", [&](auto t) {
    using T = decltype(t);
    T* p = y.data<T>();
    const T v = static_cast<T>(s);
    map_loop<T>(y.numel(), [&](int64_t i) { p[i] *= v; });
  });
}

Tensor sum(const Tensor& x, const std::vector<int>& axes, bool keepdim) {
  check_cpu(x, "sum");
  Tensor out = Tensor::empty(reduced_shape(x.shape(), axes, keepdim), x.dtype(), x.device());
  cpu::sum(x, axes, out);
  return out;
}

Tensor sum_all(const Tensor& x) {
  check_cpu(x, "sum_all");
  Tensor out = Tensor::empty({1}, x.dtype(), x.device());
  cpu::sum_to(x, out);
  return out;
}

}  // namespace cpu

int64_t reduction_count(const Shape& s, const std::vector<int>& axes) {
  int64_t count = 1;
  keepdim_shape(s, axes, &count);
  return count;
}

// ---- dropout --------------------------------------------------------------------------------
namespace {

// y[i] = keep(i) ? x[i] / (1 - p) : 0, one Philox block per 4 elements.
template <class T>
void dropout_typed(const T* x, T* y, int64_t n, float p, uint64_t seed, uint64_t offset) {
  const T scale = static_cast<T>(1.0 / (1.0 - static_cast<double>(p)));
  const int64_t blocks = (n + 3) / 4;
#pragma omp parallel for if (n > kParallelMin)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const Philox4 r = philox_block(seed, offset, static_cast<uint64_t>(blk));
    for (int w = 0; w < 4; ++w) {
      const int64_t i = 4 * blk + w;
      if (i >= n) break;
      y[i] = philox_uniform_bits(r.v[w]) >= p ? x[i] * scale : T(0);
    }
  }
}

}  // namespace

namespace cpu {

Tensor dropout(const Tensor& x, float p, uint64_t seed, uint64_t offset, const char* what) {
  check_cpu(x, what);
  DF_CHECK(p >= 0.f && p < 1.f, what, ": p = ", p, " (in [0, 1) expected)");
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  dispatch_float(x.dtype(), what, [&](auto t) {
    using T = decltype(t);
    dropout_typed(x.data<T>(), y.data<T>(), x.numel(), p, seed, offset);
  });
  return y;
}

}  // namespace cpu

}  // namespace diffuse::kernels

namespace diffuse::kernels {

namespace {

// The profile's names (core/profile.h), one per op and direction.
const char* binary_profile_name(BinaryOp op) {
  static const char* const names[] = {"add", "sub", "mul", "div"};
  return names[static_cast<int>(op)];
}

const char* unary_profile_name(UnaryOp op, bool backward) {
  static const char* const fwd[] = {"silu_forward", "sigmoid_forward", "softplus_forward", "exp_forward", "log_forward",
                                    "tanh_forward", "square_forward", "sqrt_forward", "neg_forward"};
  static const char* const bwd[] = {"silu_backward", "sigmoid_backward", "softplus_backward",
                                    "exp_backward",  "log_backward",     "tanh_backward",
                                    "square_backward", "sqrt_backward",  "neg_backward"};
  return (backward ? bwd : fwd)[static_cast<int>(op)];
}

}  // namespace

Tensor binary_forward(BinaryOp op, const Tensor& a, const Tensor& b) {
  DF_PROFILE(binary_profile_name(op));
  DF_ON_CUDA(a.device(), cuda::binary_forward(op, a, b));
  return cpu::binary_forward(op, a, b);
}

Tensor add(const Tensor& a, const Tensor& b) { return binary_forward(BinaryOp::add, a, b); }
Tensor sub(const Tensor& a, const Tensor& b) { return binary_forward(BinaryOp::sub, a, b); }
Tensor mul(const Tensor& a, const Tensor& b) { return binary_forward(BinaryOp::mul, a, b); }
Tensor div(const Tensor& a, const Tensor& b) { return binary_forward(BinaryOp::div, a, b); }

Tensor sum_to(const Tensor& g, const Shape& shape) {
  DF_PROFILE("sum_to");
  DF_ON_CUDA(g.device(), cuda::sum_to(g, shape));
  return cpu::sum_to(g, shape);
}

Tensor broadcast_to(const Tensor& x, const Shape& shape) {
  DF_PROFILE("broadcast_to");
  DF_ON_CUDA(x.device(), cuda::broadcast_to(x, shape));
  return cpu::broadcast_to(x, shape);
}

// d(a+b) = (dy, dy); d(a-b) = (dy, -dy); d(ab) = (dy b, dy a); d(a/b) = (dy / b, -dy a / b^2),
// each summed back to its operand's shape.
BinaryGrads binary_backward(BinaryOp op, const Tensor& dy, const Tensor& a, const Tensor& b, bool need_da,
                            bool need_db) {
  DF_PROFILE("binary_backward");
  // add hands dy itself on where no sum was needed; both operands of x + x would then share one
  // buffer as their gradients, which an optimizer scaling gradients in place would scale twice.
  auto own = [&](Tensor t) { return t.same_storage(dy) && need_da && need_db ? t.clone() : t; };
  DF_CHECK(dy.device() == a.device() && dy.device() == b.device(), "binary backward: ", dy.str(), " for ", a.str(),
           " and ", b.str());
  DF_CHECK(dy.shape() == broadcast_shape(a.shape(), b.shape()), "binary backward: gradient ", dy.str(), " for ",
           a.str(), " and ", b.str());
  BinaryGrads g;
  switch (op) {
    case BinaryOp::add:
      if (need_da) g.da = own(sum_to(dy, a.shape()));
      if (need_db) g.db = sum_to(dy, b.shape());
      break;
    case BinaryOp::sub:
      if (need_da) g.da = sum_to(dy, a.shape());
      if (need_db) g.db = mul_scalar(sum_to(dy, b.shape()), -1.0);
      break;
    case BinaryOp::mul:
      if (need_da) g.da = sum_to(mul(dy, b), a.shape());
      if (need_db) g.db = sum_to(mul(dy, a), b.shape());
      break;
    case BinaryOp::div: {
      Tensor q = div(dy, b);  // dy / b, out's shape
      if (need_db) g.db = sum_to(mul_scalar(div(mul(q, a), b), -1.0), b.shape());
      if (need_da) g.da = sum_to(q, a.shape());
      break;
    }
  }
  return g;
}

Tensor unary_forward(UnaryOp op, const Tensor& x) {
  DF_PROFILE(unary_profile_name(op, false));
  DF_ON_CUDA(x.device(), cuda::unary_forward(op, x));
  return cpu::unary_forward(op, x);
}

Tensor unary_backward(UnaryOp op, const Tensor& dy, const Tensor& x) {
  DF_PROFILE(unary_profile_name(op, true));
  DF_ON_CUDA(x.device(), cuda::unary_backward(op, dy, x));
  return cpu::unary_backward(op, dy, x);
}

Tensor add_scalar(const Tensor& x, double s) {
  DF_PROFILE("add_scalar");
  DF_ON_CUDA(x.device(), cuda::affine(x, 1.0, s));
  return cpu::add_scalar(x, s);
}

Tensor mul_scalar(const Tensor& x, double s) {
  DF_PROFILE("mul_scalar");
  DF_ON_CUDA(x.device(), cuda::affine(x, s, 0.0));
  return cpu::mul_scalar(x, s);
}

void axpby(double a, const Tensor& x, double b, Tensor& y) {
  DF_PROFILE("axpby");
  DF_ON_CUDA(y.device(), cuda::axpby(a, x, b, y));
  return cpu::axpby(a, x, b, y);
}

void add_(Tensor& y, const Tensor& x, double alpha) {
  DF_PROFILE("add_");
  DF_ON_CUDA(y.device(), cuda::axpby(alpha, x, 1.0, y));
  return cpu::add_(y, x, alpha);
}

void scale_(Tensor& y, double s) {
  DF_PROFILE("scale_");
  DF_ON_CUDA(y.device(), cuda::scale_(y, s));
  return cpu::scale_(y, s);
}

Tensor sum(const Tensor& x, const std::vector<int>& axes, bool keepdim) {
  DF_PROFILE("sum");
  DF_ON_CUDA(x.device(), cuda::sum(x, axes, keepdim));
  return cpu::sum(x, axes, keepdim);
}

Tensor mean(const Tensor& x, const std::vector<int>& axes, bool keepdim) {
  const double inv = 1.0 / static_cast<double>(std::max<int64_t>(reduction_count(x.shape(), axes), 1));
  // One pass on the GPU: the kernel's final write scales the sums.
  DF_ON_CUDA(x.device(), cuda::sum(x, axes, keepdim, inv));
  Tensor out = sum(x, axes, keepdim);
  scale_(out, inv);
  return out;
}

Tensor sum_all(const Tensor& x) {
  DF_PROFILE("sum_all");
  DF_ON_CUDA(x.device(), cuda::sum(x.reshape({x.numel()}), {0}, false));
  return cpu::sum_all(x);
}

Tensor mean_all(const Tensor& x) {
  const double inv = 1.0 / static_cast<double>(std::max<int64_t>(x.numel(), 1));
  DF_ON_CUDA(x.device(), cuda::sum(x.reshape({x.numel()}), {0}, false, inv));
  Tensor out = sum_all(x);
  scale_(out, inv);
  return out;
}

Tensor dropout_forward(const Tensor& x, float p, uint64_t seed, uint64_t offset) {
  DF_PROFILE("dropout_forward");
  DF_ON_CUDA(x.device(), cuda::dropout(x, p, seed, offset));
  return cpu::dropout(x, p, seed, offset, "dropout");
}

// The mask is a function of (seed, offset, i) only, so backward is the same map applied to dy.
Tensor dropout_backward(const Tensor& dy, float p, uint64_t seed, uint64_t offset) {
  DF_PROFILE("dropout_backward");
  DF_ON_CUDA(dy.device(), cuda::dropout(dy, p, seed, offset));
  return cpu::dropout(dy, p, seed, offset, "dropout backward");
}

}  // namespace diffuse::kernels
