// CPU references (fp32, the oracle) for the NF4 dequant-matmul with LoRA: forward and backward.
// Row-major contiguous f32 host tensors; W is NF4 [N, K] (nf4::QuantizedWeight, any blocksize).
#pragma once

#include "graft/quant/nf4.hpp"
#include "graft/tensor.hpp"

namespace graft::cpu {

// Y[T, N] (=) X·dequant(W)ᵀ (+ bias[N]) (+ s·(X·Aᵀ)·Bᵀ). bias / a / b may be undefined (a and b
// together). = linear_nf4 + bias + lora_acc.
void nf4_matmul_fwd(const Tensor& x, const nf4::QuantizedWeight& w, const Tensor& bias, const Tensor& a,
                    const Tensor& b, float scale, Tensor& y);

// Backward of Y = X·Wᵀ + s·(X·Aᵀ)·Bᵀ with W = dequant(NF4) [N, K]:
//   dx [T, K] (=) dY·W + s·(dY·B)·A
//   da [r, K] (=) s·(dY·B)ᵀ·X          (skipped when da == nullptr)
//   db [N, r] (=) s·dYᵀ·(X·Aᵀ)         (skipped when db == nullptr)
// dy [T, N], x [T, K], a [r, K], b [N, r]; a/b undefined (r = 0): dx = dY·W only. W is dequantized in
// 64-row panels, never whole.
void nf4_matmul_bwd(const Tensor& dy, const Tensor& x, const nf4::QuantizedWeight& w, const Tensor& a,
                    const Tensor& b, float scale, Tensor& dx, Tensor* da, Tensor* db);

}  // namespace graft::cpu
