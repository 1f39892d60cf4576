// kernels/cuda/common.cuh: small device helpers shared by the kernels of kernels/cuda (both the
// nvcc and the emulator build; include after portable.cuh). Launch sizing, 16-byte packs for
// vectorised loads, f32 <-> bf16 conversion, and warp / block sums.
#pragma once

#include <cstdint>

#include "kernels/cuda/portable.cuh"

// `#pragma unroll` for device passes only: a loop that indexes a per-thread array must be fully
// unrolled for the array to live in registers; gcc (the emulator, and nvcc's host pass) would
// warn about the unknown pragma.
// DF_NO_UNROLL keeps a loop rolled, so its body's code (an inlined libm function) stands once.
#if defined(__CUDA_ARCH__)
#define DF_UNROLL _Pragma("unroll")
#define DF_NO_UNROLL _Pragma("unroll 1")
#else
#define DF_UNROLL
#define DF_NO_UNROLL
#endif

namespace diffuse::DF_BACKEND::detail {

// Grid-stride kernels cap their grid: 4096 blocks are several waves on any current GPU (132 SMs
// on an H100 hold ~1000 blocks of 256 threads), enough to hide latency, and a loop amortises the
// index arithmetic over a large tensor instead of launching millions of tiny blocks.
constexpr int64_t kMaxGrid = 4096;

inline unsigned grid_for(int64_t work_items, int block, int64_t max_grid = kMaxGrid) {
  int64_t g = (work_items + block - 1) / block;
  if (g < 1) g = 1;
  return static_cast<unsigned>(g < max_grid ? g : max_grid);
}

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// n / d for a runtime divisor d, as a multiply-high and a shift (Granlund & Montgomery 1994,
// "Division by invariant integers using multiplication", the round-up variant PyTorch's
// IntDivider uses): a 32-bit integer division is a ~20-instruction sequence on the GPU, and the
// broadcast and resampling kernels need one or two per element. Exact for n < 2^31 (then the sum
// below cannot carry out of 32 bits) and 1 <= d <= 2^31.
struct FastDivmod {
  uint32_t d = 1, m = 1, s = 0;

  static FastDivmod of(uint32_t divisor) {
    FastDivmod f;
    f.d = divisor;
    f.s = 0;
    while ((uint64_t{1} << f.s) < divisor) ++f.s;
    // m = floor(2^32 (2^s - d) / d) + 1 < 2^32, since 2^s - d < d.
    f.m = static_cast<uint32_t>(((uint64_t{1} << 32) * ((uint64_t{1} << f.s) - divisor)) / divisor + 1);
    return f;
  }
  DF_DEVICE_INLINE uint32_t div(uint32_t n) const { return (__umulhi(n, m) + n) >> s; }
};

// 16 bytes of T: one 128-bit load or store when the address is 16-byte aligned (4 floats or
// 8 bf16), which is what saturates DRAM bandwidth in a memory-bound kernel.
template <class T>
struct alignas(16) Pack {
  static constexpr int n = static_cast<int>(16 / sizeof(T));
  T v[n];
};

template <class T>
DF_DEVICE_INLINE Pack<T> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T>*>(p);
}
template <class T>
DF_DEVICE_INLINE void store_pack(T* p, const Pack<T>& v) {
  *reinterpret_cast<Pack<T>*>(p) = v;
}

// Arithmetic is in f32 whatever the storage type (DESIGN.md: bf16 activations, f32 math).
DF_DEVICE_INLINE float to_f32(float v) { return v; }
DF_DEVICE_INLINE float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
template <class T> DF_DEVICE_INLINE T from_f32(float v);
template <> DF_DEVICE_INLINE float from_f32<float>(float v) { return v; }
template <> DF_DEVICE_INLINE __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

DF_DEVICE_INLINE float warp_sum(float v) {
  for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}
DF_DEVICE_INLINE float warp_max(float v) {
  for (int off = 16; off > 0; off /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}

// Sum over a block of kBlock threads (a multiple of 32), returned to every thread. `scratch`
// holds kBlock / 32 floats of shared memory; the trailing barrier lets a caller reuse it at once.
// The order of the additions is fixed by the thread layout, so the result is deterministic.
template <int kBlock>
DF_DEVICE_INLINE float block_sum(float v, float* scratch) {
  static_assert(kBlock % 32 == 0 && kBlock <= 1024, "block of whole warps");
  constexpr int kWarps = kBlock / 32;
  v = warp_sum(v);
  if constexpr (kWarps == 1) {
    return v;
  } else {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float t = lane < kWarps ? scratch[lane] : 0.0f;
    t = warp_sum(t);
    __syncthreads();
    return t;
  }
}

template <int kBlock>
DF_DEVICE_INLINE float block_max(float v, float* scratch) {
  static_assert(kBlock % 32 == 0 && kBlock <= 1024, "block of whole warps");
  constexpr int kWarps = kBlock / 32;
  v = warp_max(v);
  if constexpr (kWarps == 1) {
    return v;
  } else {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float t = lane < kWarps ? scratch[lane] : -INFINITY;
    t = warp_max(t);
    __syncthreads();
    return t;
  }
}

}  // namespace diffuse::DF_BACKEND::detail
