// autograd/norm.h: differentiable normalisation layers (kernels/group_norm.h does the math).
#pragma once

#include "autograd/tape.h"

namespace diffuse::ag {

// GroupNorm (Wu & He 2018) with ADM's adaptive scale/shift (Dhariwal & Nichol 2021) and a fused
// SiLU. x (B,...,C) (NHWC or (B,T,C)); gamma, beta (C) or undefined (then 1 and 0); scale, shift
// (B,C) or undefined: y = act( (xhat*gamma+beta) * (1 + scale) + shift ), act = SiLU when silu,
// else identity. Gradients flow to every defined input.
Var group_norm(const Var& x, const Var& gamma, const Var& beta, int groups, float eps = 1e-5f,
               const Var& scale = {}, const Var& shift = {}, bool silu = false);

}  // namespace diffuse::ag
