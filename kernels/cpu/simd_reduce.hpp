// Horizontal reductions and the software prefetch shared by the CPU kernels that pick their ISA at run time
// (nf4_gemv.cpp, q8_gemv.cpp, small_gemm.cpp).
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace graft::cpu::simd {

// Sum of the 8 lanes of an AVX register.
__attribute__((target("avx2,fma"))) inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Prefetch the weight stream kPrefetchAhead bytes ahead of `p`, for the AVX2 Q8 Int8 and NF4 decode kernels, which
// read one long sequential stream. Zen 3's hardware prefetcher alone left them at 15-17 GB/s of a 21-22 GB/s one-thread read
// (1 thread, the 151,669 x 512 Q8 head, bench_lm_head, 2026-12-07: 4.79 ms without, 3.66-3.69 ms at 2, 4 or
// 8 KiB ahead; 2 threads 3.06 -> 1.80-2.05 ms). A prefetch past the end of the weight is harmless (prefetches do
// not fault).
inline constexpr int64_t kPrefetchAhead = 4096;
inline void prefetch_ahead(const void* p) {
  _mm_prefetch(static_cast<const char*>(p) + kPrefetchAhead, _MM_HINT_T0);
}

}  // namespace graft::cpu::simd
