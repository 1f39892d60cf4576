// core/cuda_check.h: checks for CUDA runtime, cuBLAS and cuDNN status codes, in the family of
// core/check.h: each failure throws diffuse::Error with the call's text, file, line and the
// library's own error name and string.
//
// Only the CUDA runtime header is included here. DF_CUBLAS_CHECK and DF_CUDNN_CHECK name
// cublasGetStatusString / cudnnGetErrorString at the point of use, so a file that calls cuBLAS
// (and has included it) gets them, and a file that does not pays nothing.
#pragma once

#include <cuda_runtime_api.h>

#include "core/check.h"

namespace diffuse::detail {

[[noreturn]] inline void cuda_fail(const char* file, int line, const char* call, cudaError_t e) {
  fail(file, line, nullptr,
       concat(call, " failed: ", cudaGetErrorName(e), " (", static_cast<int>(e), "): ", cudaGetErrorString(e)));
}

// After a kernel launch: a bad configuration (too many threads, too much shared memory, no
// kernel image for this GPU) is reported by cudaGetLastError, not by the launch itself.
// Define DIFFUSE_SYNC_LAUNCHES to also wait for the kernel, so that a fault inside it is reported
// at its launch instead of at some later, unrelated call.
inline void cuda_check_launch(const char* kernel, const char* file, int line) {
  cudaError_t e = cudaGetLastError();
#if defined(DIFFUSE_SYNC_LAUNCHES)
  if (e == cudaSuccess) e = cudaDeviceSynchronize();
#endif
  if (e != cudaSuccess) [[unlikely]]
    fail(file, line, nullptr,
         concat("launch of ", kernel, " failed: ", cudaGetErrorName(e), " (", static_cast<int>(e),
                "): ", cudaGetErrorString(e)));
}

}  // namespace diffuse::detail

#define DF_CUDA_CHECK(call)                                                    \
  do {                                                                         \
    const cudaError_t df_cuda_err_ = (call);                                   \
    if (df_cuda_err_ != cudaSuccess) [[unlikely]]                              \
      ::diffuse::detail::cuda_fail(__FILE__, __LINE__, #call, df_cuda_err_);   \
  } while (0)

#define DF_CUBLAS_CHECK(call)                                                                  \
  do {                                                                                         \
    const cublasStatus_t df_cublas_st_ = (call);                                               \
    if (df_cublas_st_ != CUBLAS_STATUS_SUCCESS) [[unlikely]]                                   \
      DF_FAIL(#call, " failed: ", cublasGetStatusString(df_cublas_st_), " (",                  \
              static_cast<int>(df_cublas_st_), ")");                                           \
  } while (0)

#define DF_CUDNN_CHECK(call)                                                                   \
  do {                                                                                         \
    const cudnnStatus_t df_cudnn_st_ = (call);                                                 \
    if (df_cudnn_st_ != CUDNN_STATUS_SUCCESS) [[unlikely]]                                     \
      DF_FAIL(#call, " failed: ", cudnnGetErrorString(df_cudnn_st_), " (",                     \
              static_cast<int>(df_cudnn_st_), ")");                                            \
  } while (0)
