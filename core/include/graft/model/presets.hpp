// Deterministic model descriptions for `graft init-model`: a config.json per family and preset, and a
// tiny byte-level tokenizer for models that do not bring a real one.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace graft::model {

// Architectures init-model can create (the supported model_types).
const std::vector<std::string>& init_architectures();
// Presets: "tiny" (unit tests, the demo: hidden 64) and "small" (~100M parameters, benchmarks).
const std::vector<std::string>& init_presets();
// A complete Hugging Face config.json for `arch` at `preset` with `vocab_size` tokens.
nlohmann::ordered_json preset_config(const std::string& arch, const std::string& preset, int64_t vocab_size,
                                     int64_t bos_id, int64_t eos_id);

// A byte-level BPE tokenizer.json (256 byte tokens, no merges, specials <|endoftext|>, <|im_start|>,
// <|im_end|>) and its tokenizer_config.json with a ChatML chat template.
nlohmann::ordered_json tiny_tokenizer_json();
nlohmann::ordered_json tiny_tokenizer_config();

}  // namespace graft::model
