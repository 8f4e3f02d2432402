// Typed Hugging Face config.json for every model family graft supports.
//
// Every behaviour is read from config.json. Where a key is absent, the value is the default of the
// transformers configuration class of that family (LlamaConfig, Qwen2Config, Qwen3Config,
// Qwen2MoeConfig, Qwen3MoeConfig, MixtralConfig, DeepseekV2Config, DeepseekV3Config, Llama4TextConfig);
// each default is written next to the code that applies it (core/src/config/model_config.cpp) and
// listed in docs/formats.md. A JSON `null` means "not set" (e.g. "sliding_window": null = no window,
// "q_lora_rank": null = DeepSeek q_proj without low-rank compression).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace graft::config {

// Plausibility bounds of config.json (parse_model_config rejects larger values; docs/formats.md): the
// vocabulary (token ids are below it, see tokenizer::kMaxTokenId) and the context length. Published
// models stay far below both (largest vocabularies ~262k, longest contexts ~10M).
inline constexpr int64_t kMaxVocabSize = int64_t{1} << 24;
inline constexpr int64_t kMaxPositionEmbeddings = int64_t{1} << 26;

enum class Family { Llama, Qwen2, Qwen3, Qwen2Moe, Qwen3Moe, Mixtral, DeepseekV2, DeepseekV3, Llama4 };

// The model_type strings graft accepts ("llama4_text" is the text-only form of "llama4").
const std::vector<std::string>& supported_model_types();
std::string_view family_name(Family f);  // "llama", "qwen2_moe", ...

// rope_scaling {"rope_type"|"type": ...}. type "default" = no scaling.
struct RopeScaling {
  std::string type = "default";  // default | linear | dynamic | llama3 | yarn
  double factor = 1.0;
  // llama3
  double low_freq_factor = 1.0, high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 0;  // llama3, yarn, dynamic (0 = not given)
  // yarn (transformers defaults; DeepSeek also uses mscale / mscale_all_dim)
  double beta_fast = 32.0, beta_slow = 1.0;
  double mscale = 1.0, mscale_all_dim = 0.0;
  std::optional<double> attention_factor;
};

// quantization_config of a pre-quantized checkpoint.
struct QuantizationConfig {
  std::string method;  // "" (none), "bitsandbytes", "fp8", or whatever quant_method says
  // bitsandbytes
  bool load_in_4bit = false, load_in_8bit = false;
  std::string bnb_4bit_quant_type = "fp4";  // BitsAndBytesConfig default; real QLoRA checkpoints say "nf4"
  bool bnb_4bit_use_double_quant = false;
  std::string bnb_4bit_compute_dtype = "float32";
  std::string bnb_4bit_quant_storage = "uint8";
  std::vector<std::string> skip_modules;  // llm_int8_skip_modules / modules_to_not_convert
  // fp8 (DeepSeek-V3 style block scaling)
  std::string fmt;                         // "e4m3"
  std::string activation_scheme;           // "dynamic"
  std::vector<int64_t> weight_block_size;  // [128, 128]
};

// What one decoder layer looks like.
struct LayerKind {
  bool moe = false;       // routed experts (else a dense MLP)
  bool sliding = false;   // sliding-window attention (window = ModelConfig::sliding_window)
  bool rope = true;       // false on Llama 4 NoPE layers
  bool chunked = false;   // Llama 4 chunked attention (chunk = attention_chunk_size)
};

struct MoeConfig {
  int64_t num_experts = 0;           // routed experts (num_experts / num_local_experts / n_routed_experts); 0 = dense model
  int64_t num_experts_per_tok = 0;   // top-k
  int64_t moe_intermediate_size = 0; // per routed expert (Mixtral/Llama 4: intermediate_size)
  int64_t shared_expert_intermediate_size = 0;  // total width of the shared expert MLP (0 = none)
  int64_t n_shared_experts = 0;      // DeepSeek (shared width = n_shared_experts × moe_intermediate_size)
  bool shared_expert_gate = false;   // Qwen2-MoE: sigmoid(Linear(H,1)) gates the shared expert
  bool norm_topk_prob = false;
  // layer placement
  int64_t decoder_sparse_step = 1;   // Qwen MoE
  std::vector<int64_t> mlp_only_layers;  // Qwen MoE
  int64_t first_k_dense_replace = 0; // DeepSeek
  int64_t moe_layer_freq = 1;        // DeepSeek
  std::vector<int64_t> moe_layers;   // Llama 4 (explicit list after defaults are applied)
  int64_t interleave_moe_layer_step = 1;  // Llama 4
  // routing
  std::string scoring_func = "softmax";   // softmax | sigmoid
  std::string topk_method = "greedy";     // greedy | group_limited_greedy | noaux_tc
  double routed_scaling_factor = 1.0;
  int64_t n_group = 0, topk_group = 0;    // 0 = no group limit
  bool e_score_correction_bias = false;   // DeepSeek-V3 noaux_tc
  double router_aux_loss_coef = 0.0;
  double router_jitter_noise = 0.0;
};

// Multi-head latent attention (DeepSeek-V2/V3).
struct MlaConfig {
  int64_t q_lora_rank = 0;  // 0 = plain q_proj
  int64_t kv_lora_rank = 0;
  int64_t qk_nope_head_dim = 0, qk_rope_head_dim = 0, v_head_dim = 0;
  int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
};

struct ModelConfig {
  Family family = Family::Llama;
  std::string model_type;                 // as written in config.json (text part for llama4)
  std::vector<std::string> architectures;
  std::string torch_dtype;                // "bfloat16", ... ("" when absent)

  int64_t vocab_size = 0, hidden_size = 0, intermediate_size = 0, num_hidden_layers = 0;
  int64_t num_attention_heads = 0, num_key_value_heads = 0, head_dim = 0;
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  std::string hidden_act = "silu";

  // biases
  bool attention_bias = false;  // Llama/DeepSeek: q,k,v,o (DeepSeek: q_a,kv_a,o); Qwen3: q,k,v,o
  bool qkv_bias = false;        // Qwen2 / Qwen2-MoE: q,k,v have bias, o has none
  bool mlp_bias = false;        // Llama
  bool qk_norm = false;         // Qwen3/Qwen3-MoE: RMSNorm(head_dim) weights on q and k; Llama 4: weightless L2 norm
  bool qk_norm_has_weight = false;

  // sliding window (Qwen2/3 families, Mixtral)
  std::optional<int64_t> sliding_window;  // nullopt = none
  bool use_sliding_window = false;        // Qwen families gate the window with this flag
  int64_t max_window_layers = 0;          // Qwen: layers >= max_window_layers use the window
  std::vector<std::string> layer_types;   // newer configs: "full_attention"/"sliding_attention" per layer

  // Llama 4
  int64_t intermediate_size_mlp = 0;      // dense layers' MLP width
  std::vector<int64_t> no_rope_layers;    // per layer: 1 = RoPE, 0 = NoPE (after defaults)
  int64_t attention_chunk_size = 0;       // 0 = no chunking
  bool attn_temperature_tuning = false;
  double floor_scale = 0.0, attn_scale = 0.0;

  // DeepSeek multi-token prediction layers shipped after the decoder (not part of the model graph)
  int64_t num_nextn_predict_layers = 0;

  bool is_mla = false;
  MlaConfig mla;
  MoeConfig moe;
  QuantizationConfig quantization;

  bool is_moe_model() const { return moe.num_experts > 0; }
  bool is_moe_layer(int64_t layer) const;
  LayerKind layer_kind(int64_t layer) const;
  int64_t num_moe_layers() const;
  int64_t num_dense_layers() const { return num_hidden_layers - num_moe_layers(); }
  // Width of the dense MLP of a non-MoE layer (Llama 4: intermediate_size_mlp).
  int64_t dense_intermediate_size() const;
  // Width of each routed expert.
  int64_t expert_intermediate_size() const;
};

// Parses a config.json object. `source` names the file in error messages. Throws graft::Error for an
// unknown model_type (listing the supported ones), a wrong JSON type (naming the key), or
// inconsistent values (e.g. heads not dividing hidden_size without head_dim).
ModelConfig parse_model_config(const nlohmann::json& j, const std::string& source = "config.json");
ModelConfig parse_model_config_text(const std::string& text, const std::string& source = "config.json");
// `path` = a model directory (reads DIR/config.json) or a config.json file.
ModelConfig load_model_config(const std::string& path);
// config.json with `overrides` (a JSON object, Axolotl's overrides_of_model_config) applied: each
// top-level key replaces the config's value, as transformers' setattr on the loaded config does; in a
// config with a `text_config` (Llama 4) the overrides go into text_config, the decoder's own config.
nlohmann::json apply_config_overrides(nlohmann::json config, const nlohmann::json& overrides);
// load_model_config with `overrides_json` (a JSON object text; empty = none) applied. Errors name
// "<config.json> with overrides_of_model_config".
ModelConfig load_model_config(const std::string& path, const std::string& overrides_json);

}  // namespace graft::config
