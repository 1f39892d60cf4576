// kernels/backend.h: how a Tensor-level op (kernels/<op>.cpp) reaches the device its tensors live
// on. The cpu path is ordinary code in each op's file; the GPU path is one call into namespace
// diffuse::cuda (declared beside the op's launchers in kernels/<op>.h, defined at the end of
// kernels/cuda/<op>.cu), which exists only in a build with the CUDA backend: a GPU build or
// the simulated device (DIFFUSE_CUDA=ON or SIM). This header is the one place that knows whether
// the build has it.
#pragma once

#include "core/check.h"
#include "core/device.h"

namespace diffuse::kernels {

// "<op> on <device> needs the CUDA backend": a tensor on a device this build cannot run.
[[noreturn]] inline void unsupported_device(const char* op, const Device& d) {
  DF_FAIL(op, " on ", d.str(), " needs the CUDA backend");
}

}  // namespace diffuse::kernels

// DF_ON_CUDA(device, call): `return call;` when `device` is a GPU. Without the CUDA backend the
// statement is empty (the GPU functions are declared there but not defined), and the op goes on
// to its cpu path, which refuses any other device with unsupported_device.
#if defined(DIFFUSE_HAVE_CUDA)
#define DF_ON_CUDA(device, ...)          \
  do {                                   \
    if ((device).is_cuda()) return __VA_ARGS__; \
  } while (0)
#else
#define DF_ON_CUDA(device, ...) \
  do {                          \
  } while (0)
#endif
