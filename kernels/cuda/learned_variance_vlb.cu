// kernels/cuda/learned_variance_vlb.cu: the VLB term of a learned variance on the GPU, per sample,
// with its derivative in the raw variance channels (kernels/cuda/learned_variance_vlb.h). The
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

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/learned_variance_vlb.h"

namespace diffuse::DF_BACKEND {

namespace {

constexpr int kBlock = 256;

// P(N(0, 1) > u) through erfc: accurate in both tails (objective.cpp's upper_tail).
DF_DEVICE_INLINE double upper_tail(double u) { return 0.5 * erfc(u * 0.70710678118654752440); }
DF_DEVICE_INLINE double std_normal_pdf(double u) { return exp(-0.5 * u * u) * 0.39894228040143267794; }

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
    // -log p(x0 | x_1): the discretized decoder with log_scale = lv / 2 (objective.cpp).
    const double ls = 0.5 * lv, inv_std = exp(-ls);
    const double hi = inv_std * (x - mu + 1.0 / 255.0), lo = inv_std * (x - mu - 1.0 / 255.0);
    // The reference's branches need at most two tails: Q(lo) and Q(hi), or in the middle bins
    // with lo <= 0 the mirrored Q(-lo) and Q(-hi); each erfc is evaluated once, with the
    // reference's arguments.
    // The two edges go through one loop that is not unrolled, so the code holds one inlined double
    // erfc and one exp, not two of each (sm_90 spilled registers with two).
    const bool mirror = !(x < -0.999) && !(x > 0.999) && !(lo > 0);
    double q_lo = 0, q_hi = 0, pdf_lo = 0, pdf_hi = 0;
    DF_NO_UNROLL for (int edge = 0; edge < 2; ++edge) {
      const double u = edge == 0 ? lo : hi;
      const double q = upper_tail(mirror ? -u : u), pdf = std_normal_pdf(u);
      if (edge == 0) q_lo = q, pdf_lo = pdf;
      else q_hi = q, pdf_hi = pdf;
    }
    double p, dp;
    if (x < -0.999) {
      p = 1.0 - q_hi;
      dp = -hi * pdf_hi;
    } else if (x > 0.999) {
      p = q_lo;
      dp = lo * pdf_lo;
    } else {
      p = mirror ? q_hi - q_lo : q_lo - q_hi;
      dp = lo * pdf_lo - hi * pdf_hi;
    }
    *d = -(p < 1e-12 ? 0.0 : dp / p) * 0.5 * c.dlv_dr;
    return -log(fmax(p, 1e-12));
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
