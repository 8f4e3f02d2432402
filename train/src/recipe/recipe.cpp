// Recipe loading: YAML (yaml-cpp) -> schema-checked JSON -> graft.train.Recipe (protobuf JSON
// mapping) -> range/choice/cross-key validation -> defaults.
//
// The YAML tree is walked against the protobuf descriptor before protobuf sees anything, so that
// every error names the key, its line and column (or the --set override it came from), the
// expected type or the valid choices, and for an unknown key the closest valid one.
#include <fmt/format.h>
#include <google/protobuf/descriptor.h>
#include <google/protobuf/util/json_util.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <fstream>
#include <limits>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "graft/adapters/peft.hpp"
#include "graft/error.hpp"
#include "graft/train/recipe.hpp"
#include "axolotl_keys.hpp"
#include "model_config_overrides.hpp"
#include "graft/train/chat_templates.hpp"
#include "recipe_json.hpp"

namespace graft::train {

const Recipe& default_recipe_instance();
const Dataset& default_dataset_instance();

namespace {
using recipe_detail::json_escape;
namespace pb = google::protobuf;
using FD = pb::FieldDescriptor;

// ---------------------------------------------------------------- helpers

// Edit distance with adjacent transpositions counted as one edit (optimal string alignment), so
// that "feild" is one edit from "field".
size_t levenshtein(const std::string& a, const std::string& b) {
  std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
  for (size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (size_t i = 1; i <= a.size(); ++i)
    for (size_t j = 1; j <= b.size(); ++j) {
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  return d[a.size()][b.size()];
}

// Closest candidate, or "" when nothing is close enough to be the same key misspelt: the edit
// distance must be small relative to the word (at most a quarter of its length, and at most 3), so
// that a different key that merely shares a prefix ("tokenizer_type" vs "tokenizer") is not offered.
std::string nearest(const std::string& word, const std::vector<std::string>& candidates) {
  std::string best;
  size_t best_d = std::numeric_limits<size_t>::max();
  for (const auto& c : candidates) {
    size_t d = levenshtein(word, c);
    if (d < best_d) {
      best_d = d;
      best = c;
    }
  }
  const size_t limit = std::min<size_t>(3, std::max<size_t>(1, std::min(word.size(), best.size()) / 4));
  return best_d <= limit ? best : "";
}

std::string join_path(const std::string& path, const std::string& key) { return path.empty() ? key : path + "." + key; }

std::string choices_text(const std::vector<std::string>& choices) {
  std::string s;
  for (size_t i = 0; i < choices.size(); ++i) s += (i ? ", " : "") + choices[i];
  return s;
}

// Keys of other trainers (LLaMA-Factory, HF Trainer, torchtune) that mean a graft key.
const std::map<std::string, std::string>& key_aliases() {
  static const std::map<std::string, std::string> m = {
      {"lora_rank", "lora_r"},
      {"rank", "lora_r"},
      {"model_name_or_path", "base_model"},
      {"model", "base_model"},
      {"lr", "learning_rate"},
      {"epochs", "num_epochs"},
      {"num_train_epochs", "num_epochs"},
      {"per_device_train_batch_size", "micro_batch_size"},
      {"lr_scheduler_type", "lr_scheduler"},
      {"cutoff_len", "sequence_len"},
      {"max_seq_length", "sequence_len"},
      {"max_seq_len", "sequence_len"},
      {"seq_len", "sequence_len"},
      {"lora_target", "lora_target_modules"},
      {"target_modules", "lora_target_modules"},
      {"target_parameters", "lora_target_parameters"},
      {"use_rslora", "peft_use_rslora"},
      {"val_size", "val_set_size"},
      {"dataset", "datasets"},
      {"warmup", "warmup_steps"},
      {"num_warmup_steps", "warmup_steps"},
      {"enable_activation_checkpointing", "gradient_checkpointing"},
      {"max_grad_norm_clip", "max_grad_norm"},
      {"chat_template_jinja_path", "chat_template_jinja"},
  };
  return m;
}

// ---------------------------------------------------------------- context

struct Ctx {
  std::string source;
  std::map<std::string, std::string> override_at;  // dotted path -> "key=value" override that set it
  std::map<std::string, std::string> loc;           // dotted path -> location text

  // Location text of a YAML node at `path`: the override that set it or a part above it, else
  // "source:line:column" (1-based).
  std::string where(const std::string& path, const YAML::Mark& mark) const {
    for (std::string p = path;;) {
      auto it = override_at.find(p);
      if (it != override_at.end()) return fmt::format("override --set {}", it->second);
      size_t dot = p.rfind('.');
      if (dot == std::string::npos) break;
      p = p.substr(0, dot);
    }
    if (mark.is_null() || mark.line < 0) return source;
    return fmt::format("{}:{}:{}", source, mark.line + 1, mark.column + 1);
  }

  // Location recorded for a path during the walk (or the source when the key is absent).
  std::string at(const std::string& path) const {
    auto it = loc.find(path);
    return it == loc.end() ? source : it->second;
  }

  // Fatal: problems after which nothing more can be checked (YAML syntax, a malformed override).
  [[noreturn]] void fail(const std::string& where, const std::string& what, const std::string& fix = "") const {
    throw graft::Error(fmt::format("{}: {}", where, what), "", fix);
  }

  // Recorded; the walk and the validation go on, and all problems are reported together.
  void error(const std::string& where, const std::string& what, const std::string& fix = "") {
    errors.push_back({fmt::format("{}: {}", where, what), fix});
  }
  void warn(const std::string& where, const std::string& what) { warnings.push_back(fmt::format("{}: {}", where, what)); }
  bool rejected(const std::string& path) const { return bad.count(path) > 0; }

  // One graft::Error for every recorded problem (a single problem reads as it always did).
  void throw_if_errors() const {
    if (errors.empty()) return;
    if (errors.size() == 1) throw graft::Error(errors[0].what, "", errors[0].fix);
    std::string what = fmt::format("{}: {} problems in the recipe:", source, errors.size());
    for (size_t i = 0; i < errors.size(); ++i) {
      what += fmt::format("\n  {}. {}", i + 1, errors[i].what);
      if (!errors[i].fix.empty()) what += "\n     fix: " + errors[i].fix;
    }
    throw graft::Error(what, "", "fix each problem above; `graft train --check RECIPE` re-checks without loading the model");
  }

  struct Problem {
    std::string what, fix;
  };
  std::vector<Problem> errors;
  std::vector<std::string> warnings;
  std::set<std::string> bad;  // dotted paths whose value was rejected (later checks skip them)
};

std::string describe_type(const FD* f) {
  auto scalar = [](const FD* g) -> std::string {
    switch (g->cpp_type()) {
      case FD::CPPTYPE_BOOL: return "a boolean (true/false)";
      case FD::CPPTYPE_INT32:
      case FD::CPPTYPE_INT64:
      case FD::CPPTYPE_UINT32:
      case FD::CPPTYPE_UINT64: return "an integer";
      case FD::CPPTYPE_DOUBLE:
      case FD::CPPTYPE_FLOAT: return "a number";
      case FD::CPPTYPE_STRING: return "a string";
      case FD::CPPTYPE_MESSAGE:
        return g->message_type() == RoleAliases::descriptor() ? "a list of role names" : "a mapping of keys";
      default: return "a value";
    }
  };
  if (f->is_map()) return "a mapping of name: " + scalar(f->message_type()->map_value()).substr(2);
  if (f->name() == "lora_target_modules") return "a list of module names or a regex string";
  if (f->is_repeated()) {
    std::string s = scalar(f);
    if (f->cpp_type() == FD::CPPTYPE_MESSAGE) return "a list of mappings";
    return "a list of " + s.substr(s.find(' ') + 1) + "s";
  }
  return scalar(f);
}

std::string describe_node(const YAML::Node& n) {
  if (n.IsSequence()) return "a list";
  if (n.IsMap()) return "a mapping";
  if (n.IsNull()) return "null";
  return fmt::format("'{}'", n.Scalar());
}


bool parse_int(std::string s, long long& v) {
  if (!s.empty() && s[0] == '+') s = s.substr(1);
  auto r = std::from_chars(s.data(), s.data() + s.size(), v);
  return !s.empty() && r.ec == std::errc() && r.ptr == s.data() + s.size();
}

bool parse_double(std::string s, double& v) {
  if (!s.empty() && s[0] == '+') s = s.substr(1);
  auto r = std::from_chars(s.data(), s.data() + s.size(), v);
  return !s.empty() && r.ec == std::errc() && r.ptr == s.data() + s.size() && std::isfinite(v);
}

// ---------------------------------------------------------------- YAML -> JSON walk

class Walker {
 public:
  explicit Walker(Ctx& ctx) : ctx_(ctx) {}

  void message(const pb::Descriptor* d, const YAML::Node& node, const std::string& path, std::string& o) {
    std::vector<std::string> names;
    for (int i = 0; i < d->field_count(); ++i) names.push_back(d->field(i)->name());
    o += '{';
    bool first = true;
    auto emit = [&](const std::string& name, const std::string& json) {
      if (!first) o += ',';
      first = false;
      o += json_escape(name) + ':' + json;
    };
    std::set<std::string> seen_keys, seen_fields;
    std::map<std::string, std::string> legacy_mappings;  // Axolotl's message_field_role / message_field_content
    std::string legacy_where;
    for (auto kv : node) {
      const YAML::Node k = kv.first;
      const YAML::Node v = kv.second;
      if (!k.IsScalar()) {
        ctx_.error(ctx_.where(path, k.Mark()), fmt::format("recipe keys must be plain names, got {}", describe_node(k)));
        continue;
      }
      const std::string key = k.Scalar();
      const std::string kpath = join_path(path, key);
      const std::string kwhere = ctx_.where(kpath, k.Mark());
      const std::string vwhere = ctx_.where(kpath, v.Mark().is_null() || v.Mark().line < 0 ? k.Mark() : v.Mark());
      if (!seen_keys.insert(key).second) {
        ctx_.error(kwhere, fmt::format("key '{}' appears twice", key), "keep one of the two entries");
        continue;
      }
      const bool blank = !v.IsDefined() || v.IsNull();
      const FD* f = d->FindFieldByName(key);
      if (d == Dataset::descriptor() && (key == "message_field_role" || key == "message_field_content")) {
        // Axolotl's older spelling of message_property_mappings: {role: ..., content: ...}.
        if (blank) continue;
        if (!v.IsScalar()) {
          ctx_.error(vwhere, fmt::format("key '{}' expects a string, got {}", key, describe_node(v)));
          continue;
        }
        legacy_mappings[key == "message_field_role" ? "role" : "content"] = v.Scalar();
        legacy_where = vwhere;
        continue;
      }
      if (d == Recipe::descriptor() && (key == "overrides_of_model_config" || key == "model_config")) {
        // Axolotl's overrides of config.json values (model_config is its older name): JSON object text.
        if (blank) continue;
        if (!seen_fields.insert("overrides_of_model_config").second) {
          ctx_.error(kwhere, "model_config and overrides_of_model_config are both given (model_config is Axolotl's older "
                             "name of overrides_of_model_config)", "give overrides_of_model_config only");
          continue;
        }
        ctx_.loc[kpath] = vwhere;
        ctx_.loc[join_path(path, "overrides_of_model_config")] = vwhere;
        recipe_detail::OverrideSink sink{
            [&](const std::string& p, const YAML::Mark& m) { return ctx_.where(p, m); },
            [&](const std::string& w, const std::string& what, const std::string& fix) { ctx_.error(w, what, fix); },
            [&](const std::string& w, const std::string& what) { ctx_.warn(w, what); }};
        const std::string json = recipe_detail::model_config_overrides_json(v, key, kpath, sink);
        if (!json.empty()) emit("overrides_of_model_config", json_escape(json));
        continue;
      }
      if (!f) {
        unknown_key(d, key, v, kwhere, vwhere, names);
        continue;
      }
      // lora_target_modules: a list is module names, a single string is a regex.
      if (key == "lora_target_modules" && v.IsScalar()) f = d->FindFieldByName("lora_target_modules_regex");
      // warmup_steps below 1 is a fraction of the run (transformers' convention): warmup_ratio.
      double frac = 0;
      if (key == "warmup_steps" && v.IsScalar() && parse_double(v.Scalar(), frac) && frac > 0 && frac < 1)
        f = d->FindFieldByName("warmup_ratio");
      ctx_.loc[kpath] = vwhere;
      ctx_.loc[join_path(path, f->name())] = vwhere;
      if (!seen_fields.insert(f->name()).second) {
        ctx_.error(kwhere, fmt::format("key '{}' sets '{}', which another key of this entry already sets "
                                       "(a string lora_target_modules is lora_target_modules_regex; warmup_steps below 1 "
                                       "is warmup_ratio)", key, f->name()),
                   "give it once");
        continue;
      }
      if (blank) continue;  // `key:` or `key: null` = unset
      if (key == "gradient_checkpointing" && v.IsScalar()) {
        bool b = false;
        if (!YAML::convert<bool>::decode(v, b)) {
          const std::string s = v.Scalar();
          if (s == "offload" || s == "offload_disk" || s == "unsloth") {
            ctx_.warn(vwhere, fmt::format("gradient_checkpointing: {} runs as true: graft trains on the CPU backend, where "
                                          "the checkpointed layer inputs already live in host memory", s));
            emit(f->name(), "true");
          } else {
            ctx_.error(vwhere, fmt::format("key 'gradient_checkpointing' = '{}' is not one of: true, false, offload, unsloth", s));
            ctx_.bad.insert(kpath);
          }
          continue;
        }
      }
      std::string json;
      const size_t before = ctx_.errors.size();
      value(f, v, kpath, vwhere, json);
      // A list of entries (datasets) keeps its valid entries and keys, so that validation still
      // reports their other problems; any other value with a problem is left out whole.
      const bool entries = f->is_repeated() && !f->is_map() && f->cpp_type() == FD::CPPTYPE_MESSAGE;
      if (ctx_.errors.size() != before && !entries) {
        ctx_.bad.insert(kpath);
        ctx_.bad.insert(join_path(path, f->name()));
        continue;
      }
      emit(f->name(), json);
    }
    if (!legacy_mappings.empty()) {
      if (seen_fields.count("message_property_mappings")) {
        ctx_.error(legacy_where, "message_field_role/message_field_content and message_property_mappings are both given",
                   "give message_property_mappings only: {role: ..., content: ...}");
      } else {
        std::string json = "{";
        for (const auto& [mk, mv] : legacy_mappings) json += (json.size() > 1 ? "," : "") + json_escape(mk) + ':' + json_escape(mv);
        emit("message_property_mappings", json + "}");
      }
    }
    o += '}';
  }

 private:
  void unknown_key(const pb::Descriptor* d, const std::string& key, const YAML::Node& v, const std::string& kwhere,
                   const std::string& vwhere, const std::vector<std::string>& names) {
    const bool top = d == Recipe::descriptor();
    const std::string scope = top ? "recipe" : "dataset entry";
    if (top) {
      auto a = key_aliases().find(key);
      if (a != key_aliases().end()) {
        ctx_.error(kwhere, fmt::format("unknown {} key '{}' — did you mean '{}'?", scope, key, a->second),
                   fmt::format("rename '{}' to '{}' (see docs/recipes.md)", key, a->second));
        return;
      }
    }
    using recipe_detail::AxolotlKind;
    if (const auto* ak = recipe_detail::find_axolotl_key(top ? recipe_detail::AxolotlScope::Recipe
                                                             : recipe_detail::AxolotlScope::Dataset, key)) {
      if (!v.IsDefined() || v.IsNull()) return;  // blank boilerplate (`wandb_project:`) = absent
      std::string value = v.IsScalar() ? v.Scalar() : describe_node(v);
      bool b = false;
      if (v.IsScalar() && YAML::convert<bool>::decode(v, b)) value = b ? "true" : "false";
      if (ak->kind == AxolotlKind::Warn || (ak->kind == AxolotlKind::WarnIfValue && value == ak->accept)) {
        ctx_.warn(kwhere, fmt::format("key '{}' is ignored: {}", key, ak->note));
        return;
      }
      if (ak->kind == AxolotlKind::WarnIfValue)
        ctx_.error(vwhere, fmt::format("key '{}' = {} is not supported: {}", key, value, ak->note), ak->fix);
      else
        ctx_.error(kwhere, fmt::format("Axolotl key '{}' is not supported by graft: {}", key, ak->note), ak->fix);
      return;
    }
    std::string near = nearest(key, names);
    if (!near.empty()) {
      ctx_.error(kwhere, fmt::format("unknown {} key '{}' — did you mean '{}'?", scope, key, near),
                 fmt::format("rename '{}' to '{}' (see docs/recipes.md for every key)", key, near));
      return;
    }
    ctx_.error(kwhere, fmt::format("unknown {} key '{}'", scope, key),
               fmt::format("valid keys: {} (see docs/recipes.md)", choices_text(names)));
  }

  void type_error(const FD* f, const std::string& key, const YAML::Node& v, const std::string& where) {
    ctx_.error(where, fmt::format("key '{}' expects {}, got {}", key, describe_type(f), describe_node(v)));
  }

  void value(const FD* f, const YAML::Node& v, const std::string& path, const std::string& where, std::string& o) {
    const std::string key = path.substr(path.rfind('.') == std::string::npos ? 0 : path.rfind('.') + 1);
    if (f->is_map()) {
      if (!v.IsMap()) return type_error(f, key, v, where);
      const FD* vf = f->message_type()->map_value();
      o += '{';
      bool first = true;
      std::set<std::string> seen;
      for (auto kv : v) {
        const YAML::Node mkey = kv.first;
        const YAML::Node mv = kv.second;
        if (!mkey.IsScalar()) return type_error(f, key, v, where);
        const std::string mk = mkey.Scalar();
        const std::string mpath = join_path(path, mk);
        const std::string mwhere = ctx_.where(mpath, mv.Mark().is_null() ? mkey.Mark() : mv.Mark());
        ctx_.loc[mpath] = mwhere;
        if (!seen.insert(mk).second) {
          ctx_.error(mwhere, fmt::format("key '{}' appears twice in '{}'", mk, key));
          continue;
        }
        if (!first) o += ',';
        first = false;
        o += json_escape(mk) + ':';
        if (vf->cpp_type() == FD::CPPTYPE_MESSAGE) {  // RoleAliases: a list or one name
          o += "{\"values\":[";
          if (mv.IsScalar()) {
            o += json_escape(mv.Scalar());
          } else if (mv.IsSequence()) {
            for (size_t i = 0; i < mv.size(); ++i) {
              const YAML::Node name = mv[i];
              if (!name.IsScalar()) {
                ctx_.error(mwhere, fmt::format("key '{}.{}' expects a list of role names, got a nested {}", key, mk,
                                               describe_node(name)));
                continue;
              }
              o += (i ? "," : "") + json_escape(name.Scalar());
            }
          } else {
            ctx_.error(mwhere, fmt::format("key '{}.{}' expects a list of role names, got {}", key, mk, describe_node(mv)));
          }
          o += "]}";
        } else {
          if (!mv.IsScalar()) {
            ctx_.error(mwhere, fmt::format("key '{}.{}' expects {}, got {}", key, mk, describe_type(vf), describe_node(mv)));
            continue;
          }
          scalar(vf, mv, fmt::format("{}.{}", key, mk), mwhere, o);
        }
      }
      o += '}';
      return;
    }
    if (f->is_repeated()) {
      if (!v.IsSequence()) {
        std::string fix;
        if (v.IsScalar()) fix = fmt::format("write a list: {}: [{}]", key, v.Scalar());
        return ctx_.error(where, fmt::format("key '{}' expects {}, got {}", key, describe_type(f), describe_node(v)), fix);
      }
      o += '[';
      bool any = false;
      for (size_t i = 0; i < v.size(); ++i) {
        const YAML::Node e = v[i];
        const std::string epath = join_path(path, std::to_string(i));
        const std::string ewhere = ctx_.where(epath, e.Mark().is_null() ? v.Mark() : e.Mark());
        ctx_.loc[epath] = ewhere;
        std::string ej;
        if (f->cpp_type() == FD::CPPTYPE_MESSAGE) {
          if (!e.IsMap()) {
            ctx_.error(ewhere, fmt::format("entry {} of '{}' expects a mapping of keys (path: ..., type: ...), got {}", i,
                                           key, describe_node(e)));
            continue;
          }
          message(f->message_type(), e, epath, ej);
        } else {
          if (!e.IsScalar()) {
            ctx_.error(ewhere, fmt::format("entry {} of '{}' expects {}, got {}", i, key,
                                           describe_type(f).substr(std::string("a list of ").size()), describe_node(e)));
            continue;
          }
          scalar(f, e, fmt::format("{}[{}]", key, i), ewhere, ej);
        }
        o += (any ? "," : "") + ej;
        any = true;
      }
      o += ']';
      return;
    }
    if (f->cpp_type() == FD::CPPTYPE_MESSAGE) {
      if (!v.IsMap()) return type_error(f, key, v, where);
      message(f->message_type(), v, path, o);
      return;
    }
    if (!v.IsScalar()) return type_error(f, key, v, where);
    scalar(f, v, key, where, o);
  }

  void scalar(const FD* f, const YAML::Node& v, const std::string& key, const std::string& where, std::string& o) {
    const std::string& s = v.Scalar();
    switch (f->cpp_type()) {
      case FD::CPPTYPE_STRING: o += json_escape(s); return;
      case FD::CPPTYPE_BOOL: {
        bool b = false;
        if (!YAML::convert<bool>::decode(v, b))
          return ctx_.error(where, fmt::format("key '{}' expects a boolean (true/false), got '{}'", key, s));
        o += b ? "true" : "false";
        return;
      }
      case FD::CPPTYPE_INT32:
      case FD::CPPTYPE_INT64: {
        long long x = 0;
        if (!parse_int(s, x)) {
          double dx = 0;
          std::string fix;
          if (parse_double(s, dx) && dx == std::floor(dx) && std::fabs(dx) < 1e15)
            fix = fmt::format("write it as a whole number: {}", static_cast<long long>(dx));
          return ctx_.error(where, fmt::format("key '{}' expects an integer, got '{}'", key, s), fix);
        }
        const long long lo = f->cpp_type() == FD::CPPTYPE_INT32 ? std::numeric_limits<int32_t>::min()
                                                                : std::numeric_limits<int64_t>::min();
        const long long hi = f->cpp_type() == FD::CPPTYPE_INT32 ? std::numeric_limits<int32_t>::max()
                                                                : std::numeric_limits<int64_t>::max();
        if (x < lo || x > hi) return ctx_.error(where, fmt::format("key '{}' = {} is out of range (at most {})", key, s, hi));
        o += std::to_string(x);
        return;
      }
      case FD::CPPTYPE_DOUBLE:
      case FD::CPPTYPE_FLOAT: {
        double x = 0;
        if (!parse_double(s, x)) return ctx_.error(where, fmt::format("key '{}' expects a number, got '{}'", key, s));
        o += fmt::format("{}", x);
        return;
      }
      default: return ctx_.error(where, fmt::format("key '{}': unsupported schema type", key));
    }
  }

  Ctx& ctx_;
};

// ---------------------------------------------------------------- overrides

void set_path(Ctx& ctx, YAML::Node cur, const std::vector<std::string>& keys, size_t i, const YAML::Node& value,
              const std::string& ov) {
  const std::string& seg = keys[i];
  const bool last = i + 1 == keys.size();
  if (cur.IsSequence()) {
    long long idx = -1;
    if (!parse_int(seg, idx) || idx < 0)
      ctx.fail(fmt::format("override --set {}", ov), fmt::format("'{}' is a list: expected an index, got '{}'", keys[i - 1], seg));
    if (static_cast<size_t>(idx) > cur.size())
      ctx.fail(fmt::format("override --set {}", ov),
               fmt::format("index {} is out of range: '{}' has {} entries", idx, keys[i - 1], cur.size()),
               fmt::format("use an index from 0 to {} ({} appends a new entry)", cur.size(), cur.size()));
    if (static_cast<size_t>(idx) == cur.size()) cur.push_back(YAML::Node(YAML::NodeType::Map));
    if (last) {
      cur[static_cast<size_t>(idx)] = value;
      return;
    }
    YAML::Node child = cur[static_cast<size_t>(idx)];
    set_path(ctx, child, keys, i + 1, value, ov);
    return;
  }
  if (!cur.IsMap())
    ctx.fail(fmt::format("override --set {}", ov),
             fmt::format("'{}' is {} and has no key '{}'", i ? keys[i - 1] : std::string("the recipe"), describe_node(cur), seg));
  if (last) {
    cur[seg] = value;
    return;
  }
  YAML::Node existing = cur[seg];
  if (!existing.IsDefined() || existing.IsNull()) {
    // A list index next ("datasets.0.path") creates a list, otherwise a mapping.
    long long idx = -1;
    const bool next_is_index = parse_int(keys[i + 1], idx);
    cur[seg] = YAML::Node(next_is_index ? YAML::NodeType::Sequence : YAML::NodeType::Map);
  }
  YAML::Node child = cur[seg];
  set_path(ctx, child, keys, i + 1, value, ov);
}

void apply_override(Ctx& ctx, YAML::Node& root, const std::string& ov) {
  const size_t eq = ov.find('=');
  const std::string where = fmt::format("override --set {}", ov);
  if (eq == std::string::npos || eq == 0)
    ctx.fail(where, fmt::format("override '{}' is not key=value", ov), "write --set key=value, e.g. --set lora_r=16");
  const std::string key = ov.substr(0, eq);
  const std::string text = ov.substr(eq + 1);
  YAML::Node value;
  try {
    value = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    ctx.fail(where, fmt::format("the value '{}' is not valid YAML: {}", text, e.msg),
             "quote the value or write a YAML scalar or list, e.g. [a, b]");
  }
  std::vector<std::string> keys;
  std::stringstream ss(key);
  for (std::string seg; std::getline(ss, seg, '.');) {
    if (seg.empty()) ctx.fail(where, fmt::format("override key '{}' has an empty part", key));
    keys.push_back(seg);
  }
  if (!root.IsMap()) root = YAML::Node(YAML::NodeType::Map);
  set_path(ctx, root, keys, 0, value, ov);
  ctx.override_at[key] = ov;
}

// ---------------------------------------------------------------- validation + defaults

void check_choice(Ctx& ctx, const std::string& path, const std::string& key, const std::string& v,
                  const std::vector<std::string>& choices) {
  if (std::find(choices.begin(), choices.end(), v) != choices.end()) return;
  std::string near = nearest(v, choices);
  ctx.error(ctx.at(path),
           fmt::format("key '{}' = '{}' is not one of: {}{}", key, v, choices_text(choices),
                       near.empty() ? "" : fmt::format(" — did you mean '{}'?", near)),
           fmt::format("set {} to one of: {}", key, choices_text(choices)));
}

template <class T>
void check_range(Ctx& ctx, const std::string& path, const std::string& key, bool has, T v, bool ok,
                 const std::string& range) {
  if (!has || ok) return;
  ctx.error(ctx.at(path), fmt::format("key '{}' = {} is out of range: must be {}", key, v, range));
}

const std::vector<std::string> kAdapters = {"lora", "qlora"};
const std::vector<std::string> kSchedulers = {"constant", "linear", "cosine", "constant_with_warmup"};
// AdamW spellings of Axolotl / transformers: all run graft's AdamW (fp32 moments).
const std::vector<std::string> kOptimizers = {"adamw", "adamw_torch", "adamw_torch_fused", "adamw_hf"};
// ... and the quantized / paged ones, which run it too, with a warning (the state is not quantized).
const std::vector<std::string> kOptimizers8bit = {"adamw_bnb_8bit", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit",
                                                  "paged_adamw", "adamw_torch_8bit", "adamw_torch_4bit"};
const std::vector<std::string> kSpecialTokens = {"bos_token", "eos_token", "pad_token", "unk_token"};
const std::vector<std::string> kDatasetTypes = {"chat_template", "alpaca", "sharegpt", "completion"};
const std::vector<std::string> kTrainOnEos = {"turn", "last", "all", "none"};

// Valid chat_template values (besides inline Jinja): tokenizer_default, jinja, every named template
// and tokenizer_default_fallback_<named template>.
std::vector<std::string> template_choices() {
  std::vector<std::string> c = {"tokenizer_default", "jinja"};
  for (const auto& n : named_chat_template_names()) c.push_back(n);
  for (const auto& n : named_chat_template_names()) c.push_back("tokenizer_default_fallback_" + n);
  return c;
}

void dataset_defaults(Dataset& d) {
  if (!d.has_type()) d.set_type("chat_template");
  if (!d.has_split()) d.set_split("train");
  const bool sharegpt = d.type() == "sharegpt";
  if (!d.has_field_messages()) d.set_field_messages(sharegpt ? "conversations" : "messages");
  auto& mp = *d.mutable_message_property_mappings();
  if (!mp.count("role")) mp["role"] = sharegpt ? "from" : "role";
  if (!mp.count("content")) mp["content"] = sharegpt ? "value" : "content";
  if (d.roles_to_train_size() == 0) d.add_roles_to_train("assistant");
  if (!d.has_train_on_eos()) d.set_train_on_eos("turn");
  if (!d.has_field()) d.set_field("text");
}

void validate_dataset(Ctx& ctx, Dataset& d, const std::string& path) {
  if (d.path().empty() && !ctx.rejected(path + ".path"))
    ctx.error(ctx.at(path), fmt::format("{}: required key 'path' is missing", path),
             "give the dataset file or directory: path: data/train.jsonl");
  if (d.has_type()) check_choice(ctx, path + ".type", path + ".type", d.type(), kDatasetTypes);
  if (d.has_train_on_eos())
    check_choice(ctx, path + ".train_on_eos", path + ".train_on_eos", d.train_on_eos(), kTrainOnEos);
  for (const auto& [k, v] : d.roles())
    if (v.values_size() == 0)
      ctx.error(ctx.at(path + ".roles." + k), fmt::format("roles.{} lists no source role names", k));
  dataset_defaults(d);
}

void validate(Ctx& ctx, Recipe& r) {
  // Required keys.
  {
    if (r.base_model().empty() && !ctx.rejected("base_model"))
      ctx.error(ctx.source, "required key 'base_model' is missing", "name a HF model id or local directory: base_model: Qwen/Qwen3-30B-A3B");
    if (r.output_dir().empty() && !ctx.rejected("output_dir"))
      ctx.error(ctx.source, "required key 'output_dir' is missing", "say where checkpoints and the adapter go: output_dir: out/my-adapter");
    if (r.datasets_size() == 0 && r.test_datasets_size() == 0 && !ctx.rejected("datasets") &&
        !ctx.rejected("test_datasets"))
      ctx.error(ctx.source, "required key 'datasets' is missing (or empty)",
               "list at least one dataset: datasets: [{path: data/train.jsonl, type: chat_template}]");
  }

  // Choices.
  if (r.has_adapter()) check_choice(ctx, "adapter", "adapter", r.adapter(), kAdapters);
  if (r.has_lr_scheduler()) {
    check_choice(ctx, "lr_scheduler", "lr_scheduler", r.lr_scheduler(), kSchedulers);
    // transformers' constant_with_warmup is graft's constant (which always follows the warmup).
    if (r.lr_scheduler() == "constant_with_warmup") r.set_lr_scheduler("constant");
  }
  if (r.has_optimizer()) {
    const std::string o = r.optimizer();
    if (std::find(kOptimizers8bit.begin(), kOptimizers8bit.end(), o) != kOptimizers8bit.end()) {
      ctx.warn(ctx.at("optimizer"),
               fmt::format("optimizer: {} runs graft's AdamW with fp32 moments (8-bit and paged optimizer states are not "
                           "implemented): more optimizer memory, and the full-precision AdamW trajectory", o));
    } else {
      std::vector<std::string> all = kOptimizers;
      all.insert(all.end(), kOptimizers8bit.begin(), kOptimizers8bit.end());
      check_choice(ctx, "optimizer", "optimizer", o, all);
    }
    r.set_optimizer("adamw");
  }
  if (r.has_chat_template()) {
    const std::string& t = r.chat_template();
    const bool inline_jinja = t.find("{{") != std::string::npos || t.find("{%") != std::string::npos;
    if (!inline_jinja && !ctx.rejected("chat_template")) {
      const auto choices = template_choices();
      if (std::find(choices.begin(), choices.end(), t) == choices.end()) {
        const std::string near = nearest(t, choices);
        ctx.error(ctx.at("chat_template"),
                  fmt::format("key 'chat_template' = '{}' is not a template graft has{}", t,
                              near.empty() ? "" : fmt::format(" — did you mean '{}'?", near)),
                  fmt::format("use tokenizer_default (the tokenizer's own template), a named template ({}), "
                              "tokenizer_default_fallback_<name>, or chat_template: jinja with chat_template_jinja "
                              "(inline source or a .jinja file)",
                              choices_text(named_chat_template_names())));
      }
    }
  }
  for (const auto& [k, v] : r.special_tokens()) {
    check_choice(ctx, "special_tokens." + k, "special_tokens." + k, k, kSpecialTokens);
    if (v.empty()) ctx.error(ctx.at("special_tokens." + k), fmt::format("special_tokens.{} is empty", k), "give the token text");
  }

  // Ranges.
  check_range(ctx, "lora_r", "lora_r", r.has_lora_r(), r.lora_r(), r.lora_r() >= 1, ">= 1");
  check_range(ctx, "lora_alpha", "lora_alpha", r.has_lora_alpha(), r.lora_alpha(), r.lora_alpha() >= 1, ">= 1");
  check_range(ctx, "lora_dropout", "lora_dropout", r.has_lora_dropout(), r.lora_dropout(),
              r.lora_dropout() >= 0 && r.lora_dropout() < 1, "in [0, 1)");
  for (const auto& [k, v] : r.rank_pattern())
    check_range(ctx, "rank_pattern." + k, "rank_pattern." + k, true, v, v >= 1, ">= 1");
  for (const auto& [k, v] : r.alpha_pattern())
    check_range(ctx, "alpha_pattern." + k, "alpha_pattern." + k, true, v, v >= 1, ">= 1");
  check_range(ctx, "val_set_size", "val_set_size", r.has_val_set_size(), r.val_set_size(),
              r.val_set_size() >= 0 && r.val_set_size() < 1, "a fraction in [0, 1)");
  check_range(ctx, "sequence_len", "sequence_len", r.has_sequence_len(), r.sequence_len(), r.sequence_len() >= 1, ">= 1");
  check_range(ctx, "micro_batch_size", "micro_batch_size", r.has_micro_batch_size(), r.micro_batch_size(),
              r.micro_batch_size() >= 1, ">= 1");
  check_range(ctx, "gradient_accumulation_steps", "gradient_accumulation_steps", r.has_gradient_accumulation_steps(),
              r.gradient_accumulation_steps(), r.gradient_accumulation_steps() >= 1, ">= 1");
  check_range(ctx, "num_epochs", "num_epochs", r.has_num_epochs(), r.num_epochs(), r.num_epochs() > 0, "> 0");
  check_range(ctx, "max_steps", "max_steps", r.has_max_steps(), r.max_steps(), r.max_steps() >= 1, ">= 1");
  check_range(ctx, "learning_rate", "learning_rate", r.has_learning_rate(), r.learning_rate(), r.learning_rate() > 0, "> 0");
  check_range(ctx, "warmup_steps", "warmup_steps", r.has_warmup_steps(), r.warmup_steps(), r.warmup_steps() >= 0, ">= 0");
  check_range(ctx, "warmup_ratio", "warmup_ratio", r.has_warmup_ratio(), r.warmup_ratio(),
              r.warmup_ratio() >= 0 && r.warmup_ratio() < 1, "in [0, 1)");
  check_range(ctx, "weight_decay", "weight_decay", r.has_weight_decay(), r.weight_decay(), r.weight_decay() >= 0, ">= 0");
  check_range(ctx, "adam_beta1", "adam_beta1", r.has_adam_beta1(), r.adam_beta1(),
              r.adam_beta1() >= 0 && r.adam_beta1() < 1, "in [0, 1)");
  check_range(ctx, "adam_beta2", "adam_beta2", r.has_adam_beta2(), r.adam_beta2(),
              r.adam_beta2() >= 0 && r.adam_beta2() < 1, "in [0, 1)");
  check_range(ctx, "adam_epsilon", "adam_epsilon", r.has_adam_epsilon(), r.adam_epsilon(), r.adam_epsilon() > 0, "> 0");
  check_range(ctx, "max_grad_norm", "max_grad_norm", r.has_max_grad_norm(), r.max_grad_norm(), r.max_grad_norm() >= 0,
              ">= 0 (0 = no clipping)");
  check_range(ctx, "eval_steps", "eval_steps", r.has_eval_steps(), r.eval_steps(), r.eval_steps() >= 0, ">= 0 (0 = at the end only)");
  check_range(ctx, "save_steps", "save_steps", r.has_save_steps(), r.save_steps(), r.save_steps() >= 0, ">= 0 (0 = at the end only)");
  check_range(ctx, "logging_steps", "logging_steps", r.has_logging_steps(), r.logging_steps(), r.logging_steps() >= 1, ">= 1");
  check_range(ctx, "seed", "seed", r.has_seed(), r.seed(), r.seed() >= 0, ">= 0");
  check_range(ctx, "evals_per_epoch", "evals_per_epoch", r.has_evals_per_epoch(), r.evals_per_epoch(),
              r.evals_per_epoch() >= 0, ">= 0 (0 = at the end only)");
  check_range(ctx, "saves_per_epoch", "saves_per_epoch", r.has_saves_per_epoch(), r.saves_per_epoch(),
              r.saves_per_epoch() >= 0, ">= 0 (0 = at the end only)");
  if (r.has_evals_per_epoch() && r.evals_per_epoch() == 0) r.clear_evals_per_epoch();
  if (r.has_saves_per_epoch() && r.saves_per_epoch() == 0) r.clear_saves_per_epoch();
  // (eval_steps / save_steps 0 is the default "at the end only": the printed recipe spells it out.)
  if (r.has_evals_per_epoch() && r.eval_steps() > 0)
    ctx.error(ctx.at("evals_per_epoch"), "keys 'eval_steps' and 'evals_per_epoch' are both set", "keep one of them");
  if (r.has_saves_per_epoch() && r.save_steps() > 0)
    ctx.error(ctx.at("saves_per_epoch"), "keys 'save_steps' and 'saves_per_epoch' are both set", "keep one of them");
  check_range(ctx, "num_threads", "num_threads", r.has_num_threads(), r.num_threads(), r.num_threads() >= 0,
              ">= 0 (0 = all cores)");

  // Cross-key rules.
  // modules_to_save (PEFT): full trained copies of embed_tokens / lm_head (a name or a dotted suffix, as PEFT matches).
  {
    std::set<std::string> seen;
    for (int i = 0; i < r.lora_modules_to_save_size(); ++i) {
      const std::string& e = r.lora_modules_to_save(i);
      const std::string name = adapters::saved_module_name(e);
      const std::string where = ctx.at(fmt::format("lora_modules_to_save.{}", i));
      if (name.empty())
        ctx.error(where,
                  fmt::format("lora_modules_to_save entry '{}' is not supported: graft trains full copies of "
                              "embed_tokens and lm_head only (other modules are adapted with LoRA)", e),
                  fmt::format("remove '{}' (adapt it through lora_target_modules instead)", e));
      else if (!seen.insert(name).second)
        ctx.error(where, fmt::format("lora_modules_to_save names {} twice", name), "give each module once");
    }
  }
  if (r.has_adapter() && r.has_load_in_4bit()) {
    if (r.adapter() == "qlora" && !r.load_in_4bit())
      ctx.error(ctx.at("load_in_4bit"), "adapter: qlora needs load_in_4bit: true (got false)",
               "set load_in_4bit: true, or use adapter: lora for a full-precision base");
    if (r.adapter() == "lora" && r.load_in_4bit())
      ctx.error(ctx.at("load_in_4bit"), "load_in_4bit: true with adapter: lora — a 4-bit base makes this QLoRA",
               "use adapter: qlora (or remove load_in_4bit)");
  }
  if (r.has_warmup_steps() && r.has_warmup_ratio())
    ctx.error(ctx.at("warmup_ratio"), "keys 'warmup_steps' and 'warmup_ratio' are both set", "keep one of them");
  if (r.lora_target_modules_size() > 0 && r.has_lora_target_modules_regex())
    ctx.error(ctx.at("lora_target_modules_regex"),
             "keys 'lora_target_modules' (list) and 'lora_target_modules_regex' are both set", "keep one of them");
  if (r.has_lora_target_modules_regex()) {
    try {
      std::regex re(r.lora_target_modules_regex());
    } catch (const std::regex_error& e) {
      ctx.error(ctx.at("lora_target_modules_regex"),
               fmt::format("lora_target_modules regex '{}' does not compile: {}", r.lora_target_modules_regex(), e.what()));
    }
  }
  if (r.lora_target_modules_size() == 0 && !r.has_lora_target_modules_regex() &&
      !r.lora_target_linear() && r.lora_target_parameters_size() == 0 && !ctx.rejected("lora_target_modules") &&
      !ctx.rejected("lora_target_linear") && !ctx.rejected("lora_target_parameters"))
    ctx.error(ctx.source, "no LoRA targets: none of lora_target_modules, lora_target_linear, lora_target_parameters is set",
             "e.g. lora_target_modules: [q_proj, k_proj, v_proj, o_proj], or lora_target_linear: true");
  if (r.lora_target_parameters_size() > 0 && r.has_lora_dropout() && r.lora_dropout() != 0)
    ctx.error(ctx.at("lora_dropout"),
             fmt::format("lora_dropout must be 0 when lora_target_parameters is set (got {})", r.lora_dropout()),
             "set lora_dropout: 0 (PEFT's fused-expert LoRA has no dropout)");
  if (r.test_datasets_size() > 0 && r.has_val_set_size() && r.val_set_size() > 0)
    ctx.error(ctx.at("val_set_size"), "keys 'test_datasets' and 'val_set_size' are both set",
             "evaluate on test_datasets or hold out val_set_size of datasets, not both");
  if (r.has_chat_template_jinja()) {
    if (r.chat_template_jinja().empty())
      ctx.error(ctx.at("chat_template_jinja"), "key 'chat_template_jinja' is empty");
    if (r.has_chat_template() && r.chat_template() != "jinja")
      ctx.error(ctx.at("chat_template"),
               fmt::format("chat_template_jinja is set but chat_template is '{}'", r.chat_template()),
               "set chat_template: jinja (or remove chat_template)");
    r.set_chat_template("jinja");
  } else if (r.has_chat_template() && r.chat_template() == "jinja") {
    ctx.error(ctx.at("chat_template"), "chat_template: jinja needs chat_template_jinja (inline source or a .jinja file)");
  }
  for (int i = 0; i < r.datasets_size(); ++i) validate_dataset(ctx, *r.mutable_datasets(i), fmt::format("datasets.{}", i));
  for (int i = 0; i < r.test_datasets_size(); ++i)
    validate_dataset(ctx, *r.mutable_test_datasets(i), fmt::format("test_datasets.{}", i));
}

void recipe_defaults(Recipe& r) {
  if (!r.has_adapter()) r.set_adapter(r.has_load_in_4bit() && r.load_in_4bit() ? "qlora" : "lora");
  if (!r.has_load_in_4bit()) r.set_load_in_4bit(r.adapter() == "qlora");
  if (!r.has_bnb_4bit_use_double_quant()) r.set_bnb_4bit_use_double_quant(true);
  if (!r.has_lora_r()) r.set_lora_r(8);
  if (!r.has_lora_alpha()) r.set_lora_alpha(16);
  if (!r.has_lora_dropout()) r.set_lora_dropout(0.0);
  if (!r.has_lora_target_linear()) r.set_lora_target_linear(false);
  if (!r.has_peft_use_rslora()) r.set_peft_use_rslora(false);
  if (!r.has_val_set_size()) r.set_val_set_size(0.0);
  if (!r.has_chat_template()) r.set_chat_template("tokenizer_default");
  if (!r.has_train_on_inputs()) r.set_train_on_inputs(false);
  if (!r.has_sequence_len()) r.set_sequence_len(2048);
  if (!r.has_sample_packing()) r.set_sample_packing(false);
  if (!r.has_micro_batch_size()) r.set_micro_batch_size(1);
  if (!r.has_gradient_accumulation_steps()) r.set_gradient_accumulation_steps(1);
  if (!r.has_num_epochs()) r.set_num_epochs(1.0);
  if (!r.has_learning_rate()) r.set_learning_rate(2e-4);
  if (!r.has_lr_scheduler()) r.set_lr_scheduler("cosine");
  if (!r.has_weight_decay()) r.set_weight_decay(0.0);
  if (!r.has_adam_beta1()) r.set_adam_beta1(0.9);
  if (!r.has_adam_beta2()) r.set_adam_beta2(0.999);
  if (!r.has_adam_epsilon()) r.set_adam_epsilon(1e-8);
  if (!r.has_max_grad_norm()) r.set_max_grad_norm(1.0);
  if (!r.has_optimizer()) r.set_optimizer("adamw");
  if (!r.has_gradient_checkpointing()) r.set_gradient_checkpointing(true);
  if (!r.has_eval_steps()) r.set_eval_steps(0);
  if (!r.has_save_steps()) r.set_save_steps(0);
  if (!r.has_logging_steps()) r.set_logging_steps(10);
  if (!r.has_seed()) r.set_seed(42);
  if (!r.has_num_threads()) r.set_num_threads(0);
}

}  // namespace

const Recipe& default_recipe_instance() {
  static const Recipe r = [] {
    Recipe x;
    recipe_defaults(x);
    return x;
  }();
  return r;
}

const Dataset& default_dataset_instance() {
  static const Dataset d = [] {
    Dataset x;
    dataset_defaults(x);
    return x;
  }();
  return d;
}

LoadedRecipe parse_recipe_text(const std::string& yaml_text, const std::string& source,
                               const std::vector<std::string>& overrides) {
  Ctx ctx;
  ctx.source = source;
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::ParserException& e) {
    ctx.fail(e.mark.is_null() ? source : fmt::format("{}:{}:{}", source, e.mark.line + 1, e.mark.column + 1),
             fmt::format("YAML syntax error: {}", e.msg), "fix the YAML at that line and column");
  } catch (const YAML::Exception& e) {
    ctx.fail(source, fmt::format("YAML error: {}", e.msg));
  }
  if (!root.IsDefined() || root.IsNull()) root = YAML::Node(YAML::NodeType::Map);
  if (!root.IsMap())
    ctx.fail(ctx.where("", root.Mark()), fmt::format("a recipe is a mapping of keys, got {}", describe_node(root)),
             "write one 'key: value' per line (see docs/recipes.md)");
  for (const auto& ov : overrides) apply_override(ctx, root, ov);

  std::string json;
  Walker(ctx).message(Recipe::descriptor(), root, "", json);

  LoadedRecipe out;
  out.source = source;
  pb::util::JsonParseOptions opts;
  opts.ignore_unknown_fields = false;
  auto st = pb::util::JsonStringToMessage(json, &out.proto, opts);
  if (!st.ok()) {
    ctx.throw_if_errors();
    ctx.fail(source, fmt::format("recipe does not match the schema: {}", st.ToString()),
             "this is a graft bug if the recipe passed the key checks; please report it with the recipe");
  }
  validate(ctx, out.proto);
  ctx.throw_if_errors();
  out.warnings = ctx.warnings;
  recipe_defaults(out.proto);
  out.text = recipe_to_yaml(out.proto);
  out.hash = sha256_hex(recipe_hash_json(out.proto));
  return out;
}

LoadedRecipe load_recipe(const std::string& path, const std::vector<std::string>& overrides) {
  std::ifstream f(path, std::ios::binary);
  if (!f)
    throw graft::Error(fmt::format("cannot open recipe '{}'", path), "",
                       "check the path; recipes/ holds the shipped recipes (recipes/demo.yaml, ...)");
  std::stringstream ss;
  ss << f.rdbuf();
  return parse_recipe_text(ss.str(), path, overrides);
}

}  // namespace graft::train
