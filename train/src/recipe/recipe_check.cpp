// `graft train --check`: the checks that need files but not weights (chat_templates.hpp).
#include <fmt/format.h>

#include <filesystem>

#include "graft/config/model_config.hpp"
#include "graft/error.hpp"
#include "graft/train/chat_templates.hpp"

namespace graft::train {
namespace fs = std::filesystem;

RecipeCheck check_recipe_files(const LoadedRecipe& lr) {
  const Recipe& r = lr.proto;
  RecipeCheck out;
  auto problem = [&](const std::string& what, const std::string& fix) {
    out.problems.push_back(fix.empty() ? what : what + "\n  fix: " + fix);
  };
  // ---- base model: config.json and the presence of weights (never read)
  const fs::path base = r.base_model();
  if (fs::is_directory(base)) {
    try {
      const auto cfg = config::load_model_config(base.string(), r.overrides_of_model_config());
      out.notes.push_back(fmt::format("base_model {}: config.json{} is a supported {} ({} layers, hidden {}, vocab {})",
                                      base.string(), r.has_overrides_of_model_config() ? " with overrides_of_model_config" : "",
                                      cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size));
      const auto targets = lora_target_problems(r, cfg);
      out.problems.insert(out.problems.end(), targets.begin(), targets.end());
      if (targets.empty())
        out.notes.push_back(fmt::format("LoRA targets: every target name matches modules of this {} base", cfg.model_type));
    } catch (const graft::Error& e) {
      problem(fmt::format("base_model {}: {}", base.string(), e.message()), e.fix());
      out.notes.push_back("LoRA targets: not checked (base_model's config.json did not load)");
    }
    bool weights = false;
    for (const auto& e : fs::directory_iterator(base)) weights = weights || e.path().extension() == ".safetensors";
    if (!weights)
      problem(fmt::format("base_model {} has no .safetensors weights", base.string()),
              "point base_model at a Hugging Face model directory (config.json + *.safetensors)");
  } else {
    out.notes.push_back(fmt::format(
        "base_model '{}' is not a local directory here: not checked (graft train loads a local directory; download "
        "it, e.g. `huggingface-cli download {} --local-dir DIR`, and set base_model: DIR)",
        r.base_model(), r.base_model()));
    out.notes.push_back(fmt::format("LoRA targets: not checked against the architecture (base_model '{}' is not on disk "
                                    "here, and its config.json names the modules)", r.base_model()));
  }
  // ---- tokenizer, chat template, special tokens
  const std::string tok_dir = r.has_tokenizer() ? r.tokenizer() : r.base_model();
  if (fs::exists(fs::path(tok_dir) / "tokenizer.json")) {
    try {
      auto tok = tokenizer::Tokenizer::from_file(tok_dir);
      auto tpl = recipe_chat_template(r, tok, tok_dir);
      out.notes.push_back(fmt::format("tokenizer {}: vocabulary of {} tokens; chat template: {}", tok_dir, tok.vocab_size(),
                                      tpl ? tpl->name() : std::string("none")));
      for (const auto& p : special_token_problems(r, tok, tpl != nullptr)) out.problems.push_back(p);
      for (const auto* list : {&r.datasets(), &r.test_datasets()})
        for (const auto& d : *list)
          if (!tpl && (d.type() == "chat_template" || d.type() == "sharegpt"))
            problem(fmt::format("dataset '{}' (type {}) needs a chat template, and the tokenizer in {} has none",
                                d.path(), d.type(), tok_dir),
                    "set chat_template to a named template (e.g. chatml) or tokenizer_default_fallback_chatml");
    } catch (const graft::Error& e) {
      problem(fmt::format("tokenizer {}: {}", tok_dir, e.message()), e.fix());
    }
  } else {
    out.notes.push_back(fmt::format("tokenizer: {} has no tokenizer.json here: tokenizer, chat template and "
                                    "special_tokens not checked against it", tok_dir));
    if (!r.chat_template_jinja().empty() || r.chat_template().find("{") != std::string::npos) {
      try {  // the template still has to parse
        const std::string src = r.chat_template_jinja().empty() ? r.chat_template() : r.chat_template_jinja();
        if (src.find("{{") != std::string::npos || src.find("{%") != std::string::npos)
          (void)chat_template::ChatTemplate(src, "chat_template (recipe)");
        else if (!fs::is_regular_file(src))
          problem(fmt::format("chat_template_jinja '{}' is neither Jinja source nor a readable file", src),
                  "give Jinja source inline or the path of an existing .jinja file");
      } catch (const graft::Error& e) {
        problem(e.message(), e.fix());
      }
    }
  }
  // ---- data files (read at training time; only their presence is checked)
  for (const auto* list : {&r.datasets(), &r.test_datasets()})
    for (const auto& d : *list) {
      std::error_code ec;
      if (fs::exists(d.path(), ec))
        out.notes.push_back(fmt::format("dataset {} ({}): found", d.path(), d.type()));
      else
        out.notes.push_back(fmt::format("dataset {} ({}): not found here: not checked (graft reads local JSON/JSONL "
                                        "files, never the Hub: download it and set its path, e.g. --set "
                                        "datasets.0.path=FILE)",
                                        d.path(), d.type()));
    }
  return out;
}

}  // namespace graft::train
