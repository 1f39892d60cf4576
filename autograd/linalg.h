// autograd/linalg.h: differentiable matrix products, convolution, resampling, concat, reshape.
// Each forward records its backward rule beside it (autograd/linalg.cpp); the kernels in
// kernels/matmul.h, conv2d.h, resample.h and concat.h do the arithmetic.
#pragma once

#include <vector>

#include "autograd/tape.h"

namespace diffuse::ag {

Var matmul(const Var& a, const Var& b);  // (M,K)x(K,N); or batched (Bt,M,K)x(Bt,K,N) -> (Bt,M,N)
Var linear(const Var& x, const Var& w, const Var& b = {});  // x (...,In), w (Out,In), b (Out) -> (...,Out)
struct Conv2dOptions {
  int stride = 1;
  int padding = 0;
};
// x (B,H,W,Cin), w (Cout,KH,KW,Cin), b (Cout) or undefined -> (B,Ho,Wo,Cout)
Var conv2d(const Var& x, const Var& w, const Var& b, Conv2dOptions opt);
Var upsample_nearest2x(const Var& x);         // (B,H,W,C) -> (B,2H,2W,C)
Var avg_pool2x(const Var& x);                 // (B,H,W,C) -> (B,H/2,W/2,C), H and W even
Var concat_last(const std::vector<Var>& xs);  // along the last dim; leading dims equal
Var slice_last(const Var& x, int64_t begin, int64_t end);  // x[..., begin:end]
Var reshape(const Var& x, const Shape& s);    // a view; the gradient is reshaped back

}  // namespace diffuse::ag
