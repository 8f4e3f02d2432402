// Dataset formats -> samples: alpaca, sharegpt, chat_template (OpenAI messages), completion,
// pretokenized. See docs/data.md "Formats".
#include <algorithm>
#include <cstdio>
#include <memory>
#include <set>

#include "data_internal.hpp"
#include "graft/error.hpp"

namespace graft::train {

using data_detail::ojson;
using data_detail::Record;

namespace {

const char* kChatmlTemplate =
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

const std::set<std::string> kStandardRoles = {"system", "user", "assistant", "tool", "developer"};

std::string known_types() { return "alpaca, sharegpt, chat_template, completion, pretokenized"; }

// Holds the template actually used (owned when built from options or the tokenizer config).
struct TemplateRef {
  std::unique_ptr<chat_template::ChatTemplate> owned;
  const chat_template::ChatTemplate* tpl = nullptr;
};

bool needs_template(const std::string& type) { return type == "chat_template" || type == "sharegpt"; }

TemplateRef resolve_template(const DatasetSpec& spec, const tokenizer::Tokenizer& tok,
                             const chat_template::ChatTemplate* tpl, const DataOptions& opt) {
  TemplateRef r;
  std::string src = opt.chat_template;
  if (src == "tokenizer_default") src.clear();
  if (src == "chatml") src = kChatmlTemplate;
  if (!src.empty()) {
    r.owned = std::make_unique<chat_template::ChatTemplate>(src, "chat_template (recipe)");
    const auto& c = tok.config();
    auto& v = r.owned->variables();
    v["bos_token"] = c.bos_token;
    v["eos_token"] = c.eos_token;
    v["pad_token"] = c.pad_token;
    v["unk_token"] = c.unk_token;
    r.tpl = r.owned.get();
    return r;
  }
  if (tpl) {
    r.tpl = tpl;
    return r;
  }
  if (!needs_template(spec.type)) return r;
  const auto& c = tok.config();
  GRAFT_CHECK_FIX(c.present && !c.raw_json.empty(),
                  "set `chat_template` (a Jinja source, or chatml) or use a tokenizer with a chat template",
                  "dataset {} of type {} needs a chat template and the tokenizer has no tokenizer_config.json",
                  spec.path, spec.type);
  const ojson cfg_json = ojson::parse(c.raw_json);
  GRAFT_CHECK_FIX(cfg_json.is_object() && cfg_json.contains("chat_template") && !cfg_json["chat_template"].is_null(),
                  "name one: `chat_template: chatml` (or another named template, or chat_template_jinja) in the "
                  "recipe, `--chat-template chatml` (or a .jinja file) for graft eval",
                  "dataset {} of type {} needs a chat template and the tokenizer's tokenizer_config.json has none",
                  spec.path, spec.type);
  r.owned = std::make_unique<chat_template::ChatTemplate>(
      chat_template::ChatTemplate::from_tokenizer_config_json(cfg_json));
  r.tpl = r.owned.get();
  return r;
}

struct Ctx {
  const DatasetSpec& spec;
  const tokenizer::Tokenizer& tok;
  const chat_template::ChatTemplate* tpl;
  const DataOptions& opt;
  const Record* rec = nullptr;
  std::string where() const { return data_detail::where(spec.path, *rec); }
};

[[noreturn]] void fail_field(const Ctx& c, const std::string& field, const std::string& what, const std::string& fix) {
  GRAFT_FAIL(fix, "{}: field `{}` {}", c.where(), field, what);
}

const ojson& require(const Ctx& c, const ojson& obj, const std::string& key, const std::string& path_name) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null())
    fail_field(c, path_name, "is missing",
               fmt::format("add `{}` to every record of a {} dataset (or fix the field mapping)", key, c.spec.type));
  return *it;
}

std::string require_string(const Ctx& c, const ojson& obj, const std::string& key, const std::string& path_name) {
  const ojson& v = require(c, obj, key, path_name);
  if (!v.is_string())
    fail_field(c, path_name, fmt::format("is a JSON {}, expected a string", v.type_name()), "make it a string");
  return v.get<std::string>();
}

std::string optional_string(const Ctx& c, const ojson& obj, const std::string& key) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return {};
  if (!it->is_string())
    fail_field(c, key, fmt::format("is a JSON {}, expected a string", it->type_name()), "make it a string");
  return it->get<std::string>();
}

// Message content: a string, null, or a list of text parts ({type: text, text|value: ...}).
std::string content_text(const Ctx& c, const ojson& v, const std::string& name) {
  if (v.is_null()) return {};
  if (v.is_string()) return v.get<std::string>();
  if (v.is_array()) {
    std::string out;
    for (const auto& part : v) {
      if (part.is_string()) {
        out += part.get<std::string>();
        continue;
      }
      if (!part.is_object()) fail_field(c, name, "has a content part that is not an object", "use text parts");
      std::string type = part.value("type", "text");
      if (type != "text")
        fail_field(c, name, fmt::format("has a `{}` content part; only text is supported", type),
                   "remove non-text parts (images, audio) from the dataset");
      for (const char* k : {"text", "value", "content"}) {
        auto it = part.find(k);
        if (it != part.end() && it->is_string()) {
          out += it->get<std::string>();
          break;
        }
      }
    }
    return out;
  }
  fail_field(c, name, fmt::format("is a JSON {}, expected a string or a list of text parts", v.type_name()),
             "make the content a string");
}

// Tools: a JSON array, or a string holding one (LLaMA-Factory); each as {type: function, function: {...}}.
std::optional<ojson> parse_tools(const Ctx& c, const ojson& rec) {
  auto it = rec.find("tools");
  if (it == rec.end() || it->is_null()) return std::nullopt;
  ojson t = *it;
  if (t.is_string()) {
    std::string s = t.get<std::string>();
    if (s.find_first_not_of(" \t\r\n") == std::string::npos) return std::nullopt;
    try {
      t = ojson::parse(s);
    } catch (const nlohmann::json::parse_error& e) {
      fail_field(c, "tools", fmt::format("is a string that is not valid JSON ({})", e.what()),
                 "store tools as a JSON array (or a string holding one)");
    }
  }
  if (t.is_object()) t = ojson::array({t});
  if (!t.is_array())
    fail_field(c, "tools", fmt::format("is a JSON {}, expected an array", t.type_name()), "store tools as a JSON array");
  if (t.empty()) return std::nullopt;
  ojson out = ojson::array();
  for (auto& tool : t) {
    if (tool.is_object() && !tool.contains("type") && !tool.contains("function"))
      out.push_back(ojson{{"type", "function"}, {"function", tool}});
    else
      out.push_back(tool);
  }
  return out;
}

// A function-call turn's value ({"name", "arguments"} or a list of them) -> tool_calls.
ojson tool_calls_from(const Ctx& c, const std::string& value, const std::string& name) {
  ojson v;
  try {
    v = ojson::parse(value);
  } catch (const nlohmann::json::parse_error&) {
    fail_field(c, name, "is a function call whose value is not JSON",
               "write function calls as {\"name\": ..., \"arguments\": {...}}");
  }
  if (v.is_object()) v = ojson::array({v});
  if (!v.is_array()) fail_field(c, name, "is a function call that is not an object", "write {\"name\", \"arguments\"}");
  ojson calls = ojson::array();
  for (auto& call : v) {
    if (!call.is_object() || !call.contains("name"))
      fail_field(c, name, "is a function call without `name`", "write {\"name\": ..., \"arguments\": {...}}");
    ojson args = call.contains("arguments") ? call["arguments"] : ojson::object();
    calls.push_back(ojson{{"type", "function"}, {"function", {{"name", call["name"]}, {"arguments", args}}}});
  }
  return calls;
}

// Turns of a sharegpt / chat_template record -> OpenAI messages with mapped roles.
ojson build_messages(const Ctx& c, bool sharegpt) {
  const ojson& rec = c.rec->value;
  std::string field = c.spec.field_messages;
  if (sharegpt && (field.empty() || field == "messages") && !rec.contains(field)) field = "conversations";
  if (field.empty()) field = "messages";
  const ojson& turns = require(c, rec, field, field);
  if (!turns.is_array())
    fail_field(c, field, fmt::format("is a JSON {}, expected an array of turns", turns.type_name()),
               "store the conversation as an array of {role, content} objects");
  if (turns.empty()) fail_field(c, field, "is an empty conversation", "remove the record or give it turns");

  auto prop = [&](const char* key, const char* dflt) {
    auto it = c.spec.message_property_mappings.find(key);
    return it != c.spec.message_property_mappings.end() ? it->second : std::string(dflt);
  };
  const std::string role_key = prop("role", sharegpt ? "from" : "role");
  const std::string content_key = prop("content", sharegpt ? "value" : "content");

  std::map<std::string, std::string> roles;
  if (sharegpt || !c.spec.message_property_mappings.empty())
    roles = {{"human", "user"},       {"user", "user"},         {"gpt", "assistant"}, {"assistant", "assistant"},
             {"model", "assistant"},  {"system", "system"},     {"observation", "tool"}, {"tool", "tool"},
             {"function_call", "assistant"}, {"function", "assistant"}, {"ipython", "tool"}};
  for (const auto& [k, v] : c.spec.roles) roles[k] = v;
  std::set<std::string> allowed = kStandardRoles;
  for (const auto& [k, v] : c.spec.roles) allowed.insert(v);

  ojson msgs = ojson::array();
  std::string sys = sharegpt ? optional_string(c, rec, "system") : std::string();
  if (!sys.empty()) msgs.push_back(ojson{{"role", "system"}, {"content", sys}});
  for (size_t i = 0; i < turns.size(); ++i) {
    const ojson& t = turns[i];
    std::string tname = fmt::format("{}[{}]", field, i);
    if (!t.is_object())
      fail_field(c, tname, fmt::format("is a JSON {}, expected an object", t.type_name()), "make every turn an object");
    std::string raw = require_string(c, t, role_key, tname + "." + role_key);
    auto it = roles.find(raw);
    std::string role = it != roles.end() ? it->second : raw;
    if (!allowed.count(role)) {
      std::string names;
      for (const auto& r : roles) names += (names.empty() ? "" : ", ") + r.first;
      for (const auto& r : kStandardRoles) names += ", " + r;
      fail_field(c, tname + "." + role_key, fmt::format("has unknown role `{}`", raw),
                 fmt::format("map it with `roles: {{{}: user|assistant|system|tool}}` (known: {})", raw, names));
    }
    ojson m = ojson::object();
    m["role"] = role;
    for (auto kv = t.begin(); kv != t.end(); ++kv)
      if (kv.key() != role_key && kv.key() != content_key && kv.key() != "role" && kv.key() != "content" &&
          kv.key() != "loss_weight")
        m[kv.key()] = kv.value();
    auto cit = t.find(content_key);
    bool has_calls = t.contains("tool_calls");
    if ((cit == t.end() || cit->is_null()) && !has_calls)
      fail_field(c, tname + "." + content_key, "is missing", "give every turn a content (or tool_calls)");
    std::string content = cit == t.end() ? std::string() : content_text(c, *cit, tname + "." + content_key);
    bool is_call = (raw == "function_call" || raw == "function") && !c.spec.roles.count(raw);
    if (is_call) {
      m["content"] = "";
      m["tool_calls"] = tool_calls_from(c, content, tname + "." + content_key);
    } else {
      m["content"] = content;
    }
    msgs.push_back(std::move(m));
  }
  return msgs;
}

// Length policy and the no-loss filter; returns false when the sample is dropped.
bool finish(Sample& s, const DataOptions& opt, DataStats& st) {
  if (static_cast<int64_t>(s.ids.size()) > opt.sequence_len) {
    if (opt.truncation == "truncate") {
      s.ids.resize(static_cast<size_t>(opt.sequence_len));
      s.labels.resize(static_cast<size_t>(opt.sequence_len));
      if (!s.labels.empty()) s.labels.back() = kIgnoreIndex;
      ++st.truncated;
    } else {
      ++st.dropped_too_long;
      return false;
    }
  }
  bool any = std::any_of(s.labels.begin(), s.labels.end(), [](int32_t l) { return l != kIgnoreIndex; });
  if (!any) {
    ++st.dropped_no_loss;
    return false;
  }
  return true;
}

std::vector<int32_t> encode_plain(const tokenizer::Tokenizer& tok, const std::string& text) {
  return tok.encode(text, false);
}

void emit(const Ctx& c, std::vector<Sample>& out, Sample s, DataStats& st) {
  data_detail::map_to_model(s, c.tok, c.opt);
  if (finish(s, c.opt, st)) out.push_back(std::move(s));
}

void load_alpaca(const Ctx& c, std::vector<Sample>& out, DataStats& st) {
  const ojson& r = c.rec->value;
  std::string instruction = require_string(c, r, "instruction", "instruction");
  std::string input = optional_string(c, r, "input");
  std::string output = require_string(c, r, "output", "output");
  std::string system = optional_string(c, r, "system");
  std::string prompt = input.empty() ? instruction : instruction + "\n" + input;
  if (c.tpl) {
    ojson msgs = ojson::array();
    if (!system.empty()) msgs.push_back(ojson{{"role", "system"}, {"content", system}});
    if (auto h = r.find("history"); h != r.end() && h->is_array()) {
      for (size_t i = 0; i < h->size(); ++i) {
        const ojson& pair = (*h)[i];
        if (!pair.is_array() || pair.size() != 2 || !pair[0].is_string() || !pair[1].is_string())
          fail_field(c, fmt::format("history[{}]", i), "is not a [prompt, response] pair of strings",
                     "write history as [[prompt, response], ...]");
        msgs.push_back(ojson{{"role", "user"}, {"content", pair[0]}});
        msgs.push_back(ojson{{"role", "assistant"}, {"content", pair[1]}});
      }
    }
    msgs.push_back(ojson{{"role", "user"}, {"content", prompt}});
    msgs.push_back(ojson{{"role", "assistant"}, {"content", output}});
    emit(c, out, tokenize_conversation(msgs, nullptr, c.tok, *c.tpl, c.spec, c.opt), st);
    return;
  }
  // No template: [BOS] system? prompt | output [EOS]; loss on output (+EOS).
  std::vector<int32_t> ids;
  std::vector<uint8_t> target;
  if (int32_t b = data_detail::bos_id(c.tok, c.opt); b >= 0) ids.push_back(b), target.push_back(0);
  auto p = encode_plain(c.tok, system.empty() ? prompt : system + "\n" + prompt);
  ids.insert(ids.end(), p.begin(), p.end());
  target.insert(target.end(), p.size(), c.opt.train_on_inputs ? 1 : 0);
  auto o = encode_plain(c.tok, output);
  ids.insert(ids.end(), o.begin(), o.end());
  target.insert(target.end(), o.size(), 1);
  if (c.opt.add_eos) {
    int32_t e = data_detail::eos_id(c.tok, c.opt);
    GRAFT_CHECK_FIX(e >= 0, "set eos_token in tokenizer_config.json or add_eos: false",
                    "add_eos is set but the tokenizer has no EOS token");
    ids.push_back(e), target.push_back(1);
  }
  Sample s{ids, data_detail::shift_labels(ids, target)};
  emit(c, out, std::move(s), st);
}

void load_chat(const Ctx& c, bool sharegpt, std::vector<Sample>& out, DataStats& st) {
  ojson msgs = build_messages(c, sharegpt);
  auto tools = parse_tools(c, c.rec->value);
  emit(c, out, tokenize_conversation(msgs, tools ? &*tools : nullptr, c.tok, *c.tpl, c.spec, c.opt), st);
}

void load_completion(const Ctx& c, std::vector<Sample>& out, DataStats& st) {
  std::string text = require_string(c, c.rec->value, "text", "text");
  std::vector<int32_t> ids;
  if (int32_t b = data_detail::bos_id(c.tok, c.opt); b >= 0) ids.push_back(b);
  auto t = encode_plain(c.tok, text);
  ids.insert(ids.end(), t.begin(), t.end());
  if (c.opt.add_eos) {
    int32_t e = data_detail::eos_id(c.tok, c.opt);
    GRAFT_CHECK_FIX(e >= 0, "set eos_token in tokenizer_config.json or add_eos: false",
                    "add_eos is set but the tokenizer has no EOS token");
    ids.push_back(e);
  }
  const size_t L = static_cast<size_t>(c.opt.sequence_len);
  for (size_t b = 0; b < ids.size(); b += L) {
    Sample s;
    s.ids.assign(ids.begin() + static_cast<std::ptrdiff_t>(b),
                 ids.begin() + static_cast<std::ptrdiff_t>(std::min(ids.size(), b + L)));
    s.labels = data_detail::shift_labels(s.ids, std::vector<uint8_t>(s.ids.size(), 1));
    emit(c, out, std::move(s), st);
  }
}

std::vector<int32_t> int_array(const Ctx& c, const ojson& v, const std::string& name, bool allow_ignore) {
  if (!v.is_array()) fail_field(c, name, fmt::format("is a JSON {}, expected an array of integers", v.type_name()),
                                "store token ids as an array of integers");
  std::vector<int32_t> out;
  out.reserve(v.size());
  const int64_t vocab = static_cast<int64_t>(c.tok.vocab_size());
  for (size_t i = 0; i < v.size(); ++i) {
    if (!v[i].is_number_integer())
      fail_field(c, fmt::format("{}[{}]", name, i), fmt::format("is a JSON {}, expected an integer", v[i].type_name()),
                 "store token ids as integers");
    int64_t x = v[i].get<int64_t>();
    if (!(allow_ignore && x == kIgnoreIndex) && (x < 0 || x >= vocab))
      fail_field(c, fmt::format("{}[{}]", name, i), fmt::format("is {}, outside the vocabulary [0, {})", x, vocab),
                 "tokenize the data with this model's tokenizer");
    out.push_back(static_cast<int32_t>(x));
  }
  return out;
}

// pretokenized: input_ids and optional labels in Hugging Face convention (aligned with input_ids,
// -100 = masked, the model shifts); converted here to graft's shifted labels.
void load_pretokenized(const Ctx& c, std::vector<Sample>& out, DataStats& st) {
  const ojson& r = c.rec->value;
  Sample s;
  s.ids = int_array(c, require(c, r, "input_ids", "input_ids"), "input_ids", false);
  if (s.ids.empty()) fail_field(c, "input_ids", "is empty", "remove the record");
  std::vector<uint8_t> target(s.ids.size(), 1);
  if (auto it = r.find("labels"); it != r.end() && !it->is_null()) {
    auto hf = int_array(c, *it, "labels", true);
    if (hf.size() != s.ids.size())
      fail_field(c, "labels", fmt::format("has {} entries but input_ids has {}", hf.size(), s.ids.size()),
                 "give labels the same length as input_ids");
    for (size_t i = 0; i < hf.size(); ++i) {
      if (hf[i] != kIgnoreIndex && hf[i] != s.ids[i])
        fail_field(c, fmt::format("labels[{}]", i), "differs from input_ids and is not -100",
                   "labels must equal input_ids (trained) or be -100 (masked), unshifted");
      target[i] = hf[i] != kIgnoreIndex;
    }
  }
  if (c.opt.train_on_inputs) std::fill(target.begin(), target.end(), 1);
  s.labels = data_detail::shift_labels(s.ids, target);
  emit(c, out, std::move(s), st);
}

}  // namespace

std::string effective_template_source(const DatasetSpec& spec, const tokenizer::Tokenizer& tok,
                                      const chat_template::ChatTemplate* tpl, const DataOptions& options) {
  if (spec.type == "completion" || spec.type == "pretokenized") return {};
  std::string src = options.chat_template;
  if (src == "chatml") return kChatmlTemplate;
  if (!src.empty() && src != "tokenizer_default") return src;
  if (tpl) return tpl->source();
  if (needs_template(spec.type)) return tok.config().chat_template;
  return {};
}

std::vector<Sample> load_dataset(const DatasetSpec& spec, const tokenizer::Tokenizer& tok,
                                 const chat_template::ChatTemplate* tpl, const DataOptions& options,
                                 DataStats* stats) {
  const std::string& type = spec.type;
  GRAFT_CHECK_FIX(type == "alpaca" || type == "sharegpt" || type == "chat_template" || type == "completion" ||
                      type == "pretokenized",
                  fmt::format("use one of {}", known_types()), "dataset {}: unknown type `{}`", spec.path, type);
  GRAFT_CHECK_FIX(options.sequence_len >= 2, "set sequence_len to at least 2", "sequence_len is {}",
                  options.sequence_len);
  GRAFT_CHECK_FIX(options.truncation == "drop" || options.truncation == "truncate", "use drop or truncate",
                  "unknown truncation `{}`", options.truncation);
  GRAFT_CHECK_FIX(!spec.roles_to_train.empty() || options.train_on_inputs,
                  "list at least one role in roles_to_train (e.g. [assistant])", "roles_to_train is empty");
  TemplateRef t = resolve_template(spec, tok, tpl, options);
  auto records = data_detail::read_records(spec.path);
  DataStats st;
  st.records = static_cast<int64_t>(records.size());
  std::vector<Sample> out;
  out.reserve(records.size());
  for (const Record& r : records) {
    Ctx c{spec, tok, t.tpl, options, &r};
    try {
      if (type == "alpaca") load_alpaca(c, out, st);
      else if (type == "sharegpt") load_chat(c, true, out, st);
      else if (type == "chat_template") load_chat(c, false, out, st);
      else if (type == "completion") load_completion(c, out, st);
      else load_pretokenized(c, out, st);
    } catch (const Error& e) {
      if (e.message().rfind(spec.path, 0) == 0) throw;  // already located
      GRAFT_FAIL(e.fix(), "{}: {}", c.where(), e.message());
    } catch (const nlohmann::json::exception& e) {
      GRAFT_FAIL("check the record's field types", "{}: {}", c.where(), e.what());
    }
  }
  st.samples = static_cast<int64_t>(out.size());
  for (const auto& s : out) {
    st.tokens += static_cast<int64_t>(s.ids.size());
    st.trained_tokens += std::count_if(s.labels.begin(), s.labels.end(), [](int32_t l) { return l != kIgnoreIndex; });
  }
  if (st.dropped_too_long || st.dropped_no_loss || st.truncated)
    std::fprintf(stderr, "graft: dataset %s: %lld samples; dropped %lld longer than sequence_len %lld, %lld without "
                 "trained tokens; truncated %lld\n", spec.path.c_str(), static_cast<long long>(st.samples),
                 static_cast<long long>(st.dropped_too_long), static_cast<long long>(options.sequence_len),
                 static_cast<long long>(st.dropped_no_loss), static_cast<long long>(st.truncated));
  if (stats) *stats = st;
  return out;
}

}  // namespace graft::train
