# The targets: the library `diffuse`, the emulated kernels `diffuse_emu`, the CLI, tests, benches.

file(GLOB DIFFUSE_LIB_SOURCES CONFIGURE_DEPENDS
     ${CMAKE_SOURCE_DIR}/core/*.cpp
     ${CMAKE_SOURCE_DIR}/kernels/*.cpp
     ${CMAKE_SOURCE_DIR}/autograd/*.cpp
     ${CMAKE_SOURCE_DIR}/models/*/*.cpp)
# stb's own code, in a file of its own: in sanitizer builds with ASan but without UBSan, for the
# upstream arithmetic defects of stb_image 2.27 that core/stb_impl.cpp describes.
if(DIFFUSE_SANITIZE OR DIFFUSE_FUZZ)
  set_source_files_properties(${CMAKE_SOURCE_DIR}/core/stb_impl.cpp PROPERTIES
                              COMPILE_OPTIONS -fno-sanitize=undefined)
endif()
# Sources that only make sense with the CUDA backend: core/<name>_cuda.cpp and kernels/cuda/*.cpp
# (host code calling the CUDA runtime, cuBLASLt and cuDNN: the library-backed ops on a GPU) and every
# .cu file (whose Tensor-level part, at its end, is compiled for a GPU or the simulated device only).
file(GLOB DIFFUSE_CUDA_HOST_SOURCES CONFIGURE_DEPENDS
     ${CMAKE_SOURCE_DIR}/core/*_cuda.cpp ${CMAKE_SOURCE_DIR}/kernels/cuda/*.cpp)
list(REMOVE_ITEM DIFFUSE_LIB_SOURCES ${DIFFUSE_CUDA_HOST_SOURCES})
file(GLOB DIFFUSE_CU_SOURCES CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/kernels/cuda/*.cu)

# Always static: the tests and the CLI link C++ internals; the shared library is diffuse_shared
# (cmake/DiffusePackage.cmake).
add_library(diffuse STATIC ${DIFFUSE_LIB_SOURCES})
set_target_properties(diffuse PROPERTIES POSITION_INDEPENDENT_CODE ON)
add_library(diffuse::diffuse ALIAS diffuse)
target_include_directories(diffuse PUBLIC
  $<BUILD_INTERFACE:${CMAKE_SOURCE_DIR}> $<BUILD_INTERFACE:${CMAKE_BINARY_DIR}/generated>)
target_include_directories(diffuse SYSTEM PUBLIC
  $<BUILD_INTERFACE:${DIFFUSE_JSON_INCLUDE}> $<BUILD_INTERFACE:${DIFFUSE_STB_INCLUDE}>)
target_compile_options(diffuse PRIVATE $<$<COMPILE_LANGUAGE:CXX>:${DIFFUSE_CXX_FLAGS}>
                                       $<$<COMPILE_LANGUAGE:CUDA>:${DIFFUSE_CUDA_FLAGS}>)
target_link_libraries(diffuse PUBLIC Threads::Threads ZLIB::ZLIB)
if(OpenMP_CXX_FOUND)
  target_link_libraries(diffuse PUBLIC OpenMP::OpenMP_CXX)
endif()
if(DIFFUSE_HAVE_OPENBLAS)
  target_include_directories(diffuse SYSTEM PRIVATE ${OpenBLAS_INCLUDE_DIRS})
  target_link_libraries(diffuse PRIVATE ${OpenBLAS_LIBRARIES})
  target_compile_definitions(diffuse PUBLIC DIFFUSE_HAVE_OPENBLAS=1)
endif()
if(DIFFUSE_HAVE_DNNL)
  target_link_libraries(diffuse PRIVATE DNNL::dnnl)
  target_compile_definitions(diffuse PUBLIC DIFFUSE_HAVE_DNNL=1)
endif()
if(DIFFUSE_CUDA_SIM)
  # ---- DIFFUSE_CUDA=SIM: the simulated device (sim/sim.h, docs/kernels.md) ---------------------
  # The host CUDA code compiles exactly as in a CUDA build, against the toolkit's headers; sim/
  # implements the runtime, cuBLAS(Lt) and cuDNN calls it makes on the CPU; every .cu is compiled
  # by the host compiler for the simulated device (kernels/cuda/portable.cuh's third mode), its
  # kernels run by the emulator, whose runtime is compiled in too. No nvcc. A SIM build is for
  # testing, not for installing.
  file(GLOB DIFFUSE_SIM_SOURCES CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/sim/*.cpp ${CMAKE_SOURCE_DIR}/kernels/simt/*.cpp)
  if(NOT DIFFUSE_SIM_CUDNN_INCLUDE)
    list(REMOVE_ITEM DIFFUSE_SIM_SOURCES ${CMAKE_SOURCE_DIR}/sim/cudnn.cpp)
  endif()
  function(diffuse_sim_kernel_wrappers out)  # .cu sources -> generated .cpp compiled for the device
    set(wrappers)
    foreach(cu ${ARGN})
      file(RELATIVE_PATH rel ${CMAKE_SOURCE_DIR} ${cu})
      string(REPLACE "/" "_" flat ${rel})
      set(wrapper ${CMAKE_BINARY_DIR}/sim_kernels/${flat}.cpp)
      file(CONFIGURE OUTPUT ${wrapper} CONTENT
           "// Generated: ${rel} compiled for the simulated device.\n#define DIFFUSE_SIM_DEVICE_CODE 1\n#define DIFFUSE_SIMT 1\n#include \"${cu}\"\n")
      list(APPEND wrappers ${wrapper})
    endforeach()
    set(${out} ${wrappers} PARENT_SCOPE)
  endfunction()
  diffuse_sim_kernel_wrappers(_sim_kernels ${DIFFUSE_CU_SOURCES})
  target_sources(diffuse PRIVATE ${DIFFUSE_CUDA_HOST_SOURCES} ${_sim_kernels} ${DIFFUSE_SIM_SOURCES})
  target_compile_definitions(diffuse PUBLIC DIFFUSE_HAVE_CUDA=1 DIFFUSE_CUDA_SIM=1)
  if(DIFFUSE_SIM_CUDNN_INCLUDE)
    target_compile_definitions(diffuse PUBLIC DIFFUSE_HAVE_CUDNN=1)
  endif()
  target_include_directories(diffuse SYSTEM PUBLIC $<BUILD_INTERFACE:${DIFFUSE_SIM_INCLUDE_DIRS}>)
  target_link_libraries(diffuse PUBLIC Boost::context)
elseif(DIFFUSE_HAVE_CUDA)
  target_sources(diffuse PRIVATE ${DIFFUSE_CUDA_HOST_SOURCES} ${DIFFUSE_CU_SOURCES})
  target_compile_definitions(diffuse PUBLIC DIFFUSE_HAVE_CUDA=1)
  target_link_libraries(diffuse PUBLIC CUDA::cudart CUDA::cublas CUDA::cublasLt)
  find_library(DIFFUSE_CUDNN_LIB cudnn HINTS ${CUDAToolkit_LIBRARY_DIR})
  if(DIFFUSE_CUDNN_LIB)
    target_link_libraries(diffuse PUBLIC ${DIFFUSE_CUDNN_LIB})
    target_compile_definitions(diffuse PUBLIC DIFFUSE_HAVE_CUDNN=1)
  endif()
  set_target_properties(diffuse PROPERTIES CUDA_SEPARABLE_COMPILATION OFF)
  # Report each kernel's registers, shared memory and spills: cmake/nvcc_spill_guard.sh keeps the
  # report beside each object and fails the build on a spill.
  target_compile_options(diffuse PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-Xptxas=-v>)
endif()

configure_file(${CMAKE_SOURCE_DIR}/core/build_config.h.in ${CMAKE_BINARY_DIR}/generated/build_config.h)

# ---- the emulator: every .cu source compiled by the host compiler against kernels/simt --------
file(GLOB DIFFUSE_SIMT_SOURCES CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/kernels/simt/*.cpp)
if(DIFFUSE_HAVE_SIMT AND DIFFUSE_SIMT_SOURCES)
  add_library(diffuse_simt STATIC ${DIFFUSE_SIMT_SOURCES})
  target_include_directories(diffuse_simt PUBLIC ${CMAKE_SOURCE_DIR})
  target_compile_options(diffuse_simt PRIVATE ${DIFFUSE_CXX_FLAGS})
  target_link_libraries(diffuse_simt PUBLIC Boost::context diffuse)

  set(_emu_wrappers)
  foreach(cu ${DIFFUSE_CU_SOURCES})
    file(RELATIVE_PATH rel ${CMAKE_SOURCE_DIR} ${cu})
    string(REPLACE "/" "_" flat ${rel})
    set(wrapper ${CMAKE_BINARY_DIR}/emu/${flat}.cpp)
    file(CONFIGURE OUTPUT ${wrapper} CONTENT "// Generated: ${rel} compiled for the emulator.\n#include \"${cu}\"\n")
    list(APPEND _emu_wrappers ${wrapper})
  endforeach()
  if(NOT _emu_wrappers)
    set(_emu_wrappers ${CMAKE_BINARY_DIR}/emu/empty.cpp)
    file(CONFIGURE OUTPUT ${_emu_wrappers} CONTENT "// No kernel sources yet.\n")
  endif()
  add_library(diffuse_emu STATIC ${_emu_wrappers})
  target_compile_definitions(diffuse_emu PUBLIC DIFFUSE_SIMT=1)
  target_compile_options(diffuse_emu PRIVATE ${DIFFUSE_CXX_FLAGS})
  target_link_libraries(diffuse_emu PUBLIC diffuse_simt diffuse)
endif()

# ---- the CLI ----------------------------------------------------------------------------------
file(GLOB DIFFUSE_TOOL_SOURCES CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/tools/*.cpp)
add_executable(diffuse_cli ${DIFFUSE_TOOL_SOURCES})
set_target_properties(diffuse_cli PROPERTIES OUTPUT_NAME diffuse RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR})
target_include_directories(diffuse_cli SYSTEM PRIVATE ${DIFFUSE_CLI11_INCLUDE})
target_compile_options(diffuse_cli PRIVATE ${DIFFUSE_CXX_FLAGS})
target_link_libraries(diffuse_cli PRIVATE diffuse)
# Debug builds print errors with their source location and failed check (tools/main.cpp).
target_compile_definitions(diffuse_cli PRIVATE $<$<CONFIG:Debug>:DIFFUSE_VERBOSE_ERRORS=1>)

# ---- the op table (tests/kernels/op_table.h): each op's test, gradcheck and benchmark cases ------
# A library of its own, so that the tests of tests/kernels and tests/autograd and bench/kernels read
# one table, and the library `diffuse` never depends on tests.
if(DIFFUSE_TESTS OR DIFFUSE_BENCH)
  add_library(diffuse_op_table STATIC ${CMAKE_SOURCE_DIR}/tests/kernels/op_table.cpp)
  target_compile_options(diffuse_op_table PRIVATE ${DIFFUSE_CXX_FLAGS})
  target_link_libraries(diffuse_op_table PUBLIC diffuse)
  if(TARGET diffuse_emu)
    # The emulator's launchers (diffuse::emu) for the table's [emu] runners. Linked privately:
    # DIFFUSE_SIMT, the emulated kernels' own mode, stays out of the programs that link the table.
    target_link_libraries(diffuse_op_table PRIVATE diffuse_emu)
    target_compile_definitions(diffuse_op_table PRIVATE DIFFUSE_HAVE_SIMT=1)
  endif()
endif()

# ---- tests ------------------------------------------------------------------------------------
if(DIFFUSE_TESTS)
  enable_testing()
  add_library(diffuse_catch_main STATIC ${CMAKE_SOURCE_DIR}/tests/catch_main.cpp)
  target_include_directories(diffuse_catch_main SYSTEM PUBLIC ${DIFFUSE_CATCH2_INCLUDE})
  target_include_directories(diffuse_catch_main PUBLIC ${CMAKE_SOURCE_DIR})
  target_link_libraries(diffuse_catch_main PUBLIC diffuse)
  # Catch2's single header is the slowest thing to compile: precompile it once for all tests.
  add_library(diffuse_catch_pch OBJECT ${CMAKE_SOURCE_DIR}/tests/catch_pch.cpp)
  target_include_directories(diffuse_catch_pch SYSTEM PUBLIC ${DIFFUSE_CATCH2_INCLUDE})
  target_compile_options(diffuse_catch_pch PRIVATE ${DIFFUSE_CXX_FLAGS})
  target_precompile_headers(diffuse_catch_pch PRIVATE <catch2/catch.hpp>)
  # Same flags and definitions as the test executables, or GCC refuses the header.
  target_link_libraries(diffuse_catch_pch PRIVATE $<IF:$<TARGET_EXISTS:diffuse_emu>,diffuse_emu,diffuse>)

  # A ctest entry: the test executable with a Catch2 test spec (--filenames-as-tags: each file is a
  # tag too, [#name]).
  # Two OpenMP threads, so the threaded paths run; passive waiting, because ctest runs as many
  # entries at once as there are cores and a thread spinning at a barrier then takes the core that
  # another entry's thread needs (measured: test_models [cpu] 215-225 s with spinning against 143 s
  # passive, at load 9 on 2 cores).
  function(diffuse_add_test_entry name label exe spec)
    add_test(NAME ${name} COMMAND ${exe} --filenames-as-tags "${spec}")
    set_tests_properties(${name} PROPERTIES LABELS ${label} SKIP_RETURN_CODE 77 TIMEOUT ${DIFFUSE_TEST_TIMEOUT}
                         ENVIRONMENT "OMP_NUM_THREADS=2;OMP_WAIT_POLICY=passive")
  endfunction()

  # One test executable per folder of tests/; one ctest entry per (executable, tier). A tier is a
  # Catch2 tag: [cpu] [emu] [cuda] [slow]. A cuda entry exits 77 (skipped) without a GPU.
  function(diffuse_add_test_dir dir)
    file(GLOB srcs CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/tests/${dir}/*_test.cpp)
    if(DIFFUSE_TEST_ONLY_TAG)
      # Only the files with a test of that tier (scripts/sim.sh builds the [cuda] ones alone).
      set(tagged)
      foreach(src ${srcs})
        file(STRINGS ${src} hits REGEX "\\[${DIFFUSE_TEST_ONLY_TAG}\\]")
        if(hits)
          list(APPEND tagged ${src})
        endif()
      endforeach()
      set(srcs ${tagged})
    endif()
    if(NOT srcs)
      return()
    endif()
    set(exe test_${dir})
    add_executable(${exe} ${srcs})
    target_compile_options(${exe} PRIVATE ${DIFFUSE_CXX_FLAGS})
    target_link_libraries(${exe} PRIVATE diffuse_catch_main diffuse)
    target_precompile_headers(${exe} REUSE_FROM diffuse_catch_pch)
    if(TARGET diffuse_emu)
      target_link_libraries(${exe} PRIVATE diffuse_emu)
      target_compile_definitions(${exe} PRIVATE DIFFUSE_HAVE_SIMT=1)
    endif()
    if(dir STREQUAL "kernels" OR dir STREQUAL "autograd")
      target_link_libraries(${exe} PRIVATE diffuse_op_table)  # the op table's harnesses
    endif()
    if(dir STREQUAL "tools")
      # The CLI tests run the real `diffuse` binary as a child process.
      add_dependencies(${exe} diffuse_cli)
      target_compile_definitions(${exe} PRIVATE DIFFUSE_CLI_PATH="$<TARGET_FILE:diffuse_cli>")
    endif()
    if(DIFFUSE_CUDA_SIM AND dir STREQUAL "sim")
      # The simulation's own tests launch kernels of their own, compiled for the simulated device.
      file(GLOB sim_cu CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/tests/sim/*.cu)
      diffuse_sim_kernel_wrappers(sim_kernels ${sim_cu})
      target_sources(${exe} PRIVATE ${sim_kernels})
    endif()
    foreach(tier cpu emu cuda slow)
      # Only tiers that some test in this folder is tagged with get an entry. A file named in
      # DIFFUSE_TEST_OWN_ENTRY gets an entry of its own, ${dir}.${label}.<file> (Catch2's file
      # tags), and the folder's entry leaves it out: ctest then runs a long file beside the others
      # instead of after them (ctest runs as many entries at once as there are cores).
      set(own)
      set(rest FALSE)
      foreach(src ${srcs})
        file(STRINGS ${src} hits REGEX "\\[${tier}\\]")
        if(hits)
          get_filename_component(stem ${src} NAME_WE)
          if(stem IN_LIST DIFFUSE_TEST_OWN_ENTRY)
            list(APPEND own ${stem})
          else()
            set(rest TRUE)
          endif()
        endif()
      endforeach()
      if(NOT own AND NOT rest)
        continue()
      endif()
      # In a SIM build the [cuda] tests run against the simulated device: the `sim` tier.
      set(label ${tier})
      if(DIFFUSE_CUDA_SIM AND tier STREQUAL "cuda")
        set(label sim)
      endif()
      set(exclude "")
      if(DIFFUSE_TEST_EXCLUDE_TAG)
        set(exclude "~[${DIFFUSE_TEST_EXCLUDE_TAG}]")
      endif()
      if(rest)
        set(spec "[${tier}]${exclude}")
        foreach(stem ${own})
          string(APPEND spec "~[#${stem}]")
        endforeach()
        diffuse_add_test_entry(${dir}.${label} ${label} ${exe} "${spec}")
      endif()
      foreach(stem ${own})
        diffuse_add_test_entry(${dir}.${label}.${stem} ${label} ${exe} "[${tier}][#${stem}]${exclude}")
      endforeach()
    endforeach()
  endfunction()
  set(_df_test_dirs ${DIFFUSE_TEST_DIRS})
  if(DIFFUSE_CUDA_SIM AND NOT "sim" IN_LIST _df_test_dirs)
    list(APPEND _df_test_dirs sim)  # tests/sim: the simulated device's own tests
  endif()
  foreach(dir ${_df_test_dirs})
    # tests/simt tests the emulator itself: nothing to build where the emulator is off.
    if(dir STREQUAL "simt" AND NOT TARGET diffuse_emu)
      message(STATUS "diffuse: tests/simt left out (the emulator is off)")
      continue()
    endif()
    diffuse_add_test_dir(${dir})
  endforeach()
endif()

# ---- fuzz targets (DIFFUSE_FUZZ, clang) ---------------------------------------------------------
# One libFuzzer executable per reader, build/fuzz/fuzz_<name>, with its seed corpus in
# tests/corpus/<name>; scripts/fuzz.sh runs them. make_fuzz_seeds writes the seeds that only the
# library itself can produce (a valid checkpoint, the preset configs).
if(DIFFUSE_FUZZ)
  file(GLOB DIFFUSE_FUZZ_SOURCES CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/tests/fuzz/fuzz_*.cpp)
  foreach(src ${DIFFUSE_FUZZ_SOURCES})
    get_filename_component(name ${src} NAME_WE)
    add_executable(${name} ${src})
    target_compile_options(${name} PRIVATE ${DIFFUSE_CXX_FLAGS})
    target_link_options(${name} PRIVATE -fsanitize=fuzzer)
    target_link_libraries(${name} PRIVATE diffuse)
    set_target_properties(${name} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/fuzz)
  endforeach()
endif()
# make_fuzz_seeds is a plain program (no libFuzzer): built with the fuzz targets or the tests, so
# any build can rewrite the seeds after a format change.
if(DIFFUSE_FUZZ OR DIFFUSE_TESTS)
  add_executable(make_fuzz_seeds ${CMAKE_SOURCE_DIR}/tests/fuzz/make_fuzz_seeds.cpp)
  target_compile_options(make_fuzz_seeds PRIVATE ${DIFFUSE_CXX_FLAGS})
  target_link_libraries(make_fuzz_seeds PRIVATE diffuse)
  set_target_properties(make_fuzz_seeds PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/fuzz)
  if(DIFFUSE_TESTS)
    # The program still runs, and every seed it writes is committed (tests/fuzz/check_fuzz_seeds.sh).
    add_test(NAME fuzz.seeds COMMAND ${CMAKE_SOURCE_DIR}/tests/fuzz/check_fuzz_seeds.sh
             $<TARGET_FILE:make_fuzz_seeds> ${CMAKE_SOURCE_DIR}/tests/corpus)
    set_tests_properties(fuzz.seeds PROPERTIES LABELS cpu TIMEOUT 300 ENVIRONMENT "OMP_NUM_THREADS=2")
  endif()
endif()

# ---- benchmarks -------------------------------------------------------------------------------
if(DIFFUSE_BENCH)
  file(GLOB DIFFUSE_BENCH_SOURCES CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/bench/*.cpp)
  foreach(src ${DIFFUSE_BENCH_SOURCES})
    get_filename_component(name ${src} NAME_WE)
    add_executable(${name} ${src})
    target_compile_options(${name} PRIVATE ${DIFFUSE_CXX_FLAGS})
    target_link_libraries(${name} PRIVATE diffuse)
    set_target_properties(${name} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bench)
  endforeach()
  if(TARGET kernels)
    target_link_libraries(kernels PRIVATE diffuse_op_table)  # the cases of the ops in the table
  endif()
  # The benchmarks' no-GPU path, on every machine: CUDA_VISIBLE_DEVICES=-1 hides any GPU, and each
  # program must print exactly one line saying so and exit 0. On the simulated device these are
  # also sim-tier tests: they run the device discovery's no-device path against the runtime.
  set(no_gpu_labels cpu)
  if(DIFFUSE_CUDA_SIM)
    set(no_gpu_labels "cpu;sim")
  endif()
  if(DIFFUSE_TESTS)
    foreach(name kernels e2e)
      if(TARGET ${name})
        add_test(NAME bench.${name}.no_gpu
                 COMMAND ${CMAKE_SOURCE_DIR}/bench/check_no_gpu.sh $<TARGET_FILE:${name}> ${name})
        set_tests_properties(bench.${name}.no_gpu PROPERTIES LABELS "${no_gpu_labels}" ENVIRONMENT "CUDA_VISIBLE_DEVICES=-1"
                             TIMEOUT 120)
      endif()
    endforeach()
    # e2e's FLOP count, read off one recorded forward of each preset, on every machine: the figures of
    # docs/benchmarks.md (parameters, forward and training GFLOP per image).
    if(TARGET e2e)
      add_test(NAME bench.e2e.flops COMMAND e2e --flops-only --preset ddpm-cifar10,fmnist)
      set_tests_properties(bench.e2e.flops PROPERTIES LABELS cpu TIMEOUT 300 PASS_REGULAR_EXPRESSION
        "ddpm-cifar10 +35746307 parameters +12\\.444 GFLOP forward per image +37\\.331 GFLOP training per image\nfmnist +7278401 parameters +2\\.436 GFLOP forward per image +7\\.308 GFLOP training per image")
    endif()
    # On a GPU (cuda tier; skipped elsewhere): every case of the kernel benchmark runs, a few times.
    if(TARGET kernels AND NOT DIFFUSE_CUDA_SIM)  # timings of the simulated device mean nothing
      add_test(NAME bench.kernels.gpu
               COMMAND ${CMAKE_SOURCE_DIR}/bench/check_on_gpu.sh $<TARGET_FILE:kernels> kernels --warmup 1 --iters 3)
      set_tests_properties(bench.kernels.gpu PROPERTIES LABELS cuda SKIP_RETURN_CODE 77 TIMEOUT 600)
    endif()
    # On the simulated device (the sim tier): every case of the end-to-end benchmark once, on the tiny
    # preset, as a correctness run (e2e --once: no sync or allocation in the steady state, finite results).
    if(TARGET e2e AND DIFFUSE_CUDA_SIM)
      add_test(NAME bench.e2e.sim COMMAND e2e --once --preset tiny --batch 2 --sample-batch 2,1 --sample-steps 2)
      set_tests_properties(bench.e2e.sim PROPERTIES LABELS sim TIMEOUT 900 ENVIRONMENT "OMP_NUM_THREADS=2")
    endif()
    # ... and every case of the kernel benchmark once at small shapes (kernels --once): each launch and
    # cuBLAS / cuBLASLt call it makes, against the simulation's bounds, race and stream checks.
    if(TARGET kernels AND DIFFUSE_CUDA_SIM)
      add_test(NAME bench.kernels.sim COMMAND kernels --once)
      set_tests_properties(bench.kernels.sim PROPERTIES LABELS sim TIMEOUT 900)
    endif()
  endif()
endif()

# The emulator's shared-memory race check: instruments the emulated kernels (kernels/simt/race.h).
include(${CMAKE_SOURCE_DIR}/kernels/simt/race_check.cmake)
