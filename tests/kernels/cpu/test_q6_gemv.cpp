// q6_gemv (6-bit codes unpacked in registers) and linear_q6 == dequantize-then-matmul on every ISA path this CPU has,
// K not a multiple of 64 on the portable path; the Int8 dot (x quantized per 64-block; the AVX-512 VNNI and the AVX2
// kernel) == its integer reference and within its documented bound of the exact product.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "graft/cpu/ops.hpp"
#include "graft/cpu/q6_gemv.hpp"
#include "graft/error.hpp"
#include "../../common/scoped_env.hpp"
#include "test_util.hpp"

namespace graft::cpu {
namespace {

using graft::testing::ScopedEnv;

q6::QuantizedWeight quantize(const Tensor& w) {
  return q6::quantize(std::span<const float>(w.data<float>(), size_t(w.numel())), w.shape());
}

std::vector<double> exact_reference(const Tensor& x, const q6::QuantizedWeight& q) {
  return graft::testing::matmul_ref(x, q6::dequantize(q));
}

// The rule q6_gemv.hpp states for the Int8 dot, in exact integer arithmetic, and its bound on the distance from the
// exact product.
struct Int8Ref {
  std::vector<double> y, bound;
};
Int8Ref int8_reference(const Tensor& x, const q6::QuantizedWeight& w) {
  const int64_t T = x.size(0), K = x.size(1), N = w.rows(), nb = K / 64;
  Int8Ref r{std::vector<double>(size_t(T * N), 0.0), std::vector<double>(size_t(T * N), 0.0)};
  for (int64_t t = 0; t < T; ++t)
    for (int64_t b = 0; b < nb; ++b) {
      const float* xb = x.data<float>() + t * K + b * 64;
      float amax = 0;
      for (int64_t k = 0; k < 64; ++k) amax = std::max(amax, std::fabs(xb[k]));
      const double xs = amax / 127.0f;
      for (int64_t n = 0; n < N; ++n) {
        int64_t dot = 0, abs_q = 0;
        for (int64_t k = 0; k < 64 && amax > 0; ++k) {
          const int c = q6::code(w, n, b * 64 + k);
          dot += int64_t(c) * int64_t(std::nearbyint(xb[k] * (127.0f / amax)));
          abs_q += std::abs(c);
        }
        const double ws = w.scale[size_t(n * nb + b)];
        r.y[size_t(t * N + n)] += ws * xs * double(dot);
        r.bound[size_t(t * N + n)] += ws * (xs / 2) * double(abs_q);
      }
    }
  return r;
}

TEST(CpuQ6Gemv, ExactEqualsDequantizeThenMatmulOnEveryIsa) {
  struct Shape {
    int64_t T, N, K;
  };
  // N not a multiple of the 16-row chunks; K = 64 (stories260K: one block a row); K = 100 and 200 (a padded last
  // block: the portable path on every ISA); every T in 1..16.
  const Shape shapes[] = {{1, 37, 128},  {1, 3, 512},  {1, 1, 64},   {1, 41, 100}, {2, 19, 192}, {3, 300, 512},
                          {4, 9, 64},    {5, 7, 200},  {6, 17, 256}, {7, 5, 128},  {8, 33, 512}, {9, 6, 256},
                          {10, 13, 64},  {11, 23, 128}, {12, 4, 192}, {13, 5, 256}, {14, 8, 64},  {15, 11, 320},
                          {16, 65, 256}};
  int paths = 0;
  for (Nf4Isa isa : {Nf4Isa::Portable, Nf4Isa::Avx2, Nf4Isa::Avx512}) {
    if (!nf4_isa_supported(isa)) continue;
    ++paths;
    for (const Shape& s : shapes) {
      SCOPED_TRACE(::testing::Message() << "isa " << int(isa) << " T " << s.T << " N " << s.N << " K " << s.K);
      Tensor wf = graft::testing::randn({s.N, s.K}, 11u + uint32_t(s.K), 0.05f);
      for (int64_t k = 0; k < std::min<int64_t>(s.K, 64); ++k) wf.data<float>()[k] = 0.0f;  // an all-zero block
      const q6::QuantizedWeight q = quantize(wf);
      const Tensor x = graft::testing::randn({s.T, s.K}, 7u + uint32_t(s.T));
      Tensor y = graft::testing::poisoned({s.T, s.N});
      q6_gemv(x.data<float>(), s.T, s.K, q, y.data<float>(), isa, Q8Dot::Exact);
      const std::vector<double> ref = exact_reference(x, q);
      EXPECT_LT(graft::testing::rel_err(y.data<float>(), ref.data(), s.T * s.N), 1e-5);
      // The panels of the T > 16 path: exactly q6::dequantize's values.
      std::vector<float> rows(size_t(s.N * s.K));
      q6_dequant_rows(q, 0, s.N, rows.data(), isa);
      const Tensor wd = q6::dequantize(q);
      EXPECT_EQ(0, std::memcmp(rows.data(), wd.raw(), rows.size() * sizeof(float)));
      std::vector<float> part(size_t(3 * s.K));  // an inner row range
      if (s.N >= 4) {
        q6_dequant_rows(q, 1, 4, part.data(), isa);
        EXPECT_EQ(0, std::memcmp(part.data(), wd.data<float>() + s.K, part.size() * sizeof(float)));
      }
    }
  }
  EXPECT_GE(paths, 1);
}

TEST(CpuQ6Gemv, Int8DotEqualsItsIntegerReferenceAndStaysWithinItsBound) {
  std::vector<Nf4Isa> levels;  // the VNNI kernel at Avx512 where the CPU has VNNI; the AVX2 kernel at Avx2
  for (Nf4Isa isa : {Nf4Isa::Avx2, Nf4Isa::Avx512})
    if (q8_int8_dot_supported(isa)) levels.push_back(isa);
  if (levels.empty()) GTEST_SKIP() << "this CPU lacks AVX2: the Int8 dot cannot run here";
  struct Shape {
    int64_t T, N, K;
  };
  const Shape shapes[] = {{1, 37, 512}, {1, 5, 64},   {1, 300, 1024}, {2, 19, 256}, {3, 17, 192},
                          {4, 33, 512}, {5, 7, 128},  {8, 65, 256},   {11, 9, 384}, {16, 23, 512}};
  for (const Nf4Isa isa : levels)
    for (const Shape& s : shapes) {
      SCOPED_TRACE(::testing::Message() << "isa " << int(isa) << " T " << s.T << " N " << s.N << " K " << s.K);
      Tensor wf = graft::testing::randn({s.N, s.K}, 21u + uint32_t(s.N), 0.05f);
      wf.data<float>()[s.K - 1] = 1.0f;  // an outlier: the rest of row 0's last block gets small codes
      const q6::QuantizedWeight q = quantize(wf);
      Tensor x = graft::testing::randn({s.T, s.K}, 9u + uint32_t(s.T));
      // Adversarial x blocks: all zero (scale 0), an outlier that flattens the rest of its block, values on a half
      // step (ties) and the block absmax itself (code ±127).
      float* xp = x.data<float>();
      if (s.K >= 128) {
        for (int64_t k = 0; k < 64; ++k) xp[k] = 0.0f;
        xp[64] = 1000.0f;
      }
      if (s.T > 1) {
        xp[s.K] = 127.0f;
        for (int64_t k = 1; k < 64; ++k) xp[s.K + k] = float(k % 7) - 3.5f;
      }
      Tensor y = graft::testing::poisoned({s.T, s.N});
      q6_gemv(x.data<float>(), s.T, s.K, q, y.data<float>(), isa, Q8Dot::Int8);
      const Int8Ref ref = int8_reference(x, q);
      EXPECT_LT(graft::testing::rel_err(y.data<float>(), ref.y.data(), s.T * s.N), 2e-6);
      const std::vector<double> exact = exact_reference(x, q);
      double max_excess = -1e30;
      for (int64_t i = 0; i < s.T * s.N; ++i) {
        const double slack = 1e-5 * (std::abs(exact[size_t(i)]) + ref.bound[size_t(i)]) + 1e-6;
        max_excess =
            std::max(max_excess, std::abs(y.data<float>()[i] - exact[size_t(i)]) - ref.bound[size_t(i)] - slack);
      }
      EXPECT_LE(max_excess, 0.0) << "a logit moved more than half an x step allows";
      // It is the int8 product, not the widened one.
      EXPECT_GT(graft::testing::rel_err(y.data<float>(), exact.data(), s.T * s.N), 1e-5);
      const ScopedEnv env("GRAFT_Q8_DOT", nullptr);  // Auto picks it at the level nf4_isa_detect() names
      if (nf4_isa_detect() == isa) {
        Tensor ya = graft::testing::poisoned({s.T, s.N});
        q6_gemv(x.data<float>(), s.T, s.K, q, ya.data<float>());
        EXPECT_EQ(0, std::memcmp(ya.raw(), y.raw(), size_t(s.T * s.N) * sizeof(float)));
      }
    }
}

TEST(CpuQ6Gemv, LinearQ6AgreesAcrossTheDecodeAndPanelPathsAndKOffTheBlocks) {
  for (const int64_t K : {192, 100}) {
    const Tensor wf = graft::testing::randn({70, K}, 3u, 0.05f);
    const q6::QuantizedWeight q = quantize(wf);
    for (const char* dot : {"exact", "auto"})
      for (int64_t T : {0, 1, 16, 17, 64, 130}) {
        SCOPED_TRACE(::testing::Message() << dot << " K " << K << " T " << T);
        const ScopedEnv env("GRAFT_Q8_DOT", std::string(dot) == "exact" ? "exact" : nullptr);
        const Tensor x = graft::testing::randn({T, K}, 5u);
        Tensor y = graft::testing::poisoned({T, 70});
        linear_q6(x, q, y);
        if (T == 0) continue;
        // T <= 16 runs q6_gemv (the Int8 dot under auto where the CPU has it and K % 64 == 0), T > 16 the exact
        // dequantized panels.
        const bool int8 = T <= 16 && K % 64 == 0 && q8_dot_detect() == Q8Dot::Int8;
        const std::vector<double> ref = int8 ? int8_reference(x, q).y : exact_reference(x, q);
        EXPECT_LT(graft::testing::rel_err(y.data<float>(), ref.data(), T * 70), int8 ? 2e-6 : 1e-5);
      }
  }
}

TEST(CpuQ6Gemv, RefusesMismatchedShapesAndDamagedWeights) {
  const Tensor wf = graft::testing::randn({8, 64}, 3u, 0.05f);
  q6::QuantizedWeight q = quantize(wf);
  const Tensor x = graft::testing::randn({2, 48}, 5u);
  Tensor y = graft::testing::poisoned({2, 8});
  EXPECT_THROW(linear_q6(x, q, y), Error);  // K 48 vs 64
  std::vector<float> out(16 * 64);
  EXPECT_THROW(q6_dequant_rows(q, 4, 9, out.data()), Error);  // rows past the end
  const Tensor x17 = graft::testing::randn({17, 64}, 5u);
  EXPECT_THROW(q6_gemv(x17.data<float>(), 17, 64, q, out.data()), Error);  // T > 16
  q.packed.resize(q.packed.size() - 1);  // a truncated weight
  const Tensor x64 = graft::testing::randn({2, 64}, 5u);
  try {
    linear_q6(x64, q, y);
    FAIL() << "no throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("re-quantize"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace graft::cpu
