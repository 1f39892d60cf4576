// kernels/cuda/portable.cuh: the one header every kernel source includes first.
//
// Each .cu file is compiled twice: by nvcc for the GPU (namespace diffuse::cuda) and by the host
// compiler with DIFFUSE_SIMT=1 for the emulator in kernels/simt (namespace diffuse::emu), which
// runs every block's threads as fibers on the CPU so that CI, which has no GPU, runs every
// custom kernel. A build for the simulated device (DIFFUSE_CUDA=SIM, sim/sim.h) compiles them a
// third way, by the host compiler with DIFFUSE_SIM_DEVICE_CODE=1 and DIFFUSE_SIMT=1: namespace
// diffuse::cuda, so the host code finds its launchers, with the emulator running the kernels
// and the simulated stream deciding when. The few things the builds spell differently are
// macros here:
//
//   namespace diffuse::DF_BACKEND { ... }          cuda | emu
//   df_stream_t                                    cudaStream_t | an opaque pointer
//   DF_SHARED(type, name, count)                   __shared__ type name[count]   (16-byte aligned)
//   DF_SHARED2(type, name, rows, cols)             __shared__ type name[rows][cols]
//   DF_DYNAMIC_SHARED(type)                        extern __shared__ memory, as a type*
//   DF_LAUNCH(kernel, grid, block, smem, stream, args...)
//                                                  kernel<<<grid, block, smem, stream>>>(args...)
//                                                  then a check of the launch that throws
//   DF_HD, DF_HD_INLINE, DF_DEVICE_INLINE          qualifiers for shared helpers
//   DF_DEVICE_BUILD                                1 for a GPU or the simulated device, 0 for the
//                                                  emulator: each .cu ends with its Tensor-level op
//                                                  (the one kernels/<op>.cpp calls for a GPU tensor)
//                                                  inside #if DF_DEVICE_BUILD
//   df_memset_async / df_memcpy_async              device memory fill and copy on a stream
//
// Everything else is plain CUDA: threadIdx, __syncthreads, __shfl_down_sync, atomicAdd,
// __nv_bfloat16, __expf ... The emulator provides those under their CUDA names. See
// docs/kernels.md for the rules, and for what the emulator rejects at compile time (inline asm,
// wmma/mma, cp.async, a bare __shared__).
#pragma once

#include <cstddef>

#include "core/check.h"
#include "core/hd.h"

#if defined(__CUDACC__)

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "core/cuda_check.h"

#define DF_BACKEND cuda
#define DF_DEVICE_BUILD 1
#define DF_DEVICE_INLINE __device__ __forceinline__

using df_stream_t = cudaStream_t;

#define DF_SHARED(type, name, count) __shared__ __align__(16) type name[count]
#define DF_SHARED2(type, name, rows, cols) __shared__ __align__(16) type name[rows][cols]

// All extern __shared__ arrays of a kernel alias one base; declaring it once, as bytes, in one
// function keeps nvcc from seeing incompatible redeclarations when kernels want different types.
__device__ __forceinline__ unsigned char* df_dynamic_shared_base() {
  extern __shared__ __align__(16) unsigned char df_dynamic_smem[];
  return df_dynamic_smem;
}
#define DF_DYNAMIC_SHARED(type) (reinterpret_cast<type*>(df_dynamic_shared_base()))

// The stream goes through static_cast so launchers may pass the void* that core/stream.h uses.
#define DF_LAUNCH(kernel, grid, block, smem_bytes, stream, ...)                                   \
  do {                                                                                           \
    kernel<<<(grid), (block), (smem_bytes), static_cast<df_stream_t>(stream)>>>(__VA_ARGS__);    \
    ::diffuse::detail::cuda_check_launch(#kernel, __FILE__, __LINE__,                            \
                                         static_cast<df_stream_t>(stream));                     \
  } while (0)

inline void df_memset_async(void* p, int byte, std::size_t bytes, df_stream_t stream) {
  DF_CUDA_CHECK(cudaMemsetAsync(p, byte, bytes, stream));
}
inline void df_memcpy_async(void* dst, const void* src, std::size_t bytes, df_stream_t stream) {
  DF_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream));
}

#elif defined(DIFFUSE_SIM_DEVICE_CODE) && defined(DIFFUSE_SIMT)

// ---- the simulated device: the emulator's device language, the simulated stream's launch ------
// kernels/simt names its own stream type df_stream_t; here that name is cudaStream_t (declared as
// the CUDA headers do, which these sources must not include), so the emulator's is renamed.
#define df_stream_t df_simt_stream_t
#include "kernels/simt/simt.h"
#undef df_stream_t

#define DF_BACKEND cuda
#define DF_DEVICE_BUILD 1
#define DF_DEVICE_INLINE inline

struct CUstream_st;
typedef struct CUstream_st* cudaStream_t;
using df_stream_t = cudaStream_t;

// DF_SHARED, DF_SHARED2 and DF_DYNAMIC_SHARED come from kernels/simt/simt.h; DF_LAUNCH queues
// the launch on the simulated stream (sim/launch.h).
#undef DF_LAUNCH
#include "sim/launch.h"

inline void df_memset_async(void* p, int byte, std::size_t bytes, df_stream_t stream) {
  const int e = ::diffuse::sim::memset_async(p, byte, bytes, stream);
  if (e != 0) DF_FAIL("cudaMemsetAsync failed: ", ::diffuse::sim::error_name(e), " (", e, "): ",
                      ::diffuse::sim::error_string(e));
}
inline void df_memcpy_async(void* dst, const void* src, std::size_t bytes, df_stream_t stream) {
  const int e = ::diffuse::sim::memcpy_async(dst, src, bytes, stream);
  if (e != 0) DF_FAIL("cudaMemcpyAsync failed: ", ::diffuse::sim::error_name(e), " (", e, "): ",
                      ::diffuse::sim::error_string(e));
}

#elif defined(DIFFUSE_SIMT)

#include "kernels/simt/simt.h"

#define DF_BACKEND emu
#define DF_DEVICE_BUILD 0
#define DF_DEVICE_INLINE inline

// DF_SHARED, DF_SHARED2, DF_DYNAMIC_SHARED and DF_LAUNCH come from kernels/simt/simt.h.

// The emulator runs launches synchronously on the calling thread, so "async" work is done on
// return, which is one of the orders a real stream allows.
inline void df_memset_async(void* p, int byte, std::size_t bytes, df_stream_t) { std::memset(p, byte, bytes); }
inline void df_memcpy_async(void* dst, const void* src, std::size_t bytes, df_stream_t) {
  if (bytes) std::memmove(dst, src, bytes);
}

#else
#error "kernels/cuda/portable.cuh is for nvcc or the emulator build (-DDIFFUSE_SIMT=1)"
#endif
