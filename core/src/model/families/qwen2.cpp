// Qwen2 / Qwen2.5 (model_type "qwen2"): Llama layout with q/k/v biases (read from config: qkv_bias)
// and optional sliding-window layers.
#include "../family_spec.hpp"

namespace graft::model {
FamilySpec spec_qwen2(const config::ModelConfig&) { return {}; }
}  // namespace graft::model
