// kernels/cuda/elementwise.cu: memory-bound elementwise kernels: binary ops with numpy
// broadcasting, unary ops forward and backward (SiLU, sigmoid, softplus, exp, log, tanh, square,
// sqrt, neg), scalar affine maps, axpby, Philox dropout and a buffer swap. Launchers declared in
// kernels/elementwise.h; the math is kernels/elementwise.h's.
//
// Each kernel reads and writes every element once, so its speed is DRAM bandwidth: 16-byte loads
// and stores (4 floats or 8 bf16) when the pointers are 16-byte aligned, in a grid-stride loop;
// the remainder (and any unaligned call, e.g. a slice) takes the one-element loop. Math is in f32
// with the full-precision expf/log1pf/tanhf (a few more instructions per element are free here).
//
// Broadcasting. The host folds the two shapes into a layout (as kernels/elementwise.cpp does):
// the output's dimensions with size-1 ones dropped and neighbours that broadcast the same way
// merged, each operand with an element stride per dimension (0 where it is broadcast). The UNet's
// cases become rank 1 (same shape, or a scalar), rank 2 (a bias (C) onto (B,H,W,C): [BHW, C], b
// strides (0, 1); per-sample (B,1,1,1): [B, HWC], b strides (1, 0)) or rank 3 (the time-embedding
// projection (B,1,1,C) onto (B,H,W,C): [B, HW, C], b strides (C, 0, 1)). A thread turns its flat
// index into the operands' offsets with one multiply-high division per dimension (FastDivmod),
// and, when the innermost dimension is a whole number of packs, does so once per 16-byte pack.
#include "kernels/cuda/portable.cuh"

#include <algorithm>

#include "core/allocator.h"
#include "core/check.h"
#include "core/graph.h"
#include "core/philox.h"
#include "core/stream.h"
#include "kernels/cuda/common.cuh"
#include "kernels/elementwise.h"

namespace diffuse::DF_BACKEND {

namespace {

using detail::FastDivmod;
using detail::Pack;
using kernels::BinaryOp;
using kernels::Dims;
using kernels::dims_of;
using kernels::UnaryOp;

// 256 threads: whole warps, and 8 resident blocks per SM for these register-light loops.
constexpr int kBlock = 256;
constexpr int kMaxRank = Dims::kMax;

// ---- per-element math ---------------------------------------------------------------------------
DF_DEVICE_INLINE float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

template <int Op>
DF_DEVICE_INLINE float unary_f(float x) {
  if constexpr (Op == static_cast<int>(UnaryOp::silu)) return x * sigmoidf(x);
  else if constexpr (Op == static_cast<int>(UnaryOp::sigmoid)) return sigmoidf(x);
  // max(x,0) + log1p(exp(-|x|)): exp never overflows, and for x << 0 log1p keeps exp(x).
  else if constexpr (Op == static_cast<int>(UnaryOp::softplus)) return fmaxf(x, 0.0f) + log1pf(expf(-fabsf(x)));
  else if constexpr (Op == static_cast<int>(UnaryOp::exp)) return expf(x);
  else if constexpr (Op == static_cast<int>(UnaryOp::log)) return logf(x);
  else if constexpr (Op == static_cast<int>(UnaryOp::tanh)) return tanhf(x);
  else if constexpr (Op == static_cast<int>(UnaryOp::square)) return x * x;
  else if constexpr (Op == static_cast<int>(UnaryOp::sqrt)) return sqrtf(x);
  else return -x;
}

// f'(x)
template <int Op>
DF_DEVICE_INLINE float unary_df(float x) {
  if constexpr (Op == static_cast<int>(UnaryOp::silu)) {
    const float s = sigmoidf(x);  // d/dx x s(x) = s + x s (1 - s) = s (1 + x (1 - s))
    return s * (1.0f + x * (1.0f - s));
  } else if constexpr (Op == static_cast<int>(UnaryOp::sigmoid)) {
    const float s = sigmoidf(x);
    return s * (1.0f - s);
  } else if constexpr (Op == static_cast<int>(UnaryOp::softplus)) {
    return sigmoidf(x);
  } else if constexpr (Op == static_cast<int>(UnaryOp::exp)) {
    return expf(x);
  } else if constexpr (Op == static_cast<int>(UnaryOp::log)) {
    return 1.0f / x;
  } else if constexpr (Op == static_cast<int>(UnaryOp::tanh)) {
    const float t = tanhf(x);
    return 1.0f - t * t;
  } else if constexpr (Op == static_cast<int>(UnaryOp::square)) {
    return 2.0f * x;
  } else if constexpr (Op == static_cast<int>(UnaryOp::sqrt)) {
    return 0.5f / sqrtf(x);
  } else {
    return -1.0f;
  }
}

// The op is uniform across the grid, so this switch is a branch every thread takes alike.
DF_DEVICE_INLINE float binary_f(int op, float a, float b) {
  switch (op) {
    case static_cast<int>(BinaryOp::add): return a + b;
    case static_cast<int>(BinaryOp::sub): return a - b;
    case static_cast<int>(BinaryOp::mul): return a * b;
    default: return a / b;
  }
}

// ---- broadcast layout ---------------------------------------------------------------------------
struct Layout {
  int rank = 1;                      // merged dimensions, outermost first
  uint32_t size[kMaxRank] = {1, 1, 1, 1, 1};
  uint32_t sa[kMaxRank] = {}, sb[kMaxRank] = {};  // element strides (0: broadcast along it)
  FastDivmod div[kMaxRank];          // by size[d]
};

// a and b are aligned on the right with the output (rank `out.rank`); a missing leading dimension
// is a broadcast one. `b` may be null (broadcast_to: one operand).
Layout make_layout(const Dims& out, const Dims& a, const Dims* b) {
  const int R = out.rank;
  int64_t size[kMaxRank], sa[kMaxRank], sb[kMaxRank];
  int64_t acc_a = 1, acc_b = 1;
  for (int d = R - 1; d >= 0; --d) {
    const int ia = d - (R - a.rank), ib = b ? d - (R - b->rank) : -1;
    const int64_t da = ia >= 0 ? a.d[ia] : 1, db = b && ib >= 0 ? b->d[ib] : 1;
    size[d] = out.d[d];
    sa[d] = da == 1 ? 0 : acc_a;
    sb[d] = db == 1 ? 0 : acc_b;
    acc_a *= da;
    acc_b *= db;
  }
  // Drop size-1 dimensions; merge an outer dimension into its inner neighbour when both operands
  // step through the pair as through one dimension (stride_outer == stride_inner * size_inner).
  int64_t ms[kMaxRank], ma[kMaxRank], mb[kMaxRank];
  int n = 0;
  for (int d = 0; d < R; ++d) {
    if (size[d] == 1) continue;
    if (n > 0 && ma[n - 1] == sa[d] * size[d] && mb[n - 1] == sb[d] * size[d]) {
      ms[n - 1] *= size[d];
      ma[n - 1] = sa[d];
      mb[n - 1] = sb[d];
    } else {
      ms[n] = size[d], ma[n] = sa[d], mb[n] = sb[d];
      ++n;
    }
  }
  Layout L;
  if (n == 0) {  // a single element
    n = 1;
    ms[0] = 1, ma[0] = 0, mb[0] = 0;
  }
  L.rank = n;
  for (int d = 0; d < n; ++d) {
    L.size[d] = static_cast<uint32_t>(ms[d]);
    L.sa[d] = static_cast<uint32_t>(ma[d]);
    L.sb[d] = static_cast<uint32_t>(mb[d]);
    L.div[d] = FastDivmod::of(L.size[d]);
  }
  return L;
}

// Offsets into a and b of the output element i (row-major over the layout).
template <int R>
DF_DEVICE_INLINE void offsets(const Layout& L, uint32_t i, uint32_t& oa, uint32_t& ob) {
  oa = 0, ob = 0;
  DF_UNROLL for (int d = R - 1; d > 0; --d) {
    const uint32_t q = L.div[d].div(i);
    const uint32_t c = i - q * L.size[d];
    oa += c * L.sa[d];
    ob += c * L.sb[d];
    i = q;
  }
  oa += i * L.sa[0];
  ob += i * L.sb[0];
}

template <class T>
DF_DEVICE_INLINE Pack<T> splat(T v) {
  Pack<T> p;
  for (int k = 0; k < Pack<T>::n; ++k) p.v[k] = v;
  return p;
}

// Each thread handles units of V elements: V = 1, or one 16-byte pack (then the innermost layout
// dimension is a multiple of V, its strides are 0 or 1, and every pointer is 16-byte aligned, so
// a pack never straddles a row and every pack load is aligned).
template <class T, int R, int V>
__global__ void __launch_bounds__(kBlock) binary_forward_kernel(const T* __restrict__ a, const T* __restrict__ b,
                                                                T* __restrict__ out, Layout L, uint32_t units,
                                                                int op) {
  const uint32_t stride = gridDim.x * blockDim.x;
  for (uint32_t u = blockIdx.x * blockDim.x + threadIdx.x; u < units; u += stride) {
    const uint32_t i = u * V;
    uint32_t oa, ob;
    offsets<R>(L, i, oa, ob);
    if constexpr (V == 1) {
      out[i] = detail::from_f32<T>(binary_f(op, detail::to_f32(a[oa]), detail::to_f32(b[ob])));
    } else {
      const Pack<T> av = L.sa[R - 1] ? detail::load_pack(a + oa) : splat(a[oa]);
      const Pack<T> bv = L.sb[R - 1] ? detail::load_pack(b + ob) : splat(b[ob]);
      Pack<T> o;
      for (int k = 0; k < V; ++k)
        o.v[k] = detail::from_f32<T>(binary_f(op, detail::to_f32(av.v[k]), detail::to_f32(bv.v[k])));
      detail::store_pack(out + i, o);
    }
  }
}

template <class T, int R, int V>
__global__ void __launch_bounds__(kBlock) broadcast_kernel(const T* __restrict__ x, T* __restrict__ out, Layout L,
                                                           uint32_t units) {
  const uint32_t stride = gridDim.x * blockDim.x;
  for (uint32_t u = blockIdx.x * blockDim.x + threadIdx.x; u < units; u += stride) {
    const uint32_t i = u * V;
    uint32_t ox, unused;
    offsets<R>(L, i, ox, unused);
    if constexpr (V == 1) {
      out[i] = x[ox];
    } else {
      detail::store_pack(out + i, L.sa[R - 1] ? detail::load_pack(x + ox) : splat(x[ox]));
    }
  }
}

// ---- plain maps over n elements -------------------------------------------------------------------
// The first element of the one-element loop is np * V, after the np whole packs (none when the
// pointers are not all aligned).
template <class T>
DF_DEVICE_INLINE int64_t packs_of(int64_t n, bool vec) {
  return vec ? n / Pack<T>::n : 0;
}

template <class T, int Op>
__global__ void __launch_bounds__(kBlock) unary_forward_kernel(const T* x, T* y, int64_t n, bool vec) {
  constexpr int V = Pack<T>::n;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t np = packs_of<T>(n, vec);
  for (int64_t c = tid; c < np; c += stride) {
    Pack<T> v = detail::load_pack(x + c * V);
    for (int k = 0; k < V; ++k) v.v[k] = detail::from_f32<T>(unary_f<Op>(detail::to_f32(v.v[k])));
    detail::store_pack(y + c * V, v);
  }
  for (int64_t i = np * V + tid; i < n; i += stride) y[i] = detail::from_f32<T>(unary_f<Op>(detail::to_f32(x[i])));
}

template <class T, int Op>
__global__ void __launch_bounds__(kBlock) unary_backward_kernel(const T* __restrict__ x, const T* __restrict__ dy,
                                                                T* __restrict__ dx, int64_t n, bool accumulate,
                                                                bool vec) {
  constexpr int V = Pack<T>::n;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t np = packs_of<T>(n, vec);
  for (int64_t c = tid; c < np; c += stride) {
    const Pack<T> xv = detail::load_pack(x + c * V), gv = detail::load_pack(dy + c * V);
    Pack<T> out{};
    if (accumulate) out = detail::load_pack(dx + c * V);
    for (int k = 0; k < V; ++k) {
      float g = detail::to_f32(gv.v[k]) * unary_df<Op>(detail::to_f32(xv.v[k]));
      if (accumulate) g += detail::to_f32(out.v[k]);
      out.v[k] = detail::from_f32<T>(g);
    }
    detail::store_pack(dx + c * V, out);
  }
  for (int64_t i = np * V + tid; i < n; i += stride) {
    float g = detail::to_f32(dy[i]) * unary_df<Op>(detail::to_f32(x[i]));
    if (accumulate) g += detail::to_f32(dx[i]);
    dx[i] = detail::from_f32<T>(g);
  }
}

// y = a x + b y (or a x + b when `scalar_b`: the affine map of add_scalar / mul_scalar). With
// read_y false, y is only written, so it may hold garbage (or NaN poison), as BLAS's beta = 0.
template <class T>
__global__ void __launch_bounds__(kBlock) axpby_kernel(float a, const T* x, float b, T* y, int64_t n, bool read_y,
                                                       bool vec) {
  constexpr int V = Pack<T>::n;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t np = packs_of<T>(n, vec);
  for (int64_t c = tid; c < np; c += stride) {
    const Pack<T> xv = detail::load_pack(x + c * V);
    Pack<T> yv{};
    if (read_y) yv = detail::load_pack(y + c * V);
    for (int k = 0; k < V; ++k) {
      const float ax = a * detail::to_f32(xv.v[k]);
      yv.v[k] = detail::from_f32<T>(read_y ? ax + b * detail::to_f32(yv.v[k]) : ax + b);
    }
    detail::store_pack(y + c * V, yv);
  }
  for (int64_t i = np * V + tid; i < n; i += stride) {
    const float ax = a * detail::to_f32(x[i]);
    y[i] = detail::from_f32<T>(read_y ? ax + b * detail::to_f32(y[i]) : ax + b);
  }
}

// One Philox block (four uniforms) per four consecutive elements: the cpu's layout of the stream,
// so the mask is the same on every device.
template <class T>
__global__ void __launch_bounds__(kBlock) dropout_kernel(const T* x, T* y, int64_t n, float p, float scale,
                                                         uint64_t seed, uint64_t offset,
                                                         const uint64_t* __restrict__ seed_xor) {
  const uint64_t key = seed_xor ? seed ^ *seed_xor : seed;
  const int64_t blocks = (n + 3) / 4;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < blocks; k += stride) {
    const Philox4 r = philox_block(key, offset, static_cast<uint64_t>(k));
    for (int w = 0; w < 4; ++w) {
      const int64_t i = 4 * k + w;
      if (i < n) y[i] = detail::from_f32<T>(philox_uniform_bits(r.v[w]) >= p ? detail::to_f32(x[i]) * scale : 0.0f);
    }
  }
}

__global__ void __launch_bounds__(kBlock) swap_kernel(float* __restrict__ a, float* __restrict__ b, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float t = a[i];
    a[i] = b[i];
    b[i] = t;
  }
}

// ---- host side ----------------------------------------------------------------------------------
void check_dtype_arg(const char* op, DType dtype) {
  DF_CHECK(dtype == DType::f32 || dtype == DType::bf16, op, ": dtype ", dtype_name(dtype), " (expected f32 or bf16)");
}

template <class T>
unsigned grid_of(int64_t n) {
  return detail::grid_for((n + Pack<T>::n - 1) / Pack<T>::n, kBlock);
}

Dims broadcast_dims(const Dims& a, const Dims& b, const char* op) {
  Dims out;
  out.rank = a.rank > b.rank ? a.rank : b.rank;
  for (int d = 0; d < out.rank; ++d) {
    const int ia = d - (out.rank - a.rank), ib = d - (out.rank - b.rank);
    const int64_t da = ia >= 0 ? a.d[ia] : 1, db = ib >= 0 ? b.d[ib] : 1;
    DF_CHECK(da == db || da == 1 || db == 1, op, ": dimension ", d, " of the broadcast is ", da, " vs ", db);
    out.d[d] = da == 1 ? db : da;
  }
  return out;
}

// Whether the pack path applies: innermost dimension a whole number of packs, operands stepping
// through it with stride 0 or 1, every pointer aligned.
bool packable(const Layout& L, int V, std::initializer_list<const void*> ptrs) {
  if (L.size[L.rank - 1] % V != 0 || L.sa[L.rank - 1] > 1 || L.sb[L.rank - 1] > 1) return false;
  for (const void* p : ptrs)
    if (!detail::aligned16(p)) return false;
  return true;
}

template <class T, int R>
void binary_launch(const Layout& L, const T* a, const T* b, T* out, uint32_t n, int op, void* stream) {
  constexpr int V = Pack<T>::n;
  if (packable(L, V, {a, b, out})) {
    DF_LAUNCH((binary_forward_kernel<T, R, V>), dim3(detail::grid_for(n / V, kBlock)), dim3(kBlock), 0, stream, a, b,
              out, L, n / V, op);
  } else {
    DF_LAUNCH((binary_forward_kernel<T, R, 1>), dim3(detail::grid_for(n, kBlock)), dim3(kBlock), 0, stream, a, b, out,
              L, n, op);
  }
}

template <class T>
void binary_typed(const Layout& L, const void* a, const void* b, void* out, uint32_t n, int op, void* stream) {
  const T* pa = static_cast<const T*>(a);
  const T* pb = static_cast<const T*>(b);
  T* po = static_cast<T*>(out);
  switch (L.rank) {
    case 1: return binary_launch<T, 1>(L, pa, pb, po, n, op, stream);
    case 2: return binary_launch<T, 2>(L, pa, pb, po, n, op, stream);
    case 3: return binary_launch<T, 3>(L, pa, pb, po, n, op, stream);
    case 4: return binary_launch<T, 4>(L, pa, pb, po, n, op, stream);
    default: return binary_launch<T, 5>(L, pa, pb, po, n, op, stream);
  }
}

template <class T, int R>
void broadcast_launch(const Layout& L, const T* x, T* out, uint32_t n, void* stream) {
  constexpr int V = Pack<T>::n;
  if (packable(L, V, {x, out})) {
    DF_LAUNCH((broadcast_kernel<T, R, V>), dim3(detail::grid_for(n / V, kBlock)), dim3(kBlock), 0, stream, x, out, L,
              n / V);
  } else {
    DF_LAUNCH((broadcast_kernel<T, R, 1>), dim3(detail::grid_for(n, kBlock)), dim3(kBlock), 0, stream, x, out, L, n);
  }
}

template <class T>
void broadcast_typed(const Layout& L, const void* x, void* out, uint32_t n, void* stream) {
  const T* px = static_cast<const T*>(x);
  T* po = static_cast<T*>(out);
  switch (L.rank) {
    case 1: return broadcast_launch<T, 1>(L, px, po, n, stream);
    case 2: return broadcast_launch<T, 2>(L, px, po, n, stream);
    case 3: return broadcast_launch<T, 3>(L, px, po, n, stream);
    case 4: return broadcast_launch<T, 4>(L, px, po, n, stream);
    default: return broadcast_launch<T, 5>(L, px, po, n, stream);
  }
}

template <class T, int Op>
void unary_launch(bool forward, const void* x, const void* dy, void* out, int64_t n, bool accumulate, void* stream) {
  const T* px = static_cast<const T*>(x);
  T* po = static_cast<T*>(out);
  if (forward) {
    const bool vec = detail::aligned16(x) && detail::aligned16(out);
    DF_LAUNCH((unary_forward_kernel<T, Op>), dim3(grid_of<T>(n)), dim3(kBlock), 0, stream, px, po, n, vec);
  } else {
    const bool vec = detail::aligned16(x) && detail::aligned16(dy) && detail::aligned16(out);
    DF_LAUNCH((unary_backward_kernel<T, Op>), dim3(grid_of<T>(n)), dim3(kBlock), 0, stream, px,
              static_cast<const T*>(dy), po, n, accumulate, vec);
  }
}

template <class T>
void unary_typed(UnaryOp op, bool forward, const void* x, const void* dy, void* out, int64_t n, bool accumulate,
                 void* stream) {
  switch (op) {
#define DF_UNARY_CASE(name)                                                                                          \
  case UnaryOp::name:                                                                                                \
    return unary_launch<T, static_cast<int>(UnaryOp::name)>(forward, x, dy, out, n, accumulate, stream);
    DF_UNARY_CASE(silu)
    DF_UNARY_CASE(sigmoid)
    DF_UNARY_CASE(softplus)
    DF_UNARY_CASE(exp)
    DF_UNARY_CASE(log)
    DF_UNARY_CASE(tanh)
    DF_UNARY_CASE(square)
    DF_UNARY_CASE(sqrt)
    DF_UNARY_CASE(neg)
#undef DF_UNARY_CASE
  }
  DF_FAIL("unary op ", static_cast<int>(op), " unknown");
}

void unary_any(UnaryOp op, bool forward, const void* x, const void* dy, void* out, DType dtype, int64_t n,
               bool accumulate, void* stream) {
  const char* what = forward ? "unary_forward" : "unary_backward";
  check_dtype_arg(what, dtype);
  DF_CHECK(n >= 0, what, ": negative size ", n);
  if (n == 0) return;
  DF_CHECK(x && out && (forward || dy), what, ": null pointer");
  if (dtype == DType::f32) return unary_typed<float>(op, forward, x, dy, out, n, accumulate, stream);
  return unary_typed<__nv_bfloat16>(op, forward, x, dy, out, n, accumulate, stream);
}

template <class T>
void axpby_typed(float a, const void* x, float b, void* y, int64_t n, bool read_y, void* stream) {
  const bool vec = detail::aligned16(x) && detail::aligned16(y);
  DF_LAUNCH(axpby_kernel<T>, dim3(grid_of<T>(n)), dim3(kBlock), 0, stream, a, static_cast<const T*>(x), b,
            static_cast<T*>(y), n, read_y, vec);
}

}  // namespace

void binary_forward(BinaryOp op, const void* a, const Dims& a_dims, const void* b, const Dims& b_dims, void* out,
                    DType dtype, void* stream) {
  check_dtype_arg("binary_forward", dtype);
  const Dims o = broadcast_dims(a_dims, b_dims, "binary_forward");
  const int64_t n = o.numel();
  if (n == 0) return;
  DF_CHECK(n < (int64_t{1} << 31), "binary_forward: ", n, " elements (at most 2^31 - 1: 32-bit indexing)");
  DF_CHECK(a && b && out, "binary_forward: null pointer");
  const Layout L = make_layout(o, a_dims, &b_dims);
  if (dtype == DType::f32)
    return binary_typed<float>(L, a, b, out, static_cast<uint32_t>(n), static_cast<int>(op), stream);
  return binary_typed<__nv_bfloat16>(L, a, b, out, static_cast<uint32_t>(n), static_cast<int>(op), stream);
}

void broadcast_to(const void* x, const Dims& x_dims, void* out, const Dims& out_dims, DType dtype, void* stream) {
  check_dtype_arg("broadcast_to", dtype);
  const Dims o = broadcast_dims(x_dims, out_dims, "broadcast_to");
  for (int d = 0; d < o.rank; ++d)
    DF_CHECK(o.rank == out_dims.rank && o.d[d] == out_dims.d[d], "broadcast_to: the shape does not broadcast to the ",
             "output's");
  const int64_t n = o.numel();
  if (n == 0) return;
  DF_CHECK(n < (int64_t{1} << 31), "broadcast_to: ", n, " elements (at most 2^31 - 1: 32-bit indexing)");
  DF_CHECK(x && out, "broadcast_to: null pointer");
  const Layout L = make_layout(o, x_dims, nullptr);
  if (dtype == DType::f32) return broadcast_typed<float>(L, x, out, static_cast<uint32_t>(n), stream);
  return broadcast_typed<__nv_bfloat16>(L, x, out, static_cast<uint32_t>(n), stream);
}

void unary_forward(UnaryOp op, const void* x, void* y, DType dtype, int64_t n, void* stream) {
  unary_any(op, true, x, nullptr, y, dtype, n, false, stream);
}

void unary_backward(UnaryOp op, const void* x, const void* dy, void* dx, DType dtype, int64_t n, bool accumulate,
                    void* stream) {
  unary_any(op, false, x, dy, dx, dtype, n, accumulate, stream);
}

void silu_forward(const void* x, void* y, DType dtype, int64_t n, void* stream) {
  unary_any(UnaryOp::silu, true, x, nullptr, y, dtype, n, false, stream);
}

void silu_backward(const void* x, const void* dy, void* dx, DType dtype, int64_t n, bool accumulate, void* stream) {
  unary_any(UnaryOp::silu, false, x, dy, dx, dtype, n, accumulate, stream);
}

void affine(const void* x, void* y, float a, float b, DType dtype, int64_t n, void* stream) {
  check_dtype_arg("affine", dtype);
  DF_CHECK(n >= 0, "affine: negative size ", n);
  if (n == 0) return;
  DF_CHECK(x && y, "affine: null pointer");
  if (dtype == DType::f32) return axpby_typed<float>(a, x, b, y, n, false, stream);
  return axpby_typed<__nv_bfloat16>(a, x, b, y, n, false, stream);
}

void axpby(float a, const void* x, float b, void* y, DType dtype, int64_t n, void* stream) {
  check_dtype_arg("axpby", dtype);
  DF_CHECK(n >= 0, "axpby: negative size ", n);
  if (n == 0) return;
  DF_CHECK(x && y, "axpby: null pointer");
  // b == 0: y is not read, and the + b of the affine map adds 0.
  if (dtype == DType::f32) return axpby_typed<float>(a, x, b, y, n, b != 0.0f, stream);
  return axpby_typed<__nv_bfloat16>(a, x, b, y, n, b != 0.0f, stream);
}

void dropout(const void* x, void* y, DType dtype, int64_t n, float p, uint64_t seed, uint64_t offset,
             const uint64_t* seed_xor, void* stream) {
  check_dtype_arg("dropout", dtype);
  DF_CHECK(n >= 0, "dropout: negative size ", n);
  DF_CHECK(p >= 0.f && p < 1.f, "dropout: p = ", p, " (in [0, 1) expected)");
  if (n == 0) return;
  DF_CHECK(x && y, "dropout: null pointer");
  // The cpu's scale: 1 / (1 - p) in double, rounded to float once.
  const float scale = static_cast<float>(1.0 / (1.0 - static_cast<double>(p)));
  const unsigned grid = detail::grid_for((n + 3) / 4, kBlock);
  if (dtype == DType::f32)
    DF_LAUNCH(dropout_kernel<float>, dim3(grid), dim3(kBlock), 0, stream, static_cast<const float*>(x),
              static_cast<float*>(y), n, p, scale, seed, offset, seed_xor);
  else
    DF_LAUNCH(dropout_kernel<__nv_bfloat16>, dim3(grid), dim3(kBlock), 0, stream,
              static_cast<const __nv_bfloat16*>(x), static_cast<__nv_bfloat16*>(y), n, p, scale, seed, offset,
              seed_xor);
}

void swap(float* a, float* b, int64_t n, void* stream) {
  DF_CHECK(n >= 0, "swap: negative size ", n);
  if (n == 0) return;
  DF_CHECK(a && b, "swap: null pointer");
  DF_LAUNCH(swap_kernel, dim3(detail::grid_for(n, kBlock)), dim3(kBlock), 0, stream, a, b, n);
}

}  // namespace diffuse::DF_BACKEND

// ---- The Tensor-level op on a GPU -----------------------------------------------------------------
// the Tensor-level elementwise ops and reductions on a GPU
// (kernels/elementwise.h), over the launchers of kernels/cuda/elementwise.cu and reduce.cu.
// Each function checks what the launcher cannot (devices, dtypes, shapes), allocates its output
// from the caching allocator and launches on the current stream; nothing waits for the device.
#if DF_DEVICE_BUILD

namespace diffuse::cuda {

using kernels::BinaryOp;
using kernels::broadcast_shape;
using kernels::Dims;
using kernels::dims_of;
using kernels::ReduceOp;
using kernels::UnaryOp;
using kernels::unary_name;

namespace {

// The activation dtypes of the GPU path; everything else is a caller's mistake worth a message.
void check_float(const Tensor& t, const char* what) {
  DF_CHECK(t.defined(), what, ": undefined tensor");
  DF_CHECK(t.dtype() == DType::f32 || t.dtype() == DType::bf16, what, " on ", t.device().str(), ": ", t.str(),
           " (f32 or bf16 expected)");
}

void check_pair(const Tensor& a, const Tensor& b, const char* what) {
  check_float(a, what);
  check_float(b, what);
  check_device(b, a.device(), what);
  DF_CHECK(a.dtype() == b.dtype(), what, ": dtypes differ: ", a.str(), " and ", b.str(),
           " (cast one first; autograd does under mixed precision)");
}

// Scratch for one launch from the caching allocator: freed (returned to the cache) when the
// caller's scope ends, which the stream orders after the launch that used it.
Tensor workspace(size_t bytes, Device d) {
  return Tensor::empty({static_cast<int64_t>(std::max<size_t>(bytes, 1))}, DType::u8, d);
}

// Sum over a bitmask of axes of x into out (f32 or bf16), times scale.
void reduce_into(const Tensor& x, unsigned mask, double scale, Tensor& out) {
  const Dims d = dims_of(x.shape());
  Tensor ws = workspace(cuda::reduce_sum_workspace_bytes(d, mask), x.device());
  cuda::reduce_sum(x.numel() ? x.raw() : nullptr, x.dtype(), d, mask, static_cast<float>(scale), out.raw(),
                   out.dtype(), ws.raw(), current_stream());
}

}  // namespace

Tensor binary_forward(BinaryOp op, const Tensor& a, const Tensor& b) {
  check_pair(a, b, "binary op");
  set_current_device(a.device());
  Tensor out = Tensor::empty(broadcast_shape(a.shape(), b.shape()), a.dtype(), a.device());
  cuda::binary_forward(op, a.raw(), dims_of(a.shape()), b.raw(), dims_of(b.shape()), out.raw(), a.dtype(),
                       current_stream());
  return out;
}

// The axes of g along which `shape` (right-aligned) was broadcast: the leading dims `shape` lacks
// and those where it has size 1 and g does not.
Tensor sum_to(const Tensor& g, const Shape& shape) {
  check_float(g, "sum_to");
  if (g.shape() == shape) return g;
  DF_CHECK(broadcast_shape(shape, g.shape()) == g.shape(), "sum_to: ", shape.str(), " does not broadcast to ",
           g.shape().str());
  set_current_device(g.device());
  unsigned mask = 0;
  const int lead = g.dim() - shape.rank();
  for (int d = 0; d < g.dim(); ++d)
    if (d < lead || (shape[d - lead] == 1 && g.size(d) != 1)) mask |= 1u << d;
  Tensor out = Tensor::empty(shape, g.dtype(), g.device());
  reduce_into(g, mask, 1.0, out);
  return out;
}

Tensor broadcast_to(const Tensor& x, const Shape& shape) {
  check_float(x, "broadcast_to");
  set_current_device(x.device());
  Tensor out = Tensor::empty(shape, x.dtype(), x.device());
  cuda::broadcast_to(x.raw(), dims_of(x.shape()), out.raw(), dims_of(shape), x.dtype(), current_stream());
  return out;
}

Tensor unary_forward(UnaryOp op, const Tensor& x) {
  check_float(x, unary_name(op));
  set_current_device(x.device());
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  cuda::unary_forward(op, x.raw(), y.raw(), x.dtype(), x.numel(), current_stream());
  return y;
}

Tensor unary_backward(UnaryOp op, const Tensor& dy, const Tensor& x) {
  check_pair(x, dy, unary_name(op));
  check_same_shape(dy, x, unary_name(op));
  set_current_device(x.device());
  Tensor dx = Tensor::empty(x.shape(), x.dtype(), x.device());
  cuda::unary_backward(op, x.raw(), dy.raw(), dx.raw(), x.dtype(), x.numel(), false, current_stream());
  return dx;
}

Tensor affine(const Tensor& x, double a, double b) {
  check_float(x, "affine");
  set_current_device(x.device());
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  cuda::affine(x.raw(), y.raw(), static_cast<float>(a), static_cast<float>(b), x.dtype(), x.numel(), current_stream());
  return y;
}

void axpby(double a, const Tensor& x, double b, Tensor& y) {
  check_pair(y, x, "axpby");
  check_same_shape(x, y, "axpby");
  set_current_device(y.device());
  cuda::axpby(static_cast<float>(a), x.raw(), static_cast<float>(b), y.raw(), y.dtype(), y.numel(), current_stream());
}

void scale_(Tensor& y, double s) {
  check_float(y, "scale_");
  set_current_device(y.device());
  cuda::affine(y.raw(), y.raw(), static_cast<float>(s), 0.f, y.dtype(), y.numel(), current_stream());
}

Tensor sum(const Tensor& x, const std::vector<int>& axes, bool keepdim, double scale) {
  check_float(x, "sum");
  set_current_device(x.device());
  unsigned mask = 0;
  for (int a : axes) {
    const int d = a < 0 ? a + x.dim() : a;
    DF_CHECK(d >= 0 && d < x.dim(), "sum: axis ", a, " out of range for ", x.str());
    DF_CHECK(!((mask >> d) & 1u), "sum: axis ", a, " given twice");
    mask |= 1u << d;
  }
  std::vector<int64_t> dims;
  for (int d = 0; d < x.dim(); ++d) {
    if (!((mask >> d) & 1u)) dims.push_back(x.size(d));
    else if (keepdim) dims.push_back(1);
  }
  if (dims.empty()) dims.push_back(1);  // a Tensor has no rank-0 form
  Tensor out = Tensor::empty(Shape(dims), x.dtype(), x.device());
  reduce_into(x, mask, scale, out);
  return out;
}

Tensor dropout(const Tensor& x, float p, uint64_t seed, uint64_t offset) {
  check_float(x, "dropout");
  set_current_device(x.device());
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  cuda::dropout(x.raw(), y.raw(), x.dtype(), x.numel(), p, seed, offset, philox_seed_xor(), current_stream());
  return y;
}

}  // namespace diffuse::cuda

#endif  // DF_DEVICE_BUILD
