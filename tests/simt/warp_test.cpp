// Warp collectives: shuffles (with width), votes and sm_80 reductions are a rendezvous of the lanes
// in the mask of one warp; reading a lane outside the mask, or one that has exited, is a fault.
#include "tests/simt/simt_test_util.h"

using namespace diffuse::simt;
using namespace diffuse::simt::test;

namespace {

enum Kind { kIdx, kUp, kDown, kXor };

__global__ void shuffle_kernel(int* out, int kind, int param, int width) {
  const int t = threadIdx.x;
  const int v = 1000 + t * 3;
  int r = 0;
  switch (kind) {
    case kIdx: r = __shfl_sync(0xffffffffu, v, param + t % 3, width); break;  // srcLane varies per lane
    case kUp: r = __shfl_up_sync(0xffffffffu, v, param, width); break;
    case kDown: r = __shfl_down_sync(0xffffffffu, v, param, width); break;
    case kXor: r = __shfl_xor_sync(0xffffffffu, v, param, width); break;
  }
  out[t] = r;
}

// What CUDA's programming guide says each lane receives.
int expected_shuffle(int t, int kind, int param, int width) {
  const int lane = t % 32, warp_base = t - lane, seg = lane / width * width;
  int src = lane;
  switch (kind) {
    case kIdx: src = seg + (param + t % 3) % width; break;
    case kUp: src = lane - seg >= param ? lane - param : lane; break;
    case kDown: src = lane - seg + param < width ? lane + param : lane; break;
    case kXor: src = (lane ^ param) < seg + width ? lane ^ param : lane; break;
  }
  return 1000 + (warp_base + src) * 3;
}

__global__ void shuffle_types_kernel(double* d, float4* f4, __half2* h2, __nv_bfloat16* b) {
  const int t = threadIdx.x;
  d[t] = __shfl_xor_sync(0xffffffffu, d[t], 1);
  f4[t] = __shfl_down_sync(0xffffffffu, f4[t], 2);
  h2[t] = __shfl_up_sync(0xffffffffu, h2[t], 3);
  b[t] = __shfl_sync(0xffffffffu, b[t], 7);
}

// The usual warp sum, then the warp's lanes split into halves that shuffle among themselves only.
__global__ void warp_sum_kernel(const float* in, float* out, float* half_out) {
  const int t = threadIdx.x;
  float v = in[t];
  for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
  out[t] = v;
  const unsigned mask = (t % 32) < 16 ? 0x0000ffffu : 0xffff0000u;
  float h = in[t];
  for (int off = 8; off > 0; off /= 2) h += __shfl_down_sync(mask, h, off, 16);
  half_out[t] = h;
}

__global__ void vote_kernel(const int* pred, unsigned* ballot, int* any, int* all, unsigned* half_ballot) {
  const int t = threadIdx.x;
  ballot[t] = __ballot_sync(0xffffffffu, pred[t]);
  any[t] = __any_sync(0xffffffffu, pred[t]);
  all[t] = __all_sync(0xffffffffu, pred[t]);
  const unsigned mask = (t % 32) % 2 ? 0xaaaaaaaau : 0x55555555u;  // odd and even lanes apart
  half_ballot[t] = __ballot_sync(mask, pred[t]);
}

__global__ void vote_exited_kernel(unsigned* ballot, int* all) {
  const int t = threadIdx.x;
  if (t % 32 >= 20) return;
  ballot[t] = __ballot_sync(0xffffffffu, 1);  // exited lanes contribute nothing
  all[t] = __all_sync(0xffffffffu, 1);
}

__global__ void reduce_kernel(const int* in, int* add, int* mn, int* mx, unsigned* orr) {
  const int t = threadIdx.x;
  add[t] = __reduce_add_sync(0xffffffffu, in[t]);
  mn[t] = __reduce_min_sync(0xffffffffu, in[t]);
  mx[t] = __reduce_max_sync(0xffffffffu, in[t]);
  orr[t] = __reduce_or_sync(0xffffffffu, static_cast<unsigned>(in[t]) & 0xffu);
}

__global__ void outside_mask_kernel(float* out) {
  float v = static_cast<float>(threadIdx.x);
  if (threadIdx.x < 16) v = __shfl_down_sync(0x0000ffffu, v, 1);  // lane 15 reads lane 16
  out[threadIdx.x] = v;
}

__global__ void not_in_mask_kernel(float* out) {
  if (threadIdx.x < 16) out[threadIdx.x] = __shfl_sync(0x0000fffeu, 1.0f, 1);  // lane 0 is not in its own mask
}

__global__ void exited_source_kernel(float* out) {
  if (threadIdx.x >= 20) return;
  out[threadIdx.x] = __shfl_down_sync(0xffffffffu, static_cast<float>(threadIdx.x), 16);
}

__global__ void partial_warp_kernel(float* out) {
  float v = static_cast<float>(threadIdx.x);
  for (int off = 16; off > 0; off /= 2) v += __shfl_down_sync(0xffffffffu, v, off);
  out[threadIdx.x] = v;
}

__global__ void mismatched_shuffles_kernel(float* out) {
  float v = static_cast<float>(threadIdx.x);
  if (threadIdx.x % 2)
    v = __shfl_xor_sync(0xffffffffu, v, 1);
  else
    v = __shfl_xor_sync(0xffffffffu, v, 2);
  out[threadIdx.x] = v;
}

__global__ void bad_width_kernel(float* out) { out[threadIdx.x] = __shfl_sync(0xffffffffu, 1.0f, 0, 3); }

}  // namespace

TEST_CASE("__shfl_sync, _up, _down and _xor with every width", "[emu][simt]") {
  const int n = 64;  // two warps: lanes never cross a warp
  std::vector<int> out(n);
  struct Case {
    int kind;
    std::vector<int> params;
  };
  const Case cases[] = {{kIdx, {0, 5, 31, 40}}, {kUp, {0, 1, 3, 8, 16}}, {kDown, {0, 1, 2, 7, 16}}, {kXor, {1, 2, 5, 16, 31}}};
  for_each_order([&] {
    for (const Case& c : cases)
      for (int param : c.params)
        for (int width : {32, 16, 8, 4, 2, 1}) {
          INFO("kind " << c.kind << " param " << param << " width " << width);
          DF_LAUNCH(shuffle_kernel, 1, n, 0, nullptr, out.data(), c.kind, param, width);
          for (int t = 0; t < n; ++t) REQUIRE(out[t] == expected_shuffle(t, c.kind, param, width));
        }
  });
}

TEST_CASE("shuffles move any trivially copyable type", "[emu][simt]") {
  const int n = 32;
  std::vector<double> d(n);
  std::vector<float4> f4(n);
  std::vector<__half2> h2(n);
  std::vector<__nv_bfloat16> b(n);
  for (int t = 0; t < n; ++t) {
    d[t] = t + 0.25;
    f4[t] = make_float4(t, -t, 2.0f * t, 0.5f);
    h2[t] = __floats2half2_rn(t, -t);
    b[t] = __float2bfloat16(static_cast<float>(t));
  }
  DF_LAUNCH(shuffle_types_kernel, 1, n, 0, nullptr, d.data(), f4.data(), h2.data(), b.data());
  for (int t = 0; t < n; ++t) {
    CHECK(d[t] == (t ^ 1) + 0.25);
    const int fd = t + 2 < 32 ? t + 2 : t;
    CHECK(f4[t].x == fd);
    CHECK(f4[t].y == -fd);
    CHECK(f4[t].z == 2.0f * fd);
    const int hu = t >= 3 ? t - 3 : t;
    CHECK(__low2float(h2[t]) == hu);
    CHECK(__high2float(h2[t]) == -hu);
    CHECK(__bfloat162float(b[t]) == 7.0f);
  }
}

TEST_CASE("warp sums by shuffle, over the whole warp and over half-warp masks", "[emu][simt]") {
  const int n = 96;
  std::vector<float> in(n), out(n), half_out(n);
  for (int t = 0; t < n; ++t) in[t] = static_cast<float>((t * 13) % 17) - 8.0f;
  for_each_order([&] {
    DF_LAUNCH(warp_sum_kernel, 1, n, 0, nullptr, in.data(), out.data(), half_out.data());
    for (int w = 0; w < n / 32; ++w) {
      float s = 0;
      for (int l = 0; l < 32; ++l) s += in[w * 32 + l];
      for (int l = 0; l < 32; ++l) REQUIRE(out[w * 32 + l] == s);
      for (int h = 0; h < 2; ++h) {
        float hs = 0;
        for (int l = 0; l < 16; ++l) hs += in[w * 32 + h * 16 + l];
        REQUIRE(half_out[w * 32 + h * 16] == hs);  // lane 0 of each half holds its sum
      }
    }
  });
}

TEST_CASE("__ballot_sync, __any_sync and __all_sync, with full and partial masks", "[emu][simt]") {
  const int n = 64;
  for (int pattern = 0; pattern < 3; ++pattern) {
    std::vector<int> pred(n);
    for (int t = 0; t < n; ++t) pred[t] = pattern == 0 ? (t % 5 == 1) * 7 : pattern == 1 ? 1 : (t < 32 ? 0 : t == 40);
    std::vector<unsigned> ballot(n), half_ballot(n);
    std::vector<int> any(n), all(n);
    for_each_order([&] {
      DF_LAUNCH(vote_kernel, 1, n, 0, nullptr, pred.data(), ballot.data(), any.data(), all.data(), half_ballot.data());
      for (int w = 0; w < 2; ++w) {
        unsigned b = 0;
        for (int l = 0; l < 32; ++l) b |= (pred[w * 32 + l] != 0 ? 1u : 0u) << l;
        for (int l = 0; l < 32; ++l) {
          REQUIRE(ballot[w * 32 + l] == b);
          REQUIRE(any[w * 32 + l] == (b != 0));
          REQUIRE(all[w * 32 + l] == (b == 0xffffffffu));
          REQUIRE(half_ballot[w * 32 + l] == (b & (l % 2 ? 0xaaaaaaaau : 0x55555555u)));
        }
      }
    });
  }
}

TEST_CASE("votes ignore lanes that have exited", "[emu][simt]") {
  std::vector<unsigned> ballot(32);
  std::vector<int> all(32);
  DF_LAUNCH(vote_exited_kernel, 1, 32, 0, nullptr, ballot.data(), all.data());
  for (int t = 0; t < 20; ++t) {
    CHECK(ballot[t] == 0x000fffffu);
    CHECK(all[t] == 1);
  }
}

TEST_CASE("__reduce_*_sync", "[emu][simt]") {
  const int n = 64;
  std::vector<int> in(n), add(n), mn(n), mx(n);
  std::vector<unsigned> orr(n);
  for (int t = 0; t < n; ++t) in[t] = (t * 37) % 23 - 11;
  DF_LAUNCH(reduce_kernel, 1, n, 0, nullptr, in.data(), add.data(), mn.data(), mx.data(), orr.data());
  for (int w = 0; w < 2; ++w) {
    int s = 0, lo = in[w * 32], hi = in[w * 32];
    unsigned o = 0;
    for (int l = 0; l < 32; ++l) {
      const int v = in[w * 32 + l];
      s += v, lo = std::min(lo, v), hi = std::max(hi, v), o |= static_cast<unsigned>(v) & 0xffu;
    }
    for (int l = 0; l < 32; ++l) {
      CHECK(add[w * 32 + l] == s);
      CHECK(mn[w * 32 + l] == lo);
      CHECK(mx[w * 32 + l] == hi);
      CHECK(orr[w * 32 + l] == o);
    }
  }
}

TEST_CASE("planted bug: a shuffle reading a lane outside its mask is a fault", "[emu][simt]") {
  std::vector<float> out(32);
  for_each_order([&] {
    expect_fault(FaultKind::shuffle_source,
                 {"__shfl_down_sync", "lane 15 reads lane 16, which is outside the mask", "0x0000ffff", "thread (15,0,0)",
                  "warp_test.cpp:"},
                 [&] { DF_LAUNCH(outside_mask_kernel, 1, 32, 0, nullptr, out.data()); });
  });
}

TEST_CASE("a lane calling a collective with a mask that excludes it is a fault", "[emu][simt]") {
  std::vector<float> out(32);
  expect_fault(FaultKind::lane_not_in_mask, {"__shfl_sync", "lane 0", "0x0000fffe", "thread (0,0,0)"},
               [&] { DF_LAUNCH(not_in_mask_kernel, 1, 32, 0, nullptr, out.data()); });
}

TEST_CASE("a shuffle reading a lane that has exited, or does not exist, is a fault", "[emu][simt]") {
  std::vector<float> out(64);
  for_each_order([&] {
    expect_fault(FaultKind::shuffle_source, {"lane 4 reads lane 20, which has exited", "thread (4,0,0)"},
                 [&] { DF_LAUNCH(exited_source_kernel, 1, 32, 0, nullptr, out.data()); });
    expect_fault(FaultKind::shuffle_source, {"which does not exist (the block has 40 threads)"},
                 [&] { DF_LAUNCH(partial_warp_kernel, 1, 40, 0, nullptr, out.data()); });
  });
}

TEST_CASE("lanes of one mask at different shuffles are a fault", "[emu][simt]") {
  std::vector<float> out(32);
  for_each_order([&] {
    expect_fault(FaultKind::warp_divergence, {"__shfl_xor_sync", "warp_test.cpp:"},
                 [&] { DF_LAUNCH(mismatched_shuffles_kernel, 1, 32, 0, nullptr, out.data()); });
  });
}

TEST_CASE("a shuffle width that is not a power of two is a fault", "[emu][simt]") {
  std::vector<float> out(32);
  expect_fault(FaultKind::bad_argument, {"width 3"}, [&] { DF_LAUNCH(bad_width_kernel, 1, 32, 0, nullptr, out.data()); });
}
