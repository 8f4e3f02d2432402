// graft's CPU training step (forward with saved activations + backward to every LoRA factor) on a
// model directory given by GRAFT_BENCH_TRAIN_DIR (bench/train/run.sh makes one), one sequence of
// T tokens, LoRA rank R on q/k/v/o and every expert's (or dense MLP's) gate/up/down, with (C=1) or
// without (C=0) activation checkpointing; the counter saved_MiB is the step's peak saved-activation
// memory as forward_backward measures it (StepStats).
//   GRAFT_BENCH_TRAIN_DIR=... ./build/bench/bench_train_step --benchmark_filter=T:128
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <random>

#include "graft/model/model.hpp"
#include "graft/train/lora_train.hpp"

using namespace graft;

static void BM_TrainStep(benchmark::State& st) {
  const char* dir = std::getenv("GRAFT_BENCH_TRAIN_DIR");
  if (!dir) {
    st.SkipWithError("set GRAFT_BENCH_TRAIN_DIR (bench/train/run.sh does)");
    return;
  }
  static model::Model m = model::Model::load(dir);
  const int T = static_cast<int>(st.range(0)), R = static_cast<int>(st.range(1));
  train::StepOptions so;
  so.gradient_checkpointing = st.range(2) != 0;
  train::StepStats stats;
  train::TrainableAdapter ad;
  std::mt19937_64 rng(1);
  for (int l = 0; l < static_cast<int>(m.layers().size()); ++l) {
    const auto& L = m.layers()[static_cast<size_t>(l)];
    for (auto [mod, w] : {std::pair{model::Module::Q, &L.attn.q}, {model::Module::K, &L.attn.k}, {model::Module::V, &L.attn.v},
                          {model::Module::O, &L.attn.o}})
      ad.add(l, mod, w->in, w->out, R, 2.0f * R, rng);
    if (L.kind.moe) {
      for (int e = 0; e < static_cast<int>(L.moe.experts.num_experts()); ++e)
        for (auto pj : {model::ExpertProj::Gate, model::ExpertProj::Up, model::ExpertProj::Down}) {
          const auto& w = pj == model::ExpertProj::Gate ? L.moe.experts.gate[static_cast<size_t>(e)]
                          : pj == model::ExpertProj::Up ? L.moe.experts.up[static_cast<size_t>(e)]
                                                        : L.moe.experts.down[static_cast<size_t>(e)];
          ad.add_expert(l, pj, e, w.in, w.out, R, 2.0f * R, rng);
        }
    } else {
      for (auto [mod, w] : {std::pair{model::Module::Gate, &L.mlp.gate}, {model::Module::Up, &L.mlp.up}, {model::Module::Down, &L.mlp.down}})
        ad.add(l, mod, w->in, w->out, R, 2.0f * R, rng);
    }
  }
  std::vector<int32_t> ids(static_cast<size_t>(T)), labels(static_cast<size_t>(T));
  for (int i = 0; i < T; ++i) ids[static_cast<size_t>(i)] = (i * 7919 + 3) % static_cast<int>(m.vocab_size()), labels[static_cast<size_t>(i)] = (i * 104729 + 5) % static_cast<int>(m.vocab_size());
  for (auto _ : st) benchmark::DoNotOptimize(train::forward_backward(m, ids, labels, ad, {}, {}, so, &stats));
  st.counters["tok/s"] = benchmark::Counter(T, benchmark::Counter::kIsIterationInvariantRate);
  st.counters["saved_MiB"] = static_cast<double>(stats.peak_saved_activation_bytes) / (1024.0 * 1024.0);
}
BENCHMARK(BM_TrainStep)
    ->ArgNames({"T", "R", "C"})
    ->Args({128, 8, 0})
    ->Args({512, 8, 0})
    ->Args({128, 8, 1})
    ->Args({512, 8, 1})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_MAIN();
