// Merging a LoRA adapter into its base checkpoint: W' = W + scale·B·A for every adapted projection.
#pragma once

#include <string>

#include "graft/adapters/peft.hpp"
#include "graft/backend/backend.hpp"

namespace graft::adapters {

// W += f.scale · f.b · f.a in place (W [out, in] f32 contiguous; accumulation in double).
void add_lora_delta(Tensor& w, const LoraFactors& f);

// Writes a merged copy of BASE_DIR to OUT_DIR: every safetensors shard under its own name with its
// tensors in the same order and metadata, merged projections in their stored dtype (f32/bf16/f16;
// per-expert and fused [E, 2I, H] / Llama 4 [E, H, 2I] expert layouts), the shard index and every other
// non-weight file (config.json, generation_config.json, tokenizer files, ...) copied. Pre-quantized
// (bitsandbytes NF4, FP8) bases are rejected: merge into the unquantized base. Every adapted module
// must exist in the base (error naming the tensor otherwise). Files are written atomically.
void merge_into(const std::string& base_dir, const Adapter& adapter, const std::string& out_dir);

}  // namespace graft::adapters
