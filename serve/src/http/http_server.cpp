// HttpServer: routes, authentication, generation requests (plain and SSE), graceful shutdown.
// See graft/serve/http_server.hpp and docs/serving.md ("HTTP API", "Security").
#include "graft/serve/http_server.hpp"

#include <fmt/format.h>
#include <httplib.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstring>
#include <ctime>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "connection_gate.hpp"
#include "graft/serve/api_error.hpp"
#include "openai_format.hpp"
#include "openai_protocol.hpp"
#include "text_stream.hpp"

namespace graft::serve {

using http::ojson;

namespace {

using Clock = std::chrono::steady_clock;

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// One callback of the engine, as queued for the request's HTTP thread.
struct Event {
  enum Kind { kPromptLogprobs, kToken, kFinish } kind = kToken;
  int choice = 0;
  TokenOut tok;
  std::vector<TokenOut> prompt_lps;
  Finish fin;
  Clock::time_point t;
};

// Shared by the engine's callbacks (producer) and the HTTP thread (consumer). The engine may call
// back after the HTTP side is gone (a cancelled request still gets on_finish), so it is shared.
struct EventQueue {
  explicit EventQueue(int n) : stop(new std::atomic<bool>[static_cast<size_t>(n)]) {
    for (int i = 0; i < n; ++i) stop[i] = false;
  }
  void push(Event e) {
    {
      std::lock_guard lk(mu);
      q.push_back(std::move(e));
    }
    cv.notify_one();
  }
  // Moves every queued event into `out`, waiting up to `timeout` for the first one.
  void pop_all(std::deque<Event>& out, std::chrono::milliseconds timeout) {
    std::unique_lock lk(mu);
    cv.wait_for(lk, timeout, [&] { return !q.empty(); });
    while (!q.empty()) {
      out.push_back(std::move(q.front()));
      q.pop_front();
    }
  }
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Event> q;
  std::unique_ptr<std::atomic<bool>[]> stop;  // per choice: the HTTP side no longer wants tokens
  std::atomic<bool> cancelled{false};        // the whole request (client gone, shutdown)
};

Sink make_sink(const std::shared_ptr<EventQueue>& q, int choice) {
  Sink s;
  s.on_prompt_logprobs = [q, choice](const std::vector<TokenOut>& lps) {
    Event e;
    e.kind = Event::kPromptLogprobs;
    e.choice = choice;
    e.prompt_lps = lps;
    e.t = Clock::now();
    q->push(std::move(e));
  };
  s.on_token = [q, choice](const TokenOut& t) {
    if (q->cancelled.load(std::memory_order_relaxed) || q->stop[choice].load(std::memory_order_relaxed)) return false;
    Event e;
    e.kind = Event::kToken;
    e.choice = choice;
    e.tok = t;
    e.t = Clock::now();
    q->push(std::move(e));
    return true;
  };
  s.on_finish = [q, choice](const Finish& f) {
    Event e;
    e.kind = Event::kFinish;
    e.choice = choice;
    e.fin = f;
    e.t = Clock::now();
    q->push(std::move(e));
  };
  return s;
}

const char* route_label(const std::string& path) {
  static const char* kRoutes[] = {"/v1/completions", "/v1/chat/completions", "/v1/models", "/v1/load_lora_adapter",
                                  "/v1/unload_lora_adapter", "/health", "/ready", "/metrics"};
  for (const char* r : kRoutes)
    if (path == r) return r;
  if (path.rfind("/v1/models/", 0) == 0) return "/v1/models/{id}";
  return "other";
}

void send_json(httplib::Response& res, int status, const ojson& j) {
  res.status = status;
  res.set_content(http::dump(j), "application/json");
}

void send_error(httplib::Response& res, const ApiError& e) {
  if (e.status == 401) res.set_header("WWW-Authenticate", "Bearer");
  send_json(res, e.status, http::error_json(e));
}

ApiError server_error(const std::string& message) { return ApiError(500, "server_error", message, "", "internal_error"); }

}  // namespace

// ---------------------------------------------------------------------------------------------
struct HttpServer::Impl {
  Impl(HttpServerOptions o, GenerationService& s, const tokenizer::Tokenizer& t, const chat_template::ChatTemplate* c,
       std::vector<int32_t> e, ApiKeys k)
      : opts(std::move(o)), service(s), tok(t), chat(c), eos(std::move(e)), keys(std::move(k)),
        metrics(opts.served_model_name), created(static_cast<int64_t>(std::time(nullptr))) {}

  class GenerationRun;
  // Counts a generation request until its response is completely written.
  struct InFlight {
    explicit InFlight(Impl& i) : impl(i) {
      std::lock_guard lk(impl.mu);
      ++impl.inflight;
    }
    ~InFlight() {
      {
        std::lock_guard lk(impl.mu);
        --impl.inflight;
      }
      impl.cv.notify_all();
    }
    Impl& impl;
  };

  void setup_routes();
  // Adapters granted at run time (fine-tuned adapters go to their owner's key).
  mutable std::mutex grant_mu;
  std::map<const ApiGrant*, std::set<std::string>> granted;
  bool may_use(const ApiGrant* g, const std::string& adapter) const {
    if (!g || g->allows_adapter(adapter)) return true;
    std::lock_guard lk(grant_mu);
    auto it = granted.find(g);
    return it != granted.end() && it->second.count(adapter) > 0;
  }
  void handle_generation(const httplib::Request& req, httplib::Response& res, const httplib::ContentReader& reader,
                         http::Endpoint ep);
  std::string read_body(const httplib::Request& req, httplib::Response& res, const httplib::ContentReader& reader);
  const ApiGrant* authorize(const httplib::Request& req);  // nullptr: auth disabled (everything allowed)
  std::string resolve_model(const std::string& model, const ApiGrant* grant);
  ojson model_card(const std::string& id, const std::string& root, const std::string& parent, int64_t max_len) const;
  template <class F>
  void guarded(httplib::Response& res, F&& f);
  void shutdown();

  HttpServerOptions opts;
  GenerationService& service;
  const tokenizer::Tokenizer& tok;
  const chat_template::ChatTemplate* chat;
  std::vector<int32_t> eos;
  ApiKeys keys;
  Metrics metrics;
  const int64_t created;
  http::GatedServer svr;

  std::atomic<bool> shutting_down{false};
  std::atomic<int> serve_state{0};  // 0 not started, 1 serving, 2 returned
  std::mutex mu;                    // inflight, runs
  std::condition_variable cv;
  int inflight = 0;
  std::set<GenerationRun*> runs;
  std::mutex shutdown_mu;
  bool shutdown_done = false;
};

// One generation request over its choices (prompts x n): submission, event processing, output.
class HttpServer::Impl::GenerationRun {
 public:
  GenerationRun(Impl& srv, std::shared_ptr<InFlight> flight, http::ParsedRequest req,
                std::vector<http::TokenizedPrompt> prompts, std::string adapter)
      : srv_(srv), flight_(std::move(flight)), req_(std::move(req)), prompts_(std::move(prompts)),
        adapter_(std::move(adapter)), created_(static_cast<int64_t>(std::time(nullptr))) {
    chat_ = req_.endpoint == http::Endpoint::kChat;
    id_ = http::make_id(chat_ ? "chatcmpl-" : "cmpl-");
    model_ = req_.model.empty() ? srv_.opts.served_model_name : req_.model;
    want_lp_ = req_.logprobs >= 0;
    const int n = static_cast<int>(prompts_.size()) * req_.n;
    queue_ = std::make_shared<EventQueue>(n);
    for (int i = 0; i < n; ++i) {
      Choice c;
      c.index = i;
      c.prompt = i / req_.n;
      c.text = std::make_unique<http::ChoiceText>(srv_.tok, req_.skip_special_tokens, req_.stop, req_.include_stop_str_in_output);
      choices_.push_back(std::move(c));
    }
  }

  ~GenerationRun() {
    {
      std::lock_guard lk(srv_.mu);
      srv_.runs.erase(this);
    }
    cancel_unfinished();
    // Choices whose response was abandoned (client gone): take what the engine already reported,
    // and count the rest as aborted, so that the metrics see every request.
    std::deque<Event> evs;
    queue_->pop_all(evs, std::chrono::milliseconds(0));
    for (auto& e : evs) {
      Choice& c = choices_[static_cast<size_t>(e.choice)];
      if (e.kind == Event::kFinish && !c.finished) finish_quietly(c, e.fin);
    }
    for (auto& c : choices_)
      if (c.submitted && !c.finished) {
        Finish f;
        f.reason = "abort";
        f.prompt_tokens = static_cast<int>(prompts_[static_cast<size_t>(c.prompt)].ids.size());
        f.completion_tokens = c.tokens;
        finish_quietly(c, f);
      }
  }

  // Submits every choice; on failure cancels the submitted ones and rethrows the ApiError.
  void submit() {
    for (auto& c : choices_) {
      try {
        c.id = srv_.service.submit(http::make_gen_request(req_, prompts_[static_cast<size_t>(c.prompt)], adapter_, srv_.eos, c.index),
                                   make_sink(queue_, c.index));
        c.submitted = true;
      } catch (...) {
        cancel_unfinished();
        throw;
      }
    }
    std::lock_guard lk(srv_.mu);
    srv_.runs.insert(this);
  }

  // Cancels every unfinished choice (client gone, forced shutdown). Thread-safe.
  void cancel_all() {
    queue_->cancelled = true;
    cancel_unfinished();
  }

  // Non-streamed: waits for every choice, returns (status, body).
  std::pair<int, ojson> complete() {
    bool gone = false;
    while (finished_ < choices_.size()) {
      std::deque<Event> evs;
      queue_->pop_all(evs, std::chrono::milliseconds(50));
      for (auto& e : evs) on_event(e, nullptr);
      if (!gone && finished_ < choices_.size() && http::ConnectionGate::current_client_gone()) {
        gone = true;  // nobody will read the answer: stop generating it
        cancel_all();
      }
    }
    if (gone)
      return {499, http::error_json(499, "invalid_request_error", "the client closed the connection", "",
                                    "client_closed_request")};
    for (const auto& c : choices_) {
      if (c.fin.reason == "error")
        return {c.fin.error_status,
                http::error_json(c.fin.error_status, c.fin.error_type,
                                 (c.fin.error_status >= 500 ? "generation failed: " : "") + c.fin.error,
                                 c.fin.error_status >= 500 ? "" : "model", c.fin.error_code)};
      if (c.finish_reason == "abort")
        return {503, http::error_json(503, "server_error", "the request was aborted (the server is shutting down)", "",
                                      "aborted")};
    }
    std::vector<http::ChoiceOutput> outs;
    for (auto& c : choices_) {
      http::ChoiceOutput o;
      o.index = c.index;
      o.finish_reason = c.finish_reason;
      if (chat_) {
        o.text = c.acc;
        o.logprobs = want_lp_ ? http::chat_logprobs(srv_.tok, c.lp_all, req_.tokens_as_ids) : ojson(nullptr);
      } else {
        o.text = req_.echo ? prompts_[static_cast<size_t>(c.prompt)].text + c.acc : c.acc;
        if (want_lp_) {
          ojson lp = nullptr;
          size_t offset = 0;
          if (req_.echo) {
            if (c.have_prompt_lps)
              http::append_legacy_logprobs(lp, http::legacy_logprobs(srv_.tok, c.prompt_lps, offset, true, req_.tokens_as_ids));
            else
              offset = http::utf8_length(prompts_[static_cast<size_t>(c.prompt)].text);
          }
          http::append_legacy_logprobs(lp, http::legacy_logprobs(srv_.tok, c.lp_all, offset, false, req_.tokens_as_ids));
          o.logprobs = lp;
        }
      }
      outs.push_back(std::move(o));
    }
    return {200, chat_ ? http::chat_response(id_, created_, model_, outs, usage())
                       : http::completion_response(id_, created_, model_, outs, usage())};
  }

  // Streamed: one call of httplib's chunked content provider. Returns false to abort the response
  // (the client is gone); the engine requests are then cancelled.
  bool stream(httplib::DataSink& sink) {
    std::string out;
    if (!started_) {
      started_ = true;
      last_write_ = Clock::now();
      for (auto& c : choices_) {
        if (chat_) {
          const ojson role{{"role", "assistant"}, {"content", ""}};
          out += http::sse_event(http::chat_chunk(id_, created_, model_, c.index, role, "", nullptr));
        } else if (req_.echo && !want_lp_) {  // with logprobs, the echo waits for the prompt's logprobs
          emit_echo(c, out);
        }
      }
    }
    if (!done_) {
      std::deque<Event> evs;
      queue_->pop_all(evs, std::chrono::milliseconds(out.empty() ? 500 : 0));
      for (auto& e : evs) {
        on_event(e, &out);
        if (done_) break;
      }
      if (!done_ && finished_ == choices_.size()) {
        if (req_.include_usage)
          out += http::sse_event(
              http::usage_chunk(id_, chat_ ? "chat.completion.chunk" : "text_completion", created_, model_, usage()));
        out += http::sse_done();
        done_ = true;
      }
    }
    if (out.empty() && seconds(Clock::now() - last_write_) >= srv_.opts.stream_heartbeat_s)
      out = ": keep-alive\n\n";  // an SSE comment: detects a vanished client while nothing is generated
    if (!out.empty()) {
      last_write_ = Clock::now();
      if (!sink.write(out.data(), out.size())) {
        cancel_all();
        return false;
      }
    }
    if (done_) sink.done();
    return true;
  }

 private:
  struct Choice {
    int index = 0, prompt = 0;
    uint64_t id = 0;
    bool submitted = false, finished = false, stopped_by_string = false, echo_sent = false, have_prompt_lps = false;
    std::unique_ptr<http::ChoiceText> text;
    std::string acc;                  // generated text (non-streamed)
    std::vector<TokenOut> lp_pending; // tokens whose logprobs are not yet in a chunk (streamed)
    std::vector<TokenOut> lp_all;     // every generated token (non-streamed logprobs)
    std::vector<TokenOut> prompt_lps;
    size_t offset = 0;                // legacy text_offset of the next token (streamed)
    int tokens = 0;                   // tokens received
    std::string finish_reason;
    Finish fin;
    bool has_last = false;
    Clock::time_point last_t;
    std::vector<double> itl;
  };

  void finish_quietly(Choice& c, const Finish& f) {
    c.fin = f;
    c.finish_reason = c.stopped_by_string ? "stop" : (f.reason.empty() ? "abort" : f.reason);
    c.finished = true;
    record(c);
  }

  void cancel_unfinished() {
    for (auto& c : choices_)
      if (c.submitted && !c.finished) srv_.service.cancel(c.id);
  }

  http::Usage usage() const {
    http::Usage u;
    for (const auto& p : prompts_) u.prompt_tokens += static_cast<int64_t>(p.ids.size());
    for (const auto& c : choices_) u.completion_tokens += c.fin.completion_tokens;
    return u;
  }

  // Streamed echo: the prompt text (and its logprobs) as the choice's first chunk.
  void emit_echo(Choice& c, std::string& out) {
    if (c.echo_sent) return;
    c.echo_sent = true;
    const auto& p = prompts_[static_cast<size_t>(c.prompt)];
    ojson lp = nullptr;
    if (want_lp_) {
      if (c.have_prompt_lps) lp = http::legacy_logprobs(srv_.tok, c.prompt_lps, c.offset, true, req_.tokens_as_ids);
      else c.offset = http::utf8_length(p.text);
    }
    out += http::sse_event(http::completion_chunk(id_, created_, model_, c.index, p.text, "", lp));
  }

  // Emits (streamed) or accumulates (plain) a piece of text; `final` adds the finish reason.
  void emit(Choice& c, const std::string& piece, std::string* out, bool final) {
    if (!out) {
      c.acc += piece;
      return;
    }
    if (piece.empty() && !final) return;  // held back (partial UTF-8 or a possible stop string)
    ojson lp = nullptr;
    if (want_lp_) {
      lp = chat_ ? http::chat_logprobs(srv_.tok, c.lp_pending, req_.tokens_as_ids)
                 : http::legacy_logprobs(srv_.tok, c.lp_pending, c.offset, false, req_.tokens_as_ids);
      c.lp_pending.clear();
    }
    const std::string reason = final ? c.finish_reason : "";
    if (chat_) {
      ojson delta = piece.empty() ? ojson::object() : ojson{{"content", piece}};
      *out += http::sse_event(http::chat_chunk(id_, created_, model_, c.index, delta, reason, lp));
    } else {
      *out += http::sse_event(http::completion_chunk(id_, created_, model_, c.index, piece, reason, lp));
    }
  }

  void on_event(Event& e, std::string* out) {
    Choice& c = choices_[static_cast<size_t>(e.choice)];
    if (c.finished) return;
    switch (e.kind) {
      case Event::kPromptLogprobs:
        c.prompt_lps = std::move(e.prompt_lps);
        c.have_prompt_lps = true;
        if (out && req_.echo && !chat_) emit_echo(c, *out);
        break;
      case Event::kToken: {
        if (c.text->stopped()) return;
        if (out && req_.echo && !chat_) emit_echo(c, *out);
        ++c.tokens;
        if (c.has_last) c.itl.push_back(seconds(e.t - c.last_t));
        c.last_t = e.t;
        c.has_last = true;
        std::string piece = c.text->on_token(e.tok.id);
        if (want_lp_) (out ? c.lp_pending : c.lp_all).push_back(e.tok);
        if (c.text->stopped()) {
          c.stopped_by_string = true;
          queue_->stop[e.choice] = true;
          srv_.service.cancel(c.id);
        }
        emit(c, piece, out, false);
        break;
      }
      case Event::kFinish: {
        if (out && req_.echo && !chat_) emit_echo(c, *out);
        c.fin = e.fin;
        const std::string tail = c.text->finish();
        if (c.stopped_by_string || c.text->stopped()) c.finish_reason = "stop";
        else if (e.fin.reason == "stop" || e.fin.reason == "length") c.finish_reason = e.fin.reason;
        else c.finish_reason = e.fin.reason.empty() ? "abort" : e.fin.reason;
        c.finished = true;
        ++finished_;
        record(c);
        if (out && e.fin.reason == "error") {
          *out += http::sse_event(http::error_json(e.fin.error_status, e.fin.error_type,
                                                   (e.fin.error_status >= 500 ? "generation failed: " : "") + e.fin.error,
                                                   e.fin.error_status >= 500 ? "" : "model", e.fin.error_code));
          *out += http::sse_done();
          done_ = true;
          cancel_all();
          return;
        }
        emit(c, tail, out, true);
        break;
      }
    }
  }

  void record(const Choice& c) {
    FinishedRequest r;
    r.adapter = adapter_;
    r.finished_reason = c.finish_reason == "stop" || c.finish_reason == "length" || c.finish_reason == "error"
                            ? c.finish_reason
                            : "abort";
    r.prompt_tokens = c.fin.prompt_tokens;
    r.generation_tokens = c.fin.completion_tokens;
    r.queue_s = c.fin.queue_s;
    r.ttft_s = c.fin.completion_tokens > 0 ? c.fin.ttft_s : -1;
    r.e2e_s = c.fin.e2e_s;
    r.itl_s = c.itl;
    srv_.metrics.on_request_finished(r);
  }

  Impl& srv_;
  std::shared_ptr<InFlight> flight_;
  http::ParsedRequest req_;
  std::vector<http::TokenizedPrompt> prompts_;
  std::string adapter_, id_, model_;
  int64_t created_;
  bool chat_ = false, want_lp_ = false, started_ = false, done_ = false;
  std::shared_ptr<EventQueue> queue_;
  std::vector<Choice> choices_;
  size_t finished_ = 0;
  Clock::time_point last_write_;
};

// ---------------------------------------------------------------------------------------------
template <class F>
void HttpServer::Impl::guarded(httplib::Response& res, F&& f) {
  try {
    f();
  } catch (const ApiError& e) {
    send_error(res, e);
  } catch (const Error& e) {
    send_error(res, server_error(e.message()));
    std::fprintf(stderr, "graft serve: internal error: %s\n", e.what());
  } catch (const std::exception& e) {
    send_error(res, server_error(e.what()));
    std::fprintf(stderr, "graft serve: internal error: %s\n", e.what());
  } catch (...) {
    send_error(res, server_error("unknown error"));
  }
}

std::string HttpServer::Impl::read_body(const httplib::Request&, httplib::Response& res,
                                        const httplib::ContentReader& reader) {
  std::string body;
  bool too_big = false;
  size_t discarded = 0;
  const bool ok = reader([&](const char* d, size_t n) {
    if (too_big || body.size() + n > opts.max_request_bytes) {
      // Keep reading (and dropping) a moderately oversized chunked body, so that the connection
      // stays usable; give up on a huge one.
      too_big = true;
      discarded += n;
      return discarded <= size_t(64) << 20;
    }
    body.append(d, n);
    return true;
  });
  if (ok && too_big)
    throw ApiError(413, "invalid_request_error",
                   fmt::format("the request body is larger than the server's limit of {} bytes (--max-request-bytes)",
                               opts.max_request_bytes),
                   "", "request_too_large");
  if (!ok) {
    res.set_header("Connection", "close");  // the rest of the body is still on the wire
    if (too_big || res.status == 413)
      throw ApiError(413, "invalid_request_error",
                     fmt::format("the request body is larger than the server's limit of {} bytes (--max-request-bytes)",
                                 opts.max_request_bytes),
                     "", "request_too_large");
    if (http::ConnectionGate::current_body_timed_out())
      throw ApiError(408, "invalid_request_error",
                     fmt::format("the request body did not arrive in time (it may stall {} s and must average 64 KiB/s; "
                                 "--http-read-timeout)",
                                 opts.read_timeout_s),
                     "", "request_timeout");
    throw bad_request("the request body could not be read", "", "invalid_body");
  }
  return body;
}

const ApiGrant* HttpServer::Impl::authorize(const httplib::Request& req) {
  if (!keys.enabled()) return nullptr;
  if (!req.has_header("Authorization"))
    throw ApiError(401, "authentication_error", "missing API key: send the header 'Authorization: Bearer KEY'", "",
                   "invalid_api_key");
  const ApiGrant* g = keys.authorize(req.get_header_value("Authorization"));
  if (!g) throw ApiError(401, "authentication_error", "invalid API key", "", "invalid_api_key");
  return g;
}

std::string HttpServer::Impl::resolve_model(const std::string& model, const ApiGrant* grant) {
  if (model.empty() || model == opts.served_model_name) return "";
  // A key that may not use an adapter gets the same answer as for an adapter that does not exist,
  // so that keys cannot probe other customers' adapter names.
  auto not_found = [&] {
    return ApiError(404, "not_found_error", fmt::format("The model '{}' does not exist.", model), "model",
                    "model_not_found");
  };
  if (grant && !may_use(grant, model)) throw not_found();
  bool known = false;
  try {
    known = service.adapter_known(model);
  } catch (const ApiError&) {
    known = false;  // an invalid name (e.g. a path) is simply not a model
  }
  if (!known) throw not_found();
  return model;
}

void HttpServer::Impl::handle_generation(const httplib::Request& req, httplib::Response& res,
                                         const httplib::ContentReader& reader, http::Endpoint ep) {
  auto flight = std::make_shared<InFlight>(*this);
  const std::string body = read_body(req, res, reader);
  const ApiGrant* grant = authorize(req);
  if (shutting_down) throw ApiError(503, "server_error", "the server is shutting down", "", "shutting_down");
  ojson j = http::parse_json_body(body);
  http::ParsedRequest pr = ep == http::Endpoint::kChat ? http::parse_chat_request(j) : http::parse_completion_request(j);
  std::string adapter = resolve_model(pr.model, grant);
  const EngineStats st = service.stats();
  auto prompts = http::tokenize_prompts(pr, tok, chat, {opts.vocab_size, st.max_model_len});
  const bool stream = pr.stream;
  auto run = std::make_shared<GenerationRun>(*this, flight, std::move(pr), std::move(prompts), std::move(adapter));
  flight.reset();
  run->submit();
  if (!stream) {
    auto [status, out] = run->complete();
    send_json(res, status, out);
    return;
  }
  res.status = 200;
  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");
  res.set_chunked_content_provider(
      "text/event-stream", [run](size_t, httplib::DataSink& sink) { return run->stream(sink); },
      [run](bool success) {
        if (!success) run->cancel_all();
      });
}

ojson HttpServer::Impl::model_card(const std::string& id, const std::string& root, const std::string& parent,
                                   int64_t max_len) const {
  return ojson{{"id", id},
               {"object", "model"},
               {"created", created},
               {"owned_by", "graft"},
               {"root", root},
               {"parent", parent.empty() ? ojson(nullptr) : ojson(parent)},
               {"max_model_len", max_len},
               {"permission", ojson::array()}};
}

void HttpServer::Impl::setup_routes() {
  using Req = httplib::Request;
  using Res = httplib::Response;
  using Reader = httplib::ContentReader;

  svr.Post("/v1/completions", [this](const Req& req, Res& res, const Reader& reader) {
    guarded(res, [&] { handle_generation(req, res, reader, http::Endpoint::kCompletions); });
  });
  svr.Post("/v1/chat/completions", [this](const Req& req, Res& res, const Reader& reader) {
    guarded(res, [&] { handle_generation(req, res, reader, http::Endpoint::kChat); });
  });

  auto list_models = [this](const ApiGrant* grant) {
    const int64_t max_len = service.stats().max_model_len;
    ojson data = ojson::array();
    data.push_back(model_card(opts.served_model_name, opts.model_path, "", max_len));
    for (const auto& a : service.adapters())
      if (may_use(grant, a.name)) data.push_back(model_card(a.name, a.path, opts.served_model_name, max_len));
    return data;
  };
  svr.Get("/v1/models", [this, list_models](const Req& req, Res& res) {
    guarded(res, [&] { send_json(res, 200, ojson{{"object", "list"}, {"data", list_models(authorize(req))}}); });
  });
  svr.Get("/v1/models/(.+)", [this, list_models](const Req& req, Res& res) {
    guarded(res, [&] {
      const std::string id = req.matches[1];
      for (const auto& m : list_models(authorize(req)))
        if (m["id"] == id) return send_json(res, 200, m);
      throw ApiError(404, "not_found_error", fmt::format("The model '{}' does not exist.", id), "model", "model_not_found");
    });
  });

  auto admin = [this](const Req& req, Res& res, const Reader& reader) {
    const std::string body = read_body(req, res, reader);
    const ApiGrant* grant = authorize(req);
    if (grant && !grant->all)
      throw ApiError(403, "permission_error", "this API key may not load or unload adapters (it needs \"*\")", "",
                     "insufficient_permissions");
    if (!opts.enable_lora_runtime_updates)
      throw ApiError(404, "not_found_error",
                     "runtime adapter loading is disabled; start graft serve with --enable-lora-runtime-updates", "",
                     "runtime_updates_disabled");
    if (shutting_down) throw ApiError(503, "server_error", "the server is shutting down", "", "shutting_down");
    return http::parse_json_body(body);
  };
  svr.Post("/v1/load_lora_adapter", [this, admin](const Req& req, Res& res, const Reader& reader) {
    guarded(res, [&] {
      ojson j = admin(req, res, reader);
      const std::string name = http::get_string(j, "lora_name", true), path = http::get_string(j, "lora_path", true);
      if (name == opts.served_model_name)
        throw bad_request(fmt::format("'{}' is the base model's name", name), "lora_name", "invalid_value");
      service.load_adapter(name, path);
      res.status = 200;
      res.set_content(fmt::format("Success: LoRA adapter '{}' added successfully.", name), "text/plain");
    });
  });
  svr.Post("/v1/unload_lora_adapter", [this, admin](const Req& req, Res& res, const Reader& reader) {
    guarded(res, [&] {
      ojson j = admin(req, res, reader);
      const std::string name = http::get_string(j, "lora_name", true);
      service.unload_adapter(name);
      res.status = 200;
      res.set_content(fmt::format("Success: LoRA adapter '{}' removed successfully.", name), "text/plain");
    });
  });

  svr.Get("/health", [](const Req&, Res& res) { send_json(res, 200, ojson{{"status", "ok"}}); });
  svr.Get("/ready", [this](const Req&, Res& res) {
    if (shutting_down)
      send_json(res, 503, http::error_json(503, "server_error", "the server is shutting down", "", "shutting_down"));
    else
      send_json(res, 200, ojson{{"status", "ready"}});
  });
  svr.Get("/metrics", [this](const Req&, Res& res) {
    guarded(res, [&] {
      Metrics::Live live;
      live.engine = service.stats();
      live.adapters = service.adapters();
      live.adapter_cache_bytes = service.adapter_cache_bytes();
      res.status = 200;
      res.set_content(metrics.render(live), "text/plain; version=0.0.4; charset=utf-8");
    });
  });

  // A body declared far larger than the limit is refused before it is read (and the connection
  // closed); a moderately larger one is read and dropped by httplib, so that the client reliably
  // sees the 413. Clients that ask "Expect: 100-continue" are answered 413 instead of 100.
  // The declared Content-Length (saturating; 0 when absent or not a number).
  auto declared_length = [](const Req& req) -> uint64_t {
    if (!req.has_header("Content-Length")) return 0;
    uint64_t n = 0;
    for (char c : req.get_header_value("Content-Length")) {
      if (c < '0' || c > '9') return 0;
      n = n > (UINT64_MAX - 9) / 10 ? UINT64_MAX : n * 10 + static_cast<uint64_t>(c - '0');
    }
    return n;
  };
  auto too_large = [this](Res& res) {
    send_error(res, ApiError(413, "invalid_request_error",
                             fmt::format("the request body is larger than the server's limit of {} bytes (--max-request-bytes)",
                                         opts.max_request_bytes),
                             "", "request_too_large"));
  };
  svr.set_pre_routing_handler([this, declared_length, too_large](const Req& req, Res& res) {
    if (declared_length(req) / 16 > opts.max_request_bytes) {
      too_large(res);
      res.set_header("Connection", "close");
      return httplib::Server::HandlerResponse::Handled;
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });
  svr.set_expect_100_continue_handler([this, declared_length](const Req& req, Res& res) {
    if (declared_length(req) <= opts.max_request_bytes) return 100;
    res.status = 413;  // the error handler writes the body (and so the Content-Length)
    return 413;
  });

  // Anything httplib answers by itself (unknown route, malformed request, oversized body) gets a
  // JSON error object too.
  svr.set_error_handler(httplib::Server::HandlerWithResponse([this](const Req& req, Res& res) {
    if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
    std::string type = "invalid_request_error", code, msg;
    switch (res.status) {
      case 404:
        type = "not_found_error", code = "not_found", msg = fmt::format("no route for {} {}", req.method, req.path);
        break;
      case 413:
        code = "request_too_large";
        msg = fmt::format("the request body is larger than the server's limit of {} bytes (--max-request-bytes)",
                          opts.max_request_bytes);
        break;
      case 414: code = "uri_too_long", msg = "the request URI is too long"; break;
      case 408: code = "request_timeout", msg = "the request did not arrive in time"; break;
      case 400: code = "bad_request", msg = "malformed HTTP request"; break;
      default:
        if (res.status >= 500) type = "server_error";
        msg = fmt::format("HTTP {}", res.status);
    }
    send_json(res, res.status, http::error_json(res.status, type, msg, "", code));
    return httplib::Server::HandlerResponse::Handled;
  }));
  svr.set_exception_handler([](const Req&, Res& res, std::exception_ptr ep) {
    std::string what = "unknown error";
    try {
      if (ep) std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    send_error(res, server_error(what));
  });
  svr.set_logger([this](const Req& req, const Res& res) { metrics.on_http_response(route_label(req.path), res.status); });
  // A response that closes the connection (e.g. with part of a refused body still on the wire).
  svr.set_post_routing_handler([](const Req&, Res& res) {
    if (res.get_header_value("Connection") == "close") http::ConnectionGate::current_close_after_response();
  });
}

void HttpServer::Impl::shutdown() {
  std::lock_guard sl(shutdown_mu);
  if (shutdown_done) return;
  shutting_down = true;
  {
    std::unique_lock lk(mu);
    const auto drain = std::chrono::duration<double>(opts.drain_timeout_s);
    if (!cv.wait_for(lk, drain, [&] { return inflight == 0; })) {
      std::fprintf(stderr, "graft serve: drain timeout (%.0f s): cancelling %d request(s)\n", opts.drain_timeout_s, inflight);
      for (auto* r : runs) r->cancel_all();
      cv.wait_for(lk, std::chrono::seconds(10), [&] { return inflight == 0; });
    }
  }
  // serve() may be about to start listening: wait until it does (or has returned), then stop it.
  if (serve_state.load() == 1) {
    const auto t0 = Clock::now();
    while (serve_state.load() == 1 && !svr.is_running() && Clock::now() - t0 < std::chrono::seconds(5))
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    svr.stop();
  }
  shutdown_done = true;
}

// ---------------------------------------------------------------------------------------------
HttpServer::HttpServer(HttpServerOptions opts, GenerationService& service, const tokenizer::Tokenizer& tok,
                       const chat_template::ChatTemplate* chat, std::vector<int32_t> eos_ids, ApiKeys keys)
    : impl_(std::make_unique<Impl>(std::move(opts), service, tok, chat, std::move(eos_ids), std::move(keys))) {
  auto& o = impl_->opts;
  GRAFT_CHECK_FIX(o.threads >= 1, "pass a positive thread count", "HTTP threads = {}", o.threads);
  const size_t threads = static_cast<size_t>(o.threads);
  GRAFT_CHECK_FIX(o.max_connections >= 1 && o.max_connections <= 768, "pass --max-connections in [1, 768]",
                  "max connections = {}", o.max_connections);
  GRAFT_CHECK_FIX(o.max_connections_per_client >= 1, "pass a positive --max-connections-per-client",
                  "max connections per client = {}", o.max_connections_per_client);
  GRAFT_CHECK_FIX(o.max_header_bytes >= 1024, "pass --max-header-bytes of at least 1KiB", "max header bytes = {}",
                  o.max_header_bytes);
  GRAFT_CHECK_FIX(o.header_timeout_s > 0 && o.read_timeout_s > 0 && o.write_timeout_s > 0 && o.keep_alive_timeout_s > 0,
                  "pass positive HTTP timeouts", "HTTP timeouts must be positive");
  http::GateLimits g;
  g.threads = static_cast<int>(threads);
  g.max_connections = o.max_connections;
  g.max_connections_per_client = o.max_connections_per_client;
  g.max_header_bytes = o.max_header_bytes;
  g.header_timeout_s = o.header_timeout_s;
  g.read_timeout_s = o.read_timeout_s;
  g.write_timeout_s = o.write_timeout_s;
  g.keep_alive_timeout_s = o.keep_alive_timeout_s;
  Impl* I = impl_.get();
  impl_->svr.configure(
      g,
      [](int status, const std::string& code, const std::string& message) {
        return http::dump(http::error_json(status, status >= 500 ? "server_error" : "invalid_request_error", message, "", code));
      },
      [I](int status) { I->metrics.on_http_response("other", status); });
  impl_->svr.set_payload_max_length(o.max_request_bytes);
  impl_->svr.set_tcp_nodelay(true);
  impl_->setup_routes();
}

HttpServer::~HttpServer() = default;

int HttpServer::bind() {
  auto& o = impl_->opts;
  int port = o.port == 0 ? impl_->svr.bind_to_any_port(o.host) : (impl_->svr.bind_to_port(o.host, o.port) ? o.port : -1);
  GRAFT_CHECK_FIX(port > 0, "pick a free port (--port) and an address of this machine (--host)",
                  "cannot listen on {}:{} ({})", o.host, o.port, std::strerror(errno));
  return port;
}

void HttpServer::serve() {
  std::signal(SIGPIPE, SIG_IGN);  // a vanished client must be a failed write, not a dead server
  impl_->serve_state = 1;
  if (!impl_->shutting_down) impl_->svr.listen_gated();
  impl_->serve_state = 2;
}

void HttpServer::shutdown() { impl_->shutdown(); }

void HttpServer::add_routes(const RouteExtension& ext) {
  Impl* I = impl_.get();
  RouteContext ctx{I->svr, {}, {}, {}, {}};
  ctx.authenticate = [I](const httplib::Request& req, httplib::Response& res) -> std::optional<std::string> {
    try {
      if (I->shutting_down) throw ApiError(503, "server_error", "the server is shutting down", "", "shutting_down");
      return I->keys.key_of(I->authorize(req));
    } catch (const ApiError& e) {
      send_error(res, e);
      return std::nullopt;
    }
  };
  ctx.guarded = [I](httplib::Response& res, const std::function<void()>& body) { I->guarded(res, body); };
  ctx.send_json = [](httplib::Response& res, int status, const nlohmann::json& j) {
    res.status = status;
    res.set_content(j.dump(), "application/json");
  };
  ctx.grant = [this](const std::function<bool(std::string_view)>& match, const std::string& adapter) {
    grant_adapter(match, adapter);
  };
  ext(ctx);
}

void HttpServer::grant_adapter(const std::function<bool(std::string_view)>& match, const std::string& adapter) {
  const auto gs = impl_->keys.grants_where(match);
  std::lock_guard lk(impl_->grant_mu);
  for (const ApiGrant* g : gs) impl_->granted[g].insert(adapter);
}
bool HttpServer::shutting_down() const { return impl_->shutting_down; }
int HttpServer::in_flight() const {
  std::lock_guard lk(impl_->mu);
  return impl_->inflight;
}
Metrics& HttpServer::metrics() { return impl_->metrics; }

}  // namespace graft::serve
