// The LoRA-aware forward: a model with adapters equals the model with merged weights
// (W + scale·B·A), per row in a mixed batch (several adapters and base rows packed together), for
// attention, dense MLP, routed experts and DeepSeek MLA (kv_b through the naive form, the rest
// absorbed), with and without the KV cache.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
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
using testutil::rel;
using testutil::rnd;

using TestAdapter = testutil::MapLoraSource;

std::string expert_name(config::Family f, int e, ExpertProj p) {
  if (f == config::Family::Mixtral)
    return "block_sparse_moe.experts." + std::to_string(e) + (p == ExpertProj::Gate ? ".w1" : p == ExpertProj::Up ? ".w3" : ".w2");
  return "mlp.experts." + std::to_string(e) + (p == ExpertProj::Gate ? ".gate_proj" : p == ExpertProj::Up ? ".up_proj" : ".down_proj");
}

// Adds scale·B·A to the named weight.
void merge(std::vector<std::pair<std::string, Tensor>>& ckpt, const std::string& name, const LoraFactors& f) {
  for (auto& [n, t] : ckpt)
    if (n == name) {
      Tensor w = t.clone();
      const int64_t O = w.size(0), I = w.size(1), r = f.rank();
      for (int64_t o = 0; o < O; ++o)
        for (int64_t i = 0; i < I; ++i) {
          double d = 0;
          for (int64_t k = 0; k < r; ++k) d += double(f.b.data<float>()[o * r + k]) * f.a.data<float>()[k * I + i];
          w.data<float>()[o * I + i] += static_cast<float>(f.scale * d);
        }
      t = w;
      return;
    }
  FAIL() << "no tensor " << name;
}

// A random adapter over `mods` for every layer, plus experts {0, 3} of each MoE layer; returns the merged checkpoint.
std::vector<std::pair<std::string, Tensor>> make_adapter(const config::ModelConfig& cfg,
                                                         std::vector<std::pair<std::string, Tensor>> ckpt,
                                                         const std::vector<Module>& mods, int rank, uint32_t seed,
                                                         TestAdapter& ad) {
  std::mt19937 r(seed);
  std::map<std::string, Dims> shapes;
  for (auto& [n, t] : ckpt) shapes[n] = t.shape();
  for (int l = 0; l < cfg.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    for (Module m : mods) {
      const std::string n = p + model::module_path(cfg.family, m) + ".weight";
      if (!shapes.count(n)) continue;
      LoraFactors f{rnd({rank, shapes[n][1]}, r, 0.1f), rnd({shapes[n][0], rank}, r, 0.1f), 1.5f};
      merge(ckpt, n, f);
      ad.mods[{l, m}] = f;
    }
    if (!cfg.is_moe_layer(l)) continue;
    for (int e : {0, 3})
      for (ExpertProj pj : {ExpertProj::Gate, ExpertProj::Up, ExpertProj::Down}) {
        const std::string n = p + expert_name(cfg.family, e, pj) + ".weight";
        LoraFactors f{rnd({rank, shapes[n][1]}, r, 0.1f), rnd({shapes[n][0], rank}, r, 0.1f), 0.75f};
        merge(ckpt, n, f);
        ad.experts[{l, pj, e}] = f;
      }
  }
  return ckpt;
}

config::ModelConfig tiny(const std::string& arch) {
  return config::parse_model_config_text(model::preset_config(arch, "tiny", 300, 1, 2).dump());
}

void check_family(const std::string& arch, const std::vector<Module>& mods) {
  auto cfg = tiny(arch);
  auto base_ckpt = model::random_checkpoint(cfg, 17);
  TestAdapter a1, a2;
  auto merged1 = make_adapter(cfg, base_ckpt, mods, 4, 1, a1);
  auto merged2 = make_adapter(cfg, base_ckpt, mods, 2, 2, a2);  // a different rank in the same batch
  auto base = model::Model::from_tensors(cfg, base_ckpt);
  auto m1 = model::Model::from_tensors(cfg, merged1), m2 = model::Model::from_tensors(cfg, merged2);
  auto be = cpu::make_backend();
  const int64_t V = base.vocab_size();
  std::vector<int32_t> s0 = {5, 9, 200, 31, 7, 88}, s1 = {41, 3, 3, 150, 12}, s2 = {99, 100, 101, 102};
  // Packed mixed batch: sample 0 on adapter slot 0, sample 1 on slot 1, sample 2 on the base.
  std::vector<int32_t> ids, pos, seg, slot;
  int si = 0;
  for (auto* s : {&s0, &s1, &s2}) {
    for (size_t i = 0; i < s->size(); ++i) {
      ids.push_back((*s)[i]);
      pos.push_back(static_cast<int32_t>(i));
      seg.push_back(si);
      slot.push_back(si == 2 ? -1 : si);
    }
    ++si;
  }
  std::vector<const model::LoraSource*> slots = {&a1, &a2};
  model::Batch mixed;
  mixed.ids = ids;
  mixed.positions = pos;
  mixed.segments = seg;
  mixed.adapters = slots;
  mixed.row_adapter = slot;
  Tensor lm = base.forward(*be, mixed);
  auto alone = [&](const model::Model& m, const std::vector<int32_t>& x) {
    model::Batch b;
    b.ids = x;
    return m.forward(*be, b);
  };
  Tensor r0 = alone(m1, s0), r1 = alone(m2, s1), r2 = alone(base, s2);
  EXPECT_LT(rel(lm.data<float>(), r0.data<float>(), 6 * V), 2e-5) << arch << " adapter 1 rows";
  EXPECT_LT(rel(lm.data<float>() + 6 * V, r1.data<float>(), 5 * V), 2e-5) << arch << " adapter 2 rows";
  EXPECT_LT(rel(lm.data<float>() + 11 * V, r2.data<float>(), 4 * V), 2e-5) << arch << " base rows";
  // The adapter changes the output (the test is not vacuous).
  Tensor b0 = alone(base, s0);
  EXPECT_GT(rel(b0.data<float>(), r0.data<float>(), 6 * V), 1e-3);
  // Incremental decoding with the adapter equals the merged model.
  auto cache = base.new_cache(8);
  std::vector<const model::LoraSource*> one = {&a1};
  model::Batch p;
  p.ids = std::span<const int32_t>(s0.data(), 4);
  p.adapters = one;
  base.forward(*be, p, &cache);
  model::Batch d;
  d.ids = std::span<const int32_t>(s0.data() + 4, 2);
  d.adapters = one;
  Tensor ld = base.forward(*be, d, &cache);
  EXPECT_LT(rel(ld.data<float>(), r0.data<float>() + 4 * V, 2 * V), 2e-5) << arch << " cached decode";
}
}  // namespace

TEST(LoraForward, Qwen3MoeAttentionDenseMlpAndExperts) {
  check_family("qwen3_moe", {Module::Q, Module::K, Module::V, Module::O, Module::Gate, Module::Up, Module::Down});
}
TEST(LoraForward, DeepSeekV3MlaIncludingKvB) {
  check_family("deepseek_v3", {Module::QA, Module::QB, Module::KVA, Module::KVB, Module::O, Module::Gate, Module::Up,
                               Module::Down, Module::SharedGate, Module::SharedUp, Module::SharedDown});
}
TEST(LoraForward, DeepSeekV2MlaAbsorbedWithAdaptersElsewhere) {
  check_family("deepseek_v2", {Module::Q, Module::KVA, Module::O, Module::Gate, Module::Down});
}
TEST(LoraForward, Qwen2MoeSharedExpertAndMixtral) {
  check_family("qwen2_moe", {Module::Q, Module::V, Module::SharedGate, Module::SharedUp, Module::SharedDown});
  check_family("mixtral", {Module::Q, Module::K, Module::V, Module::O});
}
