// kernels/cuda/time_embedding.cu under the emulator ([emu]) and on a GPU ([cuda]), against the
// formula of kernels/time_embedding.h evaluated in double here.
//
// Tolerance: the kernel evaluates the same formula in double and rounds once to f32; the double
// results differ by a few double ulps at most (operation order, CUDA's 2-ulp sin/cos), which can
// flip that one rounding: one f32 ulp of a value in [-1, 1], atol 1.2e-7.
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "core/device.h"
#include "core/stream.h"
#include "core/tensor.h"
#include "kernels/cuda/time_embedding.h"
#include "tests/emu_test_util.h"
#include "tests/test_util.h"

using namespace diffuse;
using namespace diffuse::test;
using kernels::TimeEmbeddingOptions;

namespace {

std::vector<float> reference(const std::vector<float>& t, int dim, const TimeEmbeddingOptions& o) {
  const int half = dim / 2;
  std::vector<float> out(t.size() * dim, 0.f);
  for (size_t b = 0; b < t.size(); ++b) {
    for (int i = 0; i < half; ++i) {
      const double freq = std::exp(-std::log(double(o.max_period)) * i / (half - double(o.downscale_freq_shift)));
      const double arg = double(o.scale) * t[b] * freq;
      const double first = o.flip_sin_to_cos ? std::cos(arg) : std::sin(arg);
      const double second = o.flip_sin_to_cos ? std::sin(arg) : std::cos(arg);
      out[b * dim + i] = static_cast<float>(first);
      out[b * dim + half + i] = static_cast<float>(second);
    }
  }
  return out;
}

std::vector<TimeEmbeddingOptions> option_sets() {
  TimeEmbeddingOptions ddpm{10000.f, false, 1.f, 1.f}, adm{10000.f, true, 0.f, 1.f}, scaled{100.f, true, 1.f, 1000.f};
  return {TimeEmbeddingOptions{}, ddpm, adm, scaled};
}

}  // namespace

#if defined(DIFFUSE_HAVE_SIMT)

TEST_CASE("timestep_embedding under the emulator matches the double formula", "[emu][kernels]") {
  for_each_order([] {
    for (int64_t B : {1L, 5L}) {
      for (int dim : {2, 7, 64, 129}) {
        for (const TimeEmbeddingOptions& o : option_sets()) {
          if (dim / 2 - o.downscale_freq_shift <= 0) continue;
          INFO("B=" << B << " dim=" << dim << " flip=" << o.flip_sin_to_cos << " shift=" << o.downscale_freq_shift);
          // Integer-valued and continuous timesteps, up to 1000.
          Tensor t = random_tensor({B}, 0.f, 1000.f);
          Tensor out = Tensor::empty({B, dim}).poison_();
          emu::timestep_embedding(t.data<float>(), out.data<float>(), B, dim, o, nullptr);
          const std::vector<float> want = reference(t.to_vector(), dim, o);
          INFO(compare(out.to_vector(), want).str());
          CHECK(allclose(out.to_vector(), want, 0.0, 1.2e-7));
        }
      }
    }
  });
}

#endif  // DIFFUSE_HAVE_SIMT

TEST_CASE("timestep_embedding on the GPU matches the double formula", "[cuda][kernels]") {
#if defined(DIFFUSE_HAVE_CUDA)
  if (!cuda_available()) return;
  for (const TimeEmbeddingOptions& o : option_sets()) {
    const int64_t B = 257;
    const int dim = 321;
    Tensor t = random_tensor({B}, 0.f, 1000.f);
    Tensor out = Tensor::empty({B, dim}, DType::f32, Device::cuda(0)).poison_();
    cuda::timestep_embedding(t.to(Device::cuda(0)).data<float>(), out.data<float>(), B, dim, o, current_stream());
    CHECK(allclose(out.to_vector(), reference(t.to_vector(), dim, o), 0.0, 1.2e-7));
  }
#endif
}
