// Q8 (the 8-bit lm_head format, graft/quant/q8.hpp): hand-checked codes and scales, the error bound, layouts with a
// short last block, all-zero blocks, and refusals of malformed input.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "graft/error.hpp"
#include "graft/quant/q8.hpp"

using namespace graft;

namespace {
q8::QuantizedWeight quantize(const std::vector<float>& w, int64_t n, int64_t k, int64_t bs) {
  return q8::quantize(std::span<const float>(w), Dims{n, k}, bs);
}
}  // namespace

TEST(Q8, HandCheckedCodesAndScales) {
  // One row, two blocks of 4: [127, -63.5, 0.5, 1] (absmax 127: scale 1, 0.5 rounds away from zero) and
  // [0, 0, 0, 0] (scale 0, codes 0); K = 8.
  const auto q = quantize({127.f, -63.5f, 0.5f, 1.f, 0.f, 0.f, 0.f, 0.f}, 1, 8, 4);
  ASSERT_EQ(q.scale.size(), 2u);
  EXPECT_EQ(q.scale[0], 1.0f);
  EXPECT_EQ(q.scale[1], 0.0f);
  const std::vector<int8_t> want = {127, -64, 1, 1, 0, 0, 0, 0};
  EXPECT_EQ(q.q, want);
  EXPECT_EQ(q.bytes(), 8u + 2 * sizeof(float));
  const Tensor d = q8::dequantize(q);
  EXPECT_EQ(d.data<float>()[0], 127.f);
  EXPECT_EQ(d.data<float>()[1], -64.f);
  EXPECT_EQ(d.data<float>()[7], 0.f);
}

TEST(Q8, ErrorIsAtMostHalfAStepAndBlocksNeverStraddleRows) {
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.f, 0.05f);
  const int64_t N = 7, K = 100, bs = 64;  // a 36-element last block in every row
  std::vector<float> w(size_t(N * K));
  for (auto& v : w) v = nd(rng);
  w[3] = 4.0f;  // an outlier: only its own block's step grows
  const auto q = quantize(w, N, K, bs);
  EXPECT_EQ(q.blocks_per_row(), 2);
  ASSERT_EQ(q.scale.size(), size_t(N * 2));
  EXPECT_FLOAT_EQ(q.scale[0], 4.0f / 127.0f);
  const Tensor d = q8::dequantize(q);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) {
      const int64_t b = k / bs;
      float amax = 0;
      for (int64_t j = b * bs; j < std::min(K, (b + 1) * bs); ++j) amax = std::max(amax, std::fabs(w[size_t(n * K + j)]));
      const float step = amax / 127.0f;
      EXPECT_LE(std::fabs(d.data<float>()[n * K + k] - w[size_t(n * K + k)]), 0.5f * step * (1 + 1e-5f) + 1e-12f)
          << n << "," << k;
    }
}

TEST(Q8, RefusesMalformedInput) {
  const std::vector<float> w(12, 0.5f);
  EXPECT_THROW(q8::quantize(std::span<const float>(w), Dims{12}, 64), Error);     // not 2-d
  EXPECT_THROW(q8::quantize(std::span<const float>(w), Dims{5, 3}, 64), Error);   // 15 values expected
  EXPECT_THROW(q8::quantize(std::span<const float>(w), Dims{3, 4}, 0), Error);    // blocksize
  std::vector<float> bad = w;
  bad[7] = std::numeric_limits<float>::quiet_NaN();
  try {
    q8::quantize(std::span<const float>(bad), Dims{3, 4}, 2);
    FAIL() << "no throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[1, 3]"), std::string::npos) << e.what();  // names the element
  }
}
