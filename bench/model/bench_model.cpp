// CPU prefill and decode throughput of the model forward (fp32, NF4 weights, NF4 weights + Q8, Q6 or NF4 lm_head), for stories260K
// (../shared/assets, skipped when absent) and the ~100M-parameter "small" Qwen3-MoE preset built in
// memory (8 experts, top-2, 8 layers, hidden 512, vocab 151,669 like Qwen3's tokenizer).
//   ./build/bench/bench_model --benchmark_counters_tabular=true
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <filesystem>
#include <memory>

#include "graft/config/model_config.hpp"
#include "graft/cpu/cpu_backend.hpp"
#include "graft/model/model.hpp"
#include "graft/model/presets.hpp"

using namespace graft;

namespace {
// weights: 0 = f32, 1 = NF4 body (lm_head f32, the default), 2 = NF4 body + NF4 lm_head (--lm-head-dtype nf4),
// 3 = NF4 body + Q8 lm_head (--lm-head-dtype q8), 4 = NF4 body + Q6 lm_head (--lm-head-dtype q6).
const model::Model* get_model(int which, int weights) {
  static std::unique_ptr<model::Model> cache[2][5];
  auto& slot = cache[which][weights];
  if (slot) return slot.get();
  model::LoadOptions o;
  o.load_in_4bit = weights >= 1;
  if (weights == 2) o.lm_head_dtype = model::LmHeadDtype::NF4;
  if (weights == 3) o.lm_head_dtype = model::LmHeadDtype::Q8;
  if (weights == 4) o.lm_head_dtype = model::LmHeadDtype::Q6;
  if (which == 0) {
    const auto dir = std::filesystem::path(GRAFT_SOURCE_DIR) / ".." / "shared/assets/models/stories260K_hf_llama";
    if (!std::filesystem::exists(dir)) return nullptr;
    slot = std::make_unique<model::Model>(model::Model::load(dir.string(), o));
  } else if (const char* dir = std::getenv("GRAFT_BENCH_MOE_DIR")) {  // same files llama.cpp gets
    slot = std::make_unique<model::Model>(model::Model::load(dir, o));
  } else {
    auto cfg = config::parse_model_config_text(model::preset_config("qwen3_moe", "small", 151669, 151643, 151645).dump());
    slot = std::make_unique<model::Model>(model::Model::from_tensors(cfg, model::random_checkpoint(cfg, 1), o));
  }
  return slot.get();
}

std::vector<int32_t> tokens(int n, int64_t vocab) {
  std::vector<int32_t> v;
  for (int i = 0; i < n; ++i) v.push_back(static_cast<int32_t>((i * 7919 + 13) % vocab));
  return v;
}

void BM_Prefill(benchmark::State& st) {
  const auto* m = get_model(static_cast<int>(st.range(0)), static_cast<int>(st.range(1)));
  if (!m) {
    st.SkipWithError("stories260K not found (../shared/assets absent)");
    return;
  }
  auto be = cpu::make_backend();
  const int T = static_cast<int>(st.range(2));
  auto ids = tokens(T, m->vocab_size());
  for (auto _ : st) {
    model::Batch b;
    b.ids = ids;
    b.last_logits_only = true;  // like llama.cpp's prompt processing (and graft generate)
    benchmark::DoNotOptimize(m->forward(*be, b));
  }
  st.counters["tok/s"] = benchmark::Counter(T, benchmark::Counter::kIsIterationInvariantRate);
}

void BM_Decode(benchmark::State& st) {
  const auto* m = get_model(static_cast<int>(st.range(0)), static_cast<int>(st.range(1)));
  if (!m) {
    st.SkipWithError("stories260K not found (../shared/assets absent)");
    return;
  }
  auto be = cpu::make_backend();
  const int ctx = static_cast<int>(st.range(2)), steps = 32;
  auto ids = tokens(ctx, m->vocab_size());
  for (auto _ : st) {
    st.PauseTiming();
    auto cache = m->new_cache(ctx + steps);
    model::Batch b;
    b.ids = ids;
    b.last_logits_only = true;
    m->forward(*be, b, &cache);
    st.ResumeTiming();
    std::vector<int32_t> one = {1};
    for (int i = 0; i < steps; ++i) {
      model::Batch s;
      s.ids = one;
      benchmark::DoNotOptimize(m->forward(*be, s, &cache));
    }
  }
  st.counters["tok/s"] = benchmark::Counter(steps, benchmark::Counter::kIsIterationInvariantRate);
}
}  // namespace

// args: {model (0 stories260K, 1 small qwen3_moe), weights (0 f32, 1 NF4, 2 NF4 + NF4 lm_head, 3 NF4 + Q8 lm_head,
//        4 NF4 + Q6 lm_head),
//        tokens / context}
BENCHMARK(BM_Prefill)->Args({0, 0, 128})->Args({0, 1, 128})->Args({1, 0, 128})->Args({1, 1, 128})->Args({1, 2, 128})
    ->Args({1, 3, 128})->Args({1, 4, 128})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Decode)->Args({0, 0, 16})->Args({0, 1, 16})->Args({1, 0, 16})->Args({1, 1, 16})->Args({1, 2, 16})
    ->Args({1, 3, 16})->Args({1, 4, 16})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_MAIN();
