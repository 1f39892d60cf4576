// kernels/simt/vector_types.h: CUDA's built-in vector types for the emulator, with the sizes and
// alignments of vector_types.h, so that a kernel's vectorised loads (float4 = 16 bytes, 16-aligned)
// and struct layouts match the GPU build.
//
// They are defined in a namespace and brought into the global one with using-declarations: a
// program with the CUDA backend links nvcc's objects, which define CUDA's own dim3 (and __half
// ...) with inline members, beside ours; distinct mangled names keep the two from being merged.
#pragma once

// Kernels reinterpret memory freely (a uint4 load of eight bf16, a bf16 pair read as one 32-bit
// word), which nvcc compiles as meant. For the host compiler those are aliasing violations; the
// vector and 16-bit float types are declared may_alias, so an access through them may alias any
// object and the optimiser keeps such accesses in order.
#define DF_SIMT_MAY_ALIAS [[gnu::may_alias]]

namespace diffuse::simt::cuda_types {

#define DF_SIMT_VEC2(T, name, align)                                                          \
  struct alignas(align) DF_SIMT_MAY_ALIAS name {                                              \
    T x, y;                                                                                   \
  };                                                                                          \
  constexpr name make_##name(T x, T y) { return name{x, y}; }
#define DF_SIMT_VEC3(T, name)                                                                 \
  struct DF_SIMT_MAY_ALIAS name {                                                             \
    T x, y, z;                                                                                \
  };                                                                                          \
  constexpr name make_##name(T x, T y, T z) { return name{x, y, z}; }
#define DF_SIMT_VEC4(T, name, align)                                                          \
  struct alignas(align) DF_SIMT_MAY_ALIAS name {                                              \
    T x, y, z, w;                                                                             \
  };                                                                                          \
  constexpr name make_##name(T x, T y, T z, T w) { return name{x, y, z, w}; }

DF_SIMT_VEC2(char, char2, 2)
DF_SIMT_VEC2(unsigned char, uchar2, 2)
DF_SIMT_VEC2(short, short2, 4)
DF_SIMT_VEC2(unsigned short, ushort2, 4)
DF_SIMT_VEC2(int, int2, 8)
DF_SIMT_VEC2(unsigned int, uint2, 8)
DF_SIMT_VEC2(long long, longlong2, 16)
DF_SIMT_VEC2(unsigned long long, ulonglong2, 16)
DF_SIMT_VEC2(float, float2, 8)
DF_SIMT_VEC2(double, double2, 16)

DF_SIMT_VEC3(char, char3)
DF_SIMT_VEC3(unsigned char, uchar3)
DF_SIMT_VEC3(short, short3)
DF_SIMT_VEC3(unsigned short, ushort3)
DF_SIMT_VEC3(int, int3)
DF_SIMT_VEC3(unsigned int, uint3)
DF_SIMT_VEC3(float, float3)
DF_SIMT_VEC3(double, double3)

DF_SIMT_VEC4(char, char4, 4)
DF_SIMT_VEC4(unsigned char, uchar4, 4)
DF_SIMT_VEC4(short, short4, 8)
DF_SIMT_VEC4(unsigned short, ushort4, 8)
DF_SIMT_VEC4(int, int4, 16)
DF_SIMT_VEC4(unsigned int, uint4, 16)
DF_SIMT_VEC4(float, float4, 16)
DF_SIMT_VEC4(double, double4, 16)

#undef DF_SIMT_VEC2
#undef DF_SIMT_VEC3
#undef DF_SIMT_VEC4

static_assert(sizeof(float4) == 16 && alignof(float4) == 16);
static_assert(sizeof(float2) == 8 && alignof(float2) == 8);
static_assert(sizeof(uint3) == 12);

// Launch geometry: unspecified extents are 1, as in CUDA.
struct dim3 {
  unsigned int x = 1, y = 1, z = 1;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return uint3{x, y, z}; }
};

}  // namespace diffuse::simt::cuda_types

#define DF_SIMT_USING_VEC(name)                  \
  using diffuse::simt::cuda_types::name##2;      \
  using diffuse::simt::cuda_types::name##3;      \
  using diffuse::simt::cuda_types::name##4;      \
  using diffuse::simt::cuda_types::make_##name##2; \
  using diffuse::simt::cuda_types::make_##name##3; \
  using diffuse::simt::cuda_types::make_##name##4;
DF_SIMT_USING_VEC(char)
DF_SIMT_USING_VEC(uchar)
DF_SIMT_USING_VEC(short)
DF_SIMT_USING_VEC(ushort)
DF_SIMT_USING_VEC(int)
DF_SIMT_USING_VEC(uint)
DF_SIMT_USING_VEC(float)
DF_SIMT_USING_VEC(double)
#undef DF_SIMT_USING_VEC
using diffuse::simt::cuda_types::longlong2;
using diffuse::simt::cuda_types::make_longlong2;
using diffuse::simt::cuda_types::ulonglong2;
using diffuse::simt::cuda_types::make_ulonglong2;
using diffuse::simt::cuda_types::dim3;
