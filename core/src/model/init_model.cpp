#include "graft/model/init_model.hpp"

#include <nlohmann/json.hpp>

#include <filesystem>
#include <initializer_list>

#include "graft/config/model_config.hpp"
#include "graft/error.hpp"
#include "graft/io/safetensors.hpp"
#include "graft/mmap_file.hpp"
#include "graft/model/model.hpp"
#include "graft/model/presets.hpp"
#include "graft/tokenizer/tokenizer.hpp"

namespace graft::model {
namespace {
namespace fs = std::filesystem;
void write_text(const fs::path& p, const std::string& s) { graft::write_file_atomic(p.string(), s.data(), s.size()); }
}  // namespace

InitModelResult write_random_model(const InitModelOptions& a) {
  GRAFT_CHECK_FIX(a.dtype == "f32" || a.dtype == "bf16", "use --dtype f32 or bf16", "unsupported --dtype '{}'", a.dtype);
  std::error_code ec;
  fs::create_directories(a.out, ec);
  GRAFT_CHECK_FIX(!ec && fs::is_directory(a.out), "choose a writable output directory", "cannot create '{}': {}", a.out,
                  ec.message());
  std::string tok_json, tok_cfg;
  if (!a.tokenizer_dir.empty()) {
    const fs::path src = fs::path(a.tokenizer_dir);
    GRAFT_CHECK_FIX(fs::exists(src / "tokenizer.json"), "pass a directory holding tokenizer.json",
                    "--tokenizer '{}' has no tokenizer.json", a.tokenizer_dir);
    tok_json = read_text_file((src / "tokenizer.json").string());
    if (fs::exists(src / "tokenizer_config.json")) tok_cfg = read_text_file((src / "tokenizer_config.json").string());
  } else {
    tok_json = tiny_tokenizer_json().dump(2);
    tok_cfg = tiny_tokenizer_config().dump(2);
  }
  auto tok = tokenizer::Tokenizer::from_json(tok_json, a.tokenizer_dir.empty() ? "tiny tokenizer" : a.tokenizer_dir);
  const int64_t vocab = static_cast<int64_t>(tok.vocab_size());
  auto id_of = [&](std::initializer_list<const char*> names) -> int64_t {
    for (const char* n : names)
      if (auto id = tok.token_to_id(n)) return *id;
    return -1;
  };
  const int64_t eos = id_of({"<|im_end|>", "<|eot_id|>", "</s>", "<|endoftext|>", "<|end_of_text|>"});
  const int64_t bos = id_of({"<|begin_of_text|>", "<s>", "<|endoftext|>"});
  auto cfg_json = preset_config(a.arch, a.preset, vocab, bos, eos);
  auto cfg = config::parse_model_config_text(cfg_json.dump(), "generated config.json");
  auto tensors = random_checkpoint(cfg, a.seed, a.embed_std);
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
  InitModelResult r;
  for (auto& [n, t] : tensors) r.params += t.numel();
  r.tensors = static_cast<int64_t>(tensors.size());
  r.vocab = vocab;
  return r;
}

}  // namespace graft::model
