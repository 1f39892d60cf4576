# Third-party parts, all from Debian packages. Header-only ones are searched first under
# DIFFUSE_THIRD_PARTY_DIR (unpacked .deb files: <dir>/usr/include/...) and then on the system.

set(_df_hint_includes "${DIFFUSE_THIRD_PARTY_DIR}/usr/include")

function(diffuse_find_header var header package)
  find_path(${var} NAMES ${header} HINTS ${_df_hint_includes} NO_CACHE)
  if(NOT ${var})
    message(FATAL_ERROR "diffuse: ${header} not found; install the Debian package `${package}` "
                        "or run scripts/fetch-third-party.sh and set DIFFUSE_THIRD_PARTY_DIR")
  endif()
  set(${var} ${${var}} PARENT_SCOPE)
endfunction()

diffuse_find_header(DIFFUSE_CLI11_INCLUDE CLI/CLI.hpp libcli11-dev)
diffuse_find_header(DIFFUSE_JSON_INCLUDE nlohmann/json.hpp nlohmann-json3-dev)
diffuse_find_header(DIFFUSE_STB_INCLUDE stb/stb_image.h libstb-dev)
if(DIFFUSE_TESTS)
  diffuse_find_header(DIFFUSE_CATCH2_INCLUDE catch2/catch.hpp catch2)
endif()

find_package(ZLIB REQUIRED)
find_package(Threads REQUIRED)
find_package(OpenMP COMPONENTS CXX)
if(NOT OpenMP_CXX_FOUND)
  message(WARNING "diffuse: OpenMP not found; the CPU path runs on one thread")
endif()

# Boost.Context runs each emulated CUDA thread as a fiber. Without it the emulator (and the emu
# tier) is left out.
find_package(Boost 1.66 QUIET COMPONENTS context)
set(DIFFUSE_HAVE_SIMT ${Boost_CONTEXT_FOUND})
message(STATUS "diffuse: emulator (Boost.Context) ${DIFFUSE_HAVE_SIMT}")

# The fast CPU path: OpenBLAS for the dense GEMMs under matmul and convolution. Optional: the
# blocked reference GEMM takes over without it.
find_package(OpenBLAS QUIET CONFIG)
if(OpenBLAS_FOUND)
  set(DIFFUSE_HAVE_OPENBLAS ON)
else()
  find_library(DIFFUSE_OPENBLAS_LIB openblas)
  find_path(DIFFUSE_OPENBLAS_INCLUDE cblas.h PATH_SUFFIXES openblas)
  if(DIFFUSE_OPENBLAS_LIB AND DIFFUSE_OPENBLAS_INCLUDE)
    set(DIFFUSE_HAVE_OPENBLAS ON)
    set(OpenBLAS_LIBRARIES ${DIFFUSE_OPENBLAS_LIB})
    set(OpenBLAS_INCLUDE_DIRS ${DIFFUSE_OPENBLAS_INCLUDE})
  else()
    set(DIFFUSE_HAVE_OPENBLAS OFF)
  endif()
endif()
message(STATUS "diffuse: OpenBLAS ${DIFFUSE_HAVE_OPENBLAS}")

# oneDNN: its JIT picks the ISA from CPUID features, where OpenBLAS 0.3.21 picks kernels by CPU
# model and falls back to SSE3 ("Prescott") on models it does not know. Measured on a 2-core
# AVX-512 Xeon that OpenBLAS calls Prescott: dnnl_sgemm 65-300 GFLOP/s on the convolution GEMMs,
# OpenBLAS 16-25. Optional: OpenBLAS (or the blocked loop) takes over without it.
find_package(dnnl QUIET CONFIG)
set(DIFFUSE_HAVE_DNNL ${dnnl_FOUND})
message(STATUS "diffuse: oneDNN ${DIFFUSE_HAVE_DNNL}")
