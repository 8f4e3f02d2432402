#include "graft/dtype.hpp"

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>

#include "graft/error.hpp"

namespace graft {
namespace {
struct DTypeInfo {
  DType t;
  size_t size;
  std::string_view name, st_name;
  bool is_float;
};
constexpr DTypeInfo kInfo[] = {
    {DType::F64, 8, "f64", "F64", true},         {DType::F32, 4, "f32", "F32", true},
    {DType::F16, 2, "f16", "F16", true},         {DType::BF16, 2, "bf16", "BF16", true},
    {DType::F8E4M3, 1, "fp8e4m3", "F8_E4M3", true}, {DType::F8E5M2, 1, "fp8e5m2", "F8_E5M2", true},
    {DType::I64, 8, "i64", "I64", false},        {DType::I32, 4, "i32", "I32", false},
    {DType::I16, 2, "i16", "I16", false},        {DType::I8, 1, "i8", "I8", false},
    {DType::U8, 1, "u8", "U8", false},           {DType::Bool, 1, "bool", "BOOL", false},
};
const DTypeInfo& info(DType t) {
  for (const auto& i : kInfo)
    if (i.t == t) return i;
  GRAFT_FAIL("", "invalid DType value {}", static_cast<int>(t));
}
}  // namespace

size_t dtype_size(DType t) { return info(t).size; }
std::string_view dtype_name(DType t) { return info(t).name; }
std::string_view dtype_safetensors_name(DType t) { return info(t).st_name; }
bool dtype_is_float(DType t) { return info(t).is_float; }

std::optional<DType> dtype_from_safetensors(std::string_view name) {
  for (const auto& i : kInfo)
    if (i.st_name == name) return i.t;
  return std::nullopt;
}

std::optional<DType> dtype_from_name(std::string_view n) {
  for (const auto& i : kInfo)
    if (i.name == n || i.st_name == n) return i.t;
  if (n == "float32" || n == "float") return DType::F32;
  if (n == "float64" || n == "double") return DType::F64;
  if (n == "bfloat16") return DType::BF16;
  if (n == "float16" || n == "fp16" || n == "half") return DType::F16;
  if (n == "float8_e4m3fn" || n == "fp8" || n == "e4m3") return DType::F8E4M3;
  if (n == "float8_e5m2" || n == "e5m2") return DType::F8E5M2;
  if (n == "int64") return DType::I64;
  if (n == "int32") return DType::I32;
  if (n == "uint8") return DType::U8;
  return std::nullopt;
}

// ---- bf16 ----
uint16_t f32_to_bf16(float f) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
float bf16_to_f32(uint16_t h) { return std::bit_cast<float>(static_cast<uint32_t>(h) << 16); }

// ---- f16 (IEEE binary16) ----
uint16_t f32_to_f16(float f) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  uint32_t sign = (u >> 16) & 0x8000u;
  uint32_t absu = u & 0x7fffffffu;
  if (absu > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u | ((absu >> 13) & 0x3ffu));  // NaN
  if (absu >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow (incl. rounding) -> inf
  if (absu < 0x38800000u) {  // subnormal or zero in f16: value < 2^-14
    // f16 subnormal = m * 2^-24. Compute round(abs / 2^-24) with ties to even using float math exactly.
    float a = std::bit_cast<float>(absu);
    float scaled = a * 16777216.0f;  // exact (power of two scaling, no overflow here)
    float r = std::nearbyint(scaled);  // default rounding mode: to nearest even
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(r));
  }
  uint32_t exp = ((absu >> 23) - 112u) << 10;  // rebias 127 -> 15
  uint32_t mant = absu & 0x7fffffu;
  uint32_t h = exp | (mant >> 13);
  uint32_t rest = mant & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h += 1;  // may carry into exponent: correct
  return static_cast<uint16_t>(sign | h);
}
float f16_to_f32(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0) {
    float v = static_cast<float>(mant) * (1.0f / 16777216.0f);  // mant * 2^-24
    return sign ? -v : v;
  }
  if (exp == 31) return std::bit_cast<float>(sign | 0x7f800000u | (mant << 13));
  return std::bit_cast<float>(sign | ((exp + 112u) << 23) | (mant << 13));
}

// ---- fp8: generic small-float decode/encode by exhaustive nearest search over the 256 codes ----
namespace {
template <int E, int M, bool kFn>
float fp8_decode(uint8_t v) {
  const int bias = (1 << (E - 1)) - 1;
  int sign = v >> 7;
  int exp = (v >> M) & ((1 << E) - 1);
  int mant = v & ((1 << M) - 1);
  float out;
  if (kFn) {  // e4m3fn: exp all-ones & mant all-ones is NaN; no inf
    if (exp == (1 << E) - 1 && mant == (1 << M) - 1) return std::numeric_limits<float>::quiet_NaN();
  } else if (exp == (1 << E) - 1) {
    if (mant) return std::numeric_limits<float>::quiet_NaN();
    return sign ? -INFINITY : INFINITY;
  }
  if (exp == 0)
    out = std::ldexp(static_cast<float>(mant), 1 - bias - M);
  else
    out = std::ldexp(1.0f + static_cast<float>(mant) / (1 << M), exp - bias);
  return sign ? -out : out;
}
template <int E, int M, bool kFn>
uint8_t fp8_encode(float f) {
  if (std::isnan(f)) return kFn ? 0x7f : 0x7e;
  uint8_t sign = std::signbit(f) ? 0x80 : 0;
  float a = std::fabs(f);
  // Largest finite positive code.
  uint8_t max_code = kFn ? 0x7e : static_cast<uint8_t>(((1 << E) - 2) << M | ((1 << M) - 1));
  float maxv = fp8_decode<E, M, kFn>(max_code);
  if (a >= maxv) {
    if (!kFn && std::isinf(a)) return sign | 0x7c;
    if (!kFn) {
      // e5m2: values beyond max round to inf only past the halfway point to the next binade step.
      float next = std::ldexp(1.0f, (1 << E) - 1 - ((1 << (E - 1)) - 1));  // 2^(emax+1)
      if (a >= (maxv + next) / 2) return sign | 0x7c;
    }
    return sign | max_code;  // saturate
  }
  // Binary search over the monotonically increasing positive codes 0..max_code.
  int lo = 0, hi = max_code;
  while (hi - lo > 1) {
    int mid = (lo + hi) / 2;
    if (fp8_decode<E, M, kFn>(static_cast<uint8_t>(mid)) <= a) lo = mid; else hi = mid;
  }
  float vl = fp8_decode<E, M, kFn>(static_cast<uint8_t>(lo));
  float vh = fp8_decode<E, M, kFn>(static_cast<uint8_t>(hi));
  int code;
  if (a - vl < vh - a) code = lo;
  else if (a - vl > vh - a) code = hi;
  else code = (lo & 1) ? hi : lo;  // tie: even mantissa
  if (vl == a) code = lo;
  return static_cast<uint8_t>(sign | code);
}
}  // namespace

uint8_t f32_to_fp8e4m3(float f) { return fp8_encode<4, 3, true>(f); }
float fp8e4m3_to_f32(uint8_t v) { return fp8_decode<4, 3, true>(v); }
uint8_t f32_to_fp8e5m2(float f) { return fp8_encode<5, 2, false>(f); }
float fp8e5m2_to_f32(uint8_t v) { return fp8_decode<5, 2, false>(v); }

void convert_to_f32(DType from, const void* src, float* dst, size_t n) {
  switch (from) {
    case DType::F32: std::memcpy(dst, src, n * 4); return;
    case DType::F64: { auto s = static_cast<const double*>(src); for (size_t i = 0; i < n; ++i) dst[i] = static_cast<float>(s[i]); return; }
    case DType::BF16: { auto s = static_cast<const uint16_t*>(src); for (size_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(s[i]); return; }
    case DType::F16: { auto s = static_cast<const uint16_t*>(src); for (size_t i = 0; i < n; ++i) dst[i] = f16_to_f32(s[i]); return; }
    case DType::F8E4M3: {
      float lut[256]; for (int i = 0; i < 256; ++i) lut[i] = fp8e4m3_to_f32(static_cast<uint8_t>(i));
      auto s = static_cast<const uint8_t*>(src); for (size_t i = 0; i < n; ++i) dst[i] = lut[s[i]]; return; }
    case DType::F8E5M2: {
      float lut[256]; for (int i = 0; i < 256; ++i) lut[i] = fp8e5m2_to_f32(static_cast<uint8_t>(i));
      auto s = static_cast<const uint8_t*>(src); for (size_t i = 0; i < n; ++i) dst[i] = lut[s[i]]; return; }
    case DType::I64: { auto s = static_cast<const int64_t*>(src); for (size_t i = 0; i < n; ++i) dst[i] = static_cast<float>(s[i]); return; }
    case DType::I32: { auto s = static_cast<const int32_t*>(src); for (size_t i = 0; i < n; ++i) dst[i] = static_cast<float>(s[i]); return; }
    case DType::I16: { auto s = static_cast<const int16_t*>(src); for (size_t i = 0; i < n; ++i) dst[i] = static_cast<float>(s[i]); return; }
    case DType::I8: { auto s = static_cast<const int8_t*>(src); for (size_t i = 0; i < n; ++i) dst[i] = static_cast<float>(s[i]); return; }
    case DType::U8: case DType::Bool: { auto s = static_cast<const uint8_t*>(src); for (size_t i = 0; i < n; ++i) dst[i] = static_cast<float>(s[i]); return; }
  }
  GRAFT_FAIL("", "convert_to_f32: unsupported dtype {}", static_cast<int>(from));
}

void convert_from_f32(DType to, const float* src, void* dst, size_t n) {
  switch (to) {
    case DType::F32: std::memcpy(dst, src, n * 4); return;
    case DType::F64: { auto d = static_cast<double*>(dst); for (size_t i = 0; i < n; ++i) d[i] = src[i]; return; }
    case DType::BF16: { auto d = static_cast<uint16_t*>(dst); for (size_t i = 0; i < n; ++i) d[i] = f32_to_bf16(src[i]); return; }
    case DType::F16: { auto d = static_cast<uint16_t*>(dst); for (size_t i = 0; i < n; ++i) d[i] = f32_to_f16(src[i]); return; }
    case DType::F8E4M3: { auto d = static_cast<uint8_t*>(dst); for (size_t i = 0; i < n; ++i) d[i] = f32_to_fp8e4m3(src[i]); return; }
    case DType::F8E5M2: { auto d = static_cast<uint8_t*>(dst); for (size_t i = 0; i < n; ++i) d[i] = f32_to_fp8e5m2(src[i]); return; }
    default: break;
  }
  GRAFT_FAIL("convert to a floating-point dtype instead", "convert_from_f32: target dtype {} is not a float type",
             dtype_name(to));
}

}  // namespace graft
