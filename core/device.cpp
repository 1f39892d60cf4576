#include "core/device.h"

#include <cstdio>
#include <mutex>

#include "core/check.h"

#if defined(DIFFUSE_HAVE_CUDA)
#include <cuda_runtime.h>
#endif

namespace diffuse {

std::string Device::str() const {
  return is_cpu() ? std::string("cpu") : "cuda:" + std::to_string(index);
}

namespace {

struct Discovery {
  int count = 0;
  std::string reason;
};

const Discovery& discover() {
  static Discovery d = [] {
    Discovery r;
#if defined(DIFFUSE_HAVE_CUDA)
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
      cudaGetLastError();  // clear the sticky error so later queries start clean
      r.reason = std::string("CUDA reports no usable device (") + cudaGetErrorString(e) + ")";
    } else if (n == 0) {
      r.reason = "no CUDA device found";
    } else {
      r.count = n;
    }
#else
    r.reason = "this build has no CUDA backend (built with DIFFUSE_CUDA=OFF or without nvcc)";
#endif
    return r;
  }();
  return d;
}

}  // namespace

int cuda_device_count() { return discover().count; }
bool cuda_available() { return discover().count > 0; }
std::string cuda_unavailable_reason() { return discover().reason; }

std::vector<CudaDeviceInfo> cuda_devices() {
  std::vector<CudaDeviceInfo> out;
#if defined(DIFFUSE_HAVE_CUDA)
  for (int i = 0; i < cuda_device_count(); ++i) {
    cudaDeviceProp p{};
    if (cudaGetDeviceProperties(&p, i) != cudaSuccess) continue;
    CudaDeviceInfo info;
    info.index = i;
    info.name = p.name;
    info.cc_major = p.major;
    info.cc_minor = p.minor;
    info.sm_count = p.multiProcessorCount;
    info.total_bytes = p.totalGlobalMem;
    int prev = 0;
    cudaGetDevice(&prev);
    if (cudaSetDevice(i) == cudaSuccess) {
      size_t f = 0, t = 0;
      if (cudaMemGetInfo(&f, &t) == cudaSuccess) info.free_bytes = f;
      cudaSetDevice(prev);
    }
    out.push_back(info);
  }
#endif
  return out;
}

int cuda_runtime_version() {
#if defined(DIFFUSE_HAVE_CUDA)
  int v = 0;
  return cudaRuntimeGetVersion(&v) == cudaSuccess ? v : 0;
#else
  return 0;
#endif
}

int cuda_driver_version() {
#if defined(DIFFUSE_HAVE_CUDA)
  int v = 0;
  return cudaDriverGetVersion(&v) == cudaSuccess ? v : 0;
#else
  return 0;
#endif
}

void set_current_device(Device d) {
#if defined(DIFFUSE_HAVE_CUDA)
  if (d.is_cuda()) {
    cudaError_t e = cudaSetDevice(d.index);
    DF_CHECK(e == cudaSuccess, "cannot select ", d.str(), ": ", cudaGetErrorString(e));
  }
#else
  DF_CHECK(d.is_cpu(), "cannot select ", d.str(), ": ", cuda_unavailable_reason());
#endif
}

std::optional<Device> parse_device_spec(std::string_view spec) {
  if (spec == "auto") return std::nullopt;
  if (spec == "cpu") return Device::cpu();
  if (spec == "cuda") return Device::cuda(0);
  // cuda:N with 1 to 3 digits: no overflow, and more devices than any machine has.
  const bool ok = spec.starts_with("cuda:") && spec.size() > 5 && spec.size() <= 8 &&
                  spec.find_first_not_of("0123456789", 5) == std::string_view::npos;
  DF_CHECK(ok, "unknown device '", spec, "' (expected cpu, cuda, cuda:N or auto)");
  int index = 0;
  for (char c : spec.substr(5)) index = index * 10 + (c - '0');
  return Device::cuda(index);
}

Device resolve_device(std::string_view spec) {
  const std::optional<Device> d = parse_device_spec(spec);
  if (d && d->is_cpu()) return *d;
  if (!d) {
    if (cuda_available()) return Device::cuda(0);
    static std::once_flag once;
    std::call_once(once, [] {
      std::fprintf(stderr, "diffuse: no GPU (%s); using the cpu\n", cuda_unavailable_reason().c_str());
    });
    return Device::cpu();
  }
  DF_CHECK(cuda_available(), "device ", spec, " requested but ", cuda_unavailable_reason());
  DF_CHECK(d->index < cuda_device_count(), "device ", spec, " requested but only ", cuda_device_count(),
           " CUDA device(s) found");
  return *d;
}

}  // namespace diffuse
