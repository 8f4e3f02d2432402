// forward_paged (continuous batching over a paged KV cache) against the single-sequence forward with a
// contiguous cache: several sequences, each with its own adapter (or none), prefilled in chunks and
// decoded together, block tables shuffled across the pool, must give the same logits as each
// sequence run alone, for every family (MLA with and without an adapter on kv_b).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <random>

#include "graft/config/model_config.hpp"
#include "graft/cpu/cpu_backend.hpp"
#include "graft/model/model.hpp"
#include "graft/model/presets.hpp"
#include "../../common/tensor_test_util.hpp"
#include "map_lora_source.hpp"

using namespace graft;
using model::ExpertProj;
using model::Module;

namespace {
config::ModelConfig tiny(const std::string& arch) {
  return config::parse_model_config_text(model::preset_config(arch, "tiny", 300, 1, 2).dump(), arch + " preset");
}
using testutil::rel;
using testutil::rnd;

// A random adapter on every projection of every layer (rank `r`) and on every expert.
class RandomAdapter : public testutil::MapLoraSource {
 public:
  RandomAdapter(const model::Model& m, int r, uint32_t seed) {
    std::mt19937 g(seed);
    const auto& cfg = m.config();
    for (int l = 0; l < cfg.num_hidden_layers; ++l) {
      const auto& L = m.layers()[static_cast<size_t>(l)];
      auto add = [&](Module mod, const LinearWeight& w) {
        if (w.defined()) mods[{l, mod}] = LoraFactors{rnd({r, w.in}, g, 0.2f), rnd({w.out, r}, g, 0.2f), 1.0f};
      };
      add(Module::Q, L.attn.q), add(Module::K, L.attn.k), add(Module::V, L.attn.v), add(Module::O, L.attn.o);
      add(Module::QA, L.attn.q_a), add(Module::QB, L.attn.q_b), add(Module::KVA, L.attn.kv_a), add(Module::KVB, L.attn.kv_b);
      add(Module::Gate, L.mlp.gate), add(Module::Up, L.mlp.up), add(Module::Down, L.mlp.down);
      add(Module::SharedGate, L.moe.shared.gate), add(Module::SharedUp, L.moe.shared.up), add(Module::SharedDown, L.moe.shared.down);
      for (int64_t e = 0; e < L.moe.experts.num_experts(); ++e) {
        const auto E = static_cast<size_t>(e);
        experts[{l, ExpertProj::Gate, int(e)}] = LoraFactors{rnd({r, L.moe.experts.gate[E].in}, g, 0.2f), rnd({L.moe.experts.gate[E].out, r}, g, 0.2f), 0.5f};
        experts[{l, ExpertProj::Up, int(e)}] = LoraFactors{rnd({r, L.moe.experts.up[E].in}, g, 0.2f), rnd({L.moe.experts.up[E].out, r}, g, 0.2f), 0.5f};
        experts[{l, ExpertProj::Down, int(e)}] = LoraFactors{rnd({r, L.moe.experts.down[E].in}, g, 0.2f), rnd({L.moe.experts.down[E].out, r}, g, 0.2f), 0.5f};
      }
    }
  }
};

class Paged : public ::testing::TestWithParam<std::string> {};
}  // namespace

TEST_P(Paged, BatchedChunkedSequencesEqualEachAlone) {
  auto cfg = tiny(GetParam());
  auto m = model::Model::from_tensors(cfg, model::random_checkpoint(cfg, 11, 0.05f));
  auto be = cpu::make_backend();
  RandomAdapter a1(m, 4, 1), a2(m, 8, 2);
  std::vector<const model::LoraSource*> slots = {&a1, &a2};
  const int64_t V = m.vocab_size();
  // Three sequences: adapter 0, the base, adapter 1. Lengths cross Llama 4's 32-token chunk.
  struct Seq { std::vector<int32_t> ids; int32_t slot; };
  std::vector<Seq> seqs = {{{}, 0}, {{}, -1}, {{}, 1}};
  std::mt19937 g(5);
  for (auto& s : seqs)
    for (int i = 0; i < 38; ++i) s.ids.push_back(static_cast<int32_t>(g() % 300));
  // Reference: each sequence alone through the contiguous cache, one token at a time after a prefill of 9.
  std::vector<std::vector<float>> ref(seqs.size());
  for (size_t s = 0; s < seqs.size(); ++s) {
    auto cache = m.new_cache(64);
    std::vector<const model::LoraSource*> one;
    if (seqs[s].slot >= 0) one.push_back(slots[static_cast<size_t>(seqs[s].slot)]);
    model::Batch b;
    b.ids = std::span<const int32_t>(seqs[s].ids);
    b.adapters = one;
    Tensor l = m.forward(*be, b, &cache);
    ref[s].assign(l.data<float>(), l.data<float>() + l.numel());
  }
  // Paged: block size 4, shuffled block ids; chunk sizes vary per step so prefill and decode mix.
  const int64_t bs = 4;
  auto cache = m.new_paged_cache(64, bs);
  std::vector<int32_t> pool(64);
  std::iota(pool.begin(), pool.end(), 0);
  std::shuffle(pool.begin(), pool.end(), g);
  std::vector<std::vector<int32_t>> tables(seqs.size());
  for (size_t s = 0; s < seqs.size(); ++s) tables[s].assign(pool.begin() + int64_t(s) * 12, pool.begin() + int64_t(s + 1) * 12);
  std::vector<int64_t> done(seqs.size(), 0);
  const std::vector<std::vector<int>> plan = {{9, 0, 13}, {1, 17, 1}, {20, 1, 1}, {1, 20, 23}, {7, 0, 0}};
  for (const auto& step : plan) {
    std::vector<int32_t> ids, logit_rows;
    std::vector<model::SeqChunk> chunks;
    for (size_t s = 0; s < seqs.size(); ++s) {
      const int64_t n = std::min<int64_t>(step[s], 38 - done[s]);
      model::SeqChunk c;
      c.row_begin = static_cast<int64_t>(ids.size());
      c.rows = n;
      c.context_len = done[s];
      c.block_table = tables[s];
      c.slot = seqs[s].slot;
      for (int64_t i = 0; i < n; ++i) {
        logit_rows.push_back(static_cast<int32_t>(ids.size()));
        ids.push_back(seqs[s].ids[static_cast<size_t>(done[s] + i)]);
      }
      chunks.push_back(c);
    }
    Tensor l = m.forward_paged(*be, ids, chunks, slots, cache, logit_rows);
    ASSERT_EQ(l.size(0), static_cast<int64_t>(logit_rows.size()));
    int64_t row = 0;
    for (size_t s = 0; s < seqs.size(); ++s)
      for (int64_t i = 0; i < chunks[s].rows; ++i, ++row)
        ASSERT_LT(rel(l.data<float>() + row * V, ref[s].data() + (done[s] + i) * V, V), 2e-5)
            << GetParam() << " sequence " << s << " position " << done[s] + i;
    for (size_t s = 0; s < seqs.size(); ++s) done[s] += chunks[s].rows;
  }
  EXPECT_EQ(done, (std::vector<int64_t>{38, 38, 38}));
}

TEST(PagedForward, RejectsBadMetadata) {
  auto cfg = tiny("qwen3");
  auto m = model::Model::from_tensors(cfg, model::random_checkpoint(cfg, 3));
  auto be = cpu::make_backend();
  auto cache = m.new_paged_cache(4, 4);
  std::vector<int32_t> ids = {1, 2, 3, 4, 5};
  std::vector<int32_t> table = {0};
  std::vector<int32_t> rows = {4};
  model::SeqChunk c;
  c.rows = 5;
  c.block_table = table;  // 1 block of 4 tokens cannot hold 5
  std::vector<model::SeqChunk> chunks = {c};
  EXPECT_THROW(m.forward_paged(*be, ids, chunks, {}, cache, rows), Error);
  std::vector<int32_t> bad = {0, 9};
  chunks[0].block_table = bad;  // block 9 is outside the pool
  EXPECT_THROW(m.forward_paged(*be, ids, chunks, {}, cache, rows), Error);
  std::vector<int32_t> ok = {0, 1};
  chunks[0].block_table = ok;
  chunks[0].rows = 4;  // chunks cover 4 of 5 rows
  EXPECT_THROW(m.forward_paged(*be, ids, chunks, {}, cache, rows), Error);
  chunks[0].rows = 5;
  EXPECT_EQ(m.forward_paged(*be, ids, chunks, {}, cache, rows).size(0), 1);
}

INSTANTIATE_TEST_SUITE_P(All, Paged,
                         ::testing::Values("llama", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "mixtral", "deepseek_v2",
                                           "deepseek_v3", "llama4"));
