// SIMT build only: __half / __half2 as 16-bit patterns converted with graft's f16 routines
// (round-to-nearest-even: graft/dtype.hpp).
#pragma once

#include <cstdint>

#include "cuda_runtime.h"
#include "graft/dtype.hpp"

struct __attribute__((aligned(2))) __half {
  uint16_t x;
  __half() = default;
  __half(float f) : x(::graft::f32_to_f16(f)) {}
  operator float() const { return ::graft::f16_to_f32(x); }
};
struct __attribute__((aligned(4))) __half2 {
  __half x, y;
};
using half = __half;
using half2 = __half2;

inline __half __ushort_as_half(unsigned short v) {
  __half r;
  r.x = v;
  return r;
}
inline unsigned short __half_as_ushort(__half v) { return v.x; }
inline __half __float2half_rn(float f) { return __ushort_as_half(::graft::f32_to_f16(f)); }
inline __half __float2half(float f) { return __float2half_rn(f); }
inline float __half2float(__half v) { return ::graft::f16_to_f32(v.x); }
inline __half2 __floats2half2_rn(float lo, float hi) { return {__float2half_rn(lo), __float2half_rn(hi)}; }
inline float2 __half22float2(__half2 v) { return {__half2float(v.x), __half2float(v.y)}; }
