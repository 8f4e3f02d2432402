// NF4 × f32 matmul with in-register decoding of the 4-bit codes (AVX-512, AVX2+FMA, portable).
// Byte j of a row holds elements 2j (high nibble) and 2j+1 (low nibble), so x is split once per call
// into its even and odd elements; each byte then multiplies one even and one odd x value. Each block
// of `blocksize` weights is summed unscaled and scaled by its absmax once.
// GCC 12 reports -Wmaybe-uninitialized inside its own AVX-512 headers (the _mm512_undefined_* operand of the
// masked builtins) when they are inlined here: a false positive of the compiler's headers, fatal under CI's -Werror.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include "graft/cpu/nf4_gemv.hpp"

#include <immintrin.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "graft/parallel.hpp"
#include "graft/tensor.hpp"

namespace graft::cpu {
namespace {

constexpr int64_t kMaxT = 16;

// Generic layout (any K, any blocksize): element-wise decode, still no dequantized buffer.
void rows_portable(const float* x, int64_t T, int64_t K, const nf4::QuantizedWeight& w, const float* absmax,
                   int64_t n0, int64_t n1, int64_t ldy, float* y) {
  const auto& code = nf4::code();
  const uint8_t* p = w.packed.data();
  for (int64_t n = n0; n < n1; ++n) {
    float acc[kMaxT] = {};
    for (int64_t k = 0; k < K; ++k) {
      const int64_t e = n * K + k;
      const uint8_t byte = p[e / 2];
      const float v = code[(e & 1) ? (byte & 0x0f) : (byte >> 4)] * absmax[e / w.blocksize];
      for (int64_t t = 0; t < T; ++t) acc[t] += v * x[t * K + k];
    }
    for (int64_t t = 0; t < T; ++t) y[t * ldy + n] = acc[t];
  }
}

__attribute__((target("avx2,fma"))) inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// xe/xo: [T, K/2] even / odd elements of x. Requires K % bs == 0, bs % 32 == 0.
__attribute__((target("avx2,fma"))) void rows_avx2(const float* xe, const float* xo, int64_t T, int64_t K,
                                                   const nf4::QuantizedWeight& w, const float* absmax, int64_t n0,
                                                   int64_t n1, int64_t ldy, float* y) {
  const auto& code = nf4::code();
  const __m256 t0 = _mm256_loadu_ps(code.data()), t1 = _mm256_loadu_ps(code.data() + 8);
  const __m256i m4 = _mm256_set1_epi32(0x0f);
  const int64_t bs = w.blocksize, half = K / 2, bpr = K / bs;
  auto lut = [&](__m256i idx) {
    const __m256 lo = _mm256_permutevar8x32_ps(t0, idx), hi = _mm256_permutevar8x32_ps(t1, idx);
    return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
  };
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = w.packed.data() + n * half;
    __m256 acc[kMaxT];
    for (int64_t t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < bpr; ++b) {
      __m256 bsum[kMaxT];
      for (int64_t t = 0; t < T; ++t) bsum[t] = _mm256_setzero_ps();
      for (int64_t j = b * bs / 2; j < (b + 1) * bs / 2; j += 8) {
        const __m256i bytes = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + j)));
        const __m256 we = lut(_mm256_srli_epi32(bytes, 4)), wo = lut(_mm256_and_si256(bytes, m4));
        for (int64_t t = 0; t < T; ++t) {
          bsum[t] = _mm256_fmadd_ps(we, _mm256_loadu_ps(xe + t * half + j), bsum[t]);
          bsum[t] = _mm256_fmadd_ps(wo, _mm256_loadu_ps(xo + t * half + j), bsum[t]);
        }
      }
      const __m256 s = _mm256_set1_ps(absmax[(n * K) / bs + b]);
      for (int64_t t = 0; t < T; ++t) acc[t] = _mm256_fmadd_ps(bsum[t], s, acc[t]);
    }
    for (int64_t t = 0; t < T; ++t) y[t * ldy + n] = hsum256(acc[t]);
  }
}

__attribute__((target("avx512f"))) void rows_avx512(const float* xe, const float* xo, int64_t T, int64_t K,
                                                    const nf4::QuantizedWeight& w, const float* absmax, int64_t n0,
                                                    int64_t n1, int64_t ldy, float* y) {
  const __m512 table = _mm512_loadu_ps(nf4::code().data());
  const __m512i m4 = _mm512_set1_epi32(0x0f);
  const int64_t bs = w.blocksize, half = K / 2, bpr = K / bs;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = w.packed.data() + n * half;
    __m512 acc[kMaxT];
    for (int64_t t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
    for (int64_t b = 0; b < bpr; ++b) {
      __m512 bsum[kMaxT];
      for (int64_t t = 0; t < T; ++t) bsum[t] = _mm512_setzero_ps();
      for (int64_t j = b * bs / 2; j < (b + 1) * bs / 2; j += 16) {
        const __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + j)));
        const __m512 we = _mm512_permutexvar_ps(_mm512_srli_epi32(bytes, 4), table);
        const __m512 wo = _mm512_permutexvar_ps(_mm512_and_si512(bytes, m4), table);
        for (int64_t t = 0; t < T; ++t) {
          bsum[t] = _mm512_fmadd_ps(we, _mm512_loadu_ps(xe + t * half + j), bsum[t]);
          bsum[t] = _mm512_fmadd_ps(wo, _mm512_loadu_ps(xo + t * half + j), bsum[t]);
        }
      }
      const __m512 s = _mm512_set1_ps(absmax[(n * K) / bs + b]);
      for (int64_t t = 0; t < T; ++t) acc[t] = _mm512_fmadd_ps(bsum[t], s, acc[t]);
    }
    for (int64_t t = 0; t < T; ++t) y[t * ldy + n] = _mm512_reduce_add_ps(acc[t]);
  }
}

Nf4Isa parse_cap() {
  const char* v = std::getenv("GRAFT_NF4_ISA");
  if (!v || !*v) return Nf4Isa::Avx512;
  const std::string s(v);
  if (s == "portable") return Nf4Isa::Portable;
  if (s == "avx2") return Nf4Isa::Avx2;
  if (s == "avx512") return Nf4Isa::Avx512;
  GRAFT_FAIL("", "GRAFT_NF4_ISA={} is not one of portable, avx2, avx512", s);
}

}  // namespace

bool nf4_isa_supported(Nf4Isa isa) {
  switch (isa) {
    case Nf4Isa::Auto:
    case Nf4Isa::Portable: return true;
    case Nf4Isa::Avx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Nf4Isa::Avx512: return __builtin_cpu_supports("avx512f");
  }
  return false;
}

Nf4Isa nf4_isa_detect() {
  static const Nf4Isa best = [] {
    const Nf4Isa cap = parse_cap();
    if (cap == Nf4Isa::Avx512 && nf4_isa_supported(Nf4Isa::Avx512)) return Nf4Isa::Avx512;
    if (cap != Nf4Isa::Portable && nf4_isa_supported(Nf4Isa::Avx2)) return Nf4Isa::Avx2;
    return Nf4Isa::Portable;
  }();
  return best;
}

void nf4_gemv(const float* x, int64_t T, int64_t K, const nf4::QuantizedWeight& w, std::span<const float> absmax,
              float* y, Nf4Isa isa) {
  GRAFT_CHECK(w.shape.size() == 2 && w.shape[1] == K, "nf4_gemv: NF4 weight {} must be [N, {}]", w.shape.str(), K);
  GRAFT_CHECK(T >= 0 && T <= kMaxT, "nf4_gemv: T = {} rows, at most {} (use linear_nf4 for more)", T, kMaxT);
  GRAFT_CHECK(static_cast<int64_t>(absmax.size()) == w.num_blocks(), "nf4_gemv: {} absmax values for {} blocks",
              absmax.size(), w.num_blocks());
  if (isa == Nf4Isa::Auto) isa = nf4_isa_detect();
  GRAFT_CHECK(nf4_isa_supported(isa), "nf4_gemv: this CPU lacks the requested ISA; use Nf4Isa::Auto");
  const int64_t N = w.shape[0];
  if (T == 0 || N == 0) return;
  const int64_t bs = w.blocksize;
  if (K % bs != 0 || bs % 32 != 0) isa = Nf4Isa::Portable;
  constexpr int64_t kRows = 16;
  const int64_t chunks = (N + kRows - 1) / kRows;
  if (isa == Nf4Isa::Portable) {
#pragma omp parallel for schedule(static) if (graft::parallel_worth(T * N * K))
    for (int64_t c = 0; c < chunks; ++c)
      rows_portable(x, T, K, w, absmax.data(), c * kRows, std::min(N, (c + 1) * kRows), N, y);
    return;
  }
  const int64_t half = K / 2;
  std::vector<float> xe(static_cast<size_t>(T * half)), xo(static_cast<size_t>(T * half));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < half; ++j) {
      xe[t * half + j] = x[t * K + 2 * j];
      xo[t * half + j] = x[t * K + 2 * j + 1];
    }
#pragma omp parallel for schedule(static) if (graft::parallel_worth(T * N * K))
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t n0 = c * kRows, n1 = std::min(N, n0 + kRows);
    if (isa == Nf4Isa::Avx512) rows_avx512(xe.data(), xo.data(), T, K, w, absmax.data(), n0, n1, N, y);
    else rows_avx2(xe.data(), xo.data(), T, K, w, absmax.data(), n0, n1, N, y);
  }
}

}  // namespace graft::cpu
