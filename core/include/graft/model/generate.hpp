// Token sampling and the single-sequence generation loop (KV cache, streaming callback).
#pragma once

#include <cstdint>
#include <functional>
#include <random>
#include <span>
#include <vector>

#include "graft/model/model.hpp"

namespace graft::model {

struct SamplingParams {
  float temperature = 0.0f;  // 0 = greedy (deterministic argmax, ties to the lowest id)
  float top_p = 1.0f;        // nucleus: smallest set with cumulative probability >= top_p
  int top_k = 0;             // 0 = off
  float min_p = 0.0f;        // drop tokens with p < min_p · p_max
  uint64_t seed = 0;
};
void validate(const SamplingParams& p);  // throws graft::Error naming the bad field

// Picks a token from logits [V] (not modified).
int32_t sample(std::span<const float> logits, const SamplingParams& p, std::mt19937_64& rng);

struct GenerateOptions {
  SamplingParams sampling;
  int max_tokens = 128;
  std::vector<int32_t> stop_ids;  // generation ends after emitting one of these (it is included)
  const LoraSource* adapter = nullptr;  // run with this adapter (null: the base)
};
// Runs the prompt, then samples up to max_tokens. `on_token(id)` is called for each new token and may
// return false to stop early. Returns the generated ids.
std::vector<int32_t> generate(const Model& m, Backend& be, std::span<const int32_t> prompt, const GenerateOptions& o,
                              const std::function<bool(int32_t)>& on_token = {});

// End-of-sequence ids from DIR/generation_config.json (eos_token_id: int or list), else config.json.
std::vector<int32_t> eos_ids(const std::string& model_dir);

}  // namespace graft::model
