// NF4 (4-bit NormalFloat) quantization, bit-compatible with bitsandbytes' quantize_4bit /
// dequantize_4bit (quant_type "nf4"), with optional double quantization of the absmax values.
//
// Layout (bitsandbytes): the weight is flattened row-major and split into blocks of `blocksize`
// (64) elements. absmax[b] = max |x| over block b. Each element is multiplied by 1/absmax[b]
// (fp32 reciprocal, as the CUDA kernel does) and mapped to a 4-bit code by bitsandbytes' decision
// tree over the midpoints of the 16 NF4 values. Two codes per byte; the HIGH nibble holds the
// element with the even index. The final partial block is zero-padded.
//
// Double quantization: offset = mean(absmax); (absmax - offset) is quantized blockwise (blocks of
// 256) to 8 bits with the signed dynamic map; one fp32 scale (nested_absmax) per 256 absmax values.
// Decoding: absmax[b] = dynamic_map[q[b]] * nested_absmax[b / 256] + offset   (fp32 arithmetic).
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <vector>

#include "graft/tensor.hpp"

namespace graft::nf4 {

// The 16 NF4 code values, index 0..15.
const std::array<float, 16>& code();
// bitsandbytes' create_dynamic_map(signed=True): 256 sorted values in [-1, 1].
const std::array<float, 256>& dynamic_map_signed();

// bitsandbytes' dQuantizeNF4: x (already scaled into [-1, 1]) -> 4-bit code. NaN maps to 0.
uint8_t quantize_value(float x);
// bitsandbytes' dQuantize<0> (binary search over a sorted 256-entry code, then a midpoint test).
uint8_t quantize_dynamic(const std::array<float, 256>& map, float x);

struct QuantizedWeight {
  Dims shape;                  // logical shape of the weight, e.g. [out, in]
  DType orig_dtype = DType::BF16;  // dtype recorded in the quant state (what dequantization yields)
  int64_t blocksize = 64;
  bool double_quant = true;
  std::vector<uint8_t> packed;         // [ceil(numel/2)]: two codes per byte, high nibble first
  std::vector<float> absmax;           // [num_blocks] when !double_quant
  std::vector<uint8_t> absmax_q;       // [num_blocks] when double_quant
  int64_t nested_blocksize = 256;
  std::vector<float> nested_absmax;    // [ceil(num_blocks / 256)]
  float nested_offset = 0.0f;

  int64_t numel() const { return shape.numel(); }
  int64_t num_blocks() const { return (numel() + blocksize - 1) / blocksize; }
  // Bytes this representation occupies (packed + absmax storage + nested state).
  size_t bytes() const;
};

// Quantizes `x` (numel = shape.numel(), f32) like bitsandbytes.quantize_4bit(quant_type="nf4").
// The offset of double quantization is the fp32 rounding of the exact mean of the absmax values.
QuantizedWeight quantize(std::span<const float> x, const Dims& shape, bool double_quant = true,
                         int64_t blocksize = 64, DType orig_dtype = DType::BF16);
QuantizedWeight quantize(const Tensor& w, bool double_quant = true, int64_t blocksize = 64);

// One double-quantized absmax: map_value * nested_absmax, rounded to f32, then + offset, rounded again,
// as bitsandbytes computes it (two separate kernels). Never fused into one FMA (nf4.cpp is compiled with
// -ffp-contract=off): a fused result differs in the last bit and so would every weight of the block.
float decode_absmax(float map_value, float nested_absmax, float offset);
// Per-block absmax values (decodes the nested state when double-quantized).  // [num_blocks]
std::vector<float> block_absmax(const QuantizedWeight& q);
// Dequantizes into `out` (numel f32 values): code[nibble] * absmax[block].
void dequantize(const QuantizedWeight& q, std::span<float> out);
Tensor dequantize(const QuantizedWeight& q);  // f32 tensor of q.shape

}  // namespace graft::nf4
