// f32 GEMM without packing W (small_gemm.hpp). X is transposed, 64 rows at a time, into xt [K, Tp] (Tp = rows
// rounded up to 8, zero-padded); a tile of weight rows x columns of T keeps its accumulators in registers: AVX-512,
// 6-12 rows x 8-64 columns, one tile shape per chunk width (zmm and ymm accumulators); AVX2, 6 rows x 16 (or 8) columns
// in 12 (6) of the 16 ymm.
// Per k: the loads of xt, one broadcast of W[o, k] per row (that many sequential row streams) and rows x vectors
// FMAs. Each tile is transposed into y. small_gemv streams one weight row at a time for all T rows of x.
#include "avx512_header_warnings.hpp"  // first: before <immintrin.h>
// Here GCC 12 also reports the same header false positive as -Wuninitialized (gemv_row's _mm512_reduce_add_ps).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include "graft/cpu/small_gemm.hpp"

#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "graft/parallel.hpp"
#include "parallel_for.hpp"
#include "simd_reduce.hpp"
#include "static_rows.hpp"

namespace graft::cpu {
namespace {

// r[i] lane t -> r[t] lane i: a 16 x 16 transpose in registers (unpack ps, unpack pd, two 128-bit lane shuffles).
__attribute__((target("avx512f"), always_inline)) inline void transpose16(__m512 r[16]) {
  __m512 t[16];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {  // lane L of t[2i]: r[2i][4L], r[2i+1][4L], r[2i][4L+1], r[2i+1][4L+1]
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
#define GRAFT_PD(a) _mm512_castps_pd(a)
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {  // lane L of r[4i + m]: column 4L + m of rows 4i..4i+3
    r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(GRAFT_PD(t[4 * i]), GRAFT_PD(t[4 * i + 2])));
    r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(GRAFT_PD(t[4 * i]), GRAFT_PD(t[4 * i + 2])));
    r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(GRAFT_PD(t[4 * i + 1]), GRAFT_PD(t[4 * i + 3])));
    r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(GRAFT_PD(t[4 * i + 1]), GRAFT_PD(t[4 * i + 3])));
  }
#undef GRAFT_PD
#pragma GCC unroll 4
  for (int m = 0; m < 4; ++m) {  // column 4L + m: lane L of r[m], r[4 + m], r[8 + m], r[12 + m]
    const __m512 ab02 = _mm512_shuffle_f32x4(r[m], r[4 + m], 0x88), ab13 = _mm512_shuffle_f32x4(r[m], r[4 + m], 0xdd);
    const __m512 cd02 = _mm512_shuffle_f32x4(r[8 + m], r[12 + m], 0x88);
    const __m512 cd13 = _mm512_shuffle_f32x4(r[8 + m], r[12 + m], 0xdd);
    t[m] = _mm512_shuffle_f32x4(ab02, cd02, 0x88);
    t[8 + m] = _mm512_shuffle_f32x4(ab02, cd02, 0xdd);
    t[4 + m] = _mm512_shuffle_f32x4(ab13, cd13, 0x88);
    t[12 + m] = _mm512_shuffle_f32x4(ab13, cd13, 0xdd);
  }
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) r[i] = t[i];
}

// R weight rows x (16 NZ + 8 NY) columns of T: NZ zmm and NY (0 or 1) ymm accumulators per row. The ymm column
// block lets a tile end on a multiple of 8 columns rather than 16: an expert's rows (T ≈ 20..40 at a 128-token
// prefill) padded to 16 multiplied up to 15 zero columns (T = 20 took as long as T = 32). A ymm FMA does half a zmm
// FMA's work, which on Zen 4 (256-bit FMA pipes) is also half the time.
template <int R, int NZ, int NY>
__attribute__((target("avx512f,avx512vl"))) void tile(const float* xt, int64_t ldx, int64_t K, const float* w,
                                                      int64_t rows, float* y, int64_t ldy, int64_t tn) {
  static_assert(R <= 16 && NZ >= 0 && NZ <= 4 && NY >= 0 && NY <= 1 && NZ + NY > 0);
  constexpr int kZ = NZ > 0 ? NZ : 1, kY = NY > 0 ? NY : 1;  // array extents (unused when NZ or NY is 0)
  const float* r[R];
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i) r[i] = w + std::min<int64_t>(i, rows - 1) * K;  // rows < R: repeat the last row
  __m512 acc[R][kZ];
  __m256 accy[R][kY];
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i) {
#pragma GCC unroll 4
    for (int j = 0; j < NZ; ++j) acc[i][j] = _mm512_setzero_ps();
    if constexpr (NY > 0) accy[i][0] = _mm256_setzero_ps();
  }
  for (int64_t k = 0; k < K; ++k) {
    __m512 xv[kZ];
#pragma GCC unroll 4
    for (int j = 0; j < NZ; ++j) xv[j] = _mm512_loadu_ps(xt + k * ldx + 16 * j);
    __m256 xy = NY > 0 ? _mm256_loadu_ps(xt + k * ldx + 16 * NZ) : _mm256_setzero_ps();
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
      if constexpr (NZ > 0) {
        const __m512 b = _mm512_set1_ps(r[i][k]);
#pragma GCC unroll 4
        for (int j = 0; j < NZ; ++j) acc[i][j] = _mm512_fmadd_ps(b, xv[j], acc[i][j]);
        if constexpr (NY > 0) accy[i][0] = _mm256_fmadd_ps(_mm512_castps512_ps256(b), xy, accy[i][0]);
      } else {
        accy[i][0] = _mm256_fmadd_ps(_mm256_set1_ps(r[i][k]), xy, accy[i][0]);
      }
    }
  }
  // Into y: each 16-column block transposed in registers, then one masked store of the tile's rows per column of T
  // (a scalar copy through memory was 6% of the tile's time at K = 512).
  const __mmask16 rm = __mmask16((1u << rows) - 1);
  __m512 v[16];
#pragma GCC unroll 4
  for (int j = 0; j < NZ + NY; ++j) {
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i)
      v[i] = i >= R ? _mm512_setzero_ps() : j < NZ ? acc[i][j] : _mm512_zextps256_ps512(accy[i][0]);
    transpose16(v);
    const int64_t n = std::min<int64_t>(j < NZ ? 16 : 8, tn - 16 * j);
    for (int64_t t = 0; t < n; ++t) _mm512_mask_storeu_ps(y + (16 * j + t) * ldy, rm, v[t]);
  }
}

// Every weight row of w [N, K] against one chunk of xt, R rows per tile.
template <int R, int NZ, int NY>
void tiles(const float* xt, int64_t ldx, int64_t K, const float* w, int64_t N, float* y, int64_t ldy, int64_t tn) {
  for (int64_t o = 0; o < N; o += R) tile<R, NZ, NY>(xt, ldx, K, w + o * K, std::min<int64_t>(R, N - o), y + o, ldy, tn);
}

// One weight row of the GEMV: a single sequential stream (measured 2026-12-06, 1 thread, the 151,669 × 512 lm_head:
// 16-18 GB/s of a 21-22 GB/s read; four rows sharing each x load 10.6, two rows 9.1, Eigen's GEMV 14.7; software
// prefetch and four accumulators no better). Two accumulators (even / odd 16-element steps), masked tail.
__attribute__((target("avx512f"))) float gemv_row(const float* x, int64_t K, const float* w) {
  __m512 a = _mm512_setzero_ps(), b = a;
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    a = _mm512_fmadd_ps(_mm512_loadu_ps(w + k), _mm512_loadu_ps(x + k), a);
    b = _mm512_fmadd_ps(_mm512_loadu_ps(w + k + 16), _mm512_loadu_ps(x + k + 16), b);
  }
  for (; k < K; k += 16) {  // the last < 32 elements, masked past K
    const __mmask16 m = K - k >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (K - k)) - 1);
    a = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, w + k), _mm512_maskz_loadu_ps(m, x + k), a);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(a, b));
}

// T = TT (compile time; 0: run-time T) rows of x against one weight row at a time: a single sequential stream of W
// (cf. gemv_row), one accumulator per row of x, each weight vector loaded once for all of them.
template <int TT>
__attribute__((target("avx512f"))) void stream_rows(const float* x, int64_t T_, int64_t K, const float* w,
                                                    int64_t N, float* y, int64_t ldy) {
  const int64_t T = TT > 0 ? TT : T_;
  for (int64_t n = 0; n < N; ++n) {
    const float* r = w + n * K;
    __m512 acc[kSmallGemvMaxT];
#pragma GCC unroll 16
    for (int64_t t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
    for (int64_t k = 0; k < K; k += 16) {
      const __mmask16 m = K - k >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (K - k)) - 1);
      const __m512 wv = _mm512_maskz_loadu_ps(m, r + k);
#pragma GCC unroll 16
      for (int64_t t = 0; t < T; ++t) acc[t] = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(m, x + t * K + k), acc[t]);
    }
#pragma GCC unroll 16
    for (int64_t t = 0; t < T; ++t) y[t * ldy + n] = _mm512_reduce_add_ps(acc[t]);
  }
}

// ---- AVX2 + FMA (16 ymm registers) ----

template <int R, int NZ>
__attribute__((target("avx2,fma"))) void tile_avx2(const float* xt, int64_t ldx, int64_t K, const float* w,
                                                   int64_t rows, float* y, int64_t ldy, int64_t tn) {
  const float* r[R];
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i) r[i] = w + std::min<int64_t>(i, rows - 1) * K;  // rows < R: repeat the last row
  __m256 acc[R][NZ];
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 2
    for (int j = 0; j < NZ; ++j) acc[i][j] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    __m256 xv[NZ];
#pragma GCC unroll 2
    for (int j = 0; j < NZ; ++j) xv[j] = _mm256_loadu_ps(xt + k * ldx + 8 * j);
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
      const __m256 b = _mm256_broadcast_ss(r[i] + k);
#pragma GCC unroll 2
      for (int j = 0; j < NZ; ++j) acc[i][j] = _mm256_fmadd_ps(b, xv[j], acc[i][j]);
    }
  }
  alignas(32) float buf[R][8 * NZ];
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 2
    for (int j = 0; j < NZ; ++j) _mm256_store_ps(buf[i] + 8 * j, acc[i][j]);
  for (int64_t t = 0; t < tn; ++t)
    for (int64_t i = 0; i < rows; ++i) y[t * ldy + i] = buf[i][t];
}

// As stream_rows, with 8-lane vectors and a scalar tail of < 8 elements per row of x; also T = 1 (linear keeps T = 1
// on AVX2 on Eigen's GEMV, which was faster there).
template <int TT>
__attribute__((target("avx2,fma"))) void stream_rows_avx2(const float* x, int64_t T_, int64_t K, const float* w,
                                                          int64_t N, float* y, int64_t ldy) {
  const int64_t T = TT > 0 ? TT : T_, K8 = K / 8 * 8;
  for (int64_t n = 0; n < N; ++n) {
    const float* r = w + n * K;
    __m256 acc[kSmallGemvMaxT];
#pragma GCC unroll 16
    for (int64_t t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
    for (int64_t k = 0; k < K8; k += 8) {
      const __m256 wv = _mm256_loadu_ps(r + k);
#pragma GCC unroll 16
      for (int64_t t = 0; t < T; ++t) acc[t] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + t * K + k), acc[t]);
    }
#pragma GCC unroll 16
    for (int64_t t = 0; t < T; ++t) {
      float s = simd::hsum256(acc[t]);
      for (int64_t k = K8; k < K; ++k) s += r[k] * x[t * K + k];
      y[t * ldy + n] = s;
    }
  }
}

// The level small_gemv / small_gemm run at; Portable: they do not run.
Nf4Isa level(Nf4Isa isa) {
  if (isa == Nf4Isa::Auto) return nf4_isa_detect();
  return nf4_isa_supported(isa) ? isa : Nf4Isa::Portable;
}

}  // namespace

bool small_gemv_runs(Nf4Isa isa) { return level(isa) != Nf4Isa::Portable; }

bool small_gemv(const float* x, int64_t T, int64_t K, const float* w, int64_t N, float* y, int64_t ldy, Nf4Isa isa) {
  isa = level(isa);
  if (isa == Nf4Isa::Portable || T < 1 || T > kSmallGemvMaxT) return false;
  if (K <= 0) {
    for (int64_t t = 0; t < T; ++t) std::fill(y + t * ldy, y + t * ldy + N, 0.0f);
    return true;
  }
  if (T == 1 && isa == Nf4Isa::Avx512) {
    for (int64_t n = 0; n < N; ++n) y[n] = gemv_row(x, K, w + n * K);
    return true;
  }
  with_static_t(T, [&](auto tt) {
    if (isa == Nf4Isa::Avx512) stream_rows<decltype(tt)::value>(x, T, K, w, N, y, ldy);
    else stream_rows_avx2<decltype(tt)::value>(x, T, K, w, N, y, ldy);
  });
  return true;
}

// Weight rows per AVX2 tile: 6 rows x 16 columns = 12 accumulators, 2 x vectors and a broadcast (15 of 16 ymm).
// (AVX-512 picks its tile per chunk width in small_gemm below. Measured 2026-12-06, 1 thread, N = K = 512: 12 rows
// x 32 columns 114-125 GFLOP/s for T = 16..256, 8 rows 100-114; Eigen's GEMM 63-100 GFLOP/s on the same shapes.)
constexpr int kRAvx2 = 6;
// AVX2 runs up to 64 rows of x: beyond, Eigen's packed GEMM is as fast or faster (Zen 3, 1 thread, bench_gemm,
// 2026-12-07: K = 512, N = 1536: T = 4 124 vs 286 us, 16 284 vs 481, 32 (N = 1024) 392 vs 505, 64 1.24 vs 1.28 ms,
// 128 2.46 vs 2.35 ms; K = 64, N = 172, T = 128: 47 vs 35 us).
constexpr int64_t kSmallGemmMaxTAvx2 = 64;

bool small_gemm_runs(int64_t T, Nf4Isa isa) {
  isa = level(isa);
  return isa != Nf4Isa::Portable && T >= kSmallGemmMinT && (isa == Nf4Isa::Avx512 || T <= kSmallGemmMaxTAvx2);
}

namespace {
// One reusable buffer per thread: a fresh large vector per call costs page faults (measured: f32 MoE prefill
// 88 -> 97 ms). A second SmallGemmX alive on the same thread finds the spare taken and allocates its own.
thread_local std::vector<float> spare;
}  // namespace

SmallGemmX::~SmallGemmX() {
  if (xt_.capacity() > spare.capacity()) spare = std::move(xt_);
}

namespace {
// xt [K, Tp] (=) x [Tc, K]ᵀ, zero in columns [Tc, Tp): 16 x 16 blocks transposed in registers (masked loads past K
// and Tc, masked stores past Tp). 1 thread, the small MoE's 128-token prefill: the scalar copy below was 5% of it.
// Columns [kb, ke) of x (kb a multiple of 16).
__attribute__((target("avx512f,avx512vl"))) void transpose_x_avx512(const float* x, int64_t Tc, int64_t Tp, int64_t K,
                                                                    int64_t kb, int64_t ke, float* xt) {
  for (int64_t k0 = kb; k0 < ke; k0 += 16) {
    const int64_t kn = std::min<int64_t>(16, K - k0);
    const __mmask16 km = __mmask16((1u << kn) - 1);
    for (int64_t t0 = 0; t0 < Tp; t0 += 16) {
      __m512 v[16];
#pragma GCC unroll 16
      for (int64_t i = 0; i < 16; ++i)
        v[i] = t0 + i < Tc ? _mm512_maskz_loadu_ps(km, x + (t0 + i) * K + k0) : _mm512_setzero_ps();
      transpose16(v);
      const __mmask16 tm = __mmask16((1u << std::min<int64_t>(16, Tp - t0)) - 1);
      for (int64_t kk = 0; kk < kn; ++kk) _mm512_mask_storeu_ps(xt + (k0 + kk) * Tp + t0, tm, v[kk]);
    }
  }
}
}  // namespace

SmallGemmX::SmallGemmX(const float* x, int64_t T, int64_t K, bool parallel) : T_(T), K_(K) {
  if (!small_gemm_runs(T) || K <= 0) return;
  xt_ = std::move(spare);
  spare = std::vector<float>();
  xt_.resize(static_cast<size_t>(((T + 63) / 64) * 64 * K));
  // Work items: 64 columns of T (a chunk [K, Tp] stays in L2) x 256 columns of K.
  constexpr int64_t kKSpan = 256;
  const int64_t chunks = (T + 63) / 64, spans = (K + kKSpan - 1) / kKSpan;
  const bool avx512 = level(Nf4Isa::Auto) == Nf4Isa::Avx512;
  parallel_for(chunks * spans, parallel, [&](int64_t item) {
    const int64_t c0 = item / spans * 64, kb = item % spans * kKSpan, ke = std::min(K, kb + kKSpan);
    const int64_t Tc = std::min<int64_t>(64, T - c0), Tp = (Tc + 7) / 8 * 8;
    float* xt = xt_.data() + c0 * K;
    if (avx512) {
      transpose_x_avx512(x + c0 * K, Tc, Tp, K, kb, ke, xt);
      return;
    }
    // Transposed 16 columns of x at a time, so the 16 rows of xt being written stay in L1.
    for (int64_t k0 = kb; k0 < ke; k0 += 16) {
      const int64_t kn = std::min<int64_t>(16, K - k0);
      float* o = xt + k0 * Tp;
      for (int64_t t = 0; t < Tc; ++t) {
        const float* in = x + (c0 + t) * K + k0;
        for (int64_t kk = 0; kk < kn; ++kk) o[kk * Tp + t] = in[kk];
      }
      for (int64_t kk = 0; kk < kn; ++kk) std::fill(o + kk * Tp + Tc, o + kk * Tp + Tp, 0.0f);
    }
  });
}

bool small_gemm(const SmallGemmX& x, const float* w, int64_t N, float* y, int64_t ldy, Nf4Isa isa) {
  if (!x.ready() || !small_gemm_runs(x.T_, isa)) return false;
  isa = level(isa);
  const int64_t T = x.T_, K = x.K_;
  for (int64_t c0 = 0; c0 < T; c0 += 64) {
    const int64_t Tc = std::min<int64_t>(64, T - c0), Tp = (Tc + 7) / 8 * 8;
    const float* xt = x.xt_.data() + c0 * K;
    float* yc = y + c0 * ldy;
    if (isa == Nf4Isa::Avx512) {
      // One tile shape per chunk width, so that W is read once per chunk: 24 accumulators (12 for 8 and 16
      // columns), as few weight rows as give that many (fewer broadcasts per FMA: 1 thread, N = 1536, K = 512,
      // T = 64: 6 rows x 64 columns 108 GFLOP/s, 12 x 32 twice 102).
      switch (Tp) {
        case 8: tiles<12, 0, 1>(xt, Tp, K, w, N, yc, ldy, Tc); break;
        case 16: tiles<12, 1, 0>(xt, Tp, K, w, N, yc, ldy, Tc); break;
        case 24: tiles<12, 1, 1>(xt, Tp, K, w, N, yc, ldy, Tc); break;
        case 32: tiles<12, 2, 0>(xt, Tp, K, w, N, yc, ldy, Tc); break;
        case 40: tiles<8, 2, 1>(xt, Tp, K, w, N, yc, ldy, Tc); break;
        case 48: tiles<8, 3, 0>(xt, Tp, K, w, N, yc, ldy, Tc); break;
        case 56: tiles<6, 3, 1>(xt, Tp, K, w, N, yc, ldy, Tc); break;
        default: tiles<6, 4, 0>(xt, Tp, K, w, N, yc, ldy, Tc); break;  // 64
      }
      continue;
    }
    if (Tc <= 8) {  // one 8-column tile: 12 rows, so 12 independent FMA chains hide the 4-cycle latency (6 did not)
      for (int64_t o = 0; o < N; o += 2 * kRAvx2)
        tile_avx2<2 * kRAvx2, 1>(xt, Tp, K, w + o * K, std::min<int64_t>(2 * kRAvx2, N - o), yc + o, ldy, Tc);
      continue;
    }
    for (int64_t o = 0; o < N; o += kRAvx2) {
      const int64_t rows = std::min<int64_t>(kRAvx2, N - o);
      // 16 columns per tile; 8 where no more are left (xt holds Tp >= t0 + 16 columns, zero past Tc).
      for (int64_t t0 = 0; t0 < Tc; t0 += 16) {
        if (Tc - t0 > 8)
          tile_avx2<kRAvx2, 2>(xt + t0, Tp, K, w + o * K, rows, yc + t0 * ldy + o, ldy, std::min<int64_t>(16, Tc - t0));
        else
          tile_avx2<kRAvx2, 1>(xt + t0, Tp, K, w + o * K, rows, yc + t0 * ldy + o, ldy, Tc - t0);
      }
    }
  }
  return true;
}

bool small_gemm(const float* x, int64_t T, int64_t K, const float* w, int64_t N, float* y, int64_t ldy, Nf4Isa isa) {
  if (!small_gemm_runs(T, isa) || K <= 0) return false;
  return small_gemm(SmallGemmX(x, T, K), w, N, y, ldy, isa);
}

}  // namespace graft::cpu
