// OpenAI-compatible request parsing and validation. See openai_protocol.hpp.
#include "openai_protocol.hpp"

#include <fmt/format.h>

#include <cmath>
#include <limits>
#include <utility>

namespace graft::serve::http {
namespace {

const char* type_name(const ojson& v) {
  switch (v.type()) {
    case ojson::value_t::null: return "null";
    case ojson::value_t::boolean: return "a boolean";
    case ojson::value_t::string: return "a string";
    case ojson::value_t::array: return "an array";
    case ojson::value_t::object: return "an object";
    case ojson::value_t::number_integer:
    case ojson::value_t::number_unsigned:
    case ojson::value_t::number_float: return "a number";
    default: return "an unsupported value";
  }
}

[[noreturn]] void bad_type(const std::string& field, const char* expected, const ojson& got) {
  throw bad_request(fmt::format("'{}' must be {}, got {}", field, expected, type_name(got)), field, "invalid_type");
}
[[noreturn]] void bad_value(const std::string& field, const std::string& why) {
  throw bad_request(fmt::format("'{}' {}", field, why), field, "invalid_value");
}

// The field, or nullptr when absent or null (OpenAI clients send null for "not set").
const ojson* field(const ojson& body, const char* key) {
  auto it = body.find(key);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

// An integer-valued JSON number (5 or 5.0) that fits int64.
std::optional<int64_t> as_int(const ojson& v) {
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
    return static_cast<int64_t>(u);
  }
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_number_float()) {
    const double d = v.get<double>();
    if (std::isfinite(d) && d == std::floor(d) && d >= -9.2e18 && d <= 9.2e18) return static_cast<int64_t>(d);
  }
  return std::nullopt;
}

bool get_bool(const ojson& body, const char* key, bool def) {
  const ojson* v = field(body, key);
  if (!v) return def;
  if (!v->is_boolean()) bad_type(key, "a boolean", *v);
  return v->get<bool>();
}

std::optional<int64_t> get_int(const ojson& body, const char* key, int64_t lo, int64_t hi) {
  const ojson* v = field(body, key);
  if (!v) return std::nullopt;
  if (!v->is_number()) bad_type(key, "an integer", *v);
  auto i = as_int(*v);
  if (!i) {
    const double d = v->get<double>();
    if (std::isfinite(d) && d == std::floor(d))  // an integer, just far out of range
      bad_value(key, fmt::format("must be between {} and {}, got {}", lo, hi, d));
    bad_type(key, "an integer", *v);
  }
  if (*i < lo || *i > hi) bad_value(key, fmt::format("must be between {} and {}, got {}", lo, hi, *i));
  return i;
}

std::optional<double> get_number(const ojson& body, const char* key) {
  const ojson* v = field(body, key);
  if (!v) return std::nullopt;
  if (!v->is_number()) bad_type(key, "a number", *v);
  const double d = v->get<double>();
  if (!std::isfinite(d)) bad_value(key, "must be a finite number");
  return d;
}

void check_range(const char* key, double v, double lo, double hi, bool lo_open = false) {
  if (v < lo || v > hi || (lo_open && v == lo))
    bad_value(key, fmt::format("must be in {}{}, {}], got {}", lo_open ? "(" : "[", lo, hi, v));
}

int32_t token_id(const ojson& v, const std::string& key) {
  auto i = as_int(v);
  if (!v.is_number() || !i) bad_type(key, "an array of token ids (integers)", v);
  if (*i < 0 || *i > std::numeric_limits<int32_t>::max()) bad_value(key, fmt::format("has an invalid token id {}", *i));
  return static_cast<int32_t>(*i);
}

void parse_common(const ojson& body, ParsedRequest& r) {
  if (const ojson* m = field(body, "model")) {
    if (!m->is_string()) bad_type("model", "a string", *m);
    r.model = m->get<std::string>();
  }
  r.stream = get_bool(body, "stream", false);
  if (const ojson* so = field(body, "stream_options")) {
    if (!so->is_object()) bad_type("stream_options", "an object", *so);
    r.include_usage = get_bool(*so, "include_usage", false);
  }
  r.n = static_cast<int>(get_int(body, "n", 1, kMaxN).value_or(1));

  RequestSampling& s = r.sampling;
  if (auto t = get_number(body, "temperature")) {
    if (*t < 0) bad_value("temperature", fmt::format("must be >= 0, got {}", *t));
    s.temperature = static_cast<float>(*t);
  }
  if (auto p = get_number(body, "top_p")) {
    check_range("top_p", *p, 0, 1, /*lo_open=*/true);
    s.top_p = static_cast<float>(*p);
  }
  if (auto k = get_int(body, "top_k", -1, std::numeric_limits<int32_t>::max())) s.top_k = *k < 0 ? 0 : static_cast<int>(*k);
  if (auto p = get_number(body, "min_p")) {
    check_range("min_p", *p, 0, 1);
    s.min_p = static_cast<float>(*p);
  }
  if (auto p = get_number(body, "presence_penalty")) {
    check_range("presence_penalty", *p, -2, 2);
    s.presence_penalty = static_cast<float>(*p);
  }
  if (auto p = get_number(body, "frequency_penalty")) {
    check_range("frequency_penalty", *p, -2, 2);
    s.frequency_penalty = static_cast<float>(*p);
  }
  if (auto p = get_number(body, "repetition_penalty")) {
    if (*p <= 0 || *p > 100) bad_value("repetition_penalty", fmt::format("must be in (0, 100], got {}", *p));
    s.repetition_penalty = static_cast<float>(*p);
  }
  if (const ojson* v = field(body, "seed")) {
    if (v->is_number_unsigned()) {
      s.seed = v->get<uint64_t>();
    } else {
      auto i = as_int(*v);
      if (!v->is_number() || !i) bad_type("seed", "an integer", *v);
      s.seed = static_cast<uint64_t>(*i);
    }
  }

  if (const ojson* v = field(body, "stop")) {
    if (v->is_string()) {
      r.stop.push_back(v->get<std::string>());
    } else if (v->is_array()) {
      for (const auto& e : *v) {
        if (!e.is_string()) bad_type("stop", "a string or an array of strings", *v);
        r.stop.push_back(e.get<std::string>());
      }
    } else {
      bad_type("stop", "a string or an array of strings", *v);
    }
    if (r.stop.size() > static_cast<size_t>(kMaxStopStrings))
      bad_value("stop", fmt::format("may hold at most {} strings, got {}", kMaxStopStrings, r.stop.size()));
    for (const auto& st : r.stop) {
      if (st.empty()) bad_value("stop", "must not contain an empty string");
      if (st.size() > kMaxStopStringBytes) bad_value("stop", fmt::format("strings must be at most {} bytes", kMaxStopStringBytes));
      if (!tokenizer::utf8_valid(st)) bad_value("stop", "must be valid UTF-8");
    }
  }
  if (const ojson* v = field(body, "stop_token_ids")) {
    if (!v->is_array()) bad_type("stop_token_ids", "an array of token ids (integers)", *v);
    if (v->size() > 1024) bad_value("stop_token_ids", "may hold at most 1024 ids");
    for (const auto& e : *v) r.stop_token_ids.push_back(token_id(e, "stop_token_ids"));
  }
  r.ignore_eos = get_bool(body, "ignore_eos", false);
  r.skip_special_tokens = get_bool(body, "skip_special_tokens", true);
  r.include_stop_str_in_output = get_bool(body, "include_stop_str_in_output", false);
  r.tokens_as_ids = get_bool(body, "return_tokens_as_token_ids", false);

  if (const ojson* v = field(body, "logit_bias")) {
    if (!v->is_object()) bad_type("logit_bias", "an object", *v);
    if (!v->empty()) throw bad_request("'logit_bias' is not supported", "logit_bias", "unsupported_parameter");
  }
  if (const ojson* v = field(body, "response_format")) {
    if (!v->is_object()) bad_type("response_format", "an object", *v);
    const ojson* t = field(*v, "type");
    if (!t || !t->is_string() || t->get<std::string>() != "text")
      throw bad_request("only response_format {\"type\": \"text\"} is supported", "response_format", "unsupported_parameter");
  }
}

// A chat message's content: a string, null, or text parts joined with "\n" (like vLLM).
ojson normalize_content(const ojson& c, size_t index) {
  const std::string key = fmt::format("messages[{}].content", index);
  if (c.is_null() || c.is_string()) return c;
  if (!c.is_array()) bad_type(key, "a string, null or an array of content parts", c);
  std::string text;
  bool first = true;
  for (const auto& part : c) {
    if (!part.is_object()) bad_type(key, "an array of content parts (objects)", part);
    const ojson* type = field(part, "type");
    if (!type || !type->is_string()) throw bad_request(fmt::format("'{}' parts need a string 'type'", key), key, "invalid_type");
    if (type->get<std::string>() != "text")
      throw bad_request(fmt::format("'{}': content parts of type '{}' are not supported (text only)", key,
                                    type->get<std::string>()),
                        key, "unsupported_parameter");
    const ojson* t = field(part, "text");
    if (!t || !t->is_string()) throw bad_request(fmt::format("'{}' text parts need a string 'text'", key), key, "invalid_type");
    if (!first) text += "\n";
    text += t->get<std::string>();
    first = false;
  }
  return text;
}

}  // namespace

ojson parse_json_body(std::string_view body) {
  ojson j = ojson::parse(body.begin(), body.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded())
    throw ApiError(400, "invalid_request_error", "the request body is not valid JSON", "", "invalid_json");
  if (!j.is_object())
    throw bad_request(fmt::format("the request body must be a JSON object, got {}", type_name(j)), "", "invalid_json");
  // Depth check (iterative): templates and formatters recurse over values.
  std::vector<std::pair<const ojson*, int>> stack{{&j, 1}};
  while (!stack.empty()) {
    auto [v, d] = stack.back();
    stack.pop_back();
    if (d > kMaxJsonDepth)
      throw bad_request(fmt::format("the request body is nested deeper than {} levels", kMaxJsonDepth), "", "invalid_json");
    if (v->is_structured())
      for (const auto& e : *v) stack.emplace_back(&e, d + 1);
  }
  return j;
}

std::string get_string(const ojson& body, const char* key, bool required) {
  const ojson* v = field(body, key);
  if (!v) {
    if (required) throw bad_request(fmt::format("'{}' is required", key), key, "missing_required_parameter");
    return {};
  }
  if (!v->is_string()) bad_type(key, "a string", *v);
  return v->get<std::string>();
}

ParsedRequest parse_completion_request(const ojson& body) {
  ParsedRequest r;
  r.endpoint = Endpoint::kCompletions;
  parse_common(body, r);
  if (auto m = get_int(body, "max_tokens", 0, std::numeric_limits<int32_t>::max())) r.max_tokens = static_cast<int>(*m);
  r.echo = get_bool(body, "echo", false);
  if (auto lp = get_int(body, "logprobs", 0, kMaxLogprobs)) r.logprobs = static_cast<int>(*lp);
  if (auto b = get_int(body, "best_of", 1, kMaxN); b && *b != r.n)
    throw bad_request("'best_of' other than n is not supported", "best_of", "unsupported_parameter");
  if (const ojson* s = field(body, "suffix")) {
    if (!s->is_string()) bad_type("suffix", "a string", *s);
    if (!s->get<std::string>().empty()) throw bad_request("'suffix' is not supported", "suffix", "unsupported_parameter");
  }

  const ojson* p = field(body, "prompt");
  if (!p) throw bad_request("'prompt' is required", "prompt", "missing_required_parameter");
  const char* kinds = "a string, an array of strings, an array of token ids or an array of token-id arrays";
  if (p->is_string()) {
    r.prompts.push_back({true, p->get<std::string>(), {}});
  } else if (p->is_array()) {
    if (p->empty()) bad_value("prompt", "must not be empty");
    if (p->size() > kMaxPrompts) bad_value("prompt", fmt::format("may hold at most {} prompts", kMaxPrompts));
    const ojson& first = p->front();
    if (first.is_string()) {
      for (const auto& e : *p) {
        if (!e.is_string()) bad_type("prompt", kinds, *p);
        r.prompts.push_back({true, e.get<std::string>(), {}});
      }
    } else if (first.is_number()) {
      PromptInput in{false, {}, {}};
      for (const auto& e : *p) in.ids.push_back(token_id(e, "prompt"));
      r.prompts.push_back(std::move(in));
    } else if (first.is_array()) {
      for (const auto& e : *p) {
        if (!e.is_array()) bad_type("prompt", kinds, *p);
        PromptInput in{false, {}, {}};
        for (const auto& id : e) in.ids.push_back(token_id(id, "prompt"));
        r.prompts.push_back(std::move(in));
      }
    } else {
      bad_type("prompt", kinds, *p);
    }
  } else {
    bad_type("prompt", kinds, *p);
  }
  return r;
}

ParsedRequest parse_chat_request(const ojson& body) {
  ParsedRequest r;
  r.endpoint = Endpoint::kChat;
  parse_common(body, r);
  // max_completion_tokens is the newer name; max_tokens the deprecated one (both accepted).
  auto mt = get_int(body, "max_completion_tokens", 1, std::numeric_limits<int32_t>::max());
  if (!mt) mt = get_int(body, "max_tokens", 1, std::numeric_limits<int32_t>::max());
  if (mt) r.max_tokens = static_cast<int>(*mt);
  const bool lp = get_bool(body, "logprobs", false);
  auto top = get_int(body, "top_logprobs", 0, kMaxLogprobs);
  if (top && !lp) throw bad_request("'top_logprobs' requires 'logprobs': true", "top_logprobs", "invalid_value");
  if (lp) r.logprobs = static_cast<int>(top.value_or(0));
  r.add_generation_prompt = get_bool(body, "add_generation_prompt", true);
  if (const ojson* k = field(body, "chat_template_kwargs")) {
    if (!k->is_object()) bad_type("chat_template_kwargs", "an object", *k);
    r.chat_template_kwargs = *k;
  }
  if (const ojson* t = field(body, "tools")) {
    if (!t->is_array()) bad_type("tools", "an array", *t);
    if (!t->empty()) throw bad_request("'tools' (function calling) is not supported", "tools", "unsupported_parameter");
  }

  const ojson* m = field(body, "messages");
  if (!m) throw bad_request("'messages' is required", "messages", "missing_required_parameter");
  if (!m->is_array()) bad_type("messages", "an array of message objects", *m);
  if (m->empty()) bad_value("messages", "must not be empty");
  if (m->size() > 4096) bad_value("messages", "may hold at most 4096 messages");
  r.messages = ojson::array();
  static const char* kRoles[] = {"system", "developer", "user", "assistant", "tool", "function"};
  for (size_t i = 0; i < m->size(); ++i) {
    const ojson& msg = (*m)[i];
    const std::string key = fmt::format("messages[{}]", i);
    if (!msg.is_object()) bad_type(key, "an object", msg);
    const ojson* role = field(msg, "role");
    if (!role || !role->is_string())
      throw bad_request(fmt::format("'{}.role' must be a string", key), key + ".role", "invalid_type");
    const std::string rs = role->get<std::string>();
    bool known = false;
    for (const char* k : kRoles) known = known || rs == k;
    if (!known) throw bad_request(fmt::format("'{}.role' has an unknown role '{}'", key, rs), key + ".role", "invalid_value");
    ojson out = ojson::object();
    out["role"] = rs;
    auto c = msg.find("content");
    out["content"] = c == msg.end() ? ojson(nullptr) : normalize_content(*c, i);
    for (const char* extra : {"name", "tool_call_id"}) {
      if (const ojson* v = field(msg, extra)) {
        if (!v->is_string()) bad_type(key + "." + extra, "a string", *v);
        out[extra] = *v;
      }
    }
    if (const ojson* tc = field(msg, "tool_calls")) out["tool_calls"] = *tc;
    r.messages.push_back(std::move(out));
  }
  return r;
}

std::vector<TokenizedPrompt> tokenize_prompts(ParsedRequest& req, const tokenizer::Tokenizer& tok,
                                              const chat_template::ChatTemplate* chat, const ModelLimits& limits) {
  std::vector<TokenizedPrompt> out;
  const char* prompt_param = req.endpoint == Endpoint::kChat ? "messages" : "prompt";
  if (req.endpoint == Endpoint::kChat) {
    if (!chat)
      throw bad_request("the model has no chat template (tokenizer_config.json chat_template); use /v1/completions",
                        "messages", "no_chat_template");
    chat_template::RenderOptions ro;
    ro.add_generation_prompt = req.add_generation_prompt;
    ro.extra = req.chat_template_kwargs;
    std::string text;
    try {
      text = chat->render(req.messages, ro).text;
    } catch (const Error& e) {
      throw bad_request(fmt::format("the chat template rejected the messages: {}", e.message()), "messages",
                        "chat_template_error");
    }
    auto ids = tok.encode(text, /*add_special_tokens=*/false);
    out.push_back({std::move(ids), std::move(text)});
  } else {
    for (const auto& p : req.prompts) {
      if (p.is_text) {
        out.push_back({tok.encode(p.text, /*add_special_tokens=*/true), p.text});
      } else {
        out.push_back({p.ids, tok.decode(p.ids, /*skip_special_tokens=*/false)});
      }
    }
  }
  for (const auto& p : out) {
    if (p.ids.empty()) bad_value(prompt_param, "encodes to no tokens");
    if (limits.vocab_size > 0)
      for (int32_t id : p.ids)
        if (id >= limits.vocab_size)
          bad_value(prompt_param, fmt::format("has token id {} outside the vocabulary of {}", id, limits.vocab_size));
  }
  if (limits.vocab_size > 0)
    for (int32_t id : req.stop_token_ids)
      if (id >= limits.vocab_size)
        bad_value("stop_token_ids", fmt::format("has token id {} outside the vocabulary of {}", id, limits.vocab_size));

  const int64_t L = limits.max_model_len;
  for (const auto& p : out) {
    const int64_t n = static_cast<int64_t>(p.ids.size());
    if (L > 0 && n >= L)
      throw bad_request(fmt::format("This model's maximum context length is {} tokens, but the prompt has {} tokens. "
                                    "Please reduce the length of the {}.",
                                    L, n, req.endpoint == Endpoint::kChat ? "messages" : "prompt"),
                        prompt_param, "context_length_exceeded");
  }
  if (!req.max_tokens) {
    if (req.endpoint == Endpoint::kChat)
      req.max_tokens = L > 0 ? static_cast<int>(L - static_cast<int64_t>(out.front().ids.size())) : 256;
    else
      req.max_tokens = 16;
  }
  for (const auto& p : out) {
    const int64_t n = static_cast<int64_t>(p.ids.size());
    if (L > 0 && n + *req.max_tokens > L)
      throw bad_request(fmt::format("This model's maximum context length is {} tokens. However, you requested {} tokens "
                                    "({} in the {}, {} for the completion). Please reduce the length of the {} or the "
                                    "completion.",
                                    L, n + *req.max_tokens, n, req.endpoint == Endpoint::kChat ? "messages" : "prompt",
                                    *req.max_tokens, req.endpoint == Endpoint::kChat ? "messages" : "prompt"),
                        "max_tokens", "context_length_exceeded");
  }
  return out;
}

GenRequest make_gen_request(const ParsedRequest& req, const TokenizedPrompt& p, const std::string& adapter,
                            const std::vector<int32_t>& eos_ids, int choice_index) {
  GenRequest g;
  g.prompt = p.ids;
  g.model = adapter;
  g.sampling = req.sampling;
  if (g.sampling.seed) *g.sampling.seed += static_cast<uint64_t>(choice_index);
  g.max_tokens = req.max_tokens.value_or(16);
  g.stop_ids = req.stop_token_ids;
  if (!req.ignore_eos) g.stop_ids.insert(g.stop_ids.end(), eos_ids.begin(), eos_ids.end());
  g.logprobs = req.logprobs;
  g.prompt_logprobs = req.endpoint == Endpoint::kCompletions && req.echo && req.logprobs >= 0;
  return g;
}

}  // namespace graft::serve::http
