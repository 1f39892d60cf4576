// kernels/time_embedding.cpp: the sinusoidal timestep embedding (kernels/time_embedding.h): the cpu
// loop, and the Tensor-level op, which runs on t's device: the cpu here or
// kernels/cuda/time_embedding.cu.
//
// Glossary: B timesteps; dim the embedding width; half = dim / 2 frequencies.
// The angle t * freq reaches ~1e3 rad for t = 1000; evaluated in float its rounding (ulp(1000)
// = 6e-5) would pass straight into sin/cos, so the angle and sin/cos are done in double and the
// result is rounded once. The table is a few KB; no fast path is needed.
#include "kernels/time_embedding.h"

#include <cmath>
#include <vector>

#include "core/check.h"
#include "core/profile.h"
#include "kernels/backend.h"

namespace diffuse::kernels {

namespace cpu {

void timestep_embedding(const Tensor& t, int dim, const TimeEmbeddingOptions& opt, Tensor& out) {
  DF_CHECK(t.dim() == 1, "timestep_embedding: t must be (B), got ", t.str());
  DF_CHECK(dim > 0, "timestep_embedding: dim = ", dim);
  DF_CHECK(t.dtype() == DType::f32 || t.dtype() == DType::f64, "timestep_embedding: t is ", t.str());
  DF_CHECK(out.dtype() == t.dtype(), "timestep_embedding: output ", out.str(), " for ", t.str());
  const int64_t B = t.size(0);
  DF_CHECK(out.shape() == Shape({B, dim}), "timestep_embedding: output ", out.str(), ", want (", B, ", ", dim, ")");
  const int half = dim / 2;
  const double denom = static_cast<double>(half) - static_cast<double>(opt.downscale_freq_shift);
  DF_CHECK(half == 0 || denom > 0, "timestep_embedding: half (", half, ") - downscale_freq_shift (",
           opt.downscale_freq_shift, ") must be > 0");
  std::vector<double> freq(static_cast<size_t>(half));
  const double lnp = std::log(static_cast<double>(opt.max_period));
  for (int i = 0; i < half; ++i) freq[i] = std::exp(-lnp * i / denom);
  const std::vector<float> tv = t.to_vector();  // exact for f32; f64 timesteps are rounded to f32 ...
  const bool f64 = t.dtype() == DType::f64;
  for (int64_t b = 0; b < B; ++b) {
    // ... unless t is f64: then read it in full.
    const double tb = f64 ? t.data<double>()[b] : static_cast<double>(tv[b]);
    for (int i = 0; i < half; ++i) {
      const double arg = static_cast<double>(opt.scale) * tb * freq[i];
      const double first = opt.flip_sin_to_cos ? std::cos(arg) : std::sin(arg);
      const double second = opt.flip_sin_to_cos ? std::sin(arg) : std::cos(arg);
      const int64_t o = b * dim;
      if (f64) {
        out.data<double>()[o + i] = first;
        out.data<double>()[o + half + i] = second;
      } else {
        out.data<float>()[o + i] = static_cast<float>(first);
        out.data<float>()[o + half + i] = static_cast<float>(second);
      }
    }
    if (dim % 2) {  // odd width: one zero column at the end (diffusers' F.pad(emb, (0, 1)))
      if (f64)
        out.data<double>()[b * dim + dim - 1] = 0;
      else
        out.data<float>()[b * dim + dim - 1] = 0;
    }
  }
}

}  // namespace cpu

}  // namespace diffuse::kernels

namespace diffuse::kernels {

Tensor timestep_embedding(const Tensor& t, int dim, const TimeEmbeddingOptions& opt) {
  DF_PROFILE("timestep_embedding");
  DF_CHECK(t.defined(), "timestep_embedding: undefined t");
  DF_CHECK(t.dim() == 1, "timestep_embedding: t must be (B), got ", t.str());
  DF_ON_CUDA(t.device(), cuda::timestep_embedding(t, dim, opt));
  if (!t.device().is_cpu()) unsupported_device("timestep_embedding", t.device());
  Tensor out = Tensor::empty({t.size(0), dim}, t.dtype(), t.device());
  cpu::timestep_embedding(t, dim, opt, out);
  return out;
}

}  // namespace diffuse::kernels
