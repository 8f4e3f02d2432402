// Q8 × f32 matmul with the int8 codes widened in registers (AVX-512, AVX2+FMA, portable); the weight layout is in
// graft/quant/q8.hpp (row-major int8, one f32 scale per block of a row; blocks never straddle rows).
// Each block is summed unscaled, then multiplied by its scale once: y = Σ_b scale_b · Σ_{k in b} q_k · x_k.
#include "avx512_header_warnings.hpp"  // first: before <immintrin.h>
#include "graft/cpu/q8_gemv.hpp"

#include <immintrin.h>

#include <algorithm>
#include <cstdlib>
#include <string>

#include "graft/error.hpp"
#include "quant_head_gemv.hpp"
#include "simd_reduce.hpp"
#include "static_rows.hpp"
#include "x_int8.hpp"

namespace graft::cpu {
namespace {

constexpr int64_t kMaxT = kQuantHeadMaxT;

void rows_portable(const float* x, int64_t T, int64_t K, const q8::QuantizedWeight& w, int64_t n0, int64_t n1,
                   int64_t ldy, float* y) {
  const int64_t bs = w.blocksize, nb = w.blocks_per_row();
  for (int64_t n = n0; n < n1; ++n) {
    const int8_t* row = w.q.data() + n * K;
    float acc[kMaxT] = {};
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t k0 = b * bs, k1 = std::min(K, k0 + bs);
      float bsum[kMaxT] = {};
      for (int64_t k = k0; k < k1; ++k) {
        const float v = static_cast<float>(row[k]);
        for (int64_t t = 0; t < T; ++t) bsum[t] += v * x[t * K + k];
      }
      const float s = w.scale[static_cast<size_t>(n * nb + b)];
      for (int64_t t = 0; t < T; ++t) acc[t] += bsum[t] * s;
    }
    for (int64_t t = 0; t < T; ++t) y[t * ldy + n] = acc[t];
  }
}

using simd::hsum256;

__attribute__((target("avx2,fma"))) inline __m256 widen8(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

// Any T <= 16; blocksize % 16 == 0, K % 16 == 0 (so every block, also a row's last, is a multiple of 8 long).
// TT > 0: T fixed at compile time (accumulators in registers); TT = 0: run-time T.
template <int TT>
__attribute__((target("avx2,fma"))) void rows_avx2_t(const float* x, int64_t T_, int64_t K,
                                                     const q8::QuantizedWeight& w, int64_t n0, int64_t n1,
                                                     int64_t ldy, float* y) {
  const int64_t T = TT > 0 ? TT : T_;
  const int64_t bs = w.blocksize, nb = w.blocks_per_row();
  for (int64_t n = n0; n < n1; ++n) {
    const int8_t* row = w.q.data() + n * K;
    __m256 acc[kMaxT];
#pragma GCC unroll 16
    for (int64_t t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t k1 = std::min(K, (b + 1) * bs);
      __m256 bsum[kMaxT];
#pragma GCC unroll 16
      for (int64_t t = 0; t < T; ++t) bsum[t] = _mm256_setzero_ps();
      for (int64_t k = b * bs; k < k1; k += 8) {
        const __m256 wv = widen8(row + k);
#pragma GCC unroll 16
        for (int64_t t = 0; t < T; ++t) bsum[t] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + t * K + k), bsum[t]);
      }
      const __m256 s = _mm256_set1_ps(w.scale[static_cast<size_t>(n * nb + b)]);
#pragma GCC unroll 16
      for (int64_t t = 0; t < T; ++t) acc[t] = _mm256_fmadd_ps(bsum[t], s, acc[t]);
    }
#pragma GCC unroll 16
    for (int64_t t = 0; t < T; ++t) y[t * ldy + n] = hsum256(acc[t]);
  }
}

void rows_avx2(const float* x, int64_t T, int64_t K, const q8::QuantizedWeight& w, int64_t n0, int64_t n1,
               int64_t ldy, float* y) {
  with_static_t(T, [&](auto tt) { rows_avx2_t<decltype(tt)::value>(x, T, K, w, n0, n1, ldy, y); });
}

__attribute__((target("avx512f"), always_inline)) inline __m512 widen16(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}

// TT > 0: T fixed at compile time so the accumulators stay in registers (cf. nf4_gemv.cpp); TT = 0: run-time T.
// One weight row at a time, also for T = 1: a single sequential stream. (A T = 1 kernel that read four rows at once
// to share each x load ran at 5-7 GB/s against this one's 19-20, 1 thread, the 151,669 × 512 head, 2026-12-06: the
// interleaved row streams defeat the hardware prefetcher.)
template <int TT>
__attribute__((target("avx512f"))) void rows_avx512_t(const float* x, int64_t T_, int64_t K,
                                                      const q8::QuantizedWeight& w, int64_t n0, int64_t n1,
                                                      int64_t ldy, float* y) {
  const int64_t T = TT > 0 ? TT : T_;
  const int64_t bs = w.blocksize, nb = w.blocks_per_row();
  for (int64_t n = n0; n < n1; ++n) {
    const int8_t* row = w.q.data() + n * K;
    __m512 acc[kMaxT];
#pragma GCC unroll 16
    for (int64_t t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t k1 = std::min(K, (b + 1) * bs);
      __m512 bsum[kMaxT];
#pragma GCC unroll 16
      for (int64_t t = 0; t < T; ++t) bsum[t] = _mm512_setzero_ps();
      for (int64_t k = b * bs; k < k1; k += 16) {
        const __m512 wv = widen16(row + k);
#pragma GCC unroll 16
        for (int64_t t = 0; t < T; ++t) bsum[t] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x + t * K + k), bsum[t]);
      }
      const __m512 s = _mm512_set1_ps(w.scale[static_cast<size_t>(n * nb + b)]);
#pragma GCC unroll 16
      for (int64_t t = 0; t < T; ++t) acc[t] = _mm512_fmadd_ps(bsum[t], s, acc[t]);
    }
#pragma GCC unroll 16
    for (int64_t t = 0; t < T; ++t) y[t * ldy + n] = _mm512_reduce_add_ps(acc[t]);
  }
}

void rows_avx512(const float* x, int64_t T, int64_t K, const q8::QuantizedWeight& w, int64_t n0, int64_t n1,
                 int64_t ldy, float* y) {
  with_static_t(T, [&](auto tt) { rows_avx512_t<decltype(tt)::value>(x, T, K, w, n0, n1, ldy, y); });
}

// ---- Int8 dot (Q8Dot::Int8: AVX-512 VNNI, or AVX2) ----

// TT > 0: T fixed at compile time (accumulators in registers); TT = 0: run-time T. bs % 64 == 0, K % bs == 0.
template <int TT>
__attribute__((target("avx512f,avx512bw,avx512vnni"))) void rows_vnni_t(const XInt8& xq, int64_t T_, int64_t K,
                                                                        const q8::QuantizedWeight& w, int64_t n0,
                                                                        int64_t n1, int64_t ldy, float* y) {
  const int64_t T = TT > 0 ? TT : T_;
  const int64_t bs = w.blocksize, nb = K / bs;
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  for (int64_t n = n0; n < n1; ++n) {
    const int8_t* row = w.q.data() + n * K;
    const float* ws = w.scale.data() + n * nb;
    __m512 acc[kMaxT];
#pragma GCC unroll 16
    for (int64_t t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      __m512i isum[kMaxT];
#pragma GCC unroll 16
      for (int64_t t = 0; t < T; ++t) isum[t] = _mm512_maskz_set1_epi32(1, xq.corr[static_cast<size_t>(t * nb + b)]);
      for (int64_t k = b * bs; k < (b + 1) * bs; k += 64) {
        const __m512i wu = _mm512_xor_si512(_mm512_loadu_si512(row + k), flip);
#pragma GCC unroll 16
        for (int64_t t = 0; t < T; ++t)
          isum[t] = _mm512_dpbusd_epi32(isum[t], wu, _mm512_loadu_si512(xq.q.data() + t * K + k));
      }
#pragma GCC unroll 16
      for (int64_t t = 0; t < T; ++t)
        acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[t]),
                                 _mm512_set1_ps(ws[b] * xq.scale[static_cast<size_t>(t * nb + b)]), acc[t]);
    }
#pragma GCC unroll 16
    for (int64_t t = 0; t < T; ++t) y[t * ldy + n] = _mm512_reduce_add_ps(acc[t]);
  }
}

void rows_vnni(const XInt8& xq, int64_t T, int64_t K, const q8::QuantizedWeight& w, int64_t n0, int64_t n1,
               int64_t ldy, float* y) {
  with_static_t(T, [&](auto tt) { rows_vnni_t<decltype(tt)::value>(xq, T, K, w, n0, n1, ldy, y); });
}

// AVX2 (llama.cpp's Q8_0 · Q8_0 on AVX2): vpmaddubsw multiplies unsigned by signed bytes into pairwise int16 sums,
// so it takes |q| and xq carrying q's sign (vpsignb; q = 0 gives 0). A pair sums to at most 2 · 128 · 127 = 32,512
// < 32,767 (no saturation; codes are within ±127, -128 would still fit), and vpmaddwd by 1 widens to int32: the same
// exact integer block sums as the VNNI kernel. TT as above; bs % 64 == 0, K % bs == 0.
template <int TT>
__attribute__((target("avx2,fma"))) void rows_int8_avx2_t(const XInt8& xq, int64_t T_, int64_t K,
                                                          const q8::QuantizedWeight& w, int64_t n0, int64_t n1,
                                                          int64_t ldy, float* y) {
  const int64_t T = TT > 0 ? TT : T_;
  const int64_t bs = w.blocksize, nb = K / bs;
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t n = n0; n < n1; ++n) {
    const int8_t* row = w.q.data() + n * K;
    const float* ws = w.scale.data() + n * nb;
    __m256 acc[kMaxT];
#pragma GCC unroll 16
    for (int64_t t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      __m256i isum[kMaxT];
#pragma GCC unroll 16
      for (int64_t t = 0; t < T; ++t) isum[t] = _mm256_setzero_si256();
      for (int64_t k = b * bs; k < (b + 1) * bs; k += 32) {
        simd::prefetch_ahead(row + k);
        const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + k));
        const __m256i wabs = _mm256_sign_epi8(wv, wv);
#pragma GCC unroll 16
        for (int64_t t = 0; t < T; ++t) {
          const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq.q.data() + t * K + k));
          const __m256i pairs = _mm256_maddubs_epi16(wabs, _mm256_sign_epi8(xv, wv));
          isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(pairs, ones));
        }
      }
#pragma GCC unroll 16
      for (int64_t t = 0; t < T; ++t)
        acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]),
                                 _mm256_set1_ps(ws[b] * xq.scale[static_cast<size_t>(t * nb + b)]), acc[t]);
    }
#pragma GCC unroll 16
    for (int64_t t = 0; t < T; ++t) y[t * ldy + n] = hsum256(acc[t]);
  }
}

void rows_int8_avx2(const XInt8& xq, int64_t T, int64_t K, const q8::QuantizedWeight& w, int64_t n0, int64_t n1,
                    int64_t ldy, float* y) {
  with_static_t(T, [&](auto tt) { rows_int8_avx2_t<decltype(tt)::value>(xq, T, K, w, n0, n1, ldy, y); });
}

__attribute__((target("avx2,fma"))) void dequant_avx2(const q8::QuantizedWeight& w, int64_t n0, int64_t n1,
                                                      float* out) {
  const int64_t K = w.cols(), bs = w.blocksize, nb = w.blocks_per_row();
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t k = 0; k < K; k += 8)
      _mm256_storeu_ps(out + (n - n0) * K + k,
                       _mm256_mul_ps(widen8(w.q.data() + n * K + k), _mm256_set1_ps(w.scale[static_cast<size_t>(n * nb + k / bs)])));
}

__attribute__((target("avx512f"))) void dequant_avx512(const q8::QuantizedWeight& w, int64_t n0, int64_t n1,
                                                       float* out) {
  const int64_t K = w.cols(), bs = w.blocksize, nb = w.blocks_per_row();
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t k = 0; k < K; k += 16)
      _mm512_storeu_ps(out + (n - n0) * K + k,
                       _mm512_mul_ps(widen16(w.q.data() + n * K + k), _mm512_set1_ps(w.scale[static_cast<size_t>(n * nb + k / bs)])));
}

void check_weight(const q8::QuantizedWeight& w, const char* what) {
  GRAFT_CHECK(w.shape.size() == 2 && w.blocksize >= 1, "{}: Q8 weight {} (blocksize {}) must be 2-d", what,
              w.shape.str(), w.blocksize);
  GRAFT_CHECK(static_cast<int64_t>(w.q.size()) == w.shape.numel() &&
                  static_cast<int64_t>(w.scale.size()) == w.rows() * w.blocks_per_row(),
              "{}: Q8 weight {} holds {} codes and {} scales (re-quantize it)", what, w.shape.str(), w.q.size(),
              w.scale.size());
}

// The ISA a call runs: `isa` resolved and checked; Portable when the layout does not suit the SIMD paths.
Nf4Isa resolve(Nf4Isa isa, const q8::QuantizedWeight& w, const char* what) {
  isa = nf4_isa_resolve(isa, what);
  return w.blocksize % 16 != 0 || w.cols() % 16 != 0 ? Nf4Isa::Portable : isa;
}

Q8Dot parse_dot() {
  const char* v = std::getenv("GRAFT_Q8_DOT");
  if (!v || !*v) return Q8Dot::Int8;
  const std::string s(v);
  if (s == "int8") return Q8Dot::Int8;
  if (s == "exact") return Q8Dot::Exact;
  GRAFT_FAIL("", "GRAFT_Q8_DOT={} is not one of int8, exact", s);
}

}  // namespace

Nf4Isa int8_dot_level(Nf4Isa isa) {
  static const bool vnni = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                           __builtin_cpu_supports("avx512vnni");
  if (isa == Nf4Isa::Avx512 && vnni) return Nf4Isa::Avx512;
  if ((isa == Nf4Isa::Avx512 || isa == Nf4Isa::Avx2) && nf4_isa_supported(Nf4Isa::Avx2)) return Nf4Isa::Avx2;
  return Nf4Isa::Portable;
}

bool q8_int8_dot_supported(Nf4Isa isa) {
  if (isa == Nf4Isa::Auto) isa = nf4_isa_detect();
  return nf4_isa_supported(isa) && int8_dot_level(isa) != Nf4Isa::Portable;
}

// Not cached (one getenv per call, once per lm_head product), so a test can switch it with setenv.
Q8Dot q8_dot_detect() { return parse_dot() == Q8Dot::Int8 && q8_int8_dot_supported() ? Q8Dot::Int8 : Q8Dot::Exact; }

void q8_gemv(const float* x, int64_t T, int64_t K, const q8::QuantizedWeight& w, float* y, Nf4Isa isa, Q8Dot dot) {
  check_weight(w, "q8_gemv");
  GRAFT_CHECK(w.cols() == K, "q8_gemv: Q8 weight {} must be [N, {}]", w.shape.str(), K);
  const Nf4Isa level = resolve(isa, w, "q8_gemv");
  const int64_t N = w.rows();
  quant_head_gemv(
      "q8_gemv", x, T, K, N, y, level, isa, dot, w.blocksize % 64 == 0 && K % w.blocksize == 0, w.blocksize,
      /*offset=*/128,
      [&](Nf4Isa int8, const XInt8& xq, int64_t n0, int64_t n1) {
        if (int8 == Nf4Isa::Avx512) rows_vnni(xq, T, K, w, n0, n1, N, y);
        else rows_int8_avx2(xq, T, K, w, n0, n1, N, y);
      },
      [&](int64_t n0, int64_t n1) {
        switch (level) {
          case Nf4Isa::Avx512: rows_avx512(x, T, K, w, n0, n1, N, y); break;
          case Nf4Isa::Avx2: rows_avx2(x, T, K, w, n0, n1, N, y); break;
          default: rows_portable(x, T, K, w, n0, n1, N, y); break;
        }
      });
}

void q8_dequant_rows(const q8::QuantizedWeight& w, int64_t n0, int64_t n1, float* out, Nf4Isa isa) {
  check_weight(w, "q8_dequant_rows");
  GRAFT_CHECK(n0 >= 0 && n0 <= n1 && n1 <= w.rows(), "q8_dequant_rows: rows [{}, {}) of Q8 weight {}", n0, n1,
              w.shape.str());
  isa = resolve(isa, w, "q8_dequant_rows");
  if (isa == Nf4Isa::Avx512) dequant_avx512(w, n0, n1, out);
  else if (isa == Nf4Isa::Avx2) dequant_avx2(w, n0, n1, out);
  else q8::dequantize_rows(w, n0, n1, out);
}

}  // namespace graft::cpu
