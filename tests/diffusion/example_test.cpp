// Compiles examples/sampler_callback.cpp into the tests, so the documented program keeps building.
#include <catch2/catch.hpp>

#define DIFFUSE_EXAMPLE_NO_MAIN
#include "examples/sampler_callback.cpp"

TEST_CASE("examples/sampler_callback.cpp builds and samples its data", "[cpu][diffusion]") {
  CHECK(sampler_callback_example() == 0);
}
