// Multi-head attention on the cpu: one key, and the shapes it refuses. The GEMM fast path against the
// reference loops, and the kernels, are in the op table (op_table_test.cpp).
#include <catch2/catch.hpp>

#include "kernels/attention.h"
#include "tests/test_util.h"

using namespace diffuse;

TEST_CASE("attention with one key returns that value", "[cpu][kernels]") {
  // Tk = 1: every softmax row is exactly [1], so out[b, t] = v[b, 0] for every query.
  Tensor q = test::random_tensor({2, 5, 8}), k = test::random_tensor({2, 1, 8}), v = test::random_tensor({2, 1, 8});
  auto r = kernels::attention_forward(q, k, v, 2);
  std::vector<float> o = r.out.to_vector(), vv = v.to_vector();
  for (int b = 0; b < 2; ++b)
    for (int t = 0; t < 5; ++t)
      for (int c = 0; c < 8; ++c) CHECK(o[(b * 5 + t) * 8 + c] == vv[b * 8 + c]);
}

TEST_CASE("attention rejects bad shapes", "[cpu][kernels]") {
  Tensor q = test::random_tensor({2, 5, 6}), k = test::random_tensor({2, 3, 6});
  CHECK_THROWS_AS(kernels::attention_forward(q, k, k, 4), Error);                             // 6 % 4
  CHECK_THROWS_AS(kernels::attention_forward(q, k, test::random_tensor({2, 4, 6}), 2), Error);  // k/v differ
  CHECK_THROWS_AS(kernels::attention_forward(q, test::random_tensor({1, 3, 6}), test::random_tensor({1, 3, 6}), 2),
                  Error);
}

// ---- the bf16 tensor-core flash kernels (kernels/cuda/attention_tc.cu) beside the SIMT ones -------
// Their outputs and gradients against kernels::ref are op table entries (op_table.cpp,
// add_attention_tc). What an entry cannot say: the log-sum-exp both write for the backward agrees
// (f32 on both sides, from scores that differ only in summation order, the bf16 products being
// exact in f32: rtol = atol = 1e-4), and on a GPU the dispatch picks the tensor-core kernels for
// bf16, giving their bits (the kernels are deterministic, with no atomics). Its out is also held to
// kernels::ref in f64 with the table's bound (1.6e-2 of the value and of max|want|).
#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <tuple>
#include <vector>

#include "core/device.h"
#include "core/stream.h"
#include "kernels/attention.h"
#include "tests/emu_test_util.h"

namespace {

using TcForward = void (*)(const void*, const void*, const void*, void*, float*, int64_t, int64_t, int64_t, int, int,
                           void*);
using SimtForward = void (*)(const void*, const void*, const void*, void*, float*, DType, int64_t, int64_t, int64_t,
                             int, int, void*);

// Runs both forwards on `d`; checks the tensor-core out against kernels::ref and the two lse's
// against each other; returns the tensor-core out and lse.
std::pair<Tensor, Tensor> check_tc_lse(TcForward tc, SimtForward simt, int64_t B, int64_t T, int heads, int D,
                                       Device d, const Tensor& q, const Tensor& k, const Tensor& v) {
  const DType t = DType::bf16;
  const int64_t C = int64_t{heads} * D;
  Tensor out_tc = Tensor::empty({B, T, C}, t, d).poison_(), out_s = Tensor::empty({B, T, C}, t, d).poison_();
  Tensor lse_tc = Tensor::empty({B, heads, T}, DType::f32, d).poison_();
  Tensor lse_s = Tensor::empty({B, heads, T}, DType::f32, d).poison_();
  void* stream = d.is_cpu() ? nullptr : current_stream();
  tc(q.raw(), k.raw(), v.raw(), out_tc.raw(), lse_tc.data<float>(), B, T, T, heads, D, stream);
  simt(q.raw(), k.raw(), v.raw(), out_s.raw(), lse_s.data<float>(), t, B, T, T, heads, D, stream);
  Tensor want = Tensor::empty({B, T, C}, DType::f64), p = Tensor::empty({B, heads, T, T}, DType::f64);
  kernels::ref::attention_forward(q.to(Device::cpu()).to(DType::f64), k.to(Device::cpu()).to(DType::f64),
                                  v.to(Device::cpu()).to(DType::f64), heads, want, p);
  double m = 0;
  for (float a : want.to_vector()) m = std::max(m, double(std::fabs(a)));
  CHECK(test::allclose(out_tc.to(Device::cpu()).to(DType::f32), want.to(DType::f32), 1.6e-2, 1.6e-2 * m));
  const Tensor a = lse_tc.to(Device::cpu()), b = lse_s.to(Device::cpu());
  INFO("lse: " << test::compare(a, b).str());
  CHECK(test::allclose(a, b, 1e-4, 1e-4));
  return {out_tc.to(Device::cpu()), a};
}

}  // namespace

#if defined(DIFFUSE_HAVE_SIMT)
TEST_CASE("tensor-core attention under the emulator: its lse equals the SIMT kernels'", "[emu][kernels]") {
  test::for_each_order([] {
    for (const auto& [T, heads, D] : {std::tuple<int64_t, int, int>{37, 1, 64}, {33, 3, 32}}) {
      INFO("T " << T << " heads " << heads << " D " << D << ", seed " << test::run_seed());
      const int64_t C = int64_t{heads} * D;
      const Tensor q = test::random_tensor({1, T, C}).to(DType::bf16), k = test::random_tensor({1, T, C}).to(DType::bf16);
      const Tensor v = test::random_tensor({1, T, C}).to(DType::bf16);
      REQUIRE(emu::attention_tc_supported(DType::bf16, D, {q.raw(), k.raw(), v.raw()}));
      check_tc_lse(emu::attention_tc_forward, emu::attention_forward, 1, T, heads, D, Device::cpu(), q, k, v);
    }
  });
}
#endif

TEST_CASE("tensor-core attention on the GPU: its lse equals the SIMT kernels', and the dispatch picks it",
          "[cuda][kernels]") {
#if defined(DIFFUSE_HAVE_CUDA)
  if (!cuda_available()) return;
  const Device gpu = Device::cuda(0);
  set_current_device(gpu);
  REQUIRE(cuda_devices().at(0).cc_major >= 8);  // every GPU the backend targets
  for (const auto& [B, T, heads, D] : {std::tuple<int64_t, int64_t, int, int>{1, 37, 1, 64}, {4, 256, 4, 64},
                                       {1, 33, 3, 32}}) {
    INFO("B " << B << " T " << T << " heads " << heads << " D " << D << ", seed " << test::run_seed());
    const int64_t C = int64_t{heads} * D;
    const Tensor q = test::random_tensor({B, T, C}).to(DType::bf16).to(gpu);
    const Tensor k = test::random_tensor({B, T, C}).to(DType::bf16).to(gpu);
    const Tensor v = test::random_tensor({B, T, C}).to(DType::bf16).to(gpu);
    REQUIRE(cuda::attention_tc_supported(DType::bf16, D, {q.raw(), k.raw(), v.raw()}));
    const auto [out, lse] = check_tc_lse(cuda::attention_tc_forward, cuda::attention_forward, B, T, heads, D, gpu, q, k, v);
    const kernels::AttentionResult fwd = cuda::attention_forward(q, k, v, heads);
    CHECK(test::bit_mismatches(fwd.out.to(Device::cpu()), out) == 0);
    CHECK(test::bit_mismatches(fwd.saved.to(Device::cpu()), lse) == 0);
    const Tensor dout = test::random_tensor({B, T, C}).to(DType::bf16).to(gpu);
    Tensor dq = Tensor::empty({B, T, C}, DType::bf16, gpu).poison_(), dk = Tensor::empty({B, T, C}, DType::bf16, gpu).poison_();
    Tensor dv = Tensor::empty({B, T, C}, DType::bf16, gpu).poison_();
    Tensor ws = Tensor::empty({B * heads * T}, DType::f32, gpu).poison_();
    cuda::attention_tc_backward(dout.raw(), q.raw(), k.raw(), v.raw(), fwd.out.raw(), fwd.saved.data<float>(), dq.raw(),
                                dk.raw(), dv.raw(), B, T, T, heads, D, ws.raw(), current_stream());
    const kernels::AttentionGrads grads = cuda::attention_backward(dout, q, k, v, fwd, heads);
    CHECK(test::bit_mismatches(grads.dq.to(Device::cpu()), dq.to(Device::cpu())) == 0);
    CHECK(test::bit_mismatches(grads.dk.to(Device::cpu()), dk.to(Device::cpu())) == 0);
    CHECK(test::bit_mismatches(grads.dv.to(Device::cpu()), dv.to(Device::cpu())) == 0);
  }
#endif
}
