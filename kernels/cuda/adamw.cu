// kernels/cuda/adamw.cu: AdamW, the gradient clipping factor, the EMA and the bf16 weight copy in
// one pass over the flat parameter buffers (formula in kernels/adamw.h; the CPU loop it
// mirrors is models/train/optim.cpp adamw_update, whose expressions it repeats in order).
//
// The update is pure bandwidth: per parameter it reads w, g, m, v, ema (20 bytes) and writes
// w, m, v, ema and the bf16 copy (18 bytes), so the buffers are walked with 16-byte accesses
// (8 bytes for the bf16 copy) in a grid-stride loop. Doing it in one launch over the whole model
// instead of one per tensor avoids hundreds of tiny launches per step. The clipping factor is
// computed by every thread from the squared norm in device memory, so clipping needs no host
// round trip between the norm reduction and the update.
#include "kernels/cuda/portable.cuh"

#include "core/philox.h"
#include "kernels/adamw.h"
#include "kernels/cuda/common.cuh"

namespace diffuse::DF_BACKEND {

namespace {

using kernels::AdamWParams;

constexpr int kBlock = 256;

// Constants of the step, from AdamWParams: on the host (passed by value), or by each thread from
// device memory (a graph replay). Every operation is explicitly rounded, so both give the bits the
// CPU loop's constants have (nvcc would otherwise contract 1 - lr * wd into an FMA).
struct StepConsts {
  float decay_factor;  // 1 - lr * wd
  float step_size;     // lr / bc1
  float b1, b2, c1, c2;
  float bc2_sqrt, eps;
  float d, cd;         // ema decay and 1 - decay
  float max_norm;
  int skip_nonfinite;
};

DF_HD_INLINE StepConsts consts_of(const AdamWParams& p) {
  using namespace philox_detail;  // mul/add/div rounded alike on the host and the device
  StepConsts s;
  s.decay_factor = add(1.f, -mul(p.lr, p.weight_decay));
  s.step_size = div(p.lr, p.bc1);
  s.b1 = p.beta1, s.b2 = p.beta2, s.c1 = add(1.f, -p.beta1), s.c2 = add(1.f, -p.beta2);
  s.bc2_sqrt = p.bc2_sqrt, s.eps = p.eps;
  s.d = p.ema_decay, s.cd = add(1.f, -p.ema_decay);
  s.max_norm = p.max_grad_norm;
  s.skip_nonfinite = p.skip_nonfinite;
  return s;
}

DF_DEVICE_INLINE void update_one(float& w, float g, float& m, float& v, float* ema, bool decay, const StepConsts& s) {
  const float mi = s.b1 * m + s.c1 * g;
  const float vi = s.b2 * v + s.c2 * g * g;
  m = mi;
  v = vi;
  float wi = decay ? w * s.decay_factor : w;
  wi -= s.step_size * mi / (sqrtf(vi) / s.bc2_sqrt + s.eps);
  w = wi;
  if (ema) *ema = s.d * *ema + s.cd * wi;
}

__global__ void __launch_bounds__(kBlock) adamw_update_kernel(float* __restrict__ w, const float* __restrict__ g,
                                                              float* __restrict__ m, float* __restrict__ v,
                                                              float* __restrict__ ema,
                                                              __nv_bfloat16* __restrict__ w_bf16,
                                                              const uint8_t* __restrict__ decay_mask,
                                                              const float* __restrict__ grad_sumsq, int64_t n,
                                                              StepConsts s, const AdamWParams* __restrict__ dp,
                                                              bool vec) {
  if (dp) s = consts_of(*dp);
  // A non-finite norm: every thread leaves its elements alone (no barrier, so returning is safe).
  if (s.skip_nonfinite && grad_sumsq && !isfinite(*grad_sumsq)) return;
  // torch.nn.utils.clip_grad_norm_: scale by max_norm / (norm + 1e-6) when that is below 1.
  float clip = 1.0f;
  if (grad_sumsq && s.max_norm > 0.0f) {
    const float factor = s.max_norm / (sqrtf(*grad_sumsq) + 1e-6f);
    if (factor < 1.0f) clip = factor;
  }
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t np = vec ? n / 4 : 0;
  for (int64_t c = tid; c < np; c += stride) {
    const int64_t i = 4 * c;
    float4 wv = *reinterpret_cast<float4*>(w + i);
    const float4 gv = *reinterpret_cast<const float4*>(g + i);
    float4 mv = *reinterpret_cast<float4*>(m + i);
    float4 vv = *reinterpret_cast<float4*>(v + i);
    float4 ev = ema ? *reinterpret_cast<float4*>(ema + i) : make_float4(0.f, 0.f, 0.f, 0.f);
    uchar4 dm = decay_mask ? *reinterpret_cast<const uchar4*>(decay_mask + i) : make_uchar4(1, 1, 1, 1);
    float* e = ema ? &ev.x : nullptr;
    update_one(wv.x, gv.x * clip, mv.x, vv.x, e, dm.x, s);
    update_one(wv.y, gv.y * clip, mv.y, vv.y, e ? &ev.y : nullptr, dm.y, s);
    update_one(wv.z, gv.z * clip, mv.z, vv.z, e ? &ev.z : nullptr, dm.z, s);
    update_one(wv.w, gv.w * clip, mv.w, vv.w, e ? &ev.w : nullptr, dm.w, s);
    *reinterpret_cast<float4*>(w + i) = wv;
    *reinterpret_cast<float4*>(m + i) = mv;
    *reinterpret_cast<float4*>(v + i) = vv;
    if (ema) *reinterpret_cast<float4*>(ema + i) = ev;
    if (w_bf16) {
      // Two bf16 pairs: one 8-byte store.
      __nv_bfloat162 lo = __floats2bfloat162_rn(wv.x, wv.y), hi = __floats2bfloat162_rn(wv.z, wv.w);
      uint2 bits;
      memcpy(&bits.x, &lo, 4);
      memcpy(&bits.y, &hi, 4);
      *reinterpret_cast<uint2*>(w_bf16 + i) = bits;
    }
  }
  for (int64_t i = 4 * np + tid; i < n; i += stride) {
    float wi = w[i], mi = m[i], vi = v[i];
    update_one(wi, g[i] * clip, mi, vi, ema ? ema + i : nullptr, decay_mask ? decay_mask[i] != 0 : true, s);
    w[i] = wi, m[i] = mi, v[i] = vi;
    if (w_bf16) w_bf16[i] = __float2bfloat16_rn(wi);
  }
}

}  // namespace

void adamw_update(float* w, const float* g, float* m, float* v, float* ema, void* w_bf16, const uint8_t* decay_mask,
                  const float* grad_sumsq, int64_t n, const AdamWParams& p, void* stream,
                  const AdamWParams* device_params) {
  DF_CHECK(n >= 0, "adamw_update: negative size ", n);
  if (n == 0) return;
  DF_CHECK(w && g && m && v, "adamw_update: null buffer");
  // Staged scalars are checked where they are staged (models/train/optim.cpp).
  DF_CHECK(device_params || (p.bc1 > 0 && p.bc2_sqrt > 0),
           "adamw_update: bias corrections must be positive (step t >= 1)");
  // The CPU loop's constants, rounded the same way.
  const StepConsts s = consts_of(p);
  // The vector path needs 16-byte aligned f32 buffers, an 8-byte aligned bf16 copy and a 4-byte
  // aligned mask, which the flat buffers of models/train (64-byte segments) always are.
  auto aligned = [](const void* q, uintptr_t a) { return q == nullptr || reinterpret_cast<uintptr_t>(q) % a == 0; };
  const bool vec = aligned(w, 16) && aligned(g, 16) && aligned(m, 16) && aligned(v, 16) && aligned(ema, 16) &&
                   aligned(w_bf16, 8) && aligned(decay_mask, 4);
  DF_LAUNCH(adamw_update_kernel, dim3(detail::grid_for((n + 3) / 4, kBlock)), dim3(kBlock), 0, stream, w, g, m, v, ema,
            static_cast<__nv_bfloat16*>(w_bf16), decay_mask, grad_sumsq, n, s, device_params, vec);
}

}  // namespace diffuse::DF_BACKEND
