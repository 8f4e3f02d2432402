// The HTTP transport of `graft serve` with raw-socket clients (serve/src/http/connection_gate.hpp):
// trickling clients do not hold workers, connection caps answer a clean 503, request line / header
// limits answer 414 / 431 without buffering without bound, heads and bodies time out (408), idle
// keep-alive connections close, a vanished non-streaming client cancels its engine request, and a
// POST without a body is a request with an empty body.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <atomic>
#include <future>
#include <thread>

#include "fake_service.hpp"
#include "graft/serve/http_server.hpp"
#include "raw_http.hpp"
#include "tiny_tokenizer.hpp"

using namespace graft;
using namespace graft::serve;
using namespace graft::testing;
using json = nlohmann::json;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

std::string code_of(const HttpResponse& r) {
  json j = json::parse(r.body, nullptr, false);
  return j.is_object() && j.contains("error") && j["error"]["code"].is_string() ? j["error"]["code"].get<std::string>() : "";
}

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

class Transport : public ::testing::Test {
 protected:
  void start(HttpServerOptions o) {
    o.port = 0;
    o.served_model_name = "base";
    o.model_path = "/models/base";
    o.vocab_size = 300;
    o.drain_timeout_s = 10;
    server_ = std::make_unique<HttpServer>(o, fake_, tiny_tok(), &tiny_chat(), std::vector<int32_t>{'.'});
    // An endpoint that takes no body (like POST /v1/fine_tuning/jobs/{id}/cancel).
    server_->add_routes([](RouteContext& ctx) {
      ctx.server.Post("/v1/test/ping", [ctx](const httplib::Request& req, httplib::Response& res) {
        ctx.send_json(res, 200, json{{"pong", true}, {"body_bytes", req.body.size()}});
      });
    });
    port_ = server_->bind();
    thread_ = std::thread([this] { server_->serve(); });
  }
  static HttpServerOptions opts(int threads) {
    HttpServerOptions o;
    o.threads = threads;
    return o;
  }
  void TearDown() override {
    if (server_) server_->shutdown();
    if (thread_.joinable()) thread_.join();
  }
  // A normal request: its status and how long it took.
  std::pair<int, double> timed_completion() {
    const auto t0 = Clock::now();
    const int st = http_call(port_, "POST", "/v1/completions", R"({"prompt":"x","max_tokens":2})", {}, 10000).status;
    return {st, seconds_since(t0)};
  }
  // n sockets that send a request line one byte at a time, every 100 ms, until stopped.
  struct Tricklers {
    std::vector<int> fds;
    std::atomic<bool> stop{false};
    std::thread t;
    Tricklers(int port, int n) {
      for (int i = 0; i < n; ++i) fds.push_back(connect_loopback(port));
      t = std::thread([this] {
        const std::string line = "POST /v1/completions HTTP/1.1\r\nX-Slow: " + std::string(1000, 'a');
        for (size_t k = 0; k < line.size() && !stop; ++k) {
          for (int fd : fds) ::send(fd, &line[k], 1, MSG_NOSIGNAL);
          std::this_thread::sleep_for(100ms);
        }
      });
    }
    ~Tricklers() {
      stop = true;
      t.join();
      for (int fd : fds) ::close(fd);
    }
  };

  FakeService fake_;
  std::unique_ptr<HttpServer> server_;
  std::thread thread_;
  int port_ = 0;
};

}  // namespace

TEST_F(Transport, FiftyTricklersDoNotDelayANormalRequest) {
  start(opts(16));
  Tricklers slow(port_, 50);
  std::this_thread::sleep_for(500ms);  // they are all mid-request
  for (int i = 0; i < 3; ++i) {
    auto [st, s] = timed_completion();
    EXPECT_EQ(st, 200);
    EXPECT_LT(s, 1.0) << "a normal request waited behind trickling clients";
  }
}

TEST_F(Transport, SeventyTricklersVersusSixtyFourThreads) {
  start(opts(64));
  Tricklers slow(port_, 70);
  std::this_thread::sleep_for(500ms);
  for (int i = 0; i < 3; ++i) {
    auto [st, s] = timed_completion();
    EXPECT_EQ(st, 200);
    EXPECT_LT(s, 1.0);
  }
}

TEST_F(Transport, SlowHeadsAndBodiesTimeOutWith408) {
  auto o = opts(4);
  o.header_timeout_s = 1;
  o.read_timeout_s = 1;
  start(o);
  // Head: a few bytes, then nothing more.
  int head = connect_loopback(port_);
  send_all(head, "POST /v1/completions HTTP/1.1\r\nHost: x\r\n");
  // Body: a complete head, then a body that stalls.
  int body = connect_loopback(port_);
  send_all(body, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"prompt\":");
  const auto t0 = Clock::now();
  auto rh = read_response(head, 5000);
  EXPECT_EQ(rh.status, 408) << rh.body;
  EXPECT_EQ(code_of(rh), "request_timeout");
  auto rb = read_response(body, 5000);
  EXPECT_EQ(rb.status, 408) << rb.body;
  EXPECT_EQ(code_of(rb), "request_timeout");
  EXPECT_LT(seconds_since(t0), 3.0);
  // Both connections are closed afterwards.
  EXPECT_TRUE(recv_some(head, 3000).empty());
  EXPECT_TRUE(recv_some(body, 3000).empty());
  ::close(head);
  ::close(body);
  EXPECT_EQ(fake_.submitted.load(), 0);
}

TEST_F(Transport, RequestLineAndHeaderLimits) {
  auto o = opts(4);
  o.max_header_bytes = 16 << 10;
  start(o);
  // An endless request line is refused once it passes 8 KiB, without waiting for its end.
  int fd = connect_loopback(port_);
  send_all(fd, "GET /" + std::string(9000, 'a'));
  auto r = read_response(fd, 5000);
  ::close(fd);
  EXPECT_EQ(r.status, 414);
  EXPECT_EQ(code_of(r), "uri_too_long");
  // One header line over 8 KiB, too many lines, too many bytes in all: 431.
  fd = connect_loopback(port_);
  send_all(fd, "GET /health HTTP/1.1\r\nX-Big: " + std::string(9000, 'b'));
  r = read_response(fd, 5000);
  ::close(fd);
  EXPECT_EQ(r.status, 431);
  EXPECT_EQ(code_of(r), "header_too_large");
  std::string many = "GET /health HTTP/1.1\r\n";
  for (int i = 0; i < 200; ++i) many += "X-H" + std::to_string(i) + ": 1\r\n";
  EXPECT_EQ(raw_exchange(port_, many + "\r\n", 5000).status, 431);
  std::string big = "GET /health HTTP/1.1\r\n";
  for (int i = 0; i < 3; ++i) big += "X-Part" + std::to_string(i) + ": " + std::string(7000, 'c') + "\r\n";
  r = raw_exchange(port_, big + "\r\n", 5000);
  EXPECT_EQ(r.status, 431);
  EXPECT_NE(r.body.find("--max-header-bytes"), std::string::npos) << r.body;
  // A client streaming headers forever is cut off at the limit (its connection closed).
  fd = connect_loopback(port_);
  send_all(fd, "GET /health HTTP/1.1\r\n");
  size_t sent = 0;
  for (int i = 0; i < 1000; ++i) {
    if (!send_all(fd, "X-More: " + std::string(50, 'd') + "\r\n")) break;
    sent += 60;
  }
  r = read_response(fd, 5000);
  ::close(fd);
  EXPECT_EQ(r.status, 431);
  // Within limits: served.
  EXPECT_EQ(raw_exchange(port_, "GET /health HTTP/1.1\r\nX-Ok: " + std::string(7000, 'e') + "\r\n\r\n", 5000).status, 200);
}

TEST_F(Transport, ConnectionCapsAnswerA503AndSpareOtherClients) {
  auto o = opts(8);
  o.max_connections_per_client = 4;
  start(o);
  std::vector<int> held;
  for (int i = 0; i < 4; ++i) held.push_back(connect_loopback(port_, "127.0.0.1"));
  std::this_thread::sleep_for(200ms);
  // A fifth connection from the same address: 503 with an OpenAI error object, then closed.
  int fifth = connect_loopback(port_, "127.0.0.1");
  ASSERT_GE(fifth, 0);
  send_all(fifth, build_request("GET", "/health", ""));
  auto r = read_response(fifth, 5000);
  ::close(fifth);
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(code_of(r), "too_many_connections");
  EXPECT_NE(r.body.find("--max-connections-per-client"), std::string::npos) << r.body;
  EXPECT_EQ(r.headers["retry-after"], "1");
  // Another client address is not affected.
  int other = connect_loopback(port_, "127.0.0.2");
  ASSERT_GE(other, 0) << "127.0.0.2 is a loopback address on Linux";
  send_all(other, build_request("POST", "/v1/completions", R"({"prompt":"x","max_tokens":2})"));
  EXPECT_EQ(read_response(other, 5000).status, 200);
  ::close(other);
  // Closing one of the held connections frees a slot.
  ::close(held.back());
  held.pop_back();
  std::this_thread::sleep_for(300ms);
  EXPECT_EQ(http_call(port_, "GET", "/health").status, 200);
  for (int fd : held) ::close(fd);
}

TEST_F(Transport, TwoHundredConcurrentConnectionsAreServedOrGetAClean503) {
  auto o = opts(16);
  o.max_connections_per_client = 150;
  start(o);
  std::vector<int> fds;
  for (int i = 0; i < 200; ++i) fds.push_back(connect_loopback(port_));
  for (int fd : fds) ASSERT_GE(fd, 0);
  for (int fd : fds) send_all(fd, build_request("POST", "/v1/completions", R"({"prompt":"x","max_tokens":3})"));
  int ok = 0, refused = 0, other = 0;
  for (int fd : fds) {
    auto r = read_response(fd, 20000);
    ::close(fd);
    if (r.status == 200 && json::parse(r.body)["choices"][0]["text"] == "Hel") ++ok;
    else if (r.status == 503 && code_of(r) == "too_many_connections") ++refused;
    else {
      ++other;
      ADD_FAILURE() << "status " << r.status << ": " << r.body;
      if (other > 3) break;
    }
  }
  EXPECT_EQ(other, 0);
  EXPECT_EQ(ok + refused, 200);
  EXPECT_GE(ok, 150);
  EXPECT_EQ(http_call(port_, "GET", "/health").status, 200);
}

TEST_F(Transport, PostWithoutABodyIsAnEmptyBody) {
  start(opts(4));
  // No Content-Length, no Transfer-Encoding (curl -X POST): answered at once, not after a timeout.
  const auto t0 = Clock::now();
  auto r = raw_exchange(port_, "POST /v1/test/ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 5000);
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(json::parse(r.body)["body_bytes"], 0);
  EXPECT_LT(seconds_since(t0), 1.0);
  // Twice on one keep-alive connection, pipelined.
  int fd = connect_loopback(port_);
  send_all(fd, "POST /v1/test/ping HTTP/1.1\r\nHost: x\r\n\r\nPOST /v1/test/ping HTTP/1.1\r\nHost: x\r\n\r\n");
  std::string all;
  int answers = 0;
  for (int i = 0; i < 50 && answers < 2; ++i) {
    all += recv_some(fd, 200);
    answers = 0;
    for (size_t p = all.find("HTTP/1.1 200"); p != std::string::npos; p = all.find("HTTP/1.1 200", p + 1)) ++answers;
  }
  ::close(fd);
  EXPECT_EQ(answers, 2) << all;
  // A generation endpoint without a body: a JSON error about the body, not "malformed HTTP".
  r = raw_exchange(port_, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 5000);
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(code_of(r), "invalid_json");
}

TEST_F(Transport, IdleKeepAliveConnectionsAreClosed) {
  auto o = opts(4);
  o.keep_alive_timeout_s = 1;
  start(o);
  int fd = connect_loopback(port_);
  send_all(fd, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
  auto r = read_response(fd, 5000);
  EXPECT_EQ(r.status, 200);
  EXPECT_NE(r.headers["connection"], "close");
  const auto t0 = Clock::now();
  EXPECT_TRUE(recv_some(fd, 5000).empty());  // EOF: the server closed the idle connection
  const double idle = seconds_since(t0);
  EXPECT_GT(idle, 0.5);
  EXPECT_LT(idle, 3.0);
  ::close(fd);
}

TEST_F(Transport, VanishedNonStreamingClientCancelsItsEngineRequest) {
  fake_.step_us = 5000;
  fake_.max_model_len = 100000;
  start(opts(4));
  int fd = connect_loopback(port_);
  send_all(fd, build_request("POST", "/v1/completions", R"({"prompt":"x","max_tokens":5000,"ignore_eos":true})"));
  const auto t0 = Clock::now();
  while (fake_.active() == 0 && seconds_since(t0) < 5) std::this_thread::sleep_for(5ms);
  ASSERT_EQ(fake_.active(), 1);
  ::close(fd);  // 5000 tokens at 5 ms would take 25 s
  const auto t1 = Clock::now();
  while ((fake_.active() > 0 || server_->in_flight() > 0) && seconds_since(t1) < 5) std::this_thread::sleep_for(5ms);
  EXPECT_EQ(fake_.active(), 0);
  EXPECT_EQ(server_->in_flight(), 0);
  EXPECT_GE(fake_.cancelled.load(), 1);
  EXPECT_LT(seconds_since(t1), 1.0);
  EXPECT_EQ(http_call(port_, "POST", "/v1/completions", R"({"prompt":"x","max_tokens":2})").status, 200);
}
