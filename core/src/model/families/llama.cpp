// Llama 2 / 3.x (model_type "llama"): GQA attention with RoPE (llama3 rope_scaling), SwiGLU MLP,
// tied or untied lm_head. stories260K is this family.
#include "../family_spec.hpp"

namespace graft::model {
FamilySpec spec_llama(const config::ModelConfig&) { return {}; }
}  // namespace graft::model
