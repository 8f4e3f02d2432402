// OpenAI-compatible response bodies and stream chunks. See openai_format.hpp.
#include "openai_format.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <random>

namespace graft::serve::http {

ojson error_json(int status, const std::string& type, const std::string& message, const std::string& param,
                 const std::string& code) {
  (void)status;
  ojson e = ojson::object();
  e["message"] = message;
  e["type"] = type;
  e["param"] = param.empty() ? ojson(nullptr) : ojson(param);
  e["code"] = code.empty() ? ojson(nullptr) : ojson(code);
  return ojson{{"error", e}};
}

ojson error_json(const ApiError& e) { return error_json(e.status, e.type, e.message(), e.param, e.code); }

std::string dump(const ojson& j) { return j.dump(-1, ' ', false, ojson::error_handler_t::replace); }

std::string sse_event(const ojson& j) { return "data: " + dump(j) + "\n\n"; }

ojson usage_json(const Usage& u) {
  return ojson{{"prompt_tokens", u.prompt_tokens},
               {"completion_tokens", u.completion_tokens},
               {"total_tokens", u.prompt_tokens + u.completion_tokens}};
}

std::string make_id(const std::string& prefix) {
  thread_local std::mt19937_64 rng{std::random_device{}() ^ (uint64_t(std::random_device{}()) << 32)};
  return prefix + fmt::format("{:016x}{:08x}", rng(), static_cast<uint32_t>(rng()));
}

std::string token_text(const tokenizer::Tokenizer& tok, int32_t id, bool as_ids) {
  return as_ids ? "token_id:" + std::to_string(id) : tok.decode({id}, false);
}

float clamp_logprob(float lp) {
  if (std::isnan(lp)) return -9999.0f;
  return std::max(lp, -9999.0f);
}

size_t utf8_length(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

ojson legacy_logprobs(const tokenizer::Tokenizer& tok, const std::vector<TokenOut>& tokens, size_t& offset,
                      bool first_is_prompt_start, bool as_ids) {
  ojson texts = ojson::array(), lps = ojson::array(), tops = ojson::array(), offs = ojson::array();
  for (size_t i = 0; i < tokens.size(); ++i) {
    const TokenOut& t = tokens[i];
    const std::string s = token_text(tok, t.id, as_ids);
    texts.push_back(s);
    offs.push_back(offset);
    offset += utf8_length(s);
    if (i == 0 && first_is_prompt_start) {
      lps.push_back(nullptr);
      tops.push_back(nullptr);
      continue;
    }
    lps.push_back(clamp_logprob(t.logprob));
    ojson top = ojson::object();
    for (const auto& [id, lp] : t.top) {
      const std::string k = token_text(tok, id, as_ids);
      if (!top.contains(k)) top[k] = clamp_logprob(lp);
    }
    if (!top.contains(s)) top[s] = clamp_logprob(t.logprob);
    tops.push_back(std::move(top));
  }
  return ojson{{"tokens", texts}, {"token_logprobs", lps}, {"top_logprobs", tops}, {"text_offset", offs}};
}

void append_legacy_logprobs(ojson& a, const ojson& b) {
  if (a.is_null()) {
    a = b;
    return;
  }
  for (const char* k : {"tokens", "token_logprobs", "top_logprobs", "text_offset"})
    for (const auto& e : b[k]) a[k].push_back(e);
}

namespace {
ojson bytes_of(const std::string& s) {
  ojson b = ojson::array();
  for (unsigned char c : s) b.push_back(static_cast<int>(c));
  return b;
}
}  // namespace

ojson chat_logprobs(const tokenizer::Tokenizer& tok, const std::vector<TokenOut>& tokens, bool as_ids) {
  ojson content = ojson::array();
  for (const TokenOut& t : tokens) {
    const std::string s = token_text(tok, t.id, as_ids);
    ojson top = ojson::array();
    for (const auto& [id, lp] : t.top) {
      const std::string k = token_text(tok, id, as_ids);
      top.push_back(ojson{{"token", k}, {"logprob", clamp_logprob(lp)}, {"bytes", bytes_of(k)}});
    }
    content.push_back(ojson{{"token", s}, {"logprob", clamp_logprob(t.logprob)}, {"bytes", bytes_of(s)}, {"top_logprobs", top}});
  }
  return ojson{{"content", content}};
}

namespace {
ojson finish_value(const std::string& r) { return r.empty() ? ojson(nullptr) : ojson(r); }
}  // namespace

ojson completion_response(const std::string& id, int64_t created, const std::string& model,
                          const std::vector<ChoiceOutput>& choices, const Usage& usage) {
  ojson cs = ojson::array();
  for (const auto& c : choices)
    cs.push_back(ojson{{"index", c.index}, {"text", c.text}, {"logprobs", c.logprobs},
                       {"finish_reason", finish_value(c.finish_reason)}});
  return ojson{{"id", id}, {"object", "text_completion"}, {"created", created}, {"model", model},
               {"choices", cs}, {"usage", usage_json(usage)}};
}

ojson chat_response(const std::string& id, int64_t created, const std::string& model,
                    const std::vector<ChoiceOutput>& choices, const Usage& usage) {
  ojson cs = ojson::array();
  for (const auto& c : choices)
    cs.push_back(ojson{{"index", c.index},
                       {"message", ojson{{"role", "assistant"}, {"content", c.text}}},
                       {"logprobs", c.logprobs},
                       {"finish_reason", finish_value(c.finish_reason)}});
  return ojson{{"id", id}, {"object", "chat.completion"}, {"created", created}, {"model", model},
               {"choices", cs}, {"usage", usage_json(usage)}};
}

ojson completion_chunk(const std::string& id, int64_t created, const std::string& model, int index,
                       const std::string& text, const std::string& finish_reason, const ojson& logprobs) {
  ojson c{{"index", index}, {"text", text}, {"logprobs", logprobs}, {"finish_reason", finish_value(finish_reason)}};
  return ojson{{"id", id}, {"object", "text_completion"}, {"created", created}, {"model", model},
               {"choices", ojson::array({c})}};
}

ojson chat_chunk(const std::string& id, int64_t created, const std::string& model, int index, const ojson& delta,
                 const std::string& finish_reason, const ojson& logprobs) {
  ojson c{{"index", index}, {"delta", delta}, {"logprobs", logprobs}, {"finish_reason", finish_value(finish_reason)}};
  return ojson{{"id", id}, {"object", "chat.completion.chunk"}, {"created", created}, {"model", model},
               {"choices", ojson::array({c})}};
}

ojson usage_chunk(const std::string& id, const std::string& object, int64_t created, const std::string& model,
                  const Usage& usage) {
  return ojson{{"id", id}, {"object", object}, {"created", created}, {"model", model},
               {"choices", ojson::array()}, {"usage", usage_json(usage)}};
}

}  // namespace graft::serve::http
