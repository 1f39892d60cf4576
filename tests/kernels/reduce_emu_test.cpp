// kernels/cuda/reduce.cu under the emulator ([emu]) and on a GPU ([cuda]) against double loops.
//
// Tolerance: the kernels add in f32. A thread sums k terms in sequence, then a tree of depth
// log2(threads) combines them, so |error| <= (k + log2 T) eps sum|term| with eps = 6e-8; for these
// sizes k + log2 T < 60, so 1e-5 * sum|term| bounds it (sum of squares: sum|term| is the result).
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "core/device.h"
#include "core/stream.h"
#include "core/tensor.h"
#include "kernels/elementwise.h"
#include "tests/emu_test_util.h"
#include "tests/test_util.h"

using namespace diffuse;
using namespace diffuse::test;
using kernels::ReduceOp;

namespace {

struct Ref {
  double value = 0, magnitude = 0;  // the exact result, and sum |term| for the error bound
};

Ref reference(const float* x, int64_t n, ReduceOp op) {
  Ref r;
  for (int64_t i = 0; i < n; ++i) {
    const double t = op == ReduceOp::sum ? double(x[i]) : double(x[i]) * x[i];
    r.value += t;
    r.magnitude += std::fabs(t);
  }
  return r;
}

bool close_to(float got, const Ref& want) {
  return std::isfinite(got) && std::fabs(got - want.value) <= 1e-5 * want.magnitude + 1e-30;
}

const ReduceOp kOps[] = {ReduceOp::sum, ReduceOp::sum_squares};

}  // namespace

#if defined(DIFFUSE_HAVE_SIMT)

TEST_CASE("reduce_rows under the emulator: warp per short row, block per long row", "[emu][kernels]") {
  struct Case { int64_t rows, cols; };
  // Short rows (< 1024), long rows with and without 16-byte aligned rows, batch 1, empty rows.
  const Case cases[] = {{1, 1}, {3, 5}, {9, 33}, {1, 1023}, {2, 1029}, {3, 2048}, {4, 0}};
  for_each_order([&] {
    for (const Case& c : cases) {
      for (ReduceOp op : kOps) {
        INFO("rows=" << c.rows << " cols=" << c.cols << " op=" << int(op));
        Tensor x = random_tensor({c.rows, std::max<int64_t>(c.cols, 1)}, -2.f, 3.f);
        Tensor out = Tensor::empty({c.rows + 1}).poison_();
        emu::reduce_rows(x.data<float>(), out.data<float>(), c.rows, c.cols, op, nullptr);
        const std::vector<float> o = out.to_vector();
        for (int64_t r = 0; r < c.rows; ++r) {
          const Ref want = reference(x.data<float>() + r * std::max<int64_t>(c.cols, 1), c.cols, op);
          INFO("row " << r << " got " << o[r] << " want " << want.value);
          CHECK(close_to(o[r], want));
        }
        CHECK(std::isnan(o[static_cast<size_t>(c.rows)]));
      }
    }
  });
}

TEST_CASE("reduce_all under the emulator: two deterministic stages", "[emu][kernels]") {
  for_each_order([] {
    for (int64_t n : {0L, 1L, 1001L, 70001L}) {
      for (int64_t skew : {0L, 1L}) {
        for (ReduceOp op : kOps) {
          INFO("n=" << n << " skew=" << skew << " op=" << int(op));
          Tensor buf = random_tensor({n + skew + 1}, -1.f, 1.f);
          const float* x = buf.data<float>() + skew;
          Tensor ws = Tensor::empty({emu::reduce_all_workspace(n)}).poison_();
          Tensor out = Tensor::empty({2}).poison_();
          emu::reduce_all(x, n, op, ws.data<float>(), out.data<float>(), nullptr);
          const Ref want = reference(x, n, op);
          INFO("got " << out.to_vector()[0] << " want " << want.value);
          CHECK(close_to(out.to_vector()[0], want));
          CHECK(std::isnan(out.to_vector()[1]));
          // The same input gives the same bits again.
          Tensor again = Tensor::empty({1}).poison_();
          emu::reduce_all(x, n, op, ws.data<float>(), again.data<float>(), nullptr);
          CHECK(bit_mismatches(again, out.slice(0, 1)) == 0);
        }
      }
    }
  });
}

#endif  // DIFFUSE_HAVE_SIMT

TEST_CASE("reductions on the GPU match the reference", "[cuda][kernels]") {
#if defined(DIFFUSE_HAVE_CUDA)
  if (!cuda_available()) return;
  const Device gpu = Device::cuda(0);
  for (ReduceOp op : kOps) {
    for (auto [rows, cols] : {std::pair<int64_t, int64_t>{1, 5000003}, {777, 3}, {64, 4096}, {1, 1}}) {
      INFO("rows=" << rows << " cols=" << cols);
      Tensor x = random_tensor({rows, cols});
      Tensor out = Tensor::empty({rows}, DType::f32, gpu).poison_();
      cuda::reduce_rows(x.to(gpu).data<float>(), out.data<float>(), rows, cols, op, current_stream());
      const std::vector<float> o = out.to_vector();
      for (int64_t r = 0; r < rows; ++r) CHECK(close_to(o[r], reference(x.data<float>() + r * cols, cols, op)));
    }
    // Past 1024 * 2048 elements stage 1 caps its grid and strides.
    const int64_t n = 30000001;
    Tensor x = random_tensor({n});
    Tensor ws = Tensor::empty({cuda::reduce_all_workspace(n)}, DType::f32, gpu);
    Tensor out = Tensor::empty({1}, DType::f32, gpu).poison_();
    cuda::reduce_all(x.to(gpu).data<float>(), n, op, ws.data<float>(), out.data<float>(), current_stream());
    // 30M terms over 1024 x 256 threads: k ~ 115 per thread, still inside the 1e-5 bound.
    CHECK(close_to(out.item(), reference(x.data<float>(), n, op)));
  }
#endif
}

// ---- reduce_sum over any axes ---------------------------------------------------------------------
//
// Against a double loop over the kept index. Tolerance as above (f32 sums, fixed order):
// 1e-5 * sum |x| per output; a bf16 output adds one rounding to 8 bits: rtol 8e-3 of the value.

namespace {

using kernels::Dims;

struct SumCase {
  Shape shape;
  unsigned mask;
};

// Each pass kind of the plan: rows (warp per short row; blocks per long row, split), columns with
// and without splits, several reduced groups (multi-pass), nothing reduced (a copy), size-1 and
// size-0 dimensions, every axis (a scalar).
std::vector<SumCase> sum_cases() {
  return {{{6, 37}, 0b10},       {{3, 3000}, 0b10},        {{1, 9000}, 0b10},     {{4000, 24}, 0b01},
          {{2, 700, 40}, 0b010}, {{5, 3, 7}, 0b101},       {{2, 3, 4, 5, 6}, 0b10101}, {{4, 1, 6}, 0b010},
          {{4, 6}, 0b00},        {{3, 0, 5}, 0b010},       {{2, 9, 3}, 0b111},    {{1, 2, 1, 70}, 0b1011}};
}

Shape kept_shape(const Shape& s, unsigned mask) {
  std::vector<int64_t> d;
  for (int i = 0; i < s.rank(); ++i)
    if (!((mask >> i) & 1u)) d.push_back(s[i]);
  if (d.empty()) d.push_back(1);
  return Shape(d);
}

// want[o] and sum |x| over o's terms, by brute force over the flat index.
void sum_reference(const Tensor& x, unsigned mask, std::vector<double>& want, std::vector<double>& mag) {
  const Shape& s = x.shape();
  const Shape k = kept_shape(s, mask);
  want.assign(static_cast<size_t>(k.numel()), 0.0);
  mag.assign(want.size(), 0.0);
  const std::vector<float> v = x.to_vector();
  for (int64_t i = 0; i < s.numel(); ++i) {
    int64_t rem = i, o = 0, mult = 1;
    for (int d = s.rank() - 1; d >= 0; --d) {
      const int64_t c = rem % s[d];
      rem /= s[d];
      if (!((mask >> d) & 1u)) {
        o += c * mult;
        mult *= s[d];
      }
    }
    want[o] += v[i];
    mag[o] += std::fabs(v[i]);
  }
}

template <class ReduceSum, class WorkspaceBytes>
void check_reduce_sum(ReduceSum&& reduce_sum, WorkspaceBytes&& ws_bytes, Device dev) {
  for (const SumCase& c : sum_cases()) {
    for (DType xt : {DType::f32, DType::bf16}) {
      for (DType ot : {DType::f32, DType::bf16}) {
        INFO(c.shape.str() << " mask " << c.mask << " " << dtype_name(xt) << " -> " << dtype_name(ot));
        Tensor x = random_tensor(c.shape.numel() ? c.shape : Shape{1}, -1.f, 2.f).to(xt);
        if (c.shape.numel() == 0) x = Tensor::empty(c.shape, xt);
        Dims d;
        d.rank = c.shape.rank();
        for (int i = 0; i < d.rank; ++i) d.d[i] = c.shape[i];
        const Shape ks = kept_shape(c.shape, c.mask);
        Tensor out = Tensor::empty({ks.numel() + 1}, ot, dev).poison_();
        const size_t wb = ws_bytes(d, c.mask);
        Tensor ws = Tensor::empty({static_cast<int64_t>(wb / 4) + 1}, DType::f32, dev).poison_();
        Tensor xd = x.to(dev);
        const float scale = 0.5f;
        reduce_sum(xd.numel() ? xd.raw() : nullptr, xt, d, c.mask, scale, out.raw(), ot, ws.raw(), current_stream());
        std::vector<double> want, mag;
        sum_reference(x.to(DType::f32), c.mask, want, mag);
        const std::vector<float> got = out.to(Device::cpu()).to_vector();
        for (size_t o = 0; o < want.size(); ++o) {
          const double w = scale * want[o];
          const double tol = 1e-5 * scale * mag[o] + (ot == DType::bf16 ? 8e-3 * std::fabs(w) : 0.0) + 1e-30;
          INFO("output " << o << " got " << got[o] << " want " << w);
          CHECK(std::fabs(got[o] - w) <= tol);
        }
        CHECK(std::isnan(got[want.size()]));  // nothing past the output
        // Deterministic: the same bits again.
        Tensor again = Tensor::empty({ks.numel()}, ot, dev).poison_();
        reduce_sum(xd.numel() ? xd.raw() : nullptr, xt, d, c.mask, scale, again.raw(), ot, ws.raw(), current_stream());
        CHECK(bit_mismatches(again.to(Device::cpu()), out.slice(0, ks.numel()).to(Device::cpu())) == 0);
      }
    }
  }
}

}  // namespace

#if defined(DIFFUSE_HAVE_SIMT)
TEST_CASE("reduce_sum under the emulator: rows, columns, splits, several groups", "[emu][kernels]") {
  for_each_order([] { check_reduce_sum(emu::reduce_sum, emu::reduce_sum_workspace_bytes, Device::cpu()); });
}
#endif

TEST_CASE("reduce_sum on the GPU", "[cuda][kernels]") {
#if defined(DIFFUSE_HAVE_CUDA)
  if (!cuda_available()) return;
  check_reduce_sum(cuda::reduce_sum, cuda::reduce_sum_workspace_bytes, Device::cuda(0));
#endif
}
