// A scripted stand-in for the engine + adapter registry, so the HTTP layer is tested without a model.
// Every request "generates" the bytes of `reply` (token id = byte, as in graft's tiny byte-level
// tokenizer), cycling, one token per request per `step_us` on its own thread, honouring max_tokens,
// stop ids, cancel() and a Sink that returns false — like the real Engine's contract.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "graft/serve/api_error.hpp"
#include "graft/serve/http_server.hpp"

namespace graft::testing {

class FakeService final : public serve::GenerationService {
 public:
  std::string reply = "Hello, world! The end.";
  std::atomic<int> step_us{200};
  std::atomic<int> max_queue{1000};
  int64_t max_model_len = 256;
  std::set<std::string> adapter_names = {"alpha", "beta", "broken"};

  FakeService() : worker_([this] { loop(); }) {}
  ~FakeService() override {
    {
      std::lock_guard lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    worker_.join();
  }

  uint64_t submit(serve::GenRequest req, serve::Sink sink) override {
    std::lock_guard lk(mu_);
    if (!req.model.empty() && !adapter_names.count(req.model))
      throw serve::ApiError(404, "not_found_error", "unknown adapter " + req.model, "model", "model_not_found");
    if (static_cast<int>(active_.size()) >= max_queue)
      throw serve::ApiError(429, "rate_limit_error", "queue full", "", "queue_full");
    const uint64_t id = next_id_++;
    active_[id] = Req{std::move(req), std::move(sink), 0, false, std::chrono::steady_clock::now()};
    ++submitted;
    last_request = active_[id].req;
    cv_.notify_all();
    return id;
  }
  void cancel(uint64_t id) override {
    std::lock_guard lk(mu_);
    auto it = active_.find(id);
    if (it != active_.end()) {
      it->second.cancelled = true;
      ++cancelled;
    }
  }
  serve::EngineStats stats() const override {
    std::lock_guard lk(mu_);
    serve::EngineStats s;
    s.running = static_cast<int>(active_.size());
    s.max_model_len = max_model_len;
    return s;
  }
  bool adapter_known(const std::string& name) override {
    std::lock_guard lk(mu_);
    return adapter_names.count(name) > 0;
  }
  std::vector<serve::AdapterInfo> adapters() const override {
    std::lock_guard lk(mu_);
    std::vector<serve::AdapterInfo> v;
    for (const auto& n : adapter_names) v.push_back({n, "/adapters/" + n, true, 8, 1000, 0});
    return v;
  }
  size_t adapter_cache_bytes() const override { return 2000; }
  void load_adapter(const std::string& name, const std::string& path) override {
    if (name.find('/') != std::string::npos || name.find("..") != std::string::npos)
      throw serve::bad_request("invalid adapter name", "lora_name");
    if (path.empty()) throw serve::bad_request("no path", "lora_path");
    std::lock_guard lk(mu_);
    adapter_names.insert(name);
  }
  void unload_adapter(const std::string& name) override {
    std::lock_guard lk(mu_);
    if (!adapter_names.erase(name)) throw serve::ApiError(404, "not_found_error", "unknown adapter " + name, "lora_name");
  }
  int active() const {
    std::lock_guard lk(mu_);
    return static_cast<int>(active_.size());
  }

  serve::GenRequest last() const {
    std::lock_guard lk(mu_);
    return last_request;
  }

  std::atomic<int> submitted{0}, cancelled{0}, finished{0};

 private:
  struct Req {
    serve::GenRequest req;
    serve::Sink sink;
    int generated = 0;
    bool cancelled = false;
    std::chrono::steady_clock::time_point t0;
  };

  void loop() {
    std::unique_lock lk(mu_);
    while (!stop_) {
      if (active_.empty()) {
        cv_.wait(lk, [&] { return stop_ || !active_.empty(); });
        continue;
      }
      std::vector<uint64_t> ids;
      for (auto& [id, r] : active_) ids.push_back(id);
      for (uint64_t id : ids) {
        Req& r = active_[id];
        serve::Finish fin;
        fin.prompt_tokens = static_cast<int>(r.req.prompt.size());
        bool done = false;
        if (r.generated == 0 && r.req.prompt_logprobs && r.sink.on_prompt_logprobs) {
          std::vector<serve::TokenOut> lps;
          for (size_t i = 0; i < r.req.prompt.size(); ++i) {
            serve::TokenOut t;
            t.id = r.req.prompt[i];
            t.logprob = i == 0 ? 0.0f : -1.0f;
            if (i > 0)
              for (int k = 0; k < r.req.logprobs; ++k) t.top.push_back({'a' + k, -0.5f - k});
            lps.push_back(t);
          }
          r.sink.on_prompt_logprobs(lps);
        }
        if (r.cancelled) {
          fin.reason = "abort";
          done = true;
        } else if (r.req.model == "broken") {  // like a lazily loaded adapter that fails to load
          fin.reason = "error";
          fin.error = "cannot load adapter 'broken'";
          done = true;
        } else if (r.generated >= r.req.max_tokens) {
          fin.reason = "length";
          done = true;
        } else {
          serve::TokenOut t;
          t.id = static_cast<unsigned char>(reply[static_cast<size_t>(r.generated) % reply.size()]);
          t.logprob = -0.25f;
          for (int k = 0; k < std::max(0, r.req.logprobs); ++k) t.top.push_back({t.id + k, -0.25f - k});
          ++r.generated;
          if (!r.sink.on_token(t)) {
            fin.reason = "abort";
            done = true;
          } else {
            for (int32_t s : r.req.stop_ids)
              if (s == t.id) fin.reason = "stop", done = true;
            if (!done && r.generated >= r.req.max_tokens) fin.reason = "length", done = true;
          }
        }
        if (done) {
          fin.completion_tokens = r.generated;
          fin.ttft_s = 0.001;
          fin.e2e_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - r.t0).count();
          fin.queue_s = 0.0001;
          r.sink.on_finish(fin);
          active_.erase(id);
          ++finished;
        }
      }
      lk.unlock();
      std::this_thread::sleep_for(std::chrono::microseconds(step_us.load()));
      lk.lock();
    }
    for (auto& [id, r] : active_) {
      serve::Finish fin;
      fin.reason = "abort";
      r.sink.on_finish(fin);
    }
  }

  mutable std::mutex mu_;
  serve::GenRequest last_request;
  std::condition_variable cv_;
  std::map<uint64_t, Req> active_;
  uint64_t next_id_ = 1;
  bool stop_ = false;
  std::thread worker_;
};

}  // namespace graft::testing
