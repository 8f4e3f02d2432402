// A recipe's chat template and special tokens, resolved against its tokenizer (chat_templates.hpp).
#include <fmt/format.h>

#include <filesystem>

#include "graft/error.hpp"
#include "graft/mmap_file.hpp"
#include "graft/train/chat_templates.hpp"

namespace graft::train {
namespace fs = std::filesystem;
namespace {

constexpr const char* kFallbackPrefix = "tokenizer_default_fallback_";

bool is_inline_jinja(const std::string& s) { return s.find("{{") != std::string::npos || s.find("{%") != std::string::npos; }

// The tokenizer's special tokens, then the recipe's overrides, as template variables.
void bind_special_tokens(chat_template::ChatTemplate& t, const Recipe& r, const tokenizer::Tokenizer& tok,
                         bool from_tokenizer_config) {
  auto& v = t.variables();
  if (!from_tokenizer_config) {  // from_tokenizer_config binds the tokenizer's own already
    const auto& c = tok.config();
    for (const auto& [k, val] : {std::pair<const char*, const std::string*>{"bos_token", &c.bos_token},
                                 {"eos_token", &c.eos_token}, {"pad_token", &c.pad_token}, {"unk_token", &c.unk_token}})
      if (!val->empty()) v[k] = *val;
  }
  for (const auto& [k, val] : r.special_tokens()) v[k] = val;
}

}  // namespace

std::unique_ptr<chat_template::ChatTemplate> recipe_chat_template(const Recipe& r, const tokenizer::Tokenizer& tok,
                                                                  const std::string& tokenizer_dir) {
  using chat_template::ChatTemplate;
  std::unique_ptr<ChatTemplate> t;
  const std::string choice = r.chat_template().empty() ? std::string("tokenizer_default") : r.chat_template();
  if (!r.chat_template_jinja().empty() || choice == "jinja") {
    std::string src = r.chat_template_jinja();
    GRAFT_CHECK_FIX(!src.empty(), "set chat_template_jinja to Jinja source or a .jinja file",
                    "chat_template: jinja needs chat_template_jinja");
    if (!is_inline_jinja(src)) {
      GRAFT_CHECK_FIX(fs::is_regular_file(src), "give Jinja source inline or the path of an existing .jinja file",
                      "chat_template_jinja '{}' is neither Jinja source nor a readable file", src);
      src = read_text_file(src);
    }
    t = std::make_unique<ChatTemplate>(src, "chat_template_jinja");
    bind_special_tokens(*t, r, tok, false);
    return t;
  }
  if (is_inline_jinja(choice)) {
    t = std::make_unique<ChatTemplate>(choice, "chat_template (recipe)");
    bind_special_tokens(*t, r, tok, false);
    return t;
  }
  std::string name = choice, fallback;
  if (name.rfind(kFallbackPrefix, 0) == 0) {
    fallback = name.substr(std::string(kFallbackPrefix).size());
    name = "tokenizer_default";
  }
  if (name == "tokenizer_default") {
    if (fs::exists(fs::path(tokenizer_dir) / "tokenizer_config.json") && !tok.config().chat_template.empty()) {
      t = std::make_unique<ChatTemplate>(ChatTemplate::from_tokenizer_config(tokenizer_dir));
      bind_special_tokens(*t, r, tok, true);
      return t;
    }
    if (fallback.empty()) return nullptr;
    name = fallback;
  }
  const std::string src = named_chat_template_source(name);
  GRAFT_CHECK_FIX(!src.empty(), "use tokenizer_default, a named template (docs/recipes.md) or chat_template_jinja",
                  "graft has no chat template named '{}'", name);
  t = std::make_unique<ChatTemplate>(src, "chat_template: " + name);
  bind_special_tokens(*t, r, tok, false);
  return t;
}

std::vector<std::string> special_token_problems(const Recipe& r, const tokenizer::Tokenizer& tok, bool has_template) {
  std::vector<std::string> out;
  const auto& c = tok.config();
  for (const auto& [k, v] : r.special_tokens()) {
    if (!tok.token_to_id(v)) {
      out.push_back(fmt::format(
          "special_tokens.{} '{}' is not a token of the tokenizer: graft cannot add tokens (the embedding matrix and "
          "lm_head keep the base's vocabulary, so a new token would have no row)\n  fix: use a token of the "
          "vocabulary{}",
          k, v, k == "eos_token" && !c.eos_token.empty() ? fmt::format(" (the tokenizer's eos_token is '{}')", c.eos_token) : ""));
      continue;
    }
    const std::string& own = k == "bos_token" ? c.bos_token : k == "eos_token" ? c.eos_token : std::string();
    if ((k != "bos_token" && k != "eos_token") || own == v) continue;
    // A different BOS/EOS reaches the chat template; datasets rendered without one use the tokenizer's.
    for (const auto* list : {&r.datasets(), &r.test_datasets()})
      for (const auto& d : *list)
        if (d.type() == "completion" || (d.type() == "alpaca" && !has_template))
          out.push_back(fmt::format(
              "special_tokens.{} '{}' differs from the tokenizer's '{}', and dataset '{}' (type {}) is tokenized "
              "without a chat template, where graft uses the tokenizer's {}\n  fix: remove special_tokens.{}, or "
              "give the tokenizer directory a tokenizer_config.json whose {} is '{}' (tokenizer: DIR)",
              k, v, own, d.path(), d.type(), k, k, k, v));
  }
  return out;
}

}  // namespace graft::train
