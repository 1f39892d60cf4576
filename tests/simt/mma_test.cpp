// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 as the emulator's warp collective
// (kernels/simt/simt.h) against a plain matrix product. Each lane packs its fragments as the PTX
// ISA's "Matrix Fragments for mma.m16n8k16 with floating point type" assigns them, from
// row-major A (16 x 16), B stored k-major (B[k][n], 16 x 8) and C (16 x 8) in global memory, and
// unpacks D the same way.
#include "tests/simt/simt_test_util.h"

#include <random>

using namespace diffuse::simt;
using namespace diffuse::simt::test;

namespace {

// The PTX ISA's fragment layout, with groupID = lane >> 2 and threadID_in_group = lane % 4.
struct Frag {
  int g, t;
  explicit Frag(int lane) : g(lane >> 2), t(lane % 4) {}
  // a_i, 0 <= i < 8: row groupID for i in {0, 1, 4, 5}, else groupID + 8; column
  // threadID_in_group * 2 + (i & 1), plus 8 for i >= 4.
  int a_row(int i) const { return (i < 2 || (i >= 4 && i < 6)) ? g : g + 8; }
  int a_col(int i) const { return t * 2 + (i & 1) + (i >= 4 ? 8 : 0); }
  // b_i, 0 <= i < 4: row (k) threadID_in_group * 2 + (i & 1), plus 8 for i >= 2; column groupID.
  int b_row(int i) const { return t * 2 + (i & 1) + (i >= 2 ? 8 : 0); }
  int b_col(int) const { return g; }
  // c_i and d_i, 0 <= i < 4: row groupID for i < 2, else groupID + 8; column threadID_in_group * 2 + (i & 1).
  int c_row(int i) const { return i < 2 ? g : g + 8; }
  int c_col(int i) const { return t * 2 + (i & 1); }
};

// Two bf16 in one 32-bit register, the lower-indexed element in the low half.
DF_DEVICE_INLINE uint32_t pack(__nv_bfloat16 lo, __nv_bfloat16 hi) {
  return static_cast<uint32_t>(__bfloat16_as_ushort(lo)) | static_cast<uint32_t>(__bfloat16_as_ushort(hi)) << 16;
}

// Each warp w multiplies its own matrices: A + w * 256, B + w * 128, C and D + w * 128.
__global__ void mma_kernel(const __nv_bfloat16* A, const __nv_bfloat16* B, const float* C, float* D) {
  const int w = threadIdx.x / 32, lane = threadIdx.x % 32;
  A += w * 256, B += w * 128, C += w * 128, D += w * 128;
  const Frag f(lane);
  uint32_t a[4], b[2];
  float c[4], d[4];
  for (int r = 0; r < 4; ++r) a[r] = pack(A[f.a_row(2 * r) * 16 + f.a_col(2 * r)], A[f.a_row(2 * r + 1) * 16 + f.a_col(2 * r + 1)]);
  for (int r = 0; r < 2; ++r) b[r] = pack(B[f.b_row(2 * r) * 8 + f.b_col(2 * r)], B[f.b_row(2 * r + 1) * 8 + f.b_col(2 * r + 1)]);
  for (int i = 0; i < 4; ++i) c[i] = C[f.c_row(i) * 8 + f.c_col(i)];
  df_mma_m16n8k16_row_col_f32_bf16_bf16_f32(d, a, b, c);
  for (int i = 0; i < 4; ++i) D[f.c_row(i) * 8 + f.c_col(i)] = d[i];
}

// Accumulating in place (d is c), as kernels chain k-steps.
__global__ void mma_chain_kernel(const __nv_bfloat16* A, const __nv_bfloat16* B, float* D, int steps) {
  const Frag f(threadIdx.x);
  uint32_t a[4], b[2];
  for (int r = 0; r < 4; ++r) a[r] = pack(A[f.a_row(2 * r) * 16 + f.a_col(2 * r)], A[f.a_row(2 * r + 1) * 16 + f.a_col(2 * r + 1)]);
  for (int r = 0; r < 2; ++r) b[r] = pack(B[f.b_row(2 * r) * 8 + f.b_col(2 * r)], B[f.b_row(2 * r + 1) * 8 + f.b_col(2 * r + 1)]);
  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (int s = 0; s < steps; ++s) df_mma_m16n8k16_row_col_f32_bf16_bf16_f32(acc, a, b, acc);
  for (int i = 0; i < 4; ++i) D[f.c_row(i) * 8 + f.c_col(i)] = acc[i];
}

// A lane that leaves before the mma (.aligned needs all 32), or none.
__global__ void mma_exited_lane_kernel(float* D, int exit_lane) {
  if (static_cast<int>(threadIdx.x) == exit_lane) return;
  const uint32_t a[4] = {0u, 0u, 0u, 0u}, b[2] = {0u, 0u};
  float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  df_mma_m16n8k16_row_col_f32_bf16_bf16_f32(d, a, b, d);
  D[threadIdx.x] = d[0];
}

struct Problem {
  std::vector<__nv_bfloat16> A, B;
  std::vector<float> C;
};

// `warps` independent problems; small integers make every product and sum exact in f32.
Problem make_problem(int warps, bool integers, uint32_t seed) {
  std::mt19937 g(seed);
  std::uniform_int_distribution<int> small(-8, 8);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  Problem p;
  for (int i = 0; i < warps * 256; ++i) p.A.push_back(__float2bfloat16(integers ? float(small(g)) : u(g)));
  for (int i = 0; i < warps * 128; ++i) p.B.push_back(__float2bfloat16(integers ? float(small(g)) : u(g)));
  for (int i = 0; i < warps * 128; ++i) p.C.push_back(integers ? float(small(g) * 16) : u(g));
  return p;
}

// D = A B + C in double, from the bf16 values.
std::vector<double> product(const Problem& p, int warps) {
  std::vector<double> D(warps * 128);
  for (int w = 0; w < warps; ++w)
    for (int m = 0; m < 16; ++m)
      for (int n = 0; n < 8; ++n) {
        double s = p.C[w * 128 + m * 8 + n];
        for (int k = 0; k < 16; ++k)
          s += double(__bfloat162float(p.A[w * 256 + m * 16 + k])) * double(__bfloat162float(p.B[w * 128 + k * 8 + n]));
        D[w * 128 + m * 8 + n] = s;
      }
  return D;
}

}  // namespace

TEST_CASE("mma m16n8k16 bf16 with small integers equals the matrix product exactly", "[emu][simt]") {
  const int warps = 3;
  const Problem p = make_problem(warps, true, 7);
  const std::vector<double> want = product(p, warps);
  for_each_order([&] {
    std::vector<float> D(warps * 128, std::nanf(""));
    DF_LAUNCH(mma_kernel, 1, 32 * warps, 0, nullptr, p.A.data(), p.B.data(), p.C.data(), D.data());
    for (int i = 0; i < warps * 128; ++i) {
      INFO("warp " << i / 128 << ", D[" << i % 128 / 8 << "][" << i % 8 << "]");
      CHECK(D[i] == static_cast<float>(want[i]));
    }
  });
}

TEST_CASE("mma m16n8k16 bf16 with random values: the exact sum rounded once to f32", "[emu][simt]") {
  const int warps = 2;
  const Problem p = make_problem(warps, false, 11);
  const std::vector<double> want = product(p, warps);
  std::vector<float> D(warps * 128, std::nanf(""));
  DF_LAUNCH(mma_kernel, 2, 32 * warps, 0, nullptr, p.A.data(), p.B.data(), p.C.data(), D.data());
  for (int i = 0; i < warps * 128; ++i) {
    // The emulation forms C + sum_k A[m][k] B[k][n] in double in this order and rounds once to
    // f32, as the reference does: the same bits, wherever each element's fragments came from.
    INFO("D[" << i << "] = " << D[i] << ", want " << want[i]);
    CHECK(D[i] == static_cast<float>(want[i]));
  }
}

TEST_CASE("mma accumulates in place over k-steps", "[emu][simt]") {
  const Problem p = make_problem(1, true, 5);
  Problem z = p;
  for (float& c : z.C) c = 0.0f;
  const std::vector<double> once = product(z, 1);
  std::vector<float> D(128, std::nanf(""));
  DF_LAUNCH(mma_chain_kernel, 1, 32, 0, nullptr, p.A.data(), p.B.data(), D.data(), 5);
  for (int i = 0; i < 128; ++i) CHECK(D[i] == static_cast<float>(5 * once[i]));
}

TEST_CASE("mma.sync with a lane that has exited is a fault", "[emu][simt]") {
  std::vector<float> D(32);
  expect_fault(FaultKind::warp_divergence, {"mma.sync.aligned.m16n8k16", "needs every lane of the warp", "lane 7 has exited"},
               [&] { DF_LAUNCH(mma_exited_lane_kernel, 1, 32, 0, nullptr, D.data(), 7); });
  // A partial warp: lanes 16..31 do not exist.
  expect_fault(FaultKind::warp_divergence, {"needs every lane of the warp", "lane 16 does not exist"},
               [&] { DF_LAUNCH(mma_exited_lane_kernel, 1, 16, 0, nullptr, D.data(), -1); });
}
