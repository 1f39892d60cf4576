#include "models/nn/module.h"

#include <cmath>
#include <set>
#include <sstream>

namespace diffuse::nn {

uint64_t name_hash(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

void Module::check_local_name(const std::string& name) const {
  DF_CHECK(!name.empty() && name.find('.') == std::string::npos, "a local name must be non-empty and dot-free: '",
           name, "'");
  for (const auto& p : params_) DF_CHECK(p.name != name, "duplicate name '", name, "'");
  for (const auto& c : children_) DF_CHECK(c.first != name, "duplicate name '", name, "'");
}

ag::Var& Module::register_parameter(const std::string& name, Tensor init, Init how) {
  check_local_name(name);
  DF_CHECK(init.defined(), "parameter '", name, "' registered without a tensor");
  order_.emplace_back(false, params_.size());
  params_.push_back({name, ag::Var(std::move(init), true), how});
  return params_.back().var;
}

void Module::add_child(const std::string& name, std::shared_ptr<Module> m) {
  check_local_name(name);
  DF_CHECK(m != nullptr, "module '", name, "' is null");
  m->train(training_);
  order_.emplace_back(true, children_.size());
  children_.emplace_back(name, std::move(m));
}

void Module::collect(const std::string& prefix, std::vector<std::pair<std::string, ag::Var>>& out) const {
  for (auto [is_child, i] : order_) {
    if (is_child)
      children_[i].second->collect(prefix + children_[i].first + ".", out);
    else
      out.emplace_back(prefix + params_[i].name, params_[i].var);
  }
}

std::vector<std::pair<std::string, ag::Var>> Module::named_parameters() const {
  std::vector<std::pair<std::string, ag::Var>> out;
  collect("", out);
  return out;
}

std::vector<ag::Var> Module::parameters() const {
  std::vector<ag::Var> out;
  for (auto& [n, v] : named_parameters()) out.push_back(v);
  return out;
}

int64_t Module::num_parameters() const {
  int64_t n = 0;
  for (auto& [name, v] : named_parameters()) n += v.numel();
  return n;
}

std::map<std::string, Tensor> Module::state() const {
  std::map<std::string, Tensor> out;
  for (auto& [n, v] : named_parameters()) out.emplace(n, v.value());
  return out;
}

void Module::load_state(const std::map<std::string, Tensor>& state) {
  auto params = named_parameters();
  std::ostringstream err;
  int problems = 0;
  std::set<std::string> known;
  for (auto& [name, v] : params) {
    known.insert(name);
    auto it = state.find(name);
    if (it == state.end()) {
      err << "\n  missing: " << name << " " << v.shape().str();
      ++problems;
    } else if (!(it->second.shape() == v.shape())) {
      err << "\n  shape mismatch: " << name << " is " << v.shape().str() << " in the model but "
          << it->second.shape().str() << " in the state";
      ++problems;
    }
  }
  for (auto& [name, t] : state)
    if (!known.count(name)) {
      err << "\n  unexpected: " << name << " " << t.shape().str();
      ++problems;
    }
  DF_CHECK(problems == 0, "load_state: ", problems, " problem(s)", err.str());
  for (auto& [name, v] : params) {
    const Tensor& src = state.at(name);
    Tensor s = src.dtype() == v.dtype() ? src : src.to(v.dtype());
    v.value().copy_(s);
  }
}

void Module::init_rec(const std::string& prefix, uint64_t seed, InitScheme scheme) {
  for (auto& p : params_) {
    Tensor& t = p.var.value();
    const uint64_t offset = name_hash(prefix + p.name);
    // Draw in f32 on the cpu, then convert: the values are the same whatever the parameter's
    // dtype or device.
    Tensor d = Tensor::empty(t.shape());
    const Init& in = p.init;
    switch (in.kind) {
      case Init::Kind::keep: continue;
      case Init::Kind::zeros: d.zero_(); break;
      case Init::Kind::ones: d.fill_(1.0); break;
      case Init::Kind::normal: d.normal_(seed, offset, 0.f, in.std); break;
      case Init::Kind::weight: {
        DF_CHECK(in.fan_in > 0 && in.fan_out > 0, "parameter ", prefix + p.name, " has no fans");
        double bound = scheme == InitScheme::ddpm ? std::sqrt(3.0 / (0.5 * static_cast<double>(in.fan_in + in.fan_out)))
                                                  : 1.0 / std::sqrt(static_cast<double>(in.fan_in));
        d.uniform_(seed, offset, static_cast<float>(-bound), static_cast<float>(bound));
        break;
      }
      case Init::Kind::bias: {
        if (scheme == InitScheme::ddpm) {
          d.zero_();
        } else {
          DF_CHECK(in.fan_in > 0, "parameter ", prefix + p.name, " has no fan_in");
          double bound = 1.0 / std::sqrt(static_cast<double>(in.fan_in));
          d.uniform_(seed, offset, static_cast<float>(-bound), static_cast<float>(bound));
        }
        break;
      }
    }
    t.copy_(d.dtype() == t.dtype() ? d : d.to(t.dtype()));
  }
  for (auto& [name, child] : children_) child->init_rec(prefix + name + ".", seed, scheme);
}

void Module::init_parameters(uint64_t seed, InitScheme scheme) { init_rec("", seed, scheme); }

void Module::train(bool on) {
  training_ = on;
  for (auto& [n, c] : children_) c->train(on);
}

void Module::to(Device device) {
  for (auto& [n, v] : named_parameters()) {
    if (v.device() == device) continue;
    v.value() = v.value().to(device);
    v.zero_grad();
  }
}

void Module::to(DType dtype) {
  for (auto& [n, v] : named_parameters()) {
    if (v.dtype() == dtype) continue;
    v.value() = v.value().to(dtype);
    v.zero_grad();
  }
}

void Module::all_slots(std::vector<ag::Var*>& out) {
  for (auto [is_child, i] : order_) {
    if (is_child)
      children_[i].second->all_slots(out);
    else
      out.push_back(&params_[i].var);
  }
}

std::vector<ag::Var> Module::bind_parameters(const std::vector<ag::Var>& vars) {
  std::vector<ag::Var*> slots;
  all_slots(slots);
  DF_CHECK(slots.size() == vars.size(), "bind_parameters: the model has ", slots.size(), " parameters, got ",
           vars.size());
  for (size_t i = 0; i < slots.size(); ++i)
    DF_CHECK(vars[i].defined() && vars[i].shape() == slots[i]->shape(), "bind_parameters: variable ", i, " has shape ",
             vars[i].defined() ? vars[i].shape().str() : "undefined", ", the parameter ", slots[i]->shape().str());
  std::vector<ag::Var> old;
  for (size_t i = 0; i < slots.size(); ++i) {
    old.push_back(*slots[i]);
    *slots[i] = vars[i];
  }
  return old;
}

void Module::zero_grad() {
  for (auto& [n, v] : named_parameters()) v.zero_grad();
}

}  // namespace diffuse::nn
