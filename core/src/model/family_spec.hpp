// Internal: what distinguishes one model family from another — tensor names and behaviour flags.
// Each family file (core/src/model/families/<family>.cpp) fills one FamilySpec from its config; the
// shared loader and layer builders do the rest.
#pragma once

#include <string>

#include "graft/backend/ops_desc.hpp"
#include "graft/config/model_config.hpp"

namespace graft::model {

struct FamilySpec {
  // names (relative to "<prefix>model.layers.{i}.")
  std::string attn = "self_attn";
  std::string mlp = "mlp";          // dense MLP module
  std::string moe = "mlp";          // MoE block module
  std::string router = "gate";
  std::string experts = "experts";
  std::string e_gate = "gate_proj", e_up = "up_proj", e_down = "down_proj";
  std::string shared;               // "" = no shared expert
  std::string shared_gate;          // Qwen2-MoE "shared_expert_gate"
  bool fused_in_out = false;        // Llama 4 fused experts are [E, in, out] (else [E, out, in])
  // behaviour
  bool qk_norm = false;             // Qwen3: RMSNorm(head_dim) weights on q and k before RoPE
  bool qk_l2_norm = false;          // Llama 4: weightless L2 norm after RoPE on RoPE layers
  bool mla = false;                 // DeepSeek multi-head latent attention
  bool rope_interleaved = false;    // DeepSeek / Llama 4 complex-pair RoPE
  bool scale_expert_input = false;  // Llama 4
  bool temperature_tuning = false;  // Llama 4 NoPE layers
  ops::RouterParams router_params;
  float attn_scale = 0.0f;          // softmax scale (0: head_dim^-0.5)
};

FamilySpec family_spec(const config::ModelConfig& cfg);

// One per family file.
FamilySpec spec_llama(const config::ModelConfig& cfg);
FamilySpec spec_qwen2(const config::ModelConfig& cfg);
FamilySpec spec_qwen3(const config::ModelConfig& cfg);
FamilySpec spec_qwen2_moe(const config::ModelConfig& cfg);
FamilySpec spec_qwen3_moe(const config::ModelConfig& cfg);
FamilySpec spec_mixtral(const config::ModelConfig& cfg);
FamilySpec spec_deepseek_v2(const config::ModelConfig& cfg);
FamilySpec spec_deepseek_v3(const config::ModelConfig& cfg);
FamilySpec spec_llama4(const config::ModelConfig& cfg);

// Shared helpers for family files.
ops::RouterParams softmax_topk_router(const config::ModelConfig& cfg, bool renormalize);
float yarn_attention_mscale(const config::ModelConfig& cfg);  // DeepSeek softmax scale factor (mscale²)

}  // namespace graft::model
