// Response bodies, stream chunks, SSE framing, errors, API keys and the metrics text format.
#include <gtest/gtest.h>

#include <regex>
#include <sstream>

#include "graft/model/presets.hpp"
#include "graft/serve/http_server.hpp"
#include "graft/serve/metrics.hpp"
#include "openai_format.hpp"
#include "tiny_tokenizer.hpp"

using namespace graft;
using namespace graft::serve;
using namespace graft::serve::http;

namespace {
using graft::testing::tiny_tok;
TokenOut tok_out(int32_t id, float lp, std::vector<std::pair<int32_t, float>> top = {}) {
  TokenOut t;
  t.id = id;
  t.logprob = lp;
  t.top = std::move(top);
  return t;
}
}  // namespace

TEST(ServeFormat, ErrorObject) {
  auto j = error_json(ApiError(404, "not_found_error", "The model 'x' does not exist.", "model", "model_not_found"));
  EXPECT_EQ(dump(j), R"({"error":{"message":"The model 'x' does not exist.","type":"not_found_error","param":"model","code":"model_not_found"}})");
  j = error_json(500, "server_error", "boom");
  EXPECT_TRUE(j["error"]["param"].is_null());
  EXPECT_TRUE(j["error"]["code"].is_null());
}

TEST(ServeFormat, SseFraming) {
  EXPECT_EQ(sse_event(ojson{{"a", 1}}), "data: {\"a\":1}\n\n");
  EXPECT_STREQ(sse_done(), "data: [DONE]\n\n");
  // Newlines inside strings are escaped, so one event is one line.
  EXPECT_EQ(sse_event(ojson{{"t", "a\nb"}}).find('\n'), sse_event(ojson{{"t", "a\nb"}}).size() - 2);
  // Invalid UTF-8 never throws.
  EXPECT_NO_THROW(dump(ojson{{"t", std::string("\xff")}}));
}

TEST(ServeFormat, CompletionAndChatBodies) {
  ChoiceOutput c;
  c.index = 0;
  c.text = "hi";
  c.finish_reason = "length";
  auto j = completion_response("cmpl-1", 5, "m", {c}, {3, 2});
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["choices"][0]["text"], "hi");
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
  EXPECT_TRUE(j["choices"][0]["logprobs"].is_null());
  EXPECT_EQ(j["usage"], (ojson{{"prompt_tokens", 3}, {"completion_tokens", 2}, {"total_tokens", 5}}));
  j = chat_response("chatcmpl-1", 5, "m", {c}, {3, 2});
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["choices"][0]["message"], (ojson{{"role", "assistant"}, {"content", "hi"}}));
  auto ch = chat_chunk("id", 5, "m", 1, ojson{{"content", "x"}}, "", nullptr);
  EXPECT_EQ(ch["object"], "chat.completion.chunk");
  EXPECT_TRUE(ch["choices"][0]["finish_reason"].is_null());
  EXPECT_EQ(ch["choices"][0]["index"], 1);
  auto u = usage_chunk("id", "text_completion", 5, "m", {4, 6});
  EXPECT_TRUE(u["choices"].empty());
  EXPECT_EQ(u["usage"]["total_tokens"], 10);
  EXPECT_EQ(make_id("cmpl-").size(), 5u + 24u);
  EXPECT_NE(make_id("cmpl-"), make_id("cmpl-"));
}

TEST(ServeFormat, LegacyLogprobsForLoglikelihood) {
  // lm-evaluation-harness reads token_logprobs[ctxlen:-1] and compares each with max(top_logprobs).
  const auto& tok = tiny_tok();
  std::vector<TokenOut> prompt = {tok_out('a', 0), tok_out('b', -1.5f, {{'c', -0.5f}}), tok_out('c', -0.25f, {{'c', -0.25f}})};
  size_t off = 0;
  auto lp = legacy_logprobs(tok, prompt, off, /*first_is_prompt_start=*/true);
  EXPECT_EQ(lp["tokens"], (ojson{"a", "b", "c"}));
  EXPECT_TRUE(lp["token_logprobs"][0].is_null());
  EXPECT_TRUE(lp["top_logprobs"][0].is_null());
  EXPECT_FLOAT_EQ(lp["token_logprobs"][1].get<float>(), -1.5f);
  // The chosen token is always in top_logprobs, next to the alternatives.
  EXPECT_EQ(lp["top_logprobs"][1].size(), 2u);
  EXPECT_FLOAT_EQ(lp["top_logprobs"][1]["b"].get<float>(), -1.5f);
  EXPECT_FLOAT_EQ(lp["top_logprobs"][1]["c"].get<float>(), -0.5f);
  EXPECT_EQ(lp["top_logprobs"][2].size(), 1u);
  EXPECT_EQ(lp["text_offset"], (ojson{0, 1, 2}));
  EXPECT_EQ(off, 3u);
  auto gen = legacy_logprobs(tok, {tok_out(0xC3, -std::numeric_limits<float>::infinity())}, off, false);
  EXPECT_EQ(gen["text_offset"], ojson{3});
  EXPECT_FLOAT_EQ(gen["token_logprobs"][0].get<float>(), -9999.0f);  // never -inf (not JSON)
  append_legacy_logprobs(lp, gen);
  EXPECT_EQ(lp["tokens"].size(), 4u);
  EXPECT_EQ(lp["tokens"][3], "\xEF\xBF\xBD");  // a lone byte of a UTF-8 sequence
  // vLLM's return_tokens_as_token_ids.
  size_t o2 = 0;
  auto ids = legacy_logprobs(tok, {tok_out(0xC3, -1.0f, {{7, -0.5f}})}, o2, false, /*as_ids=*/true);
  EXPECT_EQ(ids["tokens"], ojson{"token_id:195"});
  EXPECT_TRUE(ids["top_logprobs"][0].contains("token_id:7"));
  EXPECT_EQ(chat_logprobs(tok, {tok_out(5, -1.0f)}, true)["content"][0]["token"], "token_id:5");
}

TEST(ServeFormat, ChatLogprobs) {
  auto j = chat_logprobs(tiny_tok(), {tok_out('h', -0.1f, {{'h', -0.1f}, {'j', -2.5f}})});
  ASSERT_EQ(j["content"].size(), 1u);
  EXPECT_EQ(j["content"][0]["token"], "h");
  EXPECT_EQ(j["content"][0]["bytes"], ojson{104});
  EXPECT_EQ(j["content"][0]["top_logprobs"].size(), 2u);
  EXPECT_EQ(j["content"][0]["top_logprobs"][1]["token"], "j");
}

TEST(ServeApiKeys, FileFormatAndGrants) {
  ApiKeys k;
  EXPECT_FALSE(k.enabled());
  k.add_json(R"({"sk-a": ["alpha", "beta"], "sk-all": "*", "sk-b": ["beta"]})", "keys.json");
  EXPECT_TRUE(k.enabled());
  EXPECT_EQ(k.size(), 3u);
  ASSERT_NE(k.find("sk-a"), nullptr);
  EXPECT_TRUE(k.find("sk-a")->allows_adapter("alpha"));
  EXPECT_FALSE(k.find("sk-b")->allows_adapter("alpha"));
  EXPECT_TRUE(k.find("sk-all")->all);
  EXPECT_EQ(k.find("sk-"), nullptr);
  EXPECT_EQ(k.find("sk-a "), nullptr);
  EXPECT_EQ(k.find(""), nullptr);
  EXPECT_EQ(k.authorize("Bearer sk-b"), k.find("sk-b"));
  EXPECT_EQ(k.authorize("bearer   sk-b"), k.find("sk-b"));
  EXPECT_EQ(k.authorize("Basic sk-b"), nullptr);
  EXPECT_EQ(k.authorize("sk-b"), nullptr);
  EXPECT_EQ(k.authorize("Bearer "), nullptr);
  k.add("sk-b", ApiGrant{false, {"gamma"}});  // the same key again: union
  EXPECT_TRUE(k.find("sk-b")->allows_adapter("gamma"));
  EXPECT_TRUE(k.find("sk-b")->allows_adapter("beta"));
  for (const char* bad : {"[1]", "{\"k\": 5}", "{\"k\": \"some\"}", "{\"k\": [1]}", "{\"k\": [\"\"]}", "{", "{\"\": \"*\"}",
                          "{\"a b\": \"*\"}"}) {
    ApiKeys x;
    EXPECT_THROW(x.add_json(bad, "keys.json"), Error) << bad;
  }
  try {
    ApiKeys x;
    x.add_json("{\"k\": 5}", "/etc/keys.json");
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/etc/keys.json"), std::string::npos);
  }
}

TEST(ServeMetrics, HistogramIsCumulative) {
  Histogram h({0.1, 1, 10});
  for (double v : {0.05, 0.1, 0.5, 5.0, 50.0}) h.observe(v);
  EXPECT_EQ(h.cumulative(), (std::vector<uint64_t>{2, 3, 4, 5}));
  EXPECT_EQ(h.count(), 5u);
  EXPECT_DOUBLE_EQ(h.sum(), 55.65);
}

TEST(ServeMetrics, PrometheusTextFormat) {
  Metrics m("tiny \"base\"");
  FinishedRequest r;
  r.adapter = "alpha";
  r.finished_reason = "stop";
  r.prompt_tokens = 5;
  r.generation_tokens = 3;
  r.ttft_s = 0.02;
  r.e2e_s = 0.1;
  r.queue_s = 0.001;
  r.itl_s = {0.01, 0.02};
  m.on_request_finished(r);
  r.adapter.clear();
  r.finished_reason = "length";
  m.on_request_finished(r);
  m.on_http_response("/v1/completions", 200);
  Metrics::Live live;
  live.engine.running = 2;
  live.engine.waiting = 1;
  live.engine.kv_usage = 0.25;
  live.engine.preemptions = 4;
  live.adapters = {AdapterInfo{"alpha", "/a", true, 8, 100, 1}, AdapterInfo{"beta", "/b", false, 0, 0, 0}};
  const std::string text = m.render(live);

  // Every line is a comment (# HELP / # TYPE) or `name{labels} value`; every family is typed once.
  const std::regex sample(R"(^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? (-?[0-9.e+-]+|\+Inf|NaN)$)");
  std::istringstream in(text);
  std::string line;
  std::set<std::string> typed;
  int samples = 0;
  while (std::getline(in, line)) {
    if (line.rfind("# TYPE ", 0) == 0) {
      EXPECT_TRUE(typed.insert(line.substr(7, line.find(' ', 7) - 7)).second) << line;
      continue;
    }
    if (line.rfind("# HELP ", 0) == 0) continue;
    EXPECT_TRUE(std::regex_match(line, sample)) << line;
    ++samples;
  }
  EXPECT_GT(samples, 50);
  auto has = [&](const std::string& s) { return text.find(s) != std::string::npos; };
  const std::string ml = "model_name=\"tiny \\\"base\\\"\"";
  for (const char* name : {"graft:num_requests_running", "graft:num_requests_waiting", "graft:kv_cache_usage_perc",
                           "graft:prompt_tokens_total", "graft:generation_tokens_total", "graft:request_success_total",
                           "graft:num_preemptions_total", "graft:time_to_first_token_seconds",
                           "graft:inter_token_latency_seconds", "graft:e2e_request_latency_seconds",
                           "graft:request_queue_time_seconds", "graft:adapter_requests_total", "graft:adapter_loaded"})
    EXPECT_TRUE(typed.count(name)) << name;
  EXPECT_TRUE(has("graft:num_requests_running{" + ml + "} 2\n"));
  EXPECT_TRUE(has("graft:kv_cache_usage_perc{" + ml + "} 0.25\n"));
  EXPECT_TRUE(has("graft:prompt_tokens_total{" + ml + "} 10\n"));
  EXPECT_TRUE(has("graft:generation_tokens_total{" + ml + "} 6\n"));
  EXPECT_TRUE(has("graft:num_preemptions_total{" + ml + "} 4\n"));
  EXPECT_TRUE(has("graft:request_success_total{" + ml + ",finished_reason=\"stop\"} 1\n"));
  EXPECT_TRUE(has("graft:request_success_total{" + ml + ",finished_reason=\"length\"} 1\n"));
  EXPECT_TRUE(has("graft:request_success_total{" + ml + ",finished_reason=\"abort\"} 0\n"));
  EXPECT_TRUE(has("graft:time_to_first_token_seconds_bucket{" + ml + ",le=\"0.02\"} 2\n"));
  EXPECT_TRUE(has("graft:time_to_first_token_seconds_bucket{" + ml + ",le=\"0.01\"} 0\n"));
  EXPECT_TRUE(has("graft:time_to_first_token_seconds_bucket{" + ml + ",le=\"+Inf\"} 2\n"));
  EXPECT_TRUE(has("graft:time_to_first_token_seconds_count{" + ml + "} 2\n"));
  EXPECT_TRUE(has("graft:inter_token_latency_seconds_count{" + ml + "} 4\n"));
  EXPECT_TRUE(has("graft:adapter_requests_total{" + ml + ",adapter=\"alpha\"} 1\n"));
  EXPECT_TRUE(has("graft:adapter_generation_tokens_total{" + ml + ",adapter=\"alpha\"} 3\n"));
  EXPECT_TRUE(has("graft:adapter_loaded{" + ml + ",adapter=\"alpha\"} 1\n"));
  EXPECT_TRUE(has("graft:adapter_loaded{" + ml + ",adapter=\"beta\"} 0\n"));
  EXPECT_TRUE(has("graft:num_adapters_loaded{" + ml + "} 1\n"));
  EXPECT_TRUE(has("graft:http_requests_total{" + ml + ",route=\"/v1/completions\",status=\"200\"} 1\n"));
  EXPECT_EQ(prometheus_number(1e-3), "0.001");
  EXPECT_EQ(prometheus_number(3), "3");
  EXPECT_EQ(prometheus_escape("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
}
