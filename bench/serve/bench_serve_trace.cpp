// Multi-LoRA serving benchmark of the in-process Engine (docs/performance.md "Serving (CPU)",
// ../shared/design/serving.md "Benchmark method").
//
// A seeded trace: Poisson arrivals at --rate req/s, prompt and output lengths lognormal (median,
// sigma, clamped), random prompt token ids. Each request is assigned an adapter by a popularity
// law over N adapters (a separate RNG stream, so the arrivals and lengths are the same for every
// law and every N):
//   identical  every request on adapter a0
//   uniform    uniform over a0..a{N-1}
//   zipf1.5    P(a_i) ∝ 1/(i+1)^1.5 (Zipf over the adapters' popularity ranks)
//   distinct   request j on a_{j mod N} (round robin: concurrent requests all differ while N ≥ concurrency)
// Adapters are random PEFT adapters written with adapters::save_peft (cached on disk under
// --work-dir): rank drawn from --ranks, a random non-empty subset of q/k/v/o, and with probability
// 2/3 a random non-empty subset of the experts' gate/up/down on 1..--max-experts random experts of
// every MoE layer (--adapter-layers limits the layers, 0 = all).
// Every (N, law) trace runs twice, side by side: base-only (the same trace, every request on the
// base) and with adapters; each run gets a fresh Engine (warmed by one untimed 8-token base request)
// and a cold AdapterManager (adapters load from disk through the host LRU cache during the run, as in
// serving). Greedy decoding, no stop ids: every request generates exactly its output length.
// Metrics: duration = first arrival to last finish; output tok/s and total (prompt + output) tok/s over
// it; TTFT = submit (the scheduled arrival) to first token; TPOT = (finish - first token) / (tokens - 1).
// Lengths are lognormal: the only ShareGPT-format file in ../shared/assets (FastChat's
// dummy_conversation.json) holds short "identity" chats, not a serving length distribution.
//
//   ./build-bench/bench/bench_serve_trace [--requests 32] [--rate 2] [--adapters 1,8,64,512] ...
// Every flag can also be set as an environment variable GRAFT_SERVE_BENCH_<FLAG> (upper case, '-' ->
// '_'); --help lists them. Prints a markdown table; --json-out writes the numbers, and the traces are
// written to WORK_DIR/traces/N{n}_{law}.jsonl for bench/serve/replay.py (HTTP replay of the same trace).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "graft/adapters/peft.hpp"
#include "graft/config/model_config.hpp"
#include "graft/cpu/cpu_backend.hpp"
#include "graft/model/model.hpp"
#include "graft/model/presets.hpp"
#include "graft/serve/adapter_manager.hpp"
#include "graft/serve/engine.hpp"

using namespace graft;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

// ------------------------------------------------------------------------------------------ flags
struct Flag {
  std::string name, value, help;
};

class Flags {
 public:
  Flags() {
    add("requests", "32", "requests per trace");
    add("rate", "2", "Poisson arrival rate, requests/s (0: all arrive at t=0)");
    add("seed", "1", "trace seed (arrivals, lengths, prompt ids, adapter draws)");
    add("prompt-median", "64", "lognormal prompt length: median tokens");
    add("prompt-sigma", "0.6", "lognormal prompt length: sigma of log");
    add("prompt-min", "8", "prompt length clamp, low");
    add("prompt-max", "512", "prompt length clamp, high");
    add("output-median", "32", "lognormal output length: median tokens");
    add("output-sigma", "0.6", "lognormal output length: sigma of log");
    add("output-min", "4", "output length clamp, low");
    add("output-max", "256", "output length clamp, high");
    add("adapters", "1,8,64,512", "numbers of adapters N");
    add("popularity", "identical,uniform,zipf1.5,distinct", "popularity laws (zipfA for any exponent A)");
    add("matrix", "dedup",
        "dedup: N=1 runs only 'identical' and 'identical' runs only at the smallest N (the other combinations "
        "are the same workload); full: every N x law");
    add("ranks", "8,16,32,64", "adapter ranks, drawn uniformly per adapter");
    add("max-experts", "2", "experts per MoE layer an expert-LoRA adapter targets: 1..this many (0: attention only)");
    add("adapter-layers", "0", "adapters target only the first L layers (0: all)");
    add("model-dir", "", "Hugging Face model dir (e.g. from `graft init-model --arch qwen3_moe --preset small`); "
                         "empty: the small qwen3_moe preset built in memory (vocab 151669, seed 1)");
    add("work-dir", "", "adapters and traces go here (default: <build>/serve_bench)");
    add("max-loras", "16", "engine: distinct adapters per step");
    add("max-cpu-loras-mb", "2048", "engine: host adapter cache budget, MiB");
    add("max-num-seqs", "64", "engine: running sequences per step");
    add("max-batch-tokens", "512", "engine: tokens per step");
    add("kv-cache-mb", "512", "engine: KV cache, MiB");
    add("repeats", "1", "base/adapters pairs per trace (alternating order); each side reports its median run");
    add("warmup", "4", "base-only requests run (untimed) before the first trace");
    add("trace-only", "0", "1: write adapters and traces, run nothing");
    add("json-out", "", "write all results as JSON to this file");
    add("dump-tokens", "", "write every run's generated token ids (per request) as JSON to this file");
  }
  void parse(int argc, char** argv) {
    for (auto& f : flags_) {
      std::string env = "GRAFT_SERVE_BENCH_" + f.name;
      for (auto& c : env) c = c == '-' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
      if (const char* v = std::getenv(env.c_str())) f.value = v;
    }
    for (int i = 1; i < argc; ++i) {
      std::string a = argv[i];
      if (a == "--help" || a == "-h") {
        std::printf("usage: %s [--flag value]...\n", argv[0]);
        for (auto& f : flags_) std::printf("  --%-18s %s (default %s)\n", f.name.c_str(), f.help.c_str(), f.value.c_str());
        std::exit(0);
      }
      if (a.rfind("--", 0) != 0) die("unexpected argument '" + a + "' (flags are --name value)");
      std::string name = a.substr(2), value;
      if (auto eq = name.find('='); eq != std::string::npos) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
      } else {
        if (i + 1 >= argc) die("--" + name + " needs a value");
        value = argv[++i];
      }
      find(name).value = value;
    }
  }
  std::string str(const std::string& n) { return find(n).value; }
  double num(const std::string& n) {
    try {
      return std::stod(find(n).value);
    } catch (...) {
      die("--" + n + " must be a number, got '" + find(n).value + "'");
    }
    return 0;
  }
  int64_t integer(const std::string& n) { return static_cast<int64_t>(num(n)); }
  std::vector<std::string> list(const std::string& n) {
    std::vector<std::string> out;
    std::stringstream ss(find(n).value);
    for (std::string s; std::getline(ss, s, ',');)
      if (!s.empty()) out.push_back(s);
    return out;
  }
  [[noreturn]] static void die(const std::string& m) {
    std::fprintf(stderr, "bench_serve_trace: %s\n", m.c_str());
    std::exit(2);
  }

 private:
  void add(std::string n, std::string v, std::string h) { flags_.push_back({std::move(n), std::move(v), std::move(h)}); }
  Flag& find(const std::string& n) {
    for (auto& f : flags_)
      if (f.name == n) return f;
    die("unknown flag --" + n + " (see --help)");
  }
  std::vector<Flag> flags_;
};

// ------------------------------------------------------------------------------------------ trace
struct Req {
  double arrival = 0;  // seconds after the trace start
  std::vector<int32_t> prompt;
  int max_tokens = 0;
  int adapter = -1;  // index, -1 = base
};

struct TraceSpec {
  int requests;
  double rate;
  uint64_t seed;
  double pm, ps, om, os;
  int pmin, pmax, omin, omax;
};

int lognormal_len(std::mt19937_64& g, double median, double sigma, int lo, int hi) {
  std::normal_distribution<double> n(0.0, 1.0);
  const double v = median * std::exp(sigma * n(g));
  return std::clamp(static_cast<int>(std::lround(v)), lo, hi);
}

// Arrivals, lengths and prompts (adapter = -1); identical for every popularity law and N.
std::vector<Req> base_trace(const TraceSpec& s, int64_t vocab_normal) {
  std::mt19937_64 g(s.seed);
  std::exponential_distribution<double> gap(s.rate > 0 ? s.rate : 1.0);
  std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(vocab_normal - 1));
  std::vector<Req> out;
  double t = 0;
  for (int i = 0; i < s.requests; ++i) {
    Req r;
    if (s.rate > 0) t += gap(g);
    r.arrival = s.rate > 0 ? t : 0.0;
    const int p = lognormal_len(g, s.pm, s.ps, s.pmin, s.pmax);
    r.max_tokens = lognormal_len(g, s.om, s.os, s.omin, s.omax);
    for (int j = 0; j < p; ++j) r.prompt.push_back(tok(g));
    out.push_back(std::move(r));
  }
  return out;
}

void assign_adapters(std::vector<Req>& tr, const std::string& law, int n, uint64_t seed) {
  std::mt19937_64 g(seed * 1000003ULL + static_cast<uint64_t>(n) * 7919ULL + std::hash<std::string>{}(law));
  if (law == "identical") {
    for (auto& r : tr) r.adapter = 0;
  } else if (law == "uniform") {
    std::uniform_int_distribution<int> u(0, n - 1);
    for (auto& r : tr) r.adapter = u(g);
  } else if (law == "distinct") {
    for (size_t j = 0; j < tr.size(); ++j) tr[j].adapter = static_cast<int>(j % static_cast<size_t>(n));
  } else if (law.rfind("zipf", 0) == 0) {
    double a = 1.5;
    try {
      a = std::stod(law.substr(4));
    } catch (...) {
      Flags::die("popularity '" + law + "': write zipfA, e.g. zipf1.5");
    }
    std::vector<double> w;
    for (int i = 0; i < n; ++i) w.push_back(1.0 / std::pow(static_cast<double>(i + 1), a));
    std::discrete_distribution<int> d(w.begin(), w.end());
    // Popularity ranks are a random permutation of the adapters, so a0 is not always the hot one.
    std::vector<int> perm(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) perm[static_cast<size_t>(i)] = i;
    std::shuffle(perm.begin(), perm.end(), g);
    for (auto& r : tr) r.adapter = perm[static_cast<size_t>(d(g))];
  } else {
    Flags::die("unknown popularity '" + law + "' (identical, uniform, zipfA, distinct)");
  }
}

void write_trace(const fs::path& file, const std::vector<Req>& tr) {
  fs::create_directories(file.parent_path());
  std::ofstream o(file);
  for (size_t i = 0; i < tr.size(); ++i) {
    nlohmann::json j;
    j["i"] = i;
    j["t"] = tr[i].arrival;
    j["prompt"] = tr[i].prompt;
    j["max_tokens"] = tr[i].max_tokens;
    j["adapter"] = tr[i].adapter < 0 ? "" : "a" + std::to_string(tr[i].adapter);
    o << j.dump() << "\n";
  }
}

// ------------------------------------------------------------------------------------------ adapters
struct AdapterSpec {
  std::vector<int64_t> ranks;
  int max_experts;
  int layers;  // 0 = all
  uint64_t seed;
};

std::string spec_key(const AdapterSpec& s, const config::ModelConfig& cfg) {
  std::string k = "r";
  for (auto r : s.ranks) k += std::to_string(r) + "_";
  k += "e" + std::to_string(s.max_experts) + "_l" + std::to_string(s.layers) + "_s" + std::to_string(s.seed) + "_h" +
       std::to_string(cfg.hidden_size) + "x" + std::to_string(cfg.num_hidden_layers) + "x" +
       std::to_string(cfg.moe.num_experts);
  return k;
}

Tensor randn(const Dims& shape, std::mt19937_64& g, float sd) {
  Tensor t = Tensor::empty(shape, DType::F32);
  std::normal_distribution<float> n(0.0f, sd);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = n(g);
  return t;
}

struct AdapterSummary {
  int64_t rank = 0;
  int attn_modules = 0, expert_factors = 0;
  size_t bytes = 0;
};

// Adapter i: deterministic from (seed, i). The structure (rank, modules, experts) comes from one RNG
// stream and the factor values from another, so the summary alone (values = false) is cheap.
adapters::Adapter make_adapter(const config::ModelConfig& cfg, const AdapterSpec& s, int i, AdapterSummary& sum,
                               bool values = true) {
  using model::ExpertProj;
  using model::Module;
  std::mt19937_64 g(s.seed * 0x9E3779B97F4A7C15ULL + static_cast<uint64_t>(i) + 17);
  std::mt19937_64 gv(s.seed * 0xD1B54A32D192ED03ULL + static_cast<uint64_t>(i) + 29);
  const int64_t r = s.ranks[std::uniform_int_distribution<size_t>(0, s.ranks.size() - 1)(g)];
  std::bernoulli_distribution half(0.5);
  std::vector<Module> attn;
  while (attn.empty())
    for (Module m : {Module::Q, Module::K, Module::V, Module::O})
      if (half(g)) attn.push_back(m);
  std::vector<ExpertProj> eproj;
  const bool experts = s.max_experts > 0 && cfg.moe.num_experts > 0 && std::bernoulli_distribution(2.0 / 3.0)(g);
  if (experts)
    while (eproj.empty())
      for (ExpertProj p : {ExpertProj::Gate, ExpertProj::Up, ExpertProj::Down})
        if (half(g)) eproj.push_back(p);
  std::vector<std::string> targets;
  static const char* attn_names[] = {"q_proj", "k_proj", "v_proj", "o_proj"};
  static const char* exp_names[] = {"gate_proj", "up_proj", "down_proj"};
  for (Module m : attn) targets.push_back(attn_names[static_cast<int>(m)]);
  for (ExpertProj p : eproj) targets.push_back(exp_names[static_cast<int>(p)]);
  adapters::Adapter ad;
  const double alpha = 2.0 * static_cast<double>(r);
  ad.config = adapters::make_config(r, alpha, targets);
  const float scale = static_cast<float>(alpha / static_cast<double>(r));
  const int64_t H = cfg.hidden_size, D = cfg.head_dim, nh = cfg.num_attention_heads, nkv = cfg.num_key_value_heads;
  const int nl = static_cast<int>(cfg.num_hidden_layers);
  const int L = s.layers > 0 ? std::min(s.layers, nl) : nl;
  // Small factors: the random base stays numerically tame (no inf/NaN logits).
  const float sd = 0.02f;
  sum.rank = r;
  for (int l = 0; l < L; ++l) {
    for (Module m : attn) {
      const int64_t out = m == Module::Q ? nh * D : (m == Module::O ? H : nkv * D);
      const int64_t in = m == Module::O ? nh * D : H;
      sum.bytes += static_cast<size_t>(r * (in + out)) * sizeof(float);
      ++sum.attn_modules;
      if (values) ad.modules[{l, m}] = LoraFactors{randn({r, in}, gv, sd), randn({out, r}, gv, sd), scale};
    }
    if (eproj.empty() || !cfg.is_moe_layer(l)) continue;
    const int E = static_cast<int>(cfg.moe.num_experts);
    const int64_t I = cfg.expert_intermediate_size();
    std::vector<int> ex(static_cast<size_t>(E));
    for (int e = 0; e < E; ++e) ex[static_cast<size_t>(e)] = e;
    std::shuffle(ex.begin(), ex.end(), g);
    const int k = std::uniform_int_distribution<int>(1, std::min(s.max_experts, E))(g);
    for (int j = 0; j < k; ++j)
      for (ExpertProj p : eproj) {
        const int64_t out = p == ExpertProj::Down ? H : I, in = p == ExpertProj::Down ? I : H;
        sum.bytes += static_cast<size_t>(r * (in + out)) * sizeof(float);
        ++sum.expert_factors;
        if (values)
          ad.experts[{l, p, ex[static_cast<size_t>(j)]}] =
              LoraFactors{randn({r, in}, gv, sd), randn({out, r}, gv, sd), scale};
      }
  }
  return ad;
}

// ------------------------------------------------------------------------------------------ runs
struct Result {
  std::string label;
  int n = 0;
  std::string law;
  bool with_adapters = false;
  int ok = 0, errors = 0;
  std::string first_error;
  double duration = 0, out_tok = 0, total_tok = 0;
  double out_tps = 0, total_tps = 0;
  std::vector<double> ttft, tpot;  // seconds
  int64_t steps = 0, preemptions = 0;
  int distinct_adapters = 0;
  std::vector<std::vector<int32_t>> tokens;  // generated ids per request
};

double pct(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double idx = p / 100.0 * static_cast<double>(v.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(idx)), hi = static_cast<size_t>(std::ceil(idx));
  return v[lo] + (v[hi] - v[lo]) * (idx - static_cast<double>(lo));
}
double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0 : s / static_cast<double>(v.size());
}

struct EngineCfg {
  serve::EngineOptions eo;
  serve::AdapterLimits lim;
};

Result run_trace(const model::Model& m, Backend& be, const std::vector<Req>& tr, bool with_adapters,
                 const fs::path& adapter_root, const EngineCfg& ec) {
  Result res;
  res.with_adapters = with_adapters;
  serve::AdapterManager am(m.config(), {adapter_root.string()}, ec.lim);
  serve::Engine eng(m, be, am, ec.eo);
  std::mutex mu;
  std::condition_variable cv;
  int done = 0;
  {  // Untimed: one short base request, so that one-time costs of a fresh engine are not in the trace.
    serve::GenRequest g;
    g.prompt = std::vector<int32_t>(tr.empty() ? 8 : std::min<size_t>(8, tr[0].prompt.size()), 1);
    g.max_tokens = 2;
    g.sampling.temperature = 0.0f;
    bool fin = false;
    serve::Sink sink;
    sink.on_finish = [&](const serve::Finish&) {
      std::lock_guard<std::mutex> lk(mu);
      fin = true;
      cv.notify_all();
    };
    eng.submit(std::move(g), std::move(sink));
    std::unique_lock<std::mutex> lk(mu);
    cv.wait(lk, [&] { return fin; });
  }
  std::vector<serve::Finish> fins(tr.size());
  res.tokens.resize(tr.size());
  Clock::time_point last_finish;
  std::set<int> used;
  const auto t0 = Clock::now();
  for (size_t i = 0; i < tr.size(); ++i) {
    const auto& r = tr[i];
    std::this_thread::sleep_until(t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(r.arrival)));
    serve::GenRequest g;
    g.prompt = r.prompt;
    g.max_tokens = r.max_tokens;
    g.sampling.temperature = 0.0f;
    if (with_adapters && r.adapter >= 0) {
      g.model = "a" + std::to_string(r.adapter);
      used.insert(r.adapter);
    }
    serve::Sink sink;
    sink.on_token = [&res, i](const serve::TokenOut& t) {
      res.tokens[i].push_back(t.id);  // scheduler thread only; read after every request finished
      return true;
    };
    sink.on_finish = [&, i](const serve::Finish& f) {
      std::lock_guard<std::mutex> lk(mu);
      fins[i] = f;
      last_finish = Clock::now();
      ++done;
      cv.notify_all();
    };
    try {
      eng.submit(std::move(g), std::move(sink));
    } catch (const std::exception& e) {
      std::lock_guard<std::mutex> lk(mu);
      fins[i].reason = "error";
      fins[i].error = std::string("submit: ") + e.what();
      ++done;
    }
  }
  {
    std::unique_lock<std::mutex> lk(mu);
    cv.wait(lk, [&] { return done == static_cast<int>(tr.size()); });
  }
  eng.shutdown(true);
  auto st = eng.stats();  // final after shutdown
  st.steps -= 2;          // the warm-up request's prefill + decode step
  res.duration = std::chrono::duration<double>(last_finish - t0).count();
  for (size_t i = 0; i < tr.size(); ++i) {
    const auto& f = fins[i];
    if (f.reason == "error") {
      ++res.errors;
      if (res.first_error.empty()) res.first_error = f.error;
      continue;
    }
    ++res.ok;
    res.out_tok += f.completion_tokens;
    res.total_tok += f.completion_tokens + f.prompt_tokens;
    res.ttft.push_back(f.ttft_s);
    if (f.completion_tokens > 1) res.tpot.push_back((f.e2e_s - f.ttft_s) / (f.completion_tokens - 1));
  }
  res.out_tps = res.duration > 0 ? res.out_tok / res.duration : 0;
  res.total_tps = res.duration > 0 ? res.total_tok / res.duration : 0;
  res.steps = st.steps;
  res.preemptions = st.preemptions;
  res.distinct_adapters = static_cast<int>(used.size());
  return res;
}

std::string ratio(const Result& r, const Result& base) {
  if (!r.with_adapters) return "1";
  char b[64];
  std::snprintf(b, sizeof b, "%.3f", base.out_tps > 0 ? r.out_tps / base.out_tps : 0.0);
  std::string s = b;
  if (r.errors) s += " (" + std::to_string(r.errors) + " errors)";
  return s;
}

// The 1-minute load average (the box may be shared: printed next to every pair).
std::string loadavg() {
  std::ifstream f("/proc/loadavg");
  std::string a;
  f >> a;
  return a.empty() ? "?" : a;
}

std::string ms3(const std::vector<double>& v) {
  char b[96];
  std::snprintf(b, sizeof b, "%.0f / %.0f / %.0f", 1e3 * mean(v), 1e3 * pct(v, 50), 1e3 * pct(v, 99));
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  Flags fl;
  fl.parse(argc, argv);
  const fs::path self_dir = fs::absolute(fs::path(argv[0])).parent_path();
  fs::path work = fl.str("work-dir").empty() ? self_dir.parent_path() / "serve_bench" : fs::path(fl.str("work-dir"));
  fs::create_directories(work);

  // Model.
  std::unique_ptr<model::Model> m;
  const std::string mdir = fl.str("model-dir");
  auto t_load = Clock::now();
  if (!mdir.empty()) {
    m = std::make_unique<model::Model>(model::Model::load(mdir));
  } else {
    auto cfg = config::parse_model_config_text(model::preset_config("qwen3_moe", "small", 151669, 151643, 151645).dump());
    m = std::make_unique<model::Model>(model::Model::from_tensors(cfg, model::random_checkpoint(cfg, 1)));
  }
  const auto& cfg = m->config();
  std::fprintf(stderr, "model: %s (%s), %d layers, hidden %lld, %lld experts top-%lld, vocab %lld; loaded in %.1f s\n",
               mdir.empty() ? "qwen3_moe small preset, in memory" : mdir.c_str(), cfg.model_type.c_str(),
               static_cast<int>(cfg.num_hidden_layers), static_cast<long long>(cfg.hidden_size),
               static_cast<long long>(cfg.moe.num_experts), static_cast<long long>(cfg.moe.num_experts_per_tok),
               static_cast<long long>(cfg.vocab_size),
               std::chrono::duration<double>(Clock::now() - t_load).count());

  // Trace.
  TraceSpec ts{static_cast<int>(fl.integer("requests")), fl.num("rate"), static_cast<uint64_t>(fl.integer("seed")),
               fl.num("prompt-median"), fl.num("prompt-sigma"), fl.num("output-median"), fl.num("output-sigma"),
               static_cast<int>(fl.integer("prompt-min")), static_cast<int>(fl.integer("prompt-max")),
               static_cast<int>(fl.integer("output-min")), static_cast<int>(fl.integer("output-max"))};
  // Prompt ids below the first special token (Qwen3: 151643), or the whole vocab for small ones.
  const int64_t vocab_normal = cfg.vocab_size > 151643 ? 151643 : cfg.vocab_size;
  const auto trace0 = base_trace(ts, vocab_normal);
  double ptoks = 0, otoks = 0;
  for (auto& r : trace0) ptoks += static_cast<double>(r.prompt.size()), otoks += r.max_tokens;
  std::fprintf(stderr, "trace: %d requests, Poisson %.2f req/s (last arrival %.1f s), prompt mean %.1f tokens, output mean %.1f tokens\n",
               ts.requests, ts.rate, trace0.empty() ? 0.0 : trace0.back().arrival, ptoks / ts.requests, otoks / ts.requests);

  // Configurations.
  std::vector<int> ns;
  for (auto& s : fl.list("adapters")) ns.push_back(std::stoi(s));
  std::sort(ns.begin(), ns.end());
  const auto laws = fl.list("popularity");
  const bool dedup = fl.str("matrix") == "dedup";
  std::vector<std::pair<int, std::string>> runs;
  for (int n : ns) {
    if (n < 1) Flags::die("--adapters values must be >= 1");
    for (const auto& law : laws) {
      if (dedup && n == 1 && law != "identical") continue;
      if (dedup && law == "identical" && n != ns.front()) continue;
      runs.emplace_back(n, law);
    }
  }
  const int max_n = ns.empty() ? 0 : ns.back();

  // Adapters (cached on disk: regenerated only when missing).
  AdapterSpec as;
  for (auto& s : fl.list("ranks")) as.ranks.push_back(std::stoll(s));
  as.max_experts = static_cast<int>(fl.integer("max-experts"));
  as.layers = static_cast<int>(fl.integer("adapter-layers"));
  as.seed = ts.seed;
  const fs::path root = work / "adapters" / spec_key(as, cfg);
  auto t_gen = Clock::now();
  size_t total_bytes = 0;
  int made = 0, expert_adapters = 0;
  std::map<int64_t, int> rank_hist;
  nlohmann::json manifest = nlohmann::json::array();
  for (int i = 0; i < max_n; ++i) {
    const fs::path d = root / ("a" + std::to_string(i));
    AdapterSummary sum;
    if (!fs::exists(d / "adapter_model.safetensors") || !fs::exists(d / "adapter_config.json")) {
      adapters::save_peft(d.string(), make_adapter(cfg, as, i, sum), cfg);
      ++made;
    } else {
      make_adapter(cfg, as, i, sum, /*values=*/false);
    }
    total_bytes += sum.bytes;
    rank_hist[sum.rank]++;
    if (sum.expert_factors > 0) ++expert_adapters;
    manifest.push_back({{"name", "a" + std::to_string(i)}, {"rank", sum.rank}, {"attn_modules", sum.attn_modules},
                        {"expert_factors", sum.expert_factors}, {"bytes", sum.bytes}});
  }
  {
    std::ofstream o(root / "manifest.json");
    o << manifest.dump(1) << "\n";
  }
  std::string hist;
  for (auto& [r, c] : rank_hist) hist += (hist.empty() ? "" : ", ") + std::to_string(c) + "x r" + std::to_string(r);
  std::fprintf(stderr, "adapters: %d in %s (%d written now, %.1f s); ranks %s; %d with expert LoRA; %.1f MiB of factors in all (mean %.2f MiB)\n",
               max_n, root.string().c_str(), made, std::chrono::duration<double>(Clock::now() - t_gen).count(), hist.c_str(),
               expert_adapters, static_cast<double>(total_bytes) / (1 << 20),
               max_n ? static_cast<double>(total_bytes) / (1 << 20) / max_n : 0.0);

  // Traces for the HTTP replay.
  for (auto& [n, law] : runs) {
    auto tr = trace0;
    assign_adapters(tr, law, n, ts.seed);
    write_trace(work / "traces" / ("N" + std::to_string(n) + "_" + law + ".jsonl"), tr);
  }
  {
    std::ofstream o(work / "traces" / "adapter_root.txt");
    o << fs::absolute(root).string() << "\n";
  }
  std::fprintf(stderr, "traces: %s/N*_*.jsonl\n", (work / "traces").string().c_str());
  if (fl.integer("trace-only") != 0) return 0;

  EngineCfg ec;
  ec.eo.max_num_seqs = static_cast<int>(fl.integer("max-num-seqs"));
  ec.eo.max_batch_tokens = static_cast<int>(fl.integer("max-batch-tokens"));
  ec.eo.kv_cache_bytes = static_cast<size_t>(fl.integer("kv-cache-mb")) << 20;
  ec.eo.max_queue = 1 << 20;
  ec.lim.max_loras = static_cast<int>(fl.integer("max-loras"));
  ec.lim.max_cpu_bytes = static_cast<size_t>(fl.integer("max-cpu-loras-mb")) << 20;
  auto be = cpu::make_backend();

  if (const int w = static_cast<int>(fl.integer("warmup")); w > 0) {
    TraceSpec wt = ts;
    wt.requests = w;
    wt.rate = 0;
    wt.seed = ts.seed + 99;
    auto t = Clock::now();
    run_trace(*m, *be, base_trace(wt, vocab_normal), false, root, ec);
    std::fprintf(stderr, "warm-up: %d base requests, %.1f s\n", w, std::chrono::duration<double>(Clock::now() - t).count());
  }

  std::vector<std::pair<Result, Result>> results;
  const int repeats = std::max<int>(1, static_cast<int>(fl.integer("repeats")));
  for (auto& [n, law] : runs) {
    auto tr = trace0;
    assign_adapters(tr, law, n, ts.seed);
    // Pairs run back to back; with --repeats R the order alternates (base first, then adapters first)
    // and each side reports its run with the median output tok/s.
    std::vector<Result> bs, ls;
    for (int k = 0; k < repeats; ++k) {
      if (k % 2 == 0) {
        bs.push_back(run_trace(*m, *be, tr, false, root, ec));
        ls.push_back(run_trace(*m, *be, tr, true, root, ec));
      } else {
        ls.push_back(run_trace(*m, *be, tr, true, root, ec));
        bs.push_back(run_trace(*m, *be, tr, false, root, ec));
      }
      std::fprintf(stderr, "N=%d %s [%d]: base %.1f out tok/s (%.1f s), adapters %.1f out tok/s (%.1f s, %d distinct) -> %.3f (load %s)%s%s\n",
                   n, law.c_str(), k, bs.back().out_tps, bs.back().duration, ls.back().out_tps, ls.back().duration,
                   ls.back().distinct_adapters, bs.back().out_tps > 0 ? ls.back().out_tps / bs.back().out_tps : 0.0,
                   loadavg().c_str(), ls.back().errors ? ", ERRORS: " : "", ls.back().first_error.c_str());
    }
    auto median_run = [](std::vector<Result>& v) {
      std::sort(v.begin(), v.end(), [](const Result& a, const Result& b) { return a.out_tps < b.out_tps; });
      return std::move(v[(v.size() - 1) / 2]);
    };
    Result base = median_run(bs), lora = median_run(ls);
    for (Result* r : {&base, &lora}) {
      r->n = n;
      r->law = law;
    }
    results.emplace_back(std::move(base), std::move(lora));
  }

  // Markdown table.
  std::printf("\n| N | popularity | run | adapters used | out tok/s | total tok/s | TTFT ms mean / p50 / p99 | TPOT ms mean / p50 / p99 | steps | preempt | out tok/s vs base |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (auto& [b, l] : results) {
    for (const Result* r : {&b, &l}) {
      std::printf("| %d | %s | %s | %d | %.1f | %.1f | %s | %s | %lld | %lld | %s |\n", r->n, r->law.c_str(),
                  r->with_adapters ? "adapters" : "base-only", r->distinct_adapters, r->out_tps, r->total_tps,
                  ms3(r->ttft).c_str(), ms3(r->tpot).c_str(), static_cast<long long>(r->steps),
                  static_cast<long long>(r->preemptions),
                  ratio(*r, b).c_str());
    }
  }
  std::fflush(stdout);

  if (const auto out = fl.str("json-out"); !out.empty()) {
    nlohmann::json j;
    j["trace"] = {{"requests", ts.requests}, {"rate", ts.rate}, {"seed", ts.seed}, {"prompt_mean", ptoks / ts.requests},
                  {"output_mean", otoks / ts.requests}};
    j["adapters"] = {{"root", root.string()}, {"count", max_n}, {"mean_mib", max_n ? total_bytes / double(1 << 20) / max_n : 0}};
    j["runs"] = nlohmann::json::array();
    for (auto& [b, l] : results)
      for (const Result* r : {&b, &l})
        j["runs"].push_back({{"n", r->n}, {"popularity", r->law}, {"adapters", r->with_adapters}, {"ok", r->ok},
                             {"errors", r->errors}, {"first_error", r->first_error}, {"duration_s", r->duration},
                             {"out_tok_s", r->out_tps}, {"total_tok_s", r->total_tps},
                             {"ttft_ms", {1e3 * mean(r->ttft), 1e3 * pct(r->ttft, 50), 1e3 * pct(r->ttft, 99)}},
                             {"tpot_ms", {1e3 * mean(r->tpot), 1e3 * pct(r->tpot, 50), 1e3 * pct(r->tpot, 99)}},
                             {"steps", r->steps}, {"preemptions", r->preemptions},
                             {"distinct_adapters", r->distinct_adapters}});
    std::ofstream(out) << j.dump(1) << "\n";
  }
  if (const auto out = fl.str("dump-tokens"); !out.empty()) {
    nlohmann::json j;
    for (auto& [b, l] : results)
      for (const Result* r : {&b, &l})
        j["N" + std::to_string(r->n) + "_" + r->law + (r->with_adapters ? "_adapters" : "_base")] = r->tokens;
    std::ofstream(out) << j.dump() << "\n";
  }
  int errs = 0;
  for (auto& [b, l] : results) errs += b.errors + l.errors;
  return errs ? 1 : 0;
}
