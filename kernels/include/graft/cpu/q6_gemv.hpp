// Q6 (6-bit, graft::q6) × f32 matmul for the inference-only lm_head (--lm-head-dtype q6), the weight streamed once for
// all T rows, the codes unpacked in registers, each block summed unscaled and scaled once. The two ways to form the
// products are Q8's (graft/cpu/q8_gemv.hpp, chosen the same way: Q8Dot, GRAFT_Q8_DOT):
// - Exact: codes widened to f32; y equals dequantize-then-matmul within f32 rounding.
// - Int8: x quantized to int8 per 64-block (xs = absmax / 127, xq = round-to-nearest-even(x · 127 / absmax)) and the
//   6-bit · int8 products summed exactly in int32 (AVX-512 VNNI vpdpbusd, or AVX2 vpmaddubsw + vpmaddwd);
//   y[t, n] = Σ_b scale[n, b] · xs[t, b] · Σ_{k in b} q·xq. Its difference from Exact is bounded by
//   Σ_b scale[n, b] · (xs[t, b] / 2) · Σ_{k in b} |q|, plus f32 rounding.
// The SIMD paths (both dots) need K % 64 == 0; other K run the portable Exact path.
#pragma once

#include <cstdint>

#include "graft/cpu/q8_gemv.hpp"  // Nf4Isa, Q8Dot, q8_dot_detect, int8_dot_level
#include "graft/quant/q6.hpp"

namespace graft::cpu {

// y[T, N] (=) x[T, K] · dequant(w)ᵀ for w Q6 [N, K], T <= 16. `dot` Auto is q8_dot_detect(); Int8 runs the kernel
// int8_dot_level(isa) names and throws where that is Portable (no AVX2). Throws when `isa` is not supported by this
// CPU. Parallel over output rows.
void q6_gemv(const float* x, int64_t T, int64_t K, const q6::QuantizedWeight& w, float* y, Nf4Isa isa = Nf4Isa::Auto,
             Q8Dot dot = Q8Dot::Auto);

// out[(n1 - n0), K] (=) rows [n0, n1) of dequant(w), the values q6::dequantize gives (the panels of linear_q6's
// GEMM for T > 16).
void q6_dequant_rows(const q6::QuantizedWeight& w, int64_t n0, int64_t n1, float* out, Nf4Isa isa = Nf4Isa::Auto);

}  // namespace graft::cpu
