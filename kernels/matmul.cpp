// kernels/matmul.cpp: matmul and linear on Tensors (kernels/matmul.h), on the operands' device: the
// cpu path of kernels/cpu/matmul.cpp (OpenBLAS or the blocked loops) or cuBLASLt
// (kernels/cuda/gemm_cuda.cpp; linear's bias in the GEMM's epilogue).
#include "kernels/matmul.h"

#include "core/check.h"
#include "core/profile.h"
#include "kernels/backend.h"
#include "kernels/cuda/gemm.h"

namespace diffuse::kernels {

Tensor matmul_forward(const Tensor& a, const Tensor& b) {
  DF_PROFILE("matmul_forward");
  DF_ON_CUDA(a.device(), cuda::matmul_forward(a, b));
  if (!a.device().is_cpu()) unsupported_device("matmul", a.device());
  return cpu::matmul_forward(a, b);
}

MatmulGrads matmul_backward(const Tensor& g, const Tensor& a, const Tensor& b, bool need_a, bool need_b) {
  DF_PROFILE("matmul_backward");
  DF_ON_CUDA(a.device(), cuda::matmul_backward(g, a, b, need_a, need_b));
  if (!a.device().is_cpu()) unsupported_device("matmul", a.device());
  return cpu::matmul_backward(g, a, b, need_a, need_b);
}

Tensor linear_forward(const Tensor& x, const Tensor& w, const Tensor& bias) {
  DF_PROFILE("linear_forward");
  DF_ON_CUDA(x.device(), cuda::linear_forward(x, w, bias));
  if (!x.device().is_cpu()) unsupported_device("linear", x.device());
  return cpu::linear_forward(x, w, bias);
}

LinearGrads linear_backward(const Tensor& g, const Tensor& x, const Tensor& w, bool need_x, bool need_w, bool need_b) {
  DF_PROFILE("linear_backward");
  DF_ON_CUDA(x.device(), cuda::linear_backward(g, x, w, need_x, need_w, need_b));
  if (!x.device().is_cpu()) unsupported_device("linear", x.device());
  return cpu::linear_backward(g, x, w, need_x, need_w, need_b);
}

}  // namespace diffuse::kernels
