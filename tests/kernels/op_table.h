// tests/kernels/op_table.h: the op table. Each op is described once, as one OpCase per shape:
// its fresh random inputs, its reference (the kernels::ref loops, the oracle), how each backend
// runs it (the cpu fast path; the CUDA kernel under the emulator; the same kernel on a GPU or on
// the simulated device), the tolerance per backend and dtype with its reason; the kernels
// bench/kernels times at the shape, each with its cost (bytes moved, FLOPs); and the op on
// autograd variables, for the f64 gradcheck.
//
// Three programs read it (tests/kernels/op_table.cpp, the small library diffuse_op_table, which the
// library itself never links):
//  - tests/kernels/op_table_test.cpp runs every backend of every case against the reference:
//    outputs poisoned first, inputs fresh per run (the seed is printed on failure), the emulator
//    under every thread order of kernels/simt;
//  - tests/autograd/op_table_gradcheck_test.cpp checks `autograd` of every case that has it against
//    central finite differences in f64;
//  - bench/kernels times the `bench_kernels` of the cases of its run (measured or --once).
// A case may serve any of the three: a test shape, a gradcheck shape (small: the check evaluates the
// op twice per input element) and a benchmark shape usually differ.
//
// Adding an op: write `void add_<op>(std::vector<OpCase>&)` beside the others in
// tests/kernels/op_table.cpp and call it from op_table(). A backend the op lacks is an empty
// runner.
#pragma once

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "autograd/gradcheck.h"
#include "autograd/tape.h"
#include "core/tensor.h"

namespace diffuse::test {

enum class Backend { cpu, emu, cuda };

// Each output element must satisfy |got - want| <= atol + rtol |want| (bitwise: the same bits, NaN
// matching NaN); with atol_each, atol + atol_each[i] + rtol |want| for element i.
struct Tolerance {
  Tolerance() = default;
  Tolerance(bool bitwise_, double rtol_, double atol_, std::string why_, Tensor atol_each_ = Tensor())
      : bitwise(bitwise_), rtol(rtol_), atol(atol_), why(std::move(why_)), atol_each(std::move(atol_each_)) {}
  bool bitwise = false;
  double rtol = 0, atol = 0;
  std::string why;  // the argument, printed with a failure
  // A bound per element (want's shape, f64), for an error that scales with each element's own
  // terms rather than with the output's largest (a sum's error with its sum of |term|).
  Tensor atol_each;
};

// What one run of a kernel moves and computes, for the benchmarks' GB/s and TFLOP/s: the fewest
// bytes it must move (each input read once, each output written once) and its matrix FLOPs.
struct Cost {
  double bytes = 0, flops = 0;
};

// One kernel that bench/kernels times at a case's shape on the GPU: one row of its output.
struct BenchKernel {
  std::string kernel;             // the row's name; bench/torch_kernels.py names its row alike
  std::string impl = "diffuse";   // diffuse, diffuse-simt, diffuse-tc, or a baseline (copy-engine)
  Cost cost;
  std::string formula;            // the cost as the row prints it ("4 B H W C")
  bool matrix_bound = false;      // its share is of the bf16 matrix rate, else of the copy bandwidth
  // Allocates the device buffers (random inputs, never zeros) and returns the launch to time, which
  // only launches on the current stream; an empty launch: the kernel does not take this shape.
  std::function<std::function<void()>()> prepare;
};

// Which run of bench/kernels times a case: the measured one (the models' shapes) or --once (small
// shapes of the same structure, a correctness run on the simulated device).
enum class BenchRun { none, measured, once };

using Tensors = std::vector<Tensor>;

struct OpCase {
  std::string name;  // the op and its shape, printed with every check
  // Fresh random inputs on the cpu. Floating inputs have `dtype` (an index input keeps its own);
  // bf16 inputs are exactly representable, so the f32 reference sees what the kernel sees.
  std::function<Tensors(DType dtype)> inputs;
  // The expected outputs of `backend` in `dtype`, from the op's reference (kernels::ref, or the cpu
  // loop where that is the readable one): usually in f64 and rounded once to `dtype`; the cpu fast
  // path in f32 against the reference in f32 where its own tolerance is argued that way.
  std::function<Tensors(const Tensors& in, DType dtype, Backend backend)> reference;
  // Each backend's outputs for the same inputs, on the cpu. An empty runner: the backend lacks it.
  // The emulator and GPU runners write into poisoned outputs; the GPU runner uploads the inputs.
  std::function<Tensors(const Tensors& in, DType dtype)> cpu, emu, cuda;
  std::vector<DType> cpu_dtypes{DType::f32, DType::f64};
  std::vector<DType> device_dtypes{DType::f32, DType::bf16};
  // The tolerance of output `output`; it may scale with the data (the inputs, the expected outputs).
  std::function<Tolerance(Backend, DType, size_t output, const Tensors& in, const Tensors& want)> tolerance;

  // bench/kernels: the run that times this case, the shape column of its rows and its kernels. The
  // kernels exist only in a build with the CUDA backend (a GPU, or the simulated device).
  BenchRun bench = BenchRun::none;
  std::string bench_shape;
  std::vector<BenchKernel> bench_kernels;

  // tests/autograd: the op on autograd variables, gradchecked in f64 on inputs(f64) with
  // `gradcheck_options`; the inputs listed in `grad_fixed` (ids, labels) are passed through unchecked.
  std::function<ag::Var(const std::vector<ag::Var>&)> autograd;
  std::vector<int> grad_fixed;
  ag::GradcheckOptions gradcheck_options;
};

// Every op at every shape the table checks.
std::vector<OpCase> op_table();

// A tensor of this shape and dtype whose every byte is a NaN pattern: an unwritten element fails.
Tensor poisoned(const Shape& s, DType t, Device d = Device::cpu());

const char* backend_name(Backend b);

}  // namespace diffuse::test
