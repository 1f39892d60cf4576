// core/splitmix.h: splitmix64 (Steele, Lea & Flood 2014, "Fast splittable pseudorandom number
// generators"; the finaliser of Java's SplittableRandom): a bijective mix of 64 bits, used where
// one seed must give well-spread, independent-looking derived seeds (dropout sites, the
// emulator's random thread orders).
#pragma once

#include <cstdint>

namespace diffuse {

inline uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

}  // namespace diffuse
