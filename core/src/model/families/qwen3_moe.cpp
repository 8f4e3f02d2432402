// Qwen3-MoE (model_type "qwen3_moe"): Qwen3 attention (q/k norm); MoE layers with softmax (fp32)
// top-k, renormalised iff norm_topk_prob; no shared expert. decoder_sparse_step / mlp_only_layers
// decide which layers are MoE (ModelConfig::layer_kind).
#include "../family_spec.hpp"

namespace graft::model {
FamilySpec spec_qwen3_moe(const config::ModelConfig& cfg) {
  FamilySpec s;
  s.qk_norm = true;
  s.router_params = softmax_topk_router(cfg, cfg.moe.norm_topk_prob);
  return s;
}
}  // namespace graft::model
