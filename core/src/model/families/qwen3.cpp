// Qwen3 (model_type "qwen3"): Llama layout plus per-head RMSNorm on q and k (q_norm/k_norm) before RoPE.
#include "../family_spec.hpp"

namespace graft::model {
FamilySpec spec_qwen3(const config::ModelConfig&) {
  FamilySpec s;
  s.qk_norm = true;
  return s;
}
}  // namespace graft::model
