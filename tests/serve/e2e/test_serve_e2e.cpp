// End to end: `graft serve` on a tiny random qwen3_moe with random PEFT adapters, on loopback, driven
// by the official OpenAI Python client (tools/.venv), curl, raw sockets (hostile input, slow and vanishing clients),
// a seeded fuzz pass and wrk. Every wait is bounded; the server must answer well-formed JSON with a
// status < 500 to anything a client sends, and keep serving.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <csignal>
#include <future>
#include <random>
#include <regex>

#include "../../adapters/adapter_test_util.hpp"
#include "../../common/run_graft.hpp"
#include "../http/raw_http.hpp"
#include "graft/adapters/peft.hpp"
#include "serve_process.hpp"
#include "../../common/reference_python.hpp"

using namespace graft;
using namespace graft::testing;
using json = nlohmann::json;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

const std::vector<std::string> kAdmin = {"Authorization: Bearer sk-admin"};

class ServeE2E : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = fs::temp_directory_path() / ("graft_serve_e2e_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_ / "adapters");
    fs::create_directories(dir_ / "outside");
    auto r = run_graft("init-model --arch qwen3_moe --preset tiny --seed 3 --out " + (dir_ / "base").string());
    ASSERT_EQ(r.rc, 0) << r.err;
    auto cfg = config::load_model_config((dir_ / "base").string());
    // Random adapters with non-zero B: they change the base's output.
    adapters::save_peft((dir_ / "adapters/a1").string(), testutil::random_adapter(cfg, 4, 16, 1), cfg);
    adapters::save_peft((dir_ / "adapters/a2").string(), testutil::random_adapter(cfg, 8, 16, 2), cfg);
    adapters::save_peft((dir_ / "adapters/a3").string(), testutil::random_adapter(cfg, 4, 16, 3), cfg);
    adapters::save_peft((dir_ / "outside/evil").string(), testutil::random_adapter(cfg, 4, 16, 4), cfg);
    testutil::write_text(dir_ / "keys.json", R"({"sk-admin": "*", "sk-a1": ["a1"]})");
    server_ = new ServeProcess;
    ASSERT_TRUE(server_->start({(dir_ / "base").string(), "--served-model-name", "tiny", "--adapter",
                                "a1=" + (dir_ / "adapters/a1").string(), "--adapter-dir", (dir_ / "adapters").string(),
                                "--api-keys-file", (dir_ / "keys.json").string(), "--enable-lora-runtime-updates",
                                "--max-request-bytes", "262144", "--max-model-len", "512", "--max-queue", "128"},
                               dir_))
        << server_->log();
    port_ = server_->port();
  }
  static void TearDownTestSuite() {
    if (server_) {
      const std::string log = server_->log();
      const int rc = server_->stop(SIGINT, 30);  // SIGINT here, SIGTERM in ServeE2EShutdown
      EXPECT_EQ(rc, 0) << log;
      delete server_;
      server_ = nullptr;
    }
    fs::remove_all(dir_);
  }
  void SetUp() override {
    if (!server_ || !server_->alive()) GTEST_FAIL() << "the server is not running";
  }

  static HttpResponse post(const std::string& path, const std::string& body, const std::vector<std::string>& h = kAdmin) {
    return http_call(port_, "POST", path, body, h);
  }
  static HttpResponse get(const std::string& path, const std::vector<std::string>& h = kAdmin) {
    return http_call(port_, "GET", path, "", h);
  }
  static std::string curl(const std::string& args) {
    return shell("curl -sS --max-time 20 " + args + " 2>&1").second;
  }
  static std::string url(const std::string& path) { return "http://127.0.0.1:" + std::to_string(port_) + path; }
  // An error object with its status; returns error.code (or "").
  static std::string error_code(const HttpResponse& r, int status) {
    EXPECT_EQ(r.status, status) << r.body;
    json j = json::parse(r.body, nullptr, false);
    EXPECT_TRUE(j.is_object() && j.contains("error") && j["error"].contains("message")) << r.body;
    if (!j.is_object() || !j.contains("error") || !j["error"]["code"].is_string()) return "";
    return j["error"]["code"];
  }
  static void expect_still_serving() {
    EXPECT_EQ(get("/health").status, 200);
    auto r = post("/v1/completions", R"({"model":"tiny","prompt":"ok","max_tokens":2})");
    EXPECT_EQ(r.status, 200) << r.body;
  }

  static inline fs::path dir_;
  static inline ServeProcess* server_ = nullptr;
  static inline int port_ = 0;
};

}  // namespace

TEST_F(ServeE2E, CurlProbesModelsAndSseFraming) {
  EXPECT_EQ(curl("-o /dev/null -w '%{http_code}' " + url("/health")), "200");
  EXPECT_EQ(curl("-o /dev/null -w '%{http_code}' " + url("/ready")), "200");
  auto models = json::parse(curl("-H 'Authorization: Bearer sk-admin' " + url("/v1/models")));
  ASSERT_GE(models["data"].size(), 2u) << models;
  EXPECT_EQ(models["data"][0]["id"], "tiny");
  EXPECT_EQ(models["data"][1]["id"], "a1");
  EXPECT_EQ(models["data"][1]["parent"], "tiny");
  EXPECT_NE(models["data"][1]["root"].get<std::string>().find("adapters/a1"), std::string::npos);

  // Streaming with curl -N: exactly `data: {json}\n\n` events, then `data: [DONE]\n\n`.
  const std::string sse = curl("-N -H 'Authorization: Bearer sk-admin' -H 'Content-Type: application/json' -d "
                               "'{\"model\":\"a1\",\"prompt\":\"hello\",\"max_tokens\":6,\"stream\":true,"
                               "\"stream_options\":{\"include_usage\":true}}' " +
                               url("/v1/completions"));
  bool framed = false;
  auto data = sse_data(sse, &framed);
  EXPECT_TRUE(framed) << sse;
  ASSERT_GE(data.size(), 3u) << sse;
  EXPECT_EQ(data.back(), "[DONE]");
  EXPECT_EQ(sse.substr(sse.size() - 14), "data: [DONE]\n\n");
  auto usage = json::parse(data[data.size() - 2]);
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"]["prompt_tokens"], 5);
  // The same request without streaming gives the same text (greedy).
  std::string streamed;
  for (size_t i = 0; i + 2 < data.size(); ++i) streamed += json::parse(data[i])["choices"][0]["text"].get<std::string>();
  auto plain = json::parse(post("/v1/completions", R"({"model":"a1","prompt":"hello","max_tokens":6,"temperature":0})").body);
  auto stream_greedy = curl("-N -H 'Authorization: Bearer sk-admin' -H 'Content-Type: application/json' -d "
                            "'{\"model\":\"a1\",\"prompt\":\"hello\",\"max_tokens\":6,\"stream\":true,\"temperature\":0}' " +
                            url("/v1/completions"));
  std::string greedy_text;
  for (const auto& d : sse_data(stream_greedy))
    if (d != "[DONE]") greedy_text += json::parse(d)["choices"][0]["text"].get<std::string>();
  EXPECT_EQ(greedy_text, plain["choices"][0]["text"]);
}

TEST_F(ServeE2E, AdaptersChangeTheOutputAndLoadAtRuntime) {
  auto text = [](const std::string& model) {
    auto r = post("/v1/completions", R"({"model":")" + model + R"(","prompt":"the cat","max_tokens":12,"temperature":0,"ignore_eos":true})");
    EXPECT_EQ(r.status, 200) << model << ": " << r.body;
    auto j = json::parse(r.body, nullptr, false);
    return j.is_object() ? j["choices"][0]["text"].get<std::string>() : std::string();
  };
  const std::string base = text("tiny"), a1 = text("a1"), a2 = text("a2");  // a2: lazily from --adapter-dir
  EXPECT_TRUE(base != a1 || base != a2) << "adapters made no difference";
  EXPECT_EQ(text("a1"), a1);

  // Runtime load/unload (vLLM-compatible), via curl.
  const std::string h = "-H 'Authorization: Bearer sk-admin' -H 'Content-Type: application/json' ";
  auto out = curl(h + "-d '{\"lora_name\":\"rt3\",\"lora_path\":\"" + (dir_ / "adapters/a3").string() + "\"}' " +
                  url("/v1/load_lora_adapter"));
  EXPECT_NE(out.find("Success"), std::string::npos) << out;
  EXPECT_NE(get("/v1/models").body.find("\"rt3\""), std::string::npos);
  EXPECT_EQ(post("/v1/completions", R"({"model":"rt3","prompt":"x","max_tokens":2})").status, 200);
  EXPECT_EQ(post("/v1/load_lora_adapter", R"({"lora_name":"rt3","lora_path":")" + (dir_ / "adapters/a3").string() + "\"}").status, 400);
  out = curl(h + "-w ' %{http_code}' -d '{\"lora_name\":\"rt3\"}' " + url("/v1/unload_lora_adapter"));
  EXPECT_NE(out.find("Success"), std::string::npos) << out;
  EXPECT_EQ(error_code(post("/v1/completions", R"({"model":"rt3","prompt":"x"})"), 404), "model_not_found");
  EXPECT_EQ(post("/v1/unload_lora_adapter", R"({"lora_name":"rt3"})").status, 404);
}

// lm-evaluation-harness scores continuations with echo + logprobs (max_tokens 0 or 1). A greedy
// continuation, scored that way, must come out greedy with the logprobs seen while generating.
TEST_F(ServeE2E, EchoLogprobsScoreLikeGeneration) {
  for (const std::string model : {"tiny", "a1"}) {
    const json prompt = {104, 101, 108, 108, 111, 32, 116, 104, 101, 114, 101};
    auto r = post("/v1/completions", json{{"model", model}, {"prompt", prompt}, {"max_tokens", 6}, {"temperature", 0},
                                          {"logprobs", 1}, {"ignore_eos", true}, {"return_tokens_as_token_ids", true}}.dump());
    ASSERT_EQ(r.status, 200) << r.body;
    auto gen = json::parse(r.body)["choices"][0]["logprobs"];
    ASSERT_EQ(gen["tokens"].size(), 6u) << gen;
    json ids = prompt;
    for (const auto& t : gen["tokens"]) ids.push_back(std::stoi(t.get<std::string>().substr(9)));  // "token_id:N"
    for (int max_tokens : {0, 1}) {
      r = post("/v1/completions", json{{"model", model}, {"prompt", ids}, {"max_tokens", max_tokens}, {"temperature", 0},
                                      {"logprobs", 1}, {"echo", true}, {"return_tokens_as_token_ids", true}}.dump());
      ASSERT_EQ(r.status, 200) << r.body;
      auto sc = json::parse(r.body)["choices"][0]["logprobs"];
      ASSERT_EQ(sc["tokens"].size(), ids.size() + static_cast<size_t>(max_tokens)) << sc;
      EXPECT_TRUE(sc["token_logprobs"][0].is_null());
      for (size_t i = 0; i < 6; ++i) {
        const size_t at = prompt.size() + i;
        EXPECT_EQ(sc["tokens"][at], gen["tokens"][i]);
        const double lp = sc["token_logprobs"][at], g = gen["token_logprobs"][i];
        EXPECT_NEAR(lp, g, 2e-3) << model << " token " << i;
        double best = -1e9;
        for (const auto& [k, v] : sc["top_logprobs"][at].items()) best = std::max(best, v.get<double>());
        EXPECT_NEAR(lp, best, 1e-6) << model << " token " << i << " is not greedy when scored";  // lm-eval's is_greedy
      }
    }
  }
}

TEST_F(ServeE2E, TraversalNamesAndPathsAreRejected) {
  for (const char* name : {"../a1", "..", "a/b", "/etc/passwd", "", "a1\\..\\x"}) {
    auto r = post("/v1/load_lora_adapter", json{{"lora_name", name}, {"lora_path", (dir_ / "adapters/a3").string()}}.dump());
    EXPECT_EQ(r.status, 400) << name << ": " << r.body;
  }
  // A path outside every --adapter-dir root (directly, via .., or via a symlink).
  fs::create_symlink(dir_ / "outside/evil", dir_ / "adapters/link");
  for (const std::string& path : {(dir_ / "outside/evil").string(), (dir_ / "adapters/../outside/evil").string(),
                                 (dir_ / "adapters/link").string(), std::string("/etc")}) {
    auto r = post("/v1/load_lora_adapter", json{{"lora_name", "evil"}, {"lora_path", path}}.dump());
    EXPECT_TRUE(r.status == 400 || r.status == 403) << path << ": " << r.status << " " << r.body;
  }
  fs::remove(dir_ / "adapters/link");
  // Model names that look like paths are just unknown models.
  for (const char* m : {"../outside/evil", "../../etc/passwd", "a1/../a2", "link"}) {
    auto r = post("/v1/completions", json{{"model", m}, {"prompt", "x"}, {"max_tokens", 1}}.dump());
    EXPECT_EQ(error_code(r, 404), "model_not_found") << m;
  }
}

TEST_F(ServeE2E, ApiKeysGuardAdapters) {
  const std::vector<std::string> a1key = {"Authorization: Bearer sk-a1"};
  EXPECT_EQ(error_code(post("/v1/completions", R"({"model":"tiny","prompt":"x","max_tokens":1})", {}), 401), "invalid_api_key");
  EXPECT_EQ(error_code(post("/v1/completions", R"({"model":"tiny","prompt":"x","max_tokens":1})", {"Authorization: Bearer nope"}), 401),
            "invalid_api_key");
  EXPECT_EQ(post("/v1/completions", R"({"model":"a1","prompt":"x","max_tokens":1})", a1key).status, 200);
  EXPECT_EQ(post("/v1/completions", R"({"model":"tiny","prompt":"x","max_tokens":1})", a1key).status, 200);
  // a2 exists but is not this key's: indistinguishable from a model that does not exist.
  EXPECT_EQ(error_code(post("/v1/completions", R"({"model":"a2","prompt":"x","max_tokens":1})", a1key), 404), "model_not_found");
  EXPECT_EQ(post("/v1/load_lora_adapter", R"({"lora_name":"z","lora_path":"/tmp"})", a1key).status, 403);
  auto models = json::parse(get("/v1/models", a1key).body);
  for (const auto& m : models["data"]) EXPECT_TRUE(m["id"] == "tiny" || m["id"] == "a1") << m;
}

TEST_F(ServeE2E, MetricsAfterTraffic) {
  post("/v1/completions", R"({"model":"a1","prompt":"metrics","max_tokens":3})");
  const std::string m = curl(url("/metrics"));
  for (const char* name : {"graft:num_requests_running{", "graft:num_requests_waiting{", "graft:kv_cache_usage_perc{",
                           "graft:prompt_tokens_total{", "graft:generation_tokens_total{", "graft:request_success_total{",
                           "graft:num_preemptions_total{", "graft:time_to_first_token_seconds_bucket{",
                           "graft:inter_token_latency_seconds_bucket{", "graft:e2e_request_latency_seconds_bucket{",
                           "graft:request_queue_time_seconds_bucket{", "graft:adapter_requests_total{model_name=\"tiny\",adapter=\"a1\"}",
                           "graft:adapter_loaded{model_name=\"tiny\",adapter=\"a1\"} 1"})
    EXPECT_NE(m.find(name), std::string::npos) << name;
  std::smatch g;
  ASSERT_TRUE(std::regex_search(m, g, std::regex(R"(graft:generation_tokens_total\{model_name="tiny"\} ([0-9]+))")));
  EXPECT_GT(std::stoll(g[1]), 0);
}

TEST_F(ServeE2E, OpenAIPythonClient) {
  GRAFT_REQUIRE_REFERENCE("openai");
  const std::string script = (fs::path(GRAFT_SOURCE_DIR) / "tests/serve/e2e/openai_client.py").string();
  auto [rc, out] = shell("timeout 120 " + ref_python() + " " + script + " " + url("/v1") + " sk-admin tiny a1 2>&1");
  std::cout << out;
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("ALL OK"), std::string::npos) << out;
}

TEST_F(ServeE2E, HostileInputKeepsTheServerServing) {
  const std::string ok = R"({"model":"tiny","prompt":"x","max_tokens":2})";
  EXPECT_EQ(error_code(post("/v1/completions", "{\"model\": \"tiny\", \"prompt\": "), 400), "invalid_json");
  EXPECT_EQ(error_code(post("/v1/chat/completions", "[]"), 400), "invalid_json");
  EXPECT_EQ(error_code(post("/v1/completions", R"({"model":"tiny","prompt":{"a":1}})"), 400), "invalid_type");
  EXPECT_EQ(error_code(post("/v1/completions", R"({"model":"tiny","prompt":"x","n":"2"})"), 400), "invalid_type");
  EXPECT_EQ(error_code(post("/v1/chat/completions", R"({"model":"tiny","messages":[{"role":"user","content":7}]})"), 400),
            "invalid_type");
  EXPECT_EQ(error_code(post("/v1/completions", R"({"model":"tiny","prompt":"x","max_tokens":2147483647})"), 400),
            "context_length_exceeded");
  EXPECT_EQ(error_code(post("/v1/completions", R"({"model":"tiny","prompt":"x","max_tokens":1e20})"), 400), "invalid_value");
  EXPECT_EQ(error_code(post("/v1/completions", R"({"model":"tiny","prompt":")" + std::string(200000, 'z') + "\"}"), 400),
            "context_length_exceeded");
  EXPECT_EQ(error_code(post("/v1/completions", R"({"model":"tiny","prompt":[1,2,99999]})"), 400), "invalid_value");
  EXPECT_EQ(error_code(post("/v1/completions", R"({"model":"nope","prompt":"x"})"), 404), "model_not_found");
  EXPECT_EQ(error_code(post("/v1/completions", std::string(300000, ' ')), 413), "request_too_large");
  // Declared too large: answered before the body is sent (Expect: 100-continue) or read (absurd sizes).
  auto early = raw_exchange(port_, "POST /v1/completions HTTP/1.1\r\nAuthorization: Bearer sk-admin\r\n"
                                   "Expect: 100-continue\r\nContent-Length: 300000\r\n\r\n", 5000);
  EXPECT_EQ(error_code(early, 413), "request_too_large");
  EXPECT_EQ(error_code(post("/v1/completions", "{\"a\":" + std::string(5000, '[') + std::string(5000, ']') + "}"), 400),
            "invalid_json");
  EXPECT_EQ(raw_exchange(port_, "POST /v1/completions HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n", 3000).status, 413);
  EXPECT_EQ(raw_exchange(port_, "BLAH / HTTP/9\r\n\r\n", 3000).status, 400);
  EXPECT_EQ(raw_exchange(port_, "GET /" + std::string(20000, 'a') + " HTTP/1.1\r\n\r\n", 3000).status, 414);
  // Non-HTTP bytes (a TLS ClientHello, binary junk, a lone header line): a 400 or a closed connection.
  for (const std::string& junk : {std::string("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 11), std::string("\0\0\0\r\n", 5),
                                 std::string("POST /v1/completions HTTP/1.1\r\nContent-Length: abc\r\n\r\n"),
                                 std::string("POST /v1/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")}) {
    const int st = raw_exchange(port_, junk, 3000, /*half_close=*/true).status;
    EXPECT_TRUE(st == 0 || (st >= 400 && st < 500)) << st;
  }

  // A client that vanishes mid-stream, and one that reads a long stream slowly.
  for (int i = 0; i < 3; ++i) {
    int fd = connect_loopback(port_);
    ASSERT_GE(fd, 0);
    send_all(fd, build_request("POST", "/v1/completions",
                               R"({"model":"a1","prompt":"bye","max_tokens":400,"stream":true,"ignore_eos":true})", kAdmin));
    EXPECT_FALSE(recv_some(fd, 10000).empty());
    ::close(fd);
  }
  int slow = connect_loopback(port_);
  send_all(slow, build_request("POST", "/v1/chat/completions",
                               R"({"model":"tiny","messages":[{"role":"user","content":"hi"}],"max_tokens":64,"stream":true,"ignore_eos":true,"logprobs":true,"top_logprobs":5})",
                               kAdmin));
  const auto t0 = std::chrono::steady_clock::now();
  expect_still_serving();  // while the slow client has not read a byte
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 10s);
  std::string all;
  for (;;) {
    std::string s = recv_some(slow, 10000, 512);
    if (s.empty()) break;
    all += s;
    std::this_thread::sleep_for(2ms);
  }
  ::close(slow);
  auto r = parse_response(all);
  bool framed = false;
  auto data = sse_data(r.body, &framed);
  EXPECT_TRUE(framed);
  ASSERT_FALSE(data.empty());
  EXPECT_EQ(data.back(), "[DONE]");
  // The vanished clients' requests were cancelled: nothing is left running.
  const auto t1 = std::chrono::steady_clock::now();
  std::string m;
  while (std::chrono::steady_clock::now() - t1 < 10s) {
    m = curl(url("/metrics"));
    if (m.find("graft:num_requests_running{model_name=\"tiny\"} 0\n") != std::string::npos) break;
    std::this_thread::sleep_for(50ms);
  }
  EXPECT_NE(m.find("graft:num_requests_running{model_name=\"tiny\"} 0\n"), std::string::npos);
  EXPECT_NE(m.find("finished_reason=\"abort\"} 3"), std::string::npos) << m.substr(m.find("graft:request_success_total"), 400);
  expect_still_serving();
}

TEST_F(ServeE2E, FuzzedBodiesNeverCrashOrHang) {
  // Seeded mutations of valid bodies: byte flips, truncations, insertions and JSON type swaps.
  const std::vector<std::string> seeds = {
      R"({"model":"tiny","prompt":"hello","max_tokens":2,"temperature":0.5,"top_p":0.9,"stop":["x"],"logprobs":1,"echo":true})",
      R"({"model":"a1","prompt":[104,105],"max_tokens":1,"n":2,"stream":true,"stream_options":{"include_usage":true}})",
      R"({"model":"tiny","messages":[{"role":"system","content":"s"},{"role":"user","content":[{"type":"text","text":"q"}]}],"max_tokens":2,"logprobs":true,"top_logprobs":2})",
      R"({"model":"a1","messages":[{"role":"user","content":"hi"}],"max_tokens":1,"stream":true,"seed":3,"stop":"\n"})",
  };
  const std::vector<std::string> values = {"null", "true", "-1", "0", "1e308", "\"\"", "\"x\"", "[]", "{}", "[[[]]]",
                                           "-0.0", "18446744073709551616", "\"\\ud800\"", "[1,\"a\"]"};
  std::mt19937 rng(20240611);
  auto mutate = [&](std::string s) {
    const int k = static_cast<int>(rng() % 6);
    const size_t pos = s.empty() ? 0 : rng() % s.size();
    switch (k) {
      case 0: s[pos] = static_cast<char>(rng() % 256); break;                               // byte flip
      case 1: s.resize(pos); break;                                                          // truncation
      case 2: s.insert(pos, 1, "{}[]\",:0\\"[rng() % 9]); break;                             // structural insert
      case 3: s.erase(pos, 1 + rng() % 8); break;                                            // deletion
      default: {                                                                             // type swap of a value
        std::vector<size_t> colons;
        for (size_t i = 0; i < s.size(); ++i) if (s[i] == ':') colons.push_back(i);
        if (colons.empty()) break;
        const size_t c = colons[rng() % colons.size()] + 1;
        size_t end = c;
        int depth = 0;
        bool str = false;
        for (; end < s.size(); ++end) {
          const char ch = s[end];
          if (str) { if (ch == '\\') ++end; else if (ch == '"') str = false; continue; }
          if (ch == '"') str = true;
          else if (ch == '[' || ch == '{') ++depth;
          else if ((ch == ']' || ch == '}') && depth-- == 0) break;
          else if (ch == ',' && depth == 0) break;
        }
        s.replace(c, end - c, values[rng() % values.size()]);
      }
    }
    return s;
  };
  std::map<int, int> statuses;
  int bad = 0;
  const auto t0 = std::chrono::steady_clock::now();
  const int kBodies = 3000;
  for (int i = 0; i < kBodies; ++i) {
    std::string body = seeds[static_cast<size_t>(i) % seeds.size()];
    const int rounds = 1 + static_cast<int>(rng() % 3);
    for (int m = 0; m < rounds; ++m) body = mutate(body);
    const bool chat = body.find("messages") != std::string::npos ? (rng() % 4 != 0) : (rng() % 4 == 0);
    auto r = post(chat ? "/v1/chat/completions" : "/v1/completions", body);
    ++statuses[r.status];
    const bool is_sse = r.headers.count("content-type") && r.headers["content-type"] == "text/event-stream";
    bool well_formed = r.status >= 200 && r.status < 500;
    if (well_formed && is_sse) {
      bool framed = false;
      auto data = sse_data(r.body, &framed);
      well_formed = framed && !data.empty() && data.back() == "[DONE]";
    } else if (well_formed) {
      json j = json::parse(r.body, nullptr, false);
      well_formed = j.is_object() && (r.status == 200 ? j.contains("choices") : j.contains("error"));
    }
    if (!well_formed && ++bad <= 5)
      ADD_FAILURE() << "status " << r.status << " for body " << json(body).dump(-1, ' ', false, json::error_handler_t::replace)
                    << "\n" << r.body.substr(0, 300);
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::string summary;
  for (auto [s, n] : statuses) summary += " " + std::to_string(s) + ":" + std::to_string(n);
  std::cout << "fuzz: " << kBodies << " bodies in " << secs << " s; statuses" << summary << "\n";
  EXPECT_EQ(bad, 0);
  EXPECT_EQ(statuses.count(0), 0u) << "no response (hang or reset)";
  expect_still_serving();
}

TEST_F(ServeE2E, WrkLoadHasNoErrors) {
  if (!have_program("wrk")) GTEST_SKIP() << "wrk is not installed (scripts/setup.sh installs it)";
  const fs::path lua = dir_ / "post.lua";
  testutil::write_text(lua, R"(wrk.method = "POST"
wrk.body = '{"model":"tiny","prompt":"hi","max_tokens":2}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-admin"
)");
  auto [rc, out] = shell("timeout 30 wrk -t 2 -c 8 -d 5s -s " + lua.string() + " " + url("/v1/completions") + " 2>&1");
  std::cout << out;
  ASSERT_EQ(rc, 0) << out;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(out, m, std::regex(R"(Requests/sec:\s+([0-9.]+))"))) << out;
  const double rps = std::stod(m[1]);
  int non2xx = 0;
  if (std::regex_search(out, m, std::regex(R"(Non-2xx or 3xx responses:\s+([0-9]+))"))) non2xx = std::stoi(m[1]);
  std::cout << "wrk: " << rps << " req/s, non-2xx " << non2xx << "\n";
  RecordProperty("wrk_requests_per_sec", std::to_string(rps));
  EXPECT_GT(rps, 0);
  EXPECT_EQ(non2xx, 0) << out;
  EXPECT_EQ(out.find("Socket errors"), std::string::npos) << out;
  expect_still_serving();
}

// Graceful shutdown on its own server: SIGTERM lets an in-flight stream finish, refuses new work,
// and exits 0.
TEST(ServeE2EShutdown, SigtermDrainsInFlightAndExitsZero) {
  const fs::path dir = fs::temp_directory_path() / ("graft_serve_e2e_stop_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  auto r = run_graft("init-model --arch qwen3_moe --preset tiny --seed 5 --out " + (dir / "base").string());
  ASSERT_EQ(r.rc, 0) << r.err;
  ServeProcess s;
  ASSERT_TRUE(s.start({(dir / "base").string(), "--served-model-name", "m"}, dir)) << s.log();
  int fd = connect_loopback(s.port());
  ASSERT_GE(fd, 0);
  send_all(fd, build_request("POST", "/v1/completions", R"({"prompt":"go","max_tokens":150,"stream":true,"ignore_eos":true})"));
  std::string all = recv_some(fd, 10000);
  ASSERT_FALSE(all.empty());
  ::kill(s.pid(), SIGTERM);
  // New requests are refused (503 while draining, or the connection once the listener closed).
  std::this_thread::sleep_for(50ms);
  auto late = http_call(s.port(), "POST", "/v1/completions", R"({"prompt":"x","max_tokens":1})", {}, 5000);
  EXPECT_TRUE(late.status == 503 || late.status == 0) << late.status << " " << late.body;
  for (;;) {
    std::string x = recv_some(fd, 10000);
    if (x.empty()) break;
    all += x;
    if (response_complete(all)) break;
  }
  ::close(fd);
  auto resp = parse_response(all);
  auto data = sse_data(resp.body);
  ASSERT_FALSE(data.empty()) << all;
  EXPECT_EQ(data.back(), "[DONE]");
  std::string text;
  for (const auto& d : data)
    if (d != "[DONE]") text += json::parse(d)["choices"][0]["text"].get<std::string>();
  auto usage_req = json::parse(data[data.size() - 2]);
  EXPECT_EQ(usage_req["choices"][0]["finish_reason"], "length");
  const std::string log = s.log();
  EXPECT_EQ(s.wait(30), 0) << log;
  EXPECT_NE(s.log().find("SIGTERM received"), std::string::npos) << s.log();
  fs::remove_all(dir);
}
