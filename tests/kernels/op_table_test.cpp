// The op table (tests/kernels/op_table.h) and the one harness that runs every backend of every op
// in it against the op's reference: [cpu] the fast path, [emu] the CUDA kernel under the emulator
// in every thread order, [cuda] the same kernel on a GPU (the simulated device in a
// DIFFUSE_CUDA=SIM build, where the tier is labelled sim). Outputs are poisoned before a backend
// writes them; inputs are fresh per run.
#include <catch2/catch.hpp>

#include <cstdint>
#include <vector>

#include "core/device.h"
#include "core/philox.h"
#include "core/stream.h"
#include "core/tensor.h"
#include "kernels/cuda/embedding.h"
#include "kernels/cuda/resample.h"
#include "kernels/embedding.h"
#include "kernels/resample.h"
#include "tests/emu_test_util.h"
#include "tests/kernels/op_table.h"
#include "tests/test_util.h"

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

// The dtype a reference computes in for outputs of dtype t: f64 for f64, f32 otherwise.
DType compute_dtype(DType t) { return t == DType::f64 ? DType::f64 : DType::f32; }

// ---- resampling: upsample_nearest2x and avg_pool2x, forward and backward ------------------------
// A launcher of kernels/cuda/resample.h; every one takes the small grid's (B, H, W, C).
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
      c.name = std::string(op.name) + " small grid " + s.str();
      c.inputs = [in_shape](DType t) { return Tensors{random_tensor(in_shape).to(t)}; };
      // Output 1 of the cpu backend is the public kernels:: function's result.
      c.reference = [op, out_shape](const Tensors& in, DType t) {
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
          launch(in[0].to(d).raw(), o.raw(), t, s[0], s[1], s[2], s[3], d.is_cpu() ? nullptr : current_stream());
          return Tensors{o.to(Device::cpu()), o.to(Device::cpu())};
        };
      };
      if (device_too && op.emu) c.emu = device_run(op.emu, Device::cpu());
#if defined(DIFFUSE_HAVE_CUDA)
      if (device_too && op.cuda) c.cuda = device_run(op.cuda, Device::cuda(0));
#endif
      c.tolerance = [](Backend, DType, size_t) {
        return Tolerance{true, 0, 0, "moves exact in binary; sums in the reference's order, rounded once"};
      };
      // Bytes: the input read once, the output written once. FLOPs: the pool's forward and the
      // upsample's backward add each input once; the other two only copy (and scale by 1 or 1/4).
      const bool sums = op.out_small;
      c.cost = [in_shape, out_shape, sums](DType t) {
        return Cost{static_cast<double>((in_shape.numel() + out_shape.numel()) * static_cast<int64_t>(dtype_size(t))),
                    sums ? static_cast<double>(in_shape.numel()) : 0.0};
      };
      table.push_back(c);
    }
}

// ---- embedding: lookup and its gradient ---------------------------------------------------------
// The cpu path (kernels/cpu/embedding.cpp, checked against plain loops in embedding_test.cpp) is
// the reference. The lookup copies rows: equal. The backward adds the rows of each id in batch
// order, as the cpu loop does: equal in f32; bf16 is the f32 sum rounded once.
void add_embedding(std::vector<OpCase>& table) {
  constexpr int64_t K = 11, D = 300;
  for (int64_t B : {1L, 7L, 40L}) {
    OpCase c;
    c.name = "embedding_forward and embedding_backward B " + std::to_string(B) + " K " + std::to_string(K) +
             " D " + std::to_string(D);
    c.inputs = [B](DType t) {
      std::vector<int64_t> idv(static_cast<size_t>(B));
      for (int64_t b = 0; b < B; ++b) idv[b] = static_cast<int64_t>(philox_uniform(next_seed(), 0, 0) * K) % K;
      idv[0] = K - 1;  // the null label row (classifier-free guidance) is the last
      return Tensors{Tensor::from_vector_i64(idv, {B}), random_tensor({K, D}).to(t), random_tensor({B, D}).to(t)};
    };
    c.reference = [](const Tensors& in, DType t) {
      return Tensors{kernels::embedding_forward(in[0], in[1].to(DType::f32)).to(t),
                     kernels::embedding_backward(in[2].to(DType::f32), in[0], Shape{K, D}).to(t)};
    };
    using Fwd = void (*)(const int64_t*, const void*, void*, DType, int64_t, int64_t, int64_t, void*);
    using Bwd = void (*)(const void*, const int64_t*, void*, DType, int64_t, int64_t, int64_t, void*);
    auto device_run = [B](Fwd fwd, Bwd bwd, Device d) {
      return [=](const Tensors& in, DType t) {
        Tensor ids = in[0].to(d), out = poisoned({B, D}, t, d), dt = poisoned({K, D}, t, d);
        void* stream = d.is_cpu() ? nullptr : current_stream();
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
    c.tolerance = [](Backend, DType, size_t) {
      return Tolerance{true, 0, 0, "row copies; sums in the cpu loop's order, rounded once"};
    };
    c.cost = [B](DType t) {
      const double es = static_cast<double>(dtype_size(t));
      return Cost{8.0 * B + es * (2.0 * B * D) + es * (B * D + K * D), static_cast<double>(B * D)};
    };
    table.push_back(c);
  }
}

}  // namespace

std::vector<OpCase> op_table() {
  std::vector<OpCase> table;
  add_resample(table);
  add_embedding(table);
  return table;
}

namespace {

void check_outputs(const OpCase& c, Backend b, DType t, const Tensors& got, const Tensors& want) {
  REQUIRE(got.size() == want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    const Tolerance tol = c.tolerance(b, t, i);
    INFO(c.name << " on the " << backend_name(b) << " in " << dtype_name(t) << ", output " << i << " (" << tol.why
                << "), seed " << run_seed());
    REQUIRE(got[i].shape() == want[i].shape());
    REQUIRE(got[i].dtype() == want[i].dtype());
    if (tol.bitwise) {
      CHECK(bit_mismatches(got[i], want[i]) == 0);
    } else {
      INFO(compare(got[i], want[i]).str());
      CHECK(allclose(got[i], want[i], tol.rtol, tol.atol));
    }
  }
}

// Runs `backend` of every case that has it, in each of its dtypes; returns how many ran.
int run_backend(Backend b, const std::vector<OpCase>& table) {
  int ran = 0;
  for (const OpCase& c : table) {
    const auto& run = b == Backend::cpu ? c.cpu : b == Backend::emu ? c.emu : c.cuda;
    if (!run) continue;
    for (DType t : b == Backend::cpu ? c.cpu_dtypes : c.device_dtypes) {
      const Tensors in = c.inputs(t);
      check_outputs(c, b, t, run(in, t), c.reference(in, t));
      ++ran;
    }
  }
  return ran;
}

}  // namespace

}  // namespace diffuse::test

using namespace diffuse;
using namespace diffuse::test;

TEST_CASE("op table: every op's cpu fast path matches its reference", "[cpu][kernels]") {
  CHECK(run_backend(Backend::cpu, op_table()) > 0);
}

#if defined(DIFFUSE_HAVE_SIMT)
TEST_CASE("op table: every op's CUDA kernel under the emulator matches its reference", "[emu][kernels]") {
  const std::vector<OpCase> table = op_table();
  for_each_order([&] { CHECK(run_backend(Backend::emu, table) > 0); });
}
#endif

TEST_CASE("op table: every op's CUDA kernel on the GPU matches its reference", "[cuda][kernels]") {
#if defined(DIFFUSE_HAVE_CUDA)
  if (!cuda_available()) return;
  CHECK(run_backend(Backend::cuda, op_table()) > 0);
#endif
}
