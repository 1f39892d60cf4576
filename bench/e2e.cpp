// bench/e2e: the end-to-end figures on one GPU: a whole training step and a whole sampler step of
// a UNet preset, as images/s and achieved TFLOP/s, with and without CUDA graphs.
//
//   build/bench/e2e [--preset ddpm-cifar10,fmnist] [--batch 128] [--sample-batch 256,1]
//                   [--sample-steps 20] [--sampler ddpm|ddim] [--graph both|on|off] [--fp32]
//                   [--warmup 5] [--iters 30] [--json out.json] [--flops-only] [--once]
//                   [--export-twin PRESET FILE] [--help]
//
// Training step (models/train/device_train_step.h, DeviceTrainStep): the batch copied into the step's
// buffer, noising with eps drawn in the kernel, the UNet forward under bf16 autocast, the eps
// MSE, backward, the global-norm clip, AdamW and the EMA in one launch. Data: random images of the
// preset's shape in [-1, 1], resident on the GPU (loading is not timed). Sampler step
// (models/diffusion/sampling_loop.h, SamplingLoop): one UNet forward without the tape and the
// fused sampler update, noise drawn in the kernel; a run of --sample-steps steps is timed and
// divided by the steps.
//
// Timing: CUDA events on the loop's own stream around each step (each sampling run), after
// --warmup steps (the first of which also captures the graph); the median of --iters. The events
// measure the device timeline, so launch gaps the host leaves in the uncaptured path count.
// Steady state: the host-device synchronisations (core/stream.h) and the allocator's cudaMalloc
// calls during the timed steps are printed and go to the JSON; both must be 0.
//
// FLOPs: counted from the model itself (unet_count below: the ops one recorded forward of the
// preset ran, at their shapes). Only the matrix products are counted (convolutions, linear layers,
// attention's two products), the usual "model FLOPs": a 3x3 conv from Cin to Cout at an Ho x Wo
// output is 2 B Ho Wo 9 Cin Cout, a linear (or 1x1 conv) of M rows 2 M In Out, attention over T
// tokens of C channels 4 B T^2 C (Q K^T and P V). A training step is 3x the forward (backward: the
// gradients of the input and of the weights of every product, 2x the forward). Achieved TFLOP/s is that count over the median time; its share of the
// GPU's bf16 matrix rate is against one large cuBLASLt GEMM timed at start-up.
//
// The PyTorch side is bench/torch_e2e.py; bench/e2e.sh runs both and prints the ratios. The
// PyTorch model is checked against this one: same parameter count, and (--export-twin) the same
// forward output for the same weights and input.
//
// Without a GPU it says so in one line and exits 0 (--flops-only and --export-twin still work).
//
// --once: a correctness run, not a measurement (the simulated device's ctest entry bench.e2e.sim,
// DIFFUSE_CUDA=SIM, runs it on the tiny preset): every case (each preset, training and each sampling
// batch, graph on and off) takes two untimed steps or runs (the first captures the graph) and one
// timed one, no reference GEMM is timed, and the run fails unless that timed step had no host
// synchronisation and no cudaMalloc and its loss or samples are finite.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "autograd/autocast.h"
#include "autograd/tape.h"
#include "core/allocator.h"
#include "core/check.h"
#include "core/device.h"
#include "core/safetensors.h"
#include "core/stream.h"
#include "models/diffusion/sampling_loop.h"
#include "models/diffusion/schedule.h"
#include "models/nn/unet.h"
#include "models/train/device_sampling.h"
#include "models/train/device_train_step.h"

#if defined(DIFFUSE_HAVE_CUDA)
#include <cuda_runtime.h>

#include "core/cuda_check.h"
#include "kernels/gemm.h"
#endif

using namespace diffuse;
using nlohmann::json;

namespace {

// ---- FLOPs and parameters of the model ----------------------------------------------------------

struct Count {
  double flops = 0;   // forward, matrix products only
  int64_t params = 0;
};

// One forward of the preset's UNet at batch 1 on the cpu, recorded on the tape, and the FLOPs of
// its matrix products read off the recorded ops at their shapes: the count is the model's own,
// whatever models/nn/unet.cpp builds. The weights are all 0 (Undrawn): only the shapes matter.
// Per op, with the output's element count n: conv2d (weight (Cout, KH, KW, Cin)) 2 n KH KW Cin;
// linear (weight (Out, In)) 2 n In; matmul (a (..., M, K)) 2 n K; attention (q (B, Tq, C), k
// (B, Tk, C)) 2 B Tq Tk C for Q K^T and as much for P V.
Count unet_count(const nn::UNetConfig& c) {
  nn::UNet net(c, nn::UNet::Undrawn{});
  Count k;
  k.params = net.num_parameters();
  DF_CHECK(ag::tape_size() == 0, "e2e: the tape holds ", ag::tape_size(), " nodes before the counting forward");
  net.forward(ag::Var(Tensor::zeros({1, c.image_size, c.image_size, c.in_channels})), Tensor::zeros({1}));
  for (const ag::TapeOp& op : ag::tape_ops()) {
    const double n = static_cast<double>(op.output.numel());
    const std::string_view name = op.name;
    if (name == "conv2d") k.flops += 2 * n * static_cast<double>(op.inputs[1].numel() / op.inputs[1][0]);
    else if (name == "linear") k.flops += 2 * n * static_cast<double>(op.inputs[1][1]);
    else if (name == "matmul") k.flops += 2 * n * static_cast<double>(op.inputs[0][-1]);
    else if (name == "attention")
      k.flops += 2.0 * static_cast<double>(op.inputs[1][1]) * static_cast<double>(op.inputs[0].numel() + n);
  }
  ag::clear_tape();
  return k;
}

// ---- options ---------------------------------------------------------------------------------

struct Options {
  std::vector<std::string> presets = {"ddpm-cifar10", "fmnist"};
  int batch = 128;
  std::vector<int> sample_batches = {256, 1};
  int sample_steps = 20;
  std::string sampler = "ddpm";
  std::vector<bool> graphs = {true, false};
  bool bf16 = true;
  int warmup = 5, iters = 30;
  std::string json_path;
  bool flops_only = false;
  bool once = false;
  std::string twin_preset, twin_path;  // --export-twin
};

// The flags, through CLI11 like the diffuse CLI: --help lists them; a bad value is one message.
Options parse(int argc, char** argv) {
  Options o;
  CLI::App app{"bench/e2e: end-to-end training and sampling throughput of UNet presets on one GPU.\n"
               "Without a GPU it prints one line saying so and exits 0.",
               "e2e"};
  std::string graph = "both";
  bool fp32 = false;
  std::vector<std::string> twin;
  app.add_option("--preset", o.presets, "presets, comma-separated")->delimiter(',')->capture_default_str();
  app.add_option("--batch", o.batch, "training batch")->check(CLI::Range(1, 1 << 20))->capture_default_str();
  app.add_option("--sample-batch", o.sample_batches, "sampling batches, comma-separated")
      ->delimiter(',')->check(CLI::Range(1, 1 << 20))->capture_default_str();
  app.add_option("--sample-steps", o.sample_steps, "steps of each timed sampling run")
      ->check(CLI::Range(1, 1 << 20))->capture_default_str();
  app.add_option("--sampler", o.sampler, "ddpm (ancestral, noise each step) or ddim")
      ->check(CLI::IsMember({"ddpm", "ddim"}))->capture_default_str();
  app.add_option("--graph", graph, "both, on (CUDA graphs) or off (every kernel launched)")
      ->check(CLI::IsMember({"both", "on", "off"}))->capture_default_str();
  app.add_flag("--fp32", fp32, "activations in f32 (default: bf16 autocast)");
  app.add_option("--warmup", o.warmup, "untimed steps / runs first (the first captures the graph)")
      ->check(CLI::Range(1, 1 << 20))->capture_default_str();
  app.add_option("--iters", o.iters, "timed steps / runs; the median is reported")
      ->check(CLI::Range(1, 1 << 20))->capture_default_str();
  app.add_option("--json", o.json_path, "also write the results as JSON to this path");
  app.add_flag("--flops-only", o.flops_only,
               "print parameters and FLOPs per image of each preset and exit (no GPU needed)");
  app.add_flag("--once", o.once,
               "each case once after two untimed steps (the first captures), no reference GEMM, and fail unless "
               "that step had no sync or allocation and the results are finite: a correctness run (e.g. on the "
               "simulated device), its times mean nothing")->excludes("--warmup", "--iters");
  app.add_option("--export-twin", twin, "PRESET FILE: write the preset's weights (zero-initialised layers drawn at "
                 "random), an input and diffuse's f32 cpu output to FILE (safetensors) and exit, for "
                 "bench/torch_e2e.py --check-twin (no GPU needed)")->expected(2);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    std::exit(app.exit(e));
  }
  o.graphs = graph == "both" ? std::vector<bool>{true, false} : std::vector<bool>{graph == "on"};
  o.bf16 = !fp32;
  if (o.once) o.warmup = 2, o.iters = 1;
  if (twin.size() == 2) {
    o.twin_preset = twin[0];
    o.twin_path = twin[1];
  }
  for (const std::string& p : o.presets) (void)nn::UNetConfig::preset(p);  // fails on an unknown name
  return o;
}

// The PyTorch twin's check (bench/torch_e2e.py --check-twin): the weights, an input and the f32 cpu
// output of the preset, in one safetensors file. The zero-initialised layers (conv2, proj,
// out_conv) get small random values, or every output would be 0 and the check would prove little.
void export_twin(const std::string& preset, const std::string& path) {
  const nn::UNetConfig c = nn::UNetConfig::preset(preset);
  nn::UNet net(c, 7);
  net.eval();
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (auto& [name, p] : net.named_parameters()) {
    bool zero = true;
    for (float v : p.value().to_vector()) zero = zero && v == 0.f;
    if (zero) p.value().copy_(Tensor::rand(p.shape(), 99, nn::name_hash(name), -0.05f, 0.05f));
    tensors.emplace_back("model." + name, p.value());
  }
  const Tensor x = Tensor::randn({2, c.image_size, c.image_size, c.in_channels}, 5);
  const Tensor t = Tensor::from_vector({3.f, 711.f}, {2});
  ag::NoGrad no_grad;
  const Tensor y = net.forward(ag::Var(x), t).value();
  tensors.emplace_back("x", x);
  tensors.emplace_back("t", t);
  tensors.emplace_back("y", y);
  write_safetensors_atomic(path, tensors);
  std::printf("wrote %s: %s weights, input and output\n", path.c_str(), preset.c_str());
}

[[maybe_unused]] double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

#if defined(DIFFUSE_HAVE_CUDA)

// Times `f` between two events on `stream`: the device timeline of one step or run.
class EventTimer {
 public:
  explicit EventTimer(void* stream) : s_(static_cast<cudaStream_t>(stream)) {}
  ~EventTimer() {
    for (auto& [a, b] : pairs_) cudaEventDestroy(a), cudaEventDestroy(b);
  }
  template <class F>
  void time(F&& f) {
    cudaEvent_t a, b;
    DF_CUDA_CHECK(cudaEventCreate(&a));
    DF_CUDA_CHECK(cudaEventCreate(&b));
    DF_CUDA_CHECK(cudaEventRecord(a, s_));
    f();
    DF_CUDA_CHECK(cudaEventRecord(b, s_));
    pairs_.emplace_back(a, b);
  }
  // Waits for the last event, then the milliseconds of each pair.
  std::vector<double> ms() {
    std::vector<double> out;
    if (pairs_.empty()) return out;
    DF_CUDA_CHECK(cudaEventSynchronize(pairs_.back().second));
    for (auto& [a, b] : pairs_) {
      float t = 0;
      DF_CUDA_CHECK(cudaEventElapsedTime(&t, a, b));
      out.push_back(t);
    }
    return out;
  }

 private:
  cudaStream_t s_;
  std::vector<std::pair<cudaEvent_t, cudaEvent_t>> pairs_;
};

// Counters over the timed region: host syncs and cudaMalloc calls must stay at zero.
struct Waste {
  uint64_t syncs0, allocs0;
  explicit Waste(int dev) : syncs0(host_syncs()), allocs0(cuda_memory_stats(dev).system_allocs) {}
  json done(int dev) const {
    return {{"host_syncs", host_syncs() - syncs0}, {"device_allocs", cuda_memory_stats(dev).system_allocs - allocs0}};
  }
};

// --once: the checks that make a single step a test. A steady-state step or run that synchronises
// with the host or calls cudaMalloc, or a non-finite loss or sample, fails the run.
void check_once(const Options& o, const std::string& what, const json& waste, bool finite) {
  if (!o.once) return;
  DF_CHECK(waste["host_syncs"] == 0 && waste["device_allocs"] == 0, "e2e --once: ", what,
           ": the steady state synchronised with the host ", waste["host_syncs"].get<uint64_t>(),
           " times and called cudaMalloc ", waste["device_allocs"].get<uint64_t>(), " times (both must be 0)");
  DF_CHECK(finite, "e2e --once: ", what, ": a loss or sample is not finite");
}

bool all_finite(const Tensor& host) {
  const Tensor f = host.to(DType::f32);
  const float* p = f.data<float>();
  return std::all_of(p, p + f.numel(), [](float v) { return std::isfinite(v); });
}

std::shared_ptr<nn::UNet> make_unet(const std::string& preset, Device gpu) {
  auto unet = std::make_shared<nn::UNet>(nn::UNetConfig::preset(preset), 0);
  unet->to(gpu);
  return unet;
}

json bench_train(const Options& o, const std::string& preset, bool graph, double fwd_flops_per_image, double peak) {
  const Device gpu = Device::cuda(0);
  const nn::UNetConfig cfg = nn::UNetConfig::preset(preset);
  auto unet = make_unet(preset, gpu);
  const int64_t B = o.batch, S = cfg.image_size, C = cfg.in_channels;
  // A few resident batches, so the copy into the step's buffer is a real one.
  std::vector<Tensor> data;
  for (int i = 0; i < 4; ++i) data.push_back(Tensor::rand({B, S, S, C}, 1000 + i, 0, -1.f, 1.f, gpu));
  train::DeviceTrainOptions to;
  to.bf16 = o.bf16;
  to.graph = graph;
  to.seed = 1;
  train::DeviceTrainStep step(unet, to);
  for (int i = 0; i < o.warmup; ++i) step.step(data[i % data.size()]);
  step.synchronize();
  EventTimer timer(step.stream());
  Waste waste(gpu.index);
  for (int i = 0; i < o.iters; ++i) timer.time([&] { step.step(data[i % data.size()]); });
  const json w = waste.done(gpu.index);  // before ms(): the wait there is the benchmark's own
  const double ms = median(timer.ms());
  const double flops = 3.0 * fwd_flops_per_image * B;  // forward + backward (2x)
  const double tflops = flops / (ms * 1e-3) / 1e12;
  check_once(o, preset + " train " + (graph ? "graph" : "eager"), w, std::isfinite(step.loss()));
  std::printf("  train   %-5s batch %4lld: %9.3f ms/step %10.1f img/s %8.1f TFLOP/s (%4.1f%% of bf16 GEMM)  "
              "syncs %llu allocs %llu  loss %.4f\n",
              graph ? "graph" : "eager", static_cast<long long>(B), ms, B / (ms * 1e-3), tflops, 100 * tflops / peak,
              static_cast<unsigned long long>(w["host_syncs"]), static_cast<unsigned long long>(w["device_allocs"]),
              step.loss());
  return {{"graph", graph},
          {"batch", B},
          {"median_ms", ms},
          {"images_per_s", B / (ms * 1e-3)},
          {"tflops", tflops},
          {"share_of_bf16_gemm", tflops / peak},
          {"steady_state", w},
          {"loss", step.loss()}};
}

json bench_sample(const Options& o, const std::string& preset, bool graph, int B, double fwd_flops_per_image,
                  double peak) {
  const Device gpu = Device::cuda(0);
  const nn::UNetConfig cfg = nn::UNetConfig::preset(preset);
  auto unet = make_unet(preset, gpu);
  unet->eval();
  // The persistent bf16 weights a trained model samples with (a training step keeps them).
  std::vector<ag::Var> vars;
  std::vector<int64_t> offsets;
  int64_t total = 0;
  for (const ag::Var& p : unet->parameters()) {
    vars.push_back(p);
    offsets.push_back(total);
    total += p.numel();
  }
  std::unique_ptr<ag::Bf16Weights> lowp;
  if (o.bf16) lowp = std::make_unique<ag::Bf16Weights>(vars, offsets, total);
  diffusion::SamplingLoopOptions so;
  so.kind = o.sampler == "ddpm" ? diffusion::SamplerKind::ddpm : diffusion::SamplerKind::ddim;
  so.sampler.shape = Shape{B, cfg.image_size, cfg.image_size, cfg.in_channels};
  so.sampler.steps = o.sample_steps;
  so.sampler.clip_x0 = true;
  so.time_of = train::unet_time_of(1000);
  so.graph = graph;
  so.device = gpu;
  diffusion::SamplingLoop sampler(diffusion::DiscreteSchedule::linear(1000), train::unet_device_denoiser(unet, o.bf16),
                                  so);
  const int warm = std::max(2, o.warmup / 2), iters = o.once ? 1 : std::max(5, o.iters / 3);
  for (int i = 0; i < warm; ++i) sampler.run(static_cast<uint64_t>(i));
  sampler.synchronize();
  EventTimer timer(sampler.stream());
  Waste waste(gpu.index);
  for (int i = 0; i < iters; ++i) timer.time([&] { sampler.run(static_cast<uint64_t>(100 + i)); });
  const json w = waste.done(gpu.index);
  const double run_ms = median(timer.ms());
  const double step_ms = run_ms / sampler.steps();
  const double tflops = fwd_flops_per_image * B / (step_ms * 1e-3) / 1e12;
  check_once(o, preset + " sample batch " + std::to_string(B) + " " + (graph ? "graph" : "eager"), w,
             !o.once || all_finite(sampler.to_host()));
  std::printf("  sample  %-5s batch %4d: %9.3f ms/step %10.1f img-steps/s %8.1f TFLOP/s (%4.1f%% of bf16 GEMM)  "
              "syncs %llu allocs %llu\n",
              graph ? "graph" : "eager", B, step_ms, B / (step_ms * 1e-3), tflops, 100 * tflops / peak,
              static_cast<unsigned long long>(w["host_syncs"]), static_cast<unsigned long long>(w["device_allocs"]));
  return {{"graph", graph},
          {"batch", B},
          {"sampler", o.sampler},
          {"steps", sampler.steps()},
          {"median_run_ms", run_ms},
          {"median_step_ms", step_ms},
          {"images_per_s", B / (run_ms * 1e-3)},
          {"image_steps_per_s", B / (step_ms * 1e-3)},
          {"tflops", tflops},
          {"share_of_bf16_gemm", tflops / peak},
          {"steady_state", w}};
}

#endif  // DIFFUSE_HAVE_CUDA

}  // namespace

int main(int argc, char** argv) try {
  const Options o = parse(argc, argv);
  if (!o.twin_path.empty()) {
    export_twin(o.twin_preset, o.twin_path);
    return 0;
  }
  std::string command;
  for (int i = 0; i < argc; ++i) {
    if (i) command += ' ';
    command += argv[i];
  }

  std::vector<Count> counts;
  for (const std::string& p : o.presets) counts.push_back(unet_count(nn::UNetConfig::preset(p)));
  if (o.flops_only) {
    for (size_t i = 0; i < o.presets.size(); ++i)
      std::printf("%-14s %12lld parameters  %8.3f GFLOP forward per image  %8.3f GFLOP training per image\n",
                  o.presets[i].c_str(), static_cast<long long>(counts[i].params), counts[i].flops / 1e9,
                  3 * counts[i].flops / 1e9);
    return 0;
  }
  if (!cuda_available()) {
    std::printf("e2e: no GPU (%s); nothing measured\n", cuda_unavailable_reason().c_str());
    return 0;
  }
#if defined(DIFFUSE_HAVE_CUDA)
  const CudaDeviceInfo dev = cuda_devices().at(0);
  set_current_device(Device::cuda(0));
  // --once times nothing worth a share: the reference GEMM (8192^3) is skipped.
  const double peak = o.once ? std::nan("") : cuda::measure_bf16_gemm_tflops();
  char date[32];
  const std::time_t now = std::time(nullptr);
  std::strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", std::gmtime(&now));
  std::printf("e2e on %s (sm_%d%d, %d SMs), %s; bf16 GEMM (8192^3, cuBLASLt): %.1f TFLOP/s\n", dev.name.c_str(),
              dev.cc_major, dev.cc_minor, dev.sm_count, date, peak);
  json out = {{"device", dev.name},
              {"compute_capability", std::to_string(dev.cc_major) + "." + std::to_string(dev.cc_minor)},
              {"sms", dev.sm_count},
              {"date", date},
              {"command", command},
              {"bf16", o.bf16},
              {"bf16_gemm_tflops", peak},
              {"presets", json::array()}};
  for (size_t i = 0; i < o.presets.size(); ++i) {
    const std::string& p = o.presets[i];
    std::printf("%s: %lld parameters, %.3f GFLOP forward per image\n", p.c_str(),
                static_cast<long long>(counts[i].params), counts[i].flops / 1e9);
    json r = {{"preset", p},
              {"parameters", counts[i].params},
              {"forward_gflop_per_image", counts[i].flops / 1e9},
              {"train", json::array()},
              {"sample", json::array()}};
    for (bool g : o.graphs) r["train"].push_back(bench_train(o, p, g, counts[i].flops, peak));
    for (int b : o.sample_batches)
      for (bool g : o.graphs) r["sample"].push_back(bench_sample(o, p, g, b, counts[i].flops, peak));
    out["presets"].push_back(r);
  }
  if (o.once) std::printf("e2e --once: every case ran; steady states without syncs or allocations, results finite\n");
  if (!o.json_path.empty()) {
    std::ofstream f(o.json_path);
    DF_CHECK(f.good(), "e2e: cannot write ", o.json_path);
    f << out.dump(2) << '\n';
    std::printf("wrote %s\n", o.json_path.c_str());
  }
#endif
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "e2e: %s\n", e.what());
  return 1;
}
