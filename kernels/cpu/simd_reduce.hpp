// Horizontal reductions shared by the CPU kernels that pick their ISA at run time (nf4_gemv.cpp, q8_gemv.cpp).
#pragma once

#include <immintrin.h>

namespace graft::cpu::simd {

// Sum of the 8 lanes of an AVX register.
__attribute__((target("avx2,fma"))) inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

}  // namespace graft::cpu::simd
