// tests/fuzz/fuzz_util.h: what the libFuzzer targets share.
//
// A target catches diffuse::Error only: that is the one way a reader may refuse an input. Any
// other exception escapes, aborts, and libFuzzer reports it with the input, as it does a crash,
// a sanitizer report, a hang (-timeout) or an allocation over -malloc_limit_mb.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "core/check.h"

// A property the target checks beyond "does not crash" (e.g. a round trip). abort() makes
// libFuzzer save the input as a crash.
#define FUZZ_CHECK(cond)                                                                  \
  do {                                                                                    \
    if (!(cond)) {                                                                        \
      std::fprintf(stderr, "FUZZ_CHECK failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
      std::abort();                                                                       \
    }                                                                                     \
  } while (0)
