// core/stream.h: the current CUDA stream of the calling thread, and synchronisation points.
//
// Streams travel as void* (a cudaStream_t) so that headers above core need no CUDA include.
// Every host-device synchronisation goes through synchronize() so the steady state of a
// training step or sampling loop can be shown to have none (host_syncs() counts them).
#pragma once

#include <cstdint>

#include "core/device.h"

namespace diffuse {

void* current_stream();             // nullptr: the legacy default stream
void set_current_stream(void* s);

class StreamGuard {
 public:
  explicit StreamGuard(void* s) : prev_(current_stream()) { set_current_stream(s); }
  ~StreamGuard() { set_current_stream(prev_); }
  StreamGuard(const StreamGuard&) = delete;
  StreamGuard& operator=(const StreamGuard&) = delete;

 private:
  void* prev_;
};

// Wait for all work on the current stream of `d` (no-op for the cpu); counted.
void synchronize(Device d);
uint64_t host_syncs();

}  // namespace diffuse
