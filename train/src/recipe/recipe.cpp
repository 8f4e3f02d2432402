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

#include "graft/error.hpp"
#include "graft/train/recipe.hpp"
#include "recipe_json.hpp"

namespace graft::train {

const Recipe& default_recipe_instance();
const Dataset& default_dataset_instance();

namespace {
using recipe_detail::json_escape;
namespace pb = google::protobuf;
using FD = pb::FieldDescriptor;

// ---------------------------------------------------------------- helpers

size_t levenshtein(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

// Closest candidate, or "" when nothing is reasonably close.
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
  const size_t limit = std::max<size_t>(2, (word.size() + 2) / 3);
  if (best_d <= limit) return best;
  // A key that extends or abbreviates a valid one ("lora_target" -> "lora_target_modules").
  for (const auto& c : candidates)
    if (word.size() >= 4 && c.size() >= 4 && (c.rfind(word, 0) == 0 || word.rfind(c, 0) == 0)) return c;
  return "";
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
      {"batch_size", "micro_batch_size"},
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

// Axolotl keys graft knowingly does not take, with the reason.
const std::map<std::string, std::string>& unsupported_axolotl_keys() {
  static const std::string precision = "graft picks the compute precision itself (bf16 on GPU, fp32 on CPU); remove the key";
  static const std::string attention = "graft uses its own attention kernels; remove the key";
  static const std::string logging = "graft logs to the console and <output_dir>; remove the key";
  static const std::map<std::string, std::string> m = {
      {"bf16", precision},
      {"fp16", precision},
      {"tf32", precision},
      {"flash_attention", attention},
      {"sdp_attention", attention},
      {"xformers_attention", attention},
      {"attn_implementation", attention},
      {"wandb_project", logging},
      {"wandb_entity", logging},
      {"wandb_name", logging},
      {"wandb_watch", logging},
      {"wandb_log_model", logging},
      {"load_in_8bit", "graft quantizes bases to NF4 only: use load_in_4bit with adapter: qlora, or neither"},
      {"peft_use_dora", "DoRA is not supported; remove the key"},
      {"lora_model_dir", "continue training from a graft checkpoint with resume_from_checkpoint"},
      {"evals_per_epoch", "use eval_steps"},
      {"saves_per_epoch", "use save_steps"},
      {"pad_to_sequence_len", "graft pads per batch; remove the key"},
      {"quantize_moe_experts", "with load_in_4bit graft quantizes the experts too; remove the key"},
      {"deepspeed", "graft runs its own data/expert parallelism; remove the key"},
      {"fsdp", "graft runs its own data/expert parallelism; remove the key"},
      {"fsdp_config", "graft runs its own data/expert parallelism; remove the key"},
      {"special_tokens", "graft takes special tokens from the tokenizer; remove the key"},
      {"strict", "remove the key"},
      {"trust_remote_code", "graft never runs model code; remove the key"},
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

  [[noreturn]] void fail(const std::string& where, const std::string& what, const std::string& fix = "") const {
    throw graft::Error(fmt::format("{}: {}", where, what), "", fix);
  }
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
    std::set<std::string> seen_keys, seen_fields;
    for (auto kv : node) {
      const YAML::Node k = kv.first;
      const YAML::Node v = kv.second;
      if (!k.IsScalar())
        ctx_.fail(ctx_.where(path, k.Mark()), fmt::format("recipe keys must be plain names, got {}", describe_node(k)));
      const std::string key = k.Scalar();
      const std::string kpath = join_path(path, key);
      const std::string kwhere = ctx_.where(kpath, k.Mark());
      if (!seen_keys.insert(key).second)
        ctx_.fail(kwhere, fmt::format("key '{}' appears twice", key), "keep one of the two entries");
      const FD* f = d->FindFieldByName(key);
      if (!f) unknown_key(d, key, kpath, kwhere, names);
      // lora_target_modules: a list is module names, a single string is a regex.
      if (key == "lora_target_modules" && v.IsScalar()) f = d->FindFieldByName("lora_target_modules_regex");
      const std::string vwhere = ctx_.where(kpath, v.Mark().is_null() || v.Mark().line < 0 ? k.Mark() : v.Mark());
      ctx_.loc[kpath] = vwhere;
      ctx_.loc[join_path(path, f->name())] = vwhere;
      if (!seen_fields.insert(f->name()).second)
        ctx_.fail(kwhere, fmt::format("'{}' is given both as lora_target_modules (string form) and as {}", key, f->name()),
                  "give the regex once");
      if (!v.IsDefined() || v.IsNull()) continue;  // `key:` or `key: null` = unset
      if (!first) o += ',';
      first = false;
      o += json_escape(f->name()) + ':';
      value(f, v, kpath, vwhere, o);
    }
    o += '}';
  }

 private:
  [[noreturn]] void unknown_key(const pb::Descriptor* d, const std::string& key, const std::string& kpath,
                                const std::string& kwhere, const std::vector<std::string>& names) {
    (void)kpath;
    std::string scope = d == Recipe::descriptor() ? "recipe" : fmt::format("{} entry", d->name() == "Dataset" ? "dataset" : d->name());
    if (d == Recipe::descriptor()) {
      auto a = key_aliases().find(key);
      if (a != key_aliases().end())
        ctx_.fail(kwhere, fmt::format("unknown {} key '{}' — did you mean '{}'?", scope, key, a->second),
                  fmt::format("rename '{}' to '{}' (see docs/recipes.md)", key, a->second));
      auto u = unsupported_axolotl_keys().find(key);
      if (u != unsupported_axolotl_keys().end())
        ctx_.fail(kwhere, fmt::format("unknown {} key '{}': this Axolotl key is not supported by graft", scope, key),
                  u->second);
    }
    std::string near = nearest(key, names);
    if (!near.empty())
      ctx_.fail(kwhere, fmt::format("unknown {} key '{}' — did you mean '{}'?", scope, key, near),
                fmt::format("rename '{}' to '{}' (see docs/recipes.md for every key)", key, near));
    ctx_.fail(kwhere, fmt::format("unknown {} key '{}'", scope, key),
              fmt::format("valid keys: {} (see docs/recipes.md)", choices_text(names)));
  }

  [[noreturn]] void type_error(const FD* f, const std::string& key, const YAML::Node& v, const std::string& where) {
    ctx_.fail(where, fmt::format("key '{}' expects {}, got {}", key, describe_type(f), describe_node(v)));
  }

  void value(const FD* f, const YAML::Node& v, const std::string& path, const std::string& where, std::string& o) {
    const std::string key = path.substr(path.rfind('.') == std::string::npos ? 0 : path.rfind('.') + 1);
    if (f->is_map()) {
      if (!v.IsMap()) type_error(f, key, v, where);
      const FD* vf = f->message_type()->map_value();
      o += '{';
      bool first = true;
      std::set<std::string> seen;
      for (auto kv : v) {
        const YAML::Node mkey = kv.first;
        const YAML::Node mv = kv.second;
        if (!mkey.IsScalar()) type_error(f, key, v, where);
        const std::string mk = mkey.Scalar();
        const std::string mpath = join_path(path, mk);
        const std::string mwhere = ctx_.where(mpath, mv.Mark().is_null() ? mkey.Mark() : mv.Mark());
        ctx_.loc[mpath] = mwhere;
        if (!seen.insert(mk).second) ctx_.fail(mwhere, fmt::format("key '{}' appears twice in '{}'", mk, key));
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
              if (!name.IsScalar())
                ctx_.fail(mwhere, fmt::format("key '{}.{}' expects a list of role names, got a nested {}", key, mk,
                                              describe_node(name)));
              o += (i ? "," : "") + json_escape(name.Scalar());
            }
          } else {
            ctx_.fail(mwhere, fmt::format("key '{}.{}' expects a list of role names, got {}", key, mk, describe_node(mv)));
          }
          o += "]}";
        } else {
          if (!mv.IsScalar())
            ctx_.fail(mwhere, fmt::format("key '{}.{}' expects {}, got {}", key, mk, describe_type(vf), describe_node(mv)));
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
        ctx_.fail(where, fmt::format("key '{}' expects {}, got {}", key, describe_type(f), describe_node(v)), fix);
      }
      o += '[';
      for (size_t i = 0; i < v.size(); ++i) {
        const YAML::Node e = v[i];
        const std::string epath = join_path(path, std::to_string(i));
        const std::string ewhere = ctx_.where(epath, e.Mark().is_null() ? v.Mark() : e.Mark());
        ctx_.loc[epath] = ewhere;
        if (i) o += ',';
        if (f->cpp_type() == FD::CPPTYPE_MESSAGE) {
          if (!e.IsMap())
            ctx_.fail(ewhere, fmt::format("entry {} of '{}' expects a mapping of keys (path: ..., type: ...), got {}", i,
                                          key, describe_node(e)));
          message(f->message_type(), e, epath, o);
        } else {
          if (!e.IsScalar())
            ctx_.fail(ewhere, fmt::format("entry {} of '{}' expects {}, got {}", i, key,
                                          describe_type(f).substr(std::string("a list of ").size()), describe_node(e)));
          scalar(f, e, fmt::format("{}[{}]", key, i), ewhere, o);
        }
      }
      o += ']';
      return;
    }
    if (f->cpp_type() == FD::CPPTYPE_MESSAGE) {
      if (!v.IsMap()) type_error(f, key, v, where);
      message(f->message_type(), v, path, o);
      return;
    }
    if (!v.IsScalar()) type_error(f, key, v, where);
    scalar(f, v, key, where, o);
  }

  void scalar(const FD* f, const YAML::Node& v, const std::string& key, const std::string& where, std::string& o) {
    const std::string& s = v.Scalar();
    switch (f->cpp_type()) {
      case FD::CPPTYPE_STRING: o += json_escape(s); return;
      case FD::CPPTYPE_BOOL: {
        bool b = false;
        if (!YAML::convert<bool>::decode(v, b))
          ctx_.fail(where, fmt::format("key '{}' expects a boolean (true/false), got '{}'", key, s));
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
          ctx_.fail(where, fmt::format("key '{}' expects an integer, got '{}'", key, s), fix);
        }
        const long long lo = f->cpp_type() == FD::CPPTYPE_INT32 ? std::numeric_limits<int32_t>::min()
                                                                : std::numeric_limits<int64_t>::min();
        const long long hi = f->cpp_type() == FD::CPPTYPE_INT32 ? std::numeric_limits<int32_t>::max()
                                                                : std::numeric_limits<int64_t>::max();
        if (x < lo || x > hi) ctx_.fail(where, fmt::format("key '{}' = {} is out of range (at most {})", key, s, hi));
        o += std::to_string(x);
        return;
      }
      case FD::CPPTYPE_DOUBLE:
      case FD::CPPTYPE_FLOAT: {
        double x = 0;
        if (!parse_double(s, x)) ctx_.fail(where, fmt::format("key '{}' expects a number, got '{}'", key, s));
        o += fmt::format("{}", x);
        return;
      }
      default: ctx_.fail(where, fmt::format("key '{}': unsupported schema type", key));
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

void check_choice(const Ctx& ctx, const std::string& path, const std::string& key, const std::string& v,
                  const std::vector<std::string>& choices) {
  if (std::find(choices.begin(), choices.end(), v) != choices.end()) return;
  std::string near = nearest(v, choices);
  ctx.fail(ctx.at(path),
           fmt::format("key '{}' = '{}' is not one of: {}{}", key, v, choices_text(choices),
                       near.empty() ? "" : fmt::format(" — did you mean '{}'?", near)),
           fmt::format("set {} to one of: {}", key, choices_text(choices)));
}

template <class T>
void check_range(const Ctx& ctx, const std::string& path, const std::string& key, bool has, T v, bool ok,
                 const std::string& range) {
  if (!has || ok) return;
  ctx.fail(ctx.at(path), fmt::format("key '{}' = {} is out of range: must be {}", key, v, range));
}

const std::vector<std::string> kAdapters = {"lora", "qlora"};
const std::vector<std::string> kSchedulers = {"constant", "linear", "cosine"};
const std::vector<std::string> kOptimizers = {"adamw", "adamw_torch", "adamw_torch_fused"};
const std::vector<std::string> kDatasetTypes = {"chat_template", "alpaca", "sharegpt", "completion"};
const std::vector<std::string> kTrainOnEos = {"turn", "last", "all", "none"};
const std::vector<std::string> kTemplateNames = {"tokenizer_default", "tokenizer_default_fallback_chatml", "chatml",
                                                 "jinja"};

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

void validate_dataset(const Ctx& ctx, Dataset& d, const std::string& path) {
  if (d.path().empty())
    ctx.fail(ctx.at(path), fmt::format("{}: required key 'path' is missing", path),
             "give the dataset file or directory: path: data/train.jsonl");
  if (d.has_type()) check_choice(ctx, path + ".type", path + ".type", d.type(), kDatasetTypes);
  if (d.has_train_on_eos())
    check_choice(ctx, path + ".train_on_eos", path + ".train_on_eos", d.train_on_eos(), kTrainOnEos);
  for (const auto& [k, v] : d.roles())
    if (v.values_size() == 0)
      ctx.fail(ctx.at(path + ".roles." + k), fmt::format("roles.{} lists no source role names", k));
  dataset_defaults(d);
}

void validate(const Ctx& ctx, Recipe& r) {
  // Required keys.
  {
    if (r.base_model().empty())
      ctx.fail(ctx.source, "required key 'base_model' is missing", "name a HF model id or local directory: base_model: Qwen/Qwen3-30B-A3B");
    if (r.output_dir().empty())
      ctx.fail(ctx.source, "required key 'output_dir' is missing", "say where checkpoints and the adapter go: output_dir: out/my-adapter");
    if (r.datasets_size() == 0 && r.test_datasets_size() == 0)
      ctx.fail(ctx.source, "required key 'datasets' is missing (or empty)",
               "list at least one dataset: datasets: [{path: data/train.jsonl, type: chat_template}]");
  }

  // Choices.
  if (r.has_adapter()) check_choice(ctx, "adapter", "adapter", r.adapter(), kAdapters);
  if (r.has_lr_scheduler()) check_choice(ctx, "lr_scheduler", "lr_scheduler", r.lr_scheduler(), kSchedulers);
  if (r.has_optimizer()) {
    check_choice(ctx, "optimizer", "optimizer", r.optimizer(), kOptimizers);
    r.set_optimizer("adamw");
  }
  if (r.has_chat_template()) {
    const std::string& t = r.chat_template();
    const bool inline_jinja = t.find("{{") != std::string::npos || t.find("{%") != std::string::npos;
    if (!inline_jinja) check_choice(ctx, "chat_template", "chat_template", t, kTemplateNames);
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
  check_range(ctx, "num_threads", "num_threads", r.has_num_threads(), r.num_threads(), r.num_threads() >= 0,
              ">= 0 (0 = all cores)");

  // Cross-key rules.
  if (r.lora_modules_to_save_size() > 0)
    ctx.fail(ctx.at("lora_modules_to_save"), "key 'lora_modules_to_save' is not supported yet (graft trains LoRA adapters only)",
             "remove lora_modules_to_save; embeddings and lm_head stay frozen");
  if (r.has_adapter() && r.has_load_in_4bit()) {
    if (r.adapter() == "qlora" && !r.load_in_4bit())
      ctx.fail(ctx.at("load_in_4bit"), "adapter: qlora needs load_in_4bit: true (got false)",
               "set load_in_4bit: true, or use adapter: lora for a full-precision base");
    if (r.adapter() == "lora" && r.load_in_4bit())
      ctx.fail(ctx.at("load_in_4bit"), "load_in_4bit: true with adapter: lora — a 4-bit base makes this QLoRA",
               "use adapter: qlora (or remove load_in_4bit)");
  }
  if (r.has_warmup_steps() && r.has_warmup_ratio())
    ctx.fail(ctx.at("warmup_ratio"), "keys 'warmup_steps' and 'warmup_ratio' are both set", "keep one of them");
  if (r.lora_target_modules_size() > 0 && r.has_lora_target_modules_regex())
    ctx.fail(ctx.at("lora_target_modules_regex"),
             "keys 'lora_target_modules' (list) and 'lora_target_modules_regex' are both set", "keep one of them");
  if (r.has_lora_target_modules_regex()) {
    try {
      std::regex re(r.lora_target_modules_regex());
    } catch (const std::regex_error& e) {
      ctx.fail(ctx.at("lora_target_modules_regex"),
               fmt::format("lora_target_modules regex '{}' does not compile: {}", r.lora_target_modules_regex(), e.what()));
    }
  }
  if (r.lora_target_modules_size() == 0 && !r.has_lora_target_modules_regex() &&
      !r.lora_target_linear() && r.lora_target_parameters_size() == 0)
    ctx.fail(ctx.source, "no LoRA targets: none of lora_target_modules, lora_target_linear, lora_target_parameters is set",
             "e.g. lora_target_modules: [q_proj, k_proj, v_proj, o_proj], or lora_target_linear: true");
  if (r.lora_target_parameters_size() > 0 && r.has_lora_dropout() && r.lora_dropout() != 0)
    ctx.fail(ctx.at("lora_dropout"),
             fmt::format("lora_dropout must be 0 when lora_target_parameters is set (got {})", r.lora_dropout()),
             "set lora_dropout: 0 (PEFT's fused-expert LoRA has no dropout)");
  if (r.test_datasets_size() > 0 && r.has_val_set_size() && r.val_set_size() > 0)
    ctx.fail(ctx.at("val_set_size"), "keys 'test_datasets' and 'val_set_size' are both set",
             "evaluate on test_datasets or hold out val_set_size of datasets, not both");
  if (r.has_chat_template_jinja()) {
    if (r.chat_template_jinja().empty())
      ctx.fail(ctx.at("chat_template_jinja"), "key 'chat_template_jinja' is empty");
    if (r.has_chat_template() && r.chat_template() != "jinja")
      ctx.fail(ctx.at("chat_template"),
               fmt::format("chat_template_jinja is set but chat_template is '{}'", r.chat_template()),
               "set chat_template: jinja (or remove chat_template)");
    r.set_chat_template("jinja");
  } else if (r.has_chat_template() && r.chat_template() == "jinja") {
    ctx.fail(ctx.at("chat_template"), "chat_template: jinja needs chat_template_jinja (inline source or a .jinja file)");
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
  if (!st.ok())
    ctx.fail(source, fmt::format("recipe does not match the schema: {}", st.ToString()),
             "this is a graft bug if the recipe passed the key checks; please report it with the recipe");
  validate(ctx, out.proto);
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
