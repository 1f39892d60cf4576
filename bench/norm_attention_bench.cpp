// bench/norm_attention_bench.cpp: cpu GroupNorm (AdaGN + SiLU) and multi-head attention at the
// UNet's shapes, forward and backward, through the same kernels:: entry points the library uses.
// Prints the median of repeated runs after warm-up, with GB/s (GroupNorm: memory-bound) and
// GFLOP/s (attention: 4 B Tq Tk C flops forward for Q K^T and P V, 8 B Tq Tk C backward).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <vector>

#include "kernels/attention.h"
#include "kernels/gemm.h"
#include "kernels/group_norm.h"

using namespace diffuse;

namespace {

// The machine the cpu path targets is often shared (CI, builds): the median says what a user
// sees, the minimum what the code does uncontended. Both are printed.
struct Timing {
  double median, min;
};

Timing time_ms(const std::function<void()>& f, int reps) {
  f();  // warm-up: allocator caches, OpenMP and OpenBLAS thread pools
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    auto a = std::chrono::steady_clock::now();
    f();
    t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - a).count());
  }
  std::sort(t.begin(), t.end());
  return {t[t.size() / 2], t.front()};
}

}  // namespace

int main() {
  std::printf("gemm backend: %s\n", kernels::gemm_backend());
  for (bool silu : {false, true}) {
  std::printf("\nGroupNorm f32, G=32, gamma/beta + scale/shift%s\n", silu ? " + SiLU" : "");
  std::printf("%-20s %18s %10s %18s %10s\n", "shape (B,H,W,C)", "fwd ms med (min)", "GB/s(min)", "bwd ms med (min)",
              "GB/s(min)");
  for (auto [B, H, C] : {std::tuple<int64_t, int64_t, int64_t>{64, 32, 64}, {64, 16, 128}, {64, 8, 128}, {64, 7, 128}}) {
    Tensor x = Tensor::randn({B, H, H, C}, 1), dy = Tensor::randn({B, H, H, C}, 2);
    Tensor g = Tensor::randn({C}, 3), b = Tensor::randn({C}, 4), s = Tensor::randn({B, C}, 5),
           t = Tensor::randn({B, C}, 6);
    kernels::GroupNormOptions opt{32, 1e-5f, silu};
    kernels::GroupNormResult r;
    Timing fwd = time_ms([&] { r = kernels::group_norm_forward(x, g, b, s, t, opt); }, 30);
    Timing bwd = time_ms([&] { kernels::group_norm_backward(dy, x, r.mean, r.rstd, g, b, s, t, opt); }, 30);
    // Bytes: forward reads x twice (statistics, then normalise) and writes y; backward reads x and
    // dy and writes u, then reads u and x and writes dx.
    const double n = static_cast<double>(x.numel()) * 4;
    char name[64];
    std::snprintf(name, sizeof name, "(%ld,%ld,%ld,%ld)", (long)B, (long)H, (long)H, (long)C);
    std::printf("%-20s %9.3f (%6.3f) %10.2f %9.3f (%6.3f) %10.2f\n", name, fwd.median, fwd.min, 3 * n / fwd.min / 1e6,
                bwd.median, bwd.min, 6 * n / bwd.min / 1e6);
  }
  }
  std::printf("\nattention f32 (self, Tq = Tk = T)\n");
  std::printf("%-20s %18s %10s %18s %10s\n", "B,T,C,heads", "fwd ms med (min)", "GFLOP/s", "bwd ms med (min)",
              "GFLOP/s");
  for (auto [B, T, C, h] : {std::tuple<int64_t, int64_t, int64_t, int>{64, 49, 64, 1}, {64, 49, 128, 4},
                            {64, 196, 64, 1}, {64, 196, 128, 2}, {64, 196, 128, 4}, {64, 49, 128, 1}}) {
    Tensor q = Tensor::randn({B, T, C}, 1), k = Tensor::randn({B, T, C}, 2), v = Tensor::randn({B, T, C}, 3),
           d = Tensor::randn({B, T, C}, 4);
    kernels::AttentionResult r;
    Timing fwd = time_ms([&] { r = kernels::attention_forward(q, k, v, h); }, 30);
    Timing bwd = time_ms([&] { kernels::attention_backward(d, q, k, v, r, h); }, 30);
    const double fl = 4.0 * B * T * T * C;
    char name[64];
    std::snprintf(name, sizeof name, "%ld,%ld,%ld,%d", (long)B, (long)T, (long)C, h);
    std::printf("%-20s %9.3f (%6.3f) %10.2f %9.3f (%6.3f) %10.2f\n", name, fwd.median, fwd.min, fl / fwd.min / 1e6,
                bwd.median, bwd.min, 2 * fl / bwd.min / 1e6);
  }
  return 0;
}
