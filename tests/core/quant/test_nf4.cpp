// NF4 quantization against bitsandbytes' documented algorithm, with hand-checked vectors.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "graft/quant/nf4.hpp"

using namespace graft;

TEST(Nf4, CodesMapToThemselvesAndThresholdsGoDown) {
  const auto& c = nf4::code();
  for (int i = 0; i < 16; ++i) EXPECT_EQ(nf4::quantize_value(c[static_cast<size_t>(i)]), i) << c[static_cast<size_t>(i)];
  // A value exactly on bitsandbytes' threshold goes to the lower code (strict '>').
  EXPECT_EQ(nf4::quantize_value(0.03979014977812767f), 7);
  EXPECT_EQ(nf4::quantize_value(std::nextafter(0.03979014977812767f, 1.0f)), 8);
  EXPECT_EQ(nf4::quantize_value(0.5f), 12);   // 0.5 < midpoint(0.4407, 0.5626) = 0.50166
  EXPECT_EQ(nf4::quantize_value(0.51f), 13);
  EXPECT_EQ(nf4::quantize_value(-0.9f), 0);
  EXPECT_EQ(nf4::quantize_value(-0.8f), 1);
  EXPECT_EQ(nf4::quantize_value(NAN), 0);     // all comparisons false
  // Every value goes to its nearest code (ties aside).
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  for (int k = 0; k < 10000; ++k) {
    float x = u(rng);
    int q = nf4::quantize_value(x);
    for (int j = 0; j < 16; ++j)
      ASSERT_LE(std::fabs(x - c[static_cast<size_t>(q)]), std::fabs(x - c[static_cast<size_t>(j)]) + 1e-7f) << x;
  }
}

TEST(Nf4, HandCheckedBlockPacksHighNibbleFirst) {
  // One block of 64: absmax = 2.0, so values are scaled by 0.5 before coding.
  std::vector<float> x(64, 0.0f);
  x[0] = 2.0f;    // 1.0      -> 15
  x[1] = -2.0f;   // -1.0     -> 0
  x[2] = 1.0f;    // 0.5      -> 12
  x[3] = 0.0f;    // 0.0      -> 7
  x[4] = -0.5f;   // -0.25    -> 4 (-0.2844; midpoint to -0.1848 is -0.2346)
  x[5] = 0.3f;    // 0.15     -> 9 (0.1609)
  auto q = nf4::quantize(x, Dims{8, 8}, /*double_quant=*/false);
  ASSERT_EQ(q.packed.size(), 32u);
  ASSERT_EQ(q.absmax.size(), 1u);
  EXPECT_EQ(q.absmax[0], 2.0f);
  EXPECT_EQ(q.packed[0], 0xF0);
  EXPECT_EQ(q.packed[1], 0xC7);
  EXPECT_EQ(q.packed[2], 0x49);
  EXPECT_EQ(q.packed[3], 0x77);  // zeros -> code 7 (0.0)
  std::vector<float> y(64);
  nf4::dequantize(q, y);
  EXPECT_EQ(y[0], 2.0f);
  EXPECT_EQ(y[1], -2.0f);
  EXPECT_FLOAT_EQ(y[2], 0.44070982933044434f * 2.0f);
  EXPECT_EQ(y[3], 0.0f);
  EXPECT_FLOAT_EQ(y[4], -0.28444138169288635f * 2.0f);
  EXPECT_FLOAT_EQ(y[5], 0.16093020141124725f * 2.0f);
}

TEST(Nf4, DynamicMapShape) {
  const auto& m = nf4::dynamic_map_signed();
  for (size_t i = 1; i < 256; ++i) ASSERT_LT(m[i - 1], m[i]) << i;
  EXPECT_EQ(m[127], 0.0f);
  EXPECT_EQ(m[255], 1.0f);
  EXPECT_NEAR(m[0], -0.99297, 1e-5);
  // Exact codes map to themselves; the search never returns 255 unless x is nearest to 1.0.
  for (int i = 0; i < 256; ++i) EXPECT_EQ(nf4::quantize_dynamic(m, m[static_cast<size_t>(i)]), i) << i;
  // Between two codes: the nearer one wins; the exact midpoint keeps the final search pivot.
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  for (int k = 0; k < 20000; ++k) {
    float x = u(rng);
    int q = nf4::quantize_dynamic(m, x);
    for (int j = 0; j < 256; ++j)
      ASSERT_LE(std::fabs(x - m[static_cast<size_t>(q)]), std::fabs(x - m[static_cast<size_t>(j)]) + 1e-7f) << x;
  }
}

TEST(Nf4, DynamicMapMatchesPyTorchReference) {
  const std::string script = std::string(GRAFT_SOURCE_DIR) + "/tools/nf4/dynamic_map.py";
  FILE* p = popen((std::string(GRAFT_REF_PYTHON) + " " + script + " 2>/dev/null").c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::vector<float> ref;
  char buf[128];
  while (fgets(buf, sizeof buf, p)) ref.push_back(std::strtof(buf, nullptr));
  int rc = pclose(p);
  if (rc != 0 || ref.size() != 256) GTEST_SKIP() << "the reference venv (tools/.venv, scripts/setup.sh) with torch is unavailable";
  const auto& m = nf4::dynamic_map_signed();
  for (size_t i = 0; i < 256; ++i) EXPECT_EQ(m[i], ref[i]) << i;
}

TEST(Nf4, DoubleQuantHandChecked) {
  // 3 blocks of 64 with absmax 1, 2, 3: offset = 2; residuals -1, 0, 1; nested absmax = 1.
  std::vector<float> x(192, 0.0f);
  x[0] = 1.0f;
  x[64] = -2.0f;
  x[130] = 3.0f;
  auto q = nf4::quantize(x, Dims{192}, /*double_quant=*/true);
  EXPECT_EQ(q.nested_offset, 2.0f);
  ASSERT_EQ(q.nested_absmax.size(), 1u);
  EXPECT_EQ(q.nested_absmax[0], 1.0f);
  ASSERT_EQ(q.absmax_q.size(), 3u);
  const auto& m = nf4::dynamic_map_signed();
  // -1 -> nearest is m[0] (-0.993), 0 -> 127, +1 -> 255 (exactly 1.0)
  EXPECT_EQ(q.absmax_q[0], 0);
  EXPECT_EQ(q.absmax_q[1], 127);
  EXPECT_EQ(q.absmax_q[2], 255);
  auto am = nf4::block_absmax(q);
  EXPECT_FLOAT_EQ(am[0], m[0] + 2.0f);
  EXPECT_EQ(am[1], 2.0f);
  EXPECT_EQ(am[2], 3.0f);
}

TEST(Nf4, RoundTripErrorAndOddSizes) {
  std::mt19937 rng(42);
  std::normal_distribution<float> g(0.f, 0.02f);
  for (int64_t n : {1, 63, 64, 65, 127, 4096, 64 * 300 + 7}) {
    std::vector<float> x(static_cast<size_t>(n));
    for (auto& v : x) v = g(rng);
    for (bool dq : {false, true}) {
      auto q = nf4::quantize(x, Dims{n}, dq);
      EXPECT_EQ(q.packed.size(), static_cast<size_t>((n + 1) / 2));
      std::vector<float> y(static_cast<size_t>(n));
      nf4::dequantize(q, y);
      auto am = nf4::block_absmax(q);
      double num = 0, den = 0;
      for (int64_t i = 0; i < n; ++i) {
        float a = am[static_cast<size_t>(i / 64)];
        // Each value is within half the largest NF4 gap (0.16) of the block's absmax, plus DQ error.
        ASSERT_LE(std::fabs(x[static_cast<size_t>(i)] - y[static_cast<size_t>(i)]), 0.17f * a + 1e-6f) << n << " " << i;
        num += double(x[static_cast<size_t>(i)] - y[static_cast<size_t>(i)]) * (x[static_cast<size_t>(i)] - y[static_cast<size_t>(i)]);
        den += double(x[static_cast<size_t>(i)]) * x[static_cast<size_t>(i)];
      }
      if (n >= 4096) {
        EXPECT_LT(std::sqrt(num / den), 0.12) << "relative RMS error of NF4 on gaussian weights";
      }
    }
  }
}

TEST(Nf4, ZeroBlockAndErrors) {
  std::vector<float> x(128, 0.0f);
  x[100] = 0.5f;
  auto q = nf4::quantize(x, Dims{2, 64}, false);
  EXPECT_EQ(q.absmax[0], 0.0f);
  // bitsandbytes: 0 * (1/0) = NaN -> code 0; dequantized value -1 * 0 = -0.
  EXPECT_EQ(q.packed[0], 0x00);
  auto y = nf4::dequantize(q);
  for (int i = 0; i < 64; ++i) EXPECT_EQ(y.data<float>()[i], 0.0f);
  EXPECT_EQ(y.data<float>()[100], 0.5f);
  std::vector<float> bad(10);
  EXPECT_THROW(nf4::quantize(bad, Dims{11}), Error);
  EXPECT_THROW(nf4::quantize(bad, Dims{10}, true, 3), Error);
  q.packed.pop_back();
  EXPECT_THROW(nf4::dequantize(q), Error);
}

TEST(Nf4, MemoryOfDoubleQuant) {
  std::vector<float> x(64 * 256 * 4, 0.01f);
  auto q = nf4::quantize(x, Dims{256, 256}, true);
  // 0.5 byte/weight + 1 byte per 64 + 4 bytes per 256 blocks + offset
  EXPECT_EQ(q.bytes(), size_t(32768 + 1024 + 16 + 4));
}
