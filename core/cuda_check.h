// core/cuda_check.h: checks for CUDA runtime, cuBLAS and cuDNN status codes, in the family of
// core/check.h: each failure throws diffuse::Error with the call's text, file, line and the
// library's own error name and string.
//
// Only the CUDA runtime header is included here. DF_CUBLAS_CHECK and DF_CUDNN_CHECK name
// cublasGetStatusString / cudnnGetErrorString at the point of use, so a file that calls cuBLAS
// (and has included it) gets them, and a file that does not pays nothing.
//
// The runtime keeps one pending error per thread, read and cleared by cudaGetLastError, and
// cuda_check_launch reads it after every kernel launch. A library call that returns success may
// still leave an error there (a failed launch or allocation inside cuBLAS or cuDNN), and a failed
// runtime call leaves its own: either would be blamed on our next, innocent launch. So every
// check reads and clears it at the call that caused it.
#pragma once

#include <cuda_runtime_api.h>

#include "core/check.h"
#include "core/stream.h"

namespace diffuse::detail {

[[noreturn]] inline void cuda_fail(const char* file, int line, const char* call, cudaError_t e) {
  (void)cudaGetLastError();  // this call's error is reported here, not at the next launch
  fail(file, line, nullptr,
       concat(call, " failed: ", cudaGetErrorName(e), " (", static_cast<int>(e), "): ", cudaGetErrorString(e)));
}

// After a cuBLAS or cuDNN call: `status` is the library's name for its result (nullptr: success).
// The runtime error the call left pending, if any, is cleared and reported as this call's failure.
inline void library_check(const char* file, int line, const char* call, const char* status, int code) {
  const cudaError_t pending = cudaGetLastError();
  if (status == nullptr && pending == cudaSuccess) [[likely]]
    return;
  if (status == nullptr)
    fail(file, line, nullptr,
         concat(call, " failed: it left the CUDA error ", cudaGetErrorName(pending), " (", static_cast<int>(pending),
                "): ", cudaGetErrorString(pending)));
  if (pending == cudaSuccess) fail(file, line, nullptr, concat(call, " failed: ", status, " (", code, ")"));
  fail(file, line, nullptr,
       concat(call, " failed: ", status, " (", code, "), with the CUDA error ", cudaGetErrorName(pending), " (",
              static_cast<int>(pending), "): ", cudaGetErrorString(pending)));
}

// Whether a host wait on `stream` is allowed now: not while it, or this thread's current stream,
// is being captured into a graph (a synchronisation there is illegal and invalidates the capture).
// The legacy default stream answers cudaErrorStreamCaptureImplicit while a blocking stream is
// captured: that too means no.
inline bool may_wait_for(cudaStream_t stream, cudaStream_t current) {
  for (cudaStream_t s : {stream, current}) {
    cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(s, &st) != cudaSuccess) {
      (void)cudaGetLastError();
      return false;
    }
    if (st != cudaStreamCaptureStatusNone) return false;
  }
  return true;
}

// With DIFFUSE_SYNC_LAUNCHES: waits for the stream a kernel went to, so that a fault inside it is
// reported at its launch, unless a capture is under way (then the kernel was recorded, not run).
// Waits for that stream only: cudaDeviceSynchronize would also wait for streams that other threads
// are capturing.
inline cudaError_t wait_after_launch(cudaStream_t stream, cudaStream_t current) {
  if (!may_wait_for(stream, current)) return cudaSuccess;
  return cudaStreamSynchronize(stream);
}

// After a kernel launch: a bad configuration (too many threads, too much shared memory, no
// kernel image for this GPU) is reported by cudaGetLastError, not by the launch itself.
// Define DIFFUSE_SYNC_LAUNCHES to also wait for the kernel (wait_after_launch).
inline void cuda_check_launch(const char* kernel, const char* file, int line, cudaStream_t stream) {
  cudaError_t e = cudaGetLastError();
#if defined(DIFFUSE_SYNC_LAUNCHES)
  if (e == cudaSuccess) e = wait_after_launch(stream, static_cast<cudaStream_t>(current_stream()));
#else
  (void)stream;
#endif
  if (e != cudaSuccess) [[unlikely]] {
    (void)cudaGetLastError();
    fail(file, line, nullptr,
         concat("launch of ", kernel, " failed: ", cudaGetErrorName(e), " (", static_cast<int>(e),
                "): ", cudaGetErrorString(e)));
  }
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
    ::diffuse::detail::library_check(                                                          \
        __FILE__, __LINE__, #call,                                                             \
        df_cublas_st_ == CUBLAS_STATUS_SUCCESS ? nullptr : cublasGetStatusString(df_cublas_st_), \
        static_cast<int>(df_cublas_st_));                                                      \
  } while (0)

#define DF_CUDNN_CHECK(call)                                                                   \
  do {                                                                                         \
    const cudnnStatus_t df_cudnn_st_ = (call);                                                 \
    ::diffuse::detail::library_check(                                                          \
        __FILE__, __LINE__, #call,                                                             \
        df_cudnn_st_ == CUDNN_STATUS_SUCCESS ? nullptr : cudnnGetErrorString(df_cudnn_st_),    \
        static_cast<int>(df_cudnn_st_));                                                       \
  } while (0)
