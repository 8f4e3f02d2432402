#include "graft/quant/q6.hpp"

#include <algorithm>
#include <cmath>

#include "graft/error.hpp"
#include "graft/huge_pages.hpp"
#include "row_blocked.hpp"

namespace graft::q6 {

QuantizedWeight quantize(std::span<const float> w, const Dims& shape) {
  GRAFT_CHECK(shape.size() == 2, "q6::quantize: the weight must be 2-d [N, K], got {}", shape.str());
  GRAFT_CHECK(static_cast<int64_t>(w.size()) == shape.numel(), "q6::quantize: {} values for a weight of shape {}",
              w.size(), shape.str());
  QuantizedWeight out;
  out.shape = shape;
  const int64_t N = shape[0], K = shape[1], nb = out.blocks_per_row();
  resize_huge(out.packed, static_cast<size_t>(N * nb * kBlockBytes));  // streamed once a token (huge_pages.hpp)
  out.scale.resize(static_cast<size_t>(N * nb));
  for (int64_t n = 0; n < N; ++n) {
    const float* src = w.data() + n * K;
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t k0 = b * kBlock, k1 = std::min(K, k0 + kBlock);
      const float amax = quant_detail::block_absmax(src, n, k0, k1, shape, "q6::quantize");
      const float s = amax / 31.0f;
      out.scale[static_cast<size_t>(n * nb + b)] = s;
      const float inv = s > 0.0f ? 1.0f / s : 0.0f;
      uint8_t u[kBlock];
      for (int64_t i = 0; i < kBlock; ++i)
        u[i] = k0 + i < k1 ? static_cast<uint8_t>(std::clamp(std::lround(src[k0 + i] * inv), -31L, 31L) + 32) : 32;
      uint8_t* dst = out.block(n, b);
      for (int i = 0; i < 32; ++i) dst[i] = static_cast<uint8_t>((u[i] & 15) | (u[i + 32] & 15) << 4);
      for (int i = 0; i < 16; ++i)
        dst[32 + i] = static_cast<uint8_t>(u[i] >> 4 | (u[i + 16] >> 4) << 2 | (u[i + 32] >> 4) << 4 |
                                           (u[i + 48] >> 4) << 6);
    }
  }
  return out;
}

int code(const QuantizedWeight& w, int64_t n, int64_t k) {
  const int64_t i = k % kBlock;
  const uint8_t* blk = w.block(n, k / kBlock);
  const int lo = i < 32 ? blk[i] & 15 : blk[i - 32] >> 4;
  const int hi = (blk[32 + (i & 15)] >> (2 * (i >> 4))) & 3;
  return (lo | hi << 4) - 32;
}

void dequantize_rows(const QuantizedWeight& w, int64_t n0, int64_t n1, float* out) {
  const int64_t K = w.cols(), nb = w.blocks_per_row();
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t k = 0; k < K; ++k)
      out[(n - n0) * K + k] =
          static_cast<float>(code(w, n, k)) * w.scale[static_cast<size_t>(n * nb + k / kBlock)];
}

void dequantize(const QuantizedWeight& w, std::span<float> out) {
  quant_detail::dequantize_all(w, out, "q6::dequantize", dequantize_rows);
}

Tensor dequantize(const QuantizedWeight& w) { return quant_detail::dequantize_tensor(w, dequantize_rows); }

}  // namespace graft::q6
