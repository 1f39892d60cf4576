// kernels/adamw.h: launcher of kernels/cuda/adamw.cu, the fused AdamW + EMA update over one
// flat f32 parameter buffer (diffuse::cuda on the GPU, diffuse::emu under the emulator). The
// per-element update is models/train/optim.h's adamw_update (PyTorch's torch.optim.AdamW):
//   g  = g * clip                     (clip = max_norm / (sqrt(grad_sumsq) + 1e-6) when that is < 1)
//   m  = b1 m + (1 - b1) g ;  v = b2 v + (1 - b2) g^2
//   w  = w * (1 - lr wd) - (lr / bc1) * m / (sqrt(v) / bc2_sqrt + eps)
//   ema = d ema + (1 - d) w           (when ema is given)
//   w_bf16 = bf16(w)                  (when given: the weights the bf16 forward pass reads)
// With skip_nonfinite and a squared norm that is not finite (an overflow or NaN somewhere in the
// gradient) nothing is written: the step is skipped on the device, without a host round trip.
#pragma once

#include <cstdint>

namespace diffuse::kernels {
// One step's scalars, as the kernel and the cpu update (models/train/optim.h adamw_update) take them;
// models/train/optim.h adamw_step_at fills them for step t.
struct AdamWParams {
  float lr = 1e-4f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, weight_decay = 0.f;
  float bc1 = 1.f, bc2_sqrt = 1.f;  // 1 - beta1^t and sqrt(1 - beta2^t) of this step t
  float ema_decay = 0.f;            // used when ema is given
  float max_grad_norm = 0.f;        // used when grad_sumsq is given; <= 0: no clipping
  int skip_nonfinite = 0;           // with grad_sumsq: leave every buffer unchanged if it is not finite
};
}  // namespace diffuse::kernels

#define DIFFUSE_ADAMW_LAUNCHERS                                                                        \
  /* One launch over n elements; every pointer is device memory (host under the emulator).           \
     ema, w_bf16 (__nv_bfloat16[n]), decay_mask (u8[n]: weight decay where non-zero; null: all) and   \
     grad_sumsq (f32[1]: the squared global gradient norm, e.g. from reduce_all; null: no clipping)   \
     may be null. g is not modified. With device_params (device memory) the kernel reads the step's   \
     scalars there when it runs instead of taking p: a captured CUDA graph then replays each step     \
     with the scalars staged for it. */                                                               \
  void adamw_update(float* w, const float* g, float* m, float* v, float* ema, void* w_bf16,           \
                    const uint8_t* decay_mask, const float* grad_sumsq, int64_t n,                    \
                    const kernels::AdamWParams& p, void* stream,                                      \
                    const kernels::AdamWParams* device_params = nullptr);

namespace diffuse {
namespace cuda { DIFFUSE_ADAMW_LAUNCHERS }
namespace emu { DIFFUSE_ADAMW_LAUNCHERS }
}  // namespace diffuse
