// Fine-tuning job limits (see job_limits.hpp).
#include "graft/finetune/job_limits.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <thread>

#include "graft/serve/api_error.hpp"

namespace graft::finetune {
using serve::bad_request;

namespace {
// Hyperparameters a job may set under `extra` (everything else is the server's).
const char* const kAllowed[] = {
    "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "lora_target_modules_regex", "lora_target_linear",
    "lora_target_parameters", "peft_use_rslora", "rank_pattern", "alpha_pattern", "val_set_size", "chat_template",
    "chat_template_jinja", "train_on_inputs", "sequence_len", "sample_packing", "special_tokens", "micro_batch_size",
    "gradient_accumulation_steps", "num_epochs", "max_steps", "learning_rate", "lr_scheduler", "warmup_steps",
    "warmup_ratio", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm", "optimizer",
    "gradient_checkpointing", "eval_steps", "save_steps", "logging_steps", "seed", "evals_per_epoch", "saves_per_epoch",
    "eval_prompts", "num_threads"};
// Server-owned keys that are not paths by name.
const char* const kServerOwned[] = {"base_model", "tokenizer", "datasets", "test_datasets", "output_dir",
                                    "resume_from_checkpoint", "load_in_4bit", "load_in_8bit", "adapter",
                                    "bnb_4bit_use_double_quant", "lora_modules_to_save"};

bool ends_with(const std::string& s, const char* suf) {
  const std::string t(suf);
  return s.size() >= t.size() && s.compare(s.size() - t.size(), t.size(), t) == 0;
}
bool path_like_name(const std::string& k) {
  return ends_with(k, "_path") || ends_with(k, "_dir") || ends_with(k, "_file") || ends_with(k, "_files") ||
         ends_with(k, "_dirs") || ends_with(k, "_paths") || k == "path" || k == "dir";
}
bool inline_jinja(const std::string& s) { return s.find("{{") != std::string::npos || s.find("{%") != std::string::npos; }

[[noreturn]] void refuse(const std::string& key, const std::string& why) {
  throw bad_request("extra." + key + " " + why, "extra." + key, "server_owned_key");
}
[[noreturn]] void over(const std::string& param, const std::string& msg) { throw bad_request(msg, param, "limit_exceeded"); }
}  // namespace

uint64_t default_memory_budget() {
  uint64_t avail = 0;
  std::ifstream f("/proc/meminfo");
  std::string name, unit;
  uint64_t kb = 0;
  while (f >> name >> kb >> unit)
    if (name == "MemAvailable:") avail = kb * 1024;
  if (avail == 0) {
    const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGE_SIZE);
    if (pages > 0 && page > 0) avail = static_cast<uint64_t>(pages) * static_cast<uint64_t>(page) / 2;
  }
  return std::max<uint64_t>(avail / 2, uint64_t{256} << 20);
}

void check_job_keys(const nlohmann::ordered_json& extra) {
  for (auto it = extra.begin(); it != extra.end(); ++it) {
    const std::string k = it.key();
    if (std::find(std::begin(kServerOwned), std::end(kServerOwned), k) != std::end(kServerOwned))
      refuse(k, "is set by the server for fine-tuning jobs (the base, the uploaded files and where the job writes are "
                "the server's)");
    if (path_like_name(k) || k == "dataset_prepared_path")
      refuse(k, "is a path: fine-tuning jobs read and write only inside the server's --ft-dir, so paths are set by the "
                "server");
    if (k == "chat_template_jinja" && !(it.value().is_string() && inline_jinja(it.value().get<std::string>())))
      refuse(k, "must be inline Jinja source in a fine-tuning job (a file path is not accepted)");
    if (k == "chat_template" && it.value().is_string() && it.value().get<std::string>().find('/') != std::string::npos &&
        !inline_jinja(it.value().get<std::string>()))
      refuse(k, "must name a template (tokenizer_default, chatml, jinja) or be inline Jinja, not a path");
  }
}

void check_job_keys_allowed(const nlohmann::ordered_json& extra) {
  for (auto it = extra.begin(); it != extra.end(); ++it)
    if (std::find_if(std::begin(kAllowed), std::end(kAllowed), [&](const char* a) { return it.key() == a; }) ==
        std::end(kAllowed))
      refuse(it.key(), "is not a training hyperparameter a fine-tuning job may set (see docs/serving.md, \"Fine-tuning "
                       "jobs inside the server\")");
}

train::MemoryEstimate check_job_recipe(const train::Recipe& r, const model::Model& base, const JobLimits& lim) {
  const auto& cfg = base.config();
  if (base.lm_head_dtype() != model::LmHeadDtype::F32)
    throw bad_request(fmt::format("the served base's lm_head was quantized to {} for inference (--lm-head-dtype); "
                                  "training needs the exact f32 lm_head: restart graft serve without --lm-head-dtype",
                                  model::lm_head_dtype_name(base.lm_head_dtype())),
                      "model", "lm_head_quantized");
  auto bound = [&](const char* key, int64_t v, int64_t lo, int64_t hi, const std::string& why) {
    if (v < lo || v > hi)
      over(std::string("extra.") + key, fmt::format("extra.{} = {} is outside [{}, {}] ({})", key, v, lo, hi, why));
  };
  bound("lora_r", r.lora_r(), 1, cfg.hidden_size,
        fmt::format("a rank above the base's hidden_size {} adds nothing", cfg.hidden_size));
  for (const auto& [pat, rank] : r.rank_pattern())
    if (rank < 1 || rank > cfg.hidden_size)
      over("extra.rank_pattern", fmt::format("extra.rank_pattern['{}'] = {} is outside [1, {}] (the base's hidden_size)",
                                             pat, rank, cfg.hidden_size));
  bound("sequence_len", r.sequence_len(), 1, cfg.max_position_embeddings,
        fmt::format("the base's max_position_embeddings is {}", cfg.max_position_embeddings));
  bound("micro_batch_size", r.micro_batch_size(), 1, lim.max_micro_batch_size, "the server's cap for fine-tuning jobs");
  bound("gradient_accumulation_steps", r.gradient_accumulation_steps(), 1, lim.max_gradient_accumulation_steps,
        "the server's cap for fine-tuning jobs");
  const int threads = lim.max_threads > 0 ? lim.max_threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  bound("num_threads", r.num_threads(), 0, threads, "0 = all of the machine's threads");
  const train::MemoryEstimate e = train::estimate_training_memory(base, r);
  const uint64_t budget = lim.memory_budget_bytes ? lim.memory_budget_bytes : default_memory_budget();
  if (e.total_bytes() > budget)
    throw bad_request(fmt::format("this job would need about {} of memory, more than the server's fine-tuning budget of "
                                  "{} (--ft-memory-budget): lower extra.lora_r, extra.sequence_len or the LoRA targets",
                                  e.summary(), train::format_bytes(budget)),
                      "extra", "memory_limit_exceeded");
  return e;
}

}  // namespace graft::finetune
