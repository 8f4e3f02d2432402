// Training recipes: YAML with Axolotl-compatible keys, validated against train/proto/recipe.proto.
//
//   auto r = graft::train::load_recipe("recipes/demo.yaml", {"lora_r=16", "datasets.0.path=x.jsonl"});
//   r.proto.lora_r();   // every documented default is filled in (see docs/recipes.md)
//
// Errors (graft::Error) name the key, the file line/column (or the --set override it came from),
// the expected type or valid choices/range, and for unknown keys the closest valid key. Every
// problem of a recipe is reported at once: one graft::Error lists them all, each with its fix.
#pragma once

#include <string>
#include <vector>

// Generated from train/proto/recipe.proto into the build tree (the folder depends on how
// protobuf_generate lays it out).
#if __has_include("recipe.pb.h")
#include "recipe.pb.h"
#else
#include "proto/recipe.pb.h"
#endif

namespace graft::train {

struct LoadedRecipe {
  graft::train::Recipe proto;  // validated, every default filled in
  std::string text;            // canonical YAML of the effective recipe (recipe_to_yaml(proto)); reloads to the same proto
  std::string hash;            // sha256 hex of recipe_hash_json(proto)
  std::string source;          // file path, or the name given to parse_recipe_text
  // One line per accepted-but-ignored key (Axolotl runtime keys such as bf16, wandb_project) and per
  // key graft honours differently (8-bit optimizer names, gradient_checkpointing: offload):
  // "file:line:col: key 'bf16' is ignored: <what graft does instead>". Callers print them.
  std::vector<std::string> warnings;
};

// Reads `path` and calls parse_recipe_text. `overrides` are "key=value" (dotted keys for nested
// fields and list indices: "datasets.0.path=data.jsonl"); the value is parsed as YAML
// ("lora_target_modules=[q_proj,v_proj]").
LoadedRecipe load_recipe(const std::string& path, const std::vector<std::string>& overrides = {});

LoadedRecipe parse_recipe_text(const std::string& yaml_text, const std::string& source = "<recipe>",
                               const std::vector<std::string>& overrides = {});

// Every key with its effective value (unset "absence matters" keys print as null), in schema order.
std::string recipe_to_yaml(const Recipe& recipe);

// The JSON the hash covers: keys in schema order, map keys sorted, fields equal to their default
// omitted (so spelling out a default does not change the hash, and new keys added to the schema
// with a default do not change old hashes), and operational keys that do not change the training
// trajectory (output_dir, dataset_prepared_path, resume_from_checkpoint, num_threads,
// logging_steps, save_steps) left out.
std::string recipe_hash_json(const Recipe& recipe);

// The "Axolotl keys" table of docs/recipes.md: every Axolotl key that is not a graft key, with what
// graft does (accepted with a warning, or rejected and why). Generated from the loader's table.
std::string axolotl_keys_markdown();

// sha256 of a byte string, lowercase hex.
std::string sha256_hex(const std::string& bytes);

}  // namespace graft::train
