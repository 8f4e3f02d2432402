// x quantized to int8 per block of the weight, for the Int8 dots of the quantized lm_heads (q8_gemv.cpp, q6_gemv.cpp;
// llama.cpp's Q8_0 activations): per (t, b) xs = absmax / 127, xq = round-to-nearest-even(x · 127 / absmax)
// (all-zero block: xs = 0, xq = 0) and corr = -offset · Σ xq. vpdpbusd multiplies unsigned by signed bytes, so a
// kernel feeds the weight codes as q + offset (Q8: 128, by flipping the sign bit; Q6: its stored codes q + 32) and
// corr takes offset · Σ xq back out.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace graft::cpu {

struct XInt8 {
  std::vector<int8_t> q;      // [T, K]
  std::vector<float> scale;   // [T, K / bs]
  std::vector<int32_t> corr;  // [T, K / bs]
};

// K % bs == 0.
inline void quantize_x(const float* x, int64_t T, int64_t K, int64_t bs, int32_t offset, XInt8& out) {
  const int64_t nb = K / bs;
  out.q.resize(static_cast<size_t>(T * K));
  out.scale.resize(static_cast<size_t>(T * nb));
  out.corr.resize(static_cast<size_t>(T * nb));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t b = 0; b < nb; ++b) {
      const float* xb = x + t * K + b * bs;
      int8_t* qb = out.q.data() + t * K + b * bs;
      float amax = 0.0f;
      for (int64_t k = 0; k < bs; ++k) amax = std::max(amax, std::fabs(xb[k]));
      const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
      int32_t sum = 0;
      for (int64_t k = 0; k < bs; ++k) {
        const float r = std::nearbyint(xb[k] * inv);  // the default rounding mode: to nearest, ties to even
        qb[k] = static_cast<int8_t>(std::clamp(r, -127.0f, 127.0f));
        sum += qb[k];
      }
      out.scale[static_cast<size_t>(t * nb + b)] = amax / 127.0f;
      out.corr[static_cast<size_t>(t * nb + b)] = -offset * sum;
    }
}

}  // namespace graft::cpu
