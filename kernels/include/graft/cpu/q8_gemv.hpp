// Q8 (8-bit, graft::q8) × f32 matmul for the inference-only lm_head, the weight streamed once for all T rows, each
// block summed unscaled and scaled once. Two ways to form the products (Q8Dot):
// - Exact: int8 codes widened to f32 in registers; y equals dequantize-then-matmul within f32 rounding.
// - Int8 (llama.cpp's Q8_0 · Q8_0 scheme): each weight block of x is quantized to int8 too, xs = absmax / 127,
//   xq = round-to-nearest-even(x · 127 / absmax) (all-zero block: xs = 0, xq = 0), and the int8 · int8 products are
//   summed exactly in int32 (AVX-512 VNNI vpdpbusd, or AVX2 vpmaddubsw + vpmaddwd);
//   y[t, n] = Σ_b scale[n, b] · xs[t, b] · Σ_{k in b} q·xq.
//   Its difference from Exact is bounded by Σ_b scale[n, b] · (xs[t, b] / 2) · Σ_{k in b} |q| (each x moves by at
//   most half a step), plus f32 rounding. It needs blocksize % 64 == 0 and K % blocksize == 0; other layouts run Exact.
#pragma once

#include <cstdint>

#include "graft/cpu/nf4_gemv.hpp"  // Nf4Isa: the SIMD level (GRAFT_NF4_ISA caps it for Q8 too)
#include "graft/quant/q8.hpp"

namespace graft::cpu {

enum class Q8Dot { Auto, Exact, Int8 };

// Whether Int8 runs at SIMD level `isa` (Auto: nf4_isa_detect()) on this CPU: Avx512 with AVX-512 F, BW and VNNI,
// else Avx2 (and Avx512 without VNNI) with AVX2 + FMA; never Portable.
bool q8_int8_dot_supported(Nf4Isa isa = Nf4Isa::Auto);
// The kernel an Int8 dot (Q8 or Q6) runs for a resolved level `isa`: Avx512 (the VNNI kernel), Avx2 (also on AVX-512
// CPUs without VNNI), or Portable (it cannot run).
Nf4Isa int8_dot_level(Nf4Isa isa);
// What Q8Dot::Auto means here, for the Q8 and the Q6 lm_head: Int8 where supported, unless GRAFT_Q8_DOT=exact (GRAFT_Q8_DOT=int8|exact; a CPU
// without AVX2 runs Exact either way, as does GRAFT_NF4_ISA=portable). Read at every call.
Q8Dot q8_dot_detect();

// y[T, N] (=) x[T, K] · dequant(w)ᵀ for w Q8 [N, K], T <= 16. SIMD paths need blocksize % 16 == 0 and
// K % 16 == 0 (else the portable path runs, any layout). `dot` Int8 runs where q8_int8_dot_supported(isa) (VNNI
// kernel at Avx512 where the CPU has VNNI, else the AVX2 kernel). Throws when `isa` or an explicit Int8 is not
// supported by this CPU. Parallel over output rows.
void q8_gemv(const float* x, int64_t T, int64_t K, const q8::QuantizedWeight& w, float* y, Nf4Isa isa = Nf4Isa::Auto,
             Q8Dot dot = Q8Dot::Auto);

// out[(n1 - n0), K] (=) rows [n0, n1) of dequant(w), the values q8::dequantize gives (the panels of linear_q8's
// GEMM for T > 16).
void q8_dequant_rows(const q8::QuantizedWeight& w, int64_t n0, int64_t n1, float* out, Nf4Isa isa = Nf4Isa::Auto);

}  // namespace graft::cpu
