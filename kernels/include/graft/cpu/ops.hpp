// CPU reference ops (fp32, Eigen + OpenMP). Every op here is the oracle the CUDA kernels are tested
// against. Conventions: row-major contiguous f32 host tensors unless stated; outputs are written
// with `=` (overwritten) unless the name says `_acc` (`+=`). Shapes are validated on entry.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "graft/backend/ops_desc.hpp"
#include "graft/quant/nf4.hpp"
#include "graft/quant/q6.hpp"
#include "graft/quant/q8.hpp"
#include "graft/tensor.hpp"

namespace graft::cpu {

using namespace graft::ops;  // descriptor types shared with every backend

// ---------------------------------------------------------------- linear algebra
// y = x · wᵀ (+ bias).  x [T, K] f32, w [N, K] f32, bias [N] f32 or undefined  ->  y [T, N] (=)
void linear(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& y);
// y = x · dequant(w)ᵀ with w NF4 [N, K]; up to 4 (AVX2) / 7 (AVX-512) rows decode codes in registers (nf4_gemv), more
// dequantizes L2-sized row panels (nf4_dequant_rows) for the GEMM, never the whole matrix.  y [T, N] (=)
void linear_nf4(const Tensor& x, const nf4::QuantizedWeight& w, Tensor& y);
// y = x · dequant(w)ᵀ with w Q8 [N, K] (the inference-only 8-bit lm_head): T <= 16 widens the int8 codes in
// registers (q8_gemv), larger T dequantizes L2-sized row panels for the GEMM.  y [T, N] (=)
void linear_q8(const Tensor& x, const q8::QuantizedWeight& w, Tensor& y);
// The same with w Q6 [N, K] (the inference-only 6-bit lm_head; q6_gemv for T <= 16).  y [T, N] (=)
void linear_q6(const Tensor& x, const q6::QuantizedWeight& w, Tensor& y);
// LoRA delta for rows using one adapter: y += scale · (x · aᵀ) · bᵀ.
// x [T, K], a [r, K], b [N, r], y [T, N] (+=)
void lora_acc(const Tensor& x, const Tensor& a, const Tensor& b, float scale, Tensor& y);

// ---------------------------------------------------------------- elementwise / norms
// y = x / sqrt(mean(x²) + eps) · w.  x [T, H], w [H]  ->  y [T, H] (=); y may alias x.
void rmsnorm(const Tensor& x, const Tensor& w, float eps, Tensor& y);
// out = silu(gate) · up.  gate, up [T, I] -> out [T, I] (=)
void swiglu(const Tensor& gate, const Tensor& up, Tensor& out);
// out[t] = table[ids[t]].  ids [T] i32 (checked in range), table [V, H] -> out [T, H] (=)
void embedding(std::span<const int32_t> ids, const Tensor& table, Tensor& out);

// ---------------------------------------------------------------- rotary embeddings
// Rotate-half RoPE in place on the first rot_dim dims of each head (HF Llama convention: pairs
// (i, i + rot_dim/2)).  x [T, heads, head_dim], positions [T]
void rope_rotate_half(Tensor& x, std::span<const int32_t> positions, const RopeTable& table, int rot_dim);
// Interleaved-pair RoPE (pairs (2i, 2i+1)), e.g. DeepSeek's q_pe/k_pe before HF's permutation.
void rope_interleaved(Tensor& x, std::span<const int32_t> positions, const RopeTable& table, int rot_dim);

// ---------------------------------------------------------------- attention
// Softmax attention with grouped-query heads (query head h reads kv head h / (Hq / Hkv)).
// q [T, Hq, D], k [S, Hkv, D], v [S, Hkv, Dv], q_pos [T], k_pos [S]  ->  out [T, Hq, Dv] (=)
// lse (optional) [T, Hq]: log-sum-exp of the scaled scores (for backward). Rows with no visible
// key produce zeros (and lse = -inf).
void attention(const Tensor& q, const Tensor& k, const Tensor& v, std::span<const int32_t> q_pos,
               std::span<const int32_t> k_pos, const AttentionMask& mask, float scale, Tensor& out,
               Tensor* lse = nullptr);

// Backward of `attention` (no lse needed: P is recomputed). q, k, v, dout as in the forward;
// dq [T, Hq, D], dk [S, Hkv, D], dv [S, Hkv, Dv] (=). Rows with no visible key get zero gradients.
void attention_bwd(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& dout, std::span<const int32_t> q_pos,
                   std::span<const int32_t> k_pos, const AttentionMask& mask, float scale, Tensor& dq, Tensor& dk,
                   Tensor& dv);

// DeepSeek MLA, absorbed form over the latent cache (see mla_attention.cpp for the math).
// q_nope [T, H, dn], q_pe [T, H, dr] (RoPE applied), c [S, kv_lora_rank] (normalised latent),
// k_pe [S, dr] (RoPE applied), w_kvb [H·(dn+dv), kv_lora_rank]  ->  out [T, H, dv] (=)
void mla_attention_absorbed(const Tensor& q_nope, const Tensor& q_pe, const Tensor& c, const Tensor& k_pe,
                            const Tensor& w_kvb, int64_t v_head_dim, std::span<const int32_t> q_pos,
                            std::span<const int32_t> k_pos, const AttentionMask& mask, float scale, Tensor& out);

// ---------------------------------------------------------------- MoE routing
// logits [T, E] -> ids [T, k] i32 (=), weights [T, k] f32 (=). Ties resolve to the lower expert
// index (torch.topk order on CPU); chosen experts are listed in descending score order.
void moe_route(const Tensor& logits, const RouterParams& p, Tensor& ids, Tensor& weights);

MoePermutation moe_permute_plan(const Tensor& ids, int num_experts);

}  // namespace graft::cpu
