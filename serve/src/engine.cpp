// The continuous-batching scheduler (see engine.hpp). One thread owns the paged KV cache, the block
// allocator and every running sequence; submit()/cancel() only touch the mutex-guarded inbox.
#include "graft/serve/engine.hpp"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <list>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <thread>
#include <unordered_set>

#include "graft/serve/api_error.hpp"
#include "graft/serve/block_allocator.hpp"
#include "graft/serve/sampler.hpp"

namespace graft::serve {
namespace {
using Clock = std::chrono::steady_clock;
double seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

enum class State { Waiting, WaitingAdapter, Running };

struct Sequence {
  uint64_t id = 0;
  GenRequest req;
  Sink sink;
  std::shared_ptr<const adapters::Adapter> adapter;  // pinned while the sequence lives
  std::vector<int32_t> tokens;     // prompt + generated
  int64_t computed = 0;            // tokens whose keys/values are in the cache
  std::vector<int32_t> blocks;     // block table
  int generated = 0;
  State state = State::Waiting;
  bool adapter_ready = false;      // the adapter manager finished loading (success or error)
  std::string adapter_error;
  std::optional<ApiError> adapter_failure;  // status/type/code of adapter_error
  bool prompt_lp_done = false;
  std::vector<TokenOut> prompt_lp;
  bool counted_prompt = false;
  std::mt19937_64 rng;
  PenaltyState penalties;
  Clock::time_point submitted, scheduled, first_token;
  bool has_scheduled = false, has_first = false;
};
using SeqPtr = std::shared_ptr<Sequence>;
}  // namespace

struct Engine::Impl {
  const model::Model& m;
  Backend& be;
  AdapterManager& adapters;
  EngineOptions opts;
  model::PagedKvCache cache;
  BlockAllocator alloc;
  int64_t max_model_len = 0;

  mutable std::mutex mu;
  std::condition_variable cv;
  std::deque<SeqPtr> inbox;            // submitted, not yet seen by the scheduler
  std::set<uint64_t> cancels;
  std::vector<uint64_t> adapter_ready;  // sequences whose adapter load finished
  bool accepting = true, stopping = false, drain = true;
  uint64_t next_id = 1;
  std::mt19937_64 seed_source{std::random_device{}()};
  EngineStats st;                      // counters (guarded by mu)
  std::thread thread;

  // Scheduler-thread state.
  std::deque<SeqPtr> waiting;                 // FIFO (preempted sequences go to the front)
  std::map<uint64_t, SeqPtr> adapter_wait;    // waiting for their adapter to load
  std::vector<SeqPtr> running;                // in arrival order
  std::vector<float> scratch;

  Impl(const model::Model& model, Backend& backend, AdapterManager& am, EngineOptions o)
      : m(model), be(backend), adapters(am), opts(o), alloc(num_blocks(model, o)) {
    GRAFT_CHECK_FIX(o.max_num_seqs > 0 && o.max_batch_tokens > 0 && o.max_queue >= 0, "use positive engine limits",
                    "max_num_seqs {}, max_batch_tokens {}, max_queue {}", o.max_num_seqs, o.max_batch_tokens, o.max_queue);
    cache = m.new_paged_cache(alloc.total(), o.block_size);
    const int64_t pool = alloc.total() * o.block_size;
    max_model_len = m.config().max_position_embeddings > 0 ? m.config().max_position_embeddings : pool;
    if (o.max_model_len > 0) max_model_len = std::min(max_model_len, o.max_model_len);
    max_model_len = std::min(max_model_len, pool);
    st.kv_blocks_total = alloc.total();
    st.max_model_len = max_model_len;
  }

  static int64_t num_blocks(const model::Model& m, const EngineOptions& o) {
    GRAFT_CHECK_FIX(o.block_size > 0 && o.block_size <= 1024, "use --block-size between 1 and 1024",
                    "KV block size {} is invalid", o.block_size);
    if (o.num_kv_blocks > 0) return o.num_kv_blocks;
    const int64_t n = static_cast<int64_t>(o.kv_cache_bytes / m.block_bytes(o.block_size));
    GRAFT_CHECK_FIX(n >= 1, "raise --kv-cache-bytes", "--kv-cache-bytes {} holds no KV block of {} bytes",
                    o.kv_cache_bytes, m.block_bytes(o.block_size));
    return n;
  }

  // ---------------------------------------------------------------- finishing
  void finish(const SeqPtr& s, std::string reason, std::string error = {}, const ApiError* cause = nullptr) {
    alloc.release(s->blocks);
    Finish f;
    f.reason = std::move(reason);
    f.error = std::move(error);
    if (cause) {
      f.error_status = cause->status;
      f.error_type = cause->type;
      f.error_code = cause->code;
    }
    f.prompt_tokens = static_cast<int>(s->req.prompt.size());
    f.completion_tokens = s->generated;
    const auto now = Clock::now();
    f.queue_s = seconds(s->submitted, s->has_scheduled ? s->scheduled : now);
    f.ttft_s = s->has_first ? seconds(s->submitted, s->first_token) : 0.0;
    f.e2e_s = seconds(s->submitted, now);
    s->adapter.reset();
    if (s->sink.on_finish) finished.emplace_back(s, std::move(f));
  }

  // Finishes reach their sinks after the step's publish(), so that a client that has seen its request finish reads
  // stats() that count it (tokens, KV blocks released, no longer running).
  std::vector<std::pair<SeqPtr, Finish>> finished;
  void deliver_finished() {
    auto done = std::move(finished);
    finished.clear();
    for (auto& [s, f] : done) s->sink.on_finish(f);
  }

  // ---------------------------------------------------------------- intake
  void take_inbox() {
    std::deque<SeqPtr> in;
    std::set<uint64_t> cx;
    std::vector<uint64_t> ready;
    bool abort_all = false;
    {
      std::lock_guard<std::mutex> g(mu);
      in.swap(inbox);
      cx.swap(cancels);
      ready.swap(adapter_ready);
      abort_all = stopping && !drain;
    }
    for (auto& s : in) waiting.push_back(std::move(s));
    for (uint64_t id : ready) {
      auto it = adapter_wait.find(id);
      if (it == adapter_wait.end()) continue;
      it->second->state = State::Waiting;
      waiting.push_front(it->second);  // it waited its turn already
      adapter_wait.erase(it);
    }
    auto cancelled = [&](const SeqPtr& s) { return abort_all || cx.count(s->id) > 0; };
    for (auto it = running.begin(); it != running.end();) {
      if (cancelled(*it)) {
        finish(*it, "abort");
        it = running.erase(it);
      } else {
        ++it;
      }
    }
    for (auto it = waiting.begin(); it != waiting.end();) {
      if (cancelled(*it)) {
        finish(*it, "abort");
        it = waiting.erase(it);
      } else {
        ++it;
      }
    }
    for (auto it = adapter_wait.begin(); it != adapter_wait.end();) {
      if (cancelled(it->second)) {
        finish(it->second, "abort");
        it = adapter_wait.erase(it);
      } else {
        ++it;
      }
    }
  }

  // Makes sure the sequence's adapter is pinned. False: it is loading (the sequence moved to
  // adapter_wait) or failed (the sequence finished with an error).
  bool ensure_adapter(const SeqPtr& s) {
    if (s->req.model.empty() || s->adapter) return true;
    if (!s->adapter_error.empty()) {
      finish(s, "error", s->adapter_error, s->adapter_failure ? &*s->adapter_failure : nullptr);
      return false;
    }
    std::weak_ptr<Sequence> weak = s;
    const uint64_t id = s->id;
    try {
      const std::string name = s->req.model;
      s->adapter = adapters.acquire(name, [this, weak, id, name](const std::string& err) {
        std::optional<ApiError> why;
        if (!err.empty()) why = adapters.load_failure(name);
        std::lock_guard<std::mutex> g(mu);
        if (auto p = weak.lock()) {
          if (!err.empty()) {
            p->adapter_error = err;
            p->adapter_failure = why;
          }
        }
        adapter_ready.push_back(id);
        cv.notify_all();
      });
    } catch (const ApiError& e) {
      finish(s, "error", e.message(), &e);
      return false;
    } catch (const std::exception& e) {
      finish(s, "error", e.what());
      return false;
    }
    if (s->adapter) return true;
    s->state = State::WaitingAdapter;
    adapter_wait[s->id] = s;
    return false;
  }

  // ---------------------------------------------------------------- scheduling
  struct Planned {
    SeqPtr s;
    int64_t rows;
  };

  void preempt(const SeqPtr& victim) {
    alloc.release(victim->blocks);
    victim->computed = 0;  // recompute prompt + generated tokens when it is scheduled again
    victim->state = State::Waiting;
    waiting.push_front(victim);
    std::lock_guard<std::mutex> g(mu);
    ++st.preemptions;
  }

  std::vector<Planned> schedule() {
    std::vector<Planned> plan;
    int64_t budget = opts.max_batch_tokens;
    const int64_t bs = opts.block_size;
    // 1. Running sequences: one decode token each (or the next chunk of a long prefill). When blocks run
    //    out, the most recently admitted sequence is preempted (recomputed later).
    for (size_t i = 0; i < running.size() && budget > 0;) {
      SeqPtr s = running[i];
      const int64_t rows = std::min<int64_t>(static_cast<int64_t>(s->tokens.size()) - s->computed, budget);
      if (alloc.reserve(s->blocks, s->computed + rows, bs)) {
        plan.push_back({s, rows});
        budget -= rows;
        ++i;
        continue;
      }
      // Preempt the most recently admitted sequence (index >= i, so not planned yet); if that is `s`
      // itself, it goes back to waiting and the loop ends.
      SeqPtr victim = running.back();
      running.pop_back();
      preempt(victim);
    }
    // 2. Admit waiting sequences in FIFO order while the token budget, sequence slots and blocks allow.
    //    A sequence whose adapter needs a slot beyond max_loras is skipped (it keeps its place); one
    //    whose blocks do not fit stops admission (no overtaking on memory).
    std::unordered_set<const void*> active;
    for (const auto& s : running)
      if (s->adapter) active.insert(s->adapter.get());
    const size_t max_loras = static_cast<size_t>(adapters.limits().max_loras);
    for (size_t i = 0; i < waiting.size() && budget > 0 && static_cast<int>(running.size()) < opts.max_num_seqs;) {
      SeqPtr s = waiting[i];
      const bool needs_slot = !s->req.model.empty() && (!s->adapter || !active.count(s->adapter.get()));
      if (needs_slot && active.size() >= max_loras) {
        ++i;
        continue;
      }
      if (!s->req.model.empty() && !s->adapter) {
        waiting.erase(waiting.begin() + static_cast<std::ptrdiff_t>(i));
        if (!ensure_adapter(s)) continue;  // loading (moved to adapter_wait) or failed (finished)
        waiting.insert(waiting.begin() + static_cast<std::ptrdiff_t>(i), s);
      }
      const int64_t rows = std::min<int64_t>(static_cast<int64_t>(s->tokens.size()) - s->computed, budget);
      if (!alloc.reserve(s->blocks, s->computed + rows, bs)) break;
      waiting.erase(waiting.begin() + static_cast<std::ptrdiff_t>(i));
      s->state = State::Running;
      if (!s->has_scheduled) {
        s->has_scheduled = true;
        s->scheduled = Clock::now();
      }
      if (s->adapter) active.insert(s->adapter.get());
      running.push_back(s);
      plan.push_back({s, rows});
      budget -= rows;
    }
    return plan;
  }

  // ---------------------------------------------------------------- one step
  void step(std::vector<Planned>& plan) {
    std::vector<int32_t> ids, logit_rows;
    std::vector<model::SeqChunk> chunks;
    std::vector<const model::LoraSource*> slots;
    std::map<const void*, int32_t> slot_of;
    std::vector<int64_t> first_logit(plan.size(), -1);   // index into logit_rows of each sequence's first logit row
    std::vector<int64_t> sample_logit(plan.size(), -1);  // index of the row the next token is sampled from
    for (size_t i = 0; i < plan.size(); ++i) {
      Sequence& s = *plan[i].s;
      model::SeqChunk c;
      c.row_begin = static_cast<int64_t>(ids.size());
      c.rows = plan[i].rows;
      c.context_len = s.computed;
      c.block_table = s.blocks;
      if (s.adapter) {
        auto [it, fresh] = slot_of.try_emplace(s.adapter.get(), static_cast<int32_t>(slots.size()));
        if (fresh) slots.push_back(s.adapter.get());
        c.slot = it->second;
      }
      const int64_t end = s.computed + c.rows;
      const bool completes = end == static_cast<int64_t>(s.tokens.size());
      const int64_t prompt_len = static_cast<int64_t>(s.req.prompt.size());
      // Rows whose logits we need: every prompt row when prompt logprobs are still owed, and the last
      // row when the chunk reaches the end (the next token is sampled from it).
      for (int64_t r = 0; r < c.rows; ++r) {
        const int64_t tok = s.computed + r;
        const bool want = (s.req.prompt_logprobs && !s.prompt_lp_done && tok < prompt_len - 1) ||
                          (completes && r == c.rows - 1);
        if (want) {
          if (first_logit[i] < 0) first_logit[i] = static_cast<int64_t>(logit_rows.size());
          if (completes && r == c.rows - 1) sample_logit[i] = static_cast<int64_t>(logit_rows.size());
          logit_rows.push_back(static_cast<int32_t>(c.row_begin + r));
        }
      }
      ids.insert(ids.end(), s.tokens.begin() + s.computed, s.tokens.begin() + end);
      chunks.push_back(c);
    }
    Tensor logits;
    try {
      logits = m.forward_paged(be, ids, chunks, slots, cache, logit_rows);
    } catch (const std::exception& e) {
      for (auto& p : plan) {
        running.erase(std::remove(running.begin(), running.end(), p.s), running.end());
        finish(p.s, "error", std::string("forward failed: ") + e.what());
      }
      return;
    }
    const int64_t V = m.vocab_size();
    int64_t new_prompt = 0, new_gen = 0;
    for (size_t i = 0; i < plan.size(); ++i) {
      SeqPtr sp = plan[i].s;
      Sequence& s = *sp;
      const int64_t start = s.computed;
      s.computed += plan[i].rows;
      if (!s.counted_prompt) {
        s.counted_prompt = true;
        new_prompt += static_cast<int64_t>(s.req.prompt.size());
      }
      const int64_t prompt_len = static_cast<int64_t>(s.req.prompt.size());
      int64_t li = first_logit[i];
      if (s.req.prompt_logprobs && !s.prompt_lp_done) {
        if (s.prompt_lp.empty()) s.prompt_lp.push_back(TokenOut{s.tokens[0], 0.0f, {}});
        for (int64_t tok = start; tok < std::min(s.computed, prompt_len - 1); ++tok, ++li) {
          TokenOut t;
          fill_logprobs(std::span<const float>(logits.data<float>() + li * V, static_cast<size_t>(V)),
                        s.tokens[static_cast<size_t>(tok + 1)], std::max(s.req.logprobs, 0), t);
          s.prompt_lp.push_back(std::move(t));
        }
        if (s.computed >= prompt_len - 1 || s.computed == static_cast<int64_t>(s.tokens.size())) {
          s.prompt_lp_done = true;
          if (s.sink.on_prompt_logprobs) s.sink.on_prompt_logprobs(s.prompt_lp);
          s.prompt_lp.clear();
        }
      }
      if (s.computed < static_cast<int64_t>(s.tokens.size())) continue;  // prefill continues next step
      if (s.generated >= s.req.max_tokens) {  // echo-only / max_tokens 0
        running.erase(std::remove(running.begin(), running.end(), sp), running.end());
        finish(sp, "length");
        continue;
      }
      const int64_t last = sample_logit[i];
      std::span<const float> lg(logits.data<float>() + last * V, static_cast<size_t>(V));
      const int32_t next = pick_token(lg, s.req.sampling, s.penalties, s.rng, scratch);
      TokenOut out;
      out.id = next;
      if (s.req.logprobs >= 0) fill_logprobs(lg, next, s.req.logprobs, out);
      s.tokens.push_back(next);
      s.penalties.add_generated(next);
      ++s.generated;
      ++new_gen;
      if (!s.has_first) {
        s.has_first = true;
        s.first_token = Clock::now();
      }
      const bool keep = !s.sink.on_token || s.sink.on_token(out);
      std::string reason;
      if (!keep) reason = "abort";
      else if (std::find(s.req.stop_ids.begin(), s.req.stop_ids.end(), next) != s.req.stop_ids.end()) reason = "stop";
      else if (s.generated >= s.req.max_tokens || static_cast<int64_t>(s.tokens.size()) >= max_model_len) reason = "length";
      if (!reason.empty()) {
        running.erase(std::remove(running.begin(), running.end(), sp), running.end());
        finish(sp, reason);
      }
    }
    std::lock_guard<std::mutex> g(mu);
    st.prompt_tokens += new_prompt;
    st.generation_tokens += new_gen;
    ++st.steps;
  }

  void publish() {
    std::lock_guard<std::mutex> g(mu);
    st.running = static_cast<int>(running.size());
    st.waiting = static_cast<int>(waiting.size() + inbox.size() + adapter_wait.size());
    st.waiting_for_adapter = static_cast<int>(adapter_wait.size());
    st.kv_blocks_used = alloc.used();
    st.kv_usage = static_cast<double>(alloc.used()) / static_cast<double>(alloc.total());
  }

  void loop() {
    for (;;) {
      {
        std::unique_lock<std::mutex> lk(mu);
        cv.wait(lk, [&] {
          return stopping || !inbox.empty() || !cancels.empty() || !adapter_ready.empty() || !running.empty() ||
                 !waiting.empty();
        });
        if (stopping && inbox.empty() && running.empty() && waiting.empty() && adapter_wait.empty()) break;
      }
      take_inbox();
      auto plan = schedule();
      if (!plan.empty()) step(plan);
      publish();
      deliver_finished();
      if (plan.empty() && running.empty() && !waiting.empty()) {
        // Nothing could run: the head waits for an adapter slot held by nobody running, or the pool is
        // too small. Sleep briefly instead of spinning.
        std::unique_lock<std::mutex> lk(mu);
        cv.wait_for(lk, std::chrono::milliseconds(5));
      }
      if (plan.empty() && running.empty() && waiting.empty() && !adapter_wait.empty()) {
        std::unique_lock<std::mutex> lk(mu);
        cv.wait_for(lk, std::chrono::milliseconds(50), [&] { return !adapter_ready.empty() || !inbox.empty() || stopping; });
      }
    }
    publish();
    deliver_finished();
  }
};

Engine::Engine(const model::Model& m, Backend& be, AdapterManager& adapters, EngineOptions opts)
    : impl_(std::make_unique<Impl>(m, be, adapters, opts)) {
  impl_->thread = std::thread([this] { impl_->loop(); });
}

Engine::~Engine() { shutdown(false); }

uint64_t Engine::submit(GenRequest req, Sink sink) {
  auto& I = *impl_;
  if (req.prompt.empty()) throw bad_request("the prompt is empty", "prompt", "empty_prompt");
  validate(req.sampling);
  if (req.max_tokens < 0) throw bad_request("max_tokens must be >= 0", "max_tokens", "invalid_value");
  if (req.logprobs > 20) throw bad_request("logprobs must be at most 20", "logprobs", "invalid_value");
  const int64_t V = I.m.vocab_size();
  for (int32_t id : req.prompt)
    if (id < 0 || id >= V)
      throw bad_request("prompt token id " + std::to_string(id) + " is outside the vocabulary of " + std::to_string(V),
                        "prompt", "invalid_token");
  const int64_t need = static_cast<int64_t>(req.prompt.size()) + req.max_tokens;
  if (need > I.max_model_len)
    throw bad_request("this model's maximum context length is " + std::to_string(I.max_model_len) +
                          " tokens; the request asks for " + std::to_string(req.prompt.size()) + " prompt + " +
                          std::to_string(req.max_tokens) + " completion tokens",
                      "max_tokens", "context_length_exceeded");
  if (!req.model.empty() && !I.adapters.known(req.model))
    throw ApiError(404, "not_found_error", "the model '" + req.model + "' does not exist", "model", "model_not_found");
  auto s = std::make_shared<Sequence>();
  s->tokens = req.prompt;
  s->penalties.prompt.insert(req.prompt.begin(), req.prompt.end());
  s->submitted = Clock::now();
  s->sink = std::move(sink);
  std::lock_guard<std::mutex> g(I.mu);
  if (!I.accepting) throw ApiError(503, "server_error", "the server is shutting down", "", "shutting_down");
  if (I.st.waiting >= I.opts.max_queue)
    throw ApiError(429, "rate_limit_error",
                   "the request queue is full (" + std::to_string(I.opts.max_queue) + " waiting); retry later", "",
                   "queue_full");
  s->id = I.next_id++;
  s->rng.seed(req.sampling.seed ? *req.sampling.seed : I.seed_source());
  s->req = std::move(req);
  I.inbox.push_back(s);
  ++I.st.waiting;
  I.cv.notify_all();
  return s->id;
}

void Engine::cancel(uint64_t id) {
  std::lock_guard<std::mutex> g(impl_->mu);
  impl_->cancels.insert(id);
  impl_->cv.notify_all();
}

EngineStats Engine::stats() const {
  std::lock_guard<std::mutex> g(impl_->mu);
  return impl_->st;
}

const EngineOptions& Engine::options() const { return impl_->opts; }

void Engine::shutdown(bool drain) {
  {
    std::lock_guard<std::mutex> g(impl_->mu);
    impl_->accepting = false;
    if (!impl_->stopping) impl_->drain = drain;
    else if (!drain) impl_->drain = false;
    impl_->stopping = true;
    impl_->cv.notify_all();
  }
  if (impl_->thread.joinable()) impl_->thread.join();
}

}  // namespace graft::serve
