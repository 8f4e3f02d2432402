// OpenAI-compatible response bodies, stream chunks, SSE framing and error objects (pure functions).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "graft/serve/api_error.hpp"
#include "graft/serve/engine.hpp"
#include "graft/tokenizer/tokenizer.hpp"

namespace graft::serve::http {

using ojson = nlohmann::ordered_json;

// {"error": {"message", "type", "param", "code"}} (param and code null when empty).
ojson error_json(int status, const std::string& type, const std::string& message, const std::string& param = {},
                 const std::string& code = {});
ojson error_json(const ApiError& e);

// JSON text that never throws on invalid UTF-8 (replaced by U+FFFD).
std::string dump(const ojson& j);
// One server-sent event: "data: <json>\n\n"; and the terminator "data: [DONE]\n\n".
std::string sse_event(const ojson& j);
inline const char* sse_done() { return "data: [DONE]\n\n"; }

struct Usage {
  int64_t prompt_tokens = 0, completion_tokens = 0;
};
ojson usage_json(const Usage& u);

// A fresh id: prefix + 24 hex digits ("cmpl-", "chatcmpl-").
std::string make_id(const std::string& prefix);

// Text of one token as shown in logprobs (decoded alone, special tokens kept; a partial UTF-8
// character shows as U+FFFD), or "token_id:N" with as_ids (vLLM's return_tokens_as_token_ids).
std::string token_text(const tokenizer::Tokenizer& tok, int32_t id, bool as_ids = false);
// Logprobs are clamped to this floor so that JSON never sees -inf (vLLM does the same).
float clamp_logprob(float lp);
// Number of Unicode code points (text_offset is counted in characters, like Python's len()).
size_t utf8_length(const std::string& s);

// Legacy /v1/completions logprobs {tokens, token_logprobs, top_logprobs, text_offset} for `tokens`.
// `offset` is the text offset of the first token and is advanced past the last one. With
// first_is_prompt_start the first entry has null token_logprob and null top_logprobs (the first
// prompt token has no logprob). top_logprobs maps token text -> logprob for the top-N alternatives
// plus the chosen token.
ojson legacy_logprobs(const tokenizer::Tokenizer& tok, const std::vector<TokenOut>& tokens, size_t& offset,
                      bool first_is_prompt_start, bool as_ids = false);
// Appends b's entries to a (both legacy logprobs objects).
void append_legacy_logprobs(ojson& a, const ojson& b);

// Chat logprobs {"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]}.
ojson chat_logprobs(const tokenizer::Tokenizer& tok, const std::vector<TokenOut>& tokens, bool as_ids = false);

// A finished choice of a non-streamed response.
struct ChoiceOutput {
  int index = 0;
  std::string text;           // for completions with echo: prompt text + generated text
  std::string finish_reason;  // "stop", "length", "abort"
  ojson logprobs;             // null, legacy object (completions) or {"content": [...]} (chat)
};

ojson completion_response(const std::string& id, int64_t created, const std::string& model,
                          const std::vector<ChoiceOutput>& choices, const Usage& usage);
ojson chat_response(const std::string& id, int64_t created, const std::string& model,
                    const std::vector<ChoiceOutput>& choices, const Usage& usage);

// Stream chunks. finish_reason "" = null; logprobs null when absent.
ojson completion_chunk(const std::string& id, int64_t created, const std::string& model, int index,
                       const std::string& text, const std::string& finish_reason, const ojson& logprobs);
ojson chat_chunk(const std::string& id, int64_t created, const std::string& model, int index, const ojson& delta,
                 const std::string& finish_reason, const ojson& logprobs);
// The include_usage chunk: choices [] and usage.
ojson usage_chunk(const std::string& id, const std::string& object, int64_t created, const std::string& model,
                  const Usage& usage);

}  // namespace graft::serve::http
