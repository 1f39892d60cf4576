// core/tensor.h: dense, contiguous, up to 5 dimensions, on the cpu or a CUDA device.
//
// A view shares storage: reshape() and slice() along the first dimension are the only views;
// anything else is an explicit copy, so every kernel sees a plain contiguous array. Images are
// NHWC (B, H, W, C).
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "core/check.h"
#include "core/device.h"
#include "core/dtype.h"

namespace diffuse {

constexpr int kMaxDims = 5;

class Shape {
 public:
  Shape() = default;
  Shape(std::initializer_list<int64_t> dims);
  explicit Shape(const std::vector<int64_t>& dims);

  int rank() const { return rank_; }
  int64_t operator[](int i) const;  // negative i counts from the end
  int64_t& operator[](int i);
  int64_t numel() const;
  std::vector<int64_t> vec() const { return {d_, d_ + rank_}; }
  std::string str() const;  // "[2, 3, 4]"
  bool operator==(const Shape& o) const;

 private:
  int rank_ = 0;
  int64_t d_[kMaxDims] = {};
};

// The memory behind one or more tensors. Frees through the caching allocators.
struct Storage {
  void* ptr = nullptr;
  size_t bytes = 0;
  Device device;
  void* stream = nullptr;  // the stream it was allocated on (CUDA)
  bool owned = true;       // false: wraps memory the caller owns

  Storage(size_t bytes, Device device);
  Storage(void* external, size_t bytes, Device device);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
};

class Tensor {
 public:
  Tensor() = default;

  // ---- construction ----
  static Tensor empty(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu());
  static Tensor zeros(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu());
  static Tensor full(const Shape& shape, double value, DType dtype = DType::f32, Device device = Device::cpu());
  static Tensor from_vector(const std::vector<float>& v, const Shape& shape, Device device = Device::cpu());
  static Tensor from_vector_i64(const std::vector<int64_t>& v, const Shape& shape, Device device = Device::cpu());
  // Wraps caller-owned memory (no copy, not freed by diffuse).
  static Tensor wrap(void* data, const Shape& shape, DType dtype, Device device = Device::cpu());
  // Standard normal / uniform [lo, hi) from the Philox stream (seed, offset): element i of the
  // result is element i of the stream, on every device.
  static Tensor randn(const Shape& shape, uint64_t seed, uint64_t offset = 0, Device device = Device::cpu());
  static Tensor rand(const Shape& shape, uint64_t seed, uint64_t offset = 0, float lo = 0.f, float hi = 1.f,
                     Device device = Device::cpu());

  // ---- properties ----
  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  int dim() const { return shape_.rank(); }
  int64_t size(int d) const { return shape_[d]; }
  int64_t numel() const { return shape_.numel(); }
  DType dtype() const { return dtype_; }
  Device device() const;
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  std::string str() const;  // "f32[2, 3] on cpu"
  bool same_storage(const Tensor& o) const { return storage_ == o.storage_; }

  void* raw();
  const void* raw() const;
  template <class T> T* data() { check_type(dtype_of<T>()); return static_cast<T*>(raw()); }
  template <class T> const T* data() const { check_type(dtype_of<T>()); return static_cast<const T*>(raw()); }

  // ---- views ----
  Tensor reshape(const Shape& shape) const;  // one dimension may be -1
  Tensor slice(int64_t begin, int64_t end) const;  // rows [begin, end) of dimension 0
  Tensor select(int64_t i) const;  // row i of dimension 0, that dimension dropped
  Tensor flatten() const { return reshape({numel()}); }

  // ---- copies ----
  Tensor to(Device device) const;  // a copy unless already there (then this tensor)
  Tensor to(DType dtype) const;    // a converted copy unless already that dtype
  Tensor clone() const;
  void copy_(const Tensor& src);   // same shape and dtype; any devices

  // ---- fills (in place) ----
  Tensor& fill_(double value);
  Tensor& zero_() { return fill_(0.0); }
  Tensor& normal_(uint64_t seed, uint64_t offset = 0, float mean = 0.f, float std = 1.f);
  Tensor& uniform_(uint64_t seed, uint64_t offset = 0, float lo = 0.f, float hi = 1.f);
  // Poison with NaN (floats) or 0x7f.. bytes (integers): tests fill outputs with it first.
  Tensor& poison_();

  // ---- host access (copies through the host when on a GPU) ----
  std::vector<float> to_vector() const;  // any float dtype or integer, as float
  std::vector<int64_t> to_vector_i64() const;
  float item() const;

 private:
  Tensor(std::shared_ptr<Storage> s, size_t offset, Shape shape, DType dtype)
      : storage_(std::move(s)), offset_(offset), shape_(shape), dtype_(dtype) {}
  void check_type(DType t) const;

  std::shared_ptr<Storage> storage_;
  size_t offset_ = 0;  // bytes into storage
  Shape shape_;
  DType dtype_ = DType::f32;
};

// Checks used by every op's launcher: keep the message format in one place.
void check_same_shape(const Tensor& a, const Tensor& b, const char* what);
void check_device(const Tensor& a, Device d, const char* what);
void check_dtype(const Tensor& a, DType t, const char* what);

}  // namespace diffuse
