// f32 GEMM without packing W (small_gemm.hpp). X is transposed, 64 rows at a time, into xt [K, Tp] (Tp = rows
// rounded up to 16, zero-padded); a tile of weight rows x columns of T keeps its accumulators in registers: AVX-512,
// 12 rows x 32 (or 16) columns in 24 (12) of the 32 zmm; AVX2, 6 rows x 16 (or 8) columns in 12 (6) of the 16 ymm.
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

#include "simd_reduce.hpp"
#include "static_rows.hpp"

namespace graft::cpu {
namespace {

template <int R, int NZ>
__attribute__((target("avx512f"))) void tile(const float* xt, int64_t ldx, int64_t K, const float* w, int64_t rows,
                                              float* y, int64_t ldy, int64_t tn) {
  const float* r[R];
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i) r[i] = w + std::min<int64_t>(i, rows - 1) * K;  // rows < R: repeat the last row
  __m512 acc[R][NZ];
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 2
    for (int j = 0; j < NZ; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    __m512 xv[NZ];
#pragma GCC unroll 2
    for (int j = 0; j < NZ; ++j) xv[j] = _mm512_loadu_ps(xt + k * ldx + 16 * j);
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
      const __m512 b = _mm512_set1_ps(r[i][k]);
#pragma GCC unroll 2
      for (int j = 0; j < NZ; ++j) acc[i][j] = _mm512_fmadd_ps(b, xv[j], acc[i][j]);
    }
  }
  alignas(64) float buf[R][16 * NZ];
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 2
    for (int j = 0; j < NZ; ++j) _mm512_store_ps(buf[i] + 16 * j, acc[i][j]);
  for (int64_t t = 0; t < tn; ++t)
    for (int64_t i = 0; i < rows; ++i) y[t * ldy + i] = buf[i][t];
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

// Weight rows per tile. AVX-512: 12 rows x 32 columns = 24 accumulators (of 32 zmm). Measured 2026-12-06, 1 thread,
// N = K = 512: 114-125 GFLOP/s for T = 16..256 with 12 rows, 100-114 with 8; Eigen's GEMM 63-100 GFLOP/s on the same
// shapes. AVX2: 6 rows x 16 columns = 12 accumulators, 2 x vectors and a broadcast (15 of 16 ymm).
constexpr int kR = 12, kRAvx2 = 6;
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

SmallGemmX::SmallGemmX(const float* x, int64_t T, int64_t K) : T_(T), K_(K) {
  if (!small_gemm_runs(T) || K <= 0) return;
  xt_ = std::move(spare);
  spare = std::vector<float>();
  xt_.resize(static_cast<size_t>(((T + 63) / 64) * 64 * K));
  for (int64_t c0 = 0; c0 < T; c0 += 64) {  // 64 columns of T per chunk: a chunk [K, Tp] stays in L2
    const int64_t Tc = std::min<int64_t>(64, T - c0), Tp = (Tc + 15) / 16 * 16;
    float* xt = xt_.data() + c0 * K;
    // Transposed 16 columns of x at a time, so the 16 rows of xt being written stay in L1.
    for (int64_t k0 = 0; k0 < K; k0 += 16) {
      const int64_t kn = std::min<int64_t>(16, K - k0);
      float* o = xt + k0 * Tp;
      for (int64_t t = 0; t < Tc; ++t) {
        const float* in = x + (c0 + t) * K + k0;
        for (int64_t kk = 0; kk < kn; ++kk) o[kk * Tp + t] = in[kk];
      }
      for (int64_t kk = 0; kk < kn; ++kk) std::fill(o + kk * Tp + Tc, o + kk * Tp + Tp, 0.0f);
    }
  }
}

bool small_gemm(const SmallGemmX& x, const float* w, int64_t N, float* y, int64_t ldy, Nf4Isa isa) {
  if (!x.ready() || !small_gemm_runs(x.T_, isa)) return false;
  isa = level(isa);
  const int64_t T = x.T_, K = x.K_;
  for (int64_t c0 = 0; c0 < T; c0 += 64) {
    const int64_t Tc = std::min<int64_t>(64, T - c0), Tp = (Tc + 15) / 16 * 16;
    const float* xt = x.xt_.data() + c0 * K;
    float* yc = y + c0 * ldy;
    if (isa == Nf4Isa::Avx512) {
      for (int64_t o = 0; o < N; o += kR) {
        const int64_t rows = std::min<int64_t>(kR, N - o);
        int64_t t0 = 0;
        for (; t0 + 32 <= Tp; t0 += 32)
          tile<kR, 2>(xt + t0, Tp, K, w + o * K, rows, yc + t0 * ldy + o, ldy, std::min<int64_t>(32, Tc - t0));
        if (t0 < Tp) tile<kR, 1>(xt + t0, Tp, K, w + o * K, rows, yc + t0 * ldy + o, ldy, Tc - t0);
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
