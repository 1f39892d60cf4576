#include "autograd/gradcheck.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "core/check.h"

namespace diffuse::ag {

namespace {

double contract(const Tensor& y, const Tensor& r) {
  const double* a = y.data<double>();
  const double* b = r.data<double>();
  double s = 0;
  for (int64_t i = 0; i < y.numel(); ++i) s += a[i] * b[i];
  return s;
}

}  // namespace

GradcheckResult gradcheck(const std::function<Var(const std::vector<Var>&)>& f, const std::vector<Tensor>& inputs,
                          const GradcheckOptions& opt, const std::vector<int>& no_grad_inputs) {
  auto skipped = [&](size_t i) {
    return std::find(no_grad_inputs.begin(), no_grad_inputs.end(), static_cast<int>(i)) != no_grad_inputs.end();
  };
  std::vector<Var> vars;
  for (size_t i = 0; i < inputs.size(); ++i) {
    Tensor t = inputs[i].to(Device::cpu());
    if (!skipped(i) && dtype_is_float(t.dtype())) t = t.to(DType::f64).clone();
    vars.emplace_back(t, !skipped(i));
  }

  clear_tape();
  Var y = f(vars);
  DF_CHECK(y.dtype() == DType::f64, "gradcheck: the function returned ", y.value().str(), "; expected f64 (ops must "
           "compute in the input dtype)");
  Tensor r = Tensor::randn(y.shape(), opt.seed).to(DType::f64);
  backward(y, r.clone());

  GradcheckResult res;
  std::ostringstream report;
  for (size_t i = 0; i < vars.size(); ++i) {
    if (skipped(i)) continue;
    Tensor analytic = vars[i].has_grad() ? vars[i].grad().clone() : Tensor::zeros(vars[i].shape(), DType::f64);
    double* x = vars[i].value().data<double>();
    const double* a = analytic.data<double>();
    double worst = -1, worst_abs = 0, worst_num = 0, worst_ana = 0;
    int64_t worst_at = -1;
    for (int64_t k = 0; k < vars[i].numel(); ++k) {
      double keep = x[k];
      double lp, lm;
      {
        NoGrad ng;
        x[k] = keep + opt.h;
        lp = contract(f(vars).value(), r);
        x[k] = keep - opt.h;
        lm = contract(f(vars).value(), r);
        x[k] = keep;
      }
      double num = (lp - lm) / (2 * opt.h);
      double err = std::fabs(num - a[k]);
      double rel = err / std::max(std::fabs(num), 1e-12);
      double excess = err / (opt.atol + opt.rtol * std::fabs(num));
      res.max_abs_err = std::max(res.max_abs_err, err);
      res.max_rel_err = std::max(res.max_rel_err, std::min(rel, err));  // rel only where it means something
      if (excess > worst) { worst = excess; worst_at = k; worst_abs = err; worst_num = num; worst_ana = a[k]; }
      if (excess > 1) res.ok = false;
    }
    report << "input " << i << " " << vars[i].value().str() << ": worst element " << worst_at << " analytic "
           << worst_ana << " numeric " << worst_num << " |err| " << worst_abs << "\n";
  }
  clear_tape();
  res.report = report.str();
  return res;
}

}  // namespace diffuse::ag
