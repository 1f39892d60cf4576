// models/train/device_trainer.h's LaggedReadback: the bookkeeping that lets `diffuse train
// --device cuda` read each step's loss and norm a step or more late without waiting, against a
// fake device whose copies finish when the test says ([cpu]).
#include <catch2/catch.hpp>

#include <algorithm>
#include <map>
#include <optional>
#include <vector>

#include "models/train/device_trainer.h"

using namespace diffuse;
using train::LaggedReadback;

namespace {

// A device with `slots` host slots. A queued copy completes when complete() says so, in order, as
// a stream would; `values` is what the device holds at each step.
class FakeSource final : public LaggedReadback::Source {
 public:
  int64_t step = 0;       // the device's last step
  int waits = 0;          // host waits
  std::vector<int> queued;  // slots in the order their copies were queued
  std::map<int, bool> in_flight;
  std::map<int, LaggedReadback::Values> slot_values;
  int completed = 0;  // copies done, in queue order

  void queue(int slot) override {
    REQUIRE_FALSE(in_flight[slot]);  // a slot is never overwritten before it was read
    in_flight[slot] = true;
    queued.push_back(slot);
    slot_values[slot] = {0, static_cast<float>(step) * 0.5f, static_cast<float>(step * step)};
  }
  bool done(int slot) override { return index_of(slot) < completed; }
  void wait(int slot) override {
    ++waits;
    completed = std::max(completed, index_of(slot) + 1);
  }
  LaggedReadback::Values read(int slot) override {
    REQUIRE(done(slot));
    in_flight[slot] = false;
    return slot_values[slot];
  }
  void complete_all() { completed = static_cast<int>(queued.size()); }

 private:
  int index_of(int slot) const {  // the latest queueing of the slot
    for (int i = static_cast<int>(queued.size()) - 1; i >= 0; --i)
      if (queued[static_cast<size_t>(i)] == slot) return i;
    return -1;
  }
};

}  // namespace

TEST_CASE("lagged readback returns each step's values once, in order, without waiting", "[cpu][models]") {
  FakeSource dev;
  LaggedReadback rb(4);
  std::vector<int64_t> seen;
  auto check_values = [&](const LaggedReadback::Values& v) {
    CHECK(v.loss == static_cast<float>(v.step) * 0.5f);
    CHECK(v.sumsq == static_cast<float>(v.step * v.step));
    seen.push_back(v.step);
  };
  // The steady state: the device finishes step k while the host queues step k + 1.
  for (int64_t k = 1; k <= 20; ++k) {
    dev.step = k;
    rb.push(k, dev);
    while (std::optional<LaggedReadback::Values> v = rb.poll(dev)) check_values(*v);
    CHECK(rb.unread() >= 1);  // step k itself is never read at step k: its copy is not done
    dev.completed = static_cast<int>(dev.queued.size());  // step k finishes during step k + 1
  }
  CHECK(dev.waits == 0);
  // The end: whatever is left is waited for.
  dev.completed = static_cast<int>(dev.queued.size()) - 1;
  while (std::optional<LaggedReadback::Values> v = rb.wait(dev)) check_values(*v);
  CHECK(rb.unread() == 0);
  REQUIRE(seen.size() == 20);
  for (size_t i = 0; i < seen.size(); ++i) CHECK(seen[i] == static_cast<int64_t>(i) + 1);
  CHECK_FALSE(rb.poll(dev).has_value());
  CHECK_FALSE(rb.wait(dev).has_value());
}

TEST_CASE("lagged readback waits only when every slot holds an unread step", "[cpu][models]") {
  FakeSource dev;
  LaggedReadback rb(3);
  // A device far behind the host: nothing completes unless waited for.
  for (int64_t k = 1; k <= 3; ++k) {
    dev.step = k;
    rb.push(k, dev);
    CHECK_FALSE(rb.poll(dev).has_value());
  }
  CHECK(dev.waits == 0);
  dev.step = 4;
  rb.push(4, dev);  // all three slots unread: step 1 is waited for and kept on the host
  CHECK(dev.waits == 1);
  CHECK(rb.unread() == 4);
  std::optional<LaggedReadback::Values> v = rb.poll(dev);
  REQUIRE(v.has_value());
  CHECK(v->step == 1);
  CHECK_FALSE(rb.poll(dev).has_value());  // step 2 is not done yet
  // A checkpoint: every step up to now, waiting.
  std::vector<int64_t> rest;
  while ((v = rb.wait(dev))) rest.push_back(v->step);
  CHECK(rest == std::vector<int64_t>{2, 3, 4});
  CHECK_THROWS(LaggedReadback(0));
}
