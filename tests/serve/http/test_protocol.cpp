// Request parsing and validation of the OpenAI-compatible API (pure functions, no model).
#include <gtest/gtest.h>

#include "graft/model/presets.hpp"
#include "openai_protocol.hpp"
#include "tiny_tokenizer.hpp"

using namespace graft;
using namespace graft::serve;
using namespace graft::serve::http;

namespace {

using graft::testing::tiny_chat;
using graft::testing::tiny_tok;

// The ApiError a call throws (status 0 when it does not throw).
template <class F>
ApiError error_of(F&& f) {
  try {
    f();
  } catch (const ApiError& e) {
    return e;
  }
  return ApiError(0, "", "");
}

ParsedRequest completion(const std::string& body) { return parse_completion_request(parse_json_body(body)); }
ParsedRequest chat(const std::string& body) { return parse_chat_request(parse_json_body(body)); }

}  // namespace

TEST(ServeProtocol, BodyMustBeAJsonObject) {
  EXPECT_EQ(error_of([] { parse_json_body("{\"model\": "); }).status, 400);
  EXPECT_EQ(error_of([] { parse_json_body("{\"model\": "); }).code, "invalid_json");
  EXPECT_EQ(error_of([] { parse_json_body(""); }).status, 400);
  EXPECT_EQ(error_of([] { parse_json_body("[1,2]"); }).status, 400);
  EXPECT_EQ(error_of([] { parse_json_body("\"x\""); }).status, 400);
  EXPECT_EQ(error_of([] { parse_json_body("{\"a\": \"\xff\xfe\"}"); }).status, 400);  // invalid UTF-8
  std::string deep = "{\"a\":" + std::string(200, '[') + std::string(200, ']') + "}";
  auto e = error_of([&] { parse_json_body(deep); });
  EXPECT_EQ(e.status, 400);
  EXPECT_NE(e.message().find("nested"), std::string::npos);
  EXPECT_NO_THROW(parse_json_body("{\"a\": [[[1]]]}"));
}

TEST(ServeProtocol, CompletionPromptForms) {
  auto r = completion(R"({"model":"m","prompt":"hi"})");
  ASSERT_EQ(r.prompts.size(), 1u);
  EXPECT_TRUE(r.prompts[0].is_text);
  EXPECT_EQ(r.prompts[0].text, "hi");
  EXPECT_EQ(r.model, "m");
  r = completion(R"({"prompt":["a","b","c"]})");
  EXPECT_EQ(r.prompts.size(), 3u);
  r = completion(R"({"prompt":[1,2,3]})");
  ASSERT_EQ(r.prompts.size(), 1u);
  EXPECT_FALSE(r.prompts[0].is_text);
  EXPECT_EQ(r.prompts[0].ids, (std::vector<int32_t>{1, 2, 3}));
  r = completion(R"({"prompt":[[1,2],[3]]})");
  ASSERT_EQ(r.prompts.size(), 2u);
  EXPECT_EQ(r.prompts[1].ids, (std::vector<int32_t>{3}));
  for (const char* bad : {R"({"prompt":5})", R"({"prompt":["a",1]})", R"({"prompt":[1,"a"]})", R"({"prompt":[[1],2]})",
                          R"({"prompt":[1.5]})", R"({"prompt":[-1]})", R"({"prompt":[]})", R"({"prompt":{}})",
                          R"({"prompt":[true]})", R"({"prompt":[99999999999]})", R"({})", R"({"prompt":null})"}) {
    auto e = error_of([&] { completion(bad); });
    EXPECT_EQ(e.status, 400) << bad;
    EXPECT_EQ(e.param, "prompt") << bad;
  }
}

TEST(ServeProtocol, WrongTypesNameTheField) {
  struct Case {
    const char* body;
    const char* param;
  } cases[] = {
      {R"({"prompt":"x","model":5})", "model"},
      {R"({"prompt":"x","max_tokens":"5"})", "max_tokens"},
      {R"({"prompt":"x","max_tokens":1.5})", "max_tokens"},
      {R"({"prompt":"x","max_tokens":-1})", "max_tokens"},
      {R"({"prompt":"x","max_tokens":1e30})", "max_tokens"},
      {R"({"prompt":"x","max_tokens":99999999999})", "max_tokens"},
      {R"({"prompt":"x","temperature":"hot"})", "temperature"},
      {R"({"prompt":"x","temperature":-0.5})", "temperature"},
      {R"({"prompt":"x","top_p":0})", "top_p"},
      {R"({"prompt":"x","top_p":1.5})", "top_p"},
      {R"({"prompt":"x","top_k":-2})", "top_k"},
      {R"({"prompt":"x","min_p":2})", "min_p"},
      {R"({"prompt":"x","presence_penalty":3})", "presence_penalty"},
      {R"({"prompt":"x","frequency_penalty":-3})", "frequency_penalty"},
      {R"({"prompt":"x","repetition_penalty":0})", "repetition_penalty"},
      {R"({"prompt":"x","seed":"1"})", "seed"},
      {R"({"prompt":"x","seed":1.5})", "seed"},
      {R"({"prompt":"x","n":0})", "n"},
      {R"({"prompt":"x","n":1000})", "n"},
      {R"({"prompt":"x","stream":"yes"})", "stream"},
      {R"({"prompt":"x","stream":1})", "stream"},
      {R"({"prompt":"x","echo":1})", "echo"},
      {R"({"prompt":"x","logprobs":true})", "logprobs"},
      {R"({"prompt":"x","logprobs":21})", "logprobs"},
      {R"({"prompt":"x","stop":5})", "stop"},
      {R"({"prompt":"x","stop":["a",5]})", "stop"},
      {R"({"prompt":"x","stop":["a","b","c","d","e"]})", "stop"},
      {R"({"prompt":"x","stop":[""]})", "stop"},
      {R"({"prompt":"x","stop_token_ids":[1,"a"]})", "stop_token_ids"},
      {R"({"prompt":"x","stream_options":5})", "stream_options"},
      {R"({"prompt":"x","stream_options":{"include_usage":"yes"}})", "include_usage"},
      {R"({"prompt":"x","logit_bias":{"1":5}})", "logit_bias"},
      {R"({"prompt":"x","suffix":"abc"})", "suffix"},
      {R"({"prompt":"x","best_of":3})", "best_of"},
      {R"({"prompt":"x","response_format":{"type":"json_object"}})", "response_format"},
  };
  for (const auto& c : cases) {
    auto e = error_of([&] { completion(c.body); });
    EXPECT_EQ(e.status, 400) << c.body;
    EXPECT_EQ(e.type, "invalid_request_error") << c.body;
    EXPECT_EQ(e.param, c.param) << c.body;
    EXPECT_NE(e.message().find(c.param), std::string::npos) << c.body << ": " << e.message();
  }
}

TEST(ServeProtocol, CompletionFieldsAreRead) {
  auto r = completion(R"({"prompt":"x","max_tokens":7,"temperature":0,"top_p":0.5,"top_k":-1,"min_p":0.1,
      "presence_penalty":0.5,"frequency_penalty":-0.5,"repetition_penalty":1.1,"seed":42,"n":2,"stop":"##",
      "stop_token_ids":[5],"echo":true,"logprobs":3,"stream":true,"stream_options":{"include_usage":true},
      "ignore_eos":true,"user":"u","logit_bias":{},"suffix":null,"best_of":2,"unknown_field":{"a":1}})");
  EXPECT_EQ(*r.max_tokens, 7);
  EXPECT_EQ(r.sampling.temperature, 0.0f);
  EXPECT_FLOAT_EQ(r.sampling.top_p, 0.5f);
  EXPECT_EQ(r.sampling.top_k, 0);
  EXPECT_FLOAT_EQ(r.sampling.min_p, 0.1f);
  EXPECT_FLOAT_EQ(r.sampling.presence_penalty, 0.5f);
  EXPECT_FLOAT_EQ(r.sampling.frequency_penalty, -0.5f);
  EXPECT_FLOAT_EQ(r.sampling.repetition_penalty, 1.1f);
  EXPECT_EQ(*r.sampling.seed, 42u);
  EXPECT_EQ(r.n, 2);
  EXPECT_EQ(r.stop, (std::vector<std::string>{"##"}));
  EXPECT_EQ(r.stop_token_ids, (std::vector<int32_t>{5}));
  EXPECT_TRUE(r.echo);
  EXPECT_EQ(r.logprobs, 3);
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
  EXPECT_TRUE(r.ignore_eos);
  // Integral floats are integers (pydantic's lax mode does the same); null means "not set".
  r = completion(R"({"prompt":"x","max_tokens":5.0,"temperature":null,"stop":null,"seed":-3})");
  EXPECT_EQ(*r.max_tokens, 5);
  EXPECT_EQ(r.sampling.temperature, 1.0f);
  EXPECT_EQ(*r.sampling.seed, static_cast<uint64_t>(-3));
}

TEST(ServeProtocol, ChatMessages) {
  auto r = chat(R"({"model":"m","messages":[{"role":"system","content":"be brief"},
      {"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]},
      {"role":"assistant","content":null,"name":"x"}],"max_completion_tokens":3,"logprobs":true,"top_logprobs":2})");
  ASSERT_EQ(r.messages.size(), 3u);
  EXPECT_EQ(r.messages[1]["content"], "a\nb");
  EXPECT_TRUE(r.messages[2]["content"].is_null());
  EXPECT_EQ(r.messages[2]["name"], "x");
  EXPECT_EQ(*r.max_tokens, 3);
  EXPECT_EQ(r.logprobs, 2);
  r = chat(R"({"messages":[{"role":"user","content":"x"}],"logprobs":true})");
  EXPECT_EQ(r.logprobs, 0);
  EXPECT_FALSE(r.max_tokens);
  struct Case {
    const char* body;
    const char* param;
  } cases[] = {
      {R"({})", "messages"},
      {R"({"messages":"hi"})", "messages"},
      {R"({"messages":[]})", "messages"},
      {R"({"messages":[5]})", "messages[0]"},
      {R"({"messages":[{"content":"x"}]})", "messages[0].role"},
      {R"({"messages":[{"role":"wizard","content":"x"}]})", "messages[0].role"},
      {R"({"messages":[{"role":"user","content":5}]})", "messages[0].content"},
      {R"({"messages":[{"role":"user","content":[{"type":"image_url","image_url":{}}]}]})", "messages[0].content"},
      {R"({"messages":[{"role":"user","content":[{"type":"text"}]}]})", "messages[0].content"},
      {R"({"messages":[{"role":"user","content":"x"}],"top_logprobs":2})", "top_logprobs"},
      {R"({"messages":[{"role":"user","content":"x"}],"max_tokens":0})", "max_tokens"},
      {R"({"messages":[{"role":"user","content":"x"}],"tools":[{"type":"function"}]})", "tools"},
      {R"({"messages":[{"role":"user","content":"x"}],"chat_template_kwargs":[1]})", "chat_template_kwargs"},
  };
  for (const auto& c : cases) {
    auto e = error_of([&] { chat(c.body); });
    EXPECT_EQ(e.status, 400) << c.body;
    EXPECT_EQ(e.param, c.param) << c.body << ": " << e.message();
  }
}

TEST(ServeProtocol, TokenizeChecksTheModelLimits) {
  const auto& tok = tiny_tok();
  auto r = completion(R"({"prompt":"hello"})");
  auto p = tokenize_prompts(r, tok, nullptr, {300, 64});
  ASSERT_EQ(p.size(), 1u);
  EXPECT_EQ(p[0].ids, (std::vector<int32_t>{'h', 'e', 'l', 'l', 'o'}));
  EXPECT_EQ(*r.max_tokens, 16);  // the OpenAI default for completions

  r = completion(R"({"prompt":"hello","max_tokens":60})");
  auto e = error_of([&] { tokenize_prompts(r, tok, nullptr, {300, 64}); });
  EXPECT_EQ(e.status, 400);
  EXPECT_EQ(e.code, "context_length_exceeded");
  EXPECT_EQ(e.param, "max_tokens");
  EXPECT_NE(e.message().find("64"), std::string::npos);
  r = completion(R"({"prompt":"hello","max_tokens":59})");
  EXPECT_NO_THROW(tokenize_prompts(r, tok, nullptr, {300, 64}));

  r = completion(R"({"prompt":")" + std::string(100, 'x') + R"("})");
  e = error_of([&] { tokenize_prompts(r, tok, nullptr, {300, 64}); });
  EXPECT_EQ(e.code, "context_length_exceeded");
  EXPECT_EQ(e.param, "prompt");

  r = completion(R"({"prompt":[1,2,300]})");
  e = error_of([&] { tokenize_prompts(r, tok, nullptr, {300, 64}); });
  EXPECT_EQ(e.status, 400);
  EXPECT_NE(e.message().find("300"), std::string::npos);
  r = completion(R"({"prompt":"x","stop_token_ids":[1000]})");
  EXPECT_EQ(error_of([&] { tokenize_prompts(r, tok, nullptr, {300, 64}); }).param, "stop_token_ids");
  r = completion(R"({"prompt":""})");
  EXPECT_EQ(error_of([&] { tokenize_prompts(r, tok, nullptr, {300, 64}); }).param, "prompt");
  // Token-id prompts are echoed as their decoded text.
  r = completion(R"({"prompt":[104,105]})");
  EXPECT_EQ(tokenize_prompts(r, tok, nullptr, {300, 64})[0].text, "hi");
}

TEST(ServeProtocol, ChatIsRenderedWithTheTemplate) {
  const auto& tok = tiny_tok();
  auto r = chat(R"({"messages":[{"role":"user","content":"hi"}]})");
  auto p = tokenize_prompts(r, tok, &tiny_chat(), {300, 64});
  EXPECT_EQ(p[0].text, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(p[0].ids.front(), 257);  // <|im_start|> is one special token
  EXPECT_EQ(*r.max_tokens, 64 - static_cast<int>(p[0].ids.size()));  // default: the rest of the context
  auto e = error_of([&] { tokenize_prompts(r, tok, nullptr, {300, 64}); });
  EXPECT_EQ(e.code, "no_chat_template");
  // A template that raises (or fails on the messages) is the client's 400, not a 500.
  auto bad = chat_template::ChatTemplate("{{ raise_exception('roles must alternate') }}");
  e = error_of([&] { tokenize_prompts(r, tok, &bad, {300, 64}); });
  EXPECT_EQ(e.status, 400);
  EXPECT_NE(e.message().find("roles must alternate"), std::string::npos);
}

TEST(ServeProtocol, GenRequestCarriesEverything) {
  auto r = completion(R"({"prompt":"x","max_tokens":4,"seed":10,"stop_token_ids":[7],"logprobs":2,"echo":true})");
  auto p = tokenize_prompts(r, tiny_tok(), nullptr, {300, 64});
  auto g = make_gen_request(r, p[0], "alpha", {2}, 3);
  EXPECT_EQ(g.prompt, (std::vector<int32_t>{'x'}));
  EXPECT_EQ(g.model, "alpha");
  EXPECT_EQ(g.max_tokens, 4);
  EXPECT_EQ(*g.sampling.seed, 13u);  // seed + choice index
  EXPECT_EQ(g.stop_ids, (std::vector<int32_t>{7, 2}));
  EXPECT_EQ(g.logprobs, 2);
  EXPECT_TRUE(g.prompt_logprobs);
  r = completion(R"({"prompt":"x","ignore_eos":true})");
  p = tokenize_prompts(r, tiny_tok(), nullptr, {300, 64});
  g = make_gen_request(r, p[0], "", {2}, 0);
  EXPECT_TRUE(g.stop_ids.empty());
  EXPECT_EQ(g.logprobs, -1);
  EXPECT_FALSE(g.prompt_logprobs);
  EXPECT_FALSE(g.sampling.seed);
}
