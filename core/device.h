// core/device.h: where a tensor lives, and what this machine offers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace diffuse {

enum class DeviceType : uint8_t { cpu, cuda };

struct Device {
  DeviceType type = DeviceType::cpu;
  int index = 0;

  static constexpr Device cpu() { return {DeviceType::cpu, 0}; }
  static constexpr Device cuda(int i = 0) { return {DeviceType::cuda, i}; }
  bool is_cpu() const { return type == DeviceType::cpu; }
  bool is_cuda() const { return type == DeviceType::cuda; }
  std::string str() const;
  bool operator==(const Device&) const = default;
};

// "cpu", "cuda", "cuda:N" or "auto". `auto` picks cuda:0 when a GPU answers, else the cpu with
// one notice on stderr. An explicit cuda device that does not answer is an error.
Device resolve_device(std::string_view spec);
// The syntax alone, the one definition resolve_device and the config checks share: `auto` is
// nullopt, otherwise the device named. Throws "unknown device '<spec>' (expected cpu, cuda, cuda:N
// or auto)"; asks no driver.
std::optional<Device> parse_device_spec(std::string_view spec);

// Device discovery. Never throws and never crashes: no GPU, no driver or a build without CUDA
// all read as zero devices, with the reason in cuda_unavailable_reason().
int cuda_device_count();
bool cuda_available();
std::string cuda_unavailable_reason();

struct CudaDeviceInfo {
  int index = 0;
  std::string name;
  int cc_major = 0, cc_minor = 0;
  int sm_count = 0;
  size_t total_bytes = 0, free_bytes = 0;
};
std::vector<CudaDeviceInfo> cuda_devices();
int cuda_runtime_version();  // e.g. 13000; 0 without CUDA
int cuda_driver_version();   // 0 without a driver

// Make `d` current for the calling thread (no-op for the cpu).
void set_current_device(Device d);

}  // namespace diffuse
