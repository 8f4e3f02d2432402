// overrides_of_model_config (see model_config_overrides.hpp).
#include "model_config_overrides.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <charconv>
#include <cmath>

namespace graft::train::recipe_detail {
namespace {
using json = nlohmann::json;

// Keys that would not change what graft computes: accepted with this warning.
struct NoEffect {
  const char* key;
  const char* note;
};
constexpr NoEffect kNoEffect[] = {
    {"use_cache", "graft's training never keeps a KV cache"},
    {"output_attentions", "graft never returns attention weights"},
    {"output_hidden_states", "graft never returns hidden states"},
    {"return_dict", "a transformers output-format setting"},
    {"torch_dtype", "graft picks the compute precision itself"},
    {"dtype", "graft picks the compute precision itself"},
    {"attn_implementation", "graft uses its own attention kernels"},
    {"_attn_implementation", "graft uses its own attention kernels"},
    {"router_aux_loss_coef", "graft adds no router load-balancing loss (it only matters with output_router_logits: true)"},
};

json scalar_json(const YAML::Node& n) {
  const std::string& s = n.Scalar();
  if (n.Tag() == "!") return s;  // quoted: a string
  bool b = false;
  if (YAML::convert<bool>::decode(n, b)) return b;
  if (s == "null" || s == "~" || s.empty()) return nullptr;
  long long i = 0;
  auto r = std::from_chars(s.data(), s.data() + s.size(), i);
  if (r.ec == std::errc() && r.ptr == s.data() + s.size()) return i;
  double d = 0;
  auto rd = std::from_chars(s.data(), s.data() + s.size(), d);
  if (rd.ec == std::errc() && rd.ptr == s.data() + s.size() && std::isfinite(d)) return d;
  return s;
}

json to_json(const YAML::Node& n) {
  if (n.IsMap()) {
    json o = json::object();
    for (auto kv : n) o[kv.first.Scalar()] = to_json(kv.second);
    return o;
  }
  if (n.IsSequence()) {
    json a = json::array();
    for (size_t i = 0; i < n.size(); ++i) a.push_back(to_json(n[i]));
    return a;
  }
  if (!n.IsDefined() || n.IsNull()) return nullptr;
  return scalar_json(n);
}

std::string list_text(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}
}  // namespace

const std::vector<std::string>& honoured_model_config_overrides() {
  static const std::vector<std::string> k = {"rope_scaling",   "rope_parameters",    "rope_theta",        "max_position_embeddings",
                                             "sliding_window", "use_sliding_window", "max_window_layers", "rms_norm_eps"};
  return k;
}

std::string model_config_overrides_json(const YAML::Node& v, const std::string& key, const std::string& path,
                                        const OverrideSink& sink) {
  const std::string here = sink.where(path, v.Mark());
  json in;
  if (v.IsMap()) {
    in = to_json(v);
  } else if (v.IsScalar()) {  // recipe_to_yaml prints the JSON object text
    in = json::parse(v.Scalar(), nullptr, false);
  }
  if (!in.is_object()) {
    sink.error(here, fmt::format("key '{}' expects a mapping of config.json keys to values, e.g. {{rope_theta: 1000000}}", key),
               "write it as a mapping");
    return "";
  }
  const auto& honoured = honoured_model_config_overrides();
  json out = json::object();
  for (const auto& [k, val] : in.items()) {
    std::string kwhere = here;
    if (v.IsMap())
      for (auto kv : v)
        if (kv.first.Scalar() == k) kwhere = sink.where(path + "." + k, kv.first.Mark());
    if (std::find(honoured.begin(), honoured.end(), k) != honoured.end()) {
      if (val.is_null()) continue;  // blank = absent
      out[k] = val;
      continue;
    }
    if (k == "output_router_logits") {
      if (val == json(false) || val.is_null()) {
        sink.warn(kwhere, fmt::format("key '{}.output_router_logits' = false is ignored: graft adds no router "
                                      "load-balancing loss", key));
      } else {
        sink.error(kwhere,
                   fmt::format("key '{}.output_router_logits' = {} is not supported: in transformers it adds the router "
                               "load-balancing loss (router_aux_loss_coef x aux loss) to the training loss, and graft "
                               "trains on the cross-entropy only", key, val.dump()),
                   fmt::format("remove output_router_logits from {} (the router is frozen under LoRA)", key));
      }
      continue;
    }
    if (k == "attention_dropout") {
      if (val.is_null() || (val.is_number() && val.get<double>() == 0.0)) {
        sink.warn(kwhere, fmt::format("key '{}.attention_dropout' = 0 is ignored: graft's attention has no dropout", key));
      } else {
        sink.error(kwhere,
                   fmt::format("key '{}.attention_dropout' = {} is not supported: graft's attention has no dropout", key,
                               val.dump()),
                   fmt::format("set attention_dropout to 0 or remove it from {} (lora_dropout is graft's dropout)", key));
      }
      continue;
    }
    const auto* ne = std::find_if(std::begin(kNoEffect), std::end(kNoEffect), [&](const NoEffect& e) { return k == e.key; });
    if (ne != std::end(kNoEffect)) {
      sink.warn(kwhere, fmt::format("key '{}.{}' is ignored: {}", key, k, ne->note));
      continue;
    }
    sink.error(kwhere,
               fmt::format("config.json key '{}' in '{}' cannot be overridden by graft: it honours only {} (the others "
                           "change weight shapes or the architecture, or graft does not read them)",
                           k, key, list_text(honoured)),
               fmt::format("remove '{}' from {}, or edit a copy of the model's config.json and point base_model at it", k, key));
  }
  return out.empty() ? "" : out.dump();
}

}  // namespace graft::train::recipe_detail
