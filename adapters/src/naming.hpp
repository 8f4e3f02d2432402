// Internal: family-specific module names of routed experts (shared by peft.cpp and merge.cpp).
#pragma once

#include <string>

#include "graft/config/model_config.hpp"
#include "graft/model/model.hpp"

namespace graft::adapters::detail {

// Per-expert module block: "mlp.experts" (Mixtral "block_sparse_moe.experts", Llama 4 "feed_forward.experts").
inline std::string experts_block(const config::ModelConfig& cfg) {
  if (cfg.family == config::Family::Mixtral) return "block_sparse_moe.experts";
  if (cfg.family == config::Family::Llama4) return "feed_forward.experts";
  return "mlp.experts";
}
// Projection name inside an expert: gate_proj/up_proj/down_proj (Mixtral w1/w3/w2).
inline std::string expert_proj_name(const config::ModelConfig& cfg, model::ExpertProj p) {
  if (cfg.family == config::Family::Mixtral)
    return p == model::ExpertProj::Gate ? "w1" : p == model::ExpertProj::Up ? "w3" : "w2";
  return p == model::ExpertProj::Gate ? "gate_proj" : p == model::ExpertProj::Up ? "up_proj" : "down_proj";
}
// Fused experts module of transformers v5 / Llama 4 (target_parameters live under it).
inline std::string fused_block(const config::ModelConfig& cfg) {
  return cfg.family == config::Family::Llama4 ? "feed_forward.experts" : "mlp.experts";
}

}  // namespace graft::adapters::detail
