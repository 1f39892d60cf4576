// models/train/state_entries.h: reading a checkpoint's named tensors back into an optimizer, an
// EMA or the device training step. Every entry that is missing or has another shape is noted, and
// one error then names them all, so a mismatched checkpoint is diagnosed in one run.
#pragma once

#include <map>
#include <sstream>
#include <string>
#include <string_view>

#include "core/tensor.h"

namespace diffuse::train {

class StateEntries {
 public:
  explicit StateEntries(const std::map<std::string, Tensor>& state) : state_(state) {}

  // The entry `key` when it is there with `shape`; otherwise null, and the problem is noted.
  const Tensor* find(const std::string& key, const Shape& shape);
  // Throws "<who>: N problem(s)" followed by one line per problem ("missing: key", "shape
  // mismatch: key should be [..], is [..]") when find noted any.
  void check(std::string_view who) const;

 private:
  const std::map<std::string, Tensor>& state_;
  std::ostringstream problems_;
  int count_ = 0;
};

}  // namespace diffuse::train
