// Axolotl's overrides_of_model_config (older name: model_config): values that replace base_model's
// config.json keys before the model is built. Internal to train/src/recipe (recipe.cpp calls it
// while walking the YAML). graft honours the keys its config loader reads that do not change any
// weight's shape; keys with no effect on graft's result are accepted with a warning; every other
// key is an error naming it and the fix.
#pragma once

#include <yaml-cpp/yaml.h>

#include <functional>
#include <string>
#include <vector>

namespace graft::train::recipe_detail {

// The config.json keys graft honours as overrides (docs/recipes.md lists them).
const std::vector<std::string>& honoured_model_config_overrides();

struct OverrideSink {
  // where(path, mark): location text of the YAML node at dotted `path`.
  std::function<std::string(const std::string&, const YAML::Mark&)> where;
  std::function<void(const std::string& where, const std::string& what, const std::string& fix)> error;
  std::function<void(const std::string& where, const std::string& what)> warn;
};

// The overrides in `v` (a YAML mapping, or the JSON object text recipe_to_yaml prints) at recipe key
// `key` (path `path`) as canonical JSON object text (keys sorted) holding the honoured keys; "" when
// none is left. Problems and warnings go to `sink`.
std::string model_config_overrides_json(const YAML::Node& v, const std::string& key, const std::string& path,
                                        const OverrideSink& sink);

}  // namespace graft::train::recipe_detail
