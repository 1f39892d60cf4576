// sim/launch.h: DF_LAUNCH for kernels/cuda sources compiled for the simulated device
// (kernels/cuda/portable.cuh, third mode; included there after kernels/simt/simt.h).
//
// A launch copies the kernel's arguments, converted to its parameter types, as a <<<>>> launch
// does, and hands them to the simulated stream, which executes the grid through kernels/simt
// (simt::launch) when the stream's turn comes, or records it into the graph being captured, whose
// every replay executes it again from the same arguments. A launch the stream refuses throws
// diffuse::Error as the GPU build's cuda_check_launch does.
#pragma once

#include <cstring>
#include <memory>
#include <new>
#include <tuple>
#include <type_traits>
#include <utility>

#include "core/check.h"
#include "sim/sim.h"

namespace diffuse::sim::detail {

template <class... P>
class TypedLaunch final : public KernelLaunch {
 public:
  using Params = std::tuple<std::decay_t<P>...>;

  template <class... A>
  TypedLaunch(const simt::detail::LaunchSite& site, void (*k)(P...), dim3 g, dim3 b, std::size_t smem_bytes,
              A&&... args)
      : site_(site), k_(k), g_(g), b_(b) {
    // Zeroed storage first: the padding between parameters is scanned for pointers too.
    std::memset(storage_, 0, sizeof storage_);
    tuple_ = new (storage_) Params(std::forward<A>(args)...);
    kernel = site.kernel;
    file = site.file;
    line = site.line;
    grid[0] = g.x, grid[1] = g.y, grid[2] = g.z;
    block[0] = b.x, block[1] = b.y, block[2] = b.z;
    smem = smem_bytes;
    params = storage_;
    describe(std::index_sequence_for<P...>{});
  }
  ~TypedLaunch() override { tuple_->~Params(); }
  TypedLaunch(const TypedLaunch&) = delete;
  TypedLaunch& operator=(const TypedLaunch&) = delete;

  void run() override {
    std::apply([this](const auto&... a) { simt::launch(site_, k_, g_, b_, smem, df_simt_stream_t{}, a...); }, *tuple_);
  }

 private:
  template <std::size_t... I>
  void describe(std::index_sequence<I...>) {
    (describe_one<I>(), ...);
  }
  template <std::size_t I>
  void describe_one() {
    using T = std::tuple_element_t<I, Params>;
    Param p;
    p.offset = static_cast<std::size_t>(reinterpret_cast<const unsigned char*>(&std::get<I>(*tuple_)) - storage_);
    p.size = sizeof(T);
    p.pointer = std::is_pointer_v<T>;
    if constexpr (std::is_pointer_v<T>) p.to_const = std::is_const_v<std::remove_pointer_t<T>>;
    param_info.push_back(p);
  }

  simt::detail::LaunchSite site_;
  void (*k_)(P...);
  dim3 g_, b_;
  alignas(Params) unsigned char storage_[sizeof(Params)];
  Params* tuple_ = nullptr;
};

template <class... P, class... A>
void launch(const simt::detail::LaunchSite& site, void (*kernel)(P...), dim3 grid, dim3 block, std::size_t smem_bytes,
            CUstream_st* stream, A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "DF_LAUNCH: the argument count differs from the kernel's parameters");
  auto l = std::make_unique<TypedLaunch<P...>>(site, kernel, grid, block, smem_bytes, std::forward<A>(args)...);
  int e = launch_kernel(stream, std::move(l));
#if defined(DIFFUSE_SYNC_LAUNCHES)
  if (e == 0) e = wait_after_launch(stream);
#endif
  if (e != 0) [[unlikely]]
    ::diffuse::detail::fail(site.file, site.line, nullptr,
                            ::diffuse::detail::concat("launch of ", site.kernel, " failed: ", error_name(e), " (", e,
                                                      "): ", error_string(e)));
}

}  // namespace diffuse::sim::detail

#define DF_LAUNCH(kernel, grid, block, smem_bytes, stream, ...)                                               \
  ::diffuse::sim::detail::launch(::diffuse::simt::detail::LaunchSite{#kernel, __FILE__, __LINE__}, kernel, (grid), \
                                 (block), (smem_bytes), static_cast<df_stream_t>(stream) __VA_OPT__(, ) __VA_ARGS__)
