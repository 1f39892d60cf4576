#include <catch2/catch.hpp>

#include <cmath>

#include "core/allocator.h"
#include "core/tensor.h"
#include "tests/test_util.h"

using namespace diffuse;

TEST_CASE("shape and views", "[cpu][core]") {
  Tensor t = Tensor::from_vector({0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, {3, 2, 2});
  CHECK(t.dim() == 3);
  CHECK(t.size(-1) == 2);
  CHECK(t.numel() == 12);
  Tensor r = t.reshape({-1, 4});
  CHECK(r.shape() == Shape{3, 4});
  CHECK(r.same_storage(t));
  Tensor s = t.slice(1, 3);
  CHECK(s.shape() == Shape{2, 2, 2});
  CHECK(s.to_vector()[0] == 4.f);
  CHECK(t.select(2).to_vector() == std::vector<float>{8, 9, 10, 11});
  // A view writes through.
  s.fill_(-1);
  CHECK(t.to_vector()[3] == 3.f);
  CHECK(t.to_vector()[4] == -1.f);
  CHECK_THROWS_AS(t.reshape({5, -1}), Error);
  CHECK_THROWS_AS(t.slice(2, 4), Error);
  CHECK_THROWS_AS(Tensor::empty({1, 1, 1, 1, 1, 1}), Error);
}

TEST_CASE("dtype conversions round to nearest even", "[cpu][core]") {
  // bf16 keeps 8 bits of significand: 1 + 2^-8 is a tie and rounds to even (1.0); 1 + 3*2^-9
  // rounds up to 1 + 2^-7.
  Tensor f = Tensor::from_vector({1.0f + 1.0f / 256, 1.0f + 3.0f / 512, -2.5f, 65504.f, 1e-7f}, {5});
  std::vector<float> b = f.to(DType::bf16).to_vector();
  CHECK(b[0] == 1.0f);
  CHECK(b[1] == 1.0f + 1.0f / 128);
  CHECK(b[2] == -2.5f);
  std::vector<float> h = f.to(DType::f16).to_vector();
  CHECK(h[3] == 65504.f);
  CHECK(std::fabs(h[4] - 1e-7f) < 6e-8f);  // f16 subnormal spacing is 6e-8
  // Round-trip through every dtype for small integers is exact.
  Tensor ints = Tensor::from_vector({0, 1, 2, 3, 100, 255}, {6});
  for (DType t : {DType::f32, DType::bf16, DType::f16, DType::i32, DType::i64, DType::u8})
    CHECK(ints.to(t).to(DType::f32).to_vector() == ints.to_vector());
  // Every f16 bit pattern that is finite survives f16 -> f32 -> f16.
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    f16_t x{static_cast<uint16_t>(bits)};
    float v = f16_to_float(x);
    if (std::isnan(v)) continue;
    REQUIRE(float_to_f16(v).bits == x.bits);
  }
}

TEST_CASE("fill, poison, clone and copies", "[cpu][core]") {
  Tensor t = Tensor::empty({4, 3});
  t.poison_();
  for (float v : t.to_vector()) CHECK(std::isnan(v));
  t.fill_(2.5);
  Tensor c = t.clone();
  CHECK_FALSE(c.same_storage(t));
  CHECK(c.to_vector() == t.to_vector());
  Tensor i = Tensor::zeros({3}, DType::i64);
  i.poison_();
  CHECK(i.to_vector_i64()[0] == 0x7f7f7f7f7f7f7f7fLL);
  CHECK_THROWS_AS(t.data<int32_t>(), Error);
  CHECK_THROWS_AS(Tensor().raw(), Error);
  CHECK_THROWS_AS(t.item(), Error);
}

TEST_CASE("the host allocator reuses freed blocks", "[cpu][core]") {
  CHECK(allocation_size_class(1) == 64);
  CHECK(allocation_size_class(4097) == 5120);
  CHECK(allocation_size_class(1 << 20) == (1 << 20));
  { Tensor warm = Tensor::empty({1000, 37}); }
  MemoryStats before = cpu_memory_stats();
  for (int k = 0; k < 10; ++k) Tensor t = Tensor::empty({1000, 37});
  MemoryStats after = cpu_memory_stats();
  CHECK(after.system_allocs == before.system_allocs);
  CHECK(after.cache_hits >= before.cache_hits + 10);
  CHECK(after.current_bytes == before.current_bytes);
  CHECK(after.peak_bytes >= allocation_size_class(37000 * 4));
}

TEST_CASE("device parsing and discovery never crash", "[cpu][core]") {
  CHECK(resolve_device("cpu") == Device::cpu());
  Device d = resolve_device("auto");
  CHECK((d.is_cpu() || cuda_available()));
  CHECK_THROWS_AS(resolve_device("tpu"), Error);
  CHECK_THROWS_AS(resolve_device("cuda:x"), Error);
  if (!cuda_available()) {
    CHECK_THROWS_WITH(resolve_device("cuda"), Catch::Contains("requested but"));
    CHECK_FALSE(cuda_unavailable_reason().empty());
  }
}

TEST_CASE("check macros name the file and line", "[cpu][core]") {
  try {
    DF_CHECK(1 + 1 == 3, "arithmetic is off by ", 1);
    FAIL("no throw");
  } catch (const Error& e) {
    std::string w = e.what();
    CHECK(w.find("tests/core/tensor_test.cpp:") != std::string::npos);
    CHECK(w.find("arithmetic is off by 1") != std::string::npos);
    CHECK(w.find("1 + 1 == 3") != std::string::npos);
  }
}
