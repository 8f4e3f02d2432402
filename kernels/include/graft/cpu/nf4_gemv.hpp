// NF4 matmul for decode-shaped inputs: decodes the 4-bit codes in registers inside the dot product
// (no dequantized panel), streaming the packed weight once; all T rows share each decoded block.
#pragma once

#include <cstdint>
#include <span>

#include "graft/quant/nf4.hpp"

namespace graft::cpu {

enum class Nf4Isa { Auto, Portable, Avx2, Avx512 };

// Best ISA this CPU supports; GRAFT_NF4_ISA=portable|avx2|avx512 caps it (for tests and benches).
Nf4Isa nf4_isa_detect();
bool nf4_isa_supported(Nf4Isa isa);
// `isa`, with Auto replaced by nf4_isa_detect(); throws, naming `what`, when this CPU does not support it.
Nf4Isa nf4_isa_resolve(Nf4Isa isa, const char* what);

// y[T, N] (=) x[T, K] · dequant(w)ᵀ for w NF4 [N, K], T <= 16. Each block's absmax is decoded from w's
// (double-quantized) state inside the loop. SIMD paths need blocksize % 32 == 0, else the portable path runs (any
// layout); when K % blocksize != 0 (blocks straddle rows, e.g. K = 172) 64-row panels are dequantized with SIMD and
// multiplied in f32. Throws when `isa` is not supported by this CPU. Parallel over output rows.
void nf4_gemv(const float* x, int64_t T, int64_t K, const nf4::QuantizedWeight& w, float* y,
              Nf4Isa isa = Nf4Isa::Auto);

// out[(n1 - n0), K] (=) rows [n0, n1) of dequant(w), the same values as nf4::dequantize (the panels of
// linear_nf4's prefill GEMM). Parallel over rows.
void nf4_dequant_rows(const nf4::QuantizedWeight& w, int64_t n0, int64_t n1, float* out, Nf4Isa isa = Nf4Isa::Auto);

// nf4::block_absmax(w)[block], decoded alone (what the kernels above use).
float nf4_absmax_at(const nf4::QuantizedWeight& w, int64_t block);

}  // namespace graft::cpu
