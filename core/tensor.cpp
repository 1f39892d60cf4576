#include "core/tensor.h"

#include <cmath>
#include <cstring>
#include <limits>

#include "core/allocator.h"
#include "core/philox.h"
#include "core/stream.h"
#include "core/tensor_cuda.h"

#if defined(DIFFUSE_HAVE_CUDA)
#include <cuda_runtime.h>
#endif

namespace diffuse {

// ---- Shape -------------------------------------------------------------------------------------

Shape::Shape(std::initializer_list<int64_t> dims) : Shape(std::vector<int64_t>(dims)) {}

Shape::Shape(const std::vector<int64_t>& dims) {
  DF_CHECK(dims.size() <= kMaxDims, "a tensor has at most ", kMaxDims, " dimensions, got ", dims.size());
  rank_ = static_cast<int>(dims.size());
  for (int i = 0; i < rank_; ++i) {
    DF_CHECK(dims[i] >= -1, "negative dimension ", dims[i]);
    d_[i] = dims[i];
  }
}

int64_t Shape::operator[](int i) const {
  if (i < 0) i += rank_;
  DF_CHECK(i >= 0 && i < rank_, "dimension ", i, " out of range for shape ", str());
  return d_[i];
}

int64_t& Shape::operator[](int i) {
  if (i < 0) i += rank_;
  DF_CHECK(i >= 0 && i < rank_, "dimension ", i, " out of range for shape ", str());
  return d_[i];
}

int64_t Shape::numel() const {
  int64_t n = 1;
  for (int i = 0; i < rank_; ++i) n *= d_[i];
  return n;
}

std::string Shape::str() const {
  std::string s = "[";
  for (int i = 0; i < rank_; ++i) s += (i ? ", " : "") + std::to_string(d_[i]);
  return s + "]";
}

bool Shape::operator==(const Shape& o) const {
  if (rank_ != o.rank_) return false;
  for (int i = 0; i < rank_; ++i)
    if (d_[i] != o.d_[i]) return false;
  return true;
}

// ---- Storage -----------------------------------------------------------------------------------

Storage::Storage(size_t n, Device d) : bytes(n), device(d) {
  if (d.is_cpu()) {
    ptr = cpu_allocate(n);
  } else {
    stream = current_stream();
    ptr = cuda_allocate(n, d.index, stream);
  }
}

Storage::Storage(void* external, size_t n, Device d) : ptr(external), bytes(n), device(d), owned(false) {}

Storage::~Storage() {
  if (!owned) return;
  if (device.is_cpu())
    cpu_deallocate(ptr, bytes);
  else
    cuda_deallocate(ptr, bytes, device.index, stream);
}

// ---- Tensor ------------------------------------------------------------------------------------

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  DF_CHECK(dtype != DType::f64 || device.is_cpu(), "f64 tensors live on the cpu only (gradchecks)");
  // The size is computed with overflow checks: a shape read from a file or a config can multiply
  // past 64 bits, where numel() would be undefined behaviour and a wrapped byte count would
  // allocate a small block for a huge tensor.
  uint64_t bytes = dtype_size(dtype);
  for (int i = 0; i < shape.rank(); ++i) {
    DF_CHECK(shape[i] >= 0, "cannot make a tensor of shape ", shape.str());
    DF_CHECK(!__builtin_mul_overflow(bytes, static_cast<uint64_t>(shape[i]), &bytes) &&
                 bytes <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()),
             "cannot make a tensor of shape ", shape.str(), " ", dtype_name(dtype), ": its size overflows 64 bits");
  }
  return Tensor(std::make_shared<Storage>(static_cast<size_t>(bytes), device), 0, shape, dtype);
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  return full(shape, 0.0, dtype, device);
}

Tensor Tensor::full(const Shape& shape, double value, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.fill_(value);
  return t;
}

Tensor Tensor::from_vector(const std::vector<float>& v, const Shape& shape, Device device) {
  DF_CHECK(static_cast<int64_t>(v.size()) == shape.numel(), "from_vector: ", v.size(),
           " values for shape ", shape.str());
  Tensor t = empty(shape, DType::f32, Device::cpu());
  if (!v.empty()) std::memcpy(t.raw(), v.data(), v.size() * sizeof(float));
  return t.to(device);
}

Tensor Tensor::from_vector_i64(const std::vector<int64_t>& v, const Shape& shape, Device device) {
  DF_CHECK(static_cast<int64_t>(v.size()) == shape.numel(), "from_vector_i64: ", v.size(),
           " values for shape ", shape.str());
  Tensor t = empty(shape, DType::i64, Device::cpu());
  if (!v.empty()) std::memcpy(t.raw(), v.data(), v.size() * sizeof(int64_t));
  return t.to(device);
}

Tensor Tensor::wrap(void* data, const Shape& shape, DType dtype, Device device) {
  DF_CHECK(data != nullptr || shape.numel() == 0, "wrap: null data pointer for shape ", shape.str());
  size_t bytes = static_cast<size_t>(shape.numel()) * dtype_size(dtype);
  return Tensor(std::make_shared<Storage>(data, bytes, device), 0, shape, dtype);
}

Tensor Tensor::randn(const Shape& shape, uint64_t seed, uint64_t offset, Device device) {
  Tensor t = empty(shape, DType::f32, device);
  t.normal_(seed, offset);
  return t;
}

Tensor Tensor::rand(const Shape& shape, uint64_t seed, uint64_t offset, float lo, float hi, Device device) {
  Tensor t = empty(shape, DType::f32, device);
  t.uniform_(seed, offset, lo, hi);
  return t;
}

Device Tensor::device() const { return storage_ ? storage_->device : Device::cpu(); }

std::string Tensor::str() const {
  if (!defined()) return "undefined tensor";
  return std::string(dtype_name(dtype_)) + shape_.str() + " on " + device().str();
}

void* Tensor::raw() {
  DF_CHECK(defined(), "use of an undefined tensor");
  return static_cast<char*>(storage_->ptr) + offset_;
}

const void* Tensor::raw() const {
  DF_CHECK(defined(), "use of an undefined tensor");
  return static_cast<const char*>(storage_->ptr) + offset_;
}

void Tensor::check_type(DType t) const {
  DF_CHECK(dtype_ == t, "tensor is ", dtype_name(dtype_), ", accessed as ", dtype_name(t));
}

Tensor Tensor::reshape(const Shape& s) const {
  Shape out = s;
  int infer = -1;
  int64_t known = 1;
  for (int i = 0; i < out.rank(); ++i) {
    if (out[i] == -1) {
      DF_CHECK(infer < 0, "reshape to ", s.str(), ": at most one dimension may be -1");
      infer = i;
    } else {
      known *= out[i];
    }
  }
  if (infer >= 0) {
    DF_CHECK(known > 0 && numel() % known == 0, "cannot reshape ", str(), " to ", s.str());
    out[infer] = numel() / known;
  }
  DF_CHECK(out.numel() == numel(), "cannot reshape ", str(), " to ", s.str());
  return Tensor(storage_, offset_, out, dtype_);
}

Tensor Tensor::slice(int64_t begin, int64_t end) const {
  DF_CHECK(dim() >= 1, "slice of a 0-d tensor");
  DF_CHECK(0 <= begin && begin <= end && end <= shape_[0], "slice [", begin, ", ", end, ") out of range for ", str());
  Shape s = shape_;
  s[0] = end - begin;
  size_t row = static_cast<size_t>(shape_[0] ? numel() / shape_[0] : 0) * dtype_size(dtype_);
  return Tensor(storage_, offset_ + static_cast<size_t>(begin) * row, s, dtype_);
}

Tensor Tensor::select(int64_t i) const {
  Tensor r = slice(i, i + 1);
  std::vector<int64_t> d = shape_.vec();
  d.erase(d.begin());
  return r.reshape(Shape(d));
}

Tensor Tensor::to(Device d) const {
  if (d == device()) return *this;
  Tensor t = empty(shape_, dtype_, d);
  t.copy_(*this);
  return t;
}

namespace {

// Host conversion between any two dtypes, through double for integers and float for floats.
double load_as_double(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::f32: return static_cast<const float*>(p)[i];
    case DType::bf16: return bf16_to_float(static_cast<const bf16_t*>(p)[i]);
    case DType::f16: return f16_to_float(static_cast<const f16_t*>(p)[i]);
    case DType::i32: return static_cast<const int32_t*>(p)[i];
    case DType::i64: return static_cast<double>(static_cast<const int64_t*>(p)[i]);
    case DType::u8: return static_cast<const uint8_t*>(p)[i];
    case DType::f64: return static_cast<const double*>(p)[i];
  }
  return 0;
}

void store_from_double(void* p, DType t, int64_t i, double v) {
  switch (t) {
    case DType::f32: static_cast<float*>(p)[i] = static_cast<float>(v); break;
    case DType::bf16: static_cast<bf16_t*>(p)[i] = float_to_bf16(static_cast<float>(v)); break;
    case DType::f16: static_cast<f16_t*>(p)[i] = float_to_f16(static_cast<float>(v)); break;
    case DType::i32: static_cast<int32_t*>(p)[i] = static_cast<int32_t>(v); break;
    case DType::i64: static_cast<int64_t*>(p)[i] = static_cast<int64_t>(v); break;
    case DType::u8: static_cast<uint8_t*>(p)[i] = static_cast<uint8_t>(v); break;
    case DType::f64: static_cast<double*>(p)[i] = v; break;
  }
}

}  // namespace

Tensor Tensor::to(DType t) const {
  if (t == dtype_) return *this;
  Tensor out = empty(shape_, t, device());
  int64_t n = numel();
  if (device().is_cpu()) {
    const void* src = raw();
    void* dst = out.raw();
#pragma omp parallel for if (n > 65536)
    for (int64_t i = 0; i < n; ++i) store_from_double(dst, t, i, load_as_double(src, dtype_, i));
  } else {
#if defined(DIFFUSE_HAVE_CUDA)
    set_current_device(device());
    cuda::tensor_cast(raw(), dtype_, out.raw(), t, n, current_stream());
#endif
  }
  return out;
}

Tensor Tensor::clone() const {
  Tensor t = empty(shape_, dtype_, device());
  t.copy_(*this);
  return t;
}

void Tensor::copy_(const Tensor& src) {
  DF_CHECK(src.shape_ == shape_ && src.dtype_ == dtype_, "copy_: source ", src.str(), " into ", str());
  if (nbytes() == 0) return;
  if (device().is_cpu() && src.device().is_cpu()) {
    std::memcpy(raw(), src.raw(), nbytes());
    return;
  }
#if defined(DIFFUSE_HAVE_CUDA)
  cudaStream_t s = static_cast<cudaStream_t>(current_stream());
  cudaError_t e = cudaMemcpyAsync(raw(), src.raw(), nbytes(), cudaMemcpyDefault, s);
  DF_CHECK(e == cudaSuccess, "copy ", src.str(), " -> ", str(), ": ", cudaGetErrorString(e));
  if (device().is_cpu()) synchronize(src.device());  // the host reads it next
#else
  DF_FAIL("copy between ", src.device().str(), " and ", device().str(), " in a build without CUDA");
#endif
}

Tensor& Tensor::fill_(double value) {
  int64_t n = numel();
  if (device().is_cpu()) {
    void* p = raw();
    if (dtype_ == DType::f32) {
      float v = static_cast<float>(value);
      float* f = static_cast<float*>(p);
#pragma omp parallel for if (n > 65536)
      for (int64_t i = 0; i < n; ++i) f[i] = v;
    } else {
      for (int64_t i = 0; i < n; ++i) store_from_double(p, dtype_, i, value);
    }
  } else {
#if defined(DIFFUSE_HAVE_CUDA)
    set_current_device(device());
    cuda::tensor_fill(raw(), dtype_, n, value, current_stream());
#endif
  }
  return *this;
}

Tensor& Tensor::normal_(uint64_t seed, uint64_t offset, float mean, float std) {
  DF_CHECK(dtype_is_float(dtype_), "normal_ on a ", dtype_name(dtype_), " tensor");
  if (dtype_ != DType::f32) {
    copy_(Tensor::randn(shape_, seed, offset, device()).to(dtype_));
    return *this;
  }
  int64_t n = numel();
  if (device().is_cpu()) {
    float* p = data<float>();
    int64_t blocks = (n + 3) / 4;
#pragma omp parallel for if (n > 16384)
    for (int64_t b = 0; b < blocks; ++b) {
      float z[4];
      philox_normal4(philox_block(seed, offset, static_cast<uint64_t>(b)), z);
      for (int k = 0; k < 4 && 4 * b + k < n; ++k) p[4 * b + k] = mean + std * z[k];
    }
  } else {
#if defined(DIFFUSE_HAVE_CUDA)
    set_current_device(device());
    cuda::tensor_philox_fill(data<float>(), n, seed, offset, true, mean, std, current_stream());
#endif
  }
  return *this;
}

Tensor& Tensor::uniform_(uint64_t seed, uint64_t offset, float lo, float hi) {
  DF_CHECK(dtype_is_float(dtype_), "uniform_ on a ", dtype_name(dtype_), " tensor");
  if (dtype_ != DType::f32) {
    copy_(Tensor::rand(shape_, seed, offset, lo, hi, device()).to(dtype_));
    return *this;
  }
  int64_t n = numel();
  if (device().is_cpu()) {
    float* p = data<float>();
#pragma omp parallel for if (n > 16384)
    for (int64_t i = 0; i < n; ++i) p[i] = lo + (hi - lo) * philox_uniform(seed, offset, static_cast<uint64_t>(i));
  } else {
#if defined(DIFFUSE_HAVE_CUDA)
    set_current_device(device());
    cuda::tensor_philox_fill(data<float>(), n, seed, offset, false, lo, hi, current_stream());
#endif
  }
  return *this;
}

Tensor& Tensor::poison_() {
  if (dtype_is_float(dtype_)) return fill_(std::numeric_limits<double>::quiet_NaN());
  if (device().is_cpu()) {
    std::memset(raw(), 0x7f, nbytes());
    return *this;
  }
  return fill_(dtype_ == DType::u8 ? 0x7f : 0x7f7f7f7f);
}

std::vector<float> Tensor::to_vector() const {
  Tensor h = to(Device::cpu());
  std::vector<float> v(static_cast<size_t>(numel()));
  for (int64_t i = 0; i < numel(); ++i) v[i] = static_cast<float>(load_as_double(h.raw(), dtype_, i));
  return v;
}

std::vector<int64_t> Tensor::to_vector_i64() const {
  Tensor h = to(Device::cpu());
  std::vector<int64_t> v(static_cast<size_t>(numel()));
  for (int64_t i = 0; i < numel(); ++i) {
    if (dtype_ == DType::i64)
      v[i] = h.data<int64_t>()[i];
    else
      v[i] = static_cast<int64_t>(load_as_double(h.raw(), dtype_, i));
  }
  return v;
}

float Tensor::item() const {
  DF_CHECK(numel() == 1, "item() of ", str(), ": needs exactly one element");
  return to_vector()[0];
}

void check_same_shape(const Tensor& a, const Tensor& b, const char* what) {
  DF_CHECK(a.shape() == b.shape(), what, ": shapes differ: ", a.shape().str(), " vs ", b.shape().str());
}

void check_device(const Tensor& a, Device d, const char* what) {
  DF_CHECK(a.device() == d, what, ": tensor on ", a.device().str(), ", expected ", d.str());
}

void check_dtype(const Tensor& a, DType t, const char* what) {
  DF_CHECK(a.dtype() == t, what, ": tensor is ", dtype_name(a.dtype()), ", expected ", dtype_name(t));
}

}  // namespace diffuse
