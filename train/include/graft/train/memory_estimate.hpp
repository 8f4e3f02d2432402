// What a training run on a loaded base will hold in memory, estimated from the recipe before anything
// is allocated (the fine-tuning API refuses jobs that would not fit the server's budget; docs/serving.md,
// "Fine-tuning jobs inside the server"). The weights are not counted: the run shares them.
//
//   adapter     LoRA parameters (exactly as run_training builds them: same targets, ranks, experts) and
//               the lora_modules_to_save copies (vocab × hidden each)
//               × 4 bytes × 12: the factors, their gradients, AdamW's m and v, and the transient copies a
//               checkpoint save makes (tensor clones + the in-memory HDF5 image)
//   activations one sequence of sequence_len tokens at a time (micro-batches are accumulated sequence by
//               sequence): per token, the saved layer inputs (all layers with gradient checkpointing, else
//               every layer's full set) plus one layer's working set (attention row over the sequence, MLP /
//               routed experts' intermediates, LoRA intermediates) and the logits with their gradient
#pragma once

#include <cstdint>
#include <string>

#include "graft/model/model.hpp"
#include "graft/train/recipe.hpp"

namespace graft::train {

struct MemoryEstimate {
  int64_t lora_params = 0;       // trainable parameters
  int64_t max_rank = 0;          // the largest rank of any adapted module
  int64_t adapted_modules = 0;
  uint64_t adapter_bytes = 0;
  uint64_t activation_bytes = 0;
  uint64_t total_bytes() const { return adapter_bytes + activation_bytes; }
  std::string summary() const;  // "2.1 GiB (adapter 1.5 GiB for 12.6M LoRA parameters, activations 0.6 GiB)"
};

// Saturating (never overflows: absurd recipes give UINT64_MAX-ish totals, not wrapped small numbers).
MemoryEstimate estimate_training_memory(const model::Model& base, const Recipe& recipe);

// "1.5 GiB", "512 MiB", "12 KiB", "100 B".
std::string format_bytes(uint64_t bytes);

}  // namespace graft::train
