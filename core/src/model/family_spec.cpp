#include "family_spec.hpp"

#include <cmath>

#include "graft/error.hpp"

namespace graft::model {

ops::RouterParams softmax_topk_router(const config::ModelConfig& cfg, bool renormalize) {
  ops::RouterParams r;
  r.kind = ops::RouterKind::SoftmaxTopK;
  r.top_k = static_cast<int>(cfg.moe.num_experts_per_tok);
  r.renormalize = renormalize;
  return r;
}

float yarn_attention_mscale(const config::ModelConfig& cfg) {
  const auto& rs = cfg.rope_scaling;
  if (rs.type == "default" || rs.mscale_all_dim == 0.0 || rs.factor <= 1.0) return 1.0f;
  const double m = 0.1 * rs.mscale_all_dim * std::log(rs.factor) + 1.0;
  return static_cast<float>(m * m);
}

FamilySpec family_spec(const config::ModelConfig& cfg) {
  using config::Family;
  switch (cfg.family) {
    case Family::Llama: return spec_llama(cfg);
    case Family::Qwen2: return spec_qwen2(cfg);
    case Family::Qwen3: return spec_qwen3(cfg);
    case Family::Qwen2Moe: return spec_qwen2_moe(cfg);
    case Family::Qwen3Moe: return spec_qwen3_moe(cfg);
    case Family::Mixtral: return spec_mixtral(cfg);
    case Family::DeepseekV2: return spec_deepseek_v2(cfg);
    case Family::DeepseekV3: return spec_deepseek_v3(cfg);
    case Family::Llama4: return spec_llama4(cfg);
  }
  GRAFT_FAIL("", "unknown model family {}", static_cast<int>(cfg.family));
}

}  // namespace graft::model
