// adapter_config.json: parsing, canonical writing, PEFT's module/pattern matching and scale rules.
#include <algorithm>
#include <cmath>
#include <regex>
#include <set>

#include "graft/adapters/peft.hpp"
#include "graft/error.hpp"

namespace graft::adapters {

namespace {
using ojson = nlohmann::ordered_json;
constexpr const char* kFixConfig = "fix adapter_config.json (see docs/adapters.md for what graft accepts)";

std::string type_of(const ojson& v) { return v.type_name(); }

std::vector<std::string> string_list(const ojson& v, const std::string& key, const std::string& src) {
  std::vector<std::string> out;
  if (v.is_null()) return out;
  GRAFT_CHECK_FIX(v.is_array(), kFixConfig, "{}: '{}' must be a list of strings, got {}", src, key, type_of(v));
  for (auto& s : v) {
    GRAFT_CHECK_FIX(s.is_string(), kFixConfig, "{}: '{}' must be a list of strings, got an element of type {}", src,
                    key, type_of(s));
    out.push_back(s.get<std::string>());
  }
  return out;
}

bool is_false_or_null(const ojson& v) { return v.is_null() || (v.is_boolean() && !v.get<bool>()); }

// Writes a double as an integer when it is integral (PEFT configs usually carry `"lora_alpha": 16`).
nlohmann::json number(double d) {
  if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9e15) return static_cast<int64_t>(d);
  return d;
}

std::regex compile(const std::string& re, const std::string& what) {
  try {
    return std::regex(re, std::regex::ECMAScript);
  } catch (const std::regex_error& e) {
    GRAFT_FAIL(kFixConfig, "adapter_config.json: {} '{}' is not a valid regular expression: {}", what, re, e.what());
  }
}

bool suffix_match(const std::string& key, const std::string& target) {
  if (key == target) return true;
  return key.size() > target.size() && key.compare(key.size() - target.size(), target.size(), target) == 0 &&
         key[key.size() - target.size() - 1] == '.';
}
}  // namespace

PeftConfig parse_peft_config(const std::string& json_text, const std::string& source) {
  ojson j;
  try {
    j = ojson::parse(json_text);
  } catch (const nlohmann::json::exception& e) {
    GRAFT_FAIL(kFixConfig, "{}: not valid JSON: {}", source, e.what());
  }
  GRAFT_CHECK_FIX(j.is_object(), kFixConfig, "{}: expected a JSON object, got {}", source, type_of(j));
  PeftConfig c;
  c.extra = ojson::object();
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& k = it.key();
    const ojson& v = it.value();
    auto need = [&](bool ok, const char* what) {
      GRAFT_CHECK_FIX(ok, kFixConfig, "{}: '{}' must be {}, got {} ({})", source, k, what, type_of(v), v.dump());
    };
    if (k == "r") {
      need(v.is_number_integer(), "an integer");
      c.r = v.get<int64_t>();
      GRAFT_CHECK_FIX(c.r > 0, kFixConfig, "{}: 'r' must be positive, got {}", source, c.r);
    } else if (k == "lora_alpha") {
      need(v.is_number(), "a number");
      c.lora_alpha = v.get<double>();
    } else if (k == "lora_dropout") {
      need(v.is_number() || v.is_null(), "a number");
      c.lora_dropout = v.is_null() ? 0.0 : v.get<double>();
      GRAFT_CHECK_FIX(c.lora_dropout >= 0 && c.lora_dropout < 1, kFixConfig, "{}: 'lora_dropout' {} is not in [0, 1)",
                      source, c.lora_dropout);
    } else if (k == "use_rslora") {
      need(v.is_boolean() || v.is_null(), "true or false");
      c.use_rslora = v.is_boolean() && v.get<bool>();
    } else if (k == "target_modules") {
      if (v.is_string()) {
        const auto s = v.get<std::string>();
        if (s == "all-linear") c.all_linear = true;
        else c.target_modules_regex = s;
      } else {
        c.target_modules = string_list(v, k, source);
      }
    } else if (k == "target_parameters") {
      c.target_parameters = string_list(v, k, source);
    } else if (k == "rank_pattern" || k == "alpha_pattern") {
      need(v.is_object() || v.is_null(), "an object {module pattern: value}");
      if (v.is_null()) continue;
      for (auto p = v.begin(); p != v.end(); ++p) {
        if (k == "rank_pattern") {
          GRAFT_CHECK_FIX(p.value().is_number_integer() && p.value().get<int64_t>() > 0, kFixConfig,
                          "{}: rank_pattern['{}'] must be a positive integer, got {}", source, p.key(), p.value().dump());
          c.rank_pattern[p.key()] = p.value().get<int64_t>();
        } else {
          GRAFT_CHECK_FIX(p.value().is_number(), kFixConfig, "{}: alpha_pattern['{}'] must be a number, got {}", source,
                          p.key(), p.value().dump());
          c.alpha_pattern[p.key()] = p.value().get<double>();
        }
      }
    } else if (k == "base_model_name_or_path") {
      need(v.is_string() || v.is_null(), "a string");
      c.base_model_name_or_path = v.is_string() ? v.get<std::string>() : "";
    } else if (k == "layers_to_transform") {
      if (v.is_null()) continue;
      if (v.is_number_integer()) {
        c.layers_to_transform.push_back(v.get<int64_t>());
      } else {
        need(v.is_array(), "an integer or a list of integers");
        for (auto& x : v) {
          GRAFT_CHECK_FIX(x.is_number_integer(), kFixConfig, "{}: 'layers_to_transform' must hold integers, got {}",
                          source, x.dump());
          c.layers_to_transform.push_back(x.get<int64_t>());
        }
      }
    } else {
      // Keys graft does not model: validated where they change the math, kept for the round trip.
      if (k == "peft_type") {
        GRAFT_CHECK_FIX(v.is_string() && v.get<std::string>() == "LORA", "graft reads LoRA adapters only",
                        "{}: peft_type is {}, graft supports \"LORA\"", source, v.dump());
      } else if (k == "use_dora") {
        GRAFT_CHECK_FIX(is_false_or_null(v), "train or export the adapter without DoRA (use_dora: false)",
                        "{}: use_dora is set: DoRA adapters are not supported", source);
      } else if (k == "bias") {
        GRAFT_CHECK_FIX(v.is_null() || (v.is_string() && v.get<std::string>() == "none"),
                        "use bias: \"none\" (graft adapters have no bias terms)",
                        "{}: bias is {}: only \"none\" is supported", source, v.dump());
      } else if (k == "modules_to_save") {
        // Full trained copies: graft reads embed_tokens and lm_head (PEFT matches names as suffixes).
        if (!v.is_null()) {
          c.modules_to_save = string_list(v, k, source);
          for (const auto& n : c.modules_to_save)
            GRAFT_CHECK_FIX(saved_module_name(n) != "", "export the adapter with modules_to_save [embed_tokens, lm_head] at most",
                            "{}: modules_to_save entry '{}' is not supported: graft reads trained copies of embed_tokens "
                            "and lm_head only", source, n);
        }
      } else if (k == "fan_in_fan_out") {
        GRAFT_CHECK_FIX(is_false_or_null(v), kFixConfig, "{}: fan_in_fan_out is set (Conv1D-style weights): not supported",
                        source);
      } else if (k == "lora_bias") {
        GRAFT_CHECK_FIX(is_false_or_null(v), kFixConfig, "{}: lora_bias is set: LoRA bias terms are not supported", source);
      } else if (k == "layer_replication") {
        GRAFT_CHECK_FIX(v.is_null() || (v.is_array() && v.empty()), kFixConfig,
                        "{}: layer_replication is not supported", source);
      } else if (k == "exclude_modules") {
        GRAFT_CHECK_FIX(v.is_null() || v.is_string() || v.is_array(), kFixConfig,
                        "{}: 'exclude_modules' must be a string or a list, got {}", source, type_of(v));
        if (v.is_array()) string_list(v, k, source);
        if (v.is_string()) compile(v.get<std::string>(), "exclude_modules");
      }
      c.extra[k] = v;
    }
  }
  if (!c.target_modules_regex.empty()) compile(c.target_modules_regex, "target_modules");
  for (auto& [k, v] : c.rank_pattern) compile(k, "rank_pattern key");
  for (auto& [k, v] : c.alpha_pattern) compile(k, "alpha_pattern key");
  GRAFT_CHECK_FIX(c.target_parameters.empty() || c.lora_dropout == 0, "set lora_dropout to 0",
                  "{}: lora_dropout must be 0 with target_parameters (PEFT's ParamWrapper restriction), got {}", source,
                  c.lora_dropout);
  return c;
}

std::string saved_module_name(const std::string& entry) {
  for (const char* m : {"embed_tokens", "lm_head"}) {
    const std::string n(m);
    if (entry == n || (entry.size() > n.size() && entry.compare(entry.size() - n.size() - 1, n.size() + 1, "." + n) == 0))
      return n;
  }
  return "";
}

bool saves_module(const PeftConfig& c, const std::string& name) {
  return std::any_of(c.modules_to_save.begin(), c.modules_to_save.end(),
                     [&](const std::string& e) { return saved_module_name(e) == name; });
}

std::string peft_config_json(const PeftConfig& c) {
  // PEFT writes json.dumps(config, indent=2, sort_keys=True): nlohmann::json objects are sorted too.
  nlohmann::json j = nlohmann::json::object();
  for (auto it = c.extra.begin(); it != c.extra.end(); ++it) j[it.key()] = nlohmann::json::parse(it.value().dump());
  j["r"] = c.r;
  j["lora_alpha"] = number(c.lora_alpha);
  j["lora_dropout"] = c.lora_dropout;
  j["use_rslora"] = c.use_rslora;
  if (c.all_linear) j["target_modules"] = "all-linear";
  else if (!c.target_modules_regex.empty()) j["target_modules"] = c.target_modules_regex;
  else if (!c.target_modules.empty()) j["target_modules"] = c.target_modules;
  else j["target_modules"] = nullptr;
  if (c.target_parameters.empty()) j["target_parameters"] = nullptr;
  else j["target_parameters"] = c.target_parameters;
  j["rank_pattern"] = nlohmann::json::object();
  for (auto& [k, v] : c.rank_pattern) j["rank_pattern"][k] = v;
  j["alpha_pattern"] = nlohmann::json::object();
  for (auto& [k, v] : c.alpha_pattern) j["alpha_pattern"][k] = number(v);
  if (c.base_model_name_or_path.empty()) j["base_model_name_or_path"] = nullptr;
  else j["base_model_name_or_path"] = c.base_model_name_or_path;
  if (c.layers_to_transform.empty()) j["layers_to_transform"] = nullptr;
  else j["layers_to_transform"] = c.layers_to_transform;
  if (!j.contains("peft_type")) j["peft_type"] = "LORA";
  if (!c.modules_to_save.empty()) j["modules_to_save"] = c.modules_to_save;
  return j.dump(2);
}

PeftConfig make_config(int64_t r, double alpha, std::vector<std::string> target_modules,
                       std::vector<std::string> target_parameters) {
  PeftConfig c;
  c.r = r;
  c.lora_alpha = alpha;
  c.target_modules = std::move(target_modules);
  c.target_parameters = std::move(target_parameters);
  c.extra = ojson::object();
  // PEFT's LoraConfig defaults for the keys graft does not model, so PEFT reads the file as it wrote it.
  c.extra["bias"] = "none";
  c.extra["exclude_modules"] = nullptr;
  c.extra["fan_in_fan_out"] = false;
  c.extra["inference_mode"] = true;
  c.extra["init_lora_weights"] = true;
  c.extra["layers_pattern"] = nullptr;
  c.extra["lora_bias"] = false;
  c.extra["modules_to_save"] = nullptr;
  c.extra["peft_type"] = "LORA";
  c.extra["task_type"] = "CAUSAL_LM";
  c.extra["use_dora"] = false;
  return c;
}

std::string match_pattern_key(const std::vector<std::string>& patterns, const std::string& module_key) {
  for (const auto& p : patterns) {
    std::regex re = compile("(.*\\.)?(" + p + ")", "pattern key");
    if (std::regex_match(module_key, re)) return p;
  }
  return {};
}

namespace {
template <class M>
std::vector<std::string> keys_of(const M& m) {
  std::vector<std::string> v;
  for (auto& [k, x] : m) v.push_back(k);
  return v;
}
}  // namespace

bool targets_module(const PeftConfig& c, const std::string& module_key, int layer) {
  if (!c.layers_to_transform.empty() &&
      std::find(c.layers_to_transform.begin(), c.layers_to_transform.end(), layer) == c.layers_to_transform.end())
    return false;
  if (c.extra.contains("exclude_modules")) {
    const auto& ex = c.extra["exclude_modules"];
    if (ex.is_string() && std::regex_match(module_key, compile(ex.get<std::string>(), "exclude_modules"))) return false;
    if (ex.is_array())
      for (auto& e : ex)
        if (e.is_string() && suffix_match(module_key, e.get<std::string>())) return false;
  }
  if (c.all_linear) return true;
  if (!c.target_modules_regex.empty()) return std::regex_match(module_key, compile(c.target_modules_regex, "target_modules"));
  for (auto& t : c.target_modules)
    if (suffix_match(module_key, t)) return true;
  // target_parameters: "mlp.experts.gate_up_proj" targets the parameter `gate_up_proj` of module `mlp.experts`;
  // "mlp.gate_proj.weight" the weight of the Linear `mlp.gate_proj` (PEFT's ParamWrapper over an nn.Linear).
  static const std::string kWeight = ".weight";
  for (auto& t : c.target_parameters) {
    const bool weight = t.size() > kWeight.size() && t.compare(t.size() - kWeight.size(), kWeight.size(), kWeight) == 0;
    if (suffix_match(module_key, weight ? t.substr(0, t.size() - kWeight.size()) : t)) return true;
  }
  return false;
}

int64_t expected_rank(const PeftConfig& c, const std::string& module_key) {
  const std::string k = match_pattern_key(keys_of(c.rank_pattern), module_key);
  return k.empty() ? c.r : c.rank_pattern.at(k);
}

double lora_scale(const PeftConfig& c, const std::string& module_key, int64_t rank) {
  GRAFT_CHECK(rank > 0, "lora_scale: rank {} of '{}' must be positive", rank, module_key);
  const std::string k = match_pattern_key(keys_of(c.alpha_pattern), module_key);
  const double alpha = k.empty() ? c.lora_alpha : c.alpha_pattern.at(k);
  return c.use_rslora ? alpha / std::sqrt(static_cast<double>(rank)) : alpha / static_cast<double>(rank);
}

}  // namespace graft::adapters
