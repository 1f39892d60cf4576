// core/hd.h: qualifiers for functions shared by host code, CUDA kernels and the emulator.
#pragma once

#if defined(__CUDACC__)
#define DF_HD __host__ __device__
#define DF_HD_INLINE __host__ __device__ __forceinline__
#else
#define DF_HD
#define DF_HD_INLINE inline
#endif
