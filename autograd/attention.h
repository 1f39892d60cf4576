// autograd/attention.h: differentiable softmax and multi-head attention (kernels/softmax.h,
// kernels/attention.h do the math).
#pragma once

#include "autograd/tape.h"

namespace diffuse::ag {

Var softmax_last(const Var& x);  // softmax over the last dim

// q (B,Tq,C), k,v (B,Tk,C); C = heads*D;
// out[b,t,h*D:(h+1)*D] = softmax(q_h k_h^T / sqrt(D)) v_h. Self-attention: q,k,v from the same tokens.
Var attention(const Var& q, const Var& k, const Var& v, int heads);

}  // namespace diffuse::ag
