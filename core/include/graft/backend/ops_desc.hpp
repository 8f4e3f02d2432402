// Descriptor types shared by every backend's ops (CPU reference, CUDA): RoPE variants, attention
// masks, MoE router parameters and the token -> expert permutation plan.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace graft::ops {

// ---------------------------------------------------------------- rotary embeddings
// Dynamic: NTK-aware scaling applied only once a sequence outgrows original_max_position (see
// rope_table_dynamic); below that it is the default table.
enum class RopeKind { Default, Linear, Llama3, Yarn, Dynamic };
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
// inv_freq and attention_scaling exactly as transformers' ROPE_INIT_FUNCTIONS compute them.
RopeTable rope_table(const RopeParams& p);
// transformers' dynamic NTK for a sequence of `seq_len` positions: base is scaled by
// ((factor·seq_len / original_max) − (factor − 1))^(dim / (dim − 2)) when seq_len > original_max.
RopeTable rope_table_dynamic(const RopeParams& p, int64_t seq_len);

// ---------------------------------------------------------------- attention
struct AttentionMask {
  bool causal = true;
  int64_t sliding_window = 0;   // > 0: key must satisfy q_pos - k_pos < window
  int64_t chunk_size = 0;       // > 0: key and query in the same chunk (Llama 4 chunked attention)
  std::span<const int32_t> q_segments, k_segments;  // packed samples: attend within equal segment ids
};

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

// Token-major -> expert-major metadata: rows sorted by (expert, token, slot) with counts/offsets.
struct MoePermutation {
  std::vector<int32_t> order;     // [T*k]: position p holds the flat (token*k + slot) index
  std::vector<int32_t> counts;    // [E]
  std::vector<int32_t> offsets;   // [E+1]
};

}  // namespace graft::ops
