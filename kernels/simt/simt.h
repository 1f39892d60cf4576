// kernels/simt/simt.h: CUDA's device-side language for the host compiler, so that the sources in
// kernels/cuda run on a CPU (docs/kernels.md). Included through kernels/cuda/portable.cuh.
//
// Each block runs on the calling thread with its threads as fibers (kernels/simt/runtime.cpp);
// a thread runs until it waits (barrier, warp collective) or returns. Everything a kernel can
// name is declared under its CUDA name in the global namespace, except shared memory and the
// launch, which kernels spell DF_SHARED / DF_DYNAMIC_SHARED / DF_LAUNCH in both builds.
#pragma once

// Every standard header a kernel may want comes first: the `asm` macro at the end of this file
// must not meet a library header that uses the keyword.
#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cassert>
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <tuple>
#include <type_traits>
#include <utility>

#include "core/check.h"
#include "core/hd.h"
#include "kernels/simt/device_math.h"
#include "kernels/simt/fp16.h"
#include "kernels/simt/runtime.h"
#include "kernels/simt/vector_types.h"

// ---- qualifiers: meaningless on one address space ------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __constant__
#define __align__(n) alignas(n)
#define __grid_constant__

constexpr int warpSize = 32;

// 1 where this file is compiled with the race check's instrumentation (ThreadSanitizer's, at
// compile time only: kernels/simt/race_check.cmake), so that kernels/simt sees its shared-memory
// accesses; 0 otherwise.
#if defined(__SANITIZE_THREAD__)
#define DF_SIMT_RACECHECK 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define DF_SIMT_RACECHECK 1
#endif
#endif
#if !defined(DF_SIMT_RACECHECK)
#define DF_SIMT_RACECHECK 0
#endif

// The call site of a barrier or warp operation (runtime.h), a default argument of each.
using df_loc = ::diffuse::simt::SourceLoc;

// ---- built-in indices ---------------------------------------------------------------------------
#define threadIdx (::diffuse::simt::detail::thread_ctx("threadIdx").thread_idx)
#define blockIdx (::diffuse::simt::detail::block_ctx("blockIdx").block_idx)
#define blockDim (::diffuse::simt::detail::block_ctx("blockDim").block_dim)
#define gridDim (::diffuse::simt::detail::block_ctx("gridDim").grid_dim)

// ---- block barriers -------------------------------------------------------------------------------
// The call site is part of the barrier: threads at different __syncthreads calls is a fault.
inline void __syncthreads(const df_loc& loc = df_loc::current()) {
  ::diffuse::simt::detail::block_barrier(::diffuse::simt::detail::BarrierKind::sync, 1, loc);
}
inline int __syncthreads_count(int pred, const df_loc& loc = df_loc::current()) {
  return ::diffuse::simt::detail::block_barrier(::diffuse::simt::detail::BarrierKind::count, pred, loc);
}
inline int __syncthreads_and(int pred, const df_loc& loc = df_loc::current()) {
  return ::diffuse::simt::detail::block_barrier(::diffuse::simt::detail::BarrierKind::all, pred, loc);
}
inline int __syncthreads_or(int pred, const df_loc& loc = df_loc::current()) {
  return ::diffuse::simt::detail::block_barrier(::diffuse::simt::detail::BarrierKind::any, pred, loc);
}

// ---- warp collectives: a rendezvous of the lanes in `mask` ----------------------------------------
inline void __syncwarp(unsigned mask = 0xffffffffu, const df_loc& loc = df_loc::current()) {
  ::diffuse::simt::detail::WarpCall c;
  c.mask = mask;
  c.loc = loc;
  ::diffuse::simt::detail::warp_collective(c);
}

namespace diffuse::simt::detail {
template <class T>
T shuffle(WarpKind kind, unsigned mask, const T& var, int param, int width, const df_loc& loc) {
  static_assert(std::is_trivially_copyable_v<T>, "shuffled values must be trivially copyable");
  T result;
  WarpCall c;
  c.kind = kind;
  c.mask = mask;
  c.param = param;
  c.width = width;
  c.in = &var;
  c.out = &result;
  c.size = sizeof(T);
  c.loc = loc;
  warp_collective(c);
  return result;
}
inline uint32_t vote(WarpKind kind, unsigned mask, int value, bool is_signed, const df_loc& loc) {
  WarpCall c;
  c.kind = kind;
  c.mask = mask;
  c.param = value;
  c.is_signed = is_signed;
  c.loc = loc;
  warp_collective(c);
  return c.result;
}
}  // namespace diffuse::simt::detail

template <class T>
T __shfl_sync(unsigned mask, T var, int srcLane, int width = warpSize,
              const df_loc& loc = df_loc::current()) {
  return ::diffuse::simt::detail::shuffle(::diffuse::simt::detail::WarpKind::shfl_idx, mask, var, srcLane, width, loc);
}
template <class T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize,
                 const df_loc& loc = df_loc::current()) {
  return ::diffuse::simt::detail::shuffle(::diffuse::simt::detail::WarpKind::shfl_up, mask, var,
                                          static_cast<int>(delta), width, loc);
}
template <class T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize,
                   const df_loc& loc = df_loc::current()) {
  return ::diffuse::simt::detail::shuffle(::diffuse::simt::detail::WarpKind::shfl_down, mask, var,
                                          static_cast<int>(delta), width, loc);
}
template <class T>
T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = warpSize,
                  const df_loc& loc = df_loc::current()) {
  return ::diffuse::simt::detail::shuffle(::diffuse::simt::detail::WarpKind::shfl_xor, mask, var, laneMask, width, loc);
}

inline unsigned __ballot_sync(unsigned mask, int pred, const df_loc& loc = df_loc::current()) {
  return ::diffuse::simt::detail::vote(::diffuse::simt::detail::WarpKind::ballot, mask, pred != 0, false, loc);
}
inline int __any_sync(unsigned mask, int pred, const df_loc& loc = df_loc::current()) {
  return static_cast<int>(::diffuse::simt::detail::vote(::diffuse::simt::detail::WarpKind::any, mask, pred != 0, false, loc));
}
inline int __all_sync(unsigned mask, int pred, const df_loc& loc = df_loc::current()) {
  return static_cast<int>(::diffuse::simt::detail::vote(::diffuse::simt::detail::WarpKind::all, mask, pred != 0, false, loc));
}

// sm_80 warp reductions.
#define DF_SIMT_REDUCE(name, kind, T, is_signed)                                                      \
  inline T name(unsigned mask, T value, const df_loc& loc = df_loc::current()) {                 \
    return static_cast<T>(::diffuse::simt::detail::vote(::diffuse::simt::detail::WarpKind::kind, mask,    \
                                                         static_cast<int>(value), is_signed, loc));      \
  }
DF_SIMT_REDUCE(__reduce_add_sync, reduce_add, unsigned, false)
DF_SIMT_REDUCE(__reduce_add_sync, reduce_add, int, true)
DF_SIMT_REDUCE(__reduce_min_sync, reduce_min, unsigned, false)
DF_SIMT_REDUCE(__reduce_min_sync, reduce_min, int, true)
DF_SIMT_REDUCE(__reduce_max_sync, reduce_max, unsigned, false)
DF_SIMT_REDUCE(__reduce_max_sync, reduce_max, int, true)
DF_SIMT_REDUCE(__reduce_and_sync, reduce_and, unsigned, false)
DF_SIMT_REDUCE(__reduce_or_sync, reduce_or, unsigned, false)
DF_SIMT_REDUCE(__reduce_xor_sync, reduce_xor, unsigned, false)
#undef DF_SIMT_REDUCE

// ---- tensor cores: mma.sync as a warp collective ---------------------------------------------------
// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {d0..d3}, {a0..a3}, {b0, b1}, {c0..c3}: the
// warp computes D = A B + C for A 16 x 16 and B 16 x 8 in bf16, C and D 16 x 8 in f32, every lane
// holding the fragments that the PTX ISA assigns it ("Matrix Fragments for mma.m16n8k16 with
// floating point type"; runtime.cpp has the layout). As `.aligned` demands, all 32 lanes must
// reach the same call; one that has exited is a fault. Products of bf16 are exact; each element's
// 16 products and C are summed in double and rounded to f32 once, which the GPU's own f32
// accumulation matches to a few ulp. d may be c.
inline void df_mma_m16n8k16_row_col_f32_bf16_bf16_f32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                                      const float (&c)[4], const df_loc& loc = df_loc::current()) {
  ::diffuse::simt::detail::MmaFragments f;
  for (int i = 0; i < 4; ++i) f.a[i] = a[i], f.c[i] = c[i];
  f.b[0] = b[0], f.b[1] = b[1];
  float out[4];
  ::diffuse::simt::detail::WarpCall call;
  call.kind = ::diffuse::simt::detail::WarpKind::mma_m16n8k16_bf16;
  call.mask = 0xffffffffu;
  call.in = &f;
  call.out = out;
  call.size = sizeof out;
  call.loc = loc;
  ::diffuse::simt::detail::warp_collective(call);
  for (int i = 0; i < 4; ++i) d[i] = out[i];
}

// A kernel's deliberate abort: a fault naming the thread, like the GPU's unspecified launch failure.
[[noreturn]] inline void __trap() { throw ::diffuse::Error("__trap() called"); }

// ---- shared memory ------------------------------------------------------------------------------
// The names are references to arrays, so name[i], name[r][c], sizeof(name) and range-for behave
// as they do on a __shared__ array. The memory is per block, 16-byte aligned, and filled with
// 0xFF bytes (a NaN in every float type) when the block starts.
#define DF_SHARED(type, name, count)                                                                   \
  static constexpr ::diffuse::simt::detail::SharedSite df_shared_site_##name{#name, __FILE__, __LINE__,  \
                                                                             sizeof(type), 0};           \
  type(&name)[count] = *static_cast<type(*)[count]>(                                                   \
      ::diffuse::simt::detail::shared_alloc(&df_shared_site_##name, sizeof(type[count]), alignof(type)))
#define DF_SHARED2(type, name, rows, cols)                                                             \
  static constexpr ::diffuse::simt::detail::SharedSite df_shared_site_##name{#name, __FILE__, __LINE__,  \
                                                                             sizeof(type), (cols)};      \
  type(&name)[rows][cols] = *static_cast<type(*)[rows][cols]>(::diffuse::simt::detail::shared_alloc(    \
      &df_shared_site_##name, sizeof(type[rows][cols]), alignof(type)))
#define DF_DYNAMIC_SHARED(type) (static_cast<type*>(::diffuse::simt::detail::dynamic_shared()))

// ---- the launch ---------------------------------------------------------------------------------
namespace diffuse::simt {
// Runs the whole grid before returning. Arguments convert to the kernel's parameter types once,
// as a <<<>>> launch does, and each thread gets its own copies to modify.
template <class... P, class... A>
void launch(const detail::LaunchSite& site, void (*kernel)(P...), dim3 grid, dim3 block, std::size_t smem_bytes,
            df_stream_t, A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "DF_LAUNCH: the argument count differs from the kernel's parameters");
  struct Ctx {
    void (*kernel)(P...);
    std::tuple<std::decay_t<P>...> params;
  };
  Ctx ctx{kernel, std::tuple<std::decay_t<P>...>(std::forward<A>(args)...)};
  detail::run_grid(site, grid, block, smem_bytes,
                   [](void* p) {
                     auto* c = static_cast<Ctx*>(p);
                     std::apply(c->kernel, c->params);
                   },
                   &ctx);
}
}  // namespace diffuse::simt

#define DF_LAUNCH(kernel, grid, block, smem_bytes, stream, ...)                                       \
  ::diffuse::simt::launch(::diffuse::simt::detail::LaunchSite{#kernel, __FILE__, __LINE__}, kernel, (grid), \
                          (block), (smem_bytes), static_cast<df_stream_t>(stream) __VA_OPT__(, ) __VA_ARGS__)

// ---- what cannot be emulated fails to compile --------------------------------------------------
// Inline PTX has no CPU meaning: `asm volatile("...")` becomes an undeclared name. (GNU's
// __asm__ spelling is left alone because the C library's headers use it.) nvcuda::wmma, mma.h,
// cp.async and __pipeline_* are simply not declared here. A bare __shared__ would be a per-thread
// local on the CPU, silently wrong, so it is an error too: use DF_SHARED.
#define asm DF_SIMT_error_inline_asm_cannot_be_emulated__keep_a_SIMT_twin_under_DIFFUSE_SIMT
#define __shared__ DF_SIMT_error_use_DF_SHARED_or_DF_DYNAMIC_SHARED_instead_of___shared__
