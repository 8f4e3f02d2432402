// What a fine-tuning job may ask of the server (docs/serving.md, "Fine-tuning jobs inside the server").
//
// Keys: a job's recipe is the server's; `extra` may set training hyperparameters only. Every
// path-valued or server-owned key (base_model, tokenizer, datasets, output_dir, dataset_prepared_path,
// resume_from_checkpoint, any *_path / *_dir / *_file, a chat_template_jinja that is not inline Jinja,
// load_in_4bit, adapter ...) is a 400 naming `extra.KEY`, so a job cannot read or write outside the
// server's --ft-dir. Keys outside the allow-list are refused the same way.
//
// Sizes: the keys that size memory or time are bounded by the base (lora_r and rank_pattern by the
// hidden size, sequence_len by max_position_embeddings) and by fixed caps (micro_batch_size,
// gradient_accumulation_steps, num_threads by the machine's threads); then the job's training memory
// (train::estimate_training_memory) must fit the server's fine-tuning budget (--ft-memory-budget).
// Each violation is a 400 naming the key or the budget, checked when the job is created and again
// before it (re)starts.
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "graft/model/model.hpp"
#include "graft/train/memory_estimate.hpp"
#include "graft/train/recipe.hpp"

namespace graft::finetune {

struct JobLimits {
  uint64_t memory_budget_bytes = 0;  // training memory a job may use (0: default_memory_budget())
  int max_threads = 0;               // num_threads cap (0: the machine's hardware threads)
  int64_t max_micro_batch_size = 256;
  int64_t max_gradient_accumulation_steps = 1024;
};

// Half of the memory available when the server starts (MemAvailable, after the base and the KV pool
// are allocated), at least 256 MiB.
uint64_t default_memory_budget();

// ApiError 400 (param "extra.KEY", code "server_owned_key") for a server-owned or path-valued key.
// Checked before the recipe loader (which names the nearest valid key for unknown ones).
void check_job_keys(const nlohmann::ordered_json& extra);
// After the loader accepted them: ApiError 400 for recipe keys outside the jobs' allow-list.
void check_job_keys_allowed(const nlohmann::ordered_json& extra);

// ApiError 400 (param naming the key, code "limit_exceeded") when the effective recipe exceeds the
// base's bounds, the caps, or the memory budget; returns the estimate otherwise.
train::MemoryEstimate check_job_recipe(const train::Recipe& recipe, const model::Model& base, const JobLimits& limits);

}  // namespace graft::finetune
