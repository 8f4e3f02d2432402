#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "graft/dtype.hpp"
#include "graft/error.hpp"

using namespace graft;

TEST(DType, SizesAndNames) {
  EXPECT_EQ(dtype_size(DType::F32), 4u);
  EXPECT_EQ(dtype_size(DType::BF16), 2u);
  EXPECT_EQ(dtype_size(DType::F8E4M3), 1u);
  EXPECT_EQ(dtype_size(DType::I64), 8u);
  for (DType t : kAllDTypes) {
    EXPECT_EQ(dtype_from_safetensors(dtype_safetensors_name(t)), t);
    EXPECT_EQ(dtype_from_name(dtype_name(t)), t);
  }
  EXPECT_EQ(dtype_from_name("bfloat16"), DType::BF16);
  EXPECT_EQ(dtype_from_name("float16"), DType::F16);
  EXPECT_FALSE(dtype_from_safetensors("F4").has_value());
  EXPECT_FALSE(dtype_from_safetensors("f32").has_value());  // safetensors names are upper case
}

TEST(DType, Bf16RoundsToNearestEven) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(f32_to_bf16(-2.0f), 0xc000);
  // 1 + 2^-8 lies exactly between 1.0 (0x3f80) and 1+2^-7 (0x3f81): ties to even -> 0x3f80
  EXPECT_EQ(f32_to_bf16(std::bit_cast<float>(0x3f808000u)), 0x3f80);
  // 0x3f818000 is a tie between 0x3f81 and 0x3f82: even is 0x3f82
  EXPECT_EQ(f32_to_bf16(std::bit_cast<float>(0x3f818000u)), 0x3f82);
  EXPECT_EQ(f32_to_bf16(std::bit_cast<float>(0x3f808001u)), 0x3f81);
  EXPECT_EQ(f32_to_bf16(INFINITY), 0x7f80);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::max()), 0x7f80);  // rounds up to inf
  for (uint32_t h = 0; h < 0x10000; ++h) {
    float f = bf16_to_f32(static_cast<uint16_t>(h));
    if (!std::isnan(f)) {
      ASSERT_EQ(f32_to_bf16(f), h);
    }
  }
}

TEST(DType, F16RoundTripsAllCodesAndRounds) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    float f = f16_to_f32(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      ASSERT_TRUE(std::isnan(f16_to_f32(f32_to_f16(f))));
      continue;
    }
    ASSERT_EQ(f32_to_f16(f), h) << std::hex << h;
  }
  EXPECT_EQ(f16_to_f32(0x3c00), 1.0f);
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(f16_to_f32(0x7bff), 65504.0f);
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);  // rounds to inf
  EXPECT_EQ(f32_to_f16(65519.0f), 0x7bff);
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -25)), 0x0000);   // tie to even (0)
  EXPECT_EQ(f32_to_f16(std::ldexp(3.0f, -25)), 0x0002);   // 1.5 ulp -> 2 (even)
  // Random values: result is the nearest f16 (compare against neighbours).
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> dist(-70000.f, 70000.f);
  for (int i = 0; i < 20000; ++i) {
    float x = dist(rng) * std::ldexp(1.0f, -static_cast<int>(rng() % 30));
    uint16_t h = f32_to_f16(x);
    float y = f16_to_f32(h);
    if (std::isinf(y)) continue;
    float up = f16_to_f32(static_cast<uint16_t>(h + 1)), dn = f16_to_f32(static_cast<uint16_t>(h - 1));
    if (!std::isnan(up) && !std::isinf(up)) {
      ASSERT_LE(std::fabs(x - y), std::fabs(x - up)) << x;
    }
    if ((h & 0x7fff) != 0 && !std::isnan(dn)) {
      ASSERT_LE(std::fabs(x - y), std::fabs(x - dn)) << x;
    }
  }
}

TEST(DType, Fp8E4M3MatchesOcpSpec) {
  EXPECT_EQ(fp8e4m3_to_f32(0x7e), 448.0f);   // max finite
  EXPECT_EQ(fp8e4m3_to_f32(0x01), std::ldexp(1.0f, -9));  // min subnormal
  EXPECT_EQ(fp8e4m3_to_f32(0x38), 1.0f);
  EXPECT_EQ(fp8e4m3_to_f32(0xb8), -1.0f);
  EXPECT_TRUE(std::isnan(fp8e4m3_to_f32(0x7f)));
  EXPECT_TRUE(std::isnan(fp8e4m3_to_f32(0xff)));
  EXPECT_EQ(f32_to_fp8e4m3(1000.0f), 0x7e);   // saturates
  EXPECT_EQ(f32_to_fp8e4m3(-1000.0f), 0xfe);
  EXPECT_EQ(f32_to_fp8e4m3(1.0625f), 0x38);   // tie between 1.0 (even) and 1.125 -> 1.0
  EXPECT_EQ(f32_to_fp8e4m3(1.1875f), 0x3a);   // tie between 1.125 (odd) and 1.25 -> 1.25
  for (int c = 0; c < 256; ++c) {
    float f = fp8e4m3_to_f32(static_cast<uint8_t>(c));
    if (std::isnan(f)) continue;
    ASSERT_EQ(f32_to_fp8e4m3(f), (c == 0x80 ? 0x80 : c)) << c;
  }
}

TEST(DType, Fp8E5M2) {
  EXPECT_EQ(fp8e5m2_to_f32(0x3c), 1.0f);
  EXPECT_EQ(fp8e5m2_to_f32(0x7b), 57344.0f);
  EXPECT_TRUE(std::isinf(fp8e5m2_to_f32(0x7c)));
  for (int c = 0; c < 256; ++c) {
    float f = fp8e5m2_to_f32(static_cast<uint8_t>(c));
    if (std::isnan(f)) continue;
    ASSERT_EQ(f32_to_fp8e5m2(f), c) << c;
  }
}

TEST(DType, BulkConversions) {
  float src[5] = {0.5f, -3.25f, 1e-3f, 7.0f, 0.0f};
  uint16_t b[5];
  convert_from_f32(DType::BF16, src, b, 5);
  float back[5];
  convert_to_f32(DType::BF16, b, back, 5);
  for (int i = 0; i < 5; ++i) EXPECT_NEAR(back[i], src[i], std::fabs(src[i]) * 1e-2f);
  int32_t ints[3] = {-4, 0, 9};
  convert_to_f32(DType::I32, ints, back, 3);
  EXPECT_EQ(back[0], -4.0f);
  EXPECT_EQ(back[2], 9.0f);
  EXPECT_THROW(convert_from_f32(DType::I32, src, ints, 1), graft::Error);
}
