// Chat templates of a recipe: Axolotl's named templates (chat_template: llama3, qwen3, ...) and the
// resolution of a recipe's chat_template / chat_template_jinja / special_tokens against its tokenizer.
//
//   auto tpl = recipe_chat_template(recipe.proto, tok, tok_dir);  // null: no template (none needed)
//
// As in Axolotl, a named template replaces the tokenizer's own template (tokenizer_default uses the
// tokenizer's; tokenizer_default_fallback_<name> uses the tokenizer's and <name> only when it has
// none). See docs/recipes.md "Chat templates".
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "graft/chat_template/chat_template.hpp"
#include "graft/config/model_config.hpp"
#include "graft/tokenizer/tokenizer.hpp"
#include "graft/train/recipe.hpp"

namespace graft::train {

// Names graft has a built-in template for: chatml, qwen_25, qwen3, llama3, llama4, deepseek_v2, deepseek_v3.
const std::vector<std::string>& named_chat_template_names();

// Jinja source of a named template ("" for an unknown name). The sources are written for graft and
// render tool-free conversations exactly like the model family's official template.
std::string named_chat_template_source(const std::string& name);

// The template the recipe asks for, with the tokenizer's special tokens (and the recipe's
// special_tokens overrides) bound as variables. Null when the recipe says tokenizer_default and the
// tokenizer has no template (the data loader then reports it if a dataset needs one). Throws
// graft::Error for a chat_template_jinja file that cannot be read or a template that does not parse.
std::unique_ptr<chat_template::ChatTemplate> recipe_chat_template(const Recipe& recipe, const tokenizer::Tokenizer& tok,
                                                                  const std::string& tokenizer_dir);

// Checks the recipe's special_tokens against the tokenizer: every token must already be one token
// of its vocabulary (graft cannot add tokens: the embedding matrix and lm_head are frozen under
// LoRA), and bos/eos overrides that differ from tokenizer_config.json are only honoured through the
// chat template (completion datasets, and alpaca ones without a template, append the tokenizer's
// EOS: then it is a problem). Returns one problem each (what, then "\n  fix: ..."); empty when fine.
std::vector<std::string> special_token_problems(const Recipe& recipe, const tokenizer::Tokenizer& tok, bool has_template);

// `graft train --check`: what can be checked without loading weights. Reads base_model's
// config.json and the tokenizer files when they exist locally and says what it could not check.
struct RecipeCheck {
  std::vector<std::string> notes;     // checked / not checked, one line each
  std::vector<std::string> problems;  // would fail at training time, one line each (with a fix)
};
RecipeCheck check_recipe_files(const LoadedRecipe& recipe);
// The recipe's LoRA target names (lora_target_modules list entries and regex, lora_target_parameters)
// that match no module of a model with config `cfg` (config.json only, no weights), one problem each
// naming the entry and listing the family's valid names, with a fix. Empty when all can match.
std::vector<std::string> lora_target_problems(const Recipe& recipe, const config::ModelConfig& cfg);

}  // namespace graft::train
