// autograd/elementwise.h: differentiable elementwise ops, reductions, losses, dropout and the
// embedding lookup (kernels/elementwise.h, kernels/loss.h, kernels/embedding.h do the math).
#pragma once

#include <cstdint>
#include <vector>

#include "autograd/tape.h"
#include "kernels/time_embedding.h"

namespace diffuse::ag {

// numpy broadcasting (shapes aligned right, size-1 dims broadcast), both operands; gradients
// summed over broadcast dims. Fast paths: same shape, b a suffix of a (bias (C) onto
// (B,H,W,C)), per-sample (B,1,1,1) onto (B,H,W,C).
Var add(const Var& a, const Var& b);
Var sub(const Var& a, const Var& b);
Var mul(const Var& a, const Var& b);
Var div(const Var& a, const Var& b);
Var add_scalar(const Var& a, double s);
Var mul_scalar(const Var& a, double s);

// softplus is the stable max(x,0) + log1p(exp(-|x|)); log and sqrt need x > 0.
Var silu(const Var& x);
Var sigmoid(const Var& x);
Var softplus(const Var& x);
Var exp(const Var& x);
Var log(const Var& x);
Var tanh(const Var& x);
Var square(const Var& x);
Var sqrt(const Var& x);
Var neg(const Var& x);

// Negative axes count from the end. Reducing every dimension without keepdim gives {1}.
Var sum(const Var& x, std::vector<int> axes, bool keepdim = false);
Var mean(const Var& x, std::vector<int> axes, bool keepdim = false);
Var sum_all(const Var& x);   // -> {1}
Var mean_all(const Var& x);  // -> {1}

// Losses. a, b same shape.
Var mse(const Var& a, const Var& b);                            // mean over all elements -> {1}
Var per_sample_mse(const Var& a, const Var& b);                 // (B,...) -> (B): mean over non-batch elements
Var weighted_mse(const Var& a, const Var& b, const Tensor& w);  // mean_b( w[b] * per_sample_mse[b] ) -> {1}; w (B), no gradient
Var cross_entropy(const Var& logits, const Tensor& labels);     // logits (B,K), labels i64 (B) -> mean NLL {1}

// Element i is kept iff philox_uniform(seed, offset, i) >= p, and scaled by 1/(1-p): the same
// mask for the same (seed, offset). Identity (x itself) when !training or p == 0.
Var dropout(const Var& x, float p, uint64_t seed, uint64_t offset, bool training);

// ids i64 (B) in [0, K), table (K,D) -> (B,D); the gradient scatter-adds into the table's.
Var embedding(const Tensor& ids, const Var& table);

// linear(x, softplus(w), b): positive weights (monotone networks, e.g. the learned-SNR net of
// Kingma et al. 2021). A composite: no backward of its own.
Var positive_linear(const Var& x, const Var& w, const Var& b = {});

// The sinusoidal timestep embedding has no gradient (wrt t): it lives in kernels/time_embedding.h
// and is named here too, for the contract's `ag::` spelling.
using kernels::TimeEmbeddingOptions;
using kernels::timestep_embedding;

}  // namespace diffuse::ag
