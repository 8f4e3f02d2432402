// HttpServer: the OpenAI-compatible HTTP API of `graft serve` (cpp-httplib, one thread pool).
//
//   POST /v1/completions, /v1/chat/completions   (stream: SSE "data: {chunk}\n\n" ... "data: [DONE]\n\n")
//   GET  /v1/models, /v1/models/{id}            (base + adapters; adapters have parent = base, root = path)
//   POST /v1/load_lora_adapter, /v1/unload_lora_adapter   (only with enable_lora_runtime_updates)
//   GET  /health (process up), /ready (serving, not shutting down), /metrics (Prometheus text)
//
// Every error is an OpenAI error object {"error": {"message", "type", "param", "code"}} with its
// HTTP status (docs/serving.md, "HTTP API"). The HTTP layer never blocks the engine: Sink callbacks
// only push events into a per-request queue, which the request's HTTP thread drains (detokenizing,
// applying stop strings, formatting, writing to a possibly slow socket). A client that disconnects
// cancels its engine requests: streaming at the next write, non-streaming within 50 ms.
//
// The engine and the adapter registry are reached through GenerationService, so that the HTTP layer
// can be tested with a scripted fake (tests/serve/http) and runs on the real Engine in `graft serve`
// (make_engine_service).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "graft/chat_template/chat_template.hpp"
#include "graft/serve/adapter_manager.hpp"
#include "graft/serve/engine.hpp"
#include "graft/serve/http_routes.hpp"
#include "graft/serve/metrics.hpp"
#include "graft/tokenizer/tokenizer.hpp"

namespace graft::serve {

// What one API key may use. The base model is open to every valid key; `adapters` lists the
// adapters it may use (and its own /v1/models listing), `all` grants every adapter and the
// runtime adapter endpoints.
struct ApiGrant {
  bool all = false;
  std::set<std::string> adapters;
  bool allows_adapter(const std::string& name) const { return all || adapters.count(name) > 0; }
};

class ApiKeys {
 public:
  // Adds a key (graft::Error on an empty key or one with whitespace/control characters). A key given
  // twice gets the union of its grants.
  void add(const std::string& key, const ApiGrant& grant);
  // Keys file: a JSON object {"KEY": ["adapter", ...] | "*"}. Throws graft::Error naming `origin`.
  void add_json(std::string_view text, const std::string& origin);
  void add_file(const std::string& path);
  bool enabled() const { return !keys_.empty(); }
  size_t size() const { return keys_.size(); }
  // The grant of KEY, or nullptr (constant-time comparison against every key).
  const ApiGrant* find(std::string_view key) const;
  // From an Authorization header value "Bearer KEY" (scheme case-insensitive); nullptr otherwise.
  const ApiGrant* authorize(std::string_view authorization) const;
  // The key a grant of this set belongs to ("" for any other pointer).
  std::string key_of(const ApiGrant* grant) const;
  // The grants whose key satisfies `match`.
  std::vector<const ApiGrant*> grants_where(const std::function<bool(std::string_view key)>& match) const;

 private:
  std::vector<std::pair<std::string, ApiGrant>> keys_;
};

// The engine and the adapter registry, as the HTTP layer uses them. Implementations are thread-safe.
class GenerationService {
 public:
  virtual ~GenerationService() = default;
  virtual uint64_t submit(GenRequest req, Sink sink) = 0;  // ApiError 4xx/5xx like Engine::submit
  virtual void cancel(uint64_t id) = 0;
  virtual EngineStats stats() const = 0;
  virtual bool adapter_known(const std::string& name) = 0;
  virtual std::vector<AdapterInfo> adapters() const = 0;
  virtual size_t adapter_cache_bytes() const = 0;
  virtual void load_adapter(const std::string& name, const std::string& path) = 0;  // ApiError on failure
  virtual void unload_adapter(const std::string& name) = 0;                         // ApiError 404 if unknown
};
std::unique_ptr<GenerationService> make_engine_service(Engine& engine, AdapterManager& adapters);

struct HttpServerOptions {
  std::string host = "127.0.0.1";
  int port = 8000;                 // 0: any free port (bind() returns it)
  std::string served_model_name;   // the base's id in "model" and /v1/models
  std::string model_path;          // the base's `root` in /v1/models
  int64_t vocab_size = 0;          // prompt token ids must be below it (0: unchecked)
  size_t max_request_bytes = size_t(8) << 20;  // larger bodies get 413
  int threads = 64;                // HTTP workers: each holds one request from its complete head to its response
  bool enable_lora_runtime_updates = false;
  // Transport limits (docs/serving.md, "Security"; serve/src/http/connection_gate.hpp): connections
  // beyond these get 503; the request line + headers must fit max_header_bytes (431; a request line
  // over 8 KiB: 414) and arrive within header_timeout_s (408); a body may stall read_timeout_s and must
  // average 64 KiB/s after that (408); idle keep-alive connections close after keep_alive_timeout_s.
  // Reading request heads takes no worker: trickling clients cannot starve the others.
  int max_connections = 512;       // at most 768 (cpp-httplib 0.11 refuses socket numbers >= 1024)
  int max_connections_per_client = 128;
  size_t max_header_bytes = size_t(64) << 10;
  double header_timeout_s = 10, read_timeout_s = 10, write_timeout_s = 30, keep_alive_timeout_s = 5;
  double drain_timeout_s = 60;     // graceful shutdown: wait this long, then cancel what is left
  double stream_heartbeat_s = 15;  // SSE comment line after this long without output
};

class HttpServer {
 public:
  HttpServer(HttpServerOptions opts, GenerationService& service, const tokenizer::Tokenizer& tok,
             const chat_template::ChatTemplate* chat, std::vector<int32_t> eos_ids, ApiKeys keys = {});
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds host:port (graft::Error naming them on failure); returns the bound port.
  int bind();
  // Serves until shutdown() completes (blocking; call bind() first).
  void serve();
  // Graceful shutdown, from any thread: new requests get 503 at once, in-flight requests finish
  // (after drain_timeout_s they are cancelled), then serve() returns. Idempotent; blocks until done.
  void shutdown();
  bool shutting_down() const;
  // Registers an extra route group (e.g. the fine-tuning API); call before serve().
  void add_routes(const RouteExtension& ext);
  // Lets every API key for which match(key) holds use `adapter` (thread-safe, any time).
  void grant_adapter(const std::function<bool(std::string_view key)>& match, const std::string& adapter);
  int in_flight() const;  // generation requests not yet fully answered
  Metrics& metrics();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace graft::serve
