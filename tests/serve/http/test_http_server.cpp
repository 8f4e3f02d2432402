// The HTTP layer end to end over loopback, on a scripted FakeService (no model): bodies, SSE framing,
// stop strings in streams, errors and statuses, API keys, runtime adapter endpoints, client
// disconnects, slow readers and graceful shutdown.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <future>
#include <thread>

#include "fake_service.hpp"
#include "graft/model/presets.hpp"
#include "graft/serve/http_server.hpp"
#include "raw_http.hpp"
#include "tiny_tokenizer.hpp"

using namespace graft;
using namespace graft::serve;
using namespace graft::testing;
using json = nlohmann::json;
using namespace std::chrono_literals;

namespace {

class HttpServerTest : public ::testing::Test {
 protected:
  void start(ApiKeys keys = {}, bool runtime_updates = true, size_t max_bytes = 1 << 16) {
    HttpServerOptions o;
    o.port = 0;
    o.served_model_name = "base";
    o.model_path = "/models/base";
    o.vocab_size = 300;
    o.max_request_bytes = max_bytes;
    o.threads = 16;
    o.enable_lora_runtime_updates = runtime_updates;
    o.drain_timeout_s = 10;
    server_ = std::make_unique<HttpServer>(o, fake_, tiny_tok(), &tiny_chat(), std::vector<int32_t>{'.'}, std::move(keys));
    port_ = server_->bind();
    thread_ = std::thread([this] { server_->serve(); });
  }
  void TearDown() override {
    if (server_) server_->shutdown();
    if (thread_.joinable()) thread_.join();
  }
  HttpResponse post(const std::string& path, const std::string& body, const std::vector<std::string>& headers = {}) {
    return http_call(port_, "POST", path, body, headers);
  }
  HttpResponse get(const std::string& path, const std::vector<std::string>& headers = {}) {
    return http_call(port_, "GET", path, "", headers);
  }
  static json parse(const HttpResponse& r) { return json::parse(r.body); }
  // Checks an OpenAI error object and returns it.
  static json error_of(const HttpResponse& r, int status) {
    EXPECT_EQ(r.status, status) << r.body;
    json j = json::parse(r.body, nullptr, false);
    EXPECT_TRUE(j.is_object() && j.contains("error")) << r.body;
    if (!j.is_object() || !j.contains("error")) return json::object();
    for (const char* k : {"message", "type", "param", "code"}) EXPECT_TRUE(j["error"].contains(k)) << k << " " << r.body;
    EXPECT_TRUE(j["error"]["message"].is_string());
    return j["error"];
  }
  // Parses an SSE body into JSON events; the last one must be [DONE].
  static std::vector<json> events(const HttpResponse& r) {
    EXPECT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(r.headers.at("content-type"), "text/event-stream");
    bool framed = false;
    auto data = sse_data(r.body, &framed);
    EXPECT_TRUE(framed) << r.body;
    EXPECT_FALSE(data.empty());
    std::vector<json> out;
    if (data.empty()) return out;
    EXPECT_EQ(data.back(), "[DONE]") << r.body;
    for (size_t i = 0; i + 1 < data.size(); ++i) out.push_back(json::parse(data[i]));
    return out;
  }

  FakeService fake_;
  std::unique_ptr<HttpServer> server_;
  std::thread thread_;
  int port_ = 0;
};

}  // namespace

TEST_F(HttpServerTest, HealthReadyModels) {
  start();
  EXPECT_EQ(get("/health").status, 200);
  EXPECT_EQ(get("/ready").status, 200);
  auto r = get("/v1/models");
  ASSERT_EQ(r.status, 200);
  auto j = parse(r);
  EXPECT_EQ(j["object"], "list");
  ASSERT_EQ(j["data"].size(), 4u);
  EXPECT_EQ(j["data"][0]["id"], "base");
  EXPECT_EQ(j["data"][0]["root"], "/models/base");
  EXPECT_TRUE(j["data"][0]["parent"].is_null());
  EXPECT_EQ(j["data"][1]["id"], "alpha");
  EXPECT_EQ(j["data"][1]["parent"], "base");
  EXPECT_EQ(j["data"][1]["root"], "/adapters/alpha");
  EXPECT_EQ(parse(get("/v1/models/beta"))["id"], "beta");
  EXPECT_EQ(error_of(get("/v1/models/nope"), 404)["code"], "model_not_found");
  EXPECT_EQ(error_of(get("/nope"), 404)["type"], "not_found_error");
}

TEST_F(HttpServerTest, CompletionPlainAndStreamed) {
  start();
  auto r = post("/v1/completions", R"({"model":"base","prompt":"hi","max_tokens":5})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.headers["content-type"], "application/json");
  auto j = parse(r);
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["model"], "base");
  EXPECT_EQ(j["choices"][0]["text"], "Hello");
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(j["usage"], (json{{"prompt_tokens", 2}, {"completion_tokens", 5}, {"total_tokens", 7}}));
  EXPECT_EQ(fake_.last().model, "");

  r = post("/v1/completions", R"({"model":"alpha","prompt":"hi","max_tokens":12,"stream":true,"stream_options":{"include_usage":true}})");
  EXPECT_EQ(r.headers["transfer-encoding"], "chunked");
  auto ev = events(r);
  ASSERT_GE(ev.size(), 3u);
  std::string text;
  for (size_t i = 0; i + 1 < ev.size(); ++i) {
    EXPECT_EQ(ev[i]["object"], "text_completion");
    EXPECT_EQ(ev[i]["id"], ev[0]["id"]);
    text += ev[i]["choices"][0]["text"].get<std::string>();
    if (i + 2 < ev.size()) {
      EXPECT_TRUE(ev[i]["choices"][0]["finish_reason"].is_null());
    }
  }
  EXPECT_EQ(text, "Hello, world");
  EXPECT_EQ(ev[ev.size() - 2]["choices"][0]["finish_reason"], "length");
  EXPECT_TRUE(ev.back()["choices"].empty());  // the include_usage chunk
  EXPECT_EQ(ev.back()["usage"]["completion_tokens"], 12);
  EXPECT_EQ(fake_.last().model, "alpha");
}

TEST_F(HttpServerTest, EosIdStopsWithReasonStop) {
  start();
  auto j = parse(post("/v1/completions", R"({"prompt":"hi","max_tokens":100})"));
  EXPECT_EQ(j["choices"][0]["text"], "Hello, world! The end.");  // '.' is the eos id (shown: not special)
  EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");
}

TEST_F(HttpServerTest, StopStringsNeverReachTheClient) {
  start();
  auto j = parse(post("/v1/completions", R"({"prompt":"hi","max_tokens":100,"stop":["world","zzz"]})"));
  EXPECT_EQ(j["choices"][0]["text"], "Hello, ");
  EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");
  const int cancelled = fake_.cancelled.load();
  EXPECT_GE(cancelled, 1);  // the engine request is stopped at once
  auto ev = events(post("/v1/completions", R"({"prompt":"hi","max_tokens":100,"stop":"world","stream":true})"));
  std::string text;
  for (const auto& e : ev) {
    const std::string t = e["choices"][0]["text"];
    EXPECT_EQ(t.find('w'), std::string::npos) << "a prefix of the stop string leaked: " << t;
    text += t;
  }
  EXPECT_EQ(text, "Hello, ");
  EXPECT_EQ(ev.back()["choices"][0]["finish_reason"], "stop");
  // Chat too, with the stop string split over several tokens.
  ev = events(post("/v1/chat/completions", R"({"messages":[{"role":"user","content":"x"}],"stop":[", wo"],"stream":true})"));
  text.clear();
  for (const auto& e : ev)
    if (e["choices"][0]["delta"].contains("content")) text += e["choices"][0]["delta"]["content"].get<std::string>();
  EXPECT_EQ(text, "Hello");
}

TEST_F(HttpServerTest, ChatPlainAndStreamed) {
  start();
  auto r = post("/v1/chat/completions", R"({"model":"beta","messages":[{"role":"user","content":"hi"}],"max_tokens":5})");
  ASSERT_EQ(r.status, 200) << r.body;
  auto j = parse(r);
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(j["choices"][0]["message"]["content"], "Hello");
  // The prompt is the rendered ChatML conversation.
  auto last = fake_.last();
  EXPECT_EQ(last.prompt.front(), 257);
  EXPECT_EQ(j["usage"]["prompt_tokens"], static_cast<int>(last.prompt.size()));

  auto ev = events(post("/v1/chat/completions",
                        R"({"messages":[{"role":"user","content":"hi"}],"max_tokens":4,"stream":true,"n":2,"logprobs":true,"top_logprobs":2})"));
  std::map<int, std::string> texts;
  std::map<int, int> roles, finals, lp_tokens;
  for (const auto& e : ev) {
    EXPECT_EQ(e["object"], "chat.completion.chunk");
    const auto& c = e["choices"][0];
    const int i = c["index"];
    if (c["delta"].contains("role")) ++roles[i];
    if (c["delta"].contains("content")) texts[i] += c["delta"]["content"].get<std::string>();
    if (!c["finish_reason"].is_null()) ++finals[i];
    if (c["logprobs"].is_object())
      for (const auto& t : c["logprobs"]["content"]) {
        ++lp_tokens[i];
        EXPECT_EQ(t["top_logprobs"].size(), 2u);
      }
  }
  for (int i : {0, 1}) {
    EXPECT_EQ(texts[i], "Hell") << i;
    EXPECT_EQ(roles[i], 1) << i;
    EXPECT_EQ(finals[i], 1) << i;
    EXPECT_EQ(lp_tokens[i], 4) << i;
  }
}

TEST_F(HttpServerTest, ManyPromptsTimesN) {
  start();
  auto j = parse(post("/v1/completions", R"({"prompt":["a","bb"],"n":2,"max_tokens":2,"seed":5})"));
  ASSERT_EQ(j["choices"].size(), 4u);
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(j["choices"][i]["index"], i);
    EXPECT_EQ(j["choices"][i]["text"], "He");
  }
  EXPECT_EQ(j["usage"]["prompt_tokens"], 3);  // each prompt counted once
  EXPECT_EQ(j["usage"]["completion_tokens"], 8);
}

TEST_F(HttpServerTest, EchoLogprobsForLoglikelihood) {
  start();
  // What lm-evaluation-harness local-completions sends for loglikelihood requests.
  auto r = post("/v1/completions", R"({"model":"base","prompt":["ab","cd"],"max_tokens":1,"temperature":0,"logprobs":1,"echo":true,"seed":1234})");
  ASSERT_EQ(r.status, 200) << r.body;
  auto j = parse(r);
  ASSERT_EQ(j["choices"].size(), 2u);
  const auto& c = j["choices"][1];
  EXPECT_EQ(c["text"], "cdH");
  const auto& lp = c["logprobs"];
  EXPECT_EQ(lp["tokens"], (json{"c", "d", "H"}));
  EXPECT_TRUE(lp["token_logprobs"][0].is_null());
  EXPECT_FLOAT_EQ(lp["token_logprobs"][1].get<float>(), -1.0f);
  EXPECT_FLOAT_EQ(lp["token_logprobs"][2].get<float>(), -0.25f);
  EXPECT_TRUE(lp["top_logprobs"][0].is_null());
  EXPECT_TRUE(lp["top_logprobs"][1].contains("d"));  // the chosen token is always listed
  EXPECT_EQ(lp["text_offset"], (json{0, 1, 2}));
  // lm-eval's parse: sum(token_logprobs[ctxlen:-1]) and the greedy check against max(top_logprobs).
  // max_tokens 0: only the prompt.
  j = parse(post("/v1/completions", R"({"prompt":"xyz","max_tokens":0,"logprobs":0,"echo":true})"));
  EXPECT_EQ(j["choices"][0]["text"], "xyz");
  EXPECT_EQ(j["choices"][0]["logprobs"]["tokens"].size(), 3u);
  EXPECT_EQ(j["usage"]["completion_tokens"], 0);
  // Streamed echo: the prompt comes first.
  auto ev = events(post("/v1/completions", R"({"prompt":"xyz","max_tokens":2,"echo":true,"stream":true,"logprobs":0})"));
  EXPECT_EQ(ev[0]["choices"][0]["text"], "xyz");
  EXPECT_EQ(ev[0]["choices"][0]["logprobs"]["tokens"].size(), 3u);
  std::string text;
  for (const auto& e : ev) text += e["choices"][0]["text"].get<std::string>();
  EXPECT_EQ(text, "xyzHe");
}

TEST_F(HttpServerTest, ClientErrorsAreOpenAIErrorObjects) {
  start();
  EXPECT_EQ(error_of(post("/v1/completions", "{not json"), 400)["code"], "invalid_json");
  EXPECT_EQ(error_of(post("/v1/completions", ""), 400)["code"], "invalid_json");
  EXPECT_EQ(error_of(post("/v1/completions", R"({"prompt":"x","max_tokens":"3"})"), 400)["param"], "max_tokens");
  EXPECT_EQ(error_of(post("/v1/chat/completions", R"({"messages":"x"})"), 400)["param"], "messages");
  auto e = error_of(post("/v1/completions", R"({"model":"nope","prompt":"x"})"), 404);
  EXPECT_EQ(e["code"], "model_not_found");
  EXPECT_EQ(e["param"], "model");
  EXPECT_EQ(error_of(post("/v1/completions", R"({"model":"../../etc/passwd","prompt":"x"})"), 404)["code"], "model_not_found");
  e = error_of(post("/v1/completions", R"({"prompt":"x","max_tokens":1000000})"), 400);
  EXPECT_EQ(e["code"], "context_length_exceeded");
  EXPECT_EQ(error_of(post("/v1/completions", R"({"prompt":"x","max_tokens":1e300})"), 400)["param"], "max_tokens");
  e = error_of(post("/v1/completions", R"({"prompt":")" + std::string(300, 'a') + R"("})"), 400);
  EXPECT_EQ(e["code"], "context_length_exceeded");
  // Oversized body: 413, with Content-Length and with chunked transfer encoding.
  e = error_of(post("/v1/completions", R"({"prompt":")" + std::string(70000, 'a') + R"("})"), 413);
  EXPECT_EQ(e["code"], "request_too_large");
  std::string big(70000, 'a');
  std::string chunked;
  for (size_t i = 0; i < big.size(); i += 8192) {
    const std::string part = big.substr(i, 8192);
    chunked += fmt::format("{:x}\r\n{}\r\n", part.size(), part);
  }
  chunked += "0\r\n\r\n";
  auto r = raw_exchange(port_, build_request("POST", "/v1/completions", chunked, {"Transfer-Encoding: chunked"}, false));
  error_of(r, 413);
  // Declared far too large: refused before reading; with Expect: 100-continue, before the body is sent.
  r = raw_exchange(port_, "POST /v1/completions HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n", 5000);
  EXPECT_EQ(error_of(r, 413)["code"], "request_too_large");
  EXPECT_EQ(r.headers["connection"], "close");
  r = raw_exchange(port_, "POST /v1/completions HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 70000\r\n\r\n", 5000);
  EXPECT_EQ(error_of(r, 413)["code"], "request_too_large");
  EXPECT_EQ(fake_.submitted.load(), 0);
  // Queue full: 429 from the engine passes through.
  fake_.max_queue = 0;
  EXPECT_EQ(error_of(post("/v1/completions", R"({"prompt":"x"})"), 429)["type"], "rate_limit_error");
  fake_.max_queue = 1000;
  // Still serving.
  EXPECT_EQ(post("/v1/completions", R"({"prompt":"x","max_tokens":1})").status, 200);
  // Malformed HTTP.
  r = raw_exchange(port_, "GARBAGE\r\n\r\n");
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(get("/health").status, 200);
}

TEST_F(HttpServerTest, ApiKeysAndAdapterGrants) {
  ApiKeys keys;
  keys.add_json(R"({"sk-all": "*", "sk-alpha": ["alpha"]})", "keys");
  start(std::move(keys));
  const std::string body = R"({"model":"alpha","prompt":"x","max_tokens":1})";
  auto e = error_of(post("/v1/completions", body), 401);
  EXPECT_EQ(e["type"], "authentication_error");
  EXPECT_EQ(error_of(post("/v1/completions", body, {"Authorization: Bearer sk-wrong"}), 401)["code"], "invalid_api_key");
  EXPECT_EQ(error_of(get("/v1/models"), 401)["code"], "invalid_api_key");
  EXPECT_EQ(post("/v1/completions", body, {"Authorization: Bearer sk-alpha"}).status, 200);
  EXPECT_EQ(post("/v1/completions", body, {"Authorization: Bearer sk-all"}).status, 200);
  // Another customer's adapter looks exactly like one that does not exist.
  auto other = error_of(post("/v1/completions", R"({"model":"beta","prompt":"x"})", {"Authorization: Bearer sk-alpha"}), 404);
  auto missing = error_of(post("/v1/completions", R"({"model":"gamma","prompt":"x"})", {"Authorization: Bearer sk-alpha"}), 404);
  EXPECT_EQ(other["code"], missing["code"]);
  // The base is open to every valid key; /v1/models lists what the key may use.
  EXPECT_EQ(post("/v1/completions", R"({"model":"base","prompt":"x","max_tokens":1})", {"Authorization: Bearer sk-alpha"}).status, 200);
  EXPECT_EQ(parse(get("/v1/models", {"Authorization: Bearer sk-alpha"}))["data"].size(), 2u);
  EXPECT_EQ(parse(get("/v1/models", {"Authorization: Bearer sk-all"}))["data"].size(), 4u);
  // Adapter management needs a "*" key.
  EXPECT_EQ(error_of(post("/v1/load_lora_adapter", R"({"lora_name":"g","lora_path":"/x"})", {"Authorization: Bearer sk-alpha"}), 403)["type"],
            "permission_error");
  // Probes stay open.
  EXPECT_EQ(get("/health").status, 200);
  EXPECT_EQ(get("/metrics").status, 200);
}

TEST_F(HttpServerTest, RuntimeAdapterEndpoints) {
  start();
  auto r = post("/v1/load_lora_adapter", R"({"lora_name":"gamma","lora_path":"/adapters/gamma"})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.body, "Success: LoRA adapter 'gamma' added successfully.");
  EXPECT_EQ(parse(get("/v1/models"))["data"].size(), 5u);
  EXPECT_EQ(post("/v1/completions", R"({"model":"gamma","prompt":"x","max_tokens":1})").status, 200);
  EXPECT_EQ(error_of(post("/v1/load_lora_adapter", R"({"lora_name":"../x","lora_path":"/a"})"), 400)["param"], "lora_name");
  EXPECT_EQ(error_of(post("/v1/load_lora_adapter", R"({"lora_name":"base","lora_path":"/a"})"), 400)["param"], "lora_name");
  EXPECT_EQ(error_of(post("/v1/load_lora_adapter", R"({"lora_name":"x"})"), 400)["param"], "lora_path");
  EXPECT_EQ(error_of(post("/v1/load_lora_adapter", R"({"lora_name":5,"lora_path":"/a"})"), 400)["param"], "lora_name");
  r = post("/v1/unload_lora_adapter", R"({"lora_name":"gamma"})");
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(error_of(post("/v1/unload_lora_adapter", R"({"lora_name":"gamma"})"), 404)["type"], "not_found_error");
  EXPECT_EQ(error_of(post("/v1/completions", R"({"model":"gamma","prompt":"x"})"), 404)["code"], "model_not_found");
}

TEST_F(HttpServerTest, RuntimeAdapterEndpointsNeedTheFlag) {
  start({}, /*runtime_updates=*/false);
  auto e = error_of(post("/v1/load_lora_adapter", R"({"lora_name":"gamma","lora_path":"/a"})"), 404);
  EXPECT_NE(e["message"].get<std::string>().find("--enable-lora-runtime-updates"), std::string::npos);
  error_of(post("/v1/unload_lora_adapter", R"({"lora_name":"alpha"})"), 404);
  EXPECT_EQ(parse(get("/v1/models"))["data"].size(), 4u);
}

TEST_F(HttpServerTest, EngineFailuresAreServerErrors) {
  start();
  auto e = error_of(post("/v1/completions", R"({"model":"broken","prompt":"x"})"), 500);
  EXPECT_EQ(e["type"], "server_error");
  EXPECT_NE(e["message"].get<std::string>().find("cannot load adapter"), std::string::npos);
  // Streamed: the failure arrives as an error event, then [DONE].
  auto r = post("/v1/chat/completions", R"({"model":"broken","messages":[{"role":"user","content":"x"}],"stream":true})");
  bool framed = false;
  auto data = sse_data(r.body, &framed);
  EXPECT_TRUE(framed);
  ASSERT_GE(data.size(), 2u);
  EXPECT_EQ(data.back(), "[DONE]");
  EXPECT_TRUE(json::parse(data[data.size() - 2]).contains("error"));
  EXPECT_EQ(post("/v1/completions", R"({"prompt":"x","max_tokens":1})").status, 200);
}

TEST_F(HttpServerTest, ClientDisconnectCancelsTheEngineRequest) {
  fake_.step_us = 5000;
  fake_.max_model_len = 100000;
  start();
  int fd = connect_loopback(port_);
  ASSERT_GE(fd, 0);
  send_all(fd, build_request("POST", "/v1/completions", R"({"prompt":"x","max_tokens":5000,"stream":true})"));
  std::string got = recv_some(fd, 5000);
  EXPECT_NE(got.find("200"), std::string::npos);
  ::close(fd);
  const auto t0 = std::chrono::steady_clock::now();
  while ((fake_.active() > 0 || server_->in_flight() > 0) && std::chrono::steady_clock::now() - t0 < 5s)
    std::this_thread::sleep_for(10ms);
  EXPECT_EQ(fake_.active(), 0);
  EXPECT_EQ(server_->in_flight(), 0);
  EXPECT_GE(fake_.cancelled.load(), 1);
  EXPECT_EQ(post("/v1/completions", R"({"prompt":"x","max_tokens":2})").status, 200);
}

TEST_F(HttpServerTest, SlowReaderDoesNotBlockOthers) {
  fake_.step_us = 100;
  fake_.max_model_len = 100000;
  start();
  int fd = connect_loopback(port_);
  ASSERT_GE(fd, 0);
  send_all(fd, build_request("POST", "/v1/completions", R"({"prompt":"x","max_tokens":2000,"stream":true,"logprobs":5,"ignore_eos":true})"));
  std::this_thread::sleep_for(300ms);  // not reading: the server's socket buffers fill up
  // While that client does not read, other requests are served promptly.
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(post("/v1/completions", R"({"prompt":"x","max_tokens":8})").status, 200);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 2s);
  // The slow client then reads everything, intact, in small sips.
  std::string all;
  for (;;) {
    std::string s = recv_some(fd, 5000, 16384);
    if (s.empty()) break;
    all += s;
    std::this_thread::sleep_for(500us);
  }
  ::close(fd);
  auto r = parse_response(all);
  auto ev = events(r);
  std::string text;
  for (const auto& e : ev) text += e["choices"][0]["text"].get<std::string>();
  EXPECT_EQ(text.size(), 2000u);
}

TEST_F(HttpServerTest, GracefulShutdownDrainsInFlight) {
  fake_.step_us = 1000;
  fake_.max_model_len = 100000;
  start();
  auto streaming = std::async(std::launch::async, [&] {
    return post("/v1/completions", R"({"prompt":"x","max_tokens":300,"stream":true,"ignore_eos":true})");
  });
  const auto t0 = std::chrono::steady_clock::now();
  while (server_->in_flight() == 0 && std::chrono::steady_clock::now() - t0 < 5s) std::this_thread::sleep_for(1ms);
  ASSERT_EQ(server_->in_flight(), 1);
  auto stopping = std::async(std::launch::async, [&] { server_->shutdown(); });
  while (!server_->shutting_down()) std::this_thread::sleep_for(1ms);
  // New work is refused with 503 while draining; probes say not ready.
  auto e = error_of(post("/v1/completions", R"({"prompt":"x"})"), 503);
  EXPECT_EQ(e["code"], "shutting_down");
  EXPECT_EQ(get("/ready").status, 503);
  EXPECT_EQ(get("/health").status, 200);
  // The in-flight stream completes.
  auto r = streaming.get();
  auto ev = events(r);
  std::string text;
  for (const auto& x : ev) text += x["choices"][0]["text"].get<std::string>();
  EXPECT_EQ(text.size(), 300u);
  stopping.get();
  thread_.join();  // serve() returned
  EXPECT_EQ(fake_.cancelled.load(), 0);
}

TEST_F(HttpServerTest, MetricsCountRequests) {
  start();
  post("/v1/completions", R"({"model":"alpha","prompt":"x","max_tokens":3})");
  post("/v1/completions", R"({"prompt":"x","max_tokens":2})");
  post("/v1/completions", "{bad");
  // The per-route HTTP counter is bumped by httplib's logger after the response is written, so a
  // scrape right after a response may precede it: scrape until it shows (bounded).
  auto r = get("/metrics");
  for (int i = 0; i < 200 && r.body.find("status=\"400\"} 1\n") == std::string::npos; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    r = get("/metrics");
  }
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(r.headers["content-type"], "text/plain; version=0.0.4; charset=utf-8");
  auto has = [&](const std::string& s) { return r.body.find(s) != std::string::npos; };
  EXPECT_TRUE(has("graft:generation_tokens_total{model_name=\"base\"} 5\n")) << r.body;
  EXPECT_TRUE(has("graft:request_success_total{model_name=\"base\",finished_reason=\"length\"} 2\n"));
  EXPECT_TRUE(has("graft:adapter_requests_total{model_name=\"base\",adapter=\"alpha\"} 1\n"));
  EXPECT_TRUE(has("graft:adapter_loaded{model_name=\"base\",adapter=\"beta\"} 1\n"));
  EXPECT_TRUE(has("graft:http_requests_total{model_name=\"base\",route=\"/v1/completions\",status=\"400\"} 1\n"));
  EXPECT_TRUE(has("graft:e2e_request_latency_seconds_count{model_name=\"base\"} 2\n"));
}
