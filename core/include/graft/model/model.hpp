// A decoder-only language model of any supported family, loaded from a Hugging Face directory into
// one internal layout, and its forward pass over a Backend.
//
// Weights: embeddings, norms and routers are kept dense f32 (CPU backend); every other projection is
// a LinearWeight, dense f32 or NF4 (quantized on load with `load_in_4bit`, or read from a
// bitsandbytes pre-quantized checkpoint). Experts load from per-expert or fused 3-D layouts.
#pragma once

#include <memory>
#include <span>
#include <string>
#include <vector>

#include "graft/backend/backend.hpp"
#include "graft/config/model_config.hpp"

namespace graft::model {

class ExpertParallel;  // expert_parallel.hpp

// Storage of the lm_head projection (inference only; cf. llama.cpp's --output-tensor-type). F32 (the default,
// like bitsandbytes: QLoRA/PEFT logits match the reference) keeps it dense. NF4 quantizes it on load (blocksize
// 64, double quant, as load_in_4bit does to the body): on a tied model the embedding lookup keeps the f32 table
// and only the projection reads the NF4 copy. Q8 quantizes it to 8 bits (graft/quant/q8.hpp: blocks of 64 along each
// row, one f32 scale each, 8.5 bits per weight, llama.cpp's Q8_0 density; CPU backend only): 3.8x fewer bytes than
// f32 per decoded token at a largest weight error of absmax/254 per block. Q6 quantizes it to 6 bits
// (graft/quant/q6.hpp: blocks of 64, one f32 scale = absmax/31 each, 6.5 bits per weight, llama.cpp's Q6_K density,
// the type llama-quantize gives the output tensor of its 4-bit models; CPU backend only): 4.9x fewer bytes than f32
// at a largest weight error of absmax/62. Training refuses a model whose lm_head was quantized any of these ways.
enum class LmHeadDtype : int { F32, NF4, Q8, Q6 };
// "f32" | "nf4" | "q8" | "q6"; anything else throws graft::Error naming `what` (e.g. "--lm-head-dtype") and the choices.
LmHeadDtype parse_lm_head_dtype(const std::string& value, const std::string& what = "lm_head dtype");
const char* lm_head_dtype_name(LmHeadDtype d);

struct LoadOptions {
  bool load_in_4bit = false;  // quantize projection weights to NF4 (bitsandbytes layout)
  bool double_quant = true;   // NF4 double quantization of absmax
  LmHeadDtype lm_head_dtype = LmHeadDtype::F32;  // inference-only lm_head quantization (see LmHeadDtype)
  // Expert parallelism: load only the routed experts of shard expert_shard_rank of expert_shard_count
  // (model::expert_shard); the others keep their shapes but no weights. 1 = every expert.
  int expert_shard_rank = 0;
  int expert_shard_count = 1;
  // An expert-parallel inference worker (model::serve_expert_rows): load the shard's routed experts and
  // nothing else (no embedding, attention, router, shared expert); such a model cannot run a forward.
  bool experts_only = false;
  // JSON object whose keys replace config.json's before the model is built (Axolotl's
  // overrides_of_model_config; config::apply_config_overrides). Empty = config.json as it is.
  std::string config_overrides_json;
};

// The projections a LoRA adapter can target, per layer.
enum class Module : int {
  Q, K, V, O, QA, QB, KVA, KVB,          // attention (QA/QB/KVA/KVB: DeepSeek MLA)
  Gate, Up, Down,                        // dense MLP
  SharedGate, SharedUp, SharedDown,      // shared expert(s)
  kCount
};
enum class ExpertProj : int { Gate, Up, Down };
// HF module path of a projection, e.g. "self_attn.q_proj" (family-specific names).
std::string module_path(config::Family f, Module m);

// What one adapter contributes: LoRA factors per (layer, module) and per (layer, expert, projection).
class LoraSource {
 public:
  virtual ~LoraSource() = default;
  virtual const LoraFactors* find(int layer, Module m) const = 0;
  virtual const LoraFactors* find_expert(int layer, ExpertProj p, int expert) const = 0;
  // How another process loads this same adapter (expert-parallel inference: the ranks holding other
  // experts rebuild it from this), e.g. "peft:/abs/dir" (adapters/origin.hpp). Empty: built in memory,
  // not loadable elsewhere.
  virtual std::string origin() const { return {}; }
  // PEFT modules_to_save: the adapter's own trained copies of the embedding table / lm_head, used
  // instead of the base's for the rows that run this adapter. nullptr (the default) = the base's.
  virtual const Tensor* embed_tokens() const { return nullptr; }     // [vocab, hidden] f32
  virtual const LinearWeight* lm_head() const { return nullptr; }    // [vocab, hidden] dense f32
};

// Tokens to run. All rows belong to one sequence unless `segments` is set (packed training
// samples: attention stays inside equal segment ids). With a KvCache, rows are appended to it.
struct Batch {
  std::span<const int32_t> ids;        // [T]
  std::span<const int32_t> positions;  // [T]; empty = cache length + 0..T-1
  std::span<const int32_t> segments;   // [T] or empty
  std::span<const LoraSource* const> adapters;  // LoRA slots (may be empty)
  std::span<const int32_t> row_adapter;         // [T] slot per row (-1 = base); empty = all slot 0
  bool last_logits_only = false;  // prompt processing for generation: logits of the last row only
};

// Contiguous per-sequence KV cache (keys after RoPE).
struct KvCache {
  std::vector<Tensor> k, v;  // per layer [capacity, kv_heads, dim]
  std::vector<int32_t> positions;  // [len]
  int64_t len = 0, capacity = 0;
};

// Paged KV cache shared by many sequences (serving): per layer a pool of fixed-size blocks; each
// sequence owns a block table (block ids in order) covering its tokens. Token i of a sequence lives
// in block table[i / block_size], row i % block_size. Keys are stored after RoPE. MLA stores the
// compressed latent in k ([.., 1, kv_lora_rank]) and the shared RoPE key in v ([.., 1, qk_rope_dim]).
struct PagedKvCache {
  int64_t block_size = 0, num_blocks = 0;
  std::vector<Tensor> k, v;  // per layer [num_blocks, block_size, kv_heads, kd] / [.., vd]
};

// One sequence's rows in a paged batch. Its rows are contiguous in the batch and get positions
// context_len, context_len + 1, ...; they attend to the sequence's cached tokens [0, context_len)
// plus themselves (causal). The block table must cover context_len + rows tokens.
struct SeqChunk {
  int64_t row_begin = 0, rows = 0;
  int64_t context_len = 0;
  std::span<const int32_t> block_table;
  int32_t slot = -1;  // adapter slot for every row of the sequence (-1 = base)
};

struct AttentionWeights {
  LinearWeight q, k, v, o;
  Tensor q_norm, k_norm;                 // Qwen3 per-head RMSNorm [head_dim]
  LinearWeight q_a, q_b, kv_a, kv_b;     // MLA
  Tensor q_a_norm, kv_a_norm;            // MLA [q_lora_rank], [kv_lora_rank]
};
struct MlpWeights {
  LinearWeight gate, up, down;
  bool defined() const { return gate.defined(); }
};
struct MoeWeights {
  Tensor router;            // [E, H] f32
  Tensor correction_bias;   // [E] (DeepSeek-V3) or undefined
  ExpertWeights experts;
  MlpWeights shared;
  Tensor shared_gate;       // [1, H] (Qwen2-MoE) or undefined
};
struct LayerWeights {
  config::LayerKind kind;
  Tensor input_norm, post_norm;  // [H]
  AttentionWeights attn;
  MlpWeights mlp;  // dense layers
  MoeWeights moe;  // MoE layers
};

// The expert LoRA of MoE layer `layer` for a batch's adapter slots (null slots and experts without
// LoRA give null factors), as Backend::moe_experts takes it. `any` = some factor is set.
ExpertLora expert_lora(std::span<const LoraSource* const> adapters, int layer, int64_t num_experts, bool& any);

// The non-expert linear modules a LoRA can adapt, and the weight behind each in a layer (nullptr for
// an expert module; an undefined LinearWeight where the layer lacks the module).
inline constexpr Module kDenseModules[] = {Module::Q,    Module::K,          Module::V,        Module::O,
                                           Module::QA,   Module::QB,         Module::KVA,      Module::KVB,
                                           Module::Gate, Module::Up,         Module::Down,     Module::SharedGate,
                                           Module::SharedUp, Module::SharedDown};
const LinearWeight* dense_weight(const LayerWeights& L, Module m);

class Model {
 public:
  // Loads DIR (config.json + safetensors). Throws graft::Error naming any missing, unexpected or
  // misshaped tensor, or config/weight mismatch.
  static Model load(const std::string& dir, const LoadOptions& opts = {});
  // Builds a model from a config and named tensors (used by init-model and tests).
  static Model from_tensors(const config::ModelConfig& cfg, const std::vector<std::pair<std::string, Tensor>>& tensors,
                            const LoadOptions& opts = {});

  const config::ModelConfig& config() const { return cfg_; }
  const std::vector<LayerWeights>& layers() const { return layers_; }
  const Tensor& embedding() const { return embed_; }      // [vocab, hidden]
  const Tensor& final_norm() const { return final_norm_; }  // [hidden]
  const LinearWeight& lm_head() const { return lm_head_; }  // [vocab, hidden]
  // What LoadOptions::lm_head_dtype made of the lm_head: NF4 = quantized for inference, not trainable through.
  LmHeadDtype lm_head_dtype() const { return lm_head_dtype_; }
  const ops::RopeTable& rope_table() const { return rope_[0]; }
  int64_t vocab_size() const { return cfg_.vocab_size; }
  // Expert parallelism: the expert shard this model holds (LoadOptions::expert_shard_*) and the group
  // holding the other shards. With a group of size > 1 every forward exchanges MoE rows with it
  // (model::moe_experts_sharded), so every member must run the same forwards in lockstep. The group's
  // rank and size must equal the loaded shard's. Null (the default): unsharded.
  void set_expert_parallel(std::shared_ptr<ExpertParallel> ep);
  ExpertParallel* expert_parallel() const { return ep_.get(); }
  int expert_shard_rank() const { return shard_rank_; }
  bool experts_only() const { return experts_only_; }  // LoadOptions::experts_only
  int expert_shard_count() const { return shard_count_; }
  // Bytes held by weights (NF4 counted packed).
  size_t weight_bytes() const;

  KvCache new_cache(int64_t capacity) const;
  // A paged cache of num_blocks blocks; block_bytes() is the memory of one block over all layers.
  PagedKvCache new_paged_cache(int64_t num_blocks, int64_t block_size) const;
  size_t block_bytes(int64_t block_size) const;
  // Returns logits [T, vocab] f32 ([1, vocab] with last_logits_only). With a cache, appends the batch
  // to it (single sequence).
  Tensor forward(Backend& be, const Batch& batch, KvCache* cache = nullptr) const;
  // Many sequences in one batch over a paged cache (continuous batching): ids [T] (every row of every
  // chunk), seqs cover [0, T) in order, adapters are the LoRA slots SeqChunk::slot indexes. The new
  // rows' keys/values are written into the cache. Returns logits [logit_rows.size(), vocab] of the
  // given batch rows, in that order. Projections and experts run once over all T rows.
  Tensor forward_paged(Backend& be, std::span<const int32_t> ids, std::span<const SeqChunk> seqs,
                       std::span<const LoraSource* const> adapters, PagedKvCache& cache,
                       std::span<const int32_t> logit_rows) const;

 private:
  friend struct Forward;
  friend std::vector<std::pair<std::string, Tensor>> random_checkpoint(const config::ModelConfig&, uint64_t, float);
  friend struct QuantizedCheckpoint quantize_checkpoint(const std::string&, bool);
  config::ModelConfig cfg_;
  Tensor embed_, final_norm_;
  LinearWeight lm_head_;
  LmHeadDtype lm_head_dtype_ = LmHeadDtype::F32;
  int shard_rank_ = 0, shard_count_ = 1;
  bool experts_only_ = false;
  void check_runnable(const char* what) const;  // throws for an experts_only model
  std::shared_ptr<ExpertParallel> ep_;
  std::vector<LayerWeights> layers_;
  std::vector<ops::RopeTable> rope_;  // per layer kind: [0] = main
  ops::RopeParams rope_params_;
  friend struct Loader;
};

// Every tensor of a canonical Hugging Face checkpoint for `cfg`, with deterministic random values
// derived from (seed, tensor name): N(0, 0.02) weights, ones for norms. `embed_std` > 0 sets the std of
// the embedding table and lm_head instead (e.g. 1/sqrt(hidden) so that logits have unit scale).
std::vector<std::pair<std::string, Tensor>> random_checkpoint(const config::ModelConfig& cfg, uint64_t seed,
                                                              float embed_std = 0.0f);

// A checkpoint with every projection weight quantized to NF4 (bitsandbytes algorithm): `quantized`
// holds the projections by weight name (per-expert names even when the source was fused), `kept`
// every other tensor as stored (embeddings, norms, routers, lm_head, biases).
struct QuantizedCheckpoint {
  config::ModelConfig config;
  std::vector<std::pair<std::string, std::shared_ptr<const nf4::QuantizedWeight>>> quantized;
  std::vector<std::pair<std::string, Tensor>> kept;
};
QuantizedCheckpoint quantize_checkpoint(const std::string& dir, bool double_quant = true);
// Writes `qc` to out_dir in bitsandbytes' serialized layout (model.safetensors with quant states,
// config.json with quantization_config, tokenizer/generation files copied from src_dir).
void write_bnb_checkpoint(const QuantizedCheckpoint& qc, const std::string& src_dir, const std::string& out_dir);

}  // namespace graft::model
