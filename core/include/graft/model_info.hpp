// Parameter counts and memory estimates computed from a ModelConfig alone (no weights needed), and a
// summary of the tensors actually present in a model's safetensors files. Used by `graft inspect`.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "graft/config/model_config.hpp"

namespace graft::io {
class SafetensorsModel;
}

namespace graft {

// One kind of weight tensor of the model, summed over layers: `count` tensors of `numel_each` elements.
enum class WeightKind { Embedding, LmHead, Attention, Norm, DenseMlp, RoutedExperts, SharedExperts, Router, Bias };
std::string_view weight_kind_name(WeightKind k);  // "embedding", "lm_head", ...

struct WeightGroup {
  std::string name;        // e.g. "self_attn.q_proj.weight", "mlp.experts.*.gate_proj.weight"
  WeightKind kind;
  int64_t numel_each = 0;  // elements per tensor
  int64_t count = 0;       // tensors in the whole model
  int64_t active = 0;      // tensors used per token (top-k of the routed experts)
  bool linear = false;     // a Linear weight that bitsandbytes NF4 quantizes
  int64_t params() const { return numel_each * count; }
  int64_t active_params() const { return numel_each * active; }
};

// Every weight tensor of the decoder (per-expert layout; the MTP layers of DeepSeek-V3 and Llama 4's
// vision tower are not part of it).
std::vector<WeightGroup> weight_groups(const config::ModelConfig& c);

struct ParamCounts {
  int64_t total = 0;
  int64_t active = 0;                  // per token: all but the unselected routed experts
  int64_t active_excl_embedding = 0;   // active minus the input embedding table (DeepSeek's convention)
  std::map<std::string, int64_t> by_kind;  // weight_kind_name -> params
};
ParamCounts count_parameters(const config::ModelConfig& c);

// Bytes of one tensor of `numel` elements in bitsandbytes NF4 with double quantization:
// ceil(n/2) packed codes + one uint8 absmax per 64-element block + one fp32 scale per 256 blocks +
// one fp32 offset. (The 16- and 256-entry fp32 code tables are shared and not counted.)
uint64_t nf4_dq_bytes(int64_t numel);

struct MemoryEstimate {
  uint64_t bf16_bytes = 0;            // every parameter in bf16
  uint64_t nf4_bytes = 0;             // Linear weights NF4+DQ, everything else bf16
  int64_t nf4_quantized_params = 0;   // parameters stored as NF4
  int64_t nf4_bf16_params = 0;        // kept in bf16: embeddings, lm_head, norms, routers, biases
  int64_t nf4_quantized_tensors = 0;
  uint64_t kv_cache_bytes_per_1k_tokens = 0;  // bf16 K and V (MLA: compressed latent + rope key), no window cap
  std::vector<std::string> kv_notes;  // sliding windows, chunked attention, MLA
};
MemoryEstimate estimate_memory(const config::ModelConfig& c);

// What the safetensors files actually hold.
struct WeightsSummary {
  int64_t tensors = 0;
  uint64_t bytes = 0;   // data bytes of all tensors
  int64_t elements = 0; // sum of numel of all tensors
  std::map<std::string, int64_t> dtype_tensors;  // safetensors dtype name -> tensor count
  std::map<std::string, uint64_t> dtype_bytes;
  int64_t extra_tensors = 0, extra_elements = 0;  // MTP layers, vision tower, quantization scales
  std::map<std::string, int64_t> extra_by_reason;  // "mtp_layers", "vision", "quantization_aux" -> elements
  bool prequantized_packed = false;  // bitsandbytes-packed weights: element counts are not parameter counts
  int64_t model_elements() const { return elements - extra_elements; }
};
WeightsSummary summarize_weights(const io::SafetensorsModel& w, const config::ModelConfig& c);

}  // namespace graft
