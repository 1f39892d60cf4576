// kernels/embedding.cpp: the embedding lookup and its scatter-add backward (kernels/embedding.h): the
// cpu loops, and the Tensor-level ops, which run on the table's device: the cpu here or
// kernels/cuda/embedding.cu.
//
// Glossary: B ids; K rows of the table; D the embedding width. Rows are copied whole; the
// backward walks ids in order, so repeated ids sum deterministically (no parallel scatter: B is
// a batch of class labels).
#include "kernels/embedding.h"

#include <algorithm>

#include "core/check.h"
#include "core/profile.h"
#include "kernels/backend.h"

namespace diffuse::kernels {

namespace {

void check_ids(const Tensor& ids, int64_t K) {
  DF_CHECK(ids.dtype() == DType::i64 && ids.dim() == 1, "embedding: ids must be i64 (B), got ", ids.str());
  const int64_t* p = ids.data<int64_t>();
  for (int64_t b = 0; b < ids.numel(); ++b)
    DF_CHECK(p[b] >= 0 && p[b] < K, "embedding: id ", p[b], " at position ", b, " is outside the table's [0, ", K,
             ")");
}

template <class T>
void gather(const int64_t* ids, const T* table, int64_t B, int64_t D, T* out) {
  for (int64_t b = 0; b < B; ++b) std::copy(table + ids[b] * D, table + (ids[b] + 1) * D, out + b * D);
}

template <class T>
void scatter_add(const T* dy, const int64_t* ids, int64_t B, int64_t K, int64_t D, T* dt) {
  std::fill(dt, dt + K * D, T(0));
  for (int64_t b = 0; b < B; ++b) {
    T* row = dt + ids[b] * D;
    const T* g = dy + b * D;
    for (int64_t d = 0; d < D; ++d) row[d] += g[d];
  }
}

}  // namespace

namespace cpu {

void embedding_forward(const Tensor& ids, const Tensor& table, Tensor& out) {
  DF_CHECK(table.dim() == 2, "embedding: table must be (K, D), got ", table.str());
  check_ids(ids, table.size(0));
  const int64_t B = ids.numel(), D = table.size(1);
  DF_CHECK(out.shape() == Shape({B, D}) && out.dtype() == table.dtype(), "embedding: output ", out.str());
  if (table.dtype() == DType::f32)
    gather(ids.data<int64_t>(), table.data<float>(), B, D, out.data<float>());
  else if (table.dtype() == DType::f64)
    gather(ids.data<int64_t>(), table.data<double>(), B, D, out.data<double>());
  else
    DF_FAIL("embedding: table ", table.str(), " (f32 or f64 expected)");
}

void embedding_backward(const Tensor& dy, const Tensor& ids, Tensor& dtable) {
  DF_CHECK(dtable.dim() == 2, "embedding backward: table gradient ", dtable.str());
  check_ids(ids, dtable.size(0));
  const int64_t B = ids.numel(), K = dtable.size(0), D = dtable.size(1);
  DF_CHECK(dy.shape() == Shape({B, D}) && dy.dtype() == dtable.dtype(), "embedding backward: dy ", dy.str(),
           " for ", dtable.str());
  if (dy.dtype() == DType::f32)
    scatter_add(dy.data<float>(), ids.data<int64_t>(), B, K, D, dtable.data<float>());
  else if (dy.dtype() == DType::f64)
    scatter_add(dy.data<double>(), ids.data<int64_t>(), B, K, D, dtable.data<double>());
  else
    DF_FAIL("embedding backward: dy ", dy.str(), " (f32 or f64 expected)");
}

}  // namespace cpu

}  // namespace diffuse::kernels

namespace diffuse::kernels {

Tensor embedding_forward(const Tensor& ids, const Tensor& table) {
  DF_PROFILE("embedding_forward");
  DF_CHECK(ids.defined() && table.defined(), "embedding: undefined tensor");
  DF_ON_CUDA(table.device(), cuda::embedding_forward(ids, table));
  if (!table.device().is_cpu()) unsupported_device("embedding", table.device());
  DF_CHECK(table.dim() == 2 && ids.dim() == 1, "embedding: ids ", ids.str(), ", table ", table.str());
  Tensor out = Tensor::empty({ids.numel(), table.size(1)}, table.dtype());
  cpu::embedding_forward(ids, table, out);
  return out;
}

Tensor embedding_backward(const Tensor& dy, const Tensor& ids, const Shape& table_shape) {
  DF_PROFILE("embedding_backward");
  DF_ON_CUDA(dy.device(), cuda::embedding_backward(dy, ids, table_shape));
  if (!dy.device().is_cpu()) unsupported_device("embedding", dy.device());
  Tensor dt = Tensor::empty(table_shape, dy.dtype());
  cpu::embedding_backward(dy, ids, dt);
  return dt;
}

}  // namespace diffuse::kernels
