// bench/cpu_conv.cpp: cpu conv2d (NHWC) at the shapes of the MNIST-size UNet (batch 64, 28x28 /
// 14x14 / 7x7, 32-256 channels, concatenated skips), forward, backward-data and backward-weights,
// through the same kernels:: entry points the library uses; plus the plain GEMM of the same size
// as the ceiling a conv built on it can reach.
// Flops per pass: 2 * B * Ho * Wo * Cout * KH * KW * Cin (the same count for all three passes).
// Prints the median and the minimum wall time of repeated runs after a warm-up (the machine is
// often shared: the median says what a user sees, the minimum what the code does uncontended),
// GFLOP/s at the minimum, and the median process cpu time per call, which contention inflates
// far less than wall time: with OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 it is the work itself.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <functional>
#include <string>
#include <vector>

#include "kernels/conv2d.h"
#include "kernels/gemm.h"

using namespace diffuse;

namespace {

struct Timing {
  double median, min, cpu;
};

double cpu_ms() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

Timing time_ms(const std::function<void()>& f, int reps) {
  f();  // warm-up: scratch buffers, OpenMP and OpenBLAS thread pools
  std::vector<double> t, c;
  for (int i = 0; i < reps; ++i) {
    const double c0 = cpu_ms();
    auto a = std::chrono::steady_clock::now();
    f();
    t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - a).count());
    c.push_back(cpu_ms() - c0);
  }
  std::sort(t.begin(), t.end());
  std::sort(c.begin(), c.end());
  return {t[t.size() / 2], t.front(), c[c.size() / 2]};
}

struct Shape4 {
  int64_t B, H, Cin, Cout, K;
  int stride, pad;
};

}  // namespace

int main(int argc, char** argv) {
  const int reps = argc > 1 ? std::atoi(argv[1]) : 10;
  std::printf("gemm backend: %s; f32; wall ms median (min), GFLOP/s at the min, cpu ms median\n",
              kernels::gemm_backend());
  std::printf("%-34s %26s %26s %26s %26s\n", "x (B,H,W,Cin) * w k/s/p -> Cout", "forward", "backward-data",
              "backward-weights", "gemm of fwd size");
  const Shape4 shapes[] = {
      {64, 28, 1, 32, 3, 1, 1},    // conv_in
      {64, 28, 32, 32, 3, 1, 1},   {64, 28, 64, 32, 3, 1, 1},  {64, 28, 32, 32, 3, 2, 1},
      {64, 14, 64, 64, 3, 1, 1},   {64, 14, 128, 64, 3, 1, 1}, {64, 14, 64, 64, 3, 2, 1},
      {64, 7, 128, 128, 3, 1, 1},  {64, 7, 256, 128, 3, 1, 1},
      {64, 28, 64, 32, 1, 1, 0},   {64, 14, 128, 64, 1, 1, 0}, {64, 7, 256, 128, 1, 1, 0},
  };
  double total_ms = 0, total_cpu = 0;
  for (const Shape4& s : shapes) {
    Tensor x = Tensor::randn({s.B, s.H, s.H, s.Cin}, 1), w = Tensor::randn({s.Cout, s.K, s.K, s.Cin}, 2),
           b = Tensor::randn({s.Cout}, 3);
    kernels::Conv2dParams p{s.stride, s.pad};
    Shape ys = kernels::conv2d_output_shape(x.shape(), w.shape(), p);
    Tensor gy = Tensor::randn(ys, 4);
    const int64_t M = ys[0] * ys[1] * ys[2], N = s.Cout, K = s.K * s.K * s.Cin;
    const double flops = 2.0 * static_cast<double>(M * N * K);
    Timing f = time_ms([&] { kernels::conv2d_forward(x, w, b, p); }, reps);
    Timing bd = time_ms([&] { kernels::conv2d_backward(gy, x, w, p, true, false, false); }, reps);
    Timing bw = time_ms([&] { kernels::conv2d_backward(gy, x, w, p, false, true, true); }, reps);
    std::vector<float> A(static_cast<size_t>(M * K), 0.5f), C(static_cast<size_t>(M * N));
    Timing gm = time_ms(
        [&] { kernels::gemm(false, true, M, N, K, 1.f, A.data(), K, w.data<float>(), K, 0.f, C.data(), N); }, reps);
    char name[64];
    std::snprintf(name, sizeof name, "(%ld,%ld,%ld,%ld) %ldx%ld/%d/%d ->%ld", (long)s.B, (long)s.H, (long)s.H,
                  (long)s.Cin, (long)s.K, (long)s.K, s.stride, s.pad, (long)s.Cout);
    auto cell = [&](Timing t) {
      char c[48];
      std::snprintf(c, sizeof c, "%6.2f (%6.2f) %4.0f %6.2f", t.median, t.min, flops / t.min / 1e6, t.cpu);
      return std::string(c);
    };
    std::printf("%-34s %26s %26s %26s %26s\n", name, cell(f).c_str(), cell(bd).c_str(), cell(bw).c_str(),
                cell(gm).c_str());
    total_ms += f.median + bd.median + bw.median;
    total_cpu += f.cpu + bd.cpu + bw.cpu;
  }
  std::printf("total fwd+bwd over the shapes: wall %.1f ms (medians), cpu %.1f ms (medians)\n", total_ms, total_cpu);
  return 0;
}
