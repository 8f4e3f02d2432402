// Q6 × f32 matmul with the 6-bit codes unpacked in registers (AVX-512 with VNNI, AVX2+FMA, portable); the weight
// layout is in graft/quant/q6.hpp (48 bytes a block of 64: the low nibbles as 32 bytes, the high two bits as 16).
// Each block is summed unscaled, then multiplied by its scale once: y = Σ_b scale_b · Σ_{k in b} q_k · x_k.
//
// Unpacking 64 codes u = q + 32 (unsigned, [1, 63]):
// - AVX-512: the 32 low-nibble bytes broadcast to both halves of a zmm and shifted right by 0 (codes 0..31) or 4
//   (codes 32..63) per 16-bit lane; the 16 high-bit bytes broadcast to the four 128-bit lanes and rotated left by
//   4, 2, 0 and 30 bits per lane, which lands the two bits of quarter j (at bits 2j..2j+1 of each byte) at bits 4..5
//   of the same byte; then u = (lo & 0x0F) | (hi & 0x30): five instructions for 64 codes.
// - AVX2: the same per 32 codes (shift by 4, per-dword shifts of the broadcast high bytes).
// The Int8 kernels feed u (not q) to vpdpbusd / vpmaddubsw, which want one unsigned operand, and take 32 · Σ xq back
// out per block (x_int8.hpp).
#include "avx512_header_warnings.hpp"  // first: before <immintrin.h>
#include "graft/cpu/q6_gemv.hpp"

#include <immintrin.h>

#include <algorithm>

#include "graft/error.hpp"
#include "quant_head_gemv.hpp"
#include "simd_reduce.hpp"
#include "static_rows.hpp"
#include "x_int8.hpp"

namespace graft::cpu {
namespace {

constexpr int64_t kMaxT = kQuantHeadMaxT;
constexpr int64_t kB = q6::kBlock, kBB = q6::kBlockBytes;

// Any K (a row's last block padded with zero codes).
void rows_portable(const float* x, int64_t T, int64_t K, const q6::QuantizedWeight& w, int64_t n0, int64_t n1,
                   int64_t ldy, float* y) {
  const int64_t nb = w.blocks_per_row();
  for (int64_t n = n0; n < n1; ++n) {
    float acc[kMaxT] = {};
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t k0 = b * kB, k1 = std::min(K, k0 + kB);
      float bsum[kMaxT] = {};
      for (int64_t k = k0; k < k1; ++k) {
        const float v = static_cast<float>(q6::code(w, n, k));
        for (int64_t t = 0; t < T; ++t) bsum[t] += v * x[t * K + k];
      }
      const float s = w.scale[static_cast<size_t>(n * nb + b)];
      for (int64_t t = 0; t < T; ++t) acc[t] += bsum[t] * s;
    }
    for (int64_t t = 0; t < T; ++t) y[t * ldy + n] = acc[t];
  }
}

// ---- AVX-512 ----

// The 64 unsigned codes u of a block, in order.
__attribute__((target("avx512f,avx512bw"), always_inline)) inline __m512i unpack64(const uint8_t* blk) {
  const __m512i lo_shift = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(4), 1);
  const __m512i hi_rot = _mm512_set_epi32(30, 30, 30, 30, 0, 0, 0, 0, 2, 2, 2, 2, 4, 4, 4, 4);
  const __m512i lo = _mm512_srlv_epi16(
      _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk))), lo_shift);
  const __m512i hi = _mm512_and_si512(
      _mm512_rolv_epi32(_mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 32))), hi_rot),
      _mm512_set1_epi8(0x30));
  return _mm512_ternarylogic_epi32(lo, _mm512_set1_epi8(0x0F), hi, 0xEA);  // (lo & 0x0F) | hi
}

// The signed codes q = u - 32 of 16 weights (quarter j of a block) as f32.
__attribute__((target("avx512f,avx512bw"), always_inline)) inline __m512 quarter_f32(__m512i q, int j) {
  __m128i part;
  switch (j) {
    case 0: part = _mm512_castsi512_si128(q); break;
    case 1: part = _mm512_extracti32x4_epi32(q, 1); break;
    case 2: part = _mm512_extracti32x4_epi32(q, 2); break;
    default: part = _mm512_extracti32x4_epi32(q, 3); break;
  }
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(part));
}

// Exact: TT > 0 fixes T at compile time (accumulators in registers); TT = 0: run-time T. K % 64 == 0.
template <int TT>
__attribute__((target("avx512f,avx512bw"))) void rows_avx512_t(const float* x, int64_t T_, int64_t K,
                                                                const q6::QuantizedWeight& w, int64_t n0, int64_t n1,
                                                                int64_t ldy, float* y) {
  const int64_t T = TT > 0 ? TT : T_;
  const int64_t nb = K / kB;
  for (int64_t n = n0; n < n1; ++n) {
    const float* ws = w.scale.data() + n * nb;
    __m512 acc[kMaxT];
#pragma GCC unroll 16
    for (int64_t t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      const __m512i q = _mm512_sub_epi8(unpack64(w.block(n, b)), _mm512_set1_epi8(32));
      __m512 bsum[kMaxT];
#pragma GCC unroll 16
      for (int64_t t = 0; t < T; ++t) bsum[t] = _mm512_setzero_ps();
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {
        const __m512 wv = quarter_f32(q, j);
#pragma GCC unroll 16
        for (int64_t t = 0; t < T; ++t)
          bsum[t] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x + t * K + b * kB + 16 * j), bsum[t]);
      }
      const __m512 s = _mm512_set1_ps(ws[b]);
#pragma GCC unroll 16
      for (int64_t t = 0; t < T; ++t) acc[t] = _mm512_fmadd_ps(bsum[t], s, acc[t]);
    }
#pragma GCC unroll 16
    for (int64_t t = 0; t < T; ++t) y[t * ldy + n] = _mm512_reduce_add_ps(acc[t]);
  }
}

// Int8 (VNNI): one vpdpbusd a block and row of x. TT as above; K % 64 == 0. The weight stream is prefetched
// kVnniPrefetch bytes ahead: 1 thread, the 151,936 x 512 head at T = 1 (a standalone copy of this loop, 2 MiB pages,
// 2026-12-07) 2.68-2.80 ms at 8 KiB, 2.69-2.92 at 4 KiB, 2.83-2.88 without.
constexpr int64_t kVnniPrefetch = 8192;
template <int TT>
__attribute__((target("avx512f,avx512bw,avx512vnni"))) void rows_vnni_t(const XInt8& xq, int64_t T_, int64_t K,
                                                                        const q6::QuantizedWeight& w, int64_t n0,
                                                                        int64_t n1, int64_t ldy, float* y) {
  const int64_t T = TT > 0 ? TT : T_;
  const int64_t nb = K / kB;
  for (int64_t n = n0; n < n1; ++n) {
    const float* ws = w.scale.data() + n * nb;
    const uint8_t* row = w.block(n, 0);
    __m512 acc[kMaxT];
#pragma GCC unroll 16
    for (int64_t t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      _mm_prefetch(reinterpret_cast<const char*>(row + b * kBB) + kVnniPrefetch, _MM_HINT_T0);
      const __m512i u = unpack64(row + b * kBB);
#pragma GCC unroll 16
      for (int64_t t = 0; t < T; ++t) {
        const size_t tb = static_cast<size_t>(t * nb + b);
        const __m512i isum = _mm512_dpbusd_epi32(_mm512_maskz_set1_epi32(1, xq.corr[tb]), u,
                                                 _mm512_loadu_si512(xq.q.data() + t * K + b * kB));
        acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(ws[b] * xq.scale[tb]), acc[t]);
      }
    }
#pragma GCC unroll 16
    for (int64_t t = 0; t < T; ++t) y[t * ldy + n] = _mm512_reduce_add_ps(acc[t]);
  }
}

__attribute__((target("avx512f,avx512bw"))) void dequant_avx512(const q6::QuantizedWeight& w, int64_t n0, int64_t n1,
                                                                 float* out) {
  const int64_t K = w.cols(), nb = K / kB;
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t b = 0; b < nb; ++b) {
      const __m512i q = _mm512_sub_epi8(unpack64(w.block(n, b)), _mm512_set1_epi8(32));
      const __m512 s = _mm512_set1_ps(w.scale[static_cast<size_t>(n * nb + b)]);
      float* o = out + (n - n0) * K + b * kB;
      for (int j = 0; j < 4; ++j) _mm512_storeu_ps(o + 16 * j, _mm512_mul_ps(quarter_f32(q, j), s));
    }
}

// ---- AVX2 ----

// The 64 unsigned codes of a block as two halves: a = codes 0..31, b = codes 32..63.
__attribute__((target("avx2"), always_inline)) inline void unpack32x2(const uint8_t* blk, __m256i& a, __m256i& b) {
  const __m256i m0f = _mm256_set1_epi8(0x0F), m30 = _mm256_set1_epi8(0x30);
  const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk));
  const __m256i hi = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 32)));
  // Codes 0..15 take bits 0..1 of the high bytes (<< 4), 16..31 bits 2..3 (<< 2), 32..47 bits 4..5, 48..63 bits 6..7
  // (>> 2); a dword shift by at most 4 keeps bits 4..5 of each byte within that byte.
  const __m256i ha = _mm256_and_si256(_mm256_sllv_epi32(hi, _mm256_set_epi32(2, 2, 2, 2, 4, 4, 4, 4)), m30);
  const __m256i hb = _mm256_and_si256(_mm256_srlv_epi32(hi, _mm256_set_epi32(2, 2, 2, 2, 0, 0, 0, 0)), m30);
  a = _mm256_or_si256(_mm256_and_si256(lo, m0f), ha);
  b = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(lo, 4), m0f), hb);
}

__attribute__((target("avx2,fma"), always_inline)) inline __m256 eighth_f32(__m256i q, int j) {
  const __m128i half = j < 2 ? _mm256_castsi256_si128(q) : _mm256_extracti128_si256(q, 1);
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(j % 2 == 0 ? half : _mm_srli_si128(half, 8)));
}

// Exact: TT as above; K % 64 == 0.
template <int TT>
__attribute__((target("avx2,fma"))) void rows_avx2_t(const float* x, int64_t T_, int64_t K,
                                                     const q6::QuantizedWeight& w, int64_t n0, int64_t n1,
                                                     int64_t ldy, float* y) {
  const int64_t T = TT > 0 ? TT : T_;
  const int64_t nb = K / kB;
  const __m256i off = _mm256_set1_epi8(32);
  for (int64_t n = n0; n < n1; ++n) {
    const float* ws = w.scale.data() + n * nb;
    __m256 acc[kMaxT];
#pragma GCC unroll 16
    for (int64_t t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      __m256i ua, ub;
      unpack32x2(w.block(n, b), ua, ub);
      const __m256i qh[2] = {_mm256_sub_epi8(ua, off), _mm256_sub_epi8(ub, off)};
      __m256 bsum[kMaxT];
#pragma GCC unroll 16
      for (int64_t t = 0; t < T; ++t) bsum[t] = _mm256_setzero_ps();
#pragma GCC unroll 8
      for (int j = 0; j < 8; ++j) {
        const __m256 wv = eighth_f32(qh[j / 4], j % 4);
#pragma GCC unroll 16
        for (int64_t t = 0; t < T; ++t)
          bsum[t] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + t * K + b * kB + 8 * j), bsum[t]);
      }
      const __m256 s = _mm256_set1_ps(ws[b]);
#pragma GCC unroll 16
      for (int64_t t = 0; t < T; ++t) acc[t] = _mm256_fmadd_ps(bsum[t], s, acc[t]);
    }
#pragma GCC unroll 16
    for (int64_t t = 0; t < T; ++t) y[t * ldy + n] = simd::hsum256(acc[t]);
  }
}

// Int8 (AVX2): vpmaddubsw of the unsigned codes u (<= 63) by xq into pairwise int16 sums (at most 2 · 63 · 127 =
// 16,002: no saturation), vpmaddwd by 1 to int32. TT as above; K % 64 == 0.
template <int TT>
__attribute__((target("avx2,fma"))) void rows_int8_avx2_t(const XInt8& xq, int64_t T_, int64_t K,
                                                          const q6::QuantizedWeight& w, int64_t n0, int64_t n1,
                                                          int64_t ldy, float* y) {
  const int64_t T = TT > 0 ? TT : T_;
  const int64_t nb = K / kB;
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t n = n0; n < n1; ++n) {
    const float* ws = w.scale.data() + n * nb;
    const uint8_t* row = w.block(n, 0);
    __m256 acc[kMaxT];
#pragma GCC unroll 16
    for (int64_t t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      simd::prefetch_ahead(row + b * kBB);
      __m256i ua, ub;
      unpack32x2(row + b * kBB, ua, ub);
#pragma GCC unroll 16
      for (int64_t t = 0; t < T; ++t) {
        const size_t tb = static_cast<size_t>(t * nb + b);
        const int8_t* xb = xq.q.data() + t * K + b * kB;
        const __m256i pa = _mm256_maddubs_epi16(ua, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb)));
        const __m256i pb = _mm256_maddubs_epi16(ub, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb + 32)));
        __m256i isum = _mm256_madd_epi16(_mm256_add_epi16(pa, pb), ones);  // |pa + pb| <= 32,004: fits int16
        isum = _mm256_add_epi32(isum, _mm256_setr_epi32(xq.corr[tb], 0, 0, 0, 0, 0, 0, 0));
        acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(ws[b] * xq.scale[tb]), acc[t]);
      }
    }
#pragma GCC unroll 16
    for (int64_t t = 0; t < T; ++t) y[t * ldy + n] = simd::hsum256(acc[t]);
  }
}

__attribute__((target("avx2,fma"))) void dequant_avx2(const q6::QuantizedWeight& w, int64_t n0, int64_t n1,
                                                      float* out) {
  const int64_t K = w.cols(), nb = K / kB;
  const __m256i off = _mm256_set1_epi8(32);
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t b = 0; b < nb; ++b) {
      __m256i ua, ub;
      unpack32x2(w.block(n, b), ua, ub);
      const __m256i qh[2] = {_mm256_sub_epi8(ua, off), _mm256_sub_epi8(ub, off)};
      const __m256 s = _mm256_set1_ps(w.scale[static_cast<size_t>(n * nb + b)]);
      float* o = out + (n - n0) * K + b * kB;
      for (int j = 0; j < 8; ++j) _mm256_storeu_ps(o + 8 * j, _mm256_mul_ps(eighth_f32(qh[j / 4], j % 4), s));
    }
}

void check_weight(const q6::QuantizedWeight& w, const char* what) {
  GRAFT_CHECK(w.shape.size() == 2, "{}: Q6 weight {} must be 2-d", what, w.shape.str());
  GRAFT_CHECK(static_cast<int64_t>(w.packed.size()) == w.rows() * w.blocks_per_row() * kBB &&
                  static_cast<int64_t>(w.scale.size()) == w.rows() * w.blocks_per_row(),
              "{}: Q6 weight {} holds {} packed bytes and {} scales (re-quantize it)", what, w.shape.str(),
              w.packed.size(), w.scale.size());
}

// The ISA a call runs: `isa` resolved and checked; Portable when K is not a multiple of 64.
Nf4Isa resolve(Nf4Isa isa, const q6::QuantizedWeight& w, const char* what) {
  isa = nf4_isa_resolve(isa, what);
  return w.cols() % kB != 0 ? Nf4Isa::Portable : isa;
}

}  // namespace

void q6_gemv(const float* x, int64_t T, int64_t K, const q6::QuantizedWeight& w, float* y, Nf4Isa isa, Q8Dot dot) {
  check_weight(w, "q6_gemv");
  GRAFT_CHECK(w.cols() == K, "q6_gemv: Q6 weight {} must be [N, {}]", w.shape.str(), K);
  const Nf4Isa level = resolve(isa, w, "q6_gemv");
  const int64_t N = w.rows();
  quant_head_gemv(
      "q6_gemv", x, T, K, N, y, level, isa, dot, level != Nf4Isa::Portable, kB, /*offset=*/32,
      [&](Nf4Isa int8, const XInt8& xq, int64_t n0, int64_t n1) {
        if (int8 == Nf4Isa::Avx512)
          with_static_t(T, [&](auto tt) { rows_vnni_t<decltype(tt)::value>(xq, T, K, w, n0, n1, N, y); });
        else
          with_static_t(T, [&](auto tt) { rows_int8_avx2_t<decltype(tt)::value>(xq, T, K, w, n0, n1, N, y); });
      },
      [&](int64_t n0, int64_t n1) {
        switch (level) {
          case Nf4Isa::Avx512:
            with_static_t(T, [&](auto tt) { rows_avx512_t<decltype(tt)::value>(x, T, K, w, n0, n1, N, y); });
            break;
          case Nf4Isa::Avx2:
            with_static_t(T, [&](auto tt) { rows_avx2_t<decltype(tt)::value>(x, T, K, w, n0, n1, N, y); });
            break;
          default: rows_portable(x, T, K, w, n0, n1, N, y); break;
        }
      });
}

void q6_dequant_rows(const q6::QuantizedWeight& w, int64_t n0, int64_t n1, float* out, Nf4Isa isa) {
  check_weight(w, "q6_dequant_rows");
  GRAFT_CHECK(n0 >= 0 && n0 <= n1 && n1 <= w.rows(), "q6_dequant_rows: rows [{}, {}) of Q6 weight {}", n0, n1,
              w.shape.str());
  isa = resolve(isa, w, "q6_dequant_rows");
  if (isa == Nf4Isa::Avx512) dequant_avx512(w, n0, n1, out);
  else if (isa == Nf4Isa::Avx2) dequant_avx2(w, n0, n1, out);
  else q6::dequantize_rows(w, n0, n1, out);
}

}  // namespace graft::cpu
