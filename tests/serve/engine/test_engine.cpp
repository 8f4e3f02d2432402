// The continuous-batching engine against offline generation: a batch mixing 8 adapters of different
// ranks and target modules plus the base gives, per request, exactly the greedy tokens of that adapter
// run alone (model::generate) and of the merged-weights model; preemption under a tiny KV pool keeps
// outputs exact; limits (queue, context, unknown adapter), cancel, seeds, stop ids, logprobs, echo
// logprobs and draining shutdown behave as documented.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <future>
#include <mutex>
#include <thread>

#include "../../adapters/adapter_test_util.hpp"
#include "graft/adapters/merge.hpp"
#include "graft/cpu/cpu_backend.hpp"
#include "graft/model/generate.hpp"
#include "graft/serve/api_error.hpp"
#include "graft/serve/engine.hpp"

using namespace graft;
using namespace graft::testutil;
using model::ExpertProj;
using model::Module;

namespace {

// Collects one request's events; wait() blocks until on_finish.
struct Collector {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<serve::TokenOut> tokens;
  std::vector<serve::TokenOut> prompt_lp;
  std::optional<serve::Finish> fin;
  int stop_after = -1;  // on_token returns false after this many tokens
  serve::Sink sink() {
    serve::Sink s;
    s.on_token = [this](const serve::TokenOut& t) {
      std::lock_guard<std::mutex> g(mu);
      tokens.push_back(t);
      return stop_after < 0 || static_cast<int>(tokens.size()) < stop_after;
    };
    s.on_prompt_logprobs = [this](const std::vector<serve::TokenOut>& v) {
      std::lock_guard<std::mutex> g(mu);
      prompt_lp = v;
    };
    s.on_finish = [this](const serve::Finish& f) {
      std::lock_guard<std::mutex> g(mu);
      fin = f;
      cv.notify_all();
    };
    return s;
  }
  serve::Finish wait() {
    std::unique_lock<std::mutex> lk(mu);
    EXPECT_TRUE(cv.wait_for(lk, std::chrono::seconds(60), [&] { return fin.has_value(); })) << "request never finished";
    return fin.value_or(serve::Finish{});
  }
  std::vector<int32_t> ids() {
    std::lock_guard<std::mutex> g(mu);
    std::vector<int32_t> v;
    for (auto& t : tokens) v.push_back(t.id);
    return v;
  }
};

class EngineTest : public TmpDir {
 protected:
  void SetUp() override {
    TmpDir::SetUp();
    write_tiny_model(dir_ / "base");
    model_ = std::make_unique<model::Model>(model::Model::load((dir_ / "base").string()));
    cfg_ = model_->config();
    be_ = cpu::make_backend();
  }
  // Adapter i: rank from {2, 4, 8, 16, 32, 64, 3, 24}, alternating target sets (attention only,
  // attention + experts, experts + dense MLP only).
  adapters::Adapter make(int i) {
    static const int64_t ranks[] = {2, 4, 8, 16, 32, 64, 3, 24};
    const int64_t r = ranks[i % 8];
    auto ad = random_adapter(cfg_, r, 2.0 * double(r), 100 + static_cast<uint32_t>(i));
    if (i % 3 == 0) {  // attention only
      ad.experts.clear();
      for (auto it = ad.modules.begin(); it != ad.modules.end();)
        it = (it->first.second == Module::Gate || it->first.second == Module::Up || it->first.second == Module::Down)
                 ? ad.modules.erase(it) : std::next(it);
      ad.config.target_modules = {"q_proj", "k_proj", "v_proj", "o_proj"};
    } else if (i % 3 == 2) {  // MLP + experts only
      for (auto it = ad.modules.begin(); it != ad.modules.end();)
        it = (it->first.second == Module::Q || it->first.second == Module::K || it->first.second == Module::V ||
              it->first.second == Module::O) ? ad.modules.erase(it) : std::next(it);
      ad.config.target_modules = {"gate_proj", "up_proj", "down_proj"};
    }
    // Larger B so that adapters change greedy continuations visibly.
    for (auto& [k, f] : ad.modules)
      for (int64_t j = 0; j < f.b.numel(); ++j) f.b.data<float>()[j] *= 3.0f;
    return ad;
  }
  std::vector<int32_t> prompt(int i, int len) {
    std::vector<int32_t> p;
    for (int j = 0; j < len; ++j) p.push_back(static_cast<int32_t>((j * 31 + i * 17 + 3) % 290 + 5));
    return p;
  }
  std::unique_ptr<model::Model> model_;
  config::ModelConfig cfg_;
  std::unique_ptr<Backend> be_;
};

serve::GenRequest greedy(std::vector<int32_t> p, std::string model, int max_tokens) {
  serve::GenRequest r;
  r.prompt = std::move(p);
  r.model = std::move(model);
  r.sampling.temperature = 0.0f;
  r.max_tokens = max_tokens;
  return r;
}

}  // namespace

TEST_F(EngineTest, MixedAdapterBatchEqualsEachAdapterAloneAndMerged) {
  std::vector<adapters::Adapter> ads;
  for (int i = 0; i < 8; ++i) {
    ads.push_back(make(i));
    adapters::save_peft((dir_ / "loras" / ("a" + std::to_string(i))).string(), ads.back(), cfg_);
  }
  serve::AdapterLimits lim;
  lim.max_loras = 8;
  serve::AdapterManager am(cfg_, {(dir_ / "loras").string()}, lim);
  serve::EngineOptions eo;
  eo.max_batch_tokens = 48;  // forces chunked prefill next to decodes
  eo.block_size = 4;
  serve::Engine eng(*model_, *be_, am, eo);
  // 18 requests: 2 per adapter (different prompt lengths) + 2 on the base, submitted together.
  std::vector<std::unique_ptr<Collector>> cols;
  std::vector<std::pair<std::string, std::vector<int32_t>>> reqs;
  for (int i = 0; i < 9; ++i)
    for (int k = 0; k < 2; ++k) reqs.emplace_back(i < 8 ? "a" + std::to_string(i) : "", prompt(i * 2 + k, 5 + 7 * k + i));
  for (auto& [name, p] : reqs) {
    cols.push_back(std::make_unique<Collector>());
    eng.submit(greedy(p, name, 10), cols.back()->sink());
  }
  std::vector<std::vector<int32_t>> got;
  for (auto& c : cols) {
    auto f = c->wait();
    EXPECT_EQ(f.reason, "length") << f.error;
    got.push_back(c->ids());
  }
  // Offline: each adapter alone (as loaded from disk), and the merged-weights model for a few.
  std::set<std::vector<int32_t>> distinct;
  for (size_t j = 0; j < reqs.size(); ++j) {
    const auto& [name, p] = reqs[j];
    model::GenerateOptions go;
    go.max_tokens = 10;
    adapters::Adapter loaded;
    if (!name.empty()) {
      loaded = adapters::load_peft((dir_ / "loras" / name).string(), cfg_);
      go.adapter = &loaded;
    }
    auto alone = model::generate(*model_, *be_, p, go);
    EXPECT_EQ(got[j], alone) << "request " << j << " (" << (name.empty() ? "base" : name) << ")";
    distinct.insert(alone);
    if (!name.empty() && (name == "a1" || name == "a5" || name == "a6")) {
      const auto out = dir_ / ("merged_" + name);
      adapters::merge_into((dir_ / "base").string(), loaded, out.string());
      auto merged = model::Model::load(out.string());
      model::GenerateOptions gm;
      gm.max_tokens = 10;
      EXPECT_EQ(model::generate(merged, *be_, p, gm), alone) << "merged " << name;
    }
  }
  EXPECT_GT(distinct.size(), 12u) << "adapters should change the continuations";
  auto st = eng.stats();
  EXPECT_EQ(st.generation_tokens, 180);
  EXPECT_EQ(st.running, 0);
  EXPECT_EQ(st.kv_blocks_used, 0);
}

TEST_F(EngineTest, PreemptionUnderATinyKvPoolKeepsOutputsExact) {
  adapters::save_peft((dir_ / "loras" / "x").string(), make(1), cfg_);
  serve::AdapterManager am(cfg_, {(dir_ / "loras").string()}, {});
  serve::EngineOptions eo;
  eo.block_size = 4;
  eo.num_kv_blocks = 20;  // 80 tokens for 6 sequences of up to 36 tokens each
  eo.max_model_len = 64;
  serve::Engine eng(*model_, *be_, am, eo);
  std::vector<std::unique_ptr<Collector>> cols;
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 6; ++i) {
    prompts.push_back(prompt(i, 12 + i * 2));
    cols.push_back(std::make_unique<Collector>());
    eng.submit(greedy(prompts.back(), i % 2 ? "x" : "", 16), cols.back()->sink());
  }
  auto x = adapters::load_peft((dir_ / "loras" / "x").string(), cfg_);
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(cols[static_cast<size_t>(i)]->wait().reason, "length");
    model::GenerateOptions go;
    go.max_tokens = 16;
    if (i % 2) go.adapter = &x;
    EXPECT_EQ(cols[static_cast<size_t>(i)]->ids(), model::generate(*model_, *be_, prompts[static_cast<size_t>(i)], go))
        << "sequence " << i;
  }
  EXPECT_GT(eng.stats().preemptions, 0);
  EXPECT_EQ(eng.stats().kv_blocks_used, 0);
}

TEST_F(EngineTest, AdapterSlotLimitStillServesEveryAdapterCorrectly) {
  for (int i = 0; i < 5; ++i) adapters::save_peft((dir_ / "loras" / ("s" + std::to_string(i))).string(), make(i), cfg_);
  serve::AdapterLimits lim;
  lim.max_loras = 2;
  serve::AdapterManager am(cfg_, {(dir_ / "loras").string()}, lim);
  serve::Engine eng(*model_, *be_, am, {});
  std::vector<std::unique_ptr<Collector>> cols;
  for (int i = 0; i < 10; ++i) {
    cols.push_back(std::make_unique<Collector>());
    eng.submit(greedy(prompt(i, 9), "s" + std::to_string(i % 5), 6), cols.back()->sink());
  }
  for (int i = 0; i < 10; ++i) {
    EXPECT_EQ(cols[static_cast<size_t>(i)]->wait().reason, "length");
    auto a = adapters::load_peft((dir_ / "loras" / ("s" + std::to_string(i % 5))).string(), cfg_);
    model::GenerateOptions go;
    go.max_tokens = 6;
    go.adapter = &a;
    EXPECT_EQ(cols[static_cast<size_t>(i)]->ids(), model::generate(*model_, *be_, prompt(i, 9), go));
  }
}

TEST_F(EngineTest, ErrorsLimitsCancelStopAndShutdown) {
  serve::AdapterManager am(cfg_, {dir_.string()}, {});
  serve::EngineOptions eo;
  eo.max_queue = 4;
  eo.max_model_len = 40;
  auto eng = std::make_unique<serve::Engine>(*model_, *be_, am, eo);
  auto status = [&](serve::GenRequest r) {
    try {
      Collector c;
      eng->submit(std::move(r), c.sink());
      c.wait();
      return 200;
    } catch (const serve::ApiError& e) {
      return e.status;
    }
  };
  EXPECT_EQ(status(greedy({}, "", 4)), 400);                 // empty prompt
  EXPECT_EQ(status(greedy(prompt(0, 30), "", 11)), 400);     // 41 > max_model_len 40
  EXPECT_EQ(status(greedy(prompt(0, 5), "nope", 4)), 404);   // unknown adapter
  EXPECT_EQ(status(greedy({1, 99999}, "", 4)), 400);         // token outside the vocabulary
  auto bad = greedy(prompt(0, 5), "", 4);
  bad.sampling.top_p = 0.0f;
  EXPECT_EQ(status(bad), 400);
  // Stop ids: the greedy continuation's 3rd token stops it (and is emitted).
  Collector c0;
  eng->submit(greedy(prompt(1, 6), "", 8), c0.sink());
  c0.wait();
  auto full = c0.ids();
  ASSERT_EQ(full.size(), 8u);
  auto st = greedy(prompt(1, 6), "", 8);
  st.stop_ids = {full[2]};
  Collector c1;
  eng->submit(st, c1.sink());
  EXPECT_EQ(c1.wait().reason, "stop");
  EXPECT_EQ(c1.ids(), std::vector<int32_t>(full.begin(), full.begin() + 1 + (std::find(full.begin(), full.end(), full[2]) - full.begin())));
  // on_token returning false stops with "abort".
  Collector c2;
  c2.stop_after = 2;
  eng->submit(greedy(prompt(2, 6), "", 8), c2.sink());
  EXPECT_EQ(c2.wait().reason, "abort");
  EXPECT_EQ(c2.ids().size(), 2u);
  // Queue full: 4 long requests queue behind a stalled... fill the queue faster than it drains.
  std::vector<std::unique_ptr<Collector>> many;
  int rejected = 0;
  for (int i = 0; i < 40; ++i) {
    many.push_back(std::make_unique<Collector>());
    try {
      eng->submit(greedy(prompt(i, 20), "", 20), many.back()->sink());
    } catch (const serve::ApiError& e) {
      EXPECT_EQ(e.status, 429);
      EXPECT_EQ(e.code, "queue_full");
      ++rejected;
      many.back()->fin = serve::Finish{};
    }
  }
  EXPECT_GT(rejected, 0);
  // Cancel one that is still queued or running. The engine may finish a 20-token request between submit and cancel
  // when this thread is descheduled (seen under a loaded ctest -j2): then it ends "length" and the next try cancels.
  std::string reason;
  for (int attempt = 0; attempt < 20 && reason != "abort"; ++attempt) {
    Collector c3;
    uint64_t id = 0;
    for (int tries = 0; tries < 200 && !id; ++tries) {
      try {
        id = eng->submit(greedy(prompt(3, 20), "", 20), c3.sink());
      } catch (const serve::ApiError&) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
    }
    ASSERT_NE(id, 0u);
    eng->cancel(id);
    reason = c3.wait().reason;
    if (reason != "abort") {
      EXPECT_EQ(reason, "length") << "a cancelled request ends aborted or, if it won the race, complete";
    }
  }
  EXPECT_EQ(reason, "abort");
  // Draining shutdown finishes everything accepted, then refuses new work with 503.
  eng->shutdown(true);
  for (auto& c : many) {
    auto f = c->wait();
    EXPECT_TRUE(f.reason == "length" || f.reason.empty()) << f.reason;
  }
  EXPECT_EQ(status(greedy(prompt(0, 5), "", 4)), 503);
}

TEST_F(EngineTest, SeededSamplingLogprobsAndEchoLogprobs) {
  serve::AdapterManager am(cfg_, {dir_.string()}, {});
  serve::Engine eng(*model_, *be_, am, {});
  auto sampled = [&](uint64_t seed, int others) {
    std::vector<std::unique_ptr<Collector>> noise;
    for (int i = 0; i < others; ++i) {
      noise.push_back(std::make_unique<Collector>());
      auto r = greedy(prompt(50 + i, 7), "", 12);
      r.sampling.temperature = 1.0f;
      eng.submit(r, noise.back()->sink());
    }
    auto r = greedy(prompt(7, 9), "", 12);
    r.sampling.temperature = 0.9f;
    r.sampling.top_p = 0.95f;
    r.sampling.seed = seed;
    Collector c;
    eng.submit(r, c.sink());
    c.wait();
    for (auto& n : noise) n->wait();
    return c.ids();
  };
  const auto a = sampled(42, 0), b = sampled(42, 5), c = sampled(43, 0);
  EXPECT_EQ(a, b) << "same seed alone and batched";
  EXPECT_NE(a, c);
  // Logprobs of a greedy request equal log_softmax of the offline logits.
  auto r = greedy(prompt(8, 10), "", 3);
  r.logprobs = 5;
  r.prompt_logprobs = true;
  Collector lp;
  eng.submit(r, lp.sink());
  lp.wait();
  model::Batch full;
  std::vector<int32_t> seq = r.prompt;
  for (int32_t t : lp.ids()) seq.push_back(t);
  full.ids = seq;
  Tensor logits = model_->forward(*be_, full);
  const int64_t V = model_->vocab_size();
  auto lsm = [&](int64_t row, int32_t id) {
    const float* l = logits.data<float>() + row * V;
    double mx = *std::max_element(l, l + V), z = 0;
    for (int64_t v = 0; v < V; ++v) z += std::exp(double(l[v]) - mx);
    return double(l[id]) - mx - std::log(z);
  };
  ASSERT_EQ(lp.prompt_lp.size(), r.prompt.size());
  for (size_t i = 1; i < r.prompt.size(); ++i)
    EXPECT_NEAR(lp.prompt_lp[i].logprob, lsm(static_cast<int64_t>(i) - 1, r.prompt[i]), 1e-4);
  for (size_t i = 0; i < lp.tokens.size(); ++i) {
    const auto& t = lp.tokens[i];
    EXPECT_NEAR(t.logprob, lsm(static_cast<int64_t>(r.prompt.size() + i) - 1, t.id), 1e-4);
    ASSERT_EQ(t.top.size(), 5u);
    EXPECT_EQ(t.top[0].first, t.id);  // greedy = the best
    for (size_t k = 1; k < t.top.size(); ++k) EXPECT_LE(t.top[k].second, t.top[k - 1].second);
  }
  // Echo scoring (lm-eval loglikelihood): max_tokens 0, prompt logprobs only.
  auto e = greedy(prompt(8, 10), "", 0);
  e.prompt_logprobs = true;
  e.logprobs = 1;
  Collector ec;
  eng.submit(e, ec.sink());
  EXPECT_EQ(ec.wait().reason, "length");
  EXPECT_TRUE(ec.tokens.empty());
  ASSERT_EQ(ec.prompt_lp.size(), e.prompt.size());
  EXPECT_NEAR(ec.prompt_lp[3].logprob, lp.prompt_lp[3].logprob, 1e-5);
}

TEST_F(EngineTest, HotLoadAndUnloadWhile32StreamsRun) {
  for (int i = 0; i < 6; ++i) adapters::save_peft((dir_ / "loras" / ("h" + std::to_string(i))).string(), make(i), cfg_);
  serve::AdapterLimits lim;
  lim.max_loras = 4;
  serve::AdapterManager am(cfg_, {(dir_ / "loras").string()}, lim);
  am.add_and_load("h0", (dir_ / "loras" / "h0").string());
  am.add_and_load("h1", (dir_ / "loras" / "h1").string());
  serve::EngineOptions eo;
  eo.max_batch_tokens = 64;
  serve::Engine eng(*model_, *be_, am, eo);
  // Expected outputs, offline.
  std::map<std::string, adapters::Adapter> loaded;
  for (int i = 0; i < 6; ++i) {
    const std::string n = "h" + std::to_string(i);
    loaded[n] = adapters::load_peft((dir_ / "loras" / n).string(), cfg_);
  }
  auto expect_for = [&](const std::string& name, const std::vector<int32_t>& p) {
    model::GenerateOptions go;
    go.max_tokens = 12;
    if (!name.empty()) go.adapter = &loaded.at(name);
    return model::generate(*model_, *be_, p, go);
  };
  // 32 streams on h0/h1/base (resident from the start) while h2..h5 are loaded and h1... stays.
  std::vector<std::unique_ptr<Collector>> cols;
  std::vector<std::pair<std::string, std::vector<int32_t>>> reqs;
  std::atomic<bool> churn{true};
  std::thread loader([&] {
    int k = 0;
    while (churn.load()) {
      const std::string n = "h" + std::to_string(2 + k % 4);
      try {
        am.add_and_load(n, (dir_ / "loras" / n).string());
      } catch (const serve::ApiError&) {
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(3));
      try {
        am.remove(n);
      } catch (const serve::ApiError&) {
      }
      ++k;
    }
  });
  for (int i = 0; i < 32; ++i) {
    const std::string name = i % 3 == 0 ? "" : (i % 3 == 1 ? "h0" : "h1");
    reqs.emplace_back(name, prompt(i, 6 + i % 9));
    cols.push_back(std::make_unique<Collector>());
    eng.submit(greedy(reqs.back().second, name, 12), cols.back()->sink());
  }
  // Requests on churning adapters: accepted ones must be exact; rejected ones fail cleanly (404).
  int churn_ok = 0;
  for (int i = 0; i < 12; ++i) {
    const std::string n = "h" + std::to_string(2 + i % 4);
    am.add_and_load(n + "_pinned" + std::to_string(i), (dir_ / "loras" / n).string());
    Collector c;
    eng.submit(greedy(prompt(100 + i, 7), n + "_pinned" + std::to_string(i), 12), c.sink());
    auto f = c.wait();
    ASSERT_EQ(f.reason, "length") << f.error;
    EXPECT_EQ(c.ids(), expect_for(n, prompt(100 + i, 7)));
    am.remove(n + "_pinned" + std::to_string(i));
    ++churn_ok;
  }
  for (size_t i = 0; i < cols.size(); ++i) {
    auto f = cols[i]->wait();
    EXPECT_EQ(f.reason, "length") << "stream " << i << ": " << f.error;
    EXPECT_EQ(cols[i]->ids(), expect_for(reqs[i].first, reqs[i].second)) << "stream " << i;
  }
  churn = false;
  loader.join();
  EXPECT_EQ(churn_ok, 12);
}

TEST_F(EngineTest, AnAdapterThatFailsToLoadIsAClientErrorNotAServerError) {
  fs::create_directories(dir_ / "loras" / "broken");
  write_text(dir_ / "loras" / "broken" / "adapter_config.json", R"({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]})");
  serve::AdapterManager am(cfg_, {(dir_ / "loras").string()}, {});
  serve::Engine eng(*model_, *be_, am, {});
  Collector c;
  eng.submit(greedy(prompt(1, 5), "broken", 4), c.sink());
  auto f = c.wait();
  EXPECT_EQ(f.reason, "error");
  EXPECT_EQ(f.error_status, 400) << f.error;
  EXPECT_EQ(f.error_code, "invalid_adapter");
  Collector ok;
  eng.submit(greedy(prompt(1, 5), "", 4), ok.sink());
  EXPECT_EQ(ok.wait().reason, "length");
}
