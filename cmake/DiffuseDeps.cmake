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

# zlib from the system; on a machine without its headers, the static library and header that
# scripts/fetch-third-party.sh unpacked.
find_package(ZLIB QUIET)
if(NOT ZLIB_FOUND AND EXISTS "${DIFFUSE_THIRD_PARTY_DIR}/usr/include/zlib.h")
  set(ZLIB_ROOT "${DIFFUSE_THIRD_PARTY_DIR}/usr")
  set(ZLIB_USE_STATIC_LIBS ON)
endif()
find_package(ZLIB REQUIRED)
find_package(Threads REQUIRED)
find_package(OpenMP COMPONENTS CXX)
if(NOT OpenMP_CXX_FOUND)
  message(WARNING "diffuse: OpenMP not found; the CPU path runs on one thread")
endif()

# Optional compiled libraries: each is on only when every piece of it is there, and says in one line
# what it is and, when off, which piece is missing. None of them may fail the configure.

# Boost.Context runs each emulated CUDA thread as a fiber. Without it the emulator (and the emu
# tier) is left out.
find_package(Boost 1.66 QUIET COMPONENTS context)
set(DIFFUSE_HAVE_SIMT ${Boost_CONTEXT_FOUND})
if(DIFFUSE_HAVE_SIMT)
  message(STATUS "diffuse: emulator (Boost.Context) ON")
else()
  message(STATUS "diffuse: emulator (Boost.Context) OFF: libboost-context-dev not found; the emu tier is left out")
endif()

# The fast CPU path: OpenBLAS for the dense GEMMs under matmul and convolution. Optional: the
# blocked reference GEMM takes over without it. Debian's OpenBLASConfig.cmake names its paths
# without checking them, so both are checked here.
set(DIFFUSE_HAVE_OPENBLAS OFF)
find_package(OpenBLAS QUIET CONFIG)
if(NOT OpenBLAS_FOUND)
  find_library(DIFFUSE_OPENBLAS_LIB openblas)
  find_path(DIFFUSE_OPENBLAS_INCLUDE cblas.h PATH_SUFFIXES openblas)
  set(OpenBLAS_LIBRARIES ${DIFFUSE_OPENBLAS_LIB})
  set(OpenBLAS_INCLUDE_DIRS ${DIFFUSE_OPENBLAS_INCLUDE})
endif()
set(_df_blas_missing "")
if(NOT OpenBLAS_LIBRARIES OR NOT EXISTS "${OpenBLAS_LIBRARIES}")
  set(_df_blas_missing "the library libopenblas")
elseif(NOT OpenBLAS_INCLUDE_DIRS OR NOT EXISTS "${OpenBLAS_INCLUDE_DIRS}/cblas.h")
  set(_df_blas_missing "the header cblas.h")
else()
  set(DIFFUSE_HAVE_OPENBLAS ON)
endif()
if(DIFFUSE_HAVE_OPENBLAS)
  message(STATUS "diffuse: OpenBLAS ON")
else()
  message(STATUS "diffuse: OpenBLAS OFF: ${_df_blas_missing} not found (libopenblas-dev)")
endif()

# oneDNN: its JIT picks the ISA from CPUID features, where OpenBLAS 0.3.21 picks kernels by CPU
# model and falls back to SSE3 ("Prescott") on models it does not know. Measured on a 2-core
# AVX-512 Xeon that OpenBLAS calls Prescott: dnnl_sgemm 65-300 GFLOP/s on the convolution GEMMs,
# OpenBLAS 16-25. Optional: OpenBLAS (or the blocked loop) takes over without it.
# Found by its header and library, not by its CMake package: Debian's dnnl-config.cmake is built
# for the OpenCL GPU runtime and calls find_package(OpenCL REQUIRED), which fails the whole
# configure where ocl-icd-opencl-dev (only a Recommends of libdnnl-dev) is absent. diffuse uses
# oneDNN's C API on the CPU engine alone (dnnl.h includes no OpenCL header), so it needs neither.
find_path(DIFFUSE_DNNL_INCLUDE dnnl.h)
find_library(DIFFUSE_DNNL_LIB dnnl)
set(DIFFUSE_HAVE_DNNL OFF)
if(DIFFUSE_DNNL_INCLUDE AND DIFFUSE_DNNL_LIB)
  set(DIFFUSE_HAVE_DNNL ON)
  if(NOT TARGET DNNL::dnnl)
    add_library(DNNL::dnnl UNKNOWN IMPORTED)
    set_target_properties(DNNL::dnnl PROPERTIES IMPORTED_LOCATION "${DIFFUSE_DNNL_LIB}"
                          INTERFACE_INCLUDE_DIRECTORIES "${DIFFUSE_DNNL_INCLUDE}")
  endif()
  message(STATUS "diffuse: oneDNN ON")
elseif(NOT DIFFUSE_DNNL_INCLUDE)
  message(STATUS "diffuse: oneDNN OFF: the header dnnl.h not found (libdnnl-dev)")
else()
  message(STATUS "diffuse: oneDNN OFF: the library libdnnl not found (libdnnl-dev)")
endif()

# ---- DIFFUSE_CUDA=SIM: the CUDA toolkit's headers, without its compiler or libraries -----------
# The simulated device (sim/) compiles the host CUDA code against the real headers, found where a
# CUDA build finds them (FindCUDAToolkit: nvcc on PATH, CUDAToolkit_ROOT, /usr/local/cuda), and
# needs the emulator to run kernels. cuDNN's header is optional, as its library is in a CUDA build.
if(DIFFUSE_CUDA STREQUAL "SIM")
  if(NOT DIFFUSE_HAVE_SIMT)
    message(FATAL_ERROR "DIFFUSE_CUDA=SIM runs kernels in the emulator, which needs Boost.Context (libboost-context-dev)")
  endif()
  find_package(CUDAToolkit QUIET)
  find_path(DIFFUSE_SIM_CUDA_INCLUDE cuda_runtime_api.h HINTS ${CUDAToolkit_INCLUDE_DIRS} /usr/local/cuda/include)
  find_path(DIFFUSE_SIM_CUBLAS_INCLUDE cublasLt.h HINTS ${DIFFUSE_SIM_CUDA_INCLUDE} ${CUDAToolkit_INCLUDE_DIRS})
  find_path(DIFFUSE_SIM_CUDNN_INCLUDE cudnn.h HINTS ${DIFFUSE_SIM_CUDA_INCLUDE} ${CUDAToolkit_INCLUDE_DIRS})
  if(NOT DIFFUSE_SIM_CUDA_INCLUDE OR NOT DIFFUSE_SIM_CUBLAS_INCLUDE)
    message(FATAL_ERROR "DIFFUSE_CUDA=SIM needs the CUDA toolkit's headers (cuda_runtime_api.h, cublasLt.h); "
                        "set CUDAToolkit_ROOT")
  endif()
  set(DIFFUSE_SIM_INCLUDE_DIRS ${DIFFUSE_SIM_CUDA_INCLUDE} ${DIFFUSE_SIM_CUBLAS_INCLUDE})
  if(DIFFUSE_SIM_CUDNN_INCLUDE)
    list(APPEND DIFFUSE_SIM_INCLUDE_DIRS ${DIFFUSE_SIM_CUDNN_INCLUDE})
    message(STATUS "diffuse: simulated device with cuDNN (${DIFFUSE_SIM_CUDNN_INCLUDE}/cudnn.h)")
  else()
    message(STATUS "diffuse: simulated device without cuDNN: cudnn.h not found")
  endif()
  list(REMOVE_DUPLICATES DIFFUSE_SIM_INCLUDE_DIRS)
endif()
