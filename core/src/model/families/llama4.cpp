// Llama 4 text (model_type "llama4" text_config / "llama4_text"): GQA with interleaved (complex)
// RoPE on RoPE layers, NoPE every 4th layer (no_rope_layers) with attention temperature tuning,
// chunked attention on RoPE layers, weightless L2 qk-norm (use_qk_norm) on RoPE layers; MoE layers
// (interleave_moe_layer_step): top-k on router logits, sigmoid of the chosen logits scales the expert
// *input*, fused experts gate_up_proj [E, H, 2I] / down_proj [E, I, H] in (in, out) order, plus a
// shared expert; dense layers use intermediate_size_mlp.
#include "../family_spec.hpp"

namespace graft::model {
FamilySpec spec_llama4(const config::ModelConfig& cfg) {
  FamilySpec s;
  s.mlp = "feed_forward";
  s.moe = "feed_forward";
  s.router = "router";
  s.shared = "shared_expert";
  s.fused_in_out = true;
  s.qk_l2_norm = cfg.qk_norm;
  s.rope_interleaved = true;
  s.scale_expert_input = true;
  s.temperature_tuning = cfg.attn_temperature_tuning;
  s.router_params.kind = ops::RouterKind::TopKSigmoid;
  s.router_params.top_k = static_cast<int>(cfg.moe.num_experts_per_tok);
  s.router_params.renormalize = false;
  return s;
}
}  // namespace graft::model
