// NF4 × f32 matmul with in-register decoding of the 4-bit codes (AVX-512, AVX2+FMA, portable).
// Byte j of a row holds elements 2j (high nibble) and 2j+1 (low nibble), so x is split once per call
// into its even and odd elements; each byte then multiplies one even and one odd x value. Each block
// of `blocksize` weights is summed unscaled and scaled by its absmax once; the absmax of a block is decoded
// from the (double-quantized) state when the block is reached, so a call allocates no absmax vector.
// nf4_dequant_rows writes the same decode out as f32 rows: the panels of the prefill GEMM (linear_nf4, T > 16).
#include "avx512_header_warnings.hpp"  // first: before <immintrin.h>
#include "graft/cpu/nf4_gemv.hpp"

#include <Eigen/Core>
#include <immintrin.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "graft/parallel.hpp"
#include "parallel_for.hpp"
#include "graft/tensor.hpp"
#include "simd_reduce.hpp"
#include "static_rows.hpp"

namespace graft::cpu {
namespace {

constexpr int64_t kMaxT = 16;
using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Per-block absmax of one weight, decoded on demand; equal bit for bit to nf4::block_absmax(w)[b].
class Absmax {
 public:
  explicit Absmax(const nf4::QuantizedWeight& w)
      : plain_(w.double_quant ? nullptr : w.absmax.data()),
        q_(w.absmax_q.data()),
        nested_(w.nested_absmax.data()),
        dmap_(nf4::dynamic_map_signed().data()),
        nbs_(w.nested_blocksize),
        offset_(w.nested_offset) {
    if (nbs_ > 0 && (nbs_ & (nbs_ - 1)) == 0) nshift_ = __builtin_ctzll(static_cast<unsigned long long>(nbs_));
    const int64_t nb = w.num_blocks();
    if (!w.double_quant) {
      GRAFT_CHECK(static_cast<int64_t>(w.absmax.size()) == nb, "NF4 weight {}: {} absmax values for {} blocks",
                  w.shape.str(), w.absmax.size(), nb);
    } else {
      GRAFT_CHECK(static_cast<int64_t>(w.absmax_q.size()) == nb &&
                      static_cast<int64_t>(w.nested_absmax.size()) == (nb + nbs_ - 1) / nbs_,
                  "NF4 weight {}: {} absmax codes / {} nested values for {} blocks of {} (re-quantize the weight)",
                  w.shape.str(), w.absmax_q.size(), w.nested_absmax.size(), nb, nbs_);
    }
  }
  float operator()(int64_t b) const {
    if (plain_) return plain_[b];
    // nested blocksize 256 (bitsandbytes): a shift, not a 64-bit division (~40 cycles) per block.
    float scaled = dmap_[q_[b]] * nested_[nshift_ >= 0 ? b >> nshift_ : b / nbs_];
    // bitsandbytes rounds the product before adding the offset (nf4::decode_absmax): keep the compiler from
    // contracting the two into one FMA, which would change the last bit of every weight in the block.
    asm("" : "+x"(scaled));
    return scaled + offset_;
  }

 private:
  const float* plain_;
  const uint8_t* q_;
  const float* nested_;
  const float* dmap_;
  int64_t nbs_;
  int nshift_ = -1;  // log2(nbs_) when a power of two
  float offset_;
};

// Generic layout (any K, any blocksize; blocks may straddle rows): element-wise decode, still no dequantized
// buffer. The block index advances with the element index (no division per element).
void rows_portable(const float* x, int64_t T, int64_t K, const nf4::QuantizedWeight& w, const Absmax& absmax,
                   int64_t n0, int64_t n1, int64_t ldy, float* y) {
  const auto& code = nf4::code();
  const uint8_t* p = w.packed.data();
  const int64_t bs = w.blocksize;
  for (int64_t n = n0; n < n1; ++n) {
    float acc[kMaxT] = {};
    int64_t e = n * K, b = e / bs, next = (b + 1) * bs;
    float s = absmax(b);
    for (int64_t k = 0; k < K; ++k, ++e) {
      if (e == next) {
        s = absmax(++b);
        next += bs;
      }
      const uint8_t byte = p[e >> 1];
      const float v = code[(e & 1) ? (byte & 0x0f) : (byte >> 4)] * s;
      for (int64_t t = 0; t < T; ++t) acc[t] += v * x[t * K + k];
    }
    for (int64_t t = 0; t < T; ++t) y[t * ldy + n] = acc[t];
  }
}

using simd::hsum256;

// The 16 NF4 values looked up by 8 codes (bits 0..3 of each 32-bit lane; higher bits are ignored: vpermps reads bits
// 0..2, the blend bit 3).
struct Lut256 {
  __m256 t0, t1;
  __attribute__((target("avx2,fma"))) Lut256()
      : t0(_mm256_loadu_ps(nf4::code().data())), t1(_mm256_loadu_ps(nf4::code().data() + 8)) {}
  __attribute__((target("avx2,fma"))) __m256 operator()(__m256i idx) const {
    const __m256 lo = _mm256_permutevar8x32_ps(t0, idx), hi = _mm256_permutevar8x32_ps(t1, idx);
    return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
  }
};

// One weight block's sums per row of x for the AVX2 decode kernels below (TT as for rows_avx512_t). With few rows
// each row keeps several partial sums, so the FMAs of a step do not form one dependency chain; fold() adds them and
// accumulates the block's absmax times their sum into the row's accumulator. (On Zen 3 the decode of the codes, not
// this chain, bounds the kernels: the vpermps kernel measured the same with one chain and with four.)
template <int TT>
struct BlockSums256 {
  static constexpr int A = TT == 1 ? 4 : (TT == 2 || TT == 3) ? 2 : 1;
  __m256 s[A][kMaxT];
  __attribute__((target("avx2,fma"), always_inline)) inline void zero(int64_t T) {
#pragma GCC unroll 4
    for (int a = 0; a < A; ++a)
#pragma GCC unroll 16
      for (int64_t t = 0; t < T; ++t) s[a][t] = _mm256_setzero_ps();
  }
  // Weight vector v of a step times x for row t.
  __attribute__((target("avx2,fma"), always_inline)) inline void add(int v, int64_t t, __m256 w, __m256 x) {
    s[v % A][t] = _mm256_fmadd_ps(w, x, s[v % A][t]);
  }
  __attribute__((target("avx2,fma"), always_inline)) inline void fold(int64_t T, float absmax, __m256* acc) const {
    const __m256 scale = _mm256_set1_ps(absmax);
#pragma GCC unroll 16
    for (int64_t t = 0; t < T; ++t) {
      __m256 sum = s[0][t];
#pragma GCC unroll 4
      for (int a = 1; a < A; ++a) sum = _mm256_add_ps(sum, s[a][t]);
      acc[t] = _mm256_fmadd_ps(sum, scale, acc[t]);
    }
  }
};

// xe/xo: [T, K/2] even / odd elements of x. Requires K % bs == 0, bs % 32 == 0. 16 bytes (32 weights, four vectors)
// per step.
template <int TT>
__attribute__((target("avx2,fma"))) void rows_avx2_t(const float* xe, const float* xo, int64_t T_, int64_t K,
                                                     const nf4::QuantizedWeight& w, const Absmax& absmax, int64_t n0,
                                                     int64_t n1, int64_t ldy, float* y) {
  const int64_t T = TT > 0 ? TT : T_;
  const Lut256 lut;
  const int64_t bs = w.blocksize, half = K / 2, bpr = K / bs;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = w.packed.data() + n * half;
    __m256 acc[kMaxT];
#pragma GCC unroll 16
    for (int64_t t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < bpr; ++b) {
      BlockSums256<TT> bsum;
      bsum.zero(T);
      for (int64_t j = b * bs / 2; j < (b + 1) * bs / 2; j += 16) {
        const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + j));
        const __m256i lo = _mm256_cvtepu8_epi32(raw), hi = _mm256_cvtepu8_epi32(_mm_unpackhi_epi64(raw, raw));
        // Byte i holds elements 2i (high nibble: xe) and 2i + 1 (low nibble: xo).
        const __m256 wv[4] = {lut(_mm256_srli_epi32(lo, 4)), lut(lo), lut(_mm256_srli_epi32(hi, 4)), lut(hi)};
        const float* xv[4] = {xe + j, xo + j, xe + j + 8, xo + j + 8};
#pragma GCC unroll 4
        for (int v = 0; v < 4; ++v)
#pragma GCC unroll 16
          for (int64_t t = 0; t < T; ++t) bsum.add(v, t, wv[v], _mm256_loadu_ps(xv[v] + t * half));
      }
      bsum.fold(T, absmax(n * bpr + b), acc);
    }
#pragma GCC unroll 16
    for (int64_t t = 0; t < T; ++t) y[t * ldy + n] = hsum256(acc[t]);
  }
}

// AVX2 with blocksize % 64 == 0: the NF4 values built with vpshufb instead of vpermps (two of which per 8 weights
// bounded the kernel above: vpermps is slow on Zen 2/3). Each of the 16 codes' f32 bit pattern is split into four
// byte planes; one vpshufb per plane looks up 32 codes at once and two levels of in-lane unpacks put the bytes back
// together: 12 single-cycle shuffles per 32 weights. The unpacks leave vector m (0..3) of a 32-code group holding codes
// {4m..4m+3, 16+4m..16+4m+3}, so x is permuted to match once per call (xp below, permute_x_shuf). One step is 32 bytes:
// its high nibbles (even elements) and low nibbles (odd elements), 64 weights.
struct Planes {
  __m256i p[4];
  __attribute__((target("avx2,fma"))) Planes() {
    alignas(16) uint8_t b[4][16];
    for (int c = 0; c < 16; ++c) {
      uint32_t bits;
      std::memcpy(&bits, &nf4::code()[static_cast<size_t>(c)], sizeof(bits));
      for (int i = 0; i < 4; ++i) b[i][c] = static_cast<uint8_t>(bits >> (8 * i));
    }
    for (int i = 0; i < 4; ++i)
      p[i] = _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(b[i])));
  }
  // The 32 codes of `idx` (one per byte, 0..15) as four vectors of f32 in the order described above.
  __attribute__((target("avx2,fma"), always_inline)) inline void decode(__m256i idx, __m256 out[4]) const {
    const __m256i b0 = _mm256_shuffle_epi8(p[0], idx), b1 = _mm256_shuffle_epi8(p[1], idx);
    const __m256i b2 = _mm256_shuffle_epi8(p[2], idx), b3 = _mm256_shuffle_epi8(p[3], idx);
    const __m256i l01 = _mm256_unpacklo_epi8(b0, b1), h01 = _mm256_unpackhi_epi8(b0, b1);
    const __m256i l23 = _mm256_unpacklo_epi8(b2, b3), h23 = _mm256_unpackhi_epi8(b2, b3);
    out[0] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(l01, l23));
    out[1] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(l01, l23));
    out[2] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(h01, h23));
    out[3] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(h01, h23));
  }
};

// xp[t * K + 64 g + 8 v + l] for 64-element group g: v = 0..3 the even elements, 4..7 the odd ones, of code index
// i = 4 (v % 4) + l (l < 4) or 16 + 4 (v % 4) + l - 4 (l >= 4); even element 64 g + 2 i, odd 64 g + 2 i + 1.
void permute_x_shuf(const float* x, int64_t T, int64_t K, float* xp) {
  for (int64_t t = 0; t < T; ++t)
    for (int64_t g = 0; g < K / 64; ++g) {
      const float* in = x + t * K + 64 * g;
      float* out = xp + t * K + 64 * g;
      for (int v = 0; v < 8; ++v)
        for (int l = 0; l < 8; ++l) {
          const int m = v % 4, i = l < 4 ? 4 * m + l : 16 + 4 * m + (l - 4);
          out[8 * v + l] = in[2 * i + (v >= 4 ? 1 : 0)];
        }
    }
}

// Requires K % bs == 0, bs % 64 == 0. TT and the block sums as in rows_avx2_t.
template <int TT>
__attribute__((target("avx2,fma"))) void rows_avx2_shuf_t(const float* xp, int64_t T_, int64_t K,
                                                          const nf4::QuantizedWeight& w, const Absmax& absmax,
                                                          int64_t n0, int64_t n1, int64_t ldy, float* y) {
  const int64_t T = TT > 0 ? TT : T_;
  const Planes planes;
  const __m256i m4 = _mm256_set1_epi8(0x0f);
  const int64_t bs = w.blocksize, half = K / 2, bpr = K / bs;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = w.packed.data() + n * half;
    __m256 acc[kMaxT];
#pragma GCC unroll 16
    for (int64_t t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < bpr; ++b) {
      BlockSums256<TT> bsum;
      bsum.zero(T);
      for (int64_t j = b * bs / 2; j < (b + 1) * bs / 2; j += 32) {
        simd::prefetch_ahead(row + j);
        const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + j));
        __m256 wv[8];
        planes.decode(_mm256_and_si256(_mm256_srli_epi16(raw, 4), m4), wv);  // high nibbles: even elements
        planes.decode(_mm256_and_si256(raw, m4), wv + 4);                    // low nibbles: odd elements
        const float* xs = xp + 2 * j;                                         // element 2j: this step's group
#pragma GCC unroll 8
        for (int v = 0; v < 8; ++v)
#pragma GCC unroll 16
          for (int64_t t = 0; t < T; ++t) bsum.add(v, t, wv[v], _mm256_loadu_ps(xs + t * K + 8 * v));
      }
      bsum.fold(T, absmax(n * bpr + b), acc);
    }
#pragma GCC unroll 16
    for (int64_t t = 0; t < T; ++t) y[t * ldy + n] = hsum256(acc[t]);
  }
}

void rows_avx2_shuf(const float* xp, int64_t T, int64_t K, const nf4::QuantizedWeight& w, const Absmax& absmax,
                    int64_t n0, int64_t n1, int64_t ldy, float* y) {
  with_static_t(T, [&](auto tt) { rows_avx2_shuf_t<decltype(tt)::value>(xp, T, K, w, absmax, n0, n1, ldy, y); });
}

void rows_avx2(const float* xe, const float* xo, int64_t T, int64_t K, const nf4::QuantizedWeight& w,
               const Absmax& absmax, int64_t n0, int64_t n1, int64_t ldy, float* y) {
  with_static_t(T, [&](auto tt) { rows_avx2_t<decltype(tt)::value>(xe, xo, T, K, w, absmax, n0, n1, ldy, y); });
}

// TT > 0: T is the compile-time TT, so the per-row accumulators live in registers (with a run-time T, GCC keeps
// the arrays on the stack and every FMA goes through memory). TT = 0: run-time T.
template <int TT>
__attribute__((target("avx512f"))) void rows_avx512_t(const float* xe, const float* xo, int64_t T_, int64_t K,
                                                      const nf4::QuantizedWeight& w, const Absmax& absmax, int64_t n0,
                                                      int64_t n1, int64_t ldy, float* y) {
  const int64_t T = TT > 0 ? TT : T_;
  const __m512 table = _mm512_loadu_ps(nf4::code().data());
  const __m512i m4 = _mm512_set1_epi32(0x0f);
  const int64_t bs = w.blocksize, half = K / 2, bpr = K / bs;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = w.packed.data() + n * half;
    __m512 acc[kMaxT];
#pragma GCC unroll 16
    for (int64_t t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
    for (int64_t b = 0; b < bpr; ++b) {
      __m512 bsum[kMaxT];
#pragma GCC unroll 16
      for (int64_t t = 0; t < T; ++t) bsum[t] = _mm512_setzero_ps();
      for (int64_t j = b * bs / 2; j < (b + 1) * bs / 2; j += 16) {
        const __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + j)));
        const __m512 we = _mm512_permutexvar_ps(_mm512_srli_epi32(bytes, 4), table);
        const __m512 wo = _mm512_permutexvar_ps(_mm512_and_si512(bytes, m4), table);
#pragma GCC unroll 16
        for (int64_t t = 0; t < T; ++t) {
          bsum[t] = _mm512_fmadd_ps(we, _mm512_loadu_ps(xe + t * half + j), bsum[t]);
          bsum[t] = _mm512_fmadd_ps(wo, _mm512_loadu_ps(xo + t * half + j), bsum[t]);
        }
      }
      const __m512 s = _mm512_set1_ps(absmax(n * bpr + b));
#pragma GCC unroll 16
      for (int64_t t = 0; t < T; ++t) acc[t] = _mm512_fmadd_ps(bsum[t], s, acc[t]);
    }
#pragma GCC unroll 16
    for (int64_t t = 0; t < T; ++t) y[t * ldy + n] = _mm512_reduce_add_ps(acc[t]);
  }
}

void rows_avx512(const float* xe, const float* xo, int64_t T, int64_t K, const nf4::QuantizedWeight& w,
                 const Absmax& absmax, int64_t n0, int64_t n1, int64_t ldy, float* y) {
  with_static_t(T, [&](auto tt) { rows_avx512_t<decltype(tt)::value>(xe, xo, T, K, w, absmax, n0, n1, ldy, y); });
}

// Absmax of blocks b (lanes 0..7) and b + 1 (lanes 8..15).
__attribute__((target("avx512f"), always_inline)) inline __m512 scale2(const Absmax& absmax, int64_t b) {
  return _mm512_mask_blend_ps(__mmask16(0xff00), _mm512_set1_ps(absmax(b)), _mm512_set1_ps(absmax(b + 1)));
}

// T == 1, blocksize 64, K % 128 == 0 (decode): four rows at a time, so each x load serves four rows and the
// eight accumulation chains hide the FMA latency. A 64-byte load holds 128 codes (two blocks); 32-bit lane i holds
// bytes 4i..4i+3 = elements 8i..8i+7. vpermps reads only the low 4 bits of each index lane, so lane >> 4s indexes
// the table with nibble s (no mask, no widening): one shift and one permute per 16 weights. Nibble s of lane i is
// element 8i + (s ^ 1) (high nibble = even element), so x is permuted to match once per call (xp, below).
__attribute__((target("avx512f"))) void gemv1_avx512(const float* xp, int64_t K, const nf4::QuantizedWeight& w,
                                                     const Absmax& absmax, int64_t n0, int64_t n1, float* y) {
  const __m512 table = _mm512_loadu_ps(nf4::code().data());
  const int64_t rb = K / 2, bpr = K / 64, chunks = K / 128;
  int64_t n = n0;
  // Named registers (not arrays) for the four rows: GCC keeps arrays of __m512 in memory here.
  for (; n + 4 <= n1; n += 4) {
    const uint8_t* r0 = w.packed.data() + n * rb;
    const uint8_t *r1 = r0 + rb, *r2 = r1 + rb, *r3 = r2 + rb;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t c = 0; c < chunks; ++c) {
      const float* xc = xp + c * 128;
      const __m512i q0 = _mm512_loadu_si512(r0 + c * 64), q1 = _mm512_loadu_si512(r1 + c * 64);
      const __m512i q2 = _mm512_loadu_si512(r2 + c * 64), q3 = _mm512_loadu_si512(r3 + c * 64);
      __m512 e0 = _mm512_setzero_ps(), e1 = e0, e2 = e0, e3 = e0, o0 = e0, o1 = e0, o2 = e0, o3 = e0;
#define GRAFT_NF4_STEP(S, A0, A1, A2, A3)                                                                 \
  {                                                                                                       \
    const __m512 xv = _mm512_loadu_ps(xc + 16 * (S));                                                     \
    A0 = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(q0, 4 * (S)), table), xv, A0);           \
    A1 = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(q1, 4 * (S)), table), xv, A1);           \
    A2 = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(q2, 4 * (S)), table), xv, A2);           \
    A3 = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(q3, 4 * (S)), table), xv, A3);           \
  }
      GRAFT_NF4_STEP(0, e0, e1, e2, e3) GRAFT_NF4_STEP(1, o0, o1, o2, o3)
      GRAFT_NF4_STEP(2, e0, e1, e2, e3) GRAFT_NF4_STEP(3, o0, o1, o2, o3)
      GRAFT_NF4_STEP(4, e0, e1, e2, e3) GRAFT_NF4_STEP(5, o0, o1, o2, o3)
      GRAFT_NF4_STEP(6, e0, e1, e2, e3) GRAFT_NF4_STEP(7, o0, o1, o2, o3)
#undef GRAFT_NF4_STEP
      const int64_t b = n * bpr + 2 * c;
      a0 = _mm512_fmadd_ps(_mm512_add_ps(e0, o0), scale2(absmax, b), a0);
      a1 = _mm512_fmadd_ps(_mm512_add_ps(e1, o1), scale2(absmax, b + bpr), a1);
      a2 = _mm512_fmadd_ps(_mm512_add_ps(e2, o2), scale2(absmax, b + 2 * bpr), a2);
      a3 = _mm512_fmadd_ps(_mm512_add_ps(e3, o3), scale2(absmax, b + 3 * bpr), a3);
    }
    y[n] = _mm512_reduce_add_ps(a0);
    y[n + 1] = _mm512_reduce_add_ps(a1);
    y[n + 2] = _mm512_reduce_add_ps(a2);
    y[n + 3] = _mm512_reduce_add_ps(a3);
  }
  for (; n < n1; ++n) {
    const uint8_t* row = w.packed.data() + n * rb;
    __m512 acc = _mm512_setzero_ps();
    for (int64_t c = 0; c < chunks; ++c) {
      const float* xc = xp + c * 128;
      const __m512i q = _mm512_loadu_si512(row + c * 64);
      __m512 sum = _mm512_setzero_ps();
      for (int s = 0; s < 8; ++s)
        sum = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(q, 4 * s), table), _mm512_loadu_ps(xc + 16 * s), sum);
      acc = _mm512_fmadd_ps(sum, scale2(absmax, n * bpr + 2 * c), acc);
    }
    y[n] = _mm512_reduce_add_ps(acc);
  }
}

// Elements [e0, e1) of dequant(w) (flat, row-major) into out[e1 - e0]: code * absmax, the product
// nf4::dequantize computes. Any alignment; the block index advances with the element index.
void dequant_portable(const nf4::QuantizedWeight& w, const Absmax& absmax, int64_t e0, int64_t e1, float* out) {
  if (e1 <= e0) return;
  const auto& code = nf4::code();
  const uint8_t* p = w.packed.data();
  const int64_t bs = w.blocksize;
  int64_t b = e0 / bs, next = (b + 1) * bs;
  float s = absmax(b);
  for (int64_t e = e0; e < e1; ++e) {
    if (e == next) {
      s = absmax(++b);
      next += bs;
    }
    const uint8_t byte = p[e >> 1];
    out[e - e0] = code[(e & 1) ? (byte & 0x0f) : (byte >> 4)] * s;
  }
}

// Whole blocks [b0, b1) into out[(b1 - b0) * bs]; bs % 32 == 0.
// The vpshufb decode (Planes) in element order: 16 bytes give 32 codes in order (byte i: elements 2i, 2i + 1), and one
// vpermd moves their dwords (four codes each) to where the decode's in-lane unpacks return them in order. bs % 32 == 0.
__attribute__((target("avx2,fma"))) void dequant_avx2(const nf4::QuantizedWeight& w, const Absmax& absmax, int64_t b0,
                                                      int64_t b1, float* out) {
  const Planes planes;
  const __m128i m4 = _mm_set1_epi8(0x0f);
  const __m256i order = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
  const int64_t bs = w.blocksize;
  const uint8_t* p = w.packed.data();
  for (int64_t b = b0; b < b1; ++b) {
    const __m256 s = _mm256_set1_ps(absmax(b));
    float* o = out + (b - b0) * bs;
    for (int64_t j = 0; j < bs / 2; j += 16) {
      const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + b * bs / 2 + j));
      const __m128i hi = _mm_and_si128(_mm_srli_epi16(v, 4), m4), lo = _mm_and_si128(v, m4);
      const __m256i codes = _mm256_set_m128i(_mm_unpackhi_epi8(hi, lo), _mm_unpacklo_epi8(hi, lo));
      __m256 f[4];
      planes.decode(_mm256_permutevar8x32_epi32(codes, order), f);
#pragma GCC unroll 4
      for (int m = 0; m < 4; ++m) _mm256_storeu_ps(o + 2 * j + 8 * m, _mm256_mul_ps(f[m], s));
    }
  }
}

__attribute__((target("avx512f"))) void dequant_avx512(const nf4::QuantizedWeight& w, const Absmax& absmax, int64_t b0,
                                                       int64_t b1, float* out) {
  const __m512 table = _mm512_loadu_ps(nf4::code().data());
  const __m512i m4 = _mm512_set1_epi32(0x0f);
  const __m512i ilo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i ihi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  const int64_t bs = w.blocksize;
  const uint8_t* p = w.packed.data();
  for (int64_t b = b0; b < b1; ++b) {
    const __m512 s = _mm512_set1_ps(absmax(b));
    float* o = out + (b - b0) * bs;
    for (int64_t j = 0; j < bs / 2; j += 16) {
      const __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + b * bs / 2 + j)));
      const __m512 we = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(bytes, 4), table), s);
      const __m512 wo = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_and_si512(bytes, m4), table), s);
      _mm512_storeu_ps(o + 2 * j, _mm512_permutex2var_ps(we, ilo, wo));
      _mm512_storeu_ps(o + 2 * j + 16, _mm512_permutex2var_ps(we, ihi, wo));
    }
  }
}

// Elements [e0, e1) of dequant(w) into out[e1 - e0]: the partial blocks at either end element-wise, the whole blocks
// between them with SIMD (needs bs % 32 == 0, else all portable).
void dequant_range(const nf4::QuantizedWeight& w, const Absmax& absmax, int64_t e0, int64_t e1, float* out,
                   Nf4Isa isa) {
  const int64_t bs = w.blocksize;
  if (isa == Nf4Isa::Portable || bs % 32 != 0 || e1 <= e0) return dequant_portable(w, absmax, e0, e1, out);
  const int64_t head = std::min(e1, (e0 + bs - 1) / bs * bs), b0 = head / bs, b1 = e1 / bs;
  dequant_portable(w, absmax, e0, head, out);
  if (b1 <= b0) return dequant_portable(w, absmax, head, e1, out + (head - e0));
  if (isa == Nf4Isa::Avx512) dequant_avx512(w, absmax, b0, b1, out + (head - e0));
  else dequant_avx2(w, absmax, b0, b1, out + (head - e0));
  dequant_portable(w, absmax, b1 * bs, e1, out + (b1 * bs - e0));
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

// The ISA a call runs: `isa` resolved and checked; Portable when the blocks are not a multiple of 32 elements.
Nf4Isa resolve(Nf4Isa isa, const nf4::QuantizedWeight& w, const char* what) {
  isa = nf4_isa_resolve(isa, what);
  return w.blocksize % 32 != 0 ? Nf4Isa::Portable : isa;
}

}  // namespace

bool nf4_isa_supported(Nf4Isa isa) {
  switch (isa) {
    case Nf4Isa::Auto:
    case Nf4Isa::Portable: return true;
    case Nf4Isa::Avx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Nf4Isa::Avx512: return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl");
  }
  return false;
}

Nf4Isa nf4_isa_resolve(Nf4Isa isa, const char* what) {
  if (isa == Nf4Isa::Auto) isa = nf4_isa_detect();
  GRAFT_CHECK(nf4_isa_supported(isa), "{}: this CPU lacks the requested ISA; use Nf4Isa::Auto", what);
  return isa;
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

float nf4_absmax_at(const nf4::QuantizedWeight& w, int64_t block) {
  GRAFT_CHECK(block >= 0 && block < w.num_blocks(), "nf4_absmax_at: block {} of {}", block, w.num_blocks());
  return Absmax(w)(block);
}

void nf4_gemv(const float* x, int64_t T, int64_t K, const nf4::QuantizedWeight& w, float* y, Nf4Isa isa) {
  GRAFT_CHECK(w.shape.size() == 2 && w.shape[1] == K, "nf4_gemv: NF4 weight {} must be [N, {}]", w.shape.str(), K);
  GRAFT_CHECK(T >= 0 && T <= kMaxT, "nf4_gemv: T = {} rows, at most {} (use linear_nf4 for more)", T, kMaxT);
  const Absmax absmax(w);
  isa = resolve(isa, w, "nf4_gemv");
  const int64_t N = w.shape[0];
  if (T == 0 || N == 0) return;
  if (K == 0) {
    std::fill(y, y + T * N, 0.0f);
    return;
  }
  if (isa != Nf4Isa::Portable && K % w.blocksize != 0) {
    // Blocks straddle rows (e.g. K = 172): SIMD-dequantized panels of 64 rows, then an f32 GEMV per panel.
    constexpr int64_t kPanel = 64;
    const int64_t panels = (N + kPanel - 1) / kPanel;
    const Eigen::Map<const RowMat> X(x, T, K);
    Eigen::Map<RowMat> Y(y, T, N);
    parallel_for(panels, graft::parallel_worth(T * N * K), [&](int64_t p) {
      thread_local std::vector<float> buf;
      const int64_t n0 = p * kPanel, rows = std::min(kPanel, N - n0);
      buf.resize(static_cast<size_t>(rows * K));
      dequant_range(w, absmax, n0 * K, (n0 + rows) * K, buf.data(), isa);
      Y.middleCols(n0, rows).noalias() = X * Eigen::Map<const RowMat>(buf.data(), rows, K).transpose();
    });
    return;
  }
  constexpr int64_t kRows = 16;
  const int64_t chunks = (N + kRows - 1) / kRows;
  if (isa == Nf4Isa::Portable) {
    parallel_for(chunks, graft::parallel_worth(T * N * K), [&](int64_t c) {
      rows_portable(x, T, K, w, absmax, c * kRows, std::min(N, (c + 1) * kRows), N, y);
    });
    return;
  }
  if (isa == Nf4Isa::Avx512 && T == 1 && w.blocksize == 64 && K % 128 == 0) {
    // x permuted for gemv1_avx512: xp[128c + 16s + i] = x[128c + 8i + (s ^ 1)].
    thread_local std::vector<float> perm;
    perm.resize(static_cast<size_t>(K));
    for (int64_t c = 0; c < K / 128; ++c)
      for (int64_t s = 0; s < 8; ++s)
        for (int64_t i = 0; i < 16; ++i) perm[c * 128 + s * 16 + i] = x[c * 128 + 8 * i + (s ^ 1)];
    const float* xp = perm.data();
    parallel_for(chunks, graft::parallel_worth(N * K), [&](int64_t c) {
      gemv1_avx512(xp, K, w, absmax, c * kRows, std::min(N, (c + 1) * kRows), y);
    });
    return;
  }
  if (isa == Nf4Isa::Avx2 && w.blocksize % 64 == 0) {
    thread_local std::vector<float> perm;  // this (calling) thread's; the workers see it through xp
    perm.resize(static_cast<size_t>(T * K));
    permute_x_shuf(x, T, K, perm.data());
    const float* xp = perm.data();
    parallel_for(chunks, graft::parallel_worth(T * N * K), [&](int64_t c) {
      rows_avx2_shuf(xp, T, K, w, absmax, c * kRows, std::min(N, (c + 1) * kRows), N, y);
    });
    return;
  }
  // x split into even / odd elements: [T, K/2] each, in a per-thread buffer reused across calls.
  const int64_t half = K / 2;
  thread_local std::vector<float> split;
  split.resize(static_cast<size_t>(2 * T * half));
  float* xe = split.data();
  float* xo = xe + T * half;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < half; ++j) {
      xe[t * half + j] = x[t * K + 2 * j];
      xo[t * half + j] = x[t * K + 2 * j + 1];
    }
  parallel_for(chunks, graft::parallel_worth(T * N * K), [&](int64_t c) {
    const int64_t n0 = c * kRows, n1 = std::min(N, n0 + kRows);
    if (isa == Nf4Isa::Avx512) rows_avx512(xe, xo, T, K, w, absmax, n0, n1, N, y);
    else rows_avx2(xe, xo, T, K, w, absmax, n0, n1, N, y);
  });
}

void nf4_dequant_rows(const nf4::QuantizedWeight& w, int64_t n0, int64_t n1, float* out, Nf4Isa isa) {
  GRAFT_CHECK(w.shape.size() == 2 && n0 >= 0 && n0 <= n1 && n1 <= w.shape[0],
              "nf4_dequant_rows: rows [{}, {}) of NF4 weight {}", n0, n1, w.shape.str());
  const Absmax absmax(w);
  isa = resolve(isa, w, "nf4_dequant_rows");
  const int64_t K = w.shape[1];
  constexpr int64_t kRows = 16;
  const int64_t chunks = (n1 - n0 + kRows - 1) / kRows;
  parallel_for(chunks, graft::parallel_worth((n1 - n0) * K * 4), [&](int64_t c) {
    const int64_t r0 = n0 + c * kRows, r1 = std::min(n1, r0 + kRows);
    dequant_range(w, absmax, r0 * K, r1 * K, out + (r0 - n0) * K, isa);
  });
}

}  // namespace graft::cpu
