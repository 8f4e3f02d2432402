// Merge: a base model merged with an adapter computes the same logits as the base model with the
// adapter applied at runtime (tiny qwen3_moe: attention, the dense MLP layer and routed experts), for
// per-expert and fused (transformers v5) base layouts and for PEFT-packed fused-expert adapters.
#include <gtest/gtest.h>

#include "adapter_test_util.hpp"
#include "graft/adapters/merge.hpp"
#include "graft/adapters/peft.hpp"
#include "graft/cpu/cpu_backend.hpp"
#include "graft/error.hpp"

using namespace graft;
using namespace graft::testutil;
using model::ExpertProj;
using model::Module;

namespace {
class Merge : public TmpDir {};

// Logits of `m` over a fixed prompt, with `ad` (may be null) at runtime.
Tensor logits(const model::Model& m, const model::LoraSource* ad) {
  static const std::vector<int32_t> ids = {5, 9, 200, 31, 7, 88, 41, 3, 150, 12, 99, 100};
  auto be = cpu::make_backend();
  std::vector<const model::LoraSource*> slots;
  if (ad) slots.push_back(ad);
  model::Batch b;
  b.ids = ids;
  b.adapters = slots;
  return m.forward(*be, b);
}

void expect_merge_equals_runtime(const fs::path& base_dir, const adapters::Adapter& ad, const fs::path& out) {
  adapters::merge_into(base_dir.string(), ad, out.string());
  for (const char* f : {"config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"})
    EXPECT_EQ(read_text_file((base_dir / f).string()), read_text_file((out / f).string())) << f;
  auto base = model::Model::load(base_dir.string());
  auto merged = model::Model::load(out.string());
  Tensor rt = logits(base, &ad), mg = logits(merged, nullptr), b0 = logits(base, nullptr);
  EXPECT_LT(rel(mg.data<float>(), rt.data<float>(), rt.numel()), 2e-5);
  EXPECT_GT(rel(b0.data<float>(), rt.data<float>(), rt.numel()), 1e-3);  // the adapter matters
}
}  // namespace

TEST_F(Merge, PerExpertBaseMatchesRuntimeAdapter) {
  write_tiny_model(dir_ / "base");
  auto cfg = config::load_model_config((dir_ / "base").string());
  adapters::Adapter ad = random_adapter(cfg, 4, 8, 7);
  // Through the files, as a user would: save, load, merge.
  adapters::save_peft((dir_ / "ad").string(), ad, cfg);
  adapters::Adapter loaded = adapters::load_peft((dir_ / "ad").string(), cfg);
  expect_merge_equals_runtime(dir_ / "base", loaded, dir_ / "merged");
  // Tensors the adapter does not touch are copied bit for bit; touched ones are W + scale·B·A.
  auto b = io::SafetensorsFile::open((dir_ / "base" / "model.safetensors").string());
  auto m = io::SafetensorsFile::open((dir_ / "merged" / "model.safetensors").string());
  ASSERT_EQ(b.tensors().size(), m.tensors().size());
  EXPECT_TRUE(same_tensor(b.tensor("model.layers.1.mlp.experts.1.gate_proj.weight"),
                          m.tensor("model.layers.1.mlp.experts.1.gate_proj.weight")));
  Tensor w = b.tensor("model.layers.2.mlp.experts.3.down_proj.weight").clone();
  adapters::add_lora_delta(w, *loaded.find_expert(2, ExpertProj::Down, 3));
  EXPECT_TRUE(same_tensor(w, m.tensor("model.layers.2.mlp.experts.3.down_proj.weight")));
}

TEST_F(Merge, FusedBaseAndPeftPackedAdapterMatchRuntime) {
  write_tiny_model(dir_ / "base", /*fused=*/true);
  auto cfg = config::load_model_config((dir_ / "base").string());
  const int64_t E = 8, r = 2, H = 64, I = 32;
  adapters::Adapter ad;
  ad.config = adapters::make_config(r, 3, {"q_proj", "o_proj"}, {"mlp.experts.gate_up_proj", "mlp.experts.down_proj"});
  std::mt19937 g(21);
  for (int l = 0; l < 4; ++l) {
    ad.modules[{l, Module::Q}] = LoraFactors{rnd({r, H}, g, 0.2f), rnd({64, r}, g, 0.2f), 1.5f};
    ad.modules[{l, Module::O}] = LoraFactors{rnd({r, 64}, g, 0.2f), rnd({H, r}, g, 0.2f), 1.5f};
    if (l == 0) continue;
    for (int e = 0; e < E; ++e) {
      Tensor a = rnd({r, H}, g, 0.2f);
      ad.experts[{l, ExpertProj::Gate, e}] = LoraFactors{a, rnd({I, r}, g, 0.2f), 1.5f};
      ad.experts[{l, ExpertProj::Up, e}] = LoraFactors{a, rnd({I, r}, g, 0.2f), 1.5f};
      ad.experts[{l, ExpertProj::Down, e}] = LoraFactors{rnd({r, I}, g, 0.2f), rnd({H, r}, g, 0.2f), 1.5f};
    }
  }
  adapters::save_peft((dir_ / "ad").string(), ad, cfg);
  adapters::Adapter loaded = adapters::load_peft((dir_ / "ad").string(), cfg);
  expect_merge_equals_runtime(dir_ / "base", loaded, dir_ / "merged");
  // The merged fused tensor equals base + PEFT's delta computed from the packed file tensors.
  auto af = io::SafetensorsFile::open((dir_ / "ad" / "adapter_model.safetensors").string());
  Tensor A = af.tensor("base_model.model.model.layers.2.mlp.experts.base_layer.lora_A.weight");
  Tensor B = af.tensor("base_model.model.model.layers.2.mlp.experts.base_layer.lora_B.weight");
  auto b = io::SafetensorsFile::open((dir_ / "base" / "model.safetensors").string());
  auto m = io::SafetensorsFile::open((dir_ / "merged" / "model.safetensors").string());
  Tensor wb = b.tensor("model.layers.2.mlp.experts.gate_up_proj"), wm = m.tensor("model.layers.2.mlp.experts.gate_up_proj");
  double maxerr = 0;
  for (int64_t e = 0; e < E; ++e)
    for (int64_t o = 0; o < 2 * I; ++o)
      for (int64_t i = 0; i < H; ++i) {
        double d = 0;
        for (int64_t k = 0; k < r; ++k) d += double(B.data<float>()[o * E * r + k * E + e]) * A.data<float>()[(e * r + k) * H + i];
        const int64_t at = (e * 2 * I + o) * H + i;
        maxerr = std::max(maxerr, std::fabs(wb.data<float>()[at] + 1.5 * d - wm.data<float>()[at]));
      }
  EXPECT_LT(maxerr, 1e-5);
}

TEST_F(Merge, RejectsMismatchedBaseAndSameDir) {
  write_tiny_model(dir_ / "base");
  auto cfg = config::load_model_config((dir_ / "base").string());
  adapters::Adapter ad = random_adapter(cfg, 2, 2, 1);
  ad.modules[{0, Module::QA}] = LoraFactors{Tensor::zeros({2, 64}, DType::F32), Tensor::zeros({8, 2}, DType::F32), 1.0f};
  try {
    adapters::merge_into((dir_ / "base").string(), ad, (dir_ / "out").string());
    FAIL() << "no error";
  } catch (const graft::Error& e) {
    EXPECT_NE(std::string(e.what()).find("q_a_proj"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(dir_ / "out" / "model.safetensors"));
  adapters::Adapter ok = random_adapter(cfg, 2, 2, 1);
  EXPECT_THROW(adapters::merge_into((dir_ / "base").string(), ok, (dir_ / "base").string()), graft::Error);
}
