// SIMT build only: __nv_bfloat16 / __nv_bfloat162 as 16-bit patterns converted with graft's own
// bf16 routines (round-to-nearest-even, NaN preserved: graft/dtype.hpp), like the CUDA intrinsics.
#pragma once

#include <cstdint>
#include <cstring>

#include "cuda_runtime.h"
#include "graft/dtype.hpp"

struct __attribute__((aligned(2))) __nv_bfloat16 {
  uint16_t x;
  __nv_bfloat16() = default;
  __nv_bfloat16(float f) : x(::graft::f32_to_bf16(f)) {}
  operator float() const { return ::graft::bf16_to_f32(x); }
};
struct __attribute__((aligned(4))) __nv_bfloat162 {
  __nv_bfloat16 x, y;
};
using nv_bfloat16 = __nv_bfloat16;
using nv_bfloat162 = __nv_bfloat162;

inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short v) {
  __nv_bfloat16 r;
  r.x = v;
  return r;
}
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 v) { return v.x; }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __ushort_as_bfloat16(::graft::f32_to_bf16(f)); }
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
inline float __bfloat162float(__nv_bfloat16 v) { return ::graft::bf16_to_f32(v.x); }
inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) { return {__float2bfloat16_rn(lo), __float2bfloat16_rn(hi)}; }
inline __nv_bfloat162 __float2bfloat162_rn(float v) { return {__float2bfloat16_rn(v), __float2bfloat16_rn(v)}; }
inline __nv_bfloat162 __halves2bfloat162(__nv_bfloat16 lo, __nv_bfloat16 hi) { return {lo, hi}; }
inline float2 __bfloat1622float2(__nv_bfloat162 v) { return {__bfloat162float(v.x), __bfloat162float(v.y)}; }
inline __nv_bfloat162 __float22bfloat162_rn(float2 v) { return __floats2bfloat162_rn(v.x, v.y); }
inline __nv_bfloat16 __low2bfloat16(__nv_bfloat162 v) { return v.x; }
inline __nv_bfloat16 __high2bfloat16(__nv_bfloat162 v) { return v.y; }
