// tests/kernels/op_table.h: the op table. Each op is described once, as one OpCase per shape:
// its fresh random inputs, its reference (the kernels::ref loops, the oracle), how each backend
// runs it (the cpu fast path; the CUDA kernel under the emulator; the same kernel on a GPU or on
// the simulated device), the tolerance per backend and dtype with its reason, and its cost (bytes
// moved, FLOPs). tests/kernels/op_table_test.cpp runs every backend of every case against the
// reference: outputs poisoned first, inputs fresh per run (the seed is printed on failure), the
// emulator under every thread order of kernels/simt.
//
// Adding an op: write `void add_<op>(std::vector<OpCase>&)` beside the others in
// tests/kernels/op_table_test.cpp and call it from op_table(). A backend the op lacks is an empty
// runner.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace diffuse::test {

enum class Backend { cpu, emu, cuda };
const char* backend_name(Backend b);

// Each output element must satisfy |got - want| <= atol + rtol |want| (bitwise: the same bits, NaN
// matching NaN).
struct Tolerance {
  bool bitwise = false;
  double rtol = 0, atol = 0;
  std::string why;  // the argument, printed with a failure
};

// What one run moves and computes, for the benchmarks' GB/s and TFLOP/s.
struct Cost {
  double bytes = 0, flops = 0;
};

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
  std::function<Cost(DType)> cost;
};

// Every op at every shape the table checks.
std::vector<OpCase> op_table();

// A tensor of this shape and dtype whose every byte is a NaN pattern: an unwritten element fails.
Tensor poisoned(const Shape& s, DType t, Device d = Device::cpu());

}  // namespace diffuse::test
