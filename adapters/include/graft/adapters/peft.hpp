// PEFT LoRA adapters: adapter_config.json + adapter_model.safetensors, read and written in Hugging Face
// PEFT's format so that PEFT, vLLM, SGLang and LoRAX load graft's adapters unchanged (docs/adapters.md).
//
// Key naming (prefix `base_model.model.model.layers.{l}.`):
//   dense module     `{module_path}.lora_A.weight` [r, in], `{module_path}.lora_B.weight` [out, r]
//   per-expert       `mlp.experts.{e}.gate_proj.lora_A.weight` (Mixtral `block_sparse_moe.experts.{e}.w1`)
//   fused experts    (`target_parameters`: "mlp.experts.gate_up_proj", "mlp.experts.down_proj")
//                    `mlp.experts[.base_layer].lora_A.weight` [E·r, in], `.lora_B.weight` [out, E·r]
//                    PEFT packing: A.reshape(E, r, in) (expert-major rows), B.reshape(out, r, E)
//                    (rank-major columns: column = k·E + e). gate_up's out = 2I: rows [0, I) = gate,
//                    [I, 2I) = up, so expert e's Gate and Up factors share A_e and split B_e's rows.
// In graft an Adapter is a model::LoraSource: per-(layer, module) and per-(layer, expert, projection)
// factors with the PEFT scale (alpha/r or alpha/sqrt(r), per-module patterns applied) in
// LoraFactors::scale; A and B are stored unscaled, exactly as in the file (f32).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "graft/config/model_config.hpp"
#include "graft/model/model.hpp"

namespace graft::adapters {

struct PeftConfig {
  int64_t r = 8;
  double lora_alpha = 8;
  double lora_dropout = 0;
  bool use_rslora = false;
  std::vector<std::string> target_modules;  // list form (module name suffixes)
  std::string target_modules_regex;         // string form (full-match regex over the module name)
  bool all_linear = false;                  // "all-linear"
  std::vector<std::string> target_parameters;  // fused expert parameters, e.g. "mlp.experts.gate_up_proj"
  std::map<std::string, int64_t> rank_pattern;
  std::map<std::string, double> alpha_pattern;
  std::string base_model_name_or_path;
  std::vector<int64_t> layers_to_transform;  // empty = all layers
  std::vector<std::string> modules_to_save;  // "embed_tokens" and/or "lm_head": full trained copies in the adapter
  nlohmann::ordered_json extra;  // every other key (task_type, exclude_modules, peft_version, ...), kept for round trip
};

// Parses adapter_config.json. `source` names the file in errors. Rejects use_dora, bias != "none",
// modules_to_save other than embed_tokens / lm_head, peft_type != "LORA", fan_in_fan_out, lora_bias, layer_replication,
// r <= 0, and wrong JSON types, each with an error naming the key.
PeftConfig parse_peft_config(const std::string& json_text, const std::string& source);
// modules_to_save entries: "embed_tokens" / "lm_head" for an entry naming one (the name or a dotted
// suffix, as PEFT matches: "model.embed_tokens"), "" for anything else.
std::string saved_module_name(const std::string& entry);
// Whether the config's modules_to_save names `name` ("embed_tokens" or "lm_head").
bool saves_module(const PeftConfig& c, const std::string& name);
// Canonical adapter_config.json text: known keys in a fixed order, then `extra` in its order;
// parse_peft_config(peft_config_json(c)) gives c back and the text is stable under that round trip.
std::string peft_config_json(const PeftConfig& c);

// The pattern key of `patterns` (rank_pattern/alpha_pattern keys, in the map's order) matching
// `module_key` with PEFT's rule: the key, as a regex, matches the whole name or a dot-separated suffix
// of it (`re.match(rf"(.*\.)?({key})$", name)`). Empty when none matches.
std::string match_pattern_key(const std::vector<std::string>& patterns, const std::string& module_key);
// Whether the config's target_modules select `module_key` (PEFT's check_target_module_exists: list =
// exact name or `.`-suffix; string = full-match regex; all-linear = any projection) and
// layers_to_transform lets `layer` through.
bool targets_module(const PeftConfig& c, const std::string& module_key, int layer);
// The rank a module must have: rank_pattern match or r.
int64_t expected_rank(const PeftConfig& c, const std::string& module_key);
// The LoRA scale of a module: alpha / rank (alpha / sqrt(rank) with use_rslora), alpha from
// alpha_pattern when a key matches. `module_key` is the base model's module name, e.g.
// "model.layers.3.self_attn.q_proj" (fused experts: "model.layers.3.mlp.experts.gate_up_proj").
double lora_scale(const PeftConfig& c, const std::string& module_key, int64_t rank);

// An adapter in graft's terms (scale already in each LoraFactors).
class Adapter final : public model::LoraSource {
 public:
  PeftConfig config;
  std::map<std::pair<int, model::Module>, LoraFactors> modules;
  std::map<std::tuple<int, model::ExpertProj, int>, LoraFactors> experts;
  // Layer-key prefix used when saving ("base_model.model.model.layers."; Llama 4 multimodal checkpoints
  // use "base_model.model.language_model.model.layers."). load_peft keeps the file's prefix.
  std::string prefix = "base_model.model.model.layers.";
  // modules_to_save copies ([vocab, hidden] f32) or undefined; saved as PEFT does, without the wrapper:
  // "base_model.model.model.embed_tokens.weight", "base_model.model.lm_head.weight".
  Tensor embed_tokens_weight;
  LinearWeight lm_head_weight;
  const Tensor* embed_tokens() const override { return embed_tokens_weight.defined() ? &embed_tokens_weight : nullptr; }
  const LinearWeight* lm_head() const override { return lm_head_weight.defined() ? &lm_head_weight : nullptr; }

  const LoraFactors* find(int layer, model::Module m) const override;
  const LoraFactors* find_expert(int layer, model::ExpertProj p, int expert) const override;
  // How to load this adapter again (origin.hpp): "peft:<absolute dir>" from load_peft, a weighted sum of
  // those from combine(); empty for adapters built in memory.
  std::string source;
  std::string origin() const override { return source; }
  size_t bytes() const;     // bytes of all factor tensors (a fused A shared by Gate/Up counted once)
  int64_t max_rank() const;
};

// The base model's module name of a dense module / an expert projection ("model.layers.0.self_attn.q_proj",
// "model.layers.1.mlp.experts.3.gate_proj", Mixtral "...block_sparse_moe.experts.3.w1").
std::string module_key(const config::ModelConfig& cfg, int layer, model::Module m);
std::string expert_key(const config::ModelConfig& cfg, int layer, model::ExpertProj p, int expert);
// The fused experts module of a layer ("model.layers.1.mlp.experts"; Llama 4 "feed_forward.experts").
std::string fused_experts_key(const config::ModelConfig& cfg, int layer);

// Reads DIR/adapter_config.json + DIR/adapter_model.safetensors (f32/bf16/f16 tensors; held as f32).
// Throws graft::Error naming the file and key for unknown keys, keys of modules the config does not
// target, missing A/B halves, wrong shapes (with the expected shape), ranks that disagree with the
// config, and layers/experts out of range.
Adapter load_peft(const std::string& dir, const config::ModelConfig& cfg);
// Writes DIR/adapter_config.json and DIR/adapter_model.safetensors (f32, tensors by name, atomic per
// file). Experts are written fused when config.target_parameters names them (Gate and Up of an expert
// must then share A), per expert otherwise. save_peft(load_peft(x)) reproduces x byte for byte for
// files graft wrote.
void save_peft(const std::string& dir, const Adapter& a, const config::ModelConfig& cfg);
// Rewrites an all-linear config of an MoE family into the explicit form PEFT loads as written: attention
// leaf names in target_modules, each adapted dense or shared-expert MLP Linear as "<parent>.<leaf>.weight" in
// target_parameters (lora_dropout then 0: PEFT's ParamWrapper refuses dropout; it never changes outputs).
// Why: PEFT (0.18+ with transformers v5) rewrites target_modules on MoE families whose experts transformers
// fuses: every gate_proj/up_proj/down_proj entry (list, regex or all-linear) becomes the fused experts, and
// all-linear adds the router, so "all-linear" would load graft's MLP LoRA nowhere. Other configs: unchanged.
void make_targets_explicit(Adapter& a, const config::ModelConfig& cfg);
// A fresh config for an adapter graft trains: r, alpha, target_modules; everything else default.
PeftConfig make_config(int64_t r, double alpha, std::vector<std::string> target_modules,
                       std::vector<std::string> target_parameters = {});

}  // namespace graft::adapters
