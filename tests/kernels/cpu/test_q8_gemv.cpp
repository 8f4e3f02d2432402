// q8_gemv (int8 codes widened in registers) and linear_q8 == dequantize-then-matmul, on every ISA path this CPU has,
// including layouts the SIMD paths hand to the portable one (K or blocksize not a multiple of 16); the Int8 dot
// (x quantized per block; the AVX-512 VNNI and the AVX2 kernel) == its integer reference and within its documented
// bound of the exact one.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "graft/cpu/ops.hpp"
#include "graft/cpu/q8_gemv.hpp"
#include "graft/error.hpp"
#include "../../common/scoped_env.hpp"
#include "test_util.hpp"

namespace graft::cpu {
namespace {

q8::QuantizedWeight quantize(const Tensor& w, int64_t blocksize) {
  return q8::quantize(std::span<const float>(w.data<float>(), size_t(w.numel())), w.shape(), blocksize);
}

// y_ref[T, N] in double from the dequantized weight.
std::vector<double> reference(const Tensor& x, const q8::QuantizedWeight& q) { return graft::testing::matmul_ref(x, q8::dequantize(q)); }

using graft::testing::ScopedEnv;

TEST(CpuQ8Gemv, EqualsDequantizeThenMatmulOnEveryIsa) {
  struct Shape {
    int64_t T, N, K, blocksize;
  };
  // N not a multiple of the 16-row groups; K with a short last block (K % bs != 0); K = 64 (one
  // block a row, stories260K); K not a multiple of 16 and blocksize 24 (portable on every ISA); every T in 1..16.
  const Shape shapes[] = {{1, 37, 128, 64}, {1, 3, 512, 64},  {1, 1, 64, 64},   {1, 41, 208, 64}, {2, 19, 96, 64},
                          {3, 300, 512, 64}, {4, 9, 80, 32},  {5, 7, 48, 16},    {6, 17, 100, 64}, {7, 5, 72, 24},
                          {8, 33, 512, 64},  {9, 6, 256, 128}, {10, 13, 64, 64}, {11, 23, 128, 64}, {12, 4, 192, 64},
                          {13, 5, 256, 64},  {14, 8, 64, 32}, {15, 11, 144, 64}, {16, 65, 256, 64}};
  int paths = 0;
  for (Nf4Isa isa : {Nf4Isa::Portable, Nf4Isa::Avx2, Nf4Isa::Avx512}) {
    if (!nf4_isa_supported(isa)) continue;
    ++paths;
    for (const Shape& s : shapes) {
      SCOPED_TRACE(::testing::Message() << "isa " << int(isa) << " T " << s.T << " N " << s.N << " K " << s.K
                                      << " bs " << s.blocksize);
      const Tensor wf = graft::testing::randn({s.N, s.K}, 11u + uint32_t(s.K), 0.05f);
      const q8::QuantizedWeight q = quantize(wf, s.blocksize);
      const Tensor x = graft::testing::randn({s.T, s.K}, 7u + uint32_t(s.T));
      Tensor y = graft::testing::poisoned({s.T, s.N});
      q8_gemv(x.data<float>(), s.T, s.K, q, y.data<float>(), isa, Q8Dot::Exact);
      const std::vector<double> ref = reference(x, q);
      EXPECT_LT(graft::testing::rel_err(y.data<float>(), ref.data(), s.T * s.N), 1e-5);
      // The panels of the T > 16 path: exactly q8::dequantize's values.
      std::vector<float> rows(size_t(s.N * s.K));
      q8_dequant_rows(q, 0, s.N, rows.data(), isa);
      const Tensor wd = q8::dequantize(q);
      EXPECT_EQ(0, std::memcmp(rows.data(), wd.raw(), rows.size() * sizeof(float)));
    }
  }
  EXPECT_GE(paths, 1);
}

// The Int8 dot's reference, from the rule q8_gemv.hpp states: per (t, b) xs = absmax / 127, xq = nearest-even of
// x · 127 / absmax; integer dot products; y = Σ_b scale · xs · dot. Also the bound on its distance from Exact.
struct Int8Ref {
  std::vector<double> y, bound;
};
Int8Ref int8_reference(const Tensor& x, const q8::QuantizedWeight& w) {
  const int64_t T = x.size(0), K = x.size(1), N = w.rows(), bs = w.blocksize, nb = K / bs;
  Int8Ref r;
  r.y.assign(size_t(T * N), 0.0);
  r.bound.assign(size_t(T * N), 0.0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t b = 0; b < nb; ++b) {
      const float* xb = x.data<float>() + t * K + b * bs;
      float amax = 0;
      for (int64_t k = 0; k < bs; ++k) amax = std::max(amax, std::fabs(xb[k]));
      std::vector<int> xq(size_t(bs), 0);
      for (int64_t k = 0; k < bs && amax > 0; ++k) xq[size_t(k)] = int(std::nearbyint(xb[k] * (127.0f / amax)));
      const double xs = amax / 127.0f;
      for (int64_t n = 0; n < N; ++n) {
        int64_t dot = 0, abs_q = 0;
        for (int64_t k = 0; k < bs; ++k) {
          dot += int64_t(w.q[size_t(n * K + b * bs + k)]) * xq[size_t(k)];
          abs_q += std::abs(int(w.q[size_t(n * K + b * bs + k)]));
        }
        const double ws = w.scale[size_t(n * nb + b)];
        r.y[size_t(t * N + n)] += ws * xs * double(dot);
        r.bound[size_t(t * N + n)] += ws * (xs / 2) * double(abs_q);
      }
    }
  return r;
}

TEST(CpuQ8Gemv, Int8DotEqualsItsIntegerReferenceAndStaysWithinItsBound) {
  std::vector<Nf4Isa> levels;  // the VNNI kernel at Avx512 where the CPU has VNNI; the AVX2 kernel at Avx2
  for (Nf4Isa isa : {Nf4Isa::Avx2, Nf4Isa::Avx512})
    if (q8_int8_dot_supported(isa)) levels.push_back(isa);
  if (levels.empty()) GTEST_SKIP() << "this CPU lacks AVX2: the Int8 dot cannot run here";
  struct Shape {
    int64_t T, N, K, blocksize;
  };
  // One block a row (K 64), several, blocksize 128 (two VNNI steps a block), N not a multiple of 16, every T.
  const Shape shapes[] = {{1, 37, 512, 64}, {1, 5, 64, 64},   {1, 300, 1024, 64}, {2, 19, 256, 128},
                          {3, 17, 192, 64}, {4, 33, 512, 64}, {5, 7, 128, 64},    {8, 65, 256, 64},
                          {11, 9, 384, 128}, {16, 23, 512, 64}};
  for (const Nf4Isa isa : levels)
  for (const Shape& s : shapes) {
    SCOPED_TRACE(::testing::Message() << "isa " << int(isa) << " T " << s.T << " N " << s.N << " K " << s.K << " bs "
                                      << s.blocksize);
    const Tensor wf = graft::testing::randn({s.N, s.K}, 21u + uint32_t(s.N), 0.05f);
    const q8::QuantizedWeight q = quantize(wf, s.blocksize);
    Tensor x = graft::testing::randn({s.T, s.K}, 9u + uint32_t(s.T));
    // Adversarial blocks: an all-zero block of x (scale 0), an outlier that flattens the rest of its block, values
    // on a half step (ties) and the block absmax itself (code ±127).
    float* xp = x.data<float>();
    if (s.K >= 128) {
      for (int64_t k = 0; k < 64; ++k) xp[k] = 0.0f;
      xp[64] = 1000.0f;
    }
    if (s.T > 1 && s.K >= 64) {
      xp[s.K] = 127.0f;
      for (int64_t k = 1; k < 64; ++k) xp[s.K + k] = float(k % 7) - 3.5f;  // x·127/127 = ±0.5, ±1.5, ±2.5, ±3.5
    }
    Tensor y = graft::testing::poisoned({s.T, s.N});
    q8_gemv(x.data<float>(), s.T, s.K, q, y.data<float>(), isa, Q8Dot::Int8);
    const Int8Ref ref = int8_reference(x, q);
    EXPECT_LT(graft::testing::rel_err(y.data<float>(), ref.y.data(), s.T * s.N), 2e-6);
    const std::vector<double> exact = reference(x, q);
    double max_excess = -1e30;
    for (int64_t i = 0; i < s.T * s.N; ++i) {
      const double slack = 1e-5 * (std::abs(exact[size_t(i)]) + ref.bound[size_t(i)]) + 1e-6;
      max_excess = std::max(max_excess, std::abs(y.data<float>()[i] - exact[size_t(i)]) - ref.bound[size_t(i)] - slack);
    }
    EXPECT_LE(max_excess, 0.0) << "a logit moved more than half an x step allows";
    // It is the int8 product (not the widened one): it differs from Exact by more than f32 rounding.
    EXPECT_GT(graft::testing::rel_err(y.data<float>(), exact.data(), s.T * s.N), 1e-5);
    // Auto picks it, at the level nf4_isa_detect() names (GRAFT_NF4_ISA may cap it).
    const ScopedEnv env("GRAFT_Q8_DOT", nullptr);
    if (nf4_isa_detect() == isa) {
      Tensor ya = graft::testing::poisoned({s.T, s.N});
      q8_gemv(x.data<float>(), s.T, s.K, q, ya.data<float>());
      EXPECT_EQ(0, std::memcmp(ya.raw(), y.raw(), size_t(s.T * s.N) * sizeof(float)));
    }
  }
}

TEST(CpuQ8Gemv, Int8DotFallsBackToExactOnLayoutsItCannotRunAndNamesABadEnvironment) {
  // blocksize 32 and K % blocksize != 0: the Int8 request runs the exact product.
  for (auto [K, bs] : {std::pair<int64_t, int64_t>{128, 32}, {200, 64}}) {
    const Tensor wf = graft::testing::randn({9, K}, 4u, 0.05f);
    const q8::QuantizedWeight q = quantize(wf, bs);
    const Tensor x = graft::testing::randn({2, K}, 6u);
    Tensor y = graft::testing::poisoned({2, 9});
    if (q8_int8_dot_supported()) q8_gemv(x.data<float>(), 2, K, q, y.data<float>(), Nf4Isa::Auto, Q8Dot::Int8);
    else EXPECT_THROW(q8_gemv(x.data<float>(), 2, K, q, y.data<float>(), Nf4Isa::Auto, Q8Dot::Int8), Error);
    if (q8_int8_dot_supported()) {
      const std::vector<double> ref = reference(x, q);
      EXPECT_LT(graft::testing::rel_err(y.data<float>(), ref.data(), 18), 1e-5) << "K " << K << " bs " << bs;
    }
  }
  {
    const ScopedEnv env("GRAFT_Q8_DOT", "fast");
    try {
      (void)q8_dot_detect();
      ADD_FAILURE() << "no throw";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("GRAFT_Q8_DOT=fast is not one of int8, exact"), std::string::npos)
          << e.what();
    }
  }
  {
    const ScopedEnv env("GRAFT_Q8_DOT", "exact");
    EXPECT_EQ(q8_dot_detect(), Q8Dot::Exact);
  }
}

TEST(CpuQ8Gemv, LinearQ8AgreesAcrossTheDecodeAndPanelPaths) {
  const Tensor wf = graft::testing::randn({70, 192}, 3u, 0.05f);
  const q8::QuantizedWeight q = quantize(wf, 64);
  for (const char* dot : {"exact", "auto"})
    for (int64_t T : {0, 1, 16, 17, 64, 130}) {
      SCOPED_TRACE(::testing::Message() << dot << " T " << T);
      const ScopedEnv env("GRAFT_Q8_DOT", std::string(dot) == "exact" ? "exact" : nullptr);
      const Tensor x = graft::testing::randn({T, 192}, 5u);
      Tensor y = graft::testing::poisoned({T, 70});
      linear_q8(x, q, y);
      if (T == 0) continue;
      // T <= 16 runs q8_gemv (the Int8 dot under auto where the CPU has it), T > 16 the exact dequantized panels.
      const bool int8 = T <= 16 && q8_dot_detect() == Q8Dot::Int8;
      const std::vector<double> ref = int8 ? int8_reference(x, q).y : reference(x, q);
      EXPECT_LT(graft::testing::rel_err(y.data<float>(), ref.data(), T * 70), int8 ? 2e-6 : 1e-5);
    }
}

TEST(CpuQ8Gemv, RefusesMismatchedShapesAndDamagedWeights) {
  const Tensor wf = graft::testing::randn({8, 64}, 3u, 0.05f);
  q8::QuantizedWeight q = quantize(wf, 32);
  const Tensor x = graft::testing::randn({2, 48}, 5u);
  Tensor y = graft::testing::poisoned({2, 8});
  EXPECT_THROW(linear_q8(x, q, y), Error);  // K 48 vs 64
  std::vector<float> out(16 * 64);
  EXPECT_THROW(q8_dequant_rows(q, 4, 9, out.data()), Error);  // rows past the end
  q.scale.pop_back();  // a truncated scale table
  const Tensor x64 = graft::testing::randn({2, 64}, 5u);
  try {
    linear_q8(x64, q, y);
    FAIL() << "no throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("re-quantize"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace graft::cpu
