# kernels/simt/race_check.cmake: the compiler instrumentation of the emulator's shared-memory race
# check (kernels/simt/race.h). Included by cmake/DiffuseTargets.cmake once its targets exist.
#
# The kernel sources compiled for the emulator, and the tests/simt files whose kernels must be
# checked, are compiled with ThreadSanitizer's instrumentation and without its runtime: every load
# and store becomes a call that kernels/simt/race.cpp answers. Line tables (-g1) let a race report
# name the source lines. AddressSanitizer's instrumentation cannot share a file with it, so the
# sanitizer builds (DIFFUSE_SANITIZE, DIFFUSE_FUZZ) leave the check out: there the emu tier looks for
# out-of-bounds accesses instead (scripts/sanitize.sh).
option(DIFFUSE_SIMT_RACE_CHECK "Instrument the emulated kernels for the shared-memory race check" ON)

set(DIFFUSE_SIMT_RACE_FLAGS)
if(DIFFUSE_SIMT_RACE_CHECK AND NOT DIFFUSE_SANITIZE AND NOT DIFFUSE_FUZZ)
  if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
    # -Wno-tsan: GCC warns that ThreadSanitizer does not model atomic_thread_fence (__threadfence);
    # the emulator runs a block on one host thread, where a fence orders nothing anyway.
    set(DIFFUSE_SIMT_RACE_FLAGS -fsanitize=thread --param=tsan-instrument-func-entry-exit=0 -Wno-tsan -g1)
  elseif(CMAKE_CXX_COMPILER_ID MATCHES "Clang")
    set(DIFFUSE_SIMT_RACE_FLAGS -fsanitize=thread -mllvm -tsan-instrument-func-entry-exit=false -gline-tables-only)
  endif()
endif()

# diffuse_simt_race_check(target [source...]): instruments every source of `target`, or only the
# sources named, which also get DIFFUSE_SIMT_RACE_CHECK_BUILD=1 for their tests to know the check
# must be there, and skip the precompiled header (built without either). Where the check is off,
# nothing changes.
function(diffuse_simt_race_check target)
  if(NOT DIFFUSE_SIMT_RACE_FLAGS OR NOT TARGET ${target})
    return()
  endif()
  if(ARGN)
    set_source_files_properties(${ARGN} TARGET_DIRECTORY ${target} PROPERTIES
                                COMPILE_OPTIONS "${DIFFUSE_SIMT_RACE_FLAGS}"
                                COMPILE_DEFINITIONS DIFFUSE_SIMT_RACE_CHECK_BUILD=1
                                SKIP_PRECOMPILE_HEADERS ON)
  else()
    target_compile_options(${target} PRIVATE ${DIFFUSE_SIMT_RACE_FLAGS})
  endif()
endfunction()

if(DIFFUSE_SIMT_RACE_FLAGS)
  message(STATUS "diffuse: the emulator's shared-memory race check ON")
else()
  message(STATUS "diffuse: the emulator's shared-memory race check OFF (a sanitizer build, or DIFFUSE_SIMT_RACE_CHECK=OFF)")
endif()

# The kernels of the tree, and those of the emulator's own tests (tests/simt), planted bugs included.
diffuse_simt_race_check(diffuse_emu)
file(GLOB _df_simt_tests CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/tests/simt/*_test.cpp)
diffuse_simt_race_check(test_simt ${_df_simt_tests})
