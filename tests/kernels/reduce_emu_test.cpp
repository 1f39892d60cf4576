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
#include "kernels/cuda/reduce.h"
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
