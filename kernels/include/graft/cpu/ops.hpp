// CPU reference ops (fp32, Eigen + OpenMP). Every op here is the oracle the CUDA kernels are tested
// against. Conventions: row-major contiguous f32 host tensors unless stated; outputs are written
// with `=` (overwritten) unless the name says `_acc` (`+=`). Shapes are validated on entry.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "graft/quant/nf4.hpp"
#include "graft/tensor.hpp"

namespace graft::cpu {

// ---------------------------------------------------------------- linear algebra
// y = x · wᵀ (+ bias).  x [T, K] f32, w [N, K] f32, bias [N] f32 or undefined  ->  y [T, N] (=)
void linear(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& y);
// y = x · dequant(w)ᵀ with w NF4 [N, K]; dequantizes 64-row panels, never the whole matrix.  y [T, N] (=)
void linear_nf4(const Tensor& x, const nf4::QuantizedWeight& w, Tensor& y);
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
enum class RopeKind { Default, Linear, Llama3, Yarn };
struct RopeParams {
  RopeKind kind = RopeKind::Default;
  double theta = 10000.0;
  int rot_dim = 0;                 // rotated dims (head_dim × partial_rotary_factor); even
  double factor = 1.0;             // linear / llama3 / yarn scale factor
  double low_freq_factor = 1.0, high_freq_factor = 4.0;  // llama3
  double original_max_position = 8192;                    // llama3 / yarn
  double beta_fast = 32.0, beta_slow = 1.0;               // yarn
  double mscale = 0.0, mscale_all_dim = 0.0;              // yarn (DeepSeek)
  double attention_factor = 0.0;   // yarn: 0 = derive like transformers
  bool truncate = true;            // yarn
};
// inv_freq [rot_dim/2] and the cos/sin amplitude (attention_scaling), as transformers computes them.
struct RopeTable {
  std::vector<float> inv_freq;
  float attention_scaling = 1.0f;
};
RopeTable rope_table(const RopeParams& p);
// Rotate-half RoPE in place on the first rot_dim dims of each head (HF Llama convention: pairs
// (i, i + rot_dim/2)).  x [T, heads, head_dim], positions [T]
void rope_rotate_half(Tensor& x, std::span<const int32_t> positions, const RopeTable& table, int rot_dim);
// Interleaved-pair RoPE (pairs (2i, 2i+1)), e.g. DeepSeek's q_pe/k_pe before HF's permutation.
void rope_interleaved(Tensor& x, std::span<const int32_t> positions, const RopeTable& table, int rot_dim);

// ---------------------------------------------------------------- attention
struct AttentionMask {
  bool causal = true;
  int64_t sliding_window = 0;   // > 0: key must satisfy q_pos - k_pos < window
  int64_t chunk_size = 0;       // > 0: key and query in the same chunk (Llama 4 chunked attention)
  std::span<const int32_t> q_segments, k_segments;  // packed samples: attend within equal segment ids
};
// Softmax attention with grouped-query heads (query head h reads kv head h / (Hq / Hkv)).
// q [T, Hq, D], k [S, Hkv, D], v [S, Hkv, Dv], q_pos [T], k_pos [S]  ->  out [T, Hq, Dv] (=)
// lse (optional) [T, Hq]: log-sum-exp of the scaled scores (for backward). Rows with no visible
// key produce zeros (and lse = -inf).
void attention(const Tensor& q, const Tensor& k, const Tensor& v, std::span<const int32_t> q_pos,
               std::span<const int32_t> k_pos, const AttentionMask& mask, float scale, Tensor& out,
               Tensor* lse = nullptr);

// ---------------------------------------------------------------- MoE routing
enum class RouterKind {
  SoftmaxTopK,        // softmax over experts, top-k, optional renorm (Mixtral, Qwen-MoE)
  SigmoidGroupTopK,   // DeepSeek-V3: sigmoid, +bias for selection, group-limited, renorm, × scale
  SoftmaxGroupTopK,   // DeepSeek-V2 group_limited_greedy: softmax, group max, top groups
  TopKSigmoid,        // Llama 4: top-k on logits, sigmoid of the chosen logits
};
struct RouterParams {
  RouterKind kind = RouterKind::SoftmaxTopK;
  int top_k = 2;
  bool renormalize = true;        // norm_topk_prob
  int n_group = 1, topk_group = 1;
  float routed_scaling_factor = 1.0f;
  const float* correction_bias = nullptr;  // [E] (DeepSeek-V3 e_score_correction_bias)
};
// logits [T, E] -> ids [T, k] i32 (=), weights [T, k] f32 (=). Ties resolve to the lower expert
// index (torch.topk order on CPU); chosen experts are listed in descending score order.
void moe_route(const Tensor& logits, const RouterParams& p, Tensor& ids, Tensor& weights);

// Token-major -> expert-major metadata: rows sorted by (expert, token, slot) with counts/offsets.
struct MoePermutation {
  std::vector<int32_t> order;     // [T*k]: position p holds the flat (token*k + slot) index
  std::vector<int32_t> counts;    // [E]
  std::vector<int32_t> offsets;   // [E+1]
};
MoePermutation moe_permute_plan(const Tensor& ids, int num_experts);

}  // namespace graft::cpu
