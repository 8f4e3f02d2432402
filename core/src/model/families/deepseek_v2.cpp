// DeepSeek-V2 / V2-Lite (model_type "deepseek_v2"): MLA attention (interleaved RoPE on the
// qk_rope_head_dim slice, yarn), first_k_dense_replace dense layers, then routed + shared experts.
// Router: softmax; topk_method "greedy" (plain top-k) or "group_limited_greedy" (best expert per
// group, keep topk_group groups). Weights: renormalised when top_k > 1 and norm_topk_prob, else
// multiplied by routed_scaling_factor (transformers DeepseekV2MoEGate).
#include <algorithm>
#include <cmath>

#include "../family_spec.hpp"

namespace graft::model {
FamilySpec spec_deepseek_v2(const config::ModelConfig& cfg) {
  FamilySpec s;
  s.mla = true;
  s.rope_interleaved = true;
  s.shared = "shared_experts";
  auto& r = s.router_params;
  r.top_k = static_cast<int>(cfg.moe.num_experts_per_tok);
  r.renormalize = r.top_k > 1 && cfg.moe.norm_topk_prob;
  r.routed_scaling_factor = r.renormalize ? 1.0f : static_cast<float>(cfg.moe.routed_scaling_factor);
  if (cfg.moe.topk_method == "group_limited_greedy") {
    r.kind = ops::RouterKind::SoftmaxGroupTopK;
    r.n_group = static_cast<int>(cfg.moe.n_group);
    r.topk_group = static_cast<int>(cfg.moe.topk_group);
  } else {
    r.kind = ops::RouterKind::SoftmaxTopK;
  }
  s.attn_scale = yarn_attention_mscale(cfg) / static_cast<float>(std::sqrt(static_cast<double>(cfg.mla.qk_head_dim())));
  return s;
}
}  // namespace graft::model
