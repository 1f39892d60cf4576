# The C API (include/diffuse/diffuse.h, capi/), the shared library that exports it, and the
# installable package: libraries, headers, the CMake config (diffuse::diffuse) and diffuse.pc.
# docs/embedding.md describes the result from the user's side.
#
# Two libraries from one set of objects:
#   diffuse         libdiffuse.a, always static: the whole engine, C and C++ APIs. The tests, the
#                   CLI and the benchmarks link it, and C++ users embed it (diffuse::diffuse_static).
#   diffuse_shared  libdiffuse.so.0, the same objects linked into a shared library that exports the
#                   C API and nothing else (diffuse::diffuse_shared).
# Why a second target rather than letting BUILD_SHARED_LIBS flip `diffuse`: the tests and the CLI
# reach into C++ internals that the shared library hides on purpose, and a C++ API exported from
# a .so would make every inline function and template in the headers part of an ABI we do not
# promise. One compile serves both ($<TARGET_OBJECTS:diffuse>, built position-independent).
# BUILD_SHARED_LIBS picks which one the installed package's diffuse::diffuse means.

include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

# The header's version macros are what C callers compile against; they must be the project's.
file(STRINGS ${CMAKE_SOURCE_DIR}/include/diffuse/diffuse.h _df_version_lines
     REGEX "^#define DIFFUSE_VERSION_(MAJOR|MINOR|PATCH) ")
set(_df_header_version)
foreach(part MAJOR MINOR PATCH)
  string(REGEX MATCH "DIFFUSE_VERSION_${part} ([0-9]+)" _ "${_df_version_lines}")
  list(APPEND _df_header_version ${CMAKE_MATCH_1})
endforeach()
list(JOIN _df_header_version "." _df_header_version)
if(NOT _df_header_version VERSION_EQUAL PROJECT_VERSION)
  message(FATAL_ERROR "include/diffuse/diffuse.h says version ${_df_header_version}, "
                      "CMakeLists.txt project() says ${PROJECT_VERSION}: update both")
endif()

# ---- the C API inside the static library ---------------------------------------------------------
file(GLOB DIFFUSE_CAPI_SOURCES CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/capi/*.cpp)
target_sources(diffuse PRIVATE ${DIFFUSE_CAPI_SOURCES})
# Installed layout: <prefix>/include/diffuse/diffuse.h for C; the C++ headers keep the tree's
# paths under <prefix>/include/diffuse/ (core/tensor.h, models/diffusion/sampler.h, ...) because
# they include each other as "core/tensor.h", so that folder is on the include path too.
target_include_directories(diffuse PUBLIC $<BUILD_INTERFACE:${CMAKE_SOURCE_DIR}/include>
                                          $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>
                                          $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}/diffuse>)
# Hidden by default, so that only DIFFUSE_API functions reach the shared library's symbol table;
# it changes nothing for static linking (the tests still see every C++ symbol).
set_target_properties(diffuse PROPERTIES C_VISIBILITY_PRESET hidden CXX_VISIBILITY_PRESET hidden
                                         VISIBILITY_INLINES_HIDDEN ON EXPORT_NAME diffuse_static)

# ---- the shared library ----------------------------------------------------------------------------
add_library(diffuse_shared SHARED $<TARGET_OBJECTS:diffuse>)
add_library(diffuse::diffuse_shared ALIAS diffuse_shared)
set_target_properties(diffuse_shared PROPERTIES
  OUTPUT_NAME diffuse
  VERSION ${PROJECT_VERSION}
  SOVERSION ${PROJECT_VERSION_MAJOR}
  LINKER_LANGUAGE CXX
  EXPORT_NAME diffuse_shared
  # Non-system folders it was linked against (OpenBLAS's flavour folder) stay on its run path.
  INSTALL_RPATH_USE_LINK_PATH ON)
# The same third-party libraries as the static one, read from it so the two never drift.
target_link_libraries(diffuse_shared PRIVATE $<TARGET_PROPERTY:diffuse,LINK_LIBRARIES>)
target_include_directories(diffuse_shared INTERFACE $<BUILD_INTERFACE:${CMAKE_SOURCE_DIR}/include>
                                                    $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)
# The version script is the second half of "the C API and nothing else": hidden visibility does
# not cover what libstdc++'s headers declare visible (std:: template instantiations) nor object
# files compiled without the flag (nvcc's), and the script hides those too. DIFFUSE_0 names the
# symbol version, so a later incompatible ABI can keep old binaries working.
set(_df_map ${CMAKE_SOURCE_DIR}/capi/diffuse.map)
target_link_options(diffuse_shared PRIVATE -Wl,--version-script=${_df_map})
set_property(TARGET diffuse_shared APPEND PROPERTY LINK_DEPENDS ${_df_map})
if(NOT DIFFUSE_SANITIZE AND NOT DIFFUSE_FUZZ)
  # Every symbol resolved at link time, not at a user's dlopen. (Sanitizer runtimes live in the
  # executable, so instrumented builds must leave them undefined.)
  target_link_options(diffuse_shared PRIVATE -Wl,--no-undefined)
endif()

# The header is C99: compile it as strict C in every build, so no C++ slips in.
add_library(diffuse_c99_header_check OBJECT ${CMAKE_SOURCE_DIR}/capi/header_check.c)
target_include_directories(diffuse_c99_header_check PRIVATE ${CMAKE_SOURCE_DIR}/include)
set_target_properties(diffuse_c99_header_check PROPERTIES C_STANDARD 99 C_STANDARD_REQUIRED ON C_EXTENSIONS OFF)
target_compile_options(diffuse_c99_header_check PRIVATE -Wall -Wextra -Wpedantic -pedantic-errors
                                                        $<$<BOOL:${DIFFUSE_WERROR}>:-Werror>)

# ---- install ---------------------------------------------------------------------------------------
install(TARGETS diffuse EXPORT diffuseStaticTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT devel)
install(TARGETS diffuse_shared EXPORT diffuseSharedTargets
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT runtime NAMELINK_COMPONENT devel)
set_target_properties(diffuse_cli PROPERTIES INSTALL_RPATH_USE_LINK_PATH ON)
install(TARGETS diffuse_cli RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT runtime)

install(FILES ${CMAKE_SOURCE_DIR}/include/diffuse/diffuse.h
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/diffuse COMPONENT devel)
# The C++ API's headers: the public ones of each layer (kernels/cpu, cuda and simt are internal,
# and so are the headers that need the CUDA toolkit's).
file(GLOB_RECURSE _df_cxx_headers RELATIVE ${CMAKE_SOURCE_DIR} CONFIGURE_DEPENDS
     ${CMAKE_SOURCE_DIR}/core/*.h ${CMAKE_SOURCE_DIR}/autograd/*.h ${CMAKE_SOURCE_DIR}/kernels/*.h
     ${CMAKE_SOURCE_DIR}/models/*.h)
list(FILTER _df_cxx_headers EXCLUDE REGEX "^kernels/(cpu|cuda|simt)/|cuda")
foreach(h ${_df_cxx_headers})
  get_filename_component(dir ${h} DIRECTORY)
  install(FILES ${CMAKE_SOURCE_DIR}/${h} DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/diffuse/${dir} COMPONENT devel)
endforeach()

set(_df_cmake_dir ${CMAKE_INSTALL_LIBDIR}/cmake/diffuse)
install(EXPORT diffuseStaticTargets NAMESPACE diffuse:: DESTINATION ${_df_cmake_dir} COMPONENT devel)
install(EXPORT diffuseSharedTargets NAMESPACE diffuse:: DESTINATION ${_df_cmake_dir} COMPONENT devel)

# What diffuseConfig.cmake needs to know about this build.
if(BUILD_SHARED_LIBS)
  set(DIFFUSE_PACKAGE_DEFAULT shared)
else()
  set(DIFFUSE_PACKAGE_DEFAULT static)
endif()
set(DIFFUSE_PACKAGE_OPENMP ${OpenMP_CXX_FOUND})
set(DIFFUSE_PACKAGE_CUDA ${DIFFUSE_HAVE_CUDA})
# Imported targets the static library links privately reach its consumers' link line
# ($<LINK_ONLY:...>), so the config must find their packages too.
set(DIFFUSE_PACKAGE_DNNL ${DIFFUSE_HAVE_DNNL})
set(DIFFUSE_PACKAGE_OPENBLAS_CONFIG ${OpenBLAS_FOUND})
configure_package_config_file(${CMAKE_SOURCE_DIR}/cmake/diffuseConfig.cmake.in
                              ${CMAKE_BINARY_DIR}/package/diffuseConfig.cmake
                              INSTALL_DESTINATION ${_df_cmake_dir})
# 0.x: a minor release may break the API, so only the same major.minor is compatible.
write_basic_package_version_file(${CMAKE_BINARY_DIR}/package/diffuseConfigVersion.cmake
                                 VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_BINARY_DIR}/package/diffuseConfig.cmake ${CMAKE_BINARY_DIR}/package/diffuseConfigVersion.cmake
        DESTINATION ${_df_cmake_dir} COMPONENT devel)

# pkg-config, for C users outside CMake: `cc app.c $(pkg-config --cflags --libs diffuse)` links
# the shared library; Libs.private is what `--static` adds for libdiffuse.a. It is read off the
# static library's own link list, so a new dependency shows up here by itself; imported targets
# become their files through generator expressions (hence file(GENERATE) after configure_file).
set(_df_pc_private "-lstdc++ -lm")
get_target_property(_df_links diffuse LINK_LIBRARIES)
foreach(item ${_df_links})
  if(item STREQUAL "Threads::Threads")
    string(APPEND _df_pc_private " -lpthread")
  elseif(item MATCHES "^OpenMP::")
    string(APPEND _df_pc_private " ${OpenMP_CXX_FLAGS}")
  elseif(TARGET ${item})
    get_target_property(_df_type ${item} TYPE)
    if(NOT _df_type STREQUAL "INTERFACE_LIBRARY")
      string(APPEND _df_pc_private " $<TARGET_LINKER_FILE:${item}>")
    endif()
  elseif(item MATCHES "^-" OR IS_ABSOLUTE "${item}")
    string(APPEND _df_pc_private " ${item}")
  else()
    string(APPEND _df_pc_private " -l${item}")
  endif()
endforeach()
set(DIFFUSE_PC_LIBS_PRIVATE ${_df_pc_private})
# From <libdir>/pkgconfig back to the prefix (lib/pkgconfig, or lib/<multiarch>/pkgconfig).
file(RELATIVE_PATH DIFFUSE_PC_TO_PREFIX /${CMAKE_INSTALL_LIBDIR}/pkgconfig /)
string(REGEX REPLACE "/$" "" DIFFUSE_PC_TO_PREFIX "${DIFFUSE_PC_TO_PREFIX}")
configure_file(${CMAKE_SOURCE_DIR}/cmake/diffuse.pc.in ${CMAKE_BINARY_DIR}/package/diffuse.pc.gen @ONLY)
file(GENERATE OUTPUT ${CMAKE_BINARY_DIR}/package/diffuse.pc INPUT ${CMAKE_BINARY_DIR}/package/diffuse.pc.gen)
install(FILES ${CMAKE_BINARY_DIR}/package/diffuse.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig COMPONENT devel)

# ---- tests -----------------------------------------------------------------------------------------
if(DIFFUSE_TESTS)
  if(NOT "capi" IN_LIST DIFFUSE_TEST_DIRS)
    diffuse_add_test_dir(capi)
  endif()
  # tests/interop: the diffusers mapping key by key and the seeds of fuzz_diffusers (C++), beside
  # interop.diffusers below, which runs diffusers itself.
  if(NOT "interop" IN_LIST DIFFUSE_TEST_DIRS)
    diffuse_add_test_dir(interop)
  endif()
  # The package as a user meets it: install into a temporary prefix, build examples/embed_c,
  # examples/embed_cpp (and pkg-config) out of tree against it, run them, compare the C example's
  # images with `diffuse sample`'s, run examples/python/embed_ctypes.py. Sanitizer builds are left
  # out: their objects need the sanitizer runtime linked into every consumer.
  if(NOT DIFFUSE_SANITIZE AND NOT DIFFUSE_FUZZ)
    add_test(NAME capi.embed_examples
             COMMAND bash ${CMAKE_SOURCE_DIR}/tests/capi/embed_examples.sh ${CMAKE_BINARY_DIR} ${CMAKE_SOURCE_DIR}
                     ${DIFFUSE_PYTHON})
    set_tests_properties(capi.embed_examples PROPERTIES LABELS cpu TIMEOUT 900 SKIP_RETURN_CODE 77
                         ENVIRONMENT "OMP_NUM_THREADS=2")
    # diffusers UNet2DModel folders in and out, checked against diffusers itself (PyTorch, CPU).
    add_test(NAME interop.diffusers
             COMMAND ${DIFFUSE_PYTHON} ${CMAKE_SOURCE_DIR}/tests/interop/diffusers_check.py
                     --cli $<TARGET_FILE:diffuse_cli> --lib $<TARGET_FILE:diffuse_shared>)
    set_tests_properties(interop.diffusers PROPERTIES LABELS cpu TIMEOUT 600 ENVIRONMENT "OMP_NUM_THREADS=2")
  endif()
endif()
