// bench/kernels: every hand-written kernel of kernels/cuda on one GPU, against the hardware's
// measured limits and against cuBLAS / the copy engine where one does the same work. The PyTorch
// side of the same ops and shapes is bench/torch_kernels.py; bench/kernels.sh runs both and prints
// the ratios against the kernels' targets (listed there).
//
//   build/bench/kernels [--only SUBSTRING] [--warmup 10] [--iters 50] [--json out.json] [--once] [--help]
//
// The ops that the op table holds (tests/kernels/op_table.h: noising, the time embedding, GroupNorm,
// the flash attention, softmax, cross-entropy, resampling, concat, the elementwise ops and
// reductions, AdamW, the sampler step) take their shapes, cost formulas and launches from it; the
// one row written here is the CIFAR UNet's attention through the dispatch (cuBLASLt).
//
// Shapes: the DDPM CIFAR-10 UNet at batch 128 (32x32x128 and 16x16x256 feature maps, images
// 32x32x3, 35.7M parameters) and a 64x64 model at batch 32 (64x64x128 maps, images 64x64x3).
// Attention runs at the target shapes, 256 and 1024 tokens of 4 heads of 64 channels; also
// the CIFAR UNet's own attention (one head of 256 channels), which the dispatch sends to cuBLASLt
// (the flash kernels have head dims 32 and 64).
//
// Each figure: the median of --iters runs after --warmup runs, each run timed alone with CUDA
// events on the stream, with L2 flushed before it (a memset of a buffer of twice the L2 size), so
// every run reads its inputs from device memory as a training step does. Achieved GB/s is the
// fewest bytes the kernel must move (each input read once, each output written once; the formula
// is written beside each case, here or in the op table) over the time; TFLOP/s the matrix FLOPs
// over the time. The shares are of the two ceilings this program measures when it starts: the copy
// bandwidth of one 1 GiB device-to-device cudaMemcpyAsync (bytes read plus bytes written) and the
// bf16 rate of one 8192^3 cuBLASLt GEMM (kernels/cuda/gemm_cuda.cpp, measure_bf16_gemm_tflops).
//
// Without a GPU it prints one line saying so and exits 0 (the device check is core/device.h's,
// as in bench/e2e).
//
// --once: a correctness run, not a measurement (the simulated device's ctest entry
// bench.kernels.sim): every case once, at small shapes of the same structure (odd sizes, batch 2;
// the tiny preset's parameters for AdamW), with no L2 flush and without the two ceilings (a 1 GiB
// copy and an 8192^3 GEMM), so that every launch and library call of this program runs against the
// simulated device's bounds and stream checks in seconds. Its timings mean nothing.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "core/check.h"
#include "core/device.h"

#if defined(DIFFUSE_HAVE_CUDA)
#include <cuda_runtime.h>

#include "core/cuda_check.h"
#include "core/stream.h"
#include "core/tensor.h"
#include "kernels/attention.h"
#include "kernels/gemm.h"
#include "tests/kernels/op_table.h"
#endif

using namespace diffuse;
using nlohmann::json;

namespace {

struct Options {
  std::string only;
  int warmup = 10, iters = 50;
  std::string json_path;
  bool once = false;
};

// The flags, through CLI11 like the diffuse CLI: --help lists them; a bad value is one message.
Options parse(int argc, char** argv) {
  Options o;
  CLI::App app{"bench/kernels: each hand-written CUDA kernel of diffuse, its time, GB/s and TFLOP/s, as a share "
               "of the device's measured copy bandwidth and bf16 matrix rate, beside cuBLAS / copy-engine "
               "baselines.\nWithout a GPU it prints one line saying so and exits 0.",
               "kernels"};
  app.add_option("--only", o.only, "only the cases whose kernel name contains this");
  app.add_option("--warmup", o.warmup, "untimed runs of each case first")->check(CLI::Range(1, 100000))
      ->capture_default_str();
  app.add_option("--iters", o.iters, "timed runs, each after an L2 flush; the median is reported")
      ->check(CLI::Range(1, 100000))->capture_default_str();
  app.add_option("--json", o.json_path, "also write the results as JSON to this path");
  app.add_flag("--once", o.once,
               "a correctness run: each case once at small shapes, no L2 flush and no ceilings measured "
               "(for the simulated device; the timings mean nothing)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    std::exit(app.exit(e));
  }
  if (o.once) o.warmup = 1, o.iters = 1;
  return o;
}

#if defined(DIFFUSE_HAVE_CUDA)

// One row of the table. bytes and flops come from the formula in `formula` (also in the JSON);
// `bound` says which ceiling the share is taken against.
struct Case {
  std::string kernel, shape, impl;  // impl: diffuse, diffuse-simt, diffuse-tc, cublas, copy-engine
  double bytes = 0, flops = 0;
  std::string formula;
  bool matrix_bound = false;
  std::function<void()> run;
};

class Bench {
 public:
  Bench(const Options& o, const CudaDeviceInfo& dev) : o_(o) {
    stream_ = static_cast<cudaStream_t>(current_stream());
    int l2 = 0;
    DF_CUDA_CHECK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev.index));
    flush_bytes_ = o.once ? 0 : std::max<size_t>(2 * static_cast<size_t>(l2), size_t{64} << 20);
    if (flush_bytes_) DF_CUDA_CHECK(cudaMalloc(&flush_, flush_bytes_));
    DF_CUDA_CHECK(cudaEventCreate(&e0_));
    DF_CUDA_CHECK(cudaEventCreate(&e1_));
  }
  ~Bench() {
    cudaFree(flush_);
    cudaEventDestroy(e0_);
    cudaEventDestroy(e1_);
  }

  // Median milliseconds of f, each run after an L2 flush (the memset is outside the events).
  double median_ms(const std::function<void()>& f) {
    for (int i = 0; i < o_.warmup; ++i) f();
    DF_CUDA_CHECK(cudaStreamSynchronize(stream_));
    std::vector<float> t(o_.iters);
    for (int i = 0; i < o_.iters; ++i) {
      if (flush_bytes_) DF_CUDA_CHECK(cudaMemsetAsync(flush_, i & 0xff, flush_bytes_, stream_));
      DF_CUDA_CHECK(cudaEventRecord(e0_, stream_));
      f();
      DF_CUDA_CHECK(cudaEventRecord(e1_, stream_));
      DF_CUDA_CHECK(cudaEventSynchronize(e1_));
      DF_CUDA_CHECK(cudaEventElapsedTime(&t[i], e0_, e1_));
    }
    std::nth_element(t.begin(), t.begin() + t.size() / 2, t.end());
    return t[t.size() / 2];
  }

  // The copy bandwidth: 1 GiB device to device, bytes read plus bytes written.
  double copy_gbps() {
    const size_t n = size_t{1} << 30;
    void *a = nullptr, *b = nullptr;
    DF_CUDA_CHECK(cudaMalloc(&a, n));
    DF_CUDA_CHECK(cudaMalloc(&b, n));
    DF_CUDA_CHECK(cudaMemsetAsync(a, 0x5a, n, stream_));
    const double ms = median_ms([&] { DF_CUDA_CHECK(cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice, stream_)); });
    cudaFree(a);
    cudaFree(b);
    return 2.0 * static_cast<double>(n) / (ms * 1e-3) / 1e9;
  }

 private:
  const Options& o_;
  cudaStream_t stream_ = nullptr;
  void* flush_ = nullptr;
  size_t flush_bytes_ = 0;
  cudaEvent_t e0_ = nullptr, e1_ = nullptr;
};

// Device tensors of random values (never zeros: see docs/benchmarks.md).
Tensor rnd(const Shape& s, DType t, uint64_t seed, float lo = -1.f, float hi = 1.f) {
  Tensor x = Tensor::empty(s, DType::f32, Device::cuda(0));
  x.uniform_(seed, 0, lo, hi);
  return t == DType::f32 ? x : x.to(t);
}

// The rows of the ops that the op table holds (tests/kernels/op_table.h: their shapes, cost formulas
// and launches are written there, beside their tests): the kernels of the table's cases for this run
// (measured, or --once), in the table's order.
void add_table_rows(std::vector<Case>& cs, bool once) {
  const test::BenchRun run = once ? test::BenchRun::once : test::BenchRun::measured;
  for (const test::OpCase& c : test::op_table()) {
    if (c.bench != run) continue;
    for (const test::BenchKernel& k : c.bench_kernels) {
      std::function<void()> launch = k.prepare();
      if (!launch) continue;  // the kernel does not take this shape (the tensor-core attention's dims)
      cs.push_back({k.kernel, c.bench_shape, k.impl, k.cost.bytes, k.cost.flops, k.formula, k.matrix_bound, launch});
    }
  }
}

// The cases. Tensors are captured by value in the closures (shared storage), so they live as long
// as the case. once (--once): the same cases at small shapes (odd sizes, batch 2), each chosen below
// beside its measured size.
std::vector<Case> make_cases(bool once) {
  std::vector<Case> cs;
  const auto pick = [once](auto measured, auto small) { return once ? small : measured; };

  {  // The CIFAR UNet's own attention: one head of 256 channels, through the dispatch (cuBLASLt, P kept).
    const int64_t B = pick(128, 2), T = pick(256, 17), C = pick(256, 40);
    Tensor q = rnd({B, T, C}, DType::bf16, 13), k = rnd({B, T, C}, DType::bf16, 14);
    Tensor v = rnd({B, T, C}, DType::bf16, 15);
    const std::string shape = std::string(once ? "small" : "cifar10 16x16") + " B" + std::to_string(B) + " T" +
                              std::to_string(T) + " 1x" + std::to_string(C);
    cs.push_back({"attention_forward", shape, "cublas", 0, 4.0 * B * T * T * C, "4 B T^2 C",
                  true, [=]() { (void)cuda::attention_forward(q, k, v, 1); }});
  }

  // ---- the ops of the op table: noising, the time embedding, GroupNorm + SiLU, the flash attention
  // (SIMT and tensor-core), softmax, cross-entropy, resampling, concat (and the copy engine), the
  // elementwise ops and bias gradient, axpby (and cuBLAS), AdamW + EMA, the gradient norm and the
  // sampler step ----
  add_table_rows(cs, once);
  return cs;
}

int run_gpu(const Options& o, const std::string& command) {
  const CudaDeviceInfo dev = cuda_devices().at(0);
  set_current_device(Device::cuda(0));
  Bench bench(o, dev);
  // --once times nothing worth a share: the two ceilings are skipped (NaN shares).
  const double copy = o.once ? std::nan("") : bench.copy_gbps();
  const double peak = o.once ? std::nan("") : cuda::measure_bf16_gemm_tflops();
  char date[32];
  const std::time_t now = std::time(nullptr);
  std::strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", std::gmtime(&now));
  std::printf("kernels on %s (sm_%d%d, %d SMs), %s\n", dev.name.c_str(), dev.cc_major, dev.cc_minor, dev.sm_count,
              date);
  if (o.once) {
    std::printf("--once: each case once at small shapes, a correctness run (no ceilings; the times mean nothing)\n\n");
  } else {
    std::printf("copy bandwidth (1 GiB device to device, read + write): %.0f GB/s; bf16 GEMM (8192^3, cuBLASLt): %.1f "
                "TFLOP/s\n",
                copy, peak);
    std::printf("median of %d runs after %d warm-up runs, L2 flushed before each run\n\n", o.iters, o.warmup);
  }

  json rows = json::array();
  {
    std::vector<Case> cases = make_cases(o.once);
    std::printf("%-38s %-42s %-12s %10s %9s %7s %9s %7s  %s\n", "kernel", "shape", "impl", "time_us", "GB/s", "%copy",
                "TFLOP/s", "%bf16", "formula");
    for (Case& c : cases) {
      if (!o.only.empty() && c.kernel.find(o.only) == std::string::npos) continue;
      const double ms = bench.median_ms(c.run);
      const double gbps = c.bytes / (ms * 1e-3) / 1e9, tflops = c.flops / (ms * 1e-3) / 1e12;
      char gb[16] = "-", gbs[16] = "-", tf[16] = "-", tfs[16] = "-";
      if (c.bytes > 0) std::snprintf(gb, sizeof gb, "%.0f", gbps);
      if (c.bytes > 0 && !o.once) std::snprintf(gbs, sizeof gbs, "%.0f%%", 100 * gbps / copy);
      if (c.flops > 0) std::snprintf(tf, sizeof tf, "%.1f", tflops);
      if (c.flops > 0 && !o.once) std::snprintf(tfs, sizeof tfs, "%.0f%%", 100 * tflops / peak);
      std::printf("%-38s %-42s %-12s %10.1f %9s %7s %9s %7s  %s\n", c.kernel.c_str(), c.shape.c_str(), c.impl.c_str(),
                  ms * 1e3, gb, gbs, tf, tfs, c.formula.c_str());
      std::fflush(stdout);
      json r = {{"kernel", c.kernel}, {"shape", c.shape},  {"impl", c.impl},
                {"time_us", ms * 1e3}, {"formula", c.formula}, {"bound", c.matrix_bound ? "matrix" : "memory"}};
      if (c.bytes > 0) r["bytes"] = c.bytes, r["gbps"] = gbps;
      if (c.flops > 0) r["flops"] = c.flops, r["tflops"] = tflops;
      if (c.bytes > 0 && !o.once) r["copy_share"] = gbps / copy;
      if (c.flops > 0 && !o.once) r["bf16_share"] = tflops / peak;
      rows.push_back(r);
    }
  }
  if (o.once) {
    DF_CUDA_CHECK(cudaDeviceSynchronize());
    std::printf("kernels --once: every case ran (%zu rows)\n", rows.size());
  }
  if (!o.json_path.empty()) {
    const json out = {{"device", dev.name},
                      {"compute_capability", std::to_string(dev.cc_major) + "." + std::to_string(dev.cc_minor)},
                      {"sms", dev.sm_count},
                      {"date", date},
                      {"command", command},
                      {"warmup", o.warmup},
                      {"iters", o.iters},
                      {"copy_gbps", copy},
                      {"bf16_gemm_tflops", peak},
                      {"rows", rows}};
    std::ofstream f(o.json_path);
    DF_CHECK(f.good(), "kernels: cannot write ", o.json_path);
    f << out.dump(2) << '\n';
    std::printf("wrote %s\n", o.json_path.c_str());
  }
  return 0;
}

#endif  // DIFFUSE_HAVE_CUDA

}  // namespace

int main(int argc, char** argv) try {
  const Options o = parse(argc, argv);
  std::string command;
  for (int i = 0; i < argc; ++i) {
    if (i) command += ' ';
    command += argv[i];
  }
  if (!cuda_available()) {
    std::printf("kernels: no GPU (%s); nothing measured\n", cuda_unavailable_reason().c_str());
    return 0;
  }
#if defined(DIFFUSE_HAVE_CUDA)
  return run_gpu(o, command);
#else
  return 0;
#endif
} catch (const std::exception& e) {
  std::fprintf(stderr, "kernels: %s\n", e.what());
  return 1;
}
