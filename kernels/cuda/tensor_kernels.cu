// kernels/cuda/tensor_kernels.cu: the device kernels behind Tensor::fill_, Tensor::to(DType) and
// Tensor::normal_/uniform_ (declared in core/tensor_cuda.h). Compiled by nvcc into libdiffuse
// (namespace diffuse::cuda) and by the host compiler into diffuse_emu (namespace diffuse::emu).
//
// Every result here must equal what the CPU path in core/tensor.cpp produces, bit for bit, so a
// tensor means the same thing on every device:
//   - fill converts the value on the host, with the same conversion the CPU path uses, and the
//     kernel only replicates a bit pattern;
//   - cast follows core/tensor.cpp's route (16-bit floats widen to float; integers and f64 go
//     through double; 16-bit results round to nearest even from float), with float -> integer
//     defined everywhere: truncation, saturating at the range, NaN to 0 (the CPU's static_cast is
//     undefined out of range, so only in-range values are compared);
//   - the Philox fill draws the counter-based stream of core/philox.h, and forms mean + std * z
//     with explicitly rounded operations, which nvcc never contracts into an FMA (the host build
//     is compiled with -ffp-contract=off).
#include "kernels/cuda/portable.cuh"

#include <cstdint>
#include <cstring>

#include "core/philox.h"
#include "core/tensor_cuda.h"

namespace diffuse::DF_BACKEND {

namespace {

// 256 threads: a multiple of the warp size that keeps 8 blocks resident per SM for these
// register-light kernels. Grids are capped and the kernels loop grid-stride: 4096 blocks of 256
// threads are several waves on any current GPU, enough to hide latency without launching
// millions of short-lived blocks for a large tensor.
constexpr int kBlock = 256;
constexpr int64_t kMaxGrid = 4096;

inline unsigned grid_for(int64_t work_items) {
  int64_t g = (work_items + kBlock - 1) / kBlock;
  if (g < 1) g = 1;
  return static_cast<unsigned>(g < kMaxGrid ? g : kMaxGrid);
}

// ---- fill -----------------------------------------------------------------------------------
// The element is an unsigned integer of the dtype's size holding the value's bits. The aligned
// middle of the range is written 16 bytes per store; the unaligned head and the tail one element
// at a time (a slice of a tensor may start anywhere a whole element can).
template <class U>
__global__ void __launch_bounds__(kBlock) tensor_fill_kernel(U* __restrict__ p, int64_t n, U v) {
  constexpr int64_t kVec = 16 / sizeof(U);
  const uintptr_t addr = reinterpret_cast<uintptr_t>(p);
  int64_t head = static_cast<int64_t>(((16 - addr % 16) % 16) / sizeof(U));
  if (head > n) head = n;
  const int64_t nvec = (n - head) / kVec;
  const int64_t tail_begin = head + nvec * kVec;
  uint4 pattern;
  {
    U lanes[kVec];
    for (int64_t k = 0; k < kVec; ++k) lanes[k] = v;
    memcpy(&pattern, lanes, 16);
  }
  uint4* body = reinterpret_cast<uint4*>(p + head);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t i = tid; i < nvec; i += stride) body[i] = pattern;
  // Head (< kVec elements) and tail (< kVec elements): one element per thread of the first block.
  if (tid < head) p[tid] = v;
  if (tid < n - tail_begin) p[tail_begin + tid] = v;
}

template <class U>
void fill_bits(void* p, int64_t n, U bits, void* stream) {
  constexpr int64_t kVec = 16 / sizeof(U);
  DF_LAUNCH(tensor_fill_kernel<U>, dim3(grid_for(n / kVec)), dim3(kBlock), 0, stream, static_cast<U*>(p), n, bits);
}

template <class U, class T>
U bits_of(T value) {
  static_assert(sizeof(U) == sizeof(T));
  U u;
  std::memcpy(&u, &value, sizeof(U));
  return u;
}

// ---- cast -----------------------------------------------------------------------------------
// The device type of each dtype: 16-bit floats as CUDA's types (their conversions are single
// instructions on sm_80+, and the emulator rounds them identically).
template <DType> struct DevType;
template <> struct DevType<DType::f32> { using type = float; };
template <> struct DevType<DType::bf16> { using type = __nv_bfloat16; };
template <> struct DevType<DType::f16> { using type = __half; };
template <> struct DevType<DType::i32> { using type = int32_t; };
template <> struct DevType<DType::i64> { using type = int64_t; };
template <> struct DevType<DType::u8> { using type = uint8_t; };
template <> struct DevType<DType::f64> { using type = double; };

// Step 1, widen: floats of 32 bits or fewer to float (exact), the rest to double (exact for
// f64, i32 and u8; for i64 it is core/tensor.cpp's rounding).
DF_DEVICE_INLINE float widen(float v) { return v; }
DF_DEVICE_INLINE float widen(__nv_bfloat16 v) { return __bfloat162float(v); }
DF_DEVICE_INLINE float widen(__half v) { return __half2float(v); }
DF_DEVICE_INLINE double widen(double v) { return v; }
DF_DEVICE_INLINE double widen(int32_t v) { return static_cast<double>(v); }
DF_DEVICE_INLINE double widen(int64_t v) { return static_cast<double>(v); }
DF_DEVICE_INLINE double widen(uint8_t v) { return static_cast<double>(v); }

// Float to integer: truncate, saturate, NaN to 0 (what cvt.rzi.sat does on the GPU), written out
// so the host build has no undefined behaviour either.
template <class I>
DF_DEVICE_INLINE I saturate_trunc(double d) {
  constexpr double lo = static_cast<double>(std::numeric_limits<I>::min());
  constexpr double hi = static_cast<double>(std::numeric_limits<I>::max());
  if (!(d == d)) return I(0);
  if (d <= lo) return std::numeric_limits<I>::min();
  if (d >= hi) return std::numeric_limits<I>::max();
  return static_cast<I>(d);
}

// Step 2, narrow from the widened value. 16-bit floats always round from float, so an f64 or i64
// source rounds twice, exactly as core/tensor.cpp's static_cast<float> then float_to_bf16 does.
template <class D> struct Narrow;
template <> struct Narrow<float> {
  static DF_DEVICE_INLINE float from(float v) { return v; }
  static DF_DEVICE_INLINE float from(double v) { return static_cast<float>(v); }
};
template <> struct Narrow<__nv_bfloat16> {
  static DF_DEVICE_INLINE __nv_bfloat16 from(float v) { return __float2bfloat16_rn(v); }
  static DF_DEVICE_INLINE __nv_bfloat16 from(double v) { return __float2bfloat16_rn(static_cast<float>(v)); }
};
template <> struct Narrow<__half> {
  static DF_DEVICE_INLINE __half from(float v) { return __float2half_rn(v); }
  static DF_DEVICE_INLINE __half from(double v) { return __float2half_rn(static_cast<float>(v)); }
};
template <> struct Narrow<double> {
  static DF_DEVICE_INLINE double from(float v) { return static_cast<double>(v); }
  static DF_DEVICE_INLINE double from(double v) { return v; }
};
template <class I> struct NarrowInt {
  static DF_DEVICE_INLINE I from(float v) { return saturate_trunc<I>(static_cast<double>(v)); }
  static DF_DEVICE_INLINE I from(double v) { return saturate_trunc<I>(v); }
};
template <> struct Narrow<int32_t> : NarrowInt<int32_t> {};
template <> struct Narrow<int64_t> : NarrowInt<int64_t> {};
template <> struct Narrow<uint8_t> : NarrowInt<uint8_t> {};

// One element per thread per iteration: consecutive threads touch consecutive elements, so every
// load and store of a warp is coalesced whatever the element size. A cast is not on any hot path
// (the bf16 copy of the weights is written by the AdamW kernel), so no vector variant.
template <class S, class D>
__global__ void __launch_bounds__(kBlock) tensor_cast_kernel(const S* __restrict__ src, D* __restrict__ dst,
                                                             int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    dst[i] = Narrow<D>::from(widen(src[i]));
}

template <DType SrcT, DType DstT>
void cast_typed(const void* src, void* dst, int64_t n, void* stream) {
  using S = typename DevType<SrcT>::type;
  using D = typename DevType<DstT>::type;
  DF_LAUNCH((tensor_cast_kernel<S, D>), dim3(grid_for(n)), dim3(kBlock), 0, stream, static_cast<const S*>(src),
            static_cast<D*>(dst), n);
}

template <DType SrcT>
void cast_from(const void* src, void* dst, DType dst_dtype, int64_t n, void* stream) {
  switch (dst_dtype) {
    case DType::f32: return cast_typed<SrcT, DType::f32>(src, dst, n, stream);
    case DType::bf16: return cast_typed<SrcT, DType::bf16>(src, dst, n, stream);
    case DType::f16: return cast_typed<SrcT, DType::f16>(src, dst, n, stream);
    case DType::i32: return cast_typed<SrcT, DType::i32>(src, dst, n, stream);
    case DType::i64: return cast_typed<SrcT, DType::i64>(src, dst, n, stream);
    case DType::u8: return cast_typed<SrcT, DType::u8>(src, dst, n, stream);
    case DType::f64: return cast_typed<SrcT, DType::f64>(src, dst, n, stream);
  }
  DF_FAIL("tensor_cast: unknown destination dtype ", static_cast<int>(dst_dtype));
}

// ---- Philox fill ----------------------------------------------------------------------------
// One thread per Philox block: the block's four words give four uniforms or, by Box-Muller on
// words (0,1) and (2,3), four normals, which are elements 4k..4k+3 of the stream. The result is
// a + b * value with both operations rounded separately: for a normal fill a = mean, b = std;
// for a uniform fill a = lo, b = hi - lo (computed on the host, like the CPU's (hi - lo)).
__global__ void __launch_bounds__(kBlock) tensor_philox_fill_kernel(float* __restrict__ p, int64_t n, uint64_t seed,
                                                                    uint64_t offset, bool normal, float a, float b) {
  const int64_t blocks = (n + 3) / 4;
  const bool aligned = reinterpret_cast<uintptr_t>(p) % 16 == 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < blocks; k += stride) {
    const Philox4 r = philox_block(seed, offset, static_cast<uint64_t>(k));
    float v[4];
    if (normal) {
      philox_normal4(r, v);
    } else {
      for (int j = 0; j < 4; ++j) v[j] = philox_uniform_bits(r.v[j]);
    }
    for (int j = 0; j < 4; ++j) v[j] = __fadd_rn(a, __fmul_rn(b, v[j]));
    const int64_t i = 4 * k;
    if (aligned && i + 4 <= n) {
      *reinterpret_cast<float4*>(p + i) = make_float4(v[0], v[1], v[2], v[3]);
    } else {
      for (int j = 0; j < 4 && i + j < n; ++j) p[i + j] = v[j];
    }
  }
}

// ---- upload ---------------------------------------------------------------------------------
// Kernel parameters live in constant memory and are copied by the launch itself, so a struct of
// bytes passed by value is a host-to-device copy that neither needs pinned memory nor waits for
// the stream. Parameters are limited to 4 KiB (before CUDA 12.1), hence chunks of kUploadBytes.
constexpr int kUploadBytes = 4000;
struct UploadChunk {
  unsigned char bytes[kUploadBytes];
};

__global__ void __launch_bounds__(kBlock) tensor_upload_kernel(unsigned char* __restrict__ dst, UploadChunk chunk,
                                                               int n) {
  for (int i = threadIdx.x; i < n; i += kBlock) dst[i] = chunk.bytes[i];
}

}  // namespace

void tensor_fill(void* p, DType dtype, int64_t n, double value, void* stream) {
  DF_CHECK(n >= 0, "tensor_fill: negative size ", n);
  if (n == 0) return;
  DF_CHECK(p != nullptr, "tensor_fill: null pointer");
  // The same conversions as core/tensor.cpp's store_from_double, done once here.
  switch (dtype) {
    case DType::f32: return fill_bits(p, n, bits_of<uint32_t>(static_cast<float>(value)), stream);
    case DType::bf16: return fill_bits(p, n, float_to_bf16(static_cast<float>(value)).bits, stream);
    case DType::f16: return fill_bits(p, n, float_to_f16(static_cast<float>(value)).bits, stream);
    case DType::i32: return fill_bits(p, n, bits_of<uint32_t>(static_cast<int32_t>(value)), stream);
    case DType::i64: return fill_bits(p, n, bits_of<uint64_t>(static_cast<int64_t>(value)), stream);
    case DType::u8: return fill_bits(p, n, static_cast<uint8_t>(value), stream);
    case DType::f64: return fill_bits(p, n, bits_of<uint64_t>(value), stream);
  }
  DF_FAIL("tensor_fill: unknown dtype ", static_cast<int>(dtype));
}

void tensor_cast(const void* src, DType src_dtype, void* dst, DType dst_dtype, int64_t n, void* stream) {
  DF_CHECK(n >= 0, "tensor_cast: negative size ", n);
  if (n == 0) return;
  DF_CHECK(src != nullptr && dst != nullptr, "tensor_cast: null pointer");
  switch (src_dtype) {
    case DType::f32: return cast_from<DType::f32>(src, dst, dst_dtype, n, stream);
    case DType::bf16: return cast_from<DType::bf16>(src, dst, dst_dtype, n, stream);
    case DType::f16: return cast_from<DType::f16>(src, dst, dst_dtype, n, stream);
    case DType::i32: return cast_from<DType::i32>(src, dst, dst_dtype, n, stream);
    case DType::i64: return cast_from<DType::i64>(src, dst, dst_dtype, n, stream);
    case DType::u8: return cast_from<DType::u8>(src, dst, dst_dtype, n, stream);
    case DType::f64: return cast_from<DType::f64>(src, dst, dst_dtype, n, stream);
  }
  DF_FAIL("tensor_cast: unknown source dtype ", static_cast<int>(src_dtype));
}

void tensor_philox_fill(float* p, int64_t n, uint64_t seed, uint64_t offset, bool normal, float a, float b,
                        void* stream) {
  DF_CHECK(n >= 0, "tensor_philox_fill: negative size ", n);
  if (n == 0) return;
  DF_CHECK(p != nullptr, "tensor_philox_fill: null pointer");
  // CPU: mean + std * z, and lo + (hi - lo) * u with (hi - lo) rounded first.
  const float scale = normal ? b : b - a;
  DF_LAUNCH(tensor_philox_fill_kernel, dim3(grid_for((n + 3) / 4)), dim3(kBlock), 0, stream, p, n, seed, offset,
            normal, a, scale);
}

void tensor_upload(void* dst, const void* src, size_t bytes, void* stream) {
  if (bytes == 0) return;
  DF_CHECK(dst != nullptr && src != nullptr, "tensor_upload: null pointer");
  for (size_t at = 0; at < bytes; at += sizeof(UploadChunk)) {
    const size_t left = bytes - at;
    const int n = static_cast<int>(left < sizeof(UploadChunk) ? left : sizeof(UploadChunk));
    UploadChunk chunk{};
    std::memcpy(chunk.bytes, static_cast<const unsigned char*>(src) + at, static_cast<size_t>(n));
    DF_LAUNCH(tensor_upload_kernel, dim3(1), dim3(kBlock), 0, stream, static_cast<unsigned char*>(dst) + at, chunk, n);
  }
}

}  // namespace diffuse::DF_BACKEND
