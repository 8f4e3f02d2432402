// Per-request token selection for the serving engine: OpenAI/vLLM penalties on top of the shared
// sampler (graft::model::sample), and logprobs of the raw model output.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "graft/serve/engine.hpp"

namespace graft::serve {

// What penalties look at: counts of generated tokens, and the set of prompt tokens.
struct PenaltyState {
  std::unordered_map<int32_t, int> generated;  // id -> times generated
  std::unordered_set<int32_t> prompt;
  void add_generated(int32_t id) { ++generated[id]; }
};

// logits [V] (raw, not modified) -> chosen id. Penalties: repetition (HF rule: logit/p if > 0 else
// logit·p, on prompt and generated ids), then presence (− p if generated at least once) and frequency
// (− f·count) on generated ids, then temperature/top-k/top-p/min-p sampling (greedy at temperature 0).
// `scratch` is reused between calls.
int32_t pick_token(std::span<const float> logits, const RequestSampling& s, const PenaltyState& st, std::mt19937_64& rng,
                   std::vector<float>& scratch);

// Fills out.logprob with log_softmax(logits)[id] and out.top with the top_n (id, logprob) pairs, best
// first (ties to the lower id). logits [V].
void fill_logprobs(std::span<const float> logits, int32_t id, int top_n, TokenOut& out);

}  // namespace graft::serve
