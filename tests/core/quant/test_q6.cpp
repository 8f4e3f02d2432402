// Q6 (the 6-bit lm_head format, graft/quant/q6.hpp): hand-checked codes, scales and packed bytes, the error bound,
// rows with a padded last block, all-zero blocks, and refusals of malformed input.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "graft/error.hpp"
#include "graft/quant/q6.hpp"

using namespace graft;

namespace {
q6::QuantizedWeight quantize(const std::vector<float>& w, int64_t n, int64_t k) {
  return q6::quantize(std::span<const float>(w), Dims{n, k});
}
}  // namespace

TEST(Q6, HandCheckedCodesScalesAndPacking) {
  // One row of 64: w[i] = i - 31 for i < 63 (absmax 31: scale 1, codes = w), w[63] = -30.5 (rounds away: -31).
  std::vector<float> w(64);
  for (int i = 0; i < 63; ++i) w[size_t(i)] = float(i - 31);
  w[63] = -30.5f;
  const auto q = quantize(w, 1, 64);
  ASSERT_EQ(q.scale.size(), 1u);
  EXPECT_EQ(q.scale[0], 1.0f);
  ASSERT_EQ(q.packed.size(), 48u);
  EXPECT_EQ(q.bytes(), 48u + sizeof(float));
  for (int i = 0; i < 63; ++i) EXPECT_EQ(q6::code(q, 0, i), i - 31) << i;
  EXPECT_EQ(q6::code(q, 0, 63), -31);
  // The layout q6.hpp documents, from u = q + 32: byte 0 = u[0] & 15 | (u[32] & 15) << 4 = 1 | 1 << 4 (u[0] = 1,
  // u[32] = 33); byte 32 = u[0] >> 4 | (u[16] >> 4) << 2 | (u[32] >> 4) << 4 | (u[48] >> 4) << 6 with u[16] = 17,
  // u[48] = 49: 0 | 1 << 2 | 2 << 4 | 3 << 6.
  EXPECT_EQ(q.packed[0], 0x11);
  EXPECT_EQ(q.packed[32], 0 | 1 << 2 | 2 << 4 | 3 << 6);
  const Tensor d = q6::dequantize(q);
  EXPECT_EQ(d.data<float>()[0], -31.f);
  EXPECT_EQ(d.data<float>()[62], 31.f);
  EXPECT_EQ(d.data<float>()[63], -31.f);
}

TEST(Q6, ErrorIsAtMostHalfAStepZeroBlocksStayZeroAndTheLastBlockIsPadded) {
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.f, 0.05f);
  const int64_t N = 7, K = 100;  // a 36-element last block in every row, padded to 64
  std::vector<float> w(size_t(N * K));
  for (auto& v : w) v = nd(rng);
  w[3] = 4.0f;  // an outlier: only its own block's step grows
  for (int64_t k = 64; k < K; ++k) w[size_t(2 * K + k)] = 0.0f;  // row 2's last block all zero
  const auto q = quantize(w, N, K);
  EXPECT_EQ(q.blocks_per_row(), 2);
  ASSERT_EQ(q.scale.size(), size_t(N * 2));
  ASSERT_EQ(q.packed.size(), size_t(N * 2 * 48));
  EXPECT_FLOAT_EQ(q.scale[0], 4.0f / 31.0f);
  EXPECT_EQ(q.scale[2 * 2 + 1], 0.0f);
  const Tensor d = q6::dequantize(q);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) {
      const int64_t b = k / 64;
      float amax = 0;
      for (int64_t j = b * 64; j < std::min(K, (b + 1) * 64); ++j) amax = std::max(amax, std::fabs(w[size_t(n * K + j)]));
      const float step = amax / 31.0f;
      EXPECT_LE(std::fabs(d.data<float>()[n * K + k] - w[size_t(n * K + k)]), 0.5f * step * (1 + 1e-5f) + 1e-12f)
          << n << "," << k;
    }
  for (int64_t k = 64; k < K; ++k) EXPECT_EQ(d.data<float>()[2 * K + k], 0.0f);
  // The padding codes past K are zero (u = 32), so a kernel reading whole blocks adds nothing.
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = K; k < 128; ++k) EXPECT_EQ(q6::code(q, n, k), 0) << n << "," << k;
}

TEST(Q6, RefusesMalformedInput) {
  const std::vector<float> w(12, 0.5f);
  EXPECT_THROW(q6::quantize(std::span<const float>(w), Dims{12}), Error);    // not 2-d
  EXPECT_THROW(q6::quantize(std::span<const float>(w), Dims{5, 3}), Error);  // 15 values expected
  std::vector<float> bad = w;
  bad[7] = std::numeric_limits<float>::infinity();
  try {
    q6::quantize(std::span<const float>(bad), Dims{3, 4});
    FAIL() << "no throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[1, 3]"), std::string::npos) << e.what();  // names the element
  }
}
