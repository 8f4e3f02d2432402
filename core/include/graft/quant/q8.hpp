// Q8: symmetric 8-bit weights in blocks along each row, for the inference-only lm_head (--lm-head-dtype q8).
//
// Layout: a weight [N, K] is stored row by row; row n is split into ceil(K / blocksize) blocks of `blocksize`
// consecutive elements (the last block of a row may be shorter; blocks never straddle rows, so any K works).
// scale[n, b] = absmax(block) / 127 (f32); q = round-half-away(w / scale), clamped to [-127, 127]; an all-zero block
// has scale 0 and codes 0. Dequantized value: q * scale (one f32 multiply, the product the kernels compute).
// At blocksize 64 this is 8.5 bits per weight, llama.cpp's Q8_0 density (Q8_0: 32 int8 + an f16 scale); the
// largest error of a weight is scale / 2 = absmax / 254 of its block.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "graft/tensor.hpp"

namespace graft::q8 {

struct QuantizedWeight {
  Dims shape;               // [N, K]
  int64_t blocksize = 64;
  std::vector<int8_t> q;    // [N, K]
  std::vector<float> scale;  // [N, blocks_per_row()]
  int64_t rows() const { return shape[0]; }
  int64_t cols() const { return shape[1]; }
  int64_t blocks_per_row() const { return (cols() + blocksize - 1) / blocksize; }
  size_t bytes() const { return q.size() + scale.size() * sizeof(float); }
};

// Quantizes w (numel = shape.numel(), f32, row-major 2-d shape). Throws on a non-2-d shape, a size mismatch,
// a blocksize outside [1, 4096] or a non-finite weight (naming the element).
QuantizedWeight quantize(std::span<const float> w, const Dims& shape, int64_t blocksize = 64);
// out[numel]: q * scale, element by element.
void dequantize(const QuantizedWeight& w, std::span<float> out);
// out[(n1 - n0) * K]: rows [n0, n1) of the same (the portable path of the CPU kernels' panel dequantization).
void dequantize_rows(const QuantizedWeight& w, int64_t n0, int64_t n1, float* out);
Tensor dequantize(const QuantizedWeight& w);  // f32 tensor of w.shape

}  // namespace graft::q8
