// Writing a deterministic random-weight model directory in Hugging Face layout (graft init-model).
#pragma once

#include <cstdint>
#include <string>

namespace graft::model {

struct InitModelOptions {
  std::string arch, preset = "tiny", out;
  uint64_t seed = 0;
  std::string tokenizer_dir;   // copy tokenizer.json (+ tokenizer_config.json) from here; empty = graft's tiny one
  std::string dtype = "f32";   // f32 | bf16
  float embed_std = 0.0f;      // > 0: std of the embedding table / lm_head (default 0.02 like HF)
};
struct InitModelResult {
  int64_t params = 0, tensors = 0, vocab = 0;
};
// Writes config.json, generation_config.json, model.safetensors, tokenizer files into opts.out.
InitModelResult write_random_model(const InitModelOptions& opts);

}  // namespace graft::model
