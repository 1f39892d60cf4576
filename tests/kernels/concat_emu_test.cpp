// kernels/cuda/concat.cu under the emulator ([emu]) and on a GPU ([cuda]): the strided row copy
// against memcpy per row, for every access width the alignment allows. Bytes are moved, so equal.
#include <catch2/catch.hpp>

#include <cstring>
#include <vector>

#include "core/device.h"
#include "core/stream.h"
#include "core/tensor.h"
#include "kernels/cuda/concat.h"
#include "tests/emu_test_util.h"
#include "tests/test_util.h"

using namespace diffuse;
using namespace diffuse::test;

namespace {

template <class CopyRows>
void check_copy_rows(CopyRows&& copy_rows, Device dev) {
  struct Case {
    int64_t rows, width, src_stride, dst_stride, src_off, dst_off;  // bytes
  };
  // 16-byte units (bf16 concat of 128 + 256 channels), 8, 4, 2 and 1 byte units, one row.
  const Case cases[] = {{37, 256, 768, 512, 512, 0},   {9, 24, 40, 64, 8, 16}, {5, 12, 20, 28, 4, 12},
                        {7, 6, 10, 14, 2, 6},          {3, 5, 9, 11, 1, 3},    {1, 300, 300, 304, 0, 4}};
  for (const Case& c : cases) {
    INFO("rows " << c.rows << " width " << c.width << " strides " << c.src_stride << "/" << c.dst_stride);
    const int64_t src_bytes = c.rows * c.src_stride + c.src_off, dst_bytes = c.rows * c.dst_stride + c.dst_off;
    Tensor src = Tensor::rand({src_bytes}, next_seed(), 0, 0.f, 255.f).to(DType::u8);
    Tensor dst0 = Tensor::rand({dst_bytes}, next_seed(), 0, 0.f, 255.f).to(DType::u8);
    std::vector<uint8_t> want(static_cast<size_t>(dst_bytes));
    std::memcpy(want.data(), dst0.raw(), want.size());
    for (int64_t r = 0; r < c.rows; ++r)
      std::memcpy(want.data() + c.dst_off + r * c.dst_stride,
                  static_cast<const uint8_t*>(src.raw()) + c.src_off + r * c.src_stride, static_cast<size_t>(c.width));
    Tensor sd = src.to(dev), dd = dst0.to(dev);
    copy_rows(static_cast<char*>(dd.raw()) + c.dst_off, c.dst_stride,
              static_cast<const char*>(sd.raw()) + c.src_off, c.src_stride, c.rows, c.width, current_stream());
    Tensor got = dd.to(Device::cpu());
    CHECK(std::memcmp(got.raw(), want.data(), want.size()) == 0);
  }
}

}  // namespace

#if defined(DIFFUSE_HAVE_SIMT)
TEST_CASE("copy_rows under the emulator equals a memcpy per row", "[emu][kernels]") {
  for_each_order([] { check_copy_rows(emu::copy_rows, Device::cpu()); });
}
#endif

TEST_CASE("copy_rows on the GPU equals a memcpy per row", "[cuda][kernels]") {
#if defined(DIFFUSE_HAVE_CUDA)
  if (!cuda_available()) return;
  check_copy_rows(cuda::copy_rows, Device::cuda(0));
#endif
}
