// Q6: symmetric 6-bit weights in blocks of 64 along each row, for the inference-only lm_head (--lm-head-dtype q6).
// 6.5 bits per weight: llama.cpp's Q6_K density (6.5625), the type its 4-bit quantizations give the output tensor.
//
// Values: row n of a weight [N, K] is split into ceil(K / 64) blocks of 64 consecutive elements (blocks never straddle
// rows; a row's last block is padded with zeros when K % 64 != 0). scale[n, b] = absmax(block) / 31 (f32);
// q = round-half-away(w / scale), clamped to [-31, 31]; an all-zero block has scale 0 and codes 0. Dequantized value:
// q * scale (one f32 multiply, the product the kernels compute). The largest error of a weight is scale / 2 =
// absmax / 62 of its block (Q8's is absmax / 254).
//
// Packing: each block is 48 bytes of the unsigned codes u = q + 32 (in [1, 63]; 32 = zero):
//   bytes  0..31: byte i = (u[i] & 15) | (u[i + 32] & 15) << 4       (the low four bits of the 64 codes)
//   bytes 32..47: byte i = u[i] >> 4 | (u[i + 16] >> 4) << 2 | (u[i + 32] >> 4) << 4 | (u[i + 48] >> 4) << 6
// so the low nibbles of 64 codes are one 32-byte load split by a shift, and the high two bits of the four 16-code
// quarters are one 16-byte load rotated per quarter (kernels/cpu/q6_gemv.cpp).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "graft/tensor.hpp"

namespace graft::q6 {

inline constexpr int64_t kBlock = 64;        // weights per block
inline constexpr int64_t kBlockBytes = 48;  // packed bytes per block

struct QuantizedWeight {
  Dims shape;                  // [N, K]
  std::vector<uint8_t> packed;  // [N, blocks_per_row(), 48]
  std::vector<float> scale;     // [N, blocks_per_row()]
  int64_t rows() const { return shape[0]; }
  int64_t cols() const { return shape[1]; }
  int64_t blocks_per_row() const { return (cols() + kBlock - 1) / kBlock; }
  size_t bytes() const { return packed.size() + scale.size() * sizeof(float); }
  // The 48 packed bytes of block b of row n.
  const uint8_t* block(int64_t n, int64_t b) const { return packed.data() + (n * blocks_per_row() + b) * kBlockBytes; }
  uint8_t* block(int64_t n, int64_t b) { return packed.data() + (n * blocks_per_row() + b) * kBlockBytes; }
};

// Quantizes w (numel = shape.numel(), f32, row-major 2-d shape). Throws on a non-2-d shape, a size mismatch or a
// non-finite weight (naming the element).
QuantizedWeight quantize(std::span<const float> w, const Dims& shape);
// The signed code q (in [-31, 31]) of weight [n, k], from the packing above.
int code(const QuantizedWeight& w, int64_t n, int64_t k);
// out[numel]: q * scale, element by element.
void dequantize(const QuantizedWeight& w, std::span<float> out);
// out[(n1 - n0) * K]: rows [n0, n1) of the same (the portable path of the CPU kernels' panel dequantization).
void dequantize_rows(const QuantizedWeight& w, int64_t n0, int64_t n1, float* out);
Tensor dequantize(const QuantizedWeight& w);  // f32 tensor of w.shape

}  // namespace graft::q6
