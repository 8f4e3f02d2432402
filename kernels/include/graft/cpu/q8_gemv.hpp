// Q8 (8-bit, graft::q8) × f32 matmul for the inference-only lm_head: int8 codes widened to f32 in registers inside
// the dot product, each block summed unscaled and scaled once, the weight streamed once for all T rows.
#pragma once

#include <cstdint>

#include "graft/cpu/nf4_gemv.hpp"  // Nf4Isa: the SIMD level (GRAFT_NF4_ISA caps it for Q8 too)
#include "graft/quant/q8.hpp"

namespace graft::cpu {

// y[T, N] (=) x[T, K] · dequant(w)ᵀ for w Q8 [N, K], T <= 16. SIMD paths need blocksize % 16 == 0 and
// K % 16 == 0 (else the portable path runs, any layout). Throws when `isa` is not supported by this CPU.
// Parallel over output rows.
void q8_gemv(const float* x, int64_t T, int64_t K, const q8::QuantizedWeight& w, float* y, Nf4Isa isa = Nf4Isa::Auto);

// out[(n1 - n0), K] (=) rows [n0, n1) of dequant(w), the values q8::dequantize gives (the panels of linear_q8's
// GEMM for T > 16).
void q8_dequant_rows(const q8::QuantizedWeight& w, int64_t n0, int64_t n1, float* out, Nf4Isa isa = Nf4Isa::Auto);

}  // namespace graft::cpu
