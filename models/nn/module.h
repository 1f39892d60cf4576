// models/nn/module.h: the parameter tree every model is built from.
//
// A Module owns named parameters (ag::Var leaves that require gradients) and named child
// modules, both kept in registration order. A parameter's full name is the dotted path from the
// root: `down.1.res.0.conv1.weight`. Checkpoints, optimizer state and EMA weights are keyed by
// these names, so they are part of the file format: renaming a member breaks old checkpoints.
//
// Initialisation is deferred on purpose. A layer knows its parameter's shape and how it should be
// drawn (fan-in bound, zeros, ...) when it is built, but not its full name, which exists only once
// the layer is attached to its parents. The root model calls init_parameters(seed) after the tree
// is complete: each parameter is drawn from the Philox stream (seed, fnv1a64(full name)), so the
// values depend only on the seed and the name, never on construction order, and inserting a
// layer does not change the initial values of the others.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "autograd/tape.h"
#include "core/enum_names.h"
#include "core/tensor.h"

namespace diffuse::nn {

// How init_parameters() draws a parameter. fan_in / fan_out: input and output connections of
// one output unit (Linear: In and Out; Conv2d: KH*KW*Cin and KH*KW*Cout).
struct Init {
  enum class Kind : uint8_t {
    keep,    // the tensor given at registration (already final)
    zeros,   // zero-initialised: the last layer of each residual branch, the output conv
    ones,    // norm gains
    weight,  // a weight matrix: the scheme's rule
    bias,    // a bias next to a weight with this fan_in: the scheme's rule
    normal,  // N(0, std^2): embedding tables (PyTorch nn.Embedding's default is N(0, 1))
  };
  Kind kind = Kind::keep;
  int64_t fan_in = 0, fan_out = 0;
  float std = 1.f;

  static Init keep() { return {}; }
  static Init zeros() { return {Kind::zeros}; }
  static Init ones() { return {Kind::ones}; }
  static Init weight(int64_t fan_in, int64_t fan_out) { return {Kind::weight, fan_in, fan_out}; }
  static Init bias(int64_t fan_in) { return {Kind::bias, fan_in, 0}; }
  static Init normal(float std) { return {Kind::normal, 0, 0, std}; }
};

// The two reference initialisations (both give zero-initialised residual branch ends).
//   pytorch: PyTorch's default for Linear/Conv (kaiming_uniform with a = sqrt(5)), which is
//            U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases. What improved DDPM and
//            ADM (guided diffusion) use.
//   ddpm:    DDPM's TF code, variance_scaling(1, 'fan_avg', 'uniform'): weights
//            U(-sqrt(3/fan_avg), sqrt(3/fan_avg)) with fan_avg = (fan_in + fan_out)/2; biases 0.
enum class InitScheme : uint8_t { pytorch, ddpm };
inline constexpr EnumName<InitScheme> kInitSchemeNames[] = {{InitScheme::pytorch, "pytorch"}, {InitScheme::ddpm, "ddpm"}};
constexpr std::span<const EnumName<InitScheme>> enum_table(InitScheme) { return kInitSchemeNames; }

// FNV-1a, 64 bit: the Philox offset of a parameter's init stream.
uint64_t name_hash(const std::string& s);

class Module {
 public:
  Module() = default;
  virtual ~Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  // Registers a leaf that requires a gradient. `init` gives the shape, dtype and device (and the
  // value when how is keep). Names are local: no dots, unique within this module. The reference
  // stays valid for the module's life; layers keep a pointer to it (not a copy of the Var), so
  // bind_parameters() can swap the variables underneath them.
  ag::Var& register_parameter(const std::string& name, Tensor init, Init how = Init::keep());
  template <class M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> m) {
    add_child(name, m);
    return m;
  }

  // Every parameter of the tree, depth first, parameters and children interleaved in
  // registration order, with full dotted names.
  std::vector<std::pair<std::string, ag::Var>> named_parameters() const;
  std::vector<ag::Var> parameters() const;
  int64_t num_parameters() const;
  // name -> value (shares storage with the parameters).
  std::map<std::string, Tensor> state() const;
  // Copies `state` into the parameters. Every parameter must be present with its exact shape and
  // no other name may appear; otherwise throws, naming every missing or unexpected name (and,
  // for a shape mismatch, the parameter and both shapes), before anything is copied. Values are
  // converted to each parameter's dtype and device.
  void load_state(const std::map<std::string, Tensor>& state);

  // Draws every parameter of the tree from (seed, name_hash(full name)), as its Init says.
  void init_parameters(uint64_t seed, InitScheme scheme = InitScheme::pytorch);

  // Training mode (dropout on) for this module and every child.
  void train(bool on = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }

  // Moves / converts every parameter in place: the Var objects stay the same (an optimizer that
  // holds them keeps working), only their values are replaced. Gradients are dropped.
  void to(Device device);
  void to(DType dtype);  // f64 for gradchecks; f32 for training
  void zero_grad();

  // Replaces the variables themselves (not their values), in named_parameters() order, and
  // returns the previous ones. Lets a caller run the model on variables it owns: gradcheck
  // passes the parameters as inputs, and a functional evaluation can use other weights without
  // copying. Shapes must match.
  std::vector<ag::Var> bind_parameters(const std::vector<ag::Var>& vars);

  const std::vector<std::pair<std::string, std::shared_ptr<Module>>>& children() const { return children_; }

 protected:
  void add_child(const std::string& name, std::shared_ptr<Module> m);

 private:
  struct Param {
    std::string name;
    ag::Var var;
    Init init;
  };
  void collect(const std::string& prefix, std::vector<std::pair<std::string, ag::Var>>& out) const;
  void init_rec(const std::string& prefix, uint64_t seed, InitScheme scheme);
  void all_slots(std::vector<ag::Var*>& out);
  void check_local_name(const std::string& name) const;

  std::deque<Param> params_;  // a deque: registered references never move
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  // Parameters and children interleaved as registered: (is_child, index).
  std::vector<std::pair<bool, size_t>> order_;
  bool training_ = true;
};

// An indexed list of children of one type, named "0", "1", ...
template <class M>
class ModuleList : public Module {
 public:
  std::shared_ptr<M> push_back(std::shared_ptr<M> m) {
    add_child(std::to_string(items_.size()), m);
    items_.push_back(m);
    return m;
  }
  size_t size() const { return items_.size(); }
  bool empty() const { return items_.empty(); }
  M& operator[](size_t i) const { return *items_.at(i); }
  auto begin() const { return items_.begin(); }
  auto end() const { return items_.end(); }

 private:
  std::vector<std::shared_ptr<M>> items_;
};

}  // namespace diffuse::nn
