// Axolotl keys that are not graft schema keys: which are accepted (with a warning saying what graft
// does instead) and which are rejected (with the reason and a fix). Internal to train/src/recipe;
// docs/recipes.md "Axolotl keys" is generated from this table (axolotl_keys_markdown()) and a test
// keeps the two equal.
#pragma once

#include <string>
#include <vector>

namespace graft::train::recipe_detail {

enum class AxolotlScope { Recipe, Dataset };

enum class AxolotlKind {
  Warn,         // accepted whatever the value; one warning line (`note` = what graft does instead)
  WarnIfValue,  // accepted with a warning when the value is `accept` (e.g. load_in_8bit: false), else rejected
  Reject,       // rejected: `note` = why, `fix` = what to do
};

struct AxolotlKey {
  AxolotlScope scope;
  const char* name;    // exact key, or a glob ("wandb_*", "lora_*_kernel")
  AxolotlKind kind;
  const char* accept;  // WarnIfValue: the accepted value ("false", "true", "nf4"); else ""
  const char* note;    // Warn: what graft does instead; Reject / WarnIfValue: why the other values are refused
  const char* fix;     // Reject / WarnIfValue: what to do instead
};

const std::vector<AxolotlKey>& axolotl_keys();

// The table entry for `key` (exact names win over globs), or nullptr.
const AxolotlKey* find_axolotl_key(AxolotlScope scope, const std::string& key);

}  // namespace graft::train::recipe_detail
