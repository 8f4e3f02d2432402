// Mixtral (model_type "mixtral"): Mistral attention (optional sliding window); every layer is a
// sparse MoE block `block_sparse_moe` with experts w1 (gate), w3 (up), w2 (down); softmax top-k,
// always renormalised.
#include "../family_spec.hpp"

namespace graft::model {
FamilySpec spec_mixtral(const config::ModelConfig& cfg) {
  FamilySpec s;
  s.moe = "block_sparse_moe";
  s.e_gate = "w1";
  s.e_up = "w3";
  s.e_down = "w2";
  s.router_params = softmax_topk_router(cfg, true);
  return s;
}
}  // namespace graft::model
