// tests/kernels/op_table.cpp: the op table (op_table.h), each op described once: its test cases,
// its gradcheck cases and its benchmark cases. Built into diffuse_op_table, which the tests of
// tests/kernels and tests/autograd and bench/kernels link; the library never does.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <map>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "autograd/attention.h"
#include "autograd/elementwise.h"
#include "autograd/linalg.h"
#include "autograd/norm.h"
#include "core/check.h"
#include "core/device.h"
#include "core/philox.h"
#include "core/stream.h"
#include "core/tensor.h"
#include "kernels/attention.h"
#include "kernels/adamw.h"
#include "kernels/concat.h"
#include "kernels/elementwise.h"
#include "kernels/embedding.h"
#include "kernels/group_norm.h"
#include "kernels/noise.h"
#include "kernels/resample.h"
#include "kernels/sampler_step.h"
#include "kernels/softmax.h"
#include "kernels/time_embedding.h"
#include "kernels/loss.h"
#include "models/train/optim.h"
#include "tests/kernels/op_table.h"
#include "tests/test_util.h"

#if defined(DIFFUSE_HAVE_CUDA)
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "core/cuda_check.h"
#include "models/nn/unet.h"
#endif

namespace diffuse::test {

const char* backend_name(Backend b) {
  switch (b) {
    case Backend::cpu: return "cpu fast path";
    case Backend::emu: return "emulator";
    case Backend::cuda: return "GPU";
  }
  return "?";
}

Tensor poisoned(const Shape& s, DType t, Device d) {
  Tensor o = Tensor::empty(s, t, d);
  o.poison_();
  return o;
}

namespace {

using kernels::dims_of;

// The stream a runner launches on: none for the emulator (host buffers), the current one on a GPU.
void* stream_for(Device d) { return d.is_cpu() ? nullptr : current_stream(); }

// The parts, streamed into one string: a case's name.
template <class... Parts>
std::string name_of(const Parts&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  return os.str();
}

// The dtype the resampling reference computes in for outputs of dtype t: f64 for f64, f32
// otherwise (its sums of four values scaled by 1 or 1/4 are exact in f32, and the kernels round
// their f32 result once to bf16).
DType compute_dtype(DType t) { return t == DType::f64 ? DType::f64 : DType::f32; }

// ---- the parts of benchmark and gradcheck cases --------------------------------------------------
// bench/kernels' shape column: the sizes joined by 'x'.
std::string dims(std::initializer_list<int64_t> d) {
  std::string s;
  for (int64_t x : d) {
    if (!s.empty()) s += 'x';
    s += std::to_string(x);
  }
  return s;
}

constexpr double kB16 = 2, kF32 = 4;  // bytes per element

#if defined(DIFFUSE_HAVE_CUDA)
// A device tensor of random values in [lo, hi), drawn on the device (a benchmark never runs on
// zeros: docs/benchmarks.md).
Tensor device_random(const Shape& s, DType t, float lo = -1.f, float hi = 1.f) {
  Tensor x = Tensor::empty(s, DType::f32, Device::cuda(0));
  x.uniform_(next_seed(), 0, lo, hi);
  return t == DType::f32 ? x : x.to(t);
}
Tensor device_empty(const Shape& s, DType t) { return Tensor::empty(s, t, Device::cuda(0)); }
#endif

// A kernel that bench/kernels times; its launch is set apart (BenchKernel::prepare).
BenchKernel bench_kernel(const std::string& kernel, const std::string& impl, Cost cost, const std::string& formula,
                         bool matrix_bound = false) {
  BenchKernel k;
  k.kernel = kernel, k.impl = impl, k.cost = cost, k.formula = formula, k.matrix_bound = matrix_bound;
  return k;
}

// A case that only bench/kernels reads: no backends, timed in `run` with rows of shape `shape`.
OpCase bench_case(const std::string& name, BenchRun run, const std::string& shape) {
  OpCase c;
  c.name = name;
  c.bench = run;
  c.bench_shape = shape;
  return c;
}

// A case that only the gradcheck reads: `op` on autograd variables, on fresh `inputs`.
OpCase gradcheck_case(const std::string& name, std::function<Tensors()> inputs,
                      std::function<ag::Var(const std::vector<ag::Var>&)> op, std::vector<int> fixed = {}) {
  OpCase c;
  c.name = name;
  c.inputs = [inputs](DType) { return inputs(); };
  c.autograd = std::move(op);
  c.grad_fixed = std::move(fixed);
  return c;
}

// ---- resampling: upsample_nearest2x and avg_pool2x, forward and backward ------------------------
// A launcher of kernels/resample.h; every one takes the small grid's (B, H, W, C).
using ResampleLaunch = void (*)(const void*, void*, DType, int64_t, int64_t, int64_t, int64_t, void*);

struct ResampleOp {
  const char* name;
  bool in_small, out_small;  // whether the input / output is the small grid
  void (*cpu)(const Tensor&, Tensor&);
  void (*ref)(const Tensor&, Tensor&);
  Tensor (*pub)(const Tensor&);
  ResampleLaunch emu, cuda;
};

// Upsampling and the pool's backward move values (times 1 or 1/4, exact in binary); the 2x2 sums
// add in the reference's order: every backend is bitwise equal to the reference in f32 and f64,
// and in bf16 to the f32 result rounded once, which is what the kernels store.
void add_resample(std::vector<OpCase>& table) {
  const ResampleOp ops[] = {
      {"upsample_nearest2x_forward", true, false, kernels::cpu::upsample_nearest2x_forward,
       kernels::ref::upsample_nearest2x_forward, kernels::upsample_nearest2x_forward,
#if defined(DIFFUSE_HAVE_SIMT)
       emu::upsample_nearest2x_forward,
#else
       nullptr,
#endif
#if defined(DIFFUSE_HAVE_CUDA)
       cuda::upsample_nearest2x_forward},
#else
       nullptr},
#endif
      {"upsample_nearest2x_backward", false, true, kernels::cpu::upsample_nearest2x_backward,
       kernels::ref::upsample_nearest2x_backward, kernels::upsample_nearest2x_backward,
#if defined(DIFFUSE_HAVE_SIMT)
       emu::upsample_nearest2x_backward,
#else
       nullptr,
#endif
#if defined(DIFFUSE_HAVE_CUDA)
       cuda::upsample_nearest2x_backward},
#else
       nullptr},
#endif
      {"avg_pool2x_forward", false, true, kernels::cpu::avg_pool2x_forward, kernels::ref::avg_pool2x_forward,
       kernels::avg_pool2x_forward,
#if defined(DIFFUSE_HAVE_SIMT)
       emu::avg_pool2x_forward,
#else
       nullptr,
#endif
#if defined(DIFFUSE_HAVE_CUDA)
       cuda::avg_pool2x_forward},
#else
       nullptr},
#endif
      {"avg_pool2x_backward", true, false, kernels::cpu::avg_pool2x_backward, kernels::ref::avg_pool2x_backward,
       kernels::avg_pool2x_backward,
#if defined(DIFFUSE_HAVE_SIMT)
       emu::avg_pool2x_backward,
#else
       nullptr,
#endif
#if defined(DIFFUSE_HAVE_CUDA)
       cuda::avg_pool2x_backward},
#else
       nullptr},
#endif
  };
  // Small grids (B, H, W, C): odd sizes, batch 1, one channel, C a whole number of the kernels'
  // 16-byte packs (16 f32 / 8 bf16) and not; the last is large enough for the cpu's OpenMP path
  // (cpu only: the emulator would spend seconds on it and it has no path the others lack).
  const Shape smalls[] = {{2, 3, 5, 4},  {1, 1, 1, 1},  {1, 7, 3, 1},     {2, 3, 4, 16},
                          {1, 2, 5, 3},  {3, 4, 4, 24}, {3, 14, 14, 64}};
  for (const ResampleOp& op : ops)
    for (const Shape& s : smalls) {
      const Shape big{s[0], 2 * s[1], 2 * s[2], s[3]};
      const Shape in_shape = op.in_small ? s : big, out_shape = op.out_small ? s : big;
      const bool device_too = s.numel() < 10000;
      OpCase c;
      c.name = name_of(op.name, " small grid ", s.str());
      c.inputs = [in_shape](DType t) { return Tensors{random_tensor(in_shape).to(t)}; };
      // Output 1 of the cpu backend is the public kernels:: function's result.
      c.reference = [op, out_shape](const Tensors& in, DType t, Backend) {
        Tensor o = Tensor::empty(out_shape, compute_dtype(t));
        op.ref(in[0].to(compute_dtype(t)), o);
        return Tensors{o.to(t), o.to(t)};
      };
      c.cpu = [op, out_shape](const Tensors& in, DType t) {
        Tensor o = poisoned(out_shape, t);
        op.cpu(in[0], o);
        return Tensors{o, op.pub(in[0])};
      };
      auto device_run = [s, out_shape](ResampleLaunch launch, Device d) {
        return [launch, d, s, out_shape](const Tensors& in, DType t) {
          Tensor o = poisoned(out_shape, t, d);
          launch(in[0].to(d).raw(), o.raw(), t, s[0], s[1], s[2], s[3], stream_for(d));
          return Tensors{o.to(Device::cpu()), o.to(Device::cpu())};
        };
      };
      if (device_too && op.emu) c.emu = device_run(op.emu, Device::cpu());
#if defined(DIFFUSE_HAVE_CUDA)
      if (device_too && op.cuda) c.cuda = device_run(op.cuda, Device::cuda(0));
#endif
      c.tolerance = [](Backend, DType, size_t, const Tensors&, const Tensors&) {
        return Tolerance{true, 0, 0, "moves exact in binary; sums in the reference's order, rounded once"};
      };
      table.push_back(c);
    }

  // bench/kernels: between the UNet's 16x16x256 and 32x32x256 maps at batch 128 (bf16), and --once's
  // small grid. Bytes: one side read, the other written, 2 (n + 4 n) for n small-grid elements.
  struct BenchGrid {
    BenchRun run;
    const char* model;
    int64_t B, H, W, C;
  };
  for (const BenchGrid& g : {BenchGrid{BenchRun::measured, "cifar10", 128, 16, 16, 256},
                             BenchGrid{BenchRun::once, "small", 2, 3, 5, 24}}) {
    OpCase c = bench_case(name_of("resample ", g.model), g.run,
                          name_of(g.model, " ", dims({g.B, g.H, g.W, g.C}), " <-> ",
                                  dims({g.B, 2 * g.H, 2 * g.W, g.C})));
    const Shape small{g.B, g.H, g.W, g.C}, big{g.B, 2 * g.H, 2 * g.W, g.C};
    for (const ResampleOp& op : ops) {
      BenchKernel k;
      k.kernel = op.name;
      k.cost = {kB16 * static_cast<double>(small.numel() + big.numel()), 0};
      k.formula = op.in_small ? "2 (n + 4 n)" : "2 (4 n + n)";
#if defined(DIFFUSE_HAVE_CUDA)
      const ResampleLaunch launch = op.cuda;
      const Shape in_shape = op.in_small ? small : big, out_shape = op.out_small ? small : big;
      k.prepare = [=]() -> std::function<void()> {
        Tensor in = device_random(in_shape, DType::bf16), out = device_empty(out_shape, DType::bf16);
        return [=]() mutable { launch(in.raw(), out.raw(), DType::bf16, g.B, g.H, g.W, g.C, current_stream()); };
      };
#endif
      c.bench_kernels.push_back(k);
    }
    table.push_back(c);
  }

  // tests/autograd: ag::upsample_nearest2x and ag::avg_pool2x, odd sizes and batch 1 (linear ops: the
  // central differences carry rounding only, ~1e-10, under gradcheck's default tolerance).
  for (const Shape& x : {Shape{2, 3, 2, 3}, Shape{1, 1, 1, 1}})
    table.push_back(gradcheck_case(
        name_of("ag::upsample_nearest2x ", x.str()), [x] { return Tensors{random_tensor(x)}; },
        [](const std::vector<ag::Var>& v) { return ag::upsample_nearest2x(v[0]); }));
  for (const Shape& x : {Shape{1, 4, 6, 2}, Shape{2, 2, 2, 1}})
    table.push_back(gradcheck_case(
        name_of("ag::avg_pool2x ", x.str()), [x] { return Tensors{random_tensor(x)}; },
        [](const std::vector<ag::Var>& v) { return ag::avg_pool2x(v[0]); }));
}

// ---- noising q(z_t | x), the noise drawn in the kernel -------------------------------------------
// No tolerance: eps must be Tensor::randn(shape, seed, offset) bit for bit (the Philox transform is
// correctly rounded op by op), and z = alpha x + sigma eps is formed with two rounded products and a
// rounded sum on every device, which is what the reference loop computes (the table is compiled with
// -ffp-contract=off). Inputs: x (B, N); alpha, sigma (B) in [0.05, 1], a variance-preserving
// schedule's range; a fresh seed and offset, as i64 {seed, offset}. Outputs: eps and z; the kernels
// write them one float off alignment (skew 1) or aligned, and the element past each comes back too
// and must keep its poison; then z drawn without eps (the launch with eps null). The cpu path
// (kernels/noise.cpp, which the rest of the engine runs) against the same loop. The seed word
// of a captured graph's replay is checked in noise_emu_test.cpp.
struct NoiseCase {
  int64_t B, N, skew;
  bool small;  // the emulator and the cpu path run it (else only a GPU)
};

void add_noise(std::vector<OpCase>& table) {
  std::vector<NoiseCase> cases;
  // N % 4 != 0 makes Philox blocks straddle samples; N = 1 puts 4 samples in one block.
  for (const auto& bn : {std::pair<int64_t, int64_t>{1, 5}, {3, 7}, {5, 1}, {2, 1024}, {4, 333}, {3, 35}})
    for (int64_t skew : {0, 1}) cases.push_back({bn.first, bn.second, skew, true});
  // On a GPU: a 64x64 and a 32x32 image, N odd, and a batch of 64.
  for (const auto& bn : {std::pair<int64_t, int64_t>{1, 3 * 64 * 64}, {7, 3 * 32 * 32 + 1}, {64, 12289}})
    cases.push_back({bn.first, bn.second, 0, false});
  for (const NoiseCase& k : cases) {
    const int64_t n = k.B * k.N;
    OpCase c;
    c.name = name_of("noise_forward B ", k.B, " N ", k.N, " skew ", k.skew);
    c.inputs = [k](DType) {
      const uint64_t seed = next_seed(), offset = next_seed() % 100000;
      return Tensors{random_tensor({k.B, k.N}), random_tensor({k.B}, 0.05f, 1.f), random_tensor({k.B}, 0.05f, 1.f),
                     Tensor::from_vector_i64({static_cast<int64_t>(seed), static_cast<int64_t>(offset)}, {2})};
    };
    c.reference = [k, n](const Tensors& in, DType, Backend b) {
      const int64_t* so = in[3].data<int64_t>();
      const Tensor eps = Tensor::randn({k.B, k.N}, static_cast<uint64_t>(so[0]), static_cast<uint64_t>(so[1]));
      Tensor z = Tensor::empty({k.B, k.N});
      const float *x = in[0].data<float>(), *a = in[1].data<float>(), *s = in[2].data<float>(), *e = eps.data<float>();
      float* zp = z.data<float>();
      for (int64_t r = 0; r < k.B; ++r)
        for (int64_t i = r * k.N; i < (r + 1) * k.N; ++i) zp[i] = a[r] * x[i] + s[r] * e[i];
      if (b == Backend::cpu) return Tensors{eps, z};
      auto with_tail = [n](const Tensor& t) {
        Tensor o = poisoned({n + 1}, DType::f32);
        o.slice(0, n).copy_(t.flatten());
        return o;
      };
      return Tensors{with_tail(eps), with_tail(z), z};
    };
    if (k.small && k.skew == 0)
      c.cpu = [k](const Tensors& in, DType) {
        const int64_t* so = in[3].data<int64_t>();
        Tensor z = poisoned({k.B, k.N}, DType::f32), eps = poisoned({k.B, k.N}, DType::f32);
        kernels::cpu::noise_forward(in[0], in[1], in[2], static_cast<uint64_t>(so[0]), static_cast<uint64_t>(so[1]),
                                    z, eps);
        return Tensors{eps, z};
      };
    c.cpu_dtypes = {DType::f32};
    using Launch = void (*)(const float*, const float*, const float*, float*, float*, int64_t, int64_t, uint64_t,
                            uint64_t, void*, const uint64_t*);
    auto run = [k, n](Launch launch, Device d) {
      return [=](const Tensors& in, DType) {
        const int64_t* so = in[3].data<int64_t>();
        const uint64_t seed = static_cast<uint64_t>(so[0]), offset = static_cast<uint64_t>(so[1]);
        void* stream = stream_for(d);
        Tensor xb = poisoned({n + k.skew}, DType::f32, d);
        xb.slice(k.skew, n + k.skew).copy_(in[0].flatten());
        Tensor alpha = in[1].to(d), sigma = in[2].to(d);
        Tensor zb = poisoned({n + k.skew + 1}, DType::f32, d), eb = poisoned({n + k.skew + 1}, DType::f32, d);
        launch(xb.data<float>() + k.skew, alpha.data<float>(), sigma.data<float>(), zb.data<float>() + k.skew,
               eb.data<float>() + k.skew, k.B, k.N, seed, offset, stream, nullptr);
        Tensor z2 = poisoned({k.B, k.N}, DType::f32, d);
        launch(xb.data<float>() + k.skew, alpha.data<float>(), sigma.data<float>(), z2.data<float>(), nullptr, k.B,
               k.N, seed, offset, stream, nullptr);
        const Device cpu = Device::cpu();
        return Tensors{eb.slice(k.skew, n + k.skew + 1).to(cpu), zb.slice(k.skew, n + k.skew + 1).to(cpu), z2.to(cpu)};
      };
    };
#if defined(DIFFUSE_HAVE_SIMT)
    if (k.small) c.emu = run(emu::noise_forward, Device::cpu());
#endif
#if defined(DIFFUSE_HAVE_CUDA)
    c.cuda = run(cuda::noise_forward, Device::cuda(0));
#endif
    c.device_dtypes = {DType::f32};
    c.tolerance = [](Backend, DType, size_t, const Tensors&, const Tensors&) {
      return Tolerance{true, 0, 0, "eps: the Philox stream bit for bit; z: two rounded products, a rounded sum"};
    };
    table.push_back(c);
  }

  // bench/kernels: the models' images (f32, 32x32x3 at batch 128 and 64x64x3 at batch 32), and
  // --once's small ones. Bytes: read x, write z and eps; alpha and sigma per sample.
  struct BenchImages {
    BenchRun run;
    const char* model;
    int64_t B, n;  // n = H W C per image
  };
  for (const BenchImages& im : {BenchImages{BenchRun::measured, "cifar10", 128, 32 * 32 * 3},
                                BenchImages{BenchRun::measured, "64x64", 32, 64 * 64 * 3},
                                BenchImages{BenchRun::once, "small", 2, 6 * 5 * 3},
                                BenchImages{BenchRun::once, "small", 1, 7 * 7}}) {
    OpCase c = bench_case(name_of("noise_forward ", im.model), im.run, name_of(im.model, " ", dims({im.B, im.n})));
    BenchKernel k = bench_kernel("noise_forward", "diffuse",
                                 {3 * kF32 * static_cast<double>(im.B * im.n) + 2 * kF32 * im.B, 0}, "12 B n + 8 B");
#if defined(DIFFUSE_HAVE_CUDA)
    k.prepare = [im]() -> std::function<void()> {
      Tensor x = device_random({im.B, im.n}, DType::f32), a = device_random({im.B}, DType::f32, 0.1f, 1.f);
      Tensor s = device_random({im.B}, DType::f32, 0.1f, 1.f), z = device_empty({im.B, im.n}, DType::f32);
      Tensor eps = device_empty({im.B, im.n}, DType::f32);
      return [=]() mutable {
        cuda::noise_forward(x.data<float>(), a.data<float>(), s.data<float>(), z.data<float>(), eps.data<float>(),
                            im.B, im.n, 7, 0, current_stream());
      };
    };
#endif
    c.bench_kernels = {k};
    table.push_back(c);
  }
}

// ---- embedding: lookup and its gradient ---------------------------------------------------------
// The cpu path (kernels/embedding.cpp, checked against plain loops in embedding_test.cpp) is
// the reference. The lookup copies rows: equal. The backward adds the rows of each id in batch
// order, as the cpu loop does: equal in f32; bf16 is the f32 sum rounded once.
void add_embedding(std::vector<OpCase>& table) {
  constexpr int64_t K = 11, D = 300;
  for (int64_t B : {1L, 7L, 40L}) {
    OpCase c;
    c.name = name_of("embedding_forward and embedding_backward B ", B, " K ", K, " D ", D);
    c.inputs = [B](DType t) {
      std::vector<int64_t> idv(static_cast<size_t>(B));
      for (int64_t b = 0; b < B; ++b) idv[b] = static_cast<int64_t>(philox_uniform(next_seed(), 0, 0) * K) % K;
      idv[0] = K - 1;  // the null label row (classifier-free guidance) is the last
      return Tensors{Tensor::from_vector_i64(idv, {B}), random_tensor({K, D}).to(t), random_tensor({B, D}).to(t)};
    };
    c.reference = [](const Tensors& in, DType t, Backend) {
      return Tensors{kernels::embedding_forward(in[0], in[1].to(DType::f32)).to(t),
                     kernels::embedding_backward(in[2].to(DType::f32), in[0], Shape{K, D}).to(t)};
    };
    using Fwd = void (*)(const int64_t*, const void*, void*, DType, int64_t, int64_t, int64_t, void*);
    using Bwd = void (*)(const void*, const int64_t*, void*, DType, int64_t, int64_t, int64_t, void*);
    auto device_run = [B](Fwd fwd, Bwd bwd, Device d) {
      return [=](const Tensors& in, DType t) {
        Tensor ids = in[0].to(d), out = poisoned({B, D}, t, d), dt = poisoned({K, D}, t, d);
        void* stream = stream_for(d);
        fwd(ids.data<int64_t>(), in[1].to(d).raw(), out.raw(), t, B, K, D, stream);
        bwd(in[2].to(d).raw(), ids.data<int64_t>(), dt.raw(), t, B, K, D, stream);
        return Tensors{out.to(Device::cpu()), dt.to(Device::cpu())};
      };
    };
#if defined(DIFFUSE_HAVE_SIMT)
    c.emu = device_run(emu::embedding_forward, emu::embedding_backward, Device::cpu());
#endif
#if defined(DIFFUSE_HAVE_CUDA)
    c.cuda = device_run(cuda::embedding_forward, cuda::embedding_backward, Device::cuda(0));
#endif
    c.tolerance = [](Backend, DType, size_t, const Tensors&, const Tensors&) {
      return Tolerance{true, 0, 0, "row copies; sums in the cpu loop's order, rounded once"};
    };
    table.push_back(c);
  }

  // tests/autograd: ag::embedding, ids repeated (their rows' gradients add) and batch 1; the ids are
  // passed through unchecked.
  const std::vector<std::pair<std::vector<int64_t>, Shape>> grads = {{{2, 0, 2, 4}, Shape{5, 3}},
                                                                     {{0}, Shape{1, 2}}};
  for (const auto& grad : grads) {
    const std::vector<int64_t> ids = grad.first;
    const Shape rows = grad.second;
    table.push_back(gradcheck_case(
        name_of("ag::embedding ", ids.size(), " ids into ", rows.str()),
        [ids, rows] {
          return Tensors{Tensor::from_vector_i64(ids, {static_cast<int64_t>(ids.size())}), random_tensor(rows)};
        },
        [](const std::vector<ag::Var>& v) { return ag::embedding(v[0].value(), v[1]); }, {0}));
  }
}

// ---- softmax over the last dim, forward and backward ---------------------------------------------
// The kernels (softmax.cu) against kernels::ref in f64, rounded once. f32: the sum of exponentials
// accumulates ~L/R terms per thread plus a tree and the online rescalings, each <= 1 ulp, and expf
// is within 2 ulp on the GPU: relative error below ~40 eps = 2.4e-6 for these lengths, so rtol 1e-5
// (atol 1e-9 for tiny probabilities). Backward y (dy - sum(dy y)) cancels when dy ~ the dot:
// absolute error ~ eps (|dy| + |dot|) <= 1e-6. bf16: one rounding of the f32 result, 2^-8 relative,
// rtol 8e-3. The cpu fast path against kernels::ref in f32: probabilities in [0, 1]; the f32 sum of
// <= 196 terms is off by <= 196 * 6e-8 relative: rtol 2e-5 (atol 1e-7 forward, 1e-6 backward).
struct RowCase {
  Shape shape;       // (..., L)
  float lo, hi;      // the logits' range
  bool cpu, emu, gpu;
};

const RowCase kSoftmaxCases[] = {
    // Warp per row (partial last block of 8 rows), block per row past 1024, batch 1. The cpu's
    // tolerance is argued for rows of up to 196.
    {{1, 1}, -8.f, 8.f, true, true, true},      {{3, 7}, -8.f, 8.f, true, true, true},
    {{10, 33}, -8.f, 8.f, true, true, true},    {{2, 1025}, -8.f, 8.f, false, true, true},
    {{1, 3000}, -8.f, 8.f, false, true, true},  {{5, 37}, -6.f, 6.f, true, true, true},
    // Logits up to +-30: the rows differ by orders of magnitude, so both the max and the
    // normalisation are exercised.
    {{3, 7}, -30.f, 30.f, true, true, true},    {{2, 3, 196}, -30.f, 30.f, true, true, true},
    {{1, 1}, -30.f, 30.f, true, true, true},    {{5, 49}, -30.f, 30.f, true, true, true},
    // GPU sizes: many short rows, long rows, one very long row (too slow for the emulator tier).
    {{4096, 77}, -8.f, 8.f, false, false, true}, {{64, 4096}, -8.f, 8.f, false, false, true},
    {{1, 100003}, -8.f, 8.f, false, false, true},
};

Tolerance softmax_tolerance(Backend b, DType t, bool backward) {
  if (b == Backend::cpu) return {false, 2e-5, backward ? 1e-6 : 1e-7, "f32 fast path vs the f32 reference: 196 terms"};
  if (t == DType::bf16) return {false, 8e-3, backward ? 1e-6 : 1e-9, "one bf16 rounding of the f32 result"};
  return {false, 1e-5, backward ? 1e-6 : 1e-9, "~40 eps of f32 sums and expf; cancellation in the backward's dot"};
}

// The reference's dtype: the cpu fast path is checked against kernels::ref in its own dtype, the
// devices against kernels::ref in f64.
DType ref_dtype(Backend b, DType t) { return b == Backend::cpu ? t : DType::f64; }

using RowLaunch = void (*)(const void*, void*, DType, int64_t, int64_t, void*);
using RowGradLaunch = void (*)(const void*, const void*, void*, DType, int64_t, int64_t, void*);

void add_softmax(std::vector<OpCase>& table) {
  for (const RowCase& rc : kSoftmaxCases) {
    const Shape s = rc.shape;
    const int64_t L = s[-1], rows = s.numel() / L;
    const std::string where = name_of(" ", s.str(), " logits in [", rc.lo, ", ", rc.hi, "]");
    OpCase f;
    f.name = name_of("softmax_last_forward", where);
    f.inputs = [s, rc](DType t) { return Tensors{random_tensor(s, rc.lo, rc.hi).to(t)}; };
    f.reference = [s](const Tensors& in, DType t, Backend b) {
      Tensor y = Tensor::empty(s, ref_dtype(b, t));
      kernels::ref::softmax_last_forward(in[0].to(ref_dtype(b, t)), y);
      return Tensors{y.to(t)};
    };
    if (rc.cpu)
      f.cpu = [s](const Tensors& in, DType t) {
        Tensor y = poisoned(s, t);
        kernels::cpu::softmax_last_forward(in[0], y);
        return Tensors{y};
      };
    f.cpu_dtypes = {DType::f32};
    auto fwd_run = [s, rows, L](RowLaunch launch, Device d) {
      return [=](const Tensors& in, DType t) {
        Tensor y = poisoned(s, t, d);
        launch(in[0].to(d).raw(), y.raw(), t, rows, L, stream_for(d));
        return Tensors{y.to(Device::cpu())};
      };
    };
#if defined(DIFFUSE_HAVE_SIMT)
    if (rc.emu) f.emu = fwd_run(emu::softmax_forward, Device::cpu());
#endif
#if defined(DIFFUSE_HAVE_CUDA)
    if (rc.gpu) f.cuda = fwd_run(cuda::softmax_forward, Device::cuda(0));
#endif
    f.tolerance = [](Backend b, DType t, size_t, const Tensors&, const Tensors&) {
      return softmax_tolerance(b, t, false);
    };
    table.push_back(f);

    OpCase g;
    g.name = name_of("softmax_last_backward", where);
    // y is a softmax output (the reference's, in the dtype), dy uniform in [-1, 1).
    g.inputs = [s, rc](DType t) {
      Tensor y = Tensor::empty(s, DType::f64);
      kernels::ref::softmax_last_forward(random_tensor(s, rc.lo, rc.hi).to(DType::f64), y);
      return Tensors{random_tensor(s).to(t), y.to(t)};
    };
    g.reference = [s](const Tensors& in, DType t, Backend b) {
      Tensor dx = Tensor::empty(s, ref_dtype(b, t));
      kernels::ref::softmax_last_backward(in[0].to(ref_dtype(b, t)), in[1].to(ref_dtype(b, t)), dx);
      return Tensors{dx.to(t)};
    };
    if (rc.cpu)
      g.cpu = [s](const Tensors& in, DType t) {
        Tensor dx = poisoned(s, t);
        kernels::cpu::softmax_last_backward(in[0], in[1], dx);
        return Tensors{dx};
      };
    g.cpu_dtypes = {DType::f32};
    auto bwd_run = [s, rows, L](RowGradLaunch launch, Device d) {
      return [=](const Tensors& in, DType t) {
        Tensor dx = poisoned(s, t, d);
        launch(in[0].to(d).raw(), in[1].to(d).raw(), dx.raw(), t, rows, L, stream_for(d));
        return Tensors{dx.to(Device::cpu())};
      };
    };
#if defined(DIFFUSE_HAVE_SIMT)
    if (rc.emu) g.emu = bwd_run(emu::softmax_backward, Device::cpu());
#endif
#if defined(DIFFUSE_HAVE_CUDA)
    if (rc.gpu) g.cuda = bwd_run(cuda::softmax_backward, Device::cuda(0));
#endif
    g.tolerance = [](Backend b, DType t, size_t, const Tensors&, const Tensors&) {
      return softmax_tolerance(b, t, true);
    };
    table.push_back(g);
  }

  // bench/kernels: the materialised attention's P at 16x16 (32768 rows of 256, bf16), and --once's
  // small rows. Bytes: forward reads x and writes y; backward reads dy and y and writes dx.
  struct BenchRows {
    BenchRun run;
    int64_t rows, L;
  };
  for (const BenchRows& r : {BenchRows{BenchRun::measured, 128 * 256, 256}, BenchRows{BenchRun::once, 37, 19}}) {
    OpCase c = bench_case(name_of("softmax ", r.rows, "x", r.L), r.run, dims({r.rows, r.L}));
    const double n = static_cast<double>(r.rows * r.L);
    BenchKernel f = bench_kernel("softmax_forward", "diffuse", {2 * kB16 * n, 0}, "4 R L");
    BenchKernel b = bench_kernel("softmax_backward", "diffuse", {3 * kB16 * n, 0}, "6 R L");
#if defined(DIFFUSE_HAVE_CUDA)
    f.prepare = [r]() -> std::function<void()> {
      Tensor x = device_random({r.rows, r.L}, DType::bf16, -4.f, 4.f), y = device_empty({r.rows, r.L}, DType::bf16);
      return [=]() mutable { cuda::softmax_forward(x.raw(), y.raw(), DType::bf16, r.rows, r.L, current_stream()); };
    };
    b.prepare = [r]() -> std::function<void()> {
      Tensor x = device_random({r.rows, r.L}, DType::bf16, -4.f, 4.f), y = device_empty({r.rows, r.L}, DType::bf16);
      Tensor dy = device_random({r.rows, r.L}, DType::bf16), dx = device_empty({r.rows, r.L}, DType::bf16);
      cuda::softmax_forward(x.raw(), y.raw(), DType::bf16, r.rows, r.L, current_stream());  // y: a softmax
      return [=]() mutable {
        cuda::softmax_backward(dy.raw(), y.raw(), dx.raw(), DType::bf16, r.rows, r.L, current_stream());
      };
    };
#endif
    c.bench_kernels = {f, b};
    table.push_back(c);
  }

  // tests/autograd: ag::softmax_last, logits in [-3, 3], batch 1 and a single element.
  for (const Shape& s : {Shape{3, 5}, Shape{2, 2, 7}, Shape{1, 1}})
    table.push_back(gradcheck_case(
        name_of("ag::softmax_last ", s.str()), [s] { return Tensors{random_tensor(s, -3.f, 3.f)}; },
        [](const std::vector<ag::Var>& v) { return ag::softmax_last(v[0]); }));
}

// ---- cross-entropy (the GPU kernels; f32 whatever the activations) ------------------------------
// Against the cpu loops (kernels/loss.cpp, checked against the formula in loss_test.cpp) in
// f64: lse, the row losses lse - x[label], their mean, and dlogits = g / B (p - onehot) for
// g = 1.7. The kernels' bounds are the softmax's: rtol 1e-5; atol 1e-6 (lse, losses: values of
// O(1..10)) and 1e-7 (dlogits: tiny probabilities over B).
void add_cross_entropy(std::vector<OpCase>& table) {
  const int64_t shapes[][2] = {{1, 1}, {3, 7}, {10, 33}, {2, 1025}, {1, 3000}, {5, 37}, {1000, 10}};
  for (const auto& bk : shapes) {
    const int64_t B = bk[0], K = bk[1];
    OpCase c;
    c.name = name_of("cross_entropy_forward and _backward B ", B, " K ", K);
    c.inputs = [B, K](DType) {
      std::vector<int64_t> lab(static_cast<size_t>(B));
      const std::vector<float> u = random_tensor({B}, 0.f, 1.f).to_vector();
      for (int64_t b = 0; b < B; ++b) lab[b] = std::min<int64_t>(K - 1, static_cast<int64_t>(u[b] * K));
      return Tensors{random_tensor({B, K}, -5.f, 5.f), Tensor::from_vector_i64(lab, {B})};
    };
    c.reference = [B, K](const Tensors& in, DType, Backend) {
      const Tensor x = in[0].to(DType::f64);
      Tensor loss = Tensor::empty({1}, DType::f64), lse = Tensor::empty({B}, DType::f64);
      kernels::cpu::cross_entropy_forward(x, in[1], loss, lse);
      Tensor rows = Tensor::empty({B}, DType::f64);
      for (int64_t b = 0; b < B; ++b)
        rows.data<double>()[b] = lse.data<double>()[b] - x.data<double>()[b * K + in[1].data<int64_t>()[b]];
      Tensor d = Tensor::empty({B, K}, DType::f64);
      kernels::cpu::cross_entropy_backward(Tensor::full({1}, 1.7, DType::f64), x, in[1], lse, d);
      return Tensors{lse.to(DType::f32), rows.to(DType::f32), loss.to(DType::f32), d.to(DType::f32)};
    };
    using Fwd = void (*)(const float*, const int64_t*, float*, float*, float*, int64_t, int64_t, void*);
    using Bwd = void (*)(const float*, const float*, const int64_t*, const float*, float*, int64_t, int64_t, void*);
    auto run = [B, K](Fwd fwd, Bwd bwd, Device d) {
      return [=](const Tensors& in, DType) {
        void* stream = stream_for(d);
        const Tensor x = in[0].to(d), labels = in[1].to(d), g = Tensor::full({1}, 1.7).to(d);
        Tensor lse = poisoned({B}, DType::f32, d), rows = poisoned({B}, DType::f32, d);
        Tensor loss = poisoned({1}, DType::f32, d), dl = poisoned({B, K}, DType::f32, d);
        fwd(x.data<float>(), labels.data<int64_t>(), lse.data<float>(), rows.data<float>(), loss.data<float>(), B, K,
            stream);
        bwd(g.data<float>(), x.data<float>(), labels.data<int64_t>(), lse.data<float>(), dl.data<float>(), B, K,
            stream);
        const Device cpu = Device::cpu();
        return Tensors{lse.to(cpu), rows.to(cpu), loss.to(cpu), dl.to(cpu)};
      };
    };
#if defined(DIFFUSE_HAVE_SIMT)
    if (B * K < 100000) c.emu = run(emu::cross_entropy_forward, emu::cross_entropy_backward, Device::cpu());
#endif
#if defined(DIFFUSE_HAVE_CUDA)
    c.cuda = run(cuda::cross_entropy_forward, cuda::cross_entropy_backward, Device::cuda(0));
#endif
    c.device_dtypes = {DType::f32};
    c.tolerance = [](Backend, DType, size_t out, const Tensors&, const Tensors&) {
      return out == 3 ? Tolerance{false, 1e-5, 1e-7, "dlogits: the softmax's 1e-5; tiny probabilities / B"}
                      : Tolerance{false, 1e-5, 1e-6, "lse and losses: the softmax's 1e-5 relative"};
    };
    table.push_back(c);
  }

  // bench/kernels: a classifier's 8192 rows of 1000 classes (f32), and --once's small rows. Bytes:
  // forward reads the logits; backward reads them and writes dlogits.
  struct BenchRows {
    BenchRun run;
    int64_t B, K;
  };
  for (const BenchRows& r : {BenchRows{BenchRun::measured, 8192, 1000}, BenchRows{BenchRun::once, 13, 10}}) {
    OpCase c = bench_case(name_of("cross_entropy ", r.B, "x", r.K), r.run, dims({r.B, r.K}));
    const double n = static_cast<double>(r.B * r.K);
    BenchKernel f = bench_kernel("cross_entropy_forward", "diffuse", {kF32 * n, 0}, "4 B K");
    BenchKernel b = bench_kernel("cross_entropy_backward", "diffuse", {2 * kF32 * n, 0}, "8 B K");
#if defined(DIFFUSE_HAVE_CUDA)
    struct Buffers {
      Tensor logits, labels, lse, row, loss, dloss, dl;
    };
    auto buffers = [r] {
      std::vector<int64_t> hl(static_cast<size_t>(r.B));
      for (int64_t i = 0; i < r.B; ++i) hl[i] = (i * 7919) % r.K;
      Buffers u{device_random({r.B, r.K}, DType::f32, -4.f, 4.f),
                Tensor::from_vector_i64(hl, {r.B}).to(Device::cuda(0)),
                device_empty({r.B}, DType::f32),
                device_empty({r.B}, DType::f32),
                device_empty({1}, DType::f32),
                Tensor::full({1}, 1.0, DType::f32, Device::cuda(0)),
                device_empty({r.B, r.K}, DType::f32)};
      cuda::cross_entropy_forward(u.logits.data<float>(), u.labels.data<int64_t>(), u.lse.data<float>(),
                                  u.row.data<float>(), u.loss.data<float>(), r.B, r.K, current_stream());
      return u;
    };
    f.prepare = [r, buffers]() -> std::function<void()> {
      return [r, u = buffers()]() mutable {
        cuda::cross_entropy_forward(u.logits.data<float>(), u.labels.data<int64_t>(), u.lse.data<float>(),
                                    u.row.data<float>(), u.loss.data<float>(), r.B, r.K, current_stream());
      };
    };
    b.prepare = [r, buffers]() -> std::function<void()> {
      return [r, u = buffers()]() mutable {
        cuda::cross_entropy_backward(u.dloss.data<float>(), u.logits.data<float>(), u.labels.data<int64_t>(),
                                     u.lse.data<float>(), u.dl.data<float>(), r.B, r.K, current_stream());
      };
    };
#endif
    c.bench_kernels = {f, b};
    table.push_back(c);
  }

  // tests/autograd: ag::cross_entropy (the mean over the batch) on logits in [-3, 3], 5 classes,
  // batch 1 and 4; the labels are passed through unchecked.
  for (int64_t B : {1, 4})
    table.push_back(gradcheck_case(
        name_of("ag::cross_entropy B ", B, " K 5"),
        [B] {
          std::vector<int64_t> lab;
          for (int64_t i = 0; i < B; ++i) lab.push_back(static_cast<int64_t>(next_seed() % 5));
          return Tensors{random_tensor({B, 5}, -3.f, 3.f), Tensor::from_vector_i64(lab, {B})};
        },
        [](const std::vector<ag::Var>& v) { return ag::cross_entropy(v[0], v[1].value()); }, {1}));
}

// ---- the sinusoidal timestep embedding -----------------------------------------------------------
// The kernel (time_embedding.cu, f32) against the cpu loop (kernels/time_embedding.cpp: the
// angle and sin/cos in double, rounded once; checked against DDPM and ADM in
// time_embedding_test.cpp). Both round a double evaluation once; the double results differ by a
// few double ulps at most (operation order, CUDA's 2-ulp sin/cos), which can flip that one
// rounding: one f32 ulp of a value in [-1, 1], atol 1.2e-7.
void add_time_embedding(std::vector<OpCase>& table) {
  using kernels::TimeEmbeddingOptions;
  const TimeEmbeddingOptions ddpm{10000.f, false, 1.f, 1.f}, adm{10000.f, true, 0.f, 1.f},
      scaled{100.f, true, 1.f, 1000.f};
  const TimeEmbeddingOptions options[] = {TimeEmbeddingOptions{}, ddpm, adm, scaled};
  struct Size {
    int64_t B;
    int dim;
    bool emu;
  };
  const Size sizes[] = {{1, 2, true},  {1, 7, true},   {1, 64, true},   {1, 129, true}, {5, 2, true},
                        {5, 7, true},  {5, 33, true},  {5, 64, true},   {5, 129, true}, {257, 321, false}};
  for (const Size& z : sizes)
    for (const TimeEmbeddingOptions& o : options) {
      if (z.dim / 2 - o.downscale_freq_shift <= 0) continue;
      OpCase c;
      c.name = name_of("timestep_embedding B ", z.B, " dim ", z.dim, " flip ", o.flip_sin_to_cos, " shift ",
                       o.downscale_freq_shift, " max_period ", o.max_period, " scale ", o.scale);
      // Integer-valued and continuous timesteps, up to 1000.
      c.inputs = [z](DType) { return Tensors{random_tensor({z.B}, 0.f, 1000.f)}; };
      c.reference = [z, o](const Tensors& in, DType, Backend) {
        Tensor out = Tensor::empty({z.B, z.dim});
        kernels::cpu::timestep_embedding(in[0], z.dim, o, out);
        return Tensors{out};
      };
      using Launch = void (*)(const float*, float*, int64_t, int, const TimeEmbeddingOptions&, void*);
      auto run = [z, o](Launch launch, Device d) {
        return [=](const Tensors& in, DType) {
          Tensor out = poisoned({z.B, z.dim}, DType::f32, d);
          launch(in[0].to(d).data<float>(), out.data<float>(), z.B, z.dim, o, stream_for(d));
          return Tensors{out.to(Device::cpu())};
        };
      };
#if defined(DIFFUSE_HAVE_SIMT)
      if (z.emu) c.emu = run(emu::timestep_embedding, Device::cpu());
#endif
#if defined(DIFFUSE_HAVE_CUDA)
      c.cuda = run(cuda::timestep_embedding, Device::cuda(0));
#endif
      c.device_dtypes = {DType::f32};
      c.tolerance = [](Backend, DType, size_t, const Tensors&, const Tensors&) {
        return Tolerance{false, 0, 1.2e-7, "both round a double evaluation once: one f32 ulp of [-1, 1]"};
      };
      table.push_back(c);
    }

  // bench/kernels: the UNet's embedding of 128 channels (dim 512) at batch 128 and 32, and --once's
  // small ones. Bytes: read t, write out (f32).
  struct BenchSize {
    BenchRun run;
    int64_t B;
    int dim;
  };
  for (const BenchSize& z : {BenchSize{BenchRun::measured, 128, 512}, BenchSize{BenchRun::measured, 32, 512},
                             BenchSize{BenchRun::once, 3, 40}, BenchSize{BenchRun::once, 1, 40}}) {
    OpCase c = bench_case(name_of("timestep_embedding ", z.B, "x", z.dim), z.run, dims({z.B, z.dim}));
    BenchKernel k =
        bench_kernel("timestep_embedding", "diffuse", {kF32 * z.B + kF32 * z.B * z.dim, 0}, "4 B + 4 B dim");
#if defined(DIFFUSE_HAVE_CUDA)
    k.prepare = [z]() -> std::function<void()> {
      Tensor t = device_random({z.B}, DType::f32, 0.f, 999.f), out = device_empty({z.B, z.dim}, DType::f32);
      return [=]() mutable {
        cuda::timestep_embedding(t.data<float>(), out.data<float>(), z.B, z.dim, TimeEmbeddingOptions{},
                                 current_stream());
      };
    };
#endif
    c.bench_kernels = {k};
    table.push_back(c);
  }
}

// ---- copy_rows: the strided row copy under concat and slice --------------------------------------
// Bytes are moved, so the result equals a memcpy per row, for every access width the alignment of
// the pointers, the strides and the width allows.
void add_copy_rows(std::vector<OpCase>& table) {
  struct Geometry {
    int64_t rows, width, src_stride, dst_stride, src_off, dst_off;  // bytes
  };
  // 16-byte units (bf16 concat of 128 + 256 channels), 8, 4, 2 and 1 byte units, one row.
  const Geometry geoms[] = {{37, 256, 768, 512, 512, 0}, {9, 24, 40, 64, 8, 16}, {5, 12, 20, 28, 4, 12},
                            {7, 6, 10, 14, 2, 6},        {3, 5, 9, 11, 1, 3},    {1, 300, 300, 304, 0, 4}};
  for (const Geometry& g : geoms) {
    OpCase c;
    c.name = name_of("copy_rows rows ", g.rows, " width ", g.width, " strides ", g.src_stride, "/", g.dst_stride,
                     " offsets ", g.src_off, "/", g.dst_off);
    const int64_t src_bytes = g.rows * g.src_stride + g.src_off, dst_bytes = g.rows * g.dst_stride + g.dst_off;
    // The source, and the destination's bytes before the copy (those between the rows must stay).
    c.inputs = [src_bytes, dst_bytes](DType) {
      return Tensors{Tensor::rand({src_bytes}, next_seed(), 0, 0.f, 255.f).to(DType::u8),
                     Tensor::rand({dst_bytes}, next_seed(), 0, 0.f, 255.f).to(DType::u8)};
    };
    c.reference = [g](const Tensors& in, DType, Backend) {
      Tensor want = in[1].clone();
      for (int64_t r = 0; r < g.rows; ++r)
        std::memcpy(static_cast<uint8_t*>(want.raw()) + g.dst_off + r * g.dst_stride,
                    static_cast<const uint8_t*>(in[0].raw()) + g.src_off + r * g.src_stride,
                    static_cast<size_t>(g.width));
      return Tensors{want};
    };
    using Launch = void (*)(void*, int64_t, const void*, int64_t, int64_t, int64_t, void*);
    auto run = [g](Launch launch, Device d) {
      return [=](const Tensors& in, DType) {
        Tensor src = in[0].to(d), dst = in[1].to(d);
        launch(static_cast<char*>(dst.raw()) + g.dst_off, g.dst_stride, static_cast<const char*>(src.raw()) + g.src_off,
               g.src_stride, g.rows, g.width, stream_for(d));
        return Tensors{dst.to(Device::cpu())};
      };
    };
#if defined(DIFFUSE_HAVE_SIMT)
    c.emu = run(emu::copy_rows, Device::cpu());
#endif
#if defined(DIFFUSE_HAVE_CUDA)
    c.cuda = run(cuda::copy_rows, Device::cuda(0));
#endif
    c.device_dtypes = {DType::u8};
    c.tolerance = [](Backend, DType, size_t, const Tensors&, const Tensors&) {
      return Tolerance{true, 0, 0, "bytes moved"};
    };
    table.push_back(c);
  }

  // bench/kernels: the UNet's skip concatenation, two (B H W, C) bf16 halves into 2C (the 32x32x128
  // maps at batch 128, and --once's small ones), against the copy engine's 2-D copy. Bytes: both
  // inputs read, the output written.
  struct BenchConcat {
    BenchRun run;
    const char* model;
    int64_t B, H, W, C;
    int64_t rows() const { return B * H * W; }
  };
  // The shape column names the maps (B H W C), as bench/torch_kernels.py does.
  for (const BenchConcat& b : {BenchConcat{BenchRun::measured, "cifar10", 128, 32, 32, 128},
                               BenchConcat{BenchRun::once, "small", 2, 5, 3, 24}}) {
    OpCase c = bench_case(name_of("concat ", b.model), b.run, name_of(b.model, " ", dims({b.B, b.H, b.W, b.C}), " x2"));
    const Cost cost{2 * 2 * kB16 * static_cast<double>(b.rows() * b.C), 0};
    BenchKernel k = bench_kernel("concat (copy_rows)", "diffuse", cost, "8 B H W C");
    BenchKernel copy = bench_kernel("concat (copy_rows)", "copy-engine", cost, "8 B H W C");
#if defined(DIFFUSE_HAVE_CUDA)
    const int64_t rb = b.C * 2;  // bytes of a row of one half
    k.prepare = [b, rb]() -> std::function<void()> {
      Tensor x = device_random({b.rows(), b.C}, DType::bf16), y = device_random({b.rows(), b.C}, DType::bf16);
      Tensor out = device_empty({b.rows(), 2 * b.C}, DType::bf16);
      return [=]() mutable {
        char* o = static_cast<char*>(out.raw());
        cuda::copy_rows(o, 2 * rb, x.raw(), rb, b.rows(), rb, current_stream());
        cuda::copy_rows(o + rb, 2 * rb, y.raw(), rb, b.rows(), rb, current_stream());
      };
    };
    copy.prepare = [b, rb]() -> std::function<void()> {
      Tensor x = device_random({b.rows(), b.C}, DType::bf16), y = device_random({b.rows(), b.C}, DType::bf16);
      Tensor out = device_empty({b.rows(), 2 * b.C}, DType::bf16);
      return [=]() mutable {
        char* o = static_cast<char*>(out.raw());
        cudaStream_t st = static_cast<cudaStream_t>(current_stream());
        const auto w = static_cast<size_t>(rb), h = static_cast<size_t>(b.rows());
        DF_CUDA_CHECK(cudaMemcpy2DAsync(o, 2 * w, x.raw(), w, w, h, cudaMemcpyDeviceToDevice, st));
        DF_CUDA_CHECK(cudaMemcpy2DAsync(o + rb, 2 * w, y.raw(), w, w, h, cudaMemcpyDeviceToDevice, st));
      };
    };
#endif
    c.bench_kernels = {k, copy};
    table.push_back(c);
  }

  // tests/autograd: ag::concat_last (an input twice: its two gradients add; a single input) and
  // ag::slice_last (inner and whole), the ops copy_rows runs on the GPU (linear: rounding only).
  table.push_back(gradcheck_case(
      "ag::concat_last of (2, 2, 3), (2, 2, 1), the first again",
      [] { return Tensors{random_tensor({2, 2, 3}), random_tensor({2, 2, 1})}; },
      [](const std::vector<ag::Var>& v) { return ag::concat_last({v[0], v[1], v[0]}); }));
  table.push_back(gradcheck_case(
      "ag::concat_last of (3, 2) alone", [] { return Tensors{random_tensor({3, 2})}; },
      [](const std::vector<ag::Var>& v) { return ag::concat_last({v[0]}); }));
  table.push_back(gradcheck_case(
      "ag::slice_last (3, 4) [1, 3)", [] { return Tensors{random_tensor({3, 4})}; },
      [](const std::vector<ag::Var>& v) { return ag::slice_last(v[0], 1, 3); }));
  table.push_back(gradcheck_case(
      "ag::slice_last (2, 1, 4) [0, 4)", [] { return Tensors{random_tensor({2, 1, 4})}; },
      [](const std::vector<ag::Var>& v) { return ag::slice_last(v[0], 0, 4); }));
}

// ---- GroupNorm with AdaGN scale/shift and SiLU, forward and backward -----------------------------
// One case runs forward and backward. Inputs: x, dy, gamma, beta, scale, shift (each parameter
// undefined when off). Outputs: y, mean, rstd, dx, then dgamma, dbeta, dscale, dshift for the
// parameters that are on.
//
// Two families of cases, each with the inputs its tolerance is argued for:
//  - the cpu fast path against kernels::ref in the same dtype, on activations with a non-zero mean
//    per channel (centring matters), every combination of gamma, beta, scale/shift and SiLU; both
//    backwards from the reference's statistics, so only the backward differs. f64: the same math
//    in a different order; only rounding of ~1e-16 per term separates them, so any algebra slip
//    shows far above 1e-10. f32: the fast path rounds the statistics to f32 and evaluates each
//    output with ~6 f32 operations on values of order 10, against a reference that rounds once: a
//    few 1e-6 absolute; 2e-5 leaves 4x margin. Parameter gradients are sums over the B*N positions:
//    their absolute tolerance grows with that count.
//  - the kernels (group_norm.cu) on every launch path (fused one-pass, split over blocks, split of
//    one, automatic), each backward from its own forward's statistics, against kernels::ref in f64
//    rounded once. x has an offset mean (+1.5) so a variance formula with cancellation would show.
//    f32 forward: the statistics are f32 (sums or Welford partials over <= a few thousand terms,
//    relative error ~(k + log2 n) eps < 1e-6), so xhat is within ~1e-6 and z, O(1) to O(10) here,
//    within rtol = atol = 1e-5. A group of nearly equal values has a large rstd, and x - mean,
//    tiny, carries the f32 mean's rounding (~eps |x|) times rstd into xhat: an absolute floor of
//    8 eps |x|max rstd (gamma (1+s) < 2.25). f32 backward: every gradient is a sum of up to B*N f32
//    terms and dx subtracts two such means, so the absolute error scales with the largest
//    gradient: atol 1e-4 max|want|, rtol 1e-4; dx = rstd (dxhat - m1 - xhat m2) cancels: each term
//    is O(max|dxhat|) (< 2.5 here) with an f32 error of a few ulp, scaled by rstd: a floor of
//    16 eps 2.5 max rstd, and xhat's error above enters times m2 and rstd once more:
//    8 eps |x|max rstd^2 2.5. bf16: the outputs y and dx add one rounding, 2^-8 of the value:
//    rtol 8e-3 (the f32 statistics and parameter gradients keep the f32 bounds).
struct GnCase {
  int64_t B, N, C;
  int G;
  bool gamma, beta, adagn, silu;
  kernels::GroupNormLaunch how;
  bool device;  // the kernels' family (else the cpu's)
  bool gpu_only;
};

double max_abs_of(const Tensor& t) {
  double m = 0;
  for (float v : t.to_vector()) m = std::max(m, static_cast<double>(std::fabs(v)));
  return m;
}

Tolerance group_norm_tolerance(const GnCase& g, DType t, size_t out, const Tensors& in,
                               const Tensors& want) {
  if (!g.device) {
    const bool f64 = t == DType::f64;
    const double tol = f64 ? 1e-10 : 2e-5, n = static_cast<double>(g.B * g.N);
    if (out < 4) return {false, f64 ? 1e-10 : 1e-5, tol, "fast path vs reference: rounding only"};
    return {false, f64 ? 1e-10 : 1e-5, tol * n, "parameter gradients: sums over B*N, tolerance times N"};
  }
  const bool f32 = t == DType::f32;
  const double rstd_max = max_abs_of(want[2]), ulp_x = 6e-8 * max_abs_of(in[0]);
  switch (out) {
    case 0:
      return {false, f32 ? 1e-5 : 8e-3, std::max(1e-5, 8 * ulp_x * rstd_max * 2.25),
              "f32 statistics; x - mean carries the mean's rounding times rstd"};
    case 1: return {false, 1e-5, 1e-6, "f32 sums of a few thousand terms"};
    case 2: return {false, 1e-5, 0, "f32 sums of a few thousand terms"};
    case 3:
      return {false, f32 ? 1e-4 : 8e-3,
              std::max({1e-4 * max_abs_of(want[3]), 4e-6 * rstd_max, 8 * ulp_x * rstd_max * rstd_max * 2.5}),
              "dx cancels: rstd times the f32 error of its terms, and xhat's error times m2 rstd"};
    default:
      return {false, 1e-4, 1e-4 * max_abs_of(want[out]), "sums of B*N f32 terms: 1e-4 of the largest"};
  }
}

using GnWorkspace = std::size_t (*)(int64_t, int64_t, int64_t, int, const kernels::GroupNormLaunch&);
using GnForward = void (*)(const void*, void*, DType, const float*, const float*, const float*, const float*, float*,
                           float*, int64_t, int64_t, int64_t, int, float, bool, void*, void*,
                           const kernels::GroupNormLaunch&);
using GnBackward = void (*)(const void*, const void*, void*, DType, const float*, const float*, const float*,
                            const float*, const float*, const float*, float*, float*, float*, float*, int64_t, int64_t,
                            int64_t, int, bool, void*, void*, const kernels::GroupNormLaunch&);

void add_group_norm(std::vector<OpCase>& table) {
  std::vector<GnCase> cases;
  // The cpu family: odd sizes (C=6 with G=3, T=5), batch 1, (B,C) with one position, one channel
  // per group, one group; every option. The last two are above the fast path's threading
  // threshold (16384 values): 3 samples over the threads (each normalised after its statistics)
  // and one sample (its rows split over the threads).
  struct CpuShape {
    int64_t B, N, C;
    int G;
  };
  const CpuShape cpu_shapes[] = {{2, 16, 8, 4}, {1, 5, 6, 3},    {3, 1, 8, 2},
                                 {2, 9, 32, 32}, {2, 7, 12, 1},  {3, 101, 64, 8}, {1, 301, 64, 8}};
  for (const CpuShape& c : cpu_shapes)
    for (int opts = 0; opts < 16; ++opts)
      cases.push_back({c.B, c.N, c.C, c.G, bool(opts & 1), bool(opts & 2), bool(opts & 4), bool(opts & 8), {}, false,
                       false});
  // The kernels' family: each launch path; options as (affine, adagn, silu).
  struct DevShape {
    int64_t B, N, C;
    int G;
    kernels::GroupNormLaunch how;
  };
  const DevShape dev_shapes[] = {
      {2, 9, 12, 4, {1, true}},    // fused: one block per (b, g), the group in shared memory
      {1, 7, 6, 2, {1, false}},    // split of one (the stats, finalize, apply kernels), batch 1
      {2, 50, 40, 8, {3, true}},   // three blocks per group; C > 32: two channel tiles in backward
      {1, 600, 6, 2, {0, true}},   // automatic: small batch splits (2 forward, 10 backward)
      {3, 1, 8, 4, {0, true}},     // N = 1: a (B, C) input
      {2, 15, 12, 4, {1, true}},   // (2, 3, 5, 12) images, fused
      {2, 15, 12, 4, {3, true}},   // and split in three
  };
  for (const DevShape& d : dev_shapes)
    for (int opts = 0; opts < 8; ++opts)
      cases.push_back({d.B, d.N, d.C, d.G, bool(opts & 1), bool(opts & 1), bool(opts & 2), bool(opts & 4), d.how, true,
                       false});
  // UNet shapes on a GPU: 32x32x128 at batch 64 (fused), 64x64x256 at batch 1 (split), 8x8x512.
  for (const DevShape& d : {DevShape{64, 1024, 128, 32, {}}, DevShape{1, 4096, 256, 32, {}},
                            DevShape{16, 64, 512, 32, {}}})
    cases.push_back({d.B, d.N, d.C, d.G, true, true, true, true, d.how, true, true});

  for (const GnCase& g : cases) {
    OpCase c;
    c.name = name_of("group_norm B ", g.B, " N ", g.N, " C ", g.C, " G ", g.G, " gamma ", g.gamma, " beta ", g.beta,
                     " scale/shift ", g.adagn, " silu ", g.silu,
                     g.device ? name_of(" splits ", g.how.splits, " fused ", g.how.allow_fused) : " (cpu family)");
    const Shape xs{g.B, g.N, g.C};
    c.inputs = [g, xs](DType t) {
      Tensors in(6);
      if (g.device) {
        in[0] = random_tensor(xs, -0.5f, 3.5f).to(t);  // an offset mean (+1.5)
        in[1] = random_tensor(xs).to(t);
        // The parameters are f32 for the kernels whatever the activations' dtype.
        if (g.gamma) in[2] = random_tensor({g.C}, 0.5f, 1.5f);
        if (g.beta) in[3] = random_tensor({g.C}, -0.5f, 0.5f);
        if (g.adagn) in[4] = random_tensor({g.B, g.C}, -0.5f, 0.5f), in[5] = random_tensor({g.B, g.C}, -0.5f, 0.5f);
      } else {
        Tensor x = random_normal(xs);  // activations with a non-zero mean per channel
        float* p = x.data<float>();
        for (int64_t i = 0; i < x.numel(); ++i) p[i] = 1.5f * p[i] + 0.7f;
        in[0] = x.to(t);
        in[1] = random_tensor(xs).to(t);
        if (g.gamma) in[2] = random_tensor({g.C}).to(t);
        if (g.beta) in[3] = random_tensor({g.C}).to(t);
        if (g.adagn) in[4] = random_tensor({g.B, g.C}).to(t), in[5] = random_tensor({g.B, g.C}).to(t);
      }
      return in;
    };
    kernels::GroupNormOptions opt;
    opt.groups = g.G, opt.eps = 1e-5f, opt.silu = g.silu;
    // kernels::ref (ref) or the fast path: forward, then backward from the reference's statistics
    // (ref_stats) or the forward's own.
    auto host_run = [g, xs, opt](const Tensors& in, DType ct, bool ref, bool ref_stats) {
      Tensor y = poisoned(xs, ct), mean = poisoned({g.B, g.G}, ct), rstd = poisoned({g.B, g.G}, ct);
      auto f = ref ? kernels::ref::group_norm_forward : kernels::cpu::group_norm_forward;
      f(in[0], in[2], in[3], in[4], in[5], opt, y, mean, rstd);
      Tensor sm = mean, sr = rstd;
      if (ref_stats) {
        sm = Tensor::empty({g.B, g.G}, ct), sr = Tensor::empty({g.B, g.G}, ct);
        Tensor yr = Tensor::empty(xs, ct);
        kernels::ref::group_norm_forward(in[0], in[2], in[3], in[4], in[5], opt, yr, sm, sr);
      }
      auto like = [](const Tensor& p) { return p.defined() ? poisoned(p.shape(), p.dtype()) : Tensor(); };
      kernels::GroupNormGrads gr{poisoned(xs, ct), like(in[2]), like(in[3]), like(in[4]), like(in[5])};
      auto bw = ref ? kernels::ref::group_norm_backward : kernels::cpu::group_norm_backward;
      bw(in[1], in[0], sm, sr, in[2], in[3], in[4], in[5], opt, gr);
      Tensors out{y, mean, rstd, gr.dx};
      for (const Tensor& p : {gr.dgamma, gr.dbeta, gr.dscale, gr.dshift})
        if (p.defined()) out.push_back(p);
      return out;
    };
    if (!g.device) {
      c.reference = [host_run](const Tensors& in, DType t, Backend) { return host_run(in, t, true, false); };
      c.cpu = [host_run](const Tensors& in, DType t) { return host_run(in, t, false, true); };
    } else {
      // kernels::ref in f64 on the same (bf16-exact) inputs; y and dx rounded once to the dtype,
      // the statistics and parameter gradients f32 as the kernels keep them.
      c.reference = [host_run](const Tensors& in, DType t, Backend) {
        Tensors in64;
        for (const Tensor& x : in) in64.push_back(x.defined() ? x.to(DType::f64) : Tensor());
        Tensors out = host_run(in64, DType::f64, true, false);
        for (size_t i = 0; i < out.size(); ++i) out[i] = out[i].to(i == 0 || i == 3 ? t : DType::f32);
        return out;
      };
      auto dev_run = [g, xs](GnWorkspace ws_bytes, GnForward fwd, GnBackward bwd, Device d) {
        return [=](const Tensors& in, DType t) {
          auto up = [d](const Tensor& x) { return x.defined() ? x.to(d) : Tensor(); };
          auto ptr = [](const Tensor& x) { return x.defined() ? x.data<float>() : nullptr; };
          auto out_ptr = [](Tensor& x) { return x.defined() ? x.data<float>() : nullptr; };
          auto grad = [d](bool on, const Shape& s) { return on ? poisoned(s, DType::f32, d) : Tensor(); };
          const Tensors di{up(in[0]), up(in[1]), up(in[2]), up(in[3]), up(in[4]), up(in[5])};
          Tensor y = poisoned(xs, t, d), dx = poisoned(xs, t, d);
          Tensor mean = poisoned({g.B, g.G}, DType::f32, d), rstd = poisoned({g.B, g.G}, DType::f32, d);
          Tensor dg = grad(g.gamma, {g.C}), db = grad(g.beta, {g.C});
          Tensor ds = grad(g.adagn, {g.B, g.C}), dh = grad(g.adagn, {g.B, g.C});
          const std::size_t wsb = ws_bytes(g.B, g.N, g.C, g.G, g.how);
          Tensor ws = poisoned({static_cast<int64_t>(wsb / 4) + 1}, DType::f32, d);
          void* stream = stream_for(d);
          fwd(di[0].raw(), y.raw(), t, ptr(di[2]), ptr(di[3]), ptr(di[4]), ptr(di[5]), mean.data<float>(),
              rstd.data<float>(), g.B, g.N, g.C, g.G, 1e-5f, g.silu, ws.raw(), stream, g.how);
          bwd(di[1].raw(), di[0].raw(), dx.raw(), t, mean.data<float>(), rstd.data<float>(), ptr(di[2]), ptr(di[3]),
              ptr(di[4]), ptr(di[5]), out_ptr(dg), out_ptr(db), out_ptr(ds), out_ptr(dh), g.B, g.N, g.C, g.G,
              g.silu, ws.raw(), stream, g.how);
          Tensors out;
          for (const Tensor& o : {y, mean, rstd, dx, dg, db, ds, dh})
            if (o.defined()) out.push_back(o.to(Device::cpu()));
          return out;
        };
      };
#if defined(DIFFUSE_HAVE_SIMT)
      if (!g.gpu_only)
        c.emu = dev_run(emu::group_norm_workspace_bytes, emu::group_norm_forward, emu::group_norm_backward,
                        Device::cpu());
#endif
#if defined(DIFFUSE_HAVE_CUDA)
      c.cuda = dev_run(cuda::group_norm_workspace_bytes, cuda::group_norm_forward, cuda::group_norm_backward,
                       Device::cuda(0));
#endif
    }
    c.tolerance = [g](Backend, DType t, size_t out, const Tensors& in, const Tensors& want) {
      return group_norm_tolerance(g, t, out, in, want);
    };
    table.push_back(c);
  }

  // bench/kernels: GroupNorm + SiLU on the UNets' bf16 maps (f32 gamma/beta and statistics) at the
  // models' batches, and --once's small maps. Bytes: forward reads x and writes y; backward reads dy
  // and x and writes dx (statistics and parameters are O(B G + C)).
  struct BenchMap {
    BenchRun run;
    const char* model;
    int64_t B, H, W, C;
    int G;
  };
  for (const BenchMap& m : {BenchMap{BenchRun::measured, "cifar10", 128, 32, 32, 128, 32},
                            BenchMap{BenchRun::measured, "cifar10", 128, 16, 16, 256, 32},
                            BenchMap{BenchRun::measured, "64x64", 32, 64, 64, 128, 32},
                            BenchMap{BenchRun::once, "small", 2, 6, 5, 32, 8},
                            BenchMap{BenchRun::once, "small", 1, 3, 7, 64, 32}}) {
    OpCase c = bench_case(name_of("group_norm ", m.model, " ", dims({m.B, m.H, m.W, m.C})), m.run,
                          name_of(m.model, " ", dims({m.B, m.H, m.W, m.C}), " G", m.G));
    const int64_t N = m.H * m.W;
    const double n = static_cast<double>(m.B * N * m.C);
    BenchKernel f = bench_kernel("group_norm_silu_forward", "diffuse", {2 * kB16 * n, 0}, "4 B H W C");
    BenchKernel b = bench_kernel("group_norm_silu_backward", "diffuse", {3 * kB16 * n, 0}, "6 B H W C");
#if defined(DIFFUSE_HAVE_CUDA)
    struct Buffers {
      Tensor x, y, dy, dx, gamma, beta, mean, rstd, dgamma, dbeta, ws;
    };
    auto buffers = [m, N] {
      const Shape xs{m.B, N, m.C};
      Buffers u{device_random(xs, DType::bf16),
                device_empty(xs, DType::bf16),
                device_random(xs, DType::bf16),
                device_empty(xs, DType::bf16),
                device_random({m.C}, DType::f32, 0.5f, 1.5f),
                device_random({m.C}, DType::f32),
                device_empty({m.B, m.G}, DType::f32),
                device_empty({m.B, m.G}, DType::f32),
                device_empty({m.C}, DType::f32),
                device_empty({m.C}, DType::f32),
                device_empty({static_cast<int64_t>(cuda::group_norm_workspace_bytes(m.B, N, m.C, m.G)) + 16},
                             DType::u8)};
      return u;
    };
    auto forward = [m, N](Buffers& u) {
      cuda::group_norm_forward(u.x.raw(), u.y.raw(), DType::bf16, u.gamma.data<float>(), u.beta.data<float>(),
                               nullptr, nullptr, u.mean.data<float>(), u.rstd.data<float>(), m.B, N, m.C, m.G, 1e-5f,
                               true, u.ws.raw(), current_stream());
    };
    f.prepare = [buffers, forward]() -> std::function<void()> {
      return [forward, u = buffers()]() mutable { forward(u); };
    };
    b.prepare = [m, N, buffers, forward]() -> std::function<void()> {
      Buffers u0 = buffers();
      forward(u0);  // the statistics the backward reads
      return [m, N, u = u0]() mutable {
        cuda::group_norm_backward(u.dy.raw(), u.x.raw(), u.dx.raw(), DType::bf16, u.mean.data<float>(),
                                  u.rstd.data<float>(), u.gamma.data<float>(), u.beta.data<float>(), nullptr, nullptr,
                                  u.dgamma.data<float>(), u.dbeta.data<float>(), nullptr, nullptr, m.B, N, m.C, m.G,
                                  true, u.ws.raw(), current_stream());
      };
    };
#endif
    c.bench_kernels = {f, b};
    table.push_back(c);
  }

  // tests/autograd: ag::group_norm with every option (gamma, beta, scale/shift, SiLU) on odd sizes
  // (C=6 with G=3, T=5), batch 1, NHWC, and a (B, C) input of 4 elements per group. Groups keep >= 4
  // elements so rstd stays O(1) and the central differences' O(h^2 f''') error stays ~1e-9, under
  // gradcheck's default tolerance.
  const std::pair<Shape, int> grad_shapes[] = {{Shape{2, 5, 6}, 3}, {Shape{1, 2, 3, 4}, 2}, {Shape{3, 8}, 2}};
  for (const auto& [shape, groups] : grad_shapes)
    for (int opts = 0; opts < 16; ++opts) {
      const Shape x = shape;
      const bool g_on = opts & 1, b_on = opts & 2, ss_on = opts & 4, silu = opts & 8;
      const int64_t B = x[0], C = x[-1];
      // The inputs in order x, gamma, beta, scale, shift, each only when on; their indices.
      int ig = -1, ib = -1, is = -1, it = -1, n = 1;
      if (g_on) ig = n++;
      if (b_on) ib = n++;
      if (ss_on) is = n++, it = n++;
      auto inputs = [x, B, C, g_on, b_on, ss_on] {
        Tensors in{random_normal(x)};
        if (g_on) in.push_back(random_tensor({C}, 0.5f, 1.5f));
        if (b_on) in.push_back(random_tensor({C}));
        if (ss_on) in.push_back(random_tensor({B, C}, -0.5f, 0.5f)), in.push_back(random_tensor({B, C}));
        return in;
      };
      const int G = groups;  // a copy: lambdas capture no structured binding before C++20
      auto op = [ig, ib, is, it, G, silu](const std::vector<ag::Var>& v) {
        auto pick = [&](int i) { return i < 0 ? ag::Var() : v[static_cast<size_t>(i)]; };
        return ag::group_norm(v[0], pick(ig), pick(ib), G, 1e-5f, pick(is), pick(it), silu);
      };
      table.push_back(gradcheck_case(name_of("ag::group_norm ", x.str(), " G ", groups, " gamma ", g_on, " beta ",
                                             b_on, " scale/shift ", ss_on, " silu ", silu),
                                     inputs, op));
    }
}

// ---- multi-head attention, forward and backward --------------------------------------------------
// Inputs q (B, Tq, C), k, v (B, Tk, C), dout (B, Tq, C), C = heads * D.
//  - The cpu fast path (GEMMs) against kernels::ref in the same dtype; outputs out, P, dq, dk, dv,
//    both backwards from the reference's P. Inputs q, k of order 2 so the logits give peaked rows.
//    f64: same math, other order: 1e-12. f32: logits of order 10 carry ~1e-6 absolute rounding,
//    which moves probabilities by ~1e-6 relative; outputs are averages of values <= 1: 1e-5.
//    Gradients sum up to T terms of order 1 (dV: P^T dO over Tq rows): atol scaled by T.
//  - The SIMT flash kernels (attention.cu) against kernels::ref in f64 (P materialised), rounded
//    once; outputs out, dq, dk, dv. f32: a score is a D-term dot product (D <= 64) of values in
//    [-1, 1], scaled by 1/sqrt(D): its f32 error is at most 64 eps * 8 = 3e-5 absolute, which P
//    inherits as a relative error; out, dV, dQ, dK are P-weighted sums of <= 100 terms accumulated
//    in f32, and dS subtracts Delta from dP. So each output is within ~1e-4 of its own scale: rtol
//    1e-4 with an absolute floor of 1e-4 max|want|. bf16: the outputs add one bf16 rounding (2^-8
//    of the value): rtol 8e-3; backward reads the bf16-rounded forward output in
//    Delta = rowsum(dO * O), an error spread over every dS of the row, so a gradient element is
//    within a bf16 rounding of the largest one: atol 8e-3 max|want| (max|want| of the f32 values;
//    rounding to bf16 may raise it by 2^-9, taken back here). The tensor-core kernels are
//    add_attention_tc's entries.
struct AttnCase {
  int64_t B, Tq, Tk;
  int heads, D;
  bool device, gpu_only;
};

void add_attention(std::vector<OpCase>& table) {
  std::vector<AttnCase> cases = {
      // The cpu family: odd sizes (T=5, C=6), batch 1, cross-attention (Tk != Tq, both ways), D=1,
      // and a UNet shape.
      {2, 5, 5, 2, 3, false, false}, {1, 5, 7, 2, 4, false, false}, {2, 9, 4, 1, 12, false, false},
      {1, 3, 3, 4, 1, false, false}, {3, 49, 49, 4, 16, false, false},
      // The kernels: self-attention with an odd length; cross-attention with Tq over one block (64)
      // and Tk under a tile (32); many key tiles and two dK/dV blocks (Tk > 64); batch 1 and
      // several heads; both head dims.
      {1, 37, 37, 1, 64, true, false}, {2, 70, 19, 2, 32, true, false}, {1, 5, 100, 2, 64, true, false},
      {1, 33, 33, 3, 32, true, false}, {2, 21, 45, 2, 32, true, false},
      // On a GPU: UNet attention at 16x16 (T = 256) with 4 heads of 64, and a cross-attention shape.
      {4, 256, 256, 4, 64, true, true}, {2, 100, 77, 8, 32, true, true},
  };
  for (const AttnCase& a : cases) {
    const int64_t C = static_cast<int64_t>(a.heads) * a.D;
    const Shape qs{a.B, a.Tq, C}, ks{a.B, a.Tk, C}, ps{a.B, a.heads, a.Tq, a.Tk};
    OpCase c;
    c.name = name_of("attention B ", a.B, " Tq ", a.Tq, " Tk ", a.Tk, " heads ", a.heads, " D ", a.D,
                     a.device ? " (kernels)" : " (cpu family)");
    c.inputs = [a, qs, ks](DType t) {
      const float r = a.device ? 1.f : 2.f;
      return Tensors{random_tensor(qs, -r, r).to(t), random_tensor(ks, -r, r).to(t), random_tensor(ks).to(t),
                     random_tensor(qs).to(t)};
    };
    // kernels::ref or the fast path in dtype ct: out, P, then the gradients from the reference's P.
    auto host_run = [a, qs, ks, ps](const Tensors& in, DType ct, bool ref) {
      Tensors x;
      for (const Tensor& t : in) x.push_back(t.to(ct));
      Tensor out = poisoned(qs, ct), p = poisoned(ps, ct), outr = Tensor::empty(qs, ct), pr = Tensor::empty(ps, ct);
      (ref ? kernels::ref::attention_forward : kernels::cpu::attention_forward)(x[0], x[1], x[2], a.heads, out, p);
      kernels::ref::attention_forward(x[0], x[1], x[2], a.heads, outr, pr);
      Tensor dq = poisoned(qs, ct), dk = poisoned(ks, ct), dv = poisoned(ks, ct);
      (ref ? kernels::ref::attention_backward : kernels::cpu::attention_backward)(x[3], x[0], x[1], x[2], pr, a.heads,
                                                                                   dq, dk, dv);
      return Tensors{out, p, dq, dk, dv};
    };
    if (!a.device) {
      c.reference = [host_run](const Tensors& in, DType t, Backend) { return host_run(in, t, true); };
      c.cpu = [host_run](const Tensors& in, DType t) { return host_run(in, t, false); };
    } else {
      c.reference = [host_run](const Tensors& in, DType t, Backend) {
        Tensors r = host_run(in, DType::f64, true);
        return Tensors{r[0].to(t), r[2].to(t), r[3].to(t), r[4].to(t)};
      };
      using Fwd = void (*)(const void*, const void*, const void*, void*, float*, DType, int64_t, int64_t, int64_t, int,
                           int, void*);
      using Ws = std::size_t (*)(int64_t, int64_t, int);
      using Bwd = void (*)(const void*, const void*, const void*, const void*, const void*, const float*, void*, void*,
                           void*, DType, int64_t, int64_t, int64_t, int, int, void*, void*);
      auto dev_run = [a, qs, ks](Fwd fwd, Ws ws_bytes, Bwd bwd, Device d) {
        return [=](const Tensors& in, DType t) {
          const Tensor q = in[0].to(d), k = in[1].to(d), v = in[2].to(d), dout = in[3].to(d);
          void* stream = stream_for(d);
          Tensor out = poisoned(qs, t, d), lse = poisoned({a.B, a.heads, a.Tq}, DType::f32, d);
          fwd(q.raw(), k.raw(), v.raw(), out.raw(), lse.data<float>(), t, a.B, a.Tq, a.Tk, a.heads, a.D, stream);
          Tensor dq = poisoned(qs, t, d), dk = poisoned(ks, t, d), dv = poisoned(ks, t, d);
          Tensor ws = poisoned({static_cast<int64_t>(ws_bytes(a.B, a.Tq, a.heads) / 4) + 1}, DType::f32, d);
          bwd(dout.raw(), q.raw(), k.raw(), v.raw(), out.raw(), lse.data<float>(), dq.raw(), dk.raw(), dv.raw(), t,
              a.B, a.Tq, a.Tk, a.heads, a.D, ws.raw(), stream);
          const Device cpu = Device::cpu();
          return Tensors{out.to(cpu), dq.to(cpu), dk.to(cpu), dv.to(cpu)};
        };
      };
#if defined(DIFFUSE_HAVE_SIMT)
      if (!a.gpu_only)
        c.emu = dev_run(emu::attention_forward, emu::attention_backward_workspace_bytes, emu::attention_backward,
                        Device::cpu());
#endif
#if defined(DIFFUSE_HAVE_CUDA)
      c.cuda = dev_run(cuda::attention_forward, cuda::attention_backward_workspace_bytes, cuda::attention_backward,
                       Device::cuda(0));
#endif
    }
    c.tolerance = [a](Backend, DType t, size_t out, const Tensors&, const Tensors& want) {
      if (!a.device) {
        const double tol = t == DType::f64 ? 1e-12 : 1e-5;
        if (out < 2) return Tolerance{false, tol, tol, "fast path vs reference: the same math, another order"};
        return Tolerance{false, tol, tol * static_cast<double>(std::max(a.Tq, a.Tk)),
                         "gradients: sums of up to T terms of order 1"};
      }
      const bool f32 = t == DType::f32;
      const double rtol = f32 ? 1e-4 : 8e-3, m = max_abs_of(want[out]) / (f32 ? 1.0 : 1.0 + 1.0 / 512);
      return Tolerance{false, rtol, rtol * m, f32 ? "f32 scores of D terms; P-weighted f32 sums"
                                                 : "one bf16 rounding; Delta reads the bf16 forward output"};
    };
    table.push_back(c);
  }

  // bench/kernels: the target shapes, 256 and 1024 tokens of 4 heads of 64 channels (bf16), SIMT
  // and tensor-core flash kernels, and --once's tile-edge lengths (19, 33) at both head dims. FLOPs:
  // forward Q K^T and P V, 2 B T^2 C each; backward five products (S recomputed, dP, dV, dQ, dK).
  struct BenchAttn {
    BenchRun run;
    const char* what;
    int64_t B, T;
    int heads, D;
  };
  for (const BenchAttn& at : {BenchAttn{BenchRun::measured, "cifar10 16x16", 128, 256, 4, 64},
                              BenchAttn{BenchRun::measured, "64x64 32x32", 32, 1024, 4, 64},
                              BenchAttn{BenchRun::once, "small", 2, 19, 2, 64},
                              BenchAttn{BenchRun::once, "small", 1, 33, 1, 32}}) {
    const std::string shape = name_of(at.what, " B", at.B, " T", at.T, " ", at.heads, "x", at.D);
    OpCase c = bench_case(name_of("attention ", shape), at.run, shape);
    const int64_t C = int64_t{at.heads} * at.D;
    const double t2c = static_cast<double>(at.B) * at.T * at.T * C;
    BenchKernel fs = bench_kernel("attention_forward", "diffuse-simt", {0, 4 * t2c}, "4 B T^2 C", true);
    BenchKernel ft = bench_kernel("attention_forward", "diffuse-tc", {0, 4 * t2c}, "4 B T^2 C", true);
    BenchKernel bs = bench_kernel("attention_backward", "diffuse-simt", {0, 10 * t2c}, "10 B T^2 C", true);
    BenchKernel bt = bench_kernel("attention_backward", "diffuse-tc", {0, 10 * t2c}, "10 B T^2 C", true);
#if defined(DIFFUSE_HAVE_CUDA)
    struct Buffers {
      Tensor q, k, v, dout, out, lse, dq, dk, dv, ws;
      bool tc;  // the tensor-core kernels take these pointers
    };
    // The backward reads the forward's out and lse: the SIMT forward writes them once here.
    auto buffers = [at, C] {
      const Shape s{at.B, at.T, C};
      const int64_t ws = std::max<int64_t>(
          static_cast<int64_t>(cuda::attention_backward_workspace_bytes(at.B, at.T, at.heads) / 4) + 1,
          at.B * at.heads * at.T);
      Buffers u{device_random(s, DType::bf16), device_random(s, DType::bf16), device_random(s, DType::bf16),
                device_random(s, DType::bf16), device_empty(s, DType::bf16), device_empty({at.B, at.heads, at.T},
                DType::f32), device_empty(s, DType::bf16), device_empty(s, DType::bf16), device_empty(s, DType::bf16),
                device_empty({ws}, DType::f32), false};
      u.tc = cuda::attention_tc_supported(DType::bf16, at.D, {u.q.raw(), u.k.raw(), u.v.raw(), u.out.raw()});
      cuda::attention_forward(u.q.raw(), u.k.raw(), u.v.raw(), u.out.raw(), u.lse.data<float>(), DType::bf16, at.B,
                              at.T, at.T, at.heads, at.D, current_stream());
      return u;
    };
    fs.prepare = [at, buffers]() -> std::function<void()> {
      return [at, u = buffers()]() mutable {
        cuda::attention_forward(u.q.raw(), u.k.raw(), u.v.raw(), u.out.raw(), u.lse.data<float>(), DType::bf16, at.B,
                                at.T, at.T, at.heads, at.D, current_stream());
      };
    };
    ft.prepare = [at, buffers]() -> std::function<void()> {
      Buffers u0 = buffers();
      if (!u0.tc) return {};
      return [at, u = u0]() mutable {
        cuda::attention_tc_forward(u.q.raw(), u.k.raw(), u.v.raw(), u.out.raw(), u.lse.data<float>(), at.B, at.T,
                                   at.T, at.heads, at.D, current_stream());
      };
    };
    bs.prepare = [at, buffers]() -> std::function<void()> {
      return [at, u = buffers()]() mutable {
        cuda::attention_backward(u.dout.raw(), u.q.raw(), u.k.raw(), u.v.raw(), u.out.raw(), u.lse.data<float>(),
                                 u.dq.raw(), u.dk.raw(), u.dv.raw(), DType::bf16, at.B, at.T, at.T, at.heads, at.D,
                                 u.ws.raw(), current_stream());
      };
    };
    bt.prepare = [at, buffers]() -> std::function<void()> {
      Buffers u0 = buffers();
      if (!u0.tc) return {};
      return [at, u = u0]() mutable {
        cuda::attention_tc_backward(u.dout.raw(), u.q.raw(), u.k.raw(), u.v.raw(), u.out.raw(), u.lse.data<float>(),
                                    u.dq.raw(), u.dk.raw(), u.dv.raw(), at.B, at.T, at.T, at.heads, at.D, u.ws.raw(),
                                    current_stream());
      };
    };
#endif
    c.bench_kernels = {fs, ft, bs, bt};
    table.push_back(c);
  }

  // tests/autograd: ag::attention, self (Tq = Tk) and cross (Tk < Tq and Tk > Tq), odd T=5, C=6,
  // batch 1, heads 1 and 2; q and k in [-2, 2] so the rows' softmax is not flat.
  struct GradAttn {
    int64_t B, Tq, Tk, C;
    int heads;
  };
  for (const GradAttn& a : {GradAttn{2, 5, 5, 6, 1}, GradAttn{2, 5, 5, 6, 2}, GradAttn{1, 5, 3, 4, 2},
                            GradAttn{1, 3, 7, 6, 1}, GradAttn{1, 4, 2, 4, 2}})
    table.push_back(gradcheck_case(
        name_of("ag::attention B ", a.B, " Tq ", a.Tq, " Tk ", a.Tk, " C ", a.C, " heads ", a.heads),
        [a] {
          return Tensors{random_tensor({a.B, a.Tq, a.C}, -2.f, 2.f), random_tensor({a.B, a.Tk, a.C}, -2.f, 2.f),
                         random_tensor({a.B, a.Tk, a.C})};
        },
        [a](const std::vector<ag::Var>& v) { return ag::attention(v[0], v[1], v[2], a.heads); }));
  // q, k and v one variable: its three gradients add.
  for (int heads : {1, 2})
    table.push_back(gradcheck_case(
        name_of("ag::attention q = k = v (2, 5, 6) heads ", heads),
        [] { return Tensors{random_tensor({2, 5, 6}, -2.f, 2.f)}; },
        [heads](const std::vector<ag::Var>& v) { return ag::attention(v[0], v[0], v[0], heads); }));
}


// ---- elementwise: broadcast binary ops, unary ops, the silu launchers, affine, axpby, dropout, swap
// The kernels (elementwise.cu) against kernels::ref (multi-index loops in double) on the same inputs,
// rounded once to f32 and then to the dtype, as the kernels' last step rounds their f32 result.
// Tolerances. f32 binary ops: one rounding of the exact result (add, sub, mul of f32 inputs are
// exact in double; div rounds twice): rtol 2.4e-7, atol 1e-6. Unary ops: the kernels round ~5 times
// and the GPU's expf / log1pf / tanhf are within 2 ulp (exact under the emulator), which the
// sigmoid does not amplify: ~4 ulp, rtol 2e-6; silu' = s (1 + x (1 - s)) cancels near its zero at
// x = -1.28, where the error is ~|x| eps: atol 1e-6 (times |dy| <= 1); accumulating adds one more
// rounding of a sum of two such terms: rtol 4e-6, atol 2e-6. bf16: the f32 result rounded once to
// 8 bits, which a last-bit difference in f32 may flip: one bf16 ulp, rtol 8e-3. Moves (broadcast_to,
// swap) and the Philox dropout mask are exact.
using BinaryLaunch = void (*)(kernels::BinaryOp, const void*, const kernels::Dims&, const void*, const kernels::Dims&,
                              void*, DType, void*);
using BroadcastLaunch = void (*)(const void*, const kernels::Dims&, void*, const kernels::Dims&, DType, void*);
using UnaryLaunch = void (*)(kernels::UnaryOp, const void*, void*, DType, int64_t, void*);
using UnaryGradLaunch = void (*)(kernels::UnaryOp, const void*, const void*, void*, DType, int64_t, bool, void*);
using SiluLaunch = void (*)(const void*, void*, DType, int64_t, void*);
using SiluGradLaunch = void (*)(const void*, const void*, void*, DType, int64_t, bool, void*);
using AffineLaunch = void (*)(const void*, void*, float, float, DType, int64_t, void*);
using AxpbyLaunch = void (*)(float, const void*, float, void*, DType, int64_t, void*);
using DropoutLaunch = void (*)(const void*, void*, DType, int64_t, float, uint64_t, uint64_t, const uint64_t*, void*);
using SwapLaunch = void (*)(float*, float*, int64_t, void*);

// The launchers of kernels/cuda/elementwise.h of one backend.
struct ElementwiseLaunchers {
  BinaryLaunch binary;
  BroadcastLaunch broadcast;
  UnaryLaunch unary;
  UnaryGradLaunch unary_grad;
  SiluLaunch silu;
  SiluGradLaunch silu_grad;
  AffineLaunch affine;
  AxpbyLaunch axpby;
  DropoutLaunch dropout;
  SwapLaunch swap;
};

#if defined(DIFFUSE_HAVE_SIMT)
const ElementwiseLaunchers kEmuElementwise{emu::binary_forward, emu::broadcast_to, emu::unary_forward,
                                           emu::unary_backward, emu::silu_forward, emu::silu_backward,
                                           emu::affine,         emu::axpby,        emu::dropout,
                                           emu::swap};
#endif
#if defined(DIFFUSE_HAVE_CUDA)
const ElementwiseLaunchers kCudaElementwise{cuda::binary_forward, cuda::broadcast_to, cuda::unary_forward,
                                            cuda::unary_backward, cuda::silu_forward, cuda::silu_backward,
                                            cuda::affine,         cuda::axpby,        cuda::dropout,
                                            cuda::swap};
#endif

// Sets c.emu and c.cuda (where the build has them and `emu` / `gpu` ask for them) to make(the
// backend's launchers, its device).
template <class Make>
void elementwise_runners(OpCase& c, bool emu, bool gpu, Make make) {
  (void)c, (void)emu, (void)gpu, (void)make;
#if defined(DIFFUSE_HAVE_SIMT)
  if (emu) c.emu = make(kEmuElementwise, Device::cpu());
#endif
#if defined(DIFFUSE_HAVE_CUDA)
  if (gpu) c.cuda = make(kCudaElementwise, Device::cuda(0));
#endif
}

// A reference value in f64 as the kernels store it: rounded to f32, then to the dtype.
Tensor stored(const Tensor& want64, DType t) { return want64.to(DType::f32).to(t); }

// A buffer of n + skew + 1 elements on d, poisoned, with src (n elements, if given) at [skew, skew + n):
// skew 1 puts the range off the kernels' alignment, and the elements beside it must keep their poison.
Tensor placed(const Tensor& src, int64_t n, DType t, int64_t skew, Device d) {
  Tensor b = poisoned({n + skew + 1}, t, d);
  if (src.defined()) b.slice(skew, skew + n).copy_(src.flatten());
  return b;
}
void* at(Tensor& b, int64_t skew) { return static_cast<char*>(b.raw()) + skew * static_cast<int64_t>(dtype_size(b.dtype())); }
Tensor range_of(const Tensor& b, int64_t n, int64_t skew) { return b.slice(skew, skew + n).to(Device::cpu()).clone(); }
// The elements beside the ranges of buffers placed with `skew`: the one after each, and the one
// before it when skew is 1.
Tensor beside(const std::vector<Tensor>& bufs, int64_t n, int64_t skew) {
  const DType t = bufs.at(0).dtype();
  Tensor g = Tensor::empty({static_cast<int64_t>(bufs.size()) * (skew + 1)}, t);
  int64_t k = 0;
  for (const Tensor& b : bufs) {
    const Tensor h = b.to(Device::cpu());
    if (skew) g.slice(k, k + 1).copy_(h.slice(0, 1)), ++k;
    g.slice(k, k + 1).copy_(h.slice(n + skew, n + skew + 1)), ++k;
  }
  return g;
}
Tolerance untouched() { return {true, 0, 0, "the elements beside the output keep their poison"}; }

constexpr kernels::BinaryOp kBinaryOps[] = {kernels::BinaryOp::add, kernels::BinaryOp::sub, kernels::BinaryOp::mul,
                                            kernels::BinaryOp::div};

Tolerance elementwise_tolerance(DType t, double f32_rtol, double atol, const char* why) {
  if (t == DType::bf16) return {false, 8e-3, atol, "the f32 result rounded once to bf16: one bf16 ulp"};
  return {false, f32_rtol, atol, why};
}

void add_elementwise(std::vector<OpCase>& table) {
  using kernels::BinaryOp;
  using kernels::UnaryOp;
  const Device cpu = Device::cpu();
  // Binary ops and broadcast_to: the same shape (packs), a bias (C) onto (B,H,W,C), a per-sample
  // scalar, the (B,1,1,C) time projection, both sides broadcasting, a rank mismatch, one element, an
  // odd innermost size (no packs). Outputs: a op b for add, sub, mul, div, then b repeated to the
  // broadcast shape.
  const std::pair<Shape, Shape> binary_shapes[] = {
      {{3, 5, 16}, {3, 5, 16}}, {{2, 3, 5, 16}, {16}}, {{3, 4, 5, 8}, {3, 1, 1, 1}}, {{2, 4, 4, 24}, {2, 1, 1, 24}},
      {{3, 1, 8}, {1, 5, 8}},   {{4, 1}, {1, 6}},      {{1}, {2, 3}},                {{5, 1, 3, 1}, {4, 1, 2}},
      {{2, 3, 7}, {7}}};
  for (const auto& [sa, sb] : binary_shapes) {
    const Shape a_shape = sa, b_shape = sb, o = kernels::broadcast_shape(sa, sb);
    OpCase c;
    c.name = name_of("binary_forward (add, sub, mul, div) and broadcast_to ", a_shape.str(), " op ", b_shape.str());
    // b away from zero, so that the quotient's rounding is div's only error.
    c.inputs = [a_shape, b_shape](DType t) {
      return Tensors{random_tensor(a_shape).to(t), random_tensor(b_shape, 0.5f, 2.f).to(t)};
    };
    c.reference = [o](const Tensors& in, DType t, Backend) {
      const Tensor a = in[0].to(DType::f64), b = in[1].to(DType::f64);
      Tensors out;
      for (BinaryOp op : kBinaryOps) {
        Tensor w = Tensor::empty(o, DType::f64);
        kernels::ref::binary_forward(op, a, b, w);
        out.push_back(stored(w, t));
      }
      Tensor w = Tensor::empty(o, DType::f64);
      kernels::ref::broadcast_to(b, w);
      out.push_back(stored(w, t));
      return out;
    };
    elementwise_runners(c, true, true, [a_shape, b_shape, o, cpu](const ElementwiseLaunchers& L, Device d) {
      return [=](const Tensors& in, DType t) {
        const Tensor a = in[0].to(d), b = in[1].to(d);
        Tensors out;
        for (BinaryOp op : kBinaryOps) {
          Tensor y = poisoned(o, t, d);
          L.binary(op, a.raw(), dims_of(a_shape), b.raw(), dims_of(b_shape), y.raw(), t, stream_for(d));
          out.push_back(y.to(cpu));
        }
        Tensor y = poisoned(o, t, d);
        L.broadcast(b.raw(), dims_of(b_shape), y.raw(), dims_of(o), t, stream_for(d));
        out.push_back(y.to(cpu));
        return out;
      };
    });
    c.tolerance = [](Backend, DType t, size_t out, const Tensors&, const Tensors&) {
      if (out == 4) return Tolerance{true, 0, 0, "broadcast_to moves values"};
      return elementwise_tolerance(t, 2.4e-7, 1e-6, "one rounding of the exact result (div: two)");
    };
    table.push_back(c);
  }

  // Unary ops over a length with a pack remainder; log and sqrt on positive inputs. Inputs x, dy,
  // dx0; outputs f(x), dy f'(x), and dx0 + dy f'(x) (the accumulating backward).
  for (UnaryOp op : {UnaryOp::silu, UnaryOp::sigmoid, UnaryOp::softplus, UnaryOp::exp, UnaryOp::log, UnaryOp::tanh,
                     UnaryOp::square, UnaryOp::sqrt, UnaryOp::neg}) {
    const int64_t n = 1037;
    OpCase c;
    c.name = name_of("unary_forward and unary_backward ", kernels::unary_name(op), " n ", n);
    c.inputs = [op](DType t) {
      const bool positive = op == UnaryOp::log || op == UnaryOp::sqrt;
      return Tensors{(positive ? random_tensor({n}, 0.05f, 4.f) : random_tensor({n}, -5.f, 5.f)).to(t),
                     random_tensor({n}).to(t), random_tensor({n}).to(t)};
    };
    c.reference = [op](const Tensors& in, DType t, Backend) {
      const Tensor x = in[0].to(DType::f64), dy = in[1].to(DType::f64), dx0 = in[2].to(DType::f64);
      Tensor y = Tensor::empty({n}, DType::f64), g = Tensor::empty({n}, DType::f64), ga = Tensor::empty({n}, DType::f64);
      kernels::ref::unary_forward(op, x, y);
      kernels::ref::unary_backward(op, dy, x, g);
      kernels::ref::binary_forward(BinaryOp::add, dx0, g, ga);
      return Tensors{stored(y, t), stored(g, t), stored(ga, t)};
    };
    elementwise_runners(c, true, true, [op, cpu](const ElementwiseLaunchers& L, Device d) {
      return [=](const Tensors& in, DType t) {
        const Tensor x = in[0].to(d), dy = in[1].to(d);
        Tensor y = poisoned({n}, t, d), g = poisoned({n}, t, d), ga = in[2].to(d).clone();
        L.unary(op, x.raw(), y.raw(), t, n, stream_for(d));
        L.unary_grad(op, x.raw(), dy.raw(), g.raw(), t, n, false, stream_for(d));
        L.unary_grad(op, x.raw(), dy.raw(), ga.raw(), t, n, true, stream_for(d));
        return Tensors{y.to(cpu), g.to(cpu), ga.to(cpu)};
      };
    });
    c.tolerance = [](Backend, DType t, size_t out, const Tensors&, const Tensors&) {
      if (out == 2) return elementwise_tolerance(t, 4e-6, 2e-6, "a sum of two terms of ~4 ulp each");
      return elementwise_tolerance(t, 2e-6, 1e-6, "~4 ulp of f32; silu' cancels near x = -1.28");
    };
    table.push_back(c);
  }

  // The silu launchers (the fused GroupNorm's activation outside it): lengths below one pack, odd,
  // and over a block, aligned and one element off; a GPU also takes a long one. Inputs x, dy, dx0;
  // outputs silu(x), dy silu'(x), dx0 + dy silu'(x), silu(x) written in place over x, and the
  // elements beside the four ranges.
  struct SiluSize {
    int64_t n, skew;
    bool emu;
  };
  for (const SiluSize& z : {SiluSize{1, 0, true}, SiluSize{1, 1, true}, SiluSize{5, 0, true}, SiluSize{5, 1, true},
                            SiluSize{4099, 0, true}, SiluSize{4099, 1, true}, SiluSize{1000003, 0, false}}) {
    const int64_t n = z.n, skew = z.skew;
    OpCase c;
    c.name = name_of("silu_forward and silu_backward n ", n, " skew ", skew);
    c.inputs = [n](DType t) {
      return Tensors{random_tensor({n}, -6.f, 6.f).to(t), random_tensor({n}).to(t), random_tensor({n}).to(t)};
    };
    c.reference = [n, skew](const Tensors& in, DType t, Backend) {
      const Tensor x = in[0].to(DType::f64), dy = in[1].to(DType::f64), dx0 = in[2].to(DType::f64);
      Tensor y = Tensor::empty({n}, DType::f64), g = Tensor::empty({n}, DType::f64), ga = Tensor::empty({n}, DType::f64);
      kernels::ref::unary_forward(UnaryOp::silu, x, y);
      kernels::ref::unary_backward(UnaryOp::silu, dy, x, g);
      kernels::ref::binary_forward(BinaryOp::add, dx0, g, ga);
      return Tensors{stored(y, t), stored(g, t), stored(ga, t), stored(y, t), poisoned({4 * (skew + 1)}, t)};
    };
    elementwise_runners(c, z.emu, true, [n, skew](const ElementwiseLaunchers& L, Device d) {
      return [=](const Tensors& in, DType t) {
        void* s = stream_for(d);
        Tensor xb = placed(in[0], n, t, skew, d), dyb = placed(in[1], n, t, skew, d);
        Tensor yb = placed(Tensor(), n, t, skew, d), gb = placed(Tensor(), n, t, skew, d);
        Tensor gab = placed(in[2], n, t, skew, d), ib = placed(in[0], n, t, skew, d);
        L.silu(at(xb, skew), at(yb, skew), t, n, s);
        L.silu_grad(at(xb, skew), at(dyb, skew), at(gb, skew), t, n, false, s);
        L.silu_grad(at(xb, skew), at(dyb, skew), at(gab, skew), t, n, true, s);
        L.silu(at(ib, skew), at(ib, skew), t, n, s);
        return Tensors{range_of(yb, n, skew), range_of(gb, n, skew), range_of(gab, n, skew), range_of(ib, n, skew),
                       beside({yb, gb, gab, ib}, n, skew)};
      };
    });
    c.tolerance = [](Backend, DType t, size_t out, const Tensors&, const Tensors&) {
      if (out == 4) return untouched();
      return elementwise_tolerance(t, 2e-6, 1e-6, "~4 ulp of f32; silu' cancels near x = -1.28");
    };
    table.push_back(c);
  }

  // affine and axpby. Inputs x, y. Outputs: x <- 1.5 x - 0.25 in place (affine), y <- 0.75 x - 1.25 y
  // (axpby), then 0.75 x written over a poisoned y with b = 0 (BLAS's beta = 0: y is not read), and
  // the elements beside the three ranges. The references: the cpu fast path's add_scalar, mul_scalar
  // and axpby in f64 (their loops are the readable ones; the library has no ref:: of them). f32: two
  // roundings of products and one of the sum, or an FMA on a GPU: rtol 1e-6 of the larger term,
  // atol 2e-6 near cancellation; 0.75 x alone is one correctly rounded product: exact.
  for (const SiluSize& z : {SiluSize{1, 0, true}, SiluSize{7, 1, true}, SiluSize{1037, 0, true},
                            SiluSize{2051, 1, true}, SiluSize{2051, 0, true}, SiluSize{1000003, 0, false}}) {
    const int64_t n = z.n, skew = z.skew;
    OpCase c;
    c.name = name_of("affine and axpby n ", n, " skew ", skew);
    c.inputs = [n](DType t) { return Tensors{random_tensor({n}).to(t), random_tensor({n}).to(t)}; };
    c.reference = [n, skew](const Tensors& in, DType t, Backend) {
      const Tensor x = in[0].to(DType::f64);
      const Tensor aff = kernels::cpu::add_scalar(kernels::cpu::mul_scalar(x, 1.5), -0.25);
      Tensor y = in[1].to(DType::f64).clone(), y0 = Tensor::empty({n}, DType::f64);
      kernels::cpu::axpby(0.75, x, -1.25, y);
      kernels::cpu::axpby(0.75, x, 0, y0);
      return Tensors{stored(aff, t), stored(y, t), stored(y0, t), poisoned({3 * (skew + 1)}, t)};
    };
    elementwise_runners(c, z.emu, true, [n, skew](const ElementwiseLaunchers& L, Device d) {
      return [=](const Tensors& in, DType t) {
        void* s = stream_for(d);
        Tensor xb = placed(in[0], n, t, skew, d), ab = placed(in[0], n, t, skew, d), yb = placed(in[1], n, t, skew, d);
        Tensor zb = placed(Tensor(), n, t, skew, d);
        L.affine(at(ab, skew), at(ab, skew), 1.5f, -0.25f, t, n, s);
        L.axpby(0.75f, at(xb, skew), -1.25f, at(yb, skew), t, n, s);
        L.axpby(0.75f, at(xb, skew), 0.f, at(zb, skew), t, n, s);
        return Tensors{range_of(ab, n, skew), range_of(yb, n, skew), range_of(zb, n, skew),
                       beside({ab, yb, zb}, n, skew)};
      };
    });
    c.tolerance = [](Backend, DType t, size_t out, const Tensors&, const Tensors&) {
      if (out == 3) return untouched();
      if (out == 2) return Tolerance{true, 0, 0, "a x alone: one correctly rounded product"};
      return elementwise_tolerance(t, 1e-6, out == 0 ? 1e-6 : 2e-6, "two rounded products and a rounded sum");
    };
    table.push_back(c);
  }

  // Dropout: the mask and scale of the cpu path (kernels::dropout_forward), exactly, drawn with the
  // plain seed and with seed ^ a device word (what a captured graph's replay reads). Inputs x and
  // {seed, word}.
  for (int64_t n : {1L, 1037L}) {
    OpCase c;
    c.name = name_of("dropout p 0.3 n ", n, ", with and without the seed word");
    c.inputs = [n](DType t) {
      return Tensors{random_tensor({n}).to(t),
                     Tensor::from_vector_i64({static_cast<int64_t>(next_seed()), static_cast<int64_t>(next_seed())}, {2})};
    };
    c.reference = [](const Tensors& in, DType t, Backend) {
      const uint64_t seed = static_cast<uint64_t>(in[1].data<int64_t>()[0]), word = static_cast<uint64_t>(in[1].data<int64_t>()[1]);
      const Tensor x = in[0].to(DType::f32);
      return Tensors{kernels::dropout_forward(x, 0.3f, seed, 17).to(t), kernels::dropout_forward(x, 0.3f, seed ^ word, 17).to(t)};
    };
    elementwise_runners(c, true, true, [n, cpu](const ElementwiseLaunchers& L, Device d) {
      return [=](const Tensors& in, DType t) {
        const uint64_t seed = static_cast<uint64_t>(in[1].data<int64_t>()[0]);
        const Tensor x = in[0].to(d), word = in[1].slice(1, 2).to(d);
        Tensor y = poisoned({n}, t, d), yw = poisoned({n}, t, d);
        L.dropout(x.raw(), y.raw(), t, n, 0.3f, seed, 17, nullptr, stream_for(d));
        L.dropout(x.raw(), yw.raw(), t, n, 0.3f, seed, 17, static_cast<const uint64_t*>(word.raw()), stream_for(d));
        return Tensors{y.to(cpu), yw.to(cpu)};
      };
    });
    c.tolerance = [](Backend, DType, size_t, const Tensors&, const Tensors&) {
      return Tolerance{true, 0, 0, "the cpu's Philox mask; x / (1 - p) rounded once"};
    };
    table.push_back(c);
  }

  // swap (the EMA's exchange with the live weights, f32): the two inputs, exchanged.
  {
    const int64_t n = 1001;
    OpCase c;
    c.name = name_of("swap n ", n);
    c.inputs = [](DType) { return Tensors{random_tensor({n}), random_tensor({n})}; };
    c.reference = [](const Tensors& in, DType, Backend) { return Tensors{in[1].clone(), in[0].clone()}; };
    elementwise_runners(c, true, true, [cpu](const ElementwiseLaunchers& L, Device d) {
      return [=](const Tensors& in, DType) {
        Tensor a = in[0].to(d).clone(), b = in[1].to(d).clone();
        L.swap(a.data<float>(), b.data<float>(), n, stream_for(d));
        return Tensors{a.to(cpu), b.to(cpu)};
      };
    });
    c.device_dtypes = {DType::f32};
    c.tolerance = [](Backend, DType, size_t, const Tensors&, const Tensors&) {
      return Tolerance{true, 0, 0, "values moved"};
    };
    table.push_back(c);
  }

  // bench/kernels: on the 32x32x128 map at batch 128 (bf16; --once's 2x6x5x32): the residual add,
  // the per-sample embedding's broadcast add, silu forward and backward and the bias gradient
  // (reduce_sum over B H W); and one f32 axpby of as many elements beside cuBLAS's. Bytes: each
  // input read once, each output written once.
  struct BenchMap {
    BenchRun run;
    const char* model;
    int64_t B, H, W, C;
  };
  for (const BenchMap& f : {BenchMap{BenchRun::measured, "cifar10", 128, 32, 32, 128},
                            BenchMap{BenchRun::once, "small", 2, 6, 5, 32}}) {
    const int64_t N = f.H * f.W, m = f.B * N * f.C;
    const double n = static_cast<double>(m);
    const std::string shape = name_of(f.model, " ", dims({f.B, f.H, f.W, f.C}));
    OpCase c = bench_case(name_of("elementwise ", shape), f.run, shape);
    BenchKernel add = bench_kernel("add (residual)", "diffuse", {3 * kB16 * n, 0}, "6 B H W C");
    BenchKernel addb = bench_kernel("add (per-sample embedding, broadcast)", "diffuse",
                                    {2 * kB16 * n + kB16 * static_cast<double>(f.B * f.C), 0}, "4 B H W C + 2 B C");
    BenchKernel sf = bench_kernel("silu_forward", "diffuse", {2 * kB16 * n, 0}, "4 B H W C");
    BenchKernel sb = bench_kernel("silu_backward", "diffuse", {3 * kB16 * n, 0}, "6 B H W C");
    BenchKernel rs = bench_kernel("reduce_sum (bias gradient)", "diffuse", {kB16 * n + kF32 * f.C, 0}, "2 B H W C + 4 C");
#if defined(DIFFUSE_HAVE_CUDA)
    const kernels::Dims d{f.B, N, f.C}, de{f.B, 1, f.C};
    const Shape xs{f.B, N, f.C};
    add.prepare = [=]() -> std::function<void()> {
      Tensor a = device_random(xs, DType::bf16), b = device_random(xs, DType::bf16), o = device_empty(xs, DType::bf16);
      return [=]() mutable {
        cuda::binary_forward(kernels::BinaryOp::add, a.raw(), d, b.raw(), d, o.raw(), DType::bf16, current_stream());
      };
    };
    addb.prepare = [=]() -> std::function<void()> {
      Tensor a = device_random(xs, DType::bf16), e = device_random({f.B, 1, f.C}, DType::bf16);
      Tensor o = device_empty(xs, DType::bf16);
      return [=]() mutable {
        cuda::binary_forward(kernels::BinaryOp::add, a.raw(), d, e.raw(), de, o.raw(), DType::bf16, current_stream());
      };
    };
    sf.prepare = [=]() -> std::function<void()> {
      Tensor a = device_random(xs, DType::bf16), o = device_empty(xs, DType::bf16);
      return [=]() mutable { cuda::silu_forward(a.raw(), o.raw(), DType::bf16, m, current_stream()); };
    };
    sb.prepare = [=]() -> std::function<void()> {
      Tensor a = device_random(xs, DType::bf16), b = device_random(xs, DType::bf16), o = device_empty(xs, DType::bf16);
      return [=]() mutable { cuda::silu_backward(a.raw(), b.raw(), o.raw(), DType::bf16, m, false, current_stream()); };
    };
    rs.prepare = [=]() -> std::function<void()> {
      Tensor b = device_random(xs, DType::bf16), g = device_empty({f.C}, DType::f32);
      Tensor ws = device_empty({static_cast<int64_t>(cuda::reduce_sum_workspace_bytes(d, 0b011)) + 16}, DType::u8);
      return [=]() mutable {
        cuda::reduce_sum(b.raw(), DType::bf16, d, 0b011, 1.f, g.raw(), DType::f32, ws.raw(), current_stream());
      };
    };
#endif
    c.bench_kernels = {add, addb, sf, sb, rs};
    table.push_back(c);

    OpCase ax = bench_case(name_of("axpby ", m), f.run, dims({m}));
    const Cost cost{3 * kF32 * static_cast<double>(m), 0};
    BenchKernel k = bench_kernel("axpby f32 (y = a x + y)", "diffuse", cost, "12 n");
    BenchKernel blas = bench_kernel("axpby f32 (y = a x + y)", "cublas", cost, "12 n");
#if defined(DIFFUSE_HAVE_CUDA)
    k.prepare = [m]() -> std::function<void()> {
      Tensor x = device_random({m}, DType::f32), y = device_random({m}, DType::f32);
      return [=]() mutable { cuda::axpby(0.5f, x.data<float>(), 1.f, y.data<float>(), DType::f32, m, current_stream()); };
    };
    blas.prepare = [m]() -> std::function<void()> {
      // One handle for the program's life, on the stream of each preparation.
      static const cublasHandle_t handle = [] {
        cublasHandle_t h = nullptr;
        DF_CHECK(cublasCreate(&h) == CUBLAS_STATUS_SUCCESS, "op table: cublasCreate failed");
        return h;
      }();
      DF_CHECK(cublasSetStream(handle, static_cast<cudaStream_t>(current_stream())) == CUBLAS_STATUS_SUCCESS,
               "op table: cublasSetStream failed");
      Tensor x = device_random({m}, DType::f32), y = device_random({m}, DType::f32);
      return [=]() mutable {
        const float alpha = 0.5f;
        DF_CHECK(cublasSaxpy(handle, static_cast<int>(m), &alpha, x.data<float>(), 1, y.data<float>(), 1) ==
                     CUBLAS_STATUS_SUCCESS,
                 "cublasSaxpy failed");
      };
    };
#endif
    ax.bench_kernels = {k, blas};
    table.push_back(ax);
  }
}

// ---- reductions: reduce_rows, reduce_all (the gradient norm) and reduce_sum over any axes ---------
// The kernels (reduce.cu) against kernels::ref::sum in double of x, or of x squared
// (kernels::ref::unary_forward's square) for the sums of squares. The kernels add in f32 in a fixed
// order: a thread sums k terms in sequence, then a tree of depth log2(threads) combines them, so an
// output's error is at most (k + log2 T) eps sum|term|, eps = 6e-8; for these sizes k + log2 T < 60
// (30M elements over 1024 x 256 threads: k ~ 115, still inside), so 1e-5 sum|term| of each output
// bounds it. A bf16 output adds one rounding: rtol 8e-3 of the value. The element past each output
// must keep its poison. That the same input gives the same bits again is elementwise_test.cpp's.
using RowsLaunch = void (*)(const float*, float*, int64_t, int64_t, kernels::ReduceOp, void*);
using AllWorkspace = int64_t (*)(int64_t);
using AllLaunch = void (*)(const float*, int64_t, kernels::ReduceOp, float*, float*, void*);
using SumWorkspace = std::size_t (*)(const kernels::Dims&, unsigned);
using SumLaunch = void (*)(const void*, DType, const kernels::Dims&, unsigned, float, void*, DType, void*, void*);

// f(x) in f64: x, or x squared for the sums of squares.
Tensor reduced_terms(const Tensor& x, kernels::ReduceOp op) {
  const Tensor x64 = x.to(DType::f64);
  if (op == kernels::ReduceOp::sum) return x64;
  Tensor sq = Tensor::empty(x64.shape(), DType::f64);
  kernels::ref::unary_forward(kernels::UnaryOp::square, x64, sq);
  return sq;
}

// kernels::ref::sum of the terms over `axes` (flat), and the same sum of |term|: the error bound's
// scale per output. An output of no terms is 0.
std::pair<Tensor, Tensor> ref_sum_and_magnitude(const Tensor& terms, const std::vector<int>& axes, int64_t outputs) {
  Tensor sum = Tensor::zeros({outputs}, DType::f64), mag = Tensor::zeros({outputs}, DType::f64);
  if (terms.numel() == 0) return {sum, mag};
  Tensor abs = terms.clone();
  double* p = abs.data<double>();
  for (int64_t i = 0; i < abs.numel(); ++i) p[i] = std::fabs(p[i]);
  kernels::ref::sum(terms, axes, sum);
  kernels::ref::sum(abs, axes, mag);
  return {sum, mag};
}

Tolerance sum_tolerance(const Tensor& magnitude, double scale, DType out) {
  Tolerance t{false, out == DType::bf16 ? 8e-3 : 0.0, 0, "f32 sums in a fixed order: 1e-5 of each output's sum |term|"};
  t.atol_each = kernels::cpu::mul_scalar(magnitude, 1e-5 * scale);
  return t;
}

const char* reduce_name(kernels::ReduceOp op) { return op == kernels::ReduceOp::sum ? "sum" : "sum_squares"; }

void add_reduce(std::vector<OpCase>& table) {
  using kernels::ReduceOp;
  const Device cpu = Device::cpu();
  // reduce_rows: short rows (warp per row, < 1024), long rows with and without 16-byte aligned
  // rows, batch 1, empty rows; on a GPU also one row of 5M, many short rows and many long ones.
  struct Rows {
    int64_t rows, cols;
    bool emu;
  };
  for (const Rows& r : {Rows{1, 1, true}, Rows{3, 5, true}, Rows{9, 33, true}, Rows{1, 1023, true}, Rows{2, 1029, true},
                        Rows{3, 2048, true}, Rows{4, 0, true}, Rows{1, 5000003, false}, Rows{777, 3, false},
                        Rows{64, 4096, false}})
    for (ReduceOp op : {ReduceOp::sum, ReduceOp::sum_squares}) {
      const int64_t rows = r.rows, cols = r.cols, stored_cols = std::max<int64_t>(cols, 1);
      OpCase c;
      c.name = name_of("reduce_rows ", reduce_name(op), " rows ", rows, " cols ", cols);
      c.inputs = [=](DType) { return Tensors{random_tensor({rows, stored_cols}, -2.f, 3.f)}; };
      auto want = [=](const Tensors& in) {
        return ref_sum_and_magnitude(reduced_terms(in[0], op), {1}, rows);
      };
      c.reference = [=](const Tensors& in, DType, Backend) {
        return Tensors{cols ? want(in).first.to(DType::f32) : Tensor::zeros({rows}), poisoned({1}, DType::f32)};
      };
      auto run = [=](RowsLaunch launch, Device d) {
        return [=](const Tensors& in, DType) {
          Tensor out = poisoned({rows + 1}, DType::f32, d);
          launch(in[0].to(d).data<float>(), out.data<float>(), rows, cols, op, stream_for(d));
          const Tensor o = out.to(cpu);
          return Tensors{o.slice(0, rows).clone(), o.slice(rows, rows + 1).clone()};
        };
      };
#if defined(DIFFUSE_HAVE_SIMT)
      if (r.emu) c.emu = run(emu::reduce_rows, cpu);
#endif
#if defined(DIFFUSE_HAVE_CUDA)
      c.cuda = run(cuda::reduce_rows, Device::cuda(0));
#endif
      c.device_dtypes = {DType::f32};
      c.tolerance = [=](Backend, DType, size_t out, const Tensors& in, const Tensors&) {
        if (out == 1) return untouched();
        return sum_tolerance(cols ? want(in).second : Tensor::zeros({rows}, DType::f64), 1, DType::f32);
      };
      table.push_back(c);
    }

  // reduce_all: empty, one element, odd lengths, aligned and one float off (x starts at `skew` in
  // its buffer); on a GPU also past 1024 * 2048 elements, where stage 1 caps its grid and strides.
  struct All {
    int64_t n, skew;
    bool emu;
  };
  for (const All& a : {All{0, 0, true}, All{0, 1, true}, All{1, 0, true}, All{1, 1, true}, All{1001, 0, true},
                       All{1001, 1, true}, All{70001, 0, true}, All{70001, 1, true}, All{30000001, 0, false}})
    for (ReduceOp op : {ReduceOp::sum, ReduceOp::sum_squares}) {
      const int64_t n = a.n, skew = a.skew;
      OpCase c;
      c.name = name_of("reduce_all ", reduce_name(op), " n ", n, " skew ", skew);
      // The buffer x lies in: x is [skew, skew + n).
      c.inputs = [=](DType) { return Tensors{random_tensor({n + skew + 1})}; };
      auto want = [=](const Tensors& in) {
        return ref_sum_and_magnitude(reduced_terms(in[0].slice(skew, skew + n), op), {0}, 1);
      };
      c.reference = [=](const Tensors& in, DType, Backend) {
        return Tensors{want(in).first.to(DType::f32), poisoned({1}, DType::f32)};
      };
      auto run = [=](AllWorkspace ws_floats, AllLaunch launch, Device d) {
        return [=](const Tensors& in, DType) {
          const Tensor buf = in[0].to(d);
          Tensor ws = poisoned({ws_floats(n)}, DType::f32, d), out = poisoned({2}, DType::f32, d);
          launch(buf.data<float>() + skew, n, op, ws.data<float>(), out.data<float>(), stream_for(d));
          const Tensor o = out.to(cpu);
          return Tensors{o.slice(0, 1).clone(), o.slice(1, 2).clone()};
        };
      };
#if defined(DIFFUSE_HAVE_SIMT)
      if (a.emu) c.emu = run(emu::reduce_all_workspace, emu::reduce_all, cpu);
#endif
#if defined(DIFFUSE_HAVE_CUDA)
      c.cuda = run(cuda::reduce_all_workspace, cuda::reduce_all, Device::cuda(0));
#endif
      c.device_dtypes = {DType::f32};
      c.tolerance = [=](Backend, DType, size_t out, const Tensors& in, const Tensors&) {
        if (out == 1) return untouched();
        return sum_tolerance(want(in).second, 1, DType::f32);
      };
      table.push_back(c);
    }

  // reduce_sum, scale 0.5, x f32 or bf16 (the case's dtype) into an f32 or bf16 output: each pass of
  // its plan: rows (a warp per short row; blocks per long row, split), columns with and without
  // splits, several reduced groups (multi-pass), nothing reduced (a copy), dimensions of size 1 and
  // 0, every axis (a scalar).
  const std::pair<Shape, unsigned> sum_cases[] = {
      {{6, 37}, 0b10},       {{3, 3000}, 0b10},  {{1, 9000}, 0b10},          {{4000, 24}, 0b01},
      {{2, 700, 40}, 0b010}, {{5, 3, 7}, 0b101}, {{2, 3, 4, 5, 6}, 0b10101}, {{4, 1, 6}, 0b010},
      {{4, 6}, 0b00},        {{3, 0, 5}, 0b010}, {{2, 9, 3}, 0b111},         {{1, 2, 1, 70}, 0b1011}};
  for (const auto& [shape_, mask_] : sum_cases)
    for (DType ot : {DType::f32, DType::bf16}) {
      const Shape s = shape_;
      const unsigned mask = mask_;
      std::vector<int> axes;
      int64_t outputs = 1;
      for (int i = 0; i < s.rank(); ++i) {
        if ((mask >> i) & 1u)
          axes.push_back(i);
        else
          outputs *= s[i];
      }
      OpCase c;
      c.name = name_of("reduce_sum ", s.str(), " axes mask ", mask, " into ", dtype_name(ot));
      c.inputs = [s](DType t) {
        return Tensors{s.numel() ? random_tensor(s, -1.f, 2.f).to(t) : Tensor::empty(s, t)};
      };
      auto want = [=](const Tensors& in) { return ref_sum_and_magnitude(reduced_terms(in[0], ReduceOp::sum), axes, outputs); };
      c.reference = [=](const Tensors& in, DType, Backend) {
        return Tensors{stored(kernels::cpu::mul_scalar(want(in).first, 0.5), ot), poisoned({1}, ot)};
      };
      auto run = [=](SumWorkspace ws_bytes, SumLaunch launch, Device d) {
        return [=](const Tensors& in, DType t) {
          const kernels::Dims dm = dims_of(s);
          const Tensor x = in[0].to(d);
          Tensor out = poisoned({outputs + 1}, ot, d);
          Tensor ws = poisoned({static_cast<int64_t>(ws_bytes(dm, mask) / 4) + 1}, DType::f32, d);
          launch(x.numel() ? x.raw() : nullptr, t, dm, mask, 0.5f, out.raw(), ot, ws.raw(), stream_for(d));
          const Tensor o = out.to(cpu);
          return Tensors{o.slice(0, outputs).clone(), o.slice(outputs, outputs + 1).clone()};
        };
      };
#if defined(DIFFUSE_HAVE_SIMT)
      c.emu = run(emu::reduce_sum_workspace_bytes, emu::reduce_sum, cpu);
#endif
#if defined(DIFFUSE_HAVE_CUDA)
      c.cuda = run(cuda::reduce_sum_workspace_bytes, cuda::reduce_sum, Device::cuda(0));
#endif
      c.tolerance = [=](Backend, DType, size_t out, const Tensors& in, const Tensors&) {
        if (out == 1) return untouched();
        return sum_tolerance(want(in).second, 0.5, ot);
      };
      table.push_back(c);
    }
}

// ---- AdamW + EMA over one flat f32 buffer (adamw.cu) ----------------------------------------------
// Against models/train/optim.cpp's adamw_update (the cpu loop AdamW::step runs, which the kernel
// mirrors), element by element: its weight decay off where the kernel's decay mask is 0, the
// gradient scaled first by the clipping factor, formed as kernels/cuda/adamw.h states from the f32
// squared norm. The kernel performs the loop's f32 operations in the same order (sqrt and division
// correctly rounded on both devices); on a GPU an FMA may replace a product and a sum (<= 1 ulp
// each): m and v stay within a few ulp, and the update lr m / (sqrt(v) / bc2 + eps) within a few ulp
// of itself: rtol 1e-6, atol 1e-7 (m near a cancellation). The bf16 copy must be bf16 of the
// kernel's own w exactly (output: their difference, 0), and the gradient is left alone.
// Inputs: w, g, m, v, ema (or none), the decay mask (u8, or none), the squared norm {1}.
// Outputs: w, m, v, then ema, the bf16 copy's difference, when on, then g.
struct AdamWCase {
  int64_t n, skew;
  bool ema, mask, bf16;
  float max_norm;
  int64_t t;              // the step, for the bias corrections
  bool device_params;     // the scalars read from device memory (a captured graph's), skip_nonfinite on
  bool nonfinite;         // the squared norm inf, then NaN, with skip_nonfinite: nothing may move
  bool emu;
};

kernels::AdamWParams adamw_params(int64_t t, float max_norm) {
  kernels::AdamWParams p;
  p.lr = 1e-3f, p.beta1 = 0.9f, p.beta2 = 0.999f, p.eps = 1e-8f, p.weight_decay = 0.1f;
  p.bc1 = static_cast<float>(1.0 - std::pow(0.9, double(t)));
  p.bc2_sqrt = static_cast<float>(std::sqrt(1.0 - std::pow(0.999, double(t))));
  p.ema_decay = 0.995f;
  p.max_grad_norm = max_norm;
  p.skip_nonfinite = 0;
  return p;
}

#if defined(DIFFUSE_HAVE_CUDA)
// The parameters of a UNet preset, counted by building it once per program.
int64_t unet_parameters(const std::string& preset) {
  static std::map<std::string, int64_t> counted;
  auto it = counted.find(preset);
  if (it == counted.end()) it = counted.emplace(preset, nn::UNet(nn::UNetConfig::preset(preset), 0).num_parameters()).first;
  return it->second;
}
#endif

using AdamWLaunch = void (*)(float*, const float*, float*, float*, float*, void*, const uint8_t*, const float*, int64_t,
                             const kernels::AdamWParams&, void*, const kernels::AdamWParams*);

void add_adamw(std::vector<OpCase>& table) {
  std::vector<AdamWCase> cases;
  // Lengths below, at and over a block, aligned and one float off (the one-element path); every
  // combination of the EMA, the decay mask and the bf16 copy; no clipping, clipping that does not
  // bite (the norm below the maximum) and clipping that does.
  for (int64_t n : {1L, 7L, 1027L})
    for (int64_t skew : {0L, 1L})
      for (int opts = 0; opts < 8; ++opts)
        for (float max_norm : {0.f, 1e6f, 0.05f})
          cases.push_back({n, skew, bool(opts & 1), bool(opts & 2), bool(opts & 4), max_norm, 3, false, false, true});
  cases.push_back({1027, 0, true, true, true, 0.05f, 5, true, false, true});
  cases.push_back({1027, 0, true, true, true, 0.05f, 5, false, true, true});
  cases.push_back({1000003, 0, true, true, true, 1.f, 10, false, false, false});  // on a GPU

  for (const AdamWCase& a : cases) {
    OpCase c;
    c.name = name_of("adamw_update n ", a.n, " skew ", a.skew, " ema ", a.ema, " mask ", a.mask, " bf16 ", a.bf16,
                     " max_norm ", a.max_norm, a.device_params ? " (scalars in device memory)" : "",
                     a.nonfinite ? " (a non-finite norm: skipped)" : "");
    c.inputs = [a](DType) {
      Tensors in{random_tensor({a.n}), random_tensor({a.n}, -0.5f, 0.5f), random_tensor({a.n}, -0.1f, 0.1f),
                 random_tensor({a.n}, 0.f, 0.05f), a.ema ? random_tensor({a.n}) : Tensor(),
                 a.mask ? random_tensor({a.n}, 0.f, 2.f).to(DType::u8) : Tensor()};  // the mask: 0 or 1
      Tensor sq = Tensor::empty({1}, DType::f64);
      kernels::ref::sum(reduced_terms(in[1], kernels::ReduceOp::sum_squares), {0}, sq);
      in.push_back(sq.to(DType::f32));
      return in;
    };
    c.reference = [a](const Tensors& in, DType, Backend) {
      Tensor w = in[0].clone(), m = in[2].clone(), v = in[3].clone(), e = a.ema ? in[4].clone() : Tensor();
      if (!a.nonfinite) {
        const kernels::AdamWParams p = adamw_params(a.t, a.max_norm);
        float clip = 1.f;
        if (p.max_grad_norm > 0) {
          const float f = p.max_grad_norm / (std::sqrt(in[6].data<float>()[0]) + 1e-6f);
          if (f < 1.f) clip = f;
        }
        Tensor g = in[1].clone();
        for (int64_t i = 0; i < a.n; ++i) g.data<float>()[i] *= clip;
        kernels::AdamWParams s = p;
        for (int64_t i = 0; i < a.n; ++i) {
          s.weight_decay = !a.mask || in[5].data<uint8_t>()[i] ? p.weight_decay : 0.f;
          train::adamw_update(w.data<float>() + i, g.data<float>() + i, m.data<float>() + i, v.data<float>() + i,
                              a.ema ? e.data<float>() + i : nullptr, 1, s);
        }
      }
      Tensors out{w, m, v};
      if (a.ema) out.push_back(e);
      if (a.bf16) out.push_back(Tensor::zeros({a.n}));
      out.push_back(in[1]);
      if (!a.nonfinite) return out;
      Tensors twice = out;  // inf, then NaN
      twice.insert(twice.end(), out.begin(), out.end());
      return twice;
    };
    auto run = [a](AdamWLaunch launch, Device d) {
      return [=](const Tensors& in, DType) {
        const int64_t n = a.n, skew = a.skew;
        kernels::AdamWParams p = adamw_params(a.t, a.max_norm);
        if (a.device_params || a.nonfinite) p.skip_nonfinite = 1;
        Tensor pd;  // the scalars in device memory
        kernels::AdamWParams garbage;  // what the by-value argument holds is then ignored
        garbage.bc1 = garbage.bc2_sqrt = 1.f;
        if (a.device_params) {
          Tensor h = Tensor::empty({static_cast<int64_t>(sizeof p)}, DType::u8);
          std::memcpy(h.raw(), &p, sizeof p);
          pd = h.to(d);
        }
        Tensors out;
        for (float bad : a.nonfinite ? std::vector<float>{INFINITY, NAN} : std::vector<float>{0.f}) {
          Tensor w = placed(in[0], n, DType::f32, skew, d), g = placed(in[1], n, DType::f32, skew, d);
          Tensor m = placed(in[2], n, DType::f32, skew, d), v = placed(in[3], n, DType::f32, skew, d);
          Tensor e = a.ema ? placed(in[4], n, DType::f32, skew, d) : Tensor();
          Tensor k = a.mask ? placed(in[5], n, DType::u8, skew, d) : Tensor();
          // The bf16 copy: poisoned, or, where nothing may move, the weights' own bf16.
          Tensor b = a.bf16 ? placed(a.nonfinite ? in[0].to(DType::bf16) : Tensor(), n, DType::bf16, skew, d) : Tensor();
          const Tensor sq = (a.nonfinite ? Tensor::full({1}, bad) : in[6]).to(d);
          launch(static_cast<float*>(at(w, skew)), static_cast<const float*>(at(g, skew)), static_cast<float*>(at(m, skew)),
                 static_cast<float*>(at(v, skew)), a.ema ? static_cast<float*>(at(e, skew)) : nullptr,
                 a.bf16 ? at(b, skew) : nullptr, a.mask ? static_cast<const uint8_t*>(at(k, skew)) : nullptr,
                 a.max_norm > 0 ? sq.data<float>() : nullptr, n, a.device_params ? garbage : p, stream_for(d),
                 a.device_params ? static_cast<const kernels::AdamWParams*>(pd.raw()) : nullptr);
          const Tensor wh = range_of(w, n, skew);
          out.insert(out.end(), {wh, range_of(m, n, skew), range_of(v, n, skew)});
          if (a.ema) out.push_back(range_of(e, n, skew));
          if (a.bf16)
            out.push_back(a.nonfinite ? kernels::sub(range_of(b, n, skew).to(DType::f32), in[0].to(DType::bf16).to(DType::f32))
                                      : kernels::sub(range_of(b, n, skew).to(DType::f32), wh.to(DType::bf16).to(DType::f32)));
          out.push_back(range_of(g, n, skew));
        }
        return out;
      };
    };
#if defined(DIFFUSE_HAVE_SIMT)
    if (a.emu) c.emu = run(emu::adamw_update, Device::cpu());
#endif
#if defined(DIFFUSE_HAVE_CUDA)
    c.cuda = run(cuda::adamw_update, Device::cuda(0));
#endif
    c.device_dtypes = {DType::f32};
    const size_t g_out = 3 + a.ema + a.bf16, bf16_out = a.bf16 ? 3 + a.ema : 99;
    c.tolerance = [a, g_out, bf16_out](Backend, DType, size_t out, const Tensors&, const Tensors&) {
      if (a.nonfinite) return Tolerance{true, 0, 0, "a non-finite norm with skip_nonfinite: nothing moves"};
      if (out % (g_out + 1) == g_out) return Tolerance{true, 0, 0, "the gradient is read only"};
      if (out == bf16_out) return Tolerance{true, 0, 0, "the bf16 copy is bf16 of the kernel's own w"};
      return Tolerance{false, 1e-6, 1e-7, "the loop's f32 operations in its order; an FMA on a GPU"};
    };
    table.push_back(c);
  }

  // bench/kernels: AdamW + EMA over the DDPM CIFAR-10 UNet's flat parameters with global-norm
  // clipping (the tiny preset's for --once), and the squared gradient norm it reads (reduce_all).
  // Bytes: read w g m v ema, write w m v ema (f32) and the bf16 copy; the norm reads g. The count
  // of parameters comes from building the model, once per program, and only where the rows can run
  // (a build with the CUDA backend): the tests that read the table never pay for it elsewhere.
#if defined(DIFFUSE_HAVE_CUDA)
  for (const auto& [run, preset] : {std::pair<BenchRun, const char*>{BenchRun::measured, "ddpm-cifar10"},
                                    std::pair<BenchRun, const char*>{BenchRun::once, "tiny"}}) {
    const int64_t n = unet_parameters(preset);
    const std::string shape = name_of(preset, " ", n, " params");
    OpCase c = bench_case(name_of("adamw ", shape), run, shape);
    BenchKernel k = bench_kernel("adamw_ema", "diffuse", {9 * kF32 * n + kB16 * n, 0}, "38 n");
    BenchKernel r = bench_kernel("grad_norm (reduce_all sum of squares)", "diffuse", {kF32 * n, 0}, "4 n");
    k.prepare = [n]() -> std::function<void()> {
      Tensor w = device_random({n}, DType::f32), g = device_random({n}, DType::f32);
      Tensor m = device_random({n}, DType::f32, -1e-3f, 1e-3f), v = device_random({n}, DType::f32, 0.f, 1e-6f);
      Tensor ema = device_random({n}, DType::f32), wb = device_empty({n}, DType::bf16), sumsq = device_empty({1}, DType::f32);
      Tensor ws = device_empty({cuda::reduce_all_workspace(n)}, DType::f32);
      cuda::reduce_all(g.data<float>(), n, kernels::ReduceOp::sum_squares, ws.data<float>(), sumsq.data<float>(),
                       current_stream());
      return [=]() mutable {
        kernels::AdamWParams p;
        p.lr = 2e-4f, p.weight_decay = 0.01f, p.bc1 = 0.1f, p.bc2_sqrt = 0.03f, p.ema_decay = 0.9999f;
        p.max_grad_norm = 1.f;
        cuda::adamw_update(w.data<float>(), g.data<float>(), m.data<float>(), v.data<float>(), ema.data<float>(),
                           wb.raw(), nullptr, sumsq.data<float>(), n, p, current_stream());
      };
    };
    r.prepare = [n]() -> std::function<void()> {
      Tensor g = device_random({n}, DType::f32), sumsq = device_empty({1}, DType::f32);
      Tensor ws = device_empty({cuda::reduce_all_workspace(n)}, DType::f32);
      return [=]() mutable {
        cuda::reduce_all(g.data<float>(), n, kernels::ReduceOp::sum_squares, ws.data<float>(), sumsq.data<float>(),
                         current_stream());
      };
    };
    c.bench_kernels = {k, r};
    table.push_back(c);
  }
#endif
}

// ---- the fused sampler step (sampler_step.cu) -----------------------------------------------------
// Against kernels::sampler_step_cpu (kernels/sampler_step.cpp, the reference: both call
// kernels/sampler_step.h's per-element math and draw the same Philox noise), over every option: each
// prediction type with each flag alone, all together, and none. The kernel evaluates the reference's
// f32 expressions in the same order; on a GPU nvcc may fuse a product and a sum into an FMA, <= 1 ulp
// per rounding; ~10 roundings, amplified at most 1 / min(alpha, sigma) = 5 by the conversions'
// divisions: < 10 * 5 * 6e-8 = 3e-6 of values that are O(1) here: rtol = atol = 1e-5. The seed word
// (a captured graph's replay: seed ^ *seed_xor) must give the combined seed's noise, bit for bit
// under the emulator. Inputs: the per-sample coefficients (raw bytes), z, the model output, the
// unconditional output, aux and eps_shift (each or none), {seed, offset, word}. Outputs: z_next, x0
// (when asked), z_next computed in place over z.
struct SamplerCase {
  kernels::StepPrediction prediction;
  bool guidance, clip, shift, aux, learned, x0_out, word;
  int batch;
  int64_t C, N;
  bool emu;
};

std::vector<kernels::SamplerStepCoeffs> random_coeffs(int batch) {
  const std::vector<float> r = random_tensor({batch, 9}, 0.f, 1.f).to_vector();
  std::vector<kernels::SamplerStepCoeffs> c(static_cast<size_t>(batch));
  for (int b = 0; b < batch; ++b) {
    const float* u = &r[static_cast<size_t>(b) * 9];
    const float theta = 0.2f + 1.1f * u[0];  // alpha, sigma >= ~0.2
    c[b].alpha = std::cos(theta);
    c[b].sigma = std::sin(theta);
    c[b].c_z = 2 * u[1] - 1, c[b].c_x0 = 2 * u[2] - 1, c[b].c_eps = 2 * u[3] - 1, c[b].c_aux = 2 * u[4] - 1;
    // The last sample draws no noise, so its zero-skip path runs too (batch 1 draws some).
    c[b].c_noise = (b == batch - 1 && batch > 1) ? 0.f : 0.1f + u[5];
    c[b].log_var_min = -6.f * u[6] - 1.f;
    c[b].log_var_max = c[b].log_var_min + 2.f * u[7];
  }
  return c;
}

// The step's parameters with the pointers of `in` (on the device that holds them) and x0_out.
kernels::SamplerStepParams sampler_params(const SamplerCase& k, const Tensors& in, float* x0_out) {
  kernels::SamplerStepParams p;
  p.prediction = k.prediction;
  p.coeffs = static_cast<const kernels::SamplerStepCoeffs*>(in[0].raw());
  p.guidance_scale = 1.7f;
  p.clip_x0 = k.clip;
  p.clip_min = -0.8f, p.clip_max = 0.9f;  // some x0 get clipped
  p.learned_variance = k.learned;
  p.channels = k.C;
  p.aux = in[4].defined() ? in[4].data<float>() : nullptr;
  p.eps_shift = in[5].defined() ? in[5].data<float>() : nullptr;
  p.x0_out = x0_out;
  return p;
}

void add_sampler_step(std::vector<OpCase>& table) {
  using kernels::StepPrediction;
  std::vector<SamplerCase> cases;
  struct Size {
    int batch;
    int64_t C, N;
    bool emu;
  };
  // N = 15 (C = 3): Philox blocks straddle samples; batch 1; a larger N = 3 * 37; on a GPU, 5
  // samples of 33x31x3.
  for (const Size& z : {Size{1, 3, 15, true}, Size{3, 3, 15, true}, Size{2, 3, 111, true}, Size{5, 3, 3 * 33 * 31, false}})
    for (StepPrediction pr : {StepPrediction::eps, StepPrediction::x0, StepPrediction::v})
      for (int mask = 0; mask < 64; ++mask) {
        if (mask != 0 && mask != 63 && (mask & (mask - 1)) != 0) continue;  // each flag alone, all, none
        cases.push_back({pr, bool(mask & 1), bool(mask & 2), bool(mask & 4), bool(mask & 8), bool(mask & 16),
                         bool(mask & 32), false, z.batch, z.C, z.N, z.emu});
      }
  cases.push_back({StepPrediction::eps, false, false, false, false, false, false, true, 2, 3, 15, true});

  for (const SamplerCase& k : cases) {
    const int64_t out_n = k.learned ? 2 * k.N : k.N;
    OpCase c;
    c.name = name_of("sampler_step prediction ", static_cast<int>(k.prediction), " guidance ", k.guidance, " clip ",
                     k.clip, " shift ", k.shift, " aux ", k.aux, " learned ", k.learned, " x0 ", k.x0_out,
                     k.word ? " seed word" : "", " B ", k.batch, " N ", k.N);
    c.inputs = [k, out_n](DType) {
      const std::vector<kernels::SamplerStepCoeffs> co = random_coeffs(k.batch);
      Tensor coeffs = Tensor::empty({static_cast<int64_t>(co.size() * sizeof co[0])}, DType::u8);
      std::memcpy(coeffs.raw(), co.data(), co.size() * sizeof co[0]);
      const int64_t seed = static_cast<int64_t>(next_seed()), offset = static_cast<int64_t>(next_seed() % 1000);
      return Tensors{coeffs,
                     random_tensor({k.batch, k.N}, -2.f, 2.f),
                     random_tensor({k.batch, out_n}, -1.5f, 1.5f),
                     k.guidance ? random_tensor({k.batch, out_n}, -1.5f, 1.5f) : Tensor(),
                     k.aux ? random_tensor({k.batch, k.N}) : Tensor(),
                     k.shift ? random_tensor({k.batch, k.N}, -0.3f, 0.3f) : Tensor(),
                     Tensor::from_vector_i64({seed, offset, static_cast<int64_t>(next_seed())}, {3})};
    };
    c.reference = [k](const Tensors& in, DType, Backend) {
      Tensor z_next = poisoned({k.batch, k.N}, DType::f32), x0 = poisoned({k.batch, k.N}, DType::f32);
      kernels::SamplerStepParams p = sampler_params(k, in, k.x0_out ? x0.data<float>() : nullptr);
      const int64_t* so = in[6].data<int64_t>();
      p.seed = static_cast<uint64_t>(so[0]) ^ (k.word ? static_cast<uint64_t>(so[2]) : 0);
      p.offset = static_cast<uint64_t>(so[1]);
      kernels::sampler_step_cpu(p, in[1].data<float>(), in[2].data<float>(),
                                in[3].defined() ? in[3].data<float>() : nullptr, z_next.data<float>(), k.N, k.batch);
      Tensors out{z_next};
      if (k.x0_out) out.push_back(x0);
      out.push_back(z_next);
      return out;
    };
    // Under the emulator the launcher on host memory; on a GPU the Tensor-level op (its checks, then
    // the launcher on the current stream).
    auto device_inputs = [](const Tensors& in, Device d) {
      Tensors di;
      for (const Tensor& t : in) di.push_back(t.defined() ? t.to(d) : Tensor());
      return di;
    };
    auto run = [=](Device d) {
      return [=](const Tensors& in, DType) {
        const Tensors di = device_inputs(in, d);
        Tensor z_next = poisoned({k.batch, k.N}, DType::f32, d), x0 = poisoned({k.batch, k.N}, DType::f32, d);
        Tensor zz = di[1].clone();
        kernels::SamplerStepParams p = sampler_params(k, di, k.x0_out ? x0.data<float>() : nullptr);
        const int64_t* so = in[6].data<int64_t>();
        p.seed = static_cast<uint64_t>(so[0]);
        p.offset = static_cast<uint64_t>(so[1]);
        if (k.word) p.seed_xor = reinterpret_cast<const uint64_t*>(di[6].data<int64_t>() + 2);
        kernels::SamplerStepParams in_place = p;
        in_place.x0_out = nullptr;
        const float* uncond = di[3].defined() ? di[3].data<float>() : nullptr;
        if (d.is_cpu()) {
#if defined(DIFFUSE_HAVE_SIMT)
          emu::sampler_step(p, di[1].data<float>(), di[2].data<float>(), uncond, z_next.data<float>(), k.N, k.batch,
                            nullptr);
          emu::sampler_step(in_place, zz.data<float>(), di[2].data<float>(), uncond, zz.data<float>(), k.N, k.batch,
                            nullptr);
#endif
        } else {
#if defined(DIFFUSE_HAVE_CUDA)
          cuda::sampler_step(p, di[1], di[2].reshape({k.batch, out_n}), di[3], z_next);
          cuda::sampler_step(in_place, zz, di[2].reshape({k.batch, out_n}), di[3], zz);
#endif
        }
        (void)uncond, (void)out_n;
        Tensors out{z_next.to(Device::cpu())};
        if (k.x0_out) out.push_back(x0.to(Device::cpu()));
        out.push_back(zz.to(Device::cpu()));
        return out;
      };
    };
#if defined(DIFFUSE_HAVE_SIMT)
    if (k.emu) c.emu = run(Device::cpu());
#endif
#if defined(DIFFUSE_HAVE_CUDA)
    c.cuda = run(Device::cuda(0));
#endif
    (void)run;
    c.device_dtypes = {DType::f32};
    c.tolerance = [k](Backend b, DType, size_t, const Tensors&, const Tensors&) {
      if (k.word && b == Backend::emu) return Tolerance{true, 0, 0, "the emulator runs the reference's f32 expressions"};
      return Tolerance{false, 1e-5, 1e-5, "the reference's f32 expressions; FMAs on a GPU, amplified <= 5x"};
    };
    table.push_back(c);
  }

  // bench/kernels: DDIM with eta / DDPM (z and eps in, the noise drawn in the kernel, x0 clipped) on
  // the models' images (f32) and --once's small ones. Bytes: read z and the model output, write
  // z_next.
  struct BenchImages {
    BenchRun run;
    const char* model;
    int64_t B, n;  // n = H W C per image
  };
  for (const BenchImages& im : {BenchImages{BenchRun::measured, "cifar10", 128, 32 * 32 * 3},
                                BenchImages{BenchRun::measured, "64x64", 32, 64 * 64 * 3},
                                BenchImages{BenchRun::once, "small", 2, 6 * 5 * 3},
                                BenchImages{BenchRun::once, "small", 1, 7 * 7}}) {
    OpCase c = bench_case(name_of("sampler_step ", im.model), im.run, name_of(im.model, " ", dims({im.B, im.n})));
    BenchKernel k = bench_kernel("sampler_step", "diffuse", {3 * kF32 * static_cast<double>(im.B * im.n), 0}, "12 B n");
#if defined(DIFFUSE_HAVE_CUDA)
    k.prepare = [im]() -> std::function<void()> {
      Tensor z = device_random({im.B, im.n}, DType::f32), eps = device_random({im.B, im.n}, DType::f32);
      Tensor zn = device_empty({im.B, im.n}, DType::f32);
      std::vector<kernels::SamplerStepCoeffs> hc(static_cast<size_t>(im.B));
      for (auto& co : hc) co = {0.9f, 0.43f, 1.05f, 0.f, -0.1f, 0.f, 0.05f, 0.f, 0.f};
      Tensor h = Tensor::empty({static_cast<int64_t>(hc.size() * sizeof hc[0])}, DType::u8);
      std::memcpy(h.raw(), hc.data(), hc.size() * sizeof hc[0]);
      Tensor coeffs = h.to(Device::cuda(0));
      return [=]() mutable {
        kernels::SamplerStepParams p;
        p.coeffs = static_cast<const kernels::SamplerStepCoeffs*>(coeffs.raw());
        p.clip_x0 = true;
        p.seed = 11;
        cuda::sampler_step(p, z.data<float>(), eps.data<float>(), nullptr, zn.data<float>(), im.n,
                           static_cast<int>(im.B), current_stream());
      };
    };
#endif
    c.bench_kernels = {k};
    table.push_back(c);
  }
}

// ---- the bf16 tensor-core flash attention (attention_tc.cu) ---------------------------------------
// Against kernels::ref in f64 (P materialised), rounded once to bf16; outputs out, dq, dk, dv. The
// tensor-core kernels round P (and dS in backward) to bf16 before the second product, where the SIMT
// kernels (add_attention) keep them in f32: one more bf16 rounding (2^-8 relative) of every term of
// a sum, on top of the outputs' own and of the bf16 forward output that Delta reads: twice the SIMT
// bound, rtol 1.6e-2 with an absolute floor of 1.6e-2 max|want|. Between the two kernels that is
// within the sum of the bounds (2.4e-2), so no comparison of the two is needed; their f32 log-sum-
// exps are compared in attention_test.cpp. The emulated mma sums its products exactly and rounds
// once, at least as accurate as the GPU's f32 accumulation. Batch 1; odd token counts (partial
// tiles in every kernel); Tq over one block of 64 rows; Tk under one dQ key tile (32) and over one
// forward tile (64); both head dims; on a GPU also cross-attention over 8 heads and the UNet's
// 16x16 shape.

void add_attention_tc(std::vector<OpCase>& table) {
  struct Geo {
    int64_t B, Tq, Tk;
    int heads, D;
    bool emu;
  };
  for (const Geo& g : {Geo{1, 37, 37, 1, 64, true}, Geo{1, 5, 100, 2, 64, true}, Geo{1, 70, 19, 2, 32, true},
                       Geo{1, 33, 33, 3, 32, true}, Geo{2, 100, 77, 8, 32, false}, Geo{4, 256, 256, 4, 64, false}}) {
    const int64_t C = static_cast<int64_t>(g.heads) * g.D;
    const Shape qs{g.B, g.Tq, C}, ks{g.B, g.Tk, C};
    OpCase c;
    c.name = name_of("attention B ", g.B, " Tq ", g.Tq, " Tk ", g.Tk, " heads ", g.heads, " D ", g.D,
                     " (tensor-core kernels)");
    c.inputs = [qs, ks](DType t) {
      return Tensors{random_tensor(qs).to(t), random_tensor(ks).to(t), random_tensor(ks).to(t), random_tensor(qs).to(t)};
    };
    c.reference = [g, qs, ks](const Tensors& in, DType t, Backend) {
      Tensors x;
      for (const Tensor& i : in) x.push_back(i.to(DType::f64));
      Tensor out = Tensor::empty(qs, DType::f64), p = Tensor::empty({g.B, g.heads, g.Tq, g.Tk}, DType::f64);
      kernels::ref::attention_forward(x[0], x[1], x[2], g.heads, out, p);
      Tensor dq = Tensor::empty(qs, DType::f64), dk = Tensor::empty(ks, DType::f64), dv = Tensor::empty(ks, DType::f64);
      kernels::ref::attention_backward(x[3], x[0], x[1], x[2], p, g.heads, dq, dk, dv);
      return Tensors{out.to(t), dq.to(t), dk.to(t), dv.to(t)};
    };
    using Supported = bool (*)(DType, int, std::initializer_list<const void*>);
    using Fwd = void (*)(const void*, const void*, const void*, void*, float*, int64_t, int64_t, int64_t, int, int, void*);
    using Bwd = void (*)(const void*, const void*, const void*, const void*, const void*, const float*, void*, void*,
                         void*, int64_t, int64_t, int64_t, int, int, void*, void*);
    using Ws = std::size_t (*)(int64_t, int64_t, int);
    auto run = [g, qs, ks](Supported supported, Fwd fwd, Bwd bwd, Ws ws_bytes, Device d) {
      return [=](const Tensors& in, DType t) {
        const Tensor q = in[0].to(d), k = in[1].to(d), v = in[2].to(d), dout = in[3].to(d);
        // Every GPU the backend targets (sm_80 and later) and the emulator take them.
        DF_CHECK(supported(t, g.D, {q.raw(), k.raw(), v.raw(), dout.raw()}),
                 "the tensor-core attention kernels refuse bf16 with D = ", g.D, " here");
        void* stream = stream_for(d);
        Tensor out = poisoned(qs, t, d), lse = poisoned({g.B, g.heads, g.Tq}, DType::f32, d);
        Tensor dq = poisoned(qs, t, d), dk = poisoned(ks, t, d), dv = poisoned(ks, t, d);
        Tensor ws = poisoned({std::max<int64_t>(static_cast<int64_t>(ws_bytes(g.B, g.Tq, g.heads) / 4) + 1,
                                                g.B * g.heads * g.Tq)},
                             DType::f32, d);
        fwd(q.raw(), k.raw(), v.raw(), out.raw(), lse.data<float>(), g.B, g.Tq, g.Tk, g.heads, g.D, stream);
        bwd(dout.raw(), q.raw(), k.raw(), v.raw(), out.raw(), lse.data<float>(), dq.raw(), dk.raw(), dv.raw(), g.B, g.Tq,
            g.Tk, g.heads, g.D, ws.raw(), stream);
        const Device cpu = Device::cpu();
        return Tensors{out.to(cpu), dq.to(cpu), dk.to(cpu), dv.to(cpu)};
      };
    };
#if defined(DIFFUSE_HAVE_SIMT)
    if (g.emu)
      c.emu = run(emu::attention_tc_supported, emu::attention_tc_forward, emu::attention_tc_backward,
                  emu::attention_backward_workspace_bytes, Device::cpu());
#endif
#if defined(DIFFUSE_HAVE_CUDA)
    c.cuda = run(cuda::attention_tc_supported, cuda::attention_tc_forward, cuda::attention_tc_backward,
                 cuda::attention_backward_workspace_bytes, Device::cuda(0));
#endif
    (void)run;
    c.device_dtypes = {DType::bf16};
    c.tolerance = [](Backend, DType, size_t out, const Tensors&, const Tensors& want) {
      // max|want| of the f32 values: rounding to bf16 may raise it by 2^-9, taken back here.
      const double m = max_abs_of(want[out]) / (1.0 + 1.0 / 512);
      return Tolerance{false, 1.6e-2, 1.6e-2 * m, "bf16 P and dS before the second products: twice the SIMT bound"};
    };
    table.push_back(c);
  }
}

}  // namespace

std::vector<OpCase> op_table() {
  std::vector<OpCase> table;
  add_noise(table);
  add_resample(table);
  add_embedding(table);
  add_softmax(table);
  add_cross_entropy(table);
  add_time_embedding(table);
  add_copy_rows(table);
  add_group_norm(table);
  add_attention(table);
  add_attention_tc(table);
  add_elementwise(table);
  add_reduce(table);
  add_adamw(table);
  add_sampler_step(table);
  return table;
}

}  // namespace diffuse::test
