// `graft generate MODEL_DIR --prompt "..." [--chat] [--max-tokens N] [--temperature T --top-p P
//  --top-k K --seed S] [--adapter DIR [--adapter-scale W]]... [--load-in-4bit] [--lm-head-dtype f32|q8|q6|nf4] [--json]`
// Streams the continuation to stdout as it is generated. With adapters the model runs with
// W + Σ w_i · s_i · B_i A_i (adapters::combine; w_i = --adapter-scale, default 1). With --json prints one object
// {"prompt_ids": [...], "generated_ids": [...], "text": "..."} instead. Greedy (temperature 0, the
// default) is deterministic.
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <filesystem>
#include <optional>

#include "command.hpp"
#include "device_option.hpp"
#include "expert_parallel_inference.hpp"
#include "lm_head_option.hpp"
#include "graft/adapters/combine.hpp"
#include "graft/adapters/peft.hpp"
#include "graft/chat_template/chat_template.hpp"
#include "graft/cpu/cpu_backend.hpp"
#include "graft/error.hpp"
#include "graft/model/generate.hpp"
#include "graft/tokenizer/tokenizer.hpp"

namespace {
struct GenerateArgs {
  std::string device = "auto";  // --device
  std::string lm_head_dtype = "f32";  // --lm-head-dtype
  std::string dir, prompt, system;
  std::vector<std::string> adapters;
  std::vector<float> adapter_scales;
  bool chat = false, json = false, load_in_4bit = false;
  int max_tokens = 128;
  graft::model::SamplingParams sampling;
};

void run(const GenerateArgs& a) {
  using namespace graft;
  namespace fs = std::filesystem;
  GRAFT_CHECK_FIX(fs::exists(fs::path(a.dir) / "config.json"), "pass a Hugging Face model directory",
                  "'{}' has no config.json", a.dir);
  model::validate(a.sampling);
  GRAFT_CHECK_FIX(a.adapter_scales.empty() || a.adapter_scales.size() == a.adapters.size(),
                  "give one --adapter-scale per --adapter, in the same order (or none: all 1)",
                  "{} --adapter-scale values for {} --adapter directories", a.adapter_scales.size(), a.adapters.size());
  auto tok = tokenizer::Tokenizer::from_file(a.dir);
  std::vector<int32_t> prompt_ids;
  if (a.chat) {
    auto tpl = chat_template::ChatTemplate::from_tokenizer_config(a.dir);
    nlohmann::ordered_json msgs = nlohmann::ordered_json::array();
    if (!a.system.empty()) msgs.push_back({{"role", "system"}, {"content", a.system}});
    msgs.push_back({{"role", "user"}, {"content", a.prompt}});
    chat_template::RenderOptions ro;
    ro.add_generation_prompt = true;
    prompt_ids = tok.encode(tpl.render(msgs, ro).text, false);
  } else {
    // Raw prompts get the tokenizer's own special tokens (e.g. BOS), as transformers' tokenizer() does.
    prompt_ids = tok.encode(a.prompt, /*add_special_tokens=*/true);
  }
  GRAFT_CHECK_FIX(!prompt_ids.empty(), "pass a non-empty --prompt", "the prompt encodes to no tokens");
  model::LoadOptions lo;
  lo.load_in_4bit = a.load_in_4bit;
  lo.lm_head_dtype = graft::cli::lm_head_dtype(a.lm_head_dtype);
  graft::cli::InferenceGroup group(a.dir, lo, a.device, "generate");  // mpirun: experts sharded over the ranks
  if (!group.model()) return;  // a worker rank: it served its experts' rows until rank 0 finished
  auto& m = *group.model();
  for (int32_t id : prompt_ids)
    GRAFT_CHECK_FIX(id >= 0 && id < m.vocab_size(), "use the tokenizer that belongs to this model",
                    "prompt token id {} is outside the model's vocabulary of {}", id, m.vocab_size());
  std::vector<adapters::Adapter> loaded;
  for (const auto& d : a.adapters) loaded.push_back(adapters::load_peft(d, m.config()));
  std::optional<adapters::Adapter> combined;
  if (!loaded.empty()) {
    std::vector<const adapters::Adapter*> ptrs;
    for (const auto& ad : loaded) ptrs.push_back(&ad);
    std::vector<float> w = a.adapter_scales.empty() ? std::vector<float>(loaded.size(), 1.0f) : a.adapter_scales;
    combined = adapters::combine(ptrs, w);
  }
  auto be = graft::cli::backend_for(a.device);
  model::GenerateOptions go;
  go.adapter = combined ? &*combined : nullptr;
  go.sampling = a.sampling;
  go.max_tokens = a.max_tokens;
  go.stop_ids = model::eos_ids(a.dir);
  tokenizer::StreamDecoder stream(tok, /*skip_special_tokens=*/true);
  auto ids = model::generate(m, *be, prompt_ids, go, [&](int32_t id) {
    if (!a.json) {
      std::string piece = stream.step(id);
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
    }
    return true;
  });
  if (a.json) {
    nlohmann::json out = {{"prompt_ids", prompt_ids}, {"generated_ids", ids}, {"text", tok.decode(ids, true)}};
    std::printf("%s\n", out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  } else {
    std::string rest = stream.flush();
    std::fwrite(rest.data(), 1, rest.size(), stdout);
    std::printf("\n");
  }
}

graft::cli::Registration reg{"generate", 40, [](CLI::App& app) {
  auto a = std::make_shared<GenerateArgs>();
  auto* sub = app.add_subcommand("generate", "Generate text from a model on the CPU backend");
  sub->add_option("model_dir", a->dir, "Hugging Face model directory")->required();
  graft::cli::add_device_option(sub, a->device);
  sub->add_option("--prompt", a->prompt, "Prompt text")->required();
  sub->add_flag("--chat", a->chat, "Wrap the prompt as a user turn with the model's chat template");
  sub->add_option("--system", a->system, "System message (with --chat)");
  sub->add_option("--max-tokens", a->max_tokens, "Maximum new tokens")->check(CLI::NonNegativeNumber);
  sub->add_option("--temperature", a->sampling.temperature, "Sampling temperature (0 = greedy)");
  sub->add_option("--top-p", a->sampling.top_p, "Nucleus sampling probability mass");
  sub->add_option("--top-k", a->sampling.top_k, "Keep only the K most likely tokens (0 = off)");
  sub->add_option("--min-p", a->sampling.min_p, "Drop tokens below min_p x the top probability");
  sub->add_option("--seed", a->sampling.seed, "Random seed for sampling");
  sub->add_option("--adapter", a->adapters, "PEFT LoRA adapter directory (repeatable: the adapters' deltas add up)");
  sub->add_option("--adapter-scale", a->adapter_scales,
                  "Weight of the adapter's delta, one per --adapter in order (default 1; 0 = the base)");
  sub->add_flag("--load-in-4bit", a->load_in_4bit, "Quantize projection weights to NF4 on load");
  graft::cli::add_lm_head_dtype_option(sub, a->lm_head_dtype);
  sub->add_flag("--json", a->json, "Print {prompt_ids, generated_ids, text} as JSON");
  sub->callback([a] { run(*a); });
}};
}  // namespace
