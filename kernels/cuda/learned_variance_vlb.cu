// kernels/cuda/learned_variance_vlb.cu: the VLB term of a learned variance on the GPU, per sample,
// with its derivative in the raw variance channels (kernels/learned_variance_vlb.h). The
// readable reference is models/diffusion/hybrid_loss.cpp's learned_variance_vlb on the cpu, whose
// math (objective.h: p_mean_variance, q_posterior, normal_kl, the discretized decoder) this kernel
// follows line for line, in double like the reference, so the two differ by the f32 roundings of
// the inputs and outputs only. B N closed-form terms beside a UNet forward: FP64 throughput does
// not matter here.
//
// One block per sample: each thread takes elements j, j + 256, ... of the sample's N, writes their
// derivatives, and the block sums its threads' terms in a fixed tree (the same bits every run).
#include "kernels/cuda/portable.cuh"

#include <cmath>
#include <utility>

#include "core/check.h"
#include "core/stream.h"
#include "kernels/cuda/common.cuh"
#include "kernels/learned_variance_vlb.h"

namespace diffuse::DF_BACKEND {

namespace {

constexpr int kBlock = 256;

// Element j's term and its derivative in the raw variance channel (before the 1 / (N ln 2) of
// bits per dim). Decoder: step 0's discretized decoder; otherwise the KL to the posterior. A
// template, so each loop below holds only its own branch's values in registers (one loop with both
// branches spilled on sm_90).
struct VlbConstants {
  double a, s, c1, c2, log_beta, plvc, dlv_dr;
};
template <bool Decoder>
DF_DEVICE_INLINE double vlb_element(const VlbConstants& c, float z, float x, float eps, float r, double* d) {
  // p_mean_variance from eps: x0 = (z - s eps) / a, then the posterior mean, each rounded to f32
  // as the reference's tensors are.
  const float x0p = static_cast<float>((z - c.s * eps) / c.a);
  const float mu = static_cast<float>(c.c1 * x0p + c.c2 * z);
  const double v = 0.5 * (static_cast<double>(r) + 1.0);
  const double lv = v * c.log_beta + (1.0 - v) * c.plvc;  // learned_log_variance
  if constexpr (Decoder) {
    // -log p(x0 | x_1): the discretized decoder with log_scale = lv / 2 (kernels/learned_variance_vlb.h).
    const kernels::DecoderTerm dec = kernels::discretized_gaussian_decoder(x, mu, 0.5 * lv);
    *d = -dec.dlog_p_dlog * 0.5 * c.dlv_dr;
    return -dec.log_p;
  } else {
    // KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)), normal_kl and normal_kl_dlv2.
    const float qm = static_cast<float>(c.c1 * x + c.c2 * z);
    const double dm = static_cast<double>(qm) - mu, e = exp(c.plvc - lv), f = dm * dm * exp(-lv);
    *d = 0.5 * (1.0 - e - f) * c.dlv_dr;
    return 0.5 * (-1.0 + lv - c.plvc + e + f);
  }
}

template <bool Decoder>
DF_DEVICE_INLINE double vlb_sample(const VlbConstants& c, const float* __restrict__ x0, const float* __restrict__ xt,
                                   const float* __restrict__ pred, const float* __restrict__ raw,
                                   float* __restrict__ dvalue, int64_t from, int64_t to, double to_bpd) {
  double acc = 0;
  for (int64_t j = from + threadIdx.x; j < to; j += kBlock) {
    double d;
    acc += vlb_element<Decoder>(c, xt[j], x0[j], pred[j], raw[j], &d);
    dvalue[j] = static_cast<float>(d * to_bpd);
  }
  return acc;
}

__global__ void __launch_bounds__(kBlock) learned_variance_vlb_kernel(
    const double* __restrict__ table, const float* __restrict__ steps, const float* __restrict__ x0,
    const float* __restrict__ xt, const float* __restrict__ pred, const float* __restrict__ raw,
    float* __restrict__ value, float* __restrict__ dvalue, int64_t n, int T) {
  DF_SHARED(double, partial, kBlock);
  const int64_t b = blockIdx.x;
  // The step, clamped into the table: the host checks the steps it stages (noise_levels).
  const int k = static_cast<int>(steps[b]);
  const int i = k < 0 ? 0 : k >= T ? T - 1 : k;
  const double* t = table + static_cast<int64_t>(i) * kLearnedVarianceVlbConstants;
  const VlbConstants c{t[0], t[1], t[2], t[3], t[4], t[5], 0.5 * (t[4] - t[5])};
  const double to_bpd = 1.0 / (static_cast<double>(n) * 0.69314718055994530942);
  // i is the same for the whole block: one loop or the other, no divergence.
  partial[threadIdx.x] = i == 0 ? vlb_sample<true>(c, x0, xt, pred, raw, dvalue, b * n, (b + 1) * n, to_bpd)
                                : vlb_sample<false>(c, x0, xt, pred, raw, dvalue, b * n, (b + 1) * n, to_bpd);
  __syncthreads();
  for (int w = kBlock / 2; w > 0; w /= 2) {
    if (static_cast<int>(threadIdx.x) < w) partial[threadIdx.x] += partial[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) value[b] = static_cast<float>(partial[0] * to_bpd);
}

}  // namespace

void learned_variance_vlb_forward(const double* table, int T, const float* steps, const float* x0, const float* xt,
                                  const float* pred, const float* raw, float* value, float* dvalue, int64_t batch,
                                  int64_t n, void* stream) {
  DF_CHECK(batch >= 0 && n > 0 && T >= 1, "learned_variance_vlb: batch ", batch, ", ", n, " elements, T ", T);
  DF_CHECK(batch <= 0x7fffffff, "learned_variance_vlb: batch ", batch);
  if (batch == 0) return;
  DF_CHECK(table && steps && x0 && xt && pred && raw && value && dvalue, "learned_variance_vlb: null pointer");
  DF_LAUNCH(learned_variance_vlb_kernel, dim3(static_cast<unsigned>(batch)), dim3(kBlock), 0, stream, table, steps,
            x0, xt, pred, raw, value, dvalue, n, T);
}

}  // namespace diffuse::DF_BACKEND

// ---- The Tensor-level op on a GPU -----------------------------------------------------------------
// the Tensor-level learned-variance VLB term on a GPU
// (kernels/learned_variance_vlb.h): checks, f32 copies of bf16 inputs, the launch on the
// current stream.
#if DF_DEVICE_BUILD

namespace diffuse::cuda {

std::pair<Tensor, Tensor> learned_variance_vlb_forward(const Tensor& table, const Tensor& steps, const Tensor& x0,
                                                       const Tensor& xt, const Tensor& pred, const Tensor& raw) {
  DF_CHECK(raw.defined() && raw.dim() >= 2, "learned_variance_vlb on cuda: raw variance ",
           raw.defined() ? raw.str() : std::string("undefined"), " (expected (B, ...))");
  const int64_t B = raw.size(0), n = raw.numel() / B;
  DF_CHECK(table.dtype() == DType::i64 && table.numel() % kLearnedVarianceVlbConstants == 0 && table.numel() > 0,
           "learned_variance_vlb on cuda: constants ", table.str());
  DF_CHECK(steps.dtype() == DType::f32 && steps.numel() == B, "learned_variance_vlb on cuda: steps ", steps.str(),
           " for a batch of ", B);
  for (const Tensor* t : {&x0, &xt, &pred})
    DF_CHECK(t->shape() == raw.shape(), "learned_variance_vlb on cuda: ", t->str(), " against raw ", raw.str());
  for (const Tensor* t : {&table, &steps, &x0, &xt, &pred})
    DF_CHECK(t->device() == raw.device(), "learned_variance_vlb on cuda: ", t->str(), " on ", t->device().str(),
             ", raw on ", raw.device().str());
  set_current_device(raw.device());
  const Tensor x = x0.to(DType::f32), z = xt.to(DType::f32), e = pred.to(DType::f32), r = raw.to(DType::f32);
  Tensor value = Tensor::empty({B}, DType::f32, raw.device());
  Tensor dvalue = Tensor::empty(raw.shape(), DType::f32, raw.device());
  cuda::learned_variance_vlb_forward(reinterpret_cast<const double*>(table.data<int64_t>()),
                                     static_cast<int>(table.numel() / kLearnedVarianceVlbConstants),
                                     steps.data<float>(), x.data<float>(), z.data<float>(), e.data<float>(),
                                     r.data<float>(), value.data<float>(), dvalue.data<float>(), B, n,
                                     current_stream());
  return {value, dvalue};
}

}  // namespace diffuse::cuda

#endif  // DF_DEVICE_BUILD
