// OpenAI-compatible request parsing and validation (pure functions: no engine, no sockets).
//
// parse_json_body() turns the raw body into JSON (400 on malformed JSON, a non-object, or nesting
// deeper than kMaxJsonDepth). parse_completion_request() / parse_chat_request() check every field's
// type and range and throw ApiError 400 naming the field (`param`). Unknown fields are ignored, like
// OpenAI's and vLLM's servers do; fields that would change semantics and are not implemented
// (suffix, logit_bias, best_of > n, tools, non-text content parts, json response formats) are
// rejected with 400 rather than silently ignored.
//
// tokenize_prompts() turns the parsed prompts (or the chat messages, rendered with the base's chat
// template) into token ids and checks them against the model: ids inside the vocabulary, a non-empty
// prompt, and prompt + max_tokens <= max_model_len (400 context_length_exceeded).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "graft/chat_template/chat_template.hpp"
#include "graft/serve/api_error.hpp"
#include "graft/serve/engine.hpp"
#include "graft/tokenizer/tokenizer.hpp"

namespace graft::serve::http {

using ojson = nlohmann::ordered_json;

inline constexpr int kMaxJsonDepth = 64;
inline constexpr int kMaxLogprobs = 20;
inline constexpr int kMaxN = 16;
inline constexpr int kMaxStopStrings = 4;
inline constexpr size_t kMaxStopStringBytes = 256;
inline constexpr size_t kMaxPrompts = 1024;

enum class Endpoint { kCompletions, kChat };

struct PromptInput {
  bool is_text = true;
  std::string text;            // is_text
  std::vector<int32_t> ids;    // !is_text (token-id prompt)
};

struct ParsedRequest {
  Endpoint endpoint = Endpoint::kCompletions;
  std::string model;                 // as sent ("" when absent: the base)
  std::vector<PromptInput> prompts;  // completions
  ojson messages;                    // chat: normalized messages (content is a string or null)
  bool add_generation_prompt = true; // chat
  bool continue_final_message = false;
  ojson chat_template_kwargs = ojson::object();
  bool stream = false, include_usage = false;
  int n = 1;
  std::optional<int> max_tokens;     // none: completions 16, chat max_model_len - prompt
  RequestSampling sampling;
  std::vector<std::string> stop;
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false, echo = false, skip_special_tokens = true, include_stop_str_in_output = false;
  bool tokens_as_ids = false;        // return_tokens_as_token_ids: logprob tokens as "token_id:N"
  int logprobs = -1;                 // -1: none; N: chosen token + top N (chat: top_logprobs)
};

// Raw body -> JSON object. ApiError 400 (malformed JSON, not an object, nested too deeply).
ojson parse_json_body(std::string_view body);

ParsedRequest parse_completion_request(const ojson& body);
ParsedRequest parse_chat_request(const ojson& body);

struct ModelLimits {
  int64_t vocab_size = 0;     // ids must be < this (0: unchecked)
  int64_t max_model_len = 0;  // prompt + max_tokens must fit (0: unchecked)
};

struct TokenizedPrompt {
  std::vector<int32_t> ids;
  std::string text;  // the prompt as text (echo): the string sent, the rendered chat, or decode(ids)
};

// Tokenizes and checks the prompts; also resolves the default max_tokens (stored into req).
// String prompts are encoded with the tokenizer's special tokens (as vLLM and transformers do);
// a rendered chat is encoded without (the template already has them).
std::vector<TokenizedPrompt> tokenize_prompts(ParsedRequest& req, const tokenizer::Tokenizer& tok,
                                              const chat_template::ChatTemplate* chat, const ModelLimits& limits);

// The GenRequest for one choice (seed + choice index when a seed is given, so that n > 1 choices
// differ but stay reproducible).
GenRequest make_gen_request(const ParsedRequest& req, const TokenizedPrompt& p, const std::string& adapter,
                            const std::vector<int32_t>& eos_ids, int choice_index);

// Field getters shared by the other endpoints (load/unload adapter): 400 naming the field.
std::string get_string(const ojson& body, const char* key, bool required);

}  // namespace graft::serve::http
