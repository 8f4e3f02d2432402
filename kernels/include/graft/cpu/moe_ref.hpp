// CPU references for the MoE training path (the oracle of kernels/cuda/moe_*.cu): router backward,
// permute / unpermute forward and backward, and the grouped expert MLP (gate_up -> SwiGLU -> down,
// per-expert LoRA) forward and backward.
//
// Conventions shared with the CUDA kernels (graft/cuda/moe.hpp):
//  * T tokens, k slots per token, n = T*k routed rows, E experts. The plan (cpu::moe_permute_plan)
//    sorts the flat index f = t*k + j by (expert, t, j): order[p] = f, offsets[E+1].
//  * Expert-major row p holds token order[p] / k. xp [n, H] is the permuted input.
//  * Grouped weights are stacked per expert: W [E, N, K] (row e*N + o is output o of expert e),
//    y_p = x_p · W_eᵀ for the rows p of expert e.
//  * Per-expert LoRA of one grouped GEMM: A [E, r, K], B [E, N, r], scale s:
//    y_p += s · (x_p · A_eᵀ) · B_eᵀ. gate_up is ONE fused GEMM, W_gu [E, 2I, H] (rows 0..I-1 gate,
//    I..2I-1 up: the transformers v5 / PEFT target_parameters layout), with one LoRA of shape
//    A [E, r, H], B [E, 2I, r]. Separate gate/up adapters stack into it (rank r_g + r_u,
//    B block-diagonal).
//  * Everything here is plain C++ templated on the scalar (float = the oracle, double = for
//    finite-difference tests); outputs are written with `=` unless stated.
#pragma once

#include <cmath>
#include <cstdint>
#include <span>
#include <vector>

#include "graft/backend/ops_desc.hpp"
#include "graft/tensor.hpp"

namespace graft::cpu {

// ---------------------------------------------------------------- router backward
// d logits from d weights for the selection `ids` made by cpu::moe_route (the selection is
// piecewise constant: no gradient flows through it; DeepSeek-V3's correction bias gets none).
//   logits [T, E] f32, ids [T, k] i32, dweights [T, k] f32  ->  dlogits [T, E] f32 (=)
// Per kind (research/training-anchors.md §6.6), with rsf = routed_scaling_factor:
//   SoftmaxTopK        p = softmax(z); w_i = rsf·p_i / Σ_S p (renorm) or rsf·p_i; dz = p ⊙ (dp − <p, dp>)
//   SoftmaxGroupTopK   same, denominator Σ_S p + 1e-20 (DeepSeek-V2)
//   SigmoidGroupTopK   s = σ(z); w_i = rsf·s_i / (Σ_S s + 1e-20) (renorm) or rsf·s_i; dz = ds ⊙ s(1−s)
//   TopKSigmoid        w_i = rsf·σ(z_i) (never renormalised); dz_i = dw_i·rsf·σ(z_i)(1−σ(z_i))
void moe_route_bwd(const Tensor& logits, const ops::RouterParams& p, const Tensor& ids, const Tensor& dweights,
                   Tensor& dlogits);

// ---------------------------------------------------------------- permute / unpermute
// xp[p] = x[order[p] / k] · (scale ? scale[order[p]] : 1).   x [T, H] -> xp [n, H] (=)
// (scale = the combine weights when they multiply the expert INPUT: Llama 4.)
template <class S>
void moe_permute_fwd(const S* x, int64_t T, int64_t H, int k, const ops::MoePermutation& plan, const S* scale, S* xp);
// dx[t] = Σ_j scale·dxp[pos(t,j)] (=);  dscale[f] = <x[t], dxp[pos(f)]> (=, when dscale != null).
template <class S>
void moe_permute_bwd(const S* x, int64_t T, int64_t H, int k, const ops::MoePermutation& plan, const S* scale,
                     const S* dxp, S* dx, S* dscale);
// out[t] = Σ_j (w ? w[t*k+j] : 1) · yp[pos(t,j)], summed in slot order.   yp [n, H] -> out [T, H] (=)
template <class S>
void moe_unpermute_fwd(const S* yp, int64_t T, int64_t H, int k, const ops::MoePermutation& plan, const S* w, S* out);
// dyp[pos(t,j)] = w·dout[t] (=);  dw[t*k+j] = <yp[pos(t,j)], dout[t]> (=, when dw != null).
template <class S>
void moe_unpermute_bwd(const S* yp, int64_t T, int64_t H, int k, const ops::MoePermutation& plan, const S* w,
                       const S* dout, S* dyp, S* dw);
// pos(f): inverse of plan.order.
std::vector<int32_t> moe_inverse_order(const ops::MoePermutation& plan);

// ---------------------------------------------------------------- grouped GEMM + expert MLP
template <class S>
struct GroupedLoraRef {
  const S* a = nullptr;  // [E, r, K]
  const S* b = nullptr;  // [E, N, r]
  int rank = 0;          // 0: no LoRA
  S scale = 1;
};
// y[p] = x[p] · W_eᵀ (+ s·(x[p]·A_eᵀ)·B_eᵀ) for the rows p of expert e.
//   x [n, K], w [E, N, K], offsets [E+1] (offsets[E] = n)  ->  y [n, N] (=)
template <class S>
void moe_grouped_matmul(const S* x, int64_t K, const S* w, int64_t N, std::span<const int32_t> offsets,
                        const GroupedLoraRef<S>& lora, S* y);

// Its backward from dy [n, N]: dx [n, K] (=) = dy·W_e + s·(dy·B_e)·A_e; da [E, r, K] (=) =
// s·(dy·B_e)ᵀ·x; db [E, N, r] (=) = s·dyᵀ·(x·A_eᵀ) (da / db resized; emptied without LoRA).
template <class S>
void moe_grouped_matmul_bwd(const S* x, int64_t K, const S* w, int64_t N, std::span<const int32_t> offsets,
                            const GroupedLoraRef<S>& lora, const S* dy, S* dx, std::vector<S>& da, std::vector<S>& db);

template <class S>
struct ExpertMlpRef {
  int E = 0;
  int64_t H = 0, I = 0;
  const S* w_gu = nullptr;    // [E, 2I, H]
  const S* w_down = nullptr;  // [E, H, I]
  GroupedLoraRef<S> lora_gu, lora_down;
};
template <class S>
struct ExpertMlpCache {
  std::vector<S> gu;  // [n, 2I] pre-activation (gate | up)
  std::vector<S> h;   // [n, I]  silu(gate)·up
  std::vector<S> y;   // [n, H]  expert output (before the combine weight)
};
template <class S>
struct ExpertMlpGrads {
  std::vector<S> dxp;               // [n, H]
  std::vector<S> da_gu, db_gu;      // [E, r, H], [E, 2I, r]   (empty without LoRA)
  std::vector<S> da_down, db_down;  // [E, r, I], [E, H, r]
};
// Forward of the routed experts on permuted rows xp [n, H].
template <class S>
void moe_expert_mlp_fwd(const ExpertMlpRef<S>& m, const S* xp, std::span<const int32_t> offsets, ExpertMlpCache<S>& c);
// Backward from dyp [n, H]: dX through both GEMMs and SwiGLU, per-expert LoRA dA / dB (=).
template <class S>
void moe_expert_mlp_bwd(const ExpertMlpRef<S>& m, const S* xp, std::span<const int32_t> offsets,
                        const ExpertMlpCache<S>& c, const S* dyp, ExpertMlpGrads<S>& g);

// silu and its derivative, the exact formulas the CUDA epilogues use.
template <class S>
inline S silu_ref(S x) {
  return x / (S(1) + std::exp(-x));
}

}  // namespace graft::cpu
