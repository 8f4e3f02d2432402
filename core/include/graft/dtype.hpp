// Element types graft stores, their sizes and names, and the scalar conversions between the
// narrow float formats (bf16, f16, fp8 e4m3/e5m2) and f32.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace graft {

enum class DType : uint8_t { F64, F32, F16, BF16, F8E4M3, F8E5M2, I64, I32, I16, I8, U8, Bool };

inline constexpr DType kAllDTypes[] = {DType::F64, DType::F32,  DType::F16, DType::BF16,
                                       DType::F8E4M3, DType::F8E5M2, DType::I64, DType::I32,
                                       DType::I16, DType::I8, DType::U8, DType::Bool};

// Bytes per element.
size_t dtype_size(DType t);
// graft's short name: "f32", "bf16", "fp8e4m3", "u8" ...
std::string_view dtype_name(DType t);
// The safetensors name: "F32", "BF16", "F8_E4M3", "U8" ...
std::string_view dtype_safetensors_name(DType t);
// Parses a safetensors dtype string; nullopt for names graft does not support.
std::optional<DType> dtype_from_safetensors(std::string_view name);
// Parses graft's short names and common aliases ("float32", "bfloat16", "float16", "fp16" ...).
std::optional<DType> dtype_from_name(std::string_view name);
bool dtype_is_float(DType t);

// ---- scalar conversions (round-to-nearest-even, NaN preserved, no exceptions) ----
uint16_t f32_to_bf16(float f);
float bf16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);
float f16_to_f32(uint16_t h);
// OCP FP8 E4M3 ("fn": no infinities, max 448, one NaN pattern per sign). Saturates to ±448.
uint8_t f32_to_fp8e4m3(float f);
float fp8e4m3_to_f32(uint8_t v);
// OCP FP8 E5M2 (IEEE-like, has infinities).
uint8_t f32_to_fp8e5m2(float f);
float fp8e5m2_to_f32(uint8_t v);

// Bulk conversion of `n` elements from `src` (dtype `from`) into f32 `dst`.
void convert_to_f32(DType from, const void* src, float* dst, size_t n);
// Bulk conversion of `n` f32 elements into `dst` of dtype `to` (float dtypes only).
void convert_from_f32(DType to, const float* src, void* dst, size_t n);

}  // namespace graft
