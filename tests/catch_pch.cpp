// Precompiles Catch2 for every test executable (see cmake/DiffuseTargets.cmake).
#include <catch2/catch.hpp>
