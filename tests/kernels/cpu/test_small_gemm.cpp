// small_gemm (the pack-free f32 GEMM behind linear for T >= 2 on AVX2 and AVX-512 CPUs) equals a double-precision
// reference on ragged shapes, at each SIMD level this CPU has: T not a multiple of 8, 16 or 64, N not a multiple of the
// 6-, 8- or 12-row tiles, odd K, a row stride ldy > N; AVX2 refuses more than 64 rows.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "graft/cpu/small_gemm.hpp"

using namespace graft::cpu;

namespace {
// The SIMD levels small_gemm / small_gemv run at on this CPU.
std::vector<Nf4Isa> levels() {
  std::vector<Nf4Isa> out;
  for (Nf4Isa isa : {Nf4Isa::Avx2, Nf4Isa::Avx512})
    if (small_gemv_runs(isa)) out.push_back(isa);
  return out;
}
}  // namespace

// T covers each last tile width of the AVX-512 path (8, 16, 24 or 32 columns of a 64-row chunk) and 64-row chunks.
TEST(CpuSmallGemm, EqualsReferenceOnRaggedShapes) {
  if (levels().empty()) GTEST_SKIP() << "no AVX2 + FMA on this CPU: linear uses Eigen's GEMM";
  EXPECT_FALSE(small_gemm_runs(kSmallGemmMinT - 1));
  EXPECT_FALSE(small_gemm_runs(kSmallGemmMinT, Nf4Isa::Portable));
  std::mt19937 g(5);
  std::normal_distribution<float> d;
  struct S { int64_t T, N, K; };
  for (const Nf4Isa isa : levels())
  for (const S s : {S{2, 3, 7}, S{5, 12, 64}, S{9, 1, 1}, S{16, 12, 16}, S{17, 13, 5}, S{33, 37, 100}, S{64, 24, 512}, S{65, 25, 64},
                    S{130, 50, 33}, S{7, 6, 9}, S{12, 7, 40}, S{20, 14, 48}, S{56, 13, 31}, S{88, 12, 24}}) {
    SCOPED_TRACE(testing::Message() << "isa=" << static_cast<int>(isa) << " T=" << s.T << " N=" << s.N << " K=" << s.K);
    std::vector<float> x(s.T * s.K), w(s.N * s.K);
    for (auto& v : x) v = d(g);
    for (auto& v : w) v = d(g);
    const int64_t ldy = s.N + 3;
    std::vector<float> y(s.T * ldy, -7.0f);
    if (!small_gemm_runs(s.T, isa)) {  // AVX2 past 64 rows: Eigen's GEMM is the product there
      EXPECT_TRUE(isa == Nf4Isa::Avx2 && s.T > 64);
      EXPECT_FALSE(small_gemm(x.data(), s.T, s.K, w.data(), s.N, y.data(), ldy, isa));
      EXPECT_EQ(y[0], -7.0f);
      continue;
    }
    ASSERT_TRUE(small_gemm(x.data(), s.T, s.K, w.data(), s.N, y.data(), ldy, isa));
    for (int64_t t = 0; t < s.T; ++t) {
      for (int64_t n = 0; n < s.N; ++n) {
        double ref = 0, mag = 0;
        for (int64_t k = 0; k < s.K; ++k) {
          ref += double(x[t * s.K + k]) * w[n * s.K + k];
          mag += std::abs(double(x[t * s.K + k]) * w[n * s.K + k]);
        }
        ASSERT_NEAR(y[t * ldy + n], ref, 1e-5 * mag + 1e-6) << "t=" << t << " n=" << n;
      }
      for (int64_t n = s.N; n < ldy; ++n) ASSERT_EQ(y[t * ldy + n], -7.0f) << "wrote past N at t=" << t;
    }
  }
}

// A SmallGemmX prepared with its transpose split over the thread pool (panel_gemm's, when its panels are split too)
// gives the same bits as the one-call path and the double-precision product, on shapes with several 64-row chunks
// and 256-column spans and ragged ends of both.
TEST(CpuSmallGemm, PreparedXTransposedOnThePoolEqualsTheOneCallPath) {
  if (levels().empty()) GTEST_SKIP() << "no AVX2 + FMA on this CPU: linear uses Eigen's GEMM";
  std::mt19937 g(9);
  std::normal_distribution<float> d;
  struct S { int64_t T, N, K; };
  for (const S s : {S{8, 5, 64}, S{64, 20, 256}, S{130, 13, 700}, S{200, 7, 172}, S{17, 31, 513}}) {
    if (!small_gemm_runs(s.T)) continue;
    SCOPED_TRACE(testing::Message() << "T=" << s.T << " N=" << s.N << " K=" << s.K);
    std::vector<float> x(size_t(s.T * s.K)), w(size_t(s.N * s.K));
    for (auto& v : x) v = d(g);
    for (auto& v : w) v = d(g);
    std::vector<float> want(size_t(s.T * s.N), -1.0f), got(size_t(s.T * s.N), -2.0f);
    ASSERT_TRUE(small_gemm(x.data(), s.T, s.K, w.data(), s.N, want.data(), s.N));
    // Another x through the one-call path, so the reused per-thread buffer holds other values: a part of the
    // transpose that was skipped would show.
    std::vector<float> other(x.size(), 3.0f), scratch(want.size());
    ASSERT_TRUE(small_gemm(other.data(), s.T, s.K, w.data(), s.N, scratch.data(), s.N));
    const SmallGemmX xt(x.data(), s.T, s.K, /*parallel=*/true);
    ASSERT_TRUE(xt.ready());
    ASSERT_TRUE(small_gemm(xt, w.data(), s.N, got.data(), s.N));
    EXPECT_EQ(got, want);
    for (int64_t t = 0; t < s.T; ++t)
      for (int64_t n = 0; n < s.N; ++n) {
        double ref = 0, mag = 0;
        for (int64_t k = 0; k < s.K; ++k) {
          ref += double(x[size_t(t * s.K + k)]) * w[size_t(n * s.K + k)];
          mag += std::abs(double(x[size_t(t * s.K + k)]) * w[size_t(n * s.K + k)]);
        }
        ASSERT_NEAR(got[size_t(t * s.N + n)], ref, 1e-5 * mag + 1e-6) << "t=" << t << " n=" << n;
      }
  }
}

// small_gemv (linear's product for T <= 8 on AVX2 and AVX-512 CPUs), at each SIMD level: K below, at and past the
// 8-lane step, the 32-element step and the 16-lane mask (K = 1, 7, 8, 9, 15, 16, 17, 31, 33, 512, 1000), N = 0 and 1,
// T = 1 (AVX-512: its own two-accumulator kernel) and 2..16, a row stride ldy > N with nothing written past N, and T
// outside [1, 16] refused.
TEST(CpuSmallGemm, GemvEqualsReferenceOnRaggedShapes) {
  if (levels().empty()) GTEST_SKIP() << "no AVX2 + FMA on this CPU: linear uses Eigen's GEMV";
  std::mt19937 g(6);
  std::normal_distribution<float> d;
  for (const Nf4Isa isa : levels())
  for (int64_t T : {1, 2, 3, 5, 8, 16})
    for (int64_t K : {0, 1, 7, 8, 9, 15, 16, 17, 31, 33, 512, 1000})
      for (int64_t N : {0, 1, 5, 37}) {
        SCOPED_TRACE(testing::Message() << "isa=" << static_cast<int>(isa) << " T=" << T << " N=" << N << " K=" << K);
        std::vector<float> x(T * K + 1), w(N * K + 1);  // + 1: a wrong mask reads these finite spares, a wrong sum
        for (auto& v : x) v = d(g);
        for (auto& v : w) v = d(g);
        const int64_t ldy = N + 2;
        std::vector<float> y(T * ldy, -7.0f);
        ASSERT_TRUE(small_gemv(x.data(), T, K, w.data(), N, y.data(), ldy, isa));
        for (int64_t t = 0; t < T; ++t) {
          for (int64_t n = 0; n < N; ++n) {
            double ref = 0, mag = 0;
            for (int64_t k = 0; k < K; ++k) {
              ref += double(x[t * K + k]) * w[n * K + k];
              mag += std::abs(double(x[t * K + k]) * w[n * K + k]);
            }
            ASSERT_NEAR(y[t * ldy + n], ref, 1e-5 * mag + 1e-6) << "t=" << t << " n=" << n;
          }
          for (int64_t n = N; n < ldy; ++n) ASSERT_EQ(y[t * ldy + n], -7.0f) << "wrote past N at t=" << t;
        }
      }
  std::vector<float> x(17 * 4, 1.0f), w(4, 1.0f), y(17, -7.0f);
  EXPECT_FALSE(small_gemv(x.data(), 0, 4, w.data(), 1, y.data(), 1));
  EXPECT_FALSE(small_gemv(x.data(), kSmallGemvMaxT + 1, 4, w.data(), 1, y.data(), 1));
  EXPECT_FALSE(small_gemv(x.data(), 1, 4, w.data(), 1, y.data(), 1, Nf4Isa::Portable));
  EXPECT_EQ(y[0], -7.0f);
}
