// Engine: continuous batching of many requests and many adapters over one shared base model.
//
// One scheduler thread runs steps. Each step builds ONE forward batch that mixes decode tokens of
// running sequences and prefill chunks of new ones (chunked prefill under a token budget), across
// adapters: the base projections run once for the whole batch and LoRA is applied per row from the
// batch's slot metadata (no padding to the max rank). KV lives in a paged cache (fixed-size blocks,
// per-sequence block tables); when blocks run out the youngest running sequence is preempted and
// later recomputed (counted in stats().preemptions). The waiting queue is bounded: submit() throws
// ApiError 429 when it is full, 503 after shutdown() began.
//
// Callbacks run on the scheduler thread and must not block (push to a queue and return).
// Determinism: greedy requests give the same tokens alone or batched; sampled requests with a seed
// give the same tokens for the same seed (each request has its own RNG).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "graft/backend/backend.hpp"
#include "graft/model/model.hpp"
#include "graft/serve/adapter_manager.hpp"

namespace graft::serve {

struct EngineOptions {
  int max_num_seqs = 64;          // running sequences per step
  int max_batch_tokens = 512;     // tokens per step (decode rows + prefill chunk rows)
  int block_size = 16;            // KV tokens per block
  int64_t num_kv_blocks = 0;      // 0: derive from kv_cache_bytes
  size_t kv_cache_bytes = size_t(512) << 20;
  int max_queue = 256;            // waiting requests before 429
  int64_t max_model_len = 0;      // 0: the model's max_position_embeddings (capped by the KV pool)
};

// Per-request sampling and stopping (OpenAI semantics).
struct RequestSampling {
  float temperature = 1.0f;   // 0 = greedy
  float top_p = 1.0f;
  int top_k = 0;              // 0 = off
  float min_p = 0.0f;
  float presence_penalty = 0.0f;   // [-2, 2], on generated tokens
  float frequency_penalty = 0.0f;  // [-2, 2], on generated tokens
  float repetition_penalty = 1.0f; // > 0, on prompt + generated tokens (HF/vLLM rule)
  std::optional<uint64_t> seed;    // none: a per-request seed from the engine's counter
};
void validate(const RequestSampling& s);  // ApiError 400 naming the field

struct GenRequest {
  std::vector<int32_t> prompt;        // non-empty
  std::string model;                  // adapter name; "" = the base
  RequestSampling sampling;
  int max_tokens = 16;                // >= 0; prompt + max_tokens must fit max_model_len (else 400)
  std::vector<int32_t> stop_ids;      // generation ends after one of these (it is emitted)
  int logprobs = -1;                  // -1: none; N >= 0: chosen token's logprob + top N alternatives
  bool prompt_logprobs = false;       // logprobs of prompt tokens 1.. (echo + logprobs)
};

struct TokenOut {
  int32_t id = 0;
  float logprob = 0.0f;                          // log-softmax of the raw logits (before penalties)
  std::vector<std::pair<int32_t, float>> top;    // top-N (id, logprob), best first
};

struct Finish {
  std::string reason;      // "stop" (stop id), "length" (max_tokens / max_model_len), "abort" (cancel /
                           // sink returned false), "error"
  std::string error;       // message when reason == "error"
  int error_status = 500;  // HTTP status of the error (4xx/503 when the request's adapter could not load)
  std::string error_type = "server_error", error_code = "engine_error";
  int prompt_tokens = 0, completion_tokens = 0;
  double queue_s = 0, ttft_s = 0, e2e_s = 0;     // seconds: waiting, submit->first token, submit->finish
};

struct Sink {
  // Prompt-token logprobs (entry 0 has no logprob: logprob = 0, top empty), once, before any token.
  std::function<void(const std::vector<TokenOut>&)> on_prompt_logprobs;
  // A generated token; return false to stop the request (finish reason "abort" unless the caller
  // already decided, e.g. a stop string: it then reports "stop" itself).
  std::function<bool(const TokenOut&)> on_token;
  // Exactly once per accepted request.
  std::function<void(const Finish&)> on_finish;
};

struct EngineStats {
  int running = 0, waiting = 0, waiting_for_adapter = 0;
  double kv_usage = 0;            // used / total blocks
  int64_t kv_blocks_total = 0, kv_blocks_used = 0;
  int64_t preemptions = 0, prompt_tokens = 0, generation_tokens = 0, steps = 0;
  int64_t max_model_len = 0;
};

class Engine {
 public:
  Engine(const model::Model& m, Backend& be, AdapterManager& adapters, EngineOptions opts);
  ~Engine();  // shutdown(false) if still running
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Queues a request. Throws ApiError: 400 bad request, 404 unknown adapter, 429 queue full,
  // 503 shutting down. Returns the request id.
  uint64_t submit(GenRequest req, Sink sink);
  // Cancels a request (finish reason "abort"); unknown or finished ids are ignored.
  void cancel(uint64_t id);
  EngineStats stats() const;
  const EngineOptions& options() const;
  // Stops accepting requests; with drain, waits for running and waiting requests to finish, else
  // aborts them. Idempotent; joins the scheduler thread.
  void shutdown(bool drain);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace graft::serve
