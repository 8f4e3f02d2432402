// DeepSeek-V3 / R1 (model_type "deepseek_v3"): MLA attention as V2; router noaux_tc: sigmoid scores,
// e_score_correction_bias added for selection only, group-limited (sum of top-2 per group, keep
// topk_group groups), weights from unbiased scores, renormalised (norm_topk_prob), × routed_scaling_factor.
// FP8 block-scaled weights are dequantized on load (weight_scale_inv per 128×128 block).
#include <algorithm>
#include <cmath>

#include "../family_spec.hpp"

namespace graft::model {
FamilySpec spec_deepseek_v3(const config::ModelConfig& cfg) {
  FamilySpec s;
  s.mla = true;
  s.rope_interleaved = true;
  s.shared = "shared_experts";
  auto& r = s.router_params;
  r.kind = ops::RouterKind::SigmoidGroupTopK;
  r.top_k = static_cast<int>(cfg.moe.num_experts_per_tok);
  r.renormalize = cfg.moe.norm_topk_prob;
  r.n_group = static_cast<int>(std::max<int64_t>(cfg.moe.n_group, 1));
  r.topk_group = static_cast<int>(std::max<int64_t>(cfg.moe.topk_group, 1));
  r.routed_scaling_factor = static_cast<float>(cfg.moe.routed_scaling_factor);
  s.attn_scale = yarn_attention_mscale(cfg) / static_cast<float>(std::sqrt(static_cast<double>(cfg.mla.qk_head_dim())));
  return s;
}
}  // namespace graft::model
