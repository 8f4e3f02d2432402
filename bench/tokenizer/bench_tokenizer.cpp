// Encode throughput of graft's tokenizer on ~1 MiB of mixed text (tools/tokenizer/make_bench_text.py),
// for the Qwen3 and Llama 3.1 tokenizers. bench/tokenizer/run.sh runs this next to HF tokenizers (Rust, PyPI `tokenizers`)
// on one core and prints MB/s side by side.
//   GRAFT_TOKENIZER_BENCH_TEXT  path of the JSON array of documents (default: build dir's tokenizer_bench_text.json)
//   modes: docs  = encode every document (1187 calls), whole = one call on the concatenation;
//          cold  = docs with the word cache cleared before each pass.
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "graft/tokenizer/tokenizer.hpp"

namespace fs = std::filesystem;
using graft::tokenizer::Tokenizer;

namespace {

const std::vector<std::string>* docs() {
  static std::unique_ptr<std::vector<std::string>> d = [] {
    const char* env = std::getenv("GRAFT_TOKENIZER_BENCH_TEXT");
    fs::path p = env ? fs::path(env) : fs::path("tokenizer_bench_text.json");
    std::unique_ptr<std::vector<std::string>> r;
    std::ifstream f(p);
    if (!f) return r;
    std::stringstream ss;
    ss << f.rdbuf();
    r = std::make_unique<std::vector<std::string>>(nlohmann::json::parse(ss.str()).get<std::vector<std::string>>());
    return r;
  }();
  return d.get();
}

const Tokenizer* tokenizer(const std::string& name) {
  static std::map<std::string, std::unique_ptr<Tokenizer>> cache;
  auto it = cache.find(name);
  if (it != cache.end()) return it->second.get();
  fs::path dir = fs::path(GRAFT_SOURCE_DIR) / ".." / "shared" / "assets" / "tokenizers" / name;
  std::unique_ptr<Tokenizer> t;
  if (fs::exists(dir / "tokenizer.json")) t = std::make_unique<Tokenizer>(Tokenizer::from_file(dir.string()));
  return (cache[name] = std::move(t)).get();
}

void run(benchmark::State& state, const std::string& name, int mode) {
  const auto* d = docs();
  const Tokenizer* tok = tokenizer(name);
  if (!d || !tok) {
    state.SkipWithError("bench text (GRAFT_TOKENIZER_BENCH_TEXT) or shared/assets tokenizer missing: use bench/tokenizer/run.sh");
    return;
  }
  std::string whole;
  size_t bytes = 0;
  for (auto& s : *d) {
    bytes += s.size();
    if (mode == 1) whole += s;
  }
  size_t ntok = 0;
  for (auto _ : state) {
    if (mode == 2) {
      state.PauseTiming();
      tok->clear_cache();
      state.ResumeTiming();
    }
    ntok = 0;
    if (mode == 1) {
      auto ids = tok->encode(whole, false);
      ntok = ids.size();
      benchmark::DoNotOptimize(ids.data());
    } else {
      for (auto& s : *d) {
        auto ids = tok->encode(s, false);
        ntok += ids.size();
        benchmark::DoNotOptimize(ids.data());
      }
    }
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * bytes));
  state.counters["tokens"] = static_cast<double>(ntok);
  state.counters["MB"] = static_cast<double>(bytes) / 1e6;  // per pass
  state.counters["MB_per_s"] = benchmark::Counter(static_cast<double>(bytes) / 1e6, benchmark::Counter::kIsIterationInvariantRate);
}

void reg() {
  for (const char* name : {"qwen3", "llama3_1"}) {
    std::string n = name;
    benchmark::RegisterBenchmark(("encode/" + n + "/docs").c_str(), [n](benchmark::State& s) { run(s, n, 0); })->Unit(benchmark::kMillisecond)->MinTime(2.0);
    benchmark::RegisterBenchmark(("encode/" + n + "/whole").c_str(), [n](benchmark::State& s) { run(s, n, 1); })->Unit(benchmark::kMillisecond)->MinTime(2.0);
    benchmark::RegisterBenchmark(("encode/" + n + "/cold").c_str(), [n](benchmark::State& s) { run(s, n, 2); })->Unit(benchmark::kMillisecond)->MinTime(2.0);
  }
}

}  // namespace

int main(int argc, char** argv) {
  reg();
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
