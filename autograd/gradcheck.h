// autograd/gradcheck.h: central finite differences in double on the cpu against the tape.
//
// f maps the inputs to any output y. The check contracts y with a fixed random tensor R
// (L = sum(y * R)) so every output element matters, seeds backward with R, and compares each
// input's gradient with (L(x + h e_i) - L(x - h e_i)) / 2h. In double, with h = 1e-6, the
// truncation error is O(h^2 f''') and the rounding error O(1e-16 / h): about 1e-9 to 1e-10 for
// smooth ops of unit scale, so the default tolerance (1e-6 abs + 1e-5 rel) is loose enough
// for kinks nowhere near the sample points and tight enough to catch any wrong rule.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "autograd/tape.h"

namespace diffuse::ag {

struct GradcheckOptions {
  double h = 1e-6;
  double atol = 1e-6;
  double rtol = 1e-5;
  uint64_t seed = 1;  // for R
};

struct GradcheckResult {
  bool ok = true;
  double max_abs_err = 0, max_rel_err = 0;
  std::string report;  // the worst element of each input
};

// `inputs` are converted to f64 cpu variables requiring gradients. Inputs listed in
// `no_grad_inputs` (by index) are passed through but not checked (integer labels and such).
GradcheckResult gradcheck(const std::function<Var(const std::vector<Var>&)>& f, const std::vector<Tensor>& inputs,
                          const GradcheckOptions& opt = {}, const std::vector<int>& no_grad_inputs = {});

}  // namespace diffuse::ag
