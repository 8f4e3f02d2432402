// Qwen2-MoE / Qwen1.5-MoE (model_type "qwen2_moe"): Qwen2 attention; MoE layers with softmax top-k
// (renormalised iff norm_topk_prob) plus a shared expert gated by sigmoid(shared_expert_gate(x)).
#include "../family_spec.hpp"

namespace graft::model {
FamilySpec spec_qwen2_moe(const config::ModelConfig& cfg) {
  FamilySpec s;
  s.shared = "shared_expert";
  s.shared_gate = "shared_expert_gate";
  s.router_params = softmax_topk_router(cfg, cfg.moe.norm_topk_prob);
  return s;
}
}  // namespace graft::model
