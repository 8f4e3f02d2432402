// The Axolotl key table (see axolotl_keys.hpp) and its Markdown rendering for docs/recipes.md.
#include "axolotl_keys.hpp"

#include <fmt/format.h>
#include <fnmatch.h>

#include "graft/train/recipe.hpp"

namespace graft::train {
namespace recipe_detail {
namespace {
using S = AxolotlScope;
using K = AxolotlKind;

// Shared notes.
constexpr const char* kPrecision =
    "graft picks the compute precision itself (fp32 on the CPU backend; NF4 storage with load_in_4bit)";
constexpr const char* kAttention = "graft uses its own attention kernels (exact softmax attention, packed samples never attend across)";
constexpr const char* kLogging = "graft logs to the console and to <output_dir>/metrics.jsonl and loss.svg";
constexpr const char* kKernels = "graft runs its own fused CPU kernels; PyTorch kernel patches do not apply";
constexpr const char* kDistributed =
    "graft's data parallel is `mpirun -np N graft train` (docs/distributed.md) and trains what a single-process "
    "run trains: the global batch is micro_batch_size x gradient_accumulation_steps whatever N is (Axolotl on N "
    "GPUs multiplies it by N: raise gradient_accumulation_steps N-fold to match)";
constexpr const char* kRuntime = "a Python/PyTorch runtime setting with no effect on what graft trains";
constexpr const char* kHub = "graft does not upload to the Hugging Face Hub; the adapter is written to output_dir";
constexpr const char* kNoSft = "graft trains supervised (SFT) LoRA/QLoRA adapters only";
constexpr const char* kSchedule = "graft's schedules are constant, linear and cosine (to 0) after a linear warmup";

const std::vector<AxolotlKey> kKeys = {
    // ---- model loading and precision
    {S::Recipe, "base_model_config", K::Warn, "", "graft reads config.json from base_model", ""},
    {S::Recipe, "model_type", K::Warn, "", "graft reads the architecture from base_model's config.json", ""},
    {S::Recipe, "tokenizer_type", K::Warn, "", "graft reads tokenizer.json / tokenizer_config.json (from `tokenizer`, else base_model)", ""},
    {S::Recipe, "tokenizer_config", K::Warn, "", "graft reads the tokenizer from `tokenizer` (a directory), else base_model", ""},
    {S::Recipe, "tokenizer_use_fast", K::Warn, "", "graft has one tokenizer implementation (exactly HF's tokenizers)", ""},
    {S::Recipe, "tokenizer_legacy", K::Warn, "", "graft follows tokenizer.json exactly", ""},
    {S::Recipe, "is_llama_derived_model", K::Warn, "", "graft reads the architecture from config.json", ""},
    {S::Recipe, "is_mistral_derived_model", K::Warn, "", "graft reads the architecture from config.json", ""},
    {S::Recipe, "is_qwen_derived_model", K::Warn, "", "graft reads the architecture from config.json", ""},
    {S::Recipe, "trust_remote_code", K::Warn, "", "graft never runs model code; it implements the supported architectures itself", ""},
    {S::Recipe, "strict", K::Warn, "", "graft always validates every key", ""},
    {S::Recipe, "bf16", K::Warn, "", kPrecision, ""},
    {S::Recipe, "fp16", K::Warn, "", kPrecision, ""},
    {S::Recipe, "tf32", K::Warn, "", kPrecision, ""},
    {S::Recipe, "bfloat16", K::Warn, "", kPrecision, ""},
    {S::Recipe, "float16", K::Warn, "", kPrecision, ""},
    {S::Recipe, "bnb_4bit_compute_dtype", K::Warn, "", kPrecision, ""},
    {S::Recipe, "bnb_4bit_quant_storage", K::Warn, "", "graft stores NF4 codes packed two per byte", ""},
    {S::Recipe, "bnb_4bit_quant_type", K::WarnIfValue, "nf4", "graft quantizes to NF4 only",
     "use bnb_4bit_quant_type: nf4 (or remove the key)"},
    {S::Recipe, "load_in_8bit", K::WarnIfValue, "false", "graft quantizes bases to NF4 only",
     "use load_in_4bit: true with adapter: qlora, or a full-precision base with adapter: lora"},
    {S::Recipe, "quantize_moe_experts", K::WarnIfValue, "true", "with load_in_4bit graft always quantizes the experts too",
     "remove the key (experts are quantized whenever load_in_4bit is true)"},
    {S::Recipe, "gptq", K::Reject, "", "graft does not load GPTQ checkpoints", "use an unquantized base with load_in_4bit: true"},
    {S::Recipe, "device_map", K::Warn, "", "graft places the model itself (one process, one device)", ""},
    {S::Recipe, "max_memory", K::Warn, "", "graft places the model itself (one process, one device)", ""},
    {S::Recipe, "low_cpu_mem_usage", K::Warn, "", "graft memory-maps safetensors; loading never copies the whole model", ""},
    {S::Recipe, "gpu_memory_limit", K::Warn, "", kRuntime, ""},
    {S::Recipe, "resize_token_embeddings_to_32x", K::Reject, "",
     "graft never resizes the embedding matrix (lora_modules_to_save trains copies of the base's size)", "remove the key"},
    {S::Recipe, "rope_scaling", K::Reject, "", "graft takes config.json overrides from overrides_of_model_config only",
     "move it into overrides_of_model_config: {rope_scaling: {...}}"},
    {S::Recipe, "rope_theta", K::Reject, "", "graft takes config.json overrides from overrides_of_model_config only",
     "move it into overrides_of_model_config: {rope_theta: ...}"},
    // ---- attention and kernels
    {S::Recipe, "attn_implementation", K::Warn, "", kAttention, ""},
    {S::Recipe, "flash_attention", K::Warn, "", kAttention, ""},
    {S::Recipe, "sdp_attention", K::Warn, "", kAttention, ""},
    {S::Recipe, "xformers_attention", K::Warn, "", kAttention, ""},
    {S::Recipe, "flex_attention", K::Warn, "", kAttention, ""},
    {S::Recipe, "eager_attention", K::Warn, "", kAttention, ""},
    {S::Recipe, "s2_attention", K::Reject, "", "shifted sparse attention changes the model's attention",
     "remove the key (graft computes full causal attention)"},
    {S::Recipe, "flash_attn_cross_entropy", K::Warn, "", kKernels, ""},
    {S::Recipe, "flash_attn_rms_norm", K::Warn, "", kKernels, ""},
    {S::Recipe, "flash_attn_fuse_qkv", K::Warn, "", kKernels, ""},
    {S::Recipe, "flash_attn_fuse_mlp", K::Warn, "", kKernels, ""},
    {S::Recipe, "plugins", K::Warn, "", "Axolotl plugins are Python; graft has the kernels they provide built in", ""},
    {S::Recipe, "liger_*", K::Warn, "", kKernels, ""},
    {S::Recipe, "cut_cross_entropy", K::Warn, "", kKernels, ""},
    {S::Recipe, "chunked_cross_entropy*", K::Warn, "", kKernels, ""},
    {S::Recipe, "tiled_mlp*", K::Warn, "", kKernels, ""},
    {S::Recipe, "unsloth_*", K::Warn, "", kKernels, ""},
    {S::Recipe, "lora_*_kernel", K::Warn, "", kKernels, ""},
    {S::Recipe, "torch_compile*", K::Warn, "", kKernels, ""},
    {S::Recipe, "gradient_checkpointing_kwargs", K::Warn, "",
     "graft's activation checkpointing has no options (it keeps each layer's input and recomputes the layer)", ""},
    {S::Recipe, "activation_offloading", K::Warn, "",
     "graft trains on the CPU backend, where checkpointed activations already live in host memory", ""},
    // ---- logging, hub, runtime
    {S::Recipe, "wandb_*", K::Warn, "", kLogging, ""},
    {S::Recipe, "use_wandb", K::Warn, "", kLogging, ""},
    {S::Recipe, "mlflow_*", K::Warn, "", kLogging, ""},
    {S::Recipe, "use_mlflow", K::Warn, "", kLogging, ""},
    {S::Recipe, "comet_*", K::Warn, "", kLogging, ""},
    {S::Recipe, "use_comet", K::Warn, "", kLogging, ""},
    {S::Recipe, "swanlab_*", K::Warn, "", kLogging, ""},
    {S::Recipe, "use_tensorboard", K::Warn, "", kLogging, ""},
    {S::Recipe, "include_tokens_per_second", K::Warn, "", kLogging, ""},
    {S::Recipe, "include_tkps", K::Warn, "", kLogging, ""},
    {S::Recipe, "profiler_steps", K::Warn, "", kLogging, ""},
    {S::Recipe, "debug", K::Warn, "", kLogging, ""},
    {S::Recipe, "loss_watchdog_*", K::Warn, "", "graft has no loss watchdog; the loss is logged every logging_steps", ""},
    {S::Recipe, "hub_model_id", K::Warn, "", kHub, ""},
    {S::Recipe, "hub_strategy", K::Warn, "", kHub, ""},
    {S::Recipe, "hf_use_auth_token", K::Warn, "", kHub, ""},
    {S::Recipe, "push_dataset_to_hub", K::Warn, "", kHub, ""},
    {S::Recipe, "dataloader_*", K::Warn, "", kRuntime, ""},
    {S::Recipe, "dataset_processes", K::Warn, "", kRuntime, ""},
    {S::Recipe, "dataset_num_proc", K::Warn, "", kRuntime, ""},
    {S::Recipe, "dataset_keep_in_memory", K::Warn, "", kRuntime, ""},
    {S::Recipe, "skip_prepare_dataset", K::Warn, "", "graft tokenizes once and caches under dataset_prepared_path", ""},
    {S::Recipe, "gc_steps", K::Warn, "", kRuntime, ""},
    {S::Recipe, "auto_resume_from_checkpoints", K::Warn, "", "resume with `graft train RECIPE --resume`", ""},
    {S::Recipe, "save_safetensors", K::Warn, "", "graft always writes safetensors (and HDF5 checkpoints)", ""},
    {S::Recipe, "save_total_limit", K::Warn, "", "graft keeps every checkpoint under <output_dir>/checkpoints", ""},
    {S::Recipe, "save_only_model", K::Warn, "", "graft checkpoints hold the adapter and optimizer state (resumable)", ""},
    {S::Recipe, "save_first_step", K::Warn, "", "graft saves every save_steps and at the end", ""},
    {S::Recipe, "save_strategy", K::Warn, "", "graft saves every save_steps (or saves_per_epoch) and at the end", ""},
    {S::Recipe, "eval_strategy", K::Warn, "", "graft evaluates every eval_steps (or evals_per_epoch) and at the end", ""},
    {S::Recipe, "evaluation_strategy", K::Warn, "", "graft evaluates every eval_steps (or evals_per_epoch) and at the end", ""},
    {S::Recipe, "eval_batch_size", K::Warn, "", "the held-out loss does not depend on the evaluation batch size", ""},
    {S::Recipe, "eval_sample_packing", K::Warn, "",
     "graft evaluates the held-out data like the training data; the loss does not depend on packing", ""},
    {S::Recipe, "eval_max_new_tokens", K::Warn, "", "graft's generation check is eval_prompts", ""},
    {S::Recipe, "eval_table_size", K::Warn, "", "graft's generation check is eval_prompts", ""},
    {S::Recipe, "do_causal_lm_eval", K::Warn, "", "graft reports the held-out loss; run `graft eval` for more", ""},
    {S::Recipe, "eval_causal_lm_metrics", K::Warn, "", "graft reports the held-out loss; run `graft eval` for more", ""},
    {S::Recipe, "do_bench_eval", K::Warn, "", "graft reports the held-out loss; run `graft eval` for more", ""},
    {S::Recipe, "deepspeed", K::Warn, "", kDistributed, ""},
    {S::Recipe, "fsdp", K::Warn, "", kDistributed, ""},
    {S::Recipe, "fsdp_config", K::Warn, "", kDistributed, ""},
    {S::Recipe, "fsdp_version", K::Warn, "", kDistributed, ""},
    {S::Recipe, "ddp*", K::Warn, "", kDistributed, ""},
    {S::Recipe, "local_rank", K::Warn, "", kDistributed, ""},
    {S::Recipe, "world_size", K::Warn, "", kDistributed, ""},
    {S::Recipe, "context_parallel_size", K::Warn, "", kDistributed, ""},
    {S::Recipe, "sequence_parallel_degree", K::Warn, "", kDistributed, ""},
    {S::Recipe, "tensor_parallel_size", K::Warn, "", kDistributed, ""},
    {S::Recipe, "dp_shard_size", K::Warn, "", kDistributed, ""},
    {S::Recipe, "dp_replicate_size", K::Warn, "", kDistributed, ""},
    // ---- data
    {S::Recipe, "pad_to_sequence_len", K::Warn, "", "graft never pads (samples are packed or run one by one); padding carries no loss", ""},
    {S::Recipe, "sample_packing_eff_est", K::Warn, "", "graft packs greedily first-fit, deterministically", ""},
    {S::Recipe, "sample_packing_group_size", K::Warn, "", "graft packs greedily first-fit, deterministically", ""},
    {S::Recipe, "sample_packing_bin_size", K::Warn, "", "graft packs greedily first-fit, deterministically", ""},
    {S::Recipe, "sample_packing_sequentially", K::Warn, "", "graft packs greedily first-fit in input order", ""},
    {S::Recipe, "multipack_real_batches", K::Warn, "", "graft packs greedily first-fit, deterministically", ""},
    {S::Recipe, "total_num_tokens", K::Warn, "", "graft counts the tokens itself", ""},
    {S::Recipe, "shuffle_merged_datasets", K::WarnIfValue, "true", "graft always shuffles the training sequences (seeded)",
     "remove the key"},
    {S::Recipe, "group_by_length", K::WarnIfValue, "false", "batching by length changes the data order graft uses",
     "remove the key (graft shuffles with `seed`)"},
    {S::Recipe, "early_stopping_patience", K::Reject, "", "graft runs max_steps / num_epochs to the end",
     "remove the key and pick max_steps from the eval loss curve"},
    {S::Recipe, "auto_find_batch_size", K::WarnIfValue, "false", "graft runs the micro_batch_size it is given",
     "remove the key and set micro_batch_size"},
    {S::Recipe, "dataset_exact_deduplication", K::Reject, "", "graft trains on the data as given",
     "deduplicate the files beforehand"},
    {S::Recipe, "pretraining_dataset", K::Reject, "", "graft reads local files only",
     "give the text as a dataset with type: completion"},
    {S::Recipe, "default_system_message", K::Reject, "", "graft renders the conversations as given",
     "add the system turn to the data, or put it in a chat_template_jinja"},
    {S::Recipe, "tokens", K::Reject, "",
     "adding tokens grows the embedding matrix and lm_head; graft keeps the base's vocabulary (lora_modules_to_save trains copies of the same size)",
     "use tokens already in the tokenizer's vocabulary (e.g. a template its tokenizer already has)"},
    {S::Recipe, "added_tokens_overrides", K::Reject, "", "graft uses the tokenizer's vocabulary as it is",
     "edit a copy of the tokenizer instead"},
    {S::Recipe, "fix_untrained_tokens", K::Reject, "", "it rewrites the base's embedding rows; graft never changes the base's weights (train rows with lora_modules_to_save: [embed_tokens, lm_head])",
     "remove the key"},
    {S::Recipe, "excess_length_strategy", K::Reject, "", "graft drops samples longer than sequence_len",
     "remove the key, or raise sequence_len"},
    // ---- adapter
    {S::Recipe, "lora_model_dir", K::Reject, "", "graft cannot start from an existing PEFT adapter",
     "continue a graft run with resume_from_checkpoint (or `graft train --resume`)"},
    {S::Recipe, "lora_fan_in_fan_out", K::WarnIfValue, "false", "fan-in/fan-out LoRA is for GPT-2-style Conv1D layers",
     "remove the key"},
    {S::Recipe, "lora_on_cpu", K::Warn, "", "graft keeps the LoRA weights where the model runs", ""},
    {S::Recipe, "peft_use_dora", K::WarnIfValue, "false", "DoRA is not supported", "remove the key (plain LoRA)"},
    {S::Recipe, "peft_layers_to_transform", K::Reject, "", "graft selects layers through the target regex",
     "use a lora_target_modules regex such as '.*layers\\.(0|1|2)\\..*(q_proj|v_proj)'"},
    {S::Recipe, "peft_layers_pattern", K::Reject, "", "graft selects layers through the target regex",
     "use a lora_target_modules regex"},
    {S::Recipe, "peft_init_lora_weights", K::Reject, "", "graft initialises LoRA as PEFT's default (Kaiming A, zero B)",
     "remove the key"},
    {S::Recipe, "peft_layer_replication", K::Reject, "", "layer replication changes the model", "remove the key"},
    {S::Recipe, "unfrozen_parameters", K::Reject, "", "graft trains LoRA adapters only (the base stays frozen)",
     "remove the key"},
    {S::Recipe, "relora_*", K::Reject, "", "ReLoRA restarts are not supported", "remove the relora keys"},
    {S::Recipe, "loraplus_*", K::Reject, "", "LoRA+ learning-rate ratios are not supported",
     "remove the key (A and B share learning_rate)"},
    // ---- optimizer and schedule
    {S::Recipe, "optim_args", K::Reject, "", "graft's AdamW takes its settings from adam_beta1/2, adam_epsilon, weight_decay",
     "use those keys"},
    {S::Recipe, "optim_target_modules", K::Reject, "", "graft optimizes every LoRA weight", "remove the key"},
    {S::Recipe, "lr_scheduler_kwargs", K::Reject, "", kSchedule, "remove the key"},
    {S::Recipe, "cosine_min_lr_ratio", K::Reject, "", "graft's cosine schedule decays to 0",
     "remove the key (or use lr_scheduler: constant)"},
    {S::Recipe, "cosine_constant_lr_ratio", K::Reject, "", kSchedule, "remove the key"},
    {S::Recipe, "lr_quadratic_warmup", K::Reject, "", "graft's warmup is linear", "remove the key"},
    {S::Recipe, "lr_div_factor", K::Reject, "", kSchedule, "remove the key"},
    {S::Recipe, "lr_groups", K::Reject, "", "graft uses one learning rate for every LoRA weight", "remove the key"},
    {S::Recipe, "embedding_lr", K::Reject, "", "graft trains the lora_modules_to_save copies at learning_rate (no separate rate)", "remove the key"},
    {S::Recipe, "embedding_lr_scale", K::Reject, "", "graft trains the lora_modules_to_save copies at learning_rate (no separate rate)", "remove the key"},
    {S::Recipe, "neftune_noise_alpha", K::Reject, "", "NEFTune embedding noise is not supported", "remove the key"},
    {S::Recipe, "noisy_embedding_alpha", K::Reject, "", "NEFTune embedding noise is not supported", "remove the key"},
    {S::Recipe, "load_best_model_at_end", K::Reject, "", "graft exports the adapter of the last step",
     "remove the key; every checkpoint under <output_dir>/checkpoints can be resumed or exported"},
    {S::Recipe, "metric_for_best_model", K::Reject, "", "graft exports the adapter of the last step", "remove the key"},
    {S::Recipe, "greater_is_better", K::Reject, "", "graft exports the adapter of the last step", "remove the key"},
    {S::Recipe, "batch_size", K::Reject, "", "Axolotl's batch_size is micro_batch_size x gradient_accumulation_steps",
     "set micro_batch_size and gradient_accumulation_steps instead"},
    // ---- other training methods
    {S::Recipe, "rl", K::Reject, "", kNoSft, "remove the key"},
    {S::Recipe, "dpo_*", K::Reject, "", kNoSft, "remove the key"},
    {S::Recipe, "orpo_*", K::Reject, "", kNoSft, "remove the key"},
    {S::Recipe, "kd_*", K::Reject, "", kNoSft, "remove the key"},
    {S::Recipe, "reward_model", K::Reject, "", kNoSft, "remove the key"},
    {S::Recipe, "process_reward_model", K::Reject, "", kNoSft, "remove the key"},
    // ---- dataset entries
    {S::Dataset, "ds_type", K::Warn, "", "graft detects JSON / JSONL from the file", ""},
    {S::Dataset, "trust_remote_code", K::Warn, "", "graft reads local files only and never runs dataset code", ""},
    {S::Dataset, "preprocess_shards", K::Warn, "", kRuntime, ""},
    {S::Dataset, "data_files", K::Reject, "", "graft reads one local file or directory per entry",
     "give the file as path (one entry per file)"},
    {S::Dataset, "name", K::Reject, "", "it selects a Hugging Face Hub dataset configuration; graft reads local files",
     "download that configuration and give its file as path"},
    {S::Dataset, "revision", K::Reject, "", "graft reads local files only", "download that revision and give its file as path"},
    {S::Dataset, "shards", K::Reject, "", "graft trains on the whole file", "split the file beforehand"},
    {S::Dataset, "chat_template", K::Reject, "", "graft uses one chat template for every dataset",
     "set the top-level chat_template"},
    {S::Dataset, "drop_system_message", K::Reject, "", "graft renders the conversations as given",
     "remove the system turns from the data"},
    {S::Dataset, "conversation", K::Reject, "", "the FastChat conversation templates are not supported",
     "use type: chat_template with a chat_template name or chat_template_jinja"},
    {S::Dataset, "field_system", K::Reject, "", "graft's alpaca format has no system field", "remove the key"},
    {S::Dataset, "message_field_training", K::Reject, "", "per-message training flags are not supported",
     "use roles_to_train"},
    {S::Dataset, "message_field_training_detail", K::Reject, "", "per-message training flags are not supported",
     "use roles_to_train"},
};

bool glob_match(const char* pattern, const std::string& key) { return ::fnmatch(pattern, key.c_str(), 0) == 0; }

std::string status_text(const AxolotlKey& k) {
  switch (k.kind) {
    case K::Warn: return "accepted, warning";
    case K::WarnIfValue: return fmt::format("accepted with `{}` (warning), else rejected", k.accept);
    default: return "**rejected**";
  }
}

std::string md_escape(const std::string& s) {
  std::string o;
  for (char c : s) o += c == '|' ? std::string("\\|") : std::string(1, c);
  return o;
}

}  // namespace

const std::vector<AxolotlKey>& axolotl_keys() { return kKeys; }

const AxolotlKey* find_axolotl_key(AxolotlScope scope, const std::string& key) {
  for (const auto& k : kKeys)
    if (k.scope == scope && key == k.name) return &k;
  for (const auto& k : kKeys)
    if (k.scope == scope && glob_match(k.name, key)) return &k;
  return nullptr;
}

}  // namespace recipe_detail

std::string axolotl_keys_markdown() {
  using namespace recipe_detail;
  std::string o = "| key | scope | graft | what graft does / why not |\n|---|---|---|---|\n";
  for (const auto& k : axolotl_keys()) {
    std::string what = k.note;
    if (k.kind != AxolotlKind::Warn) what += fmt::format("; fix: {}", k.fix);
    o += fmt::format("| `{}` | {} | {} | {} |\n", md_escape(k.name), k.scope == AxolotlScope::Recipe ? "recipe" : "dataset",
                     status_text(k), md_escape(what));
  }
  return o;
}

}  // namespace graft::train
