#include "models/train/state_entries.h"

#include "core/check.h"

namespace diffuse::train {

const Tensor* StateEntries::find(const std::string& key, const Shape& shape) {
  auto it = state_.find(key);
  if (it == state_.end()) {
    problems_ << "\n  missing: " << key;
  } else if (!(it->second.shape() == shape)) {
    problems_ << "\n  shape mismatch: " << key << " should be " << shape.str() << ", is " << it->second.shape().str();
  } else {
    return &it->second;
  }
  ++count_;
  return nullptr;
}

void StateEntries::check(std::string_view who) const {
  DF_CHECK(count_ == 0, who, ": ", count_, " problem(s)", problems_.str());
}

}  // namespace diffuse::train
