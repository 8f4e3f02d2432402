#include "graft/quant/q8.hpp"
#include "graft/huge_pages.hpp"

#include <algorithm>
#include <cmath>

#include "graft/error.hpp"
#include "row_blocked.hpp"

namespace graft::q8 {

QuantizedWeight quantize(std::span<const float> w, const Dims& shape, int64_t blocksize) {
  GRAFT_CHECK(shape.size() == 2, "q8::quantize: the weight must be 2-d [N, K], got {}", shape.str());
  GRAFT_CHECK(static_cast<int64_t>(w.size()) == shape.numel(), "q8::quantize: {} values for a weight of shape {}",
              w.size(), shape.str());
  GRAFT_CHECK(blocksize >= 1 && blocksize <= 4096, "q8::quantize: blocksize {} is outside [1, 4096]", blocksize);
  QuantizedWeight out;
  out.shape = shape;
  out.blocksize = blocksize;
  const int64_t N = shape[0], K = shape[1], nb = out.blocks_per_row();
  resize_huge(out.q, static_cast<size_t>(N * K));  // streamed once a token: huge pages (graft/huge_pages.hpp)
  out.scale.resize(static_cast<size_t>(N * nb));
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t k0 = b * blocksize, k1 = std::min(K, k0 + blocksize);
      const float* src = w.data() + n * K;
      const float amax = quant_detail::block_absmax(src, n, k0, k1, shape, "q8::quantize");
      const float s = amax / 127.0f;
      out.scale[static_cast<size_t>(n * nb + b)] = s;
      const float inv = s > 0.0f ? 1.0f / s : 0.0f;
      int8_t* dst = out.q.data() + n * K;
      for (int64_t k = k0; k < k1; ++k)
        dst[k] = static_cast<int8_t>(std::clamp(std::lround(src[k] * inv), -127L, 127L));
    }
  }
  return out;
}

void dequantize_rows(const QuantizedWeight& w, int64_t n0, int64_t n1, float* out) {
  const int64_t K = w.cols(), nb = w.blocks_per_row();
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t k = 0; k < K; ++k)
      out[(n - n0) * K + k] =
          static_cast<float>(w.q[static_cast<size_t>(n * K + k)]) * w.scale[static_cast<size_t>(n * nb + k / w.blocksize)];
}

void dequantize(const QuantizedWeight& w, std::span<float> out) {
  quant_detail::dequantize_all(w, out, "q8::dequantize", dequantize_rows);
}

Tensor dequantize(const QuantizedWeight& w) { return quant_detail::dequantize_tensor(w, dequantize_rows); }

}  // namespace graft::q8
