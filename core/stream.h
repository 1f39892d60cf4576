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

// A CUDA event (no timing) on device `d`: orders work between streams without a host wait
// (record on the producing stream, block the consuming one), or tells the host that the work
// before it is done. Throws in a build without CUDA.
class CudaEvent {
 public:
  explicit CudaEvent(Device d);
  ~CudaEvent();
  CudaEvent(const CudaEvent&) = delete;
  CudaEvent& operator=(const CudaEvent&) = delete;

  void record(void* stream);
  void block(void* stream) const;  // work queued on `stream` from now on waits for the last record
  bool done() const;               // the last record's work is complete (true if never recorded); no wait
  void synchronize() const;        // the host waits for the last record; counted by host_syncs()
  bool recorded() const { return recorded_; }

 private:
  [[maybe_unused]] void* event_ = nullptr;  // unused in a build without CUDA
  bool recorded_ = false;
};

// Work queued on `consumer` from now on waits for the work queued so far on `producer`, both on
// device `d`; no host wait. For a tensor written on one stream and read on another: the reader
// waits for the writer; and before the writer's stream reuses a block the reader still reads, the
// writer waits for the reader.
void stream_wait(void* consumer, void* producer, Device d);

}  // namespace diffuse
