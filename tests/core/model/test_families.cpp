// Every family on deterministic random tiny checkpoints: incremental decoding equals the full
// forward, packed samples equal separate runs, fused and per-expert expert layouts load to the same
// model, NF4 load runs, and malformed checkpoints fail with errors naming the tensor.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "graft/config/model_config.hpp"
#include "graft/cpu/cpu_backend.hpp"
#include "graft/model/model.hpp"
#include "graft/model/presets.hpp"

using namespace graft;

namespace {
config::ModelConfig tiny(const std::string& arch) {
  return config::parse_model_config_text(model::preset_config(arch, "tiny", 300, 1, 2).dump(), arch + " preset");
}
double rel(const float* a, const float* b, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    num += double(a[i] - b[i]) * (a[i] - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / den);
}
std::vector<int32_t> ids(int n, int seed) {
  std::vector<int32_t> v;
  for (int i = 0; i < n; ++i) v.push_back((i * 37 + seed * 11 + 5) % 300);
  return v;
}
class Families : public ::testing::TestWithParam<std::string> {};
}  // namespace

TEST_P(Families, IncrementalDecodeEqualsFullForward) {
  auto cfg = tiny(GetParam());
  auto m = model::Model::from_tensors(cfg, model::random_checkpoint(cfg, 7));
  auto be = cpu::make_backend();
  const int T = 40;  // crosses Llama 4's 32-token attention chunk
  auto x = ids(T, 1);
  model::Batch full;
  full.ids = x;
  Tensor lf = m.forward(*be, full);
  const int64_t V = m.vocab_size();
  for (int64_t i = 0; i < lf.numel(); ++i) ASSERT_TRUE(std::isfinite(lf.data<float>()[i]));
  auto cache = m.new_cache(T);
  const int split = 25;
  model::Batch first;
  first.ids = std::span<const int32_t>(x.data(), split);
  Tensor l1 = m.forward(*be, first, &cache);
  EXPECT_LT(rel(l1.data<float>(), lf.data<float>(), split * V), 1e-5);
  for (int t = split; t < T; ++t) {
    model::Batch one;
    one.ids = std::span<const int32_t>(x.data() + t, 1);
    Tensor lt = m.forward(*be, one, &cache);
    ASSERT_LT(rel(lt.data<float>(), lf.data<float>() + t * V, V), 1e-5) << "position " << t;
  }
  EXPECT_EQ(cache.len, T);
  model::Batch over;
  std::vector<int32_t> one_more = {3};
  over.ids = one_more;
  EXPECT_THROW(m.forward(*be, over, &cache), Error);  // cache full
}

TEST_P(Families, PackedSamplesAreIsolated) {
  auto cfg = tiny(GetParam());
  auto m = model::Model::from_tensors(cfg, model::random_checkpoint(cfg, 3));
  auto be = cpu::make_backend();
  auto a = ids(9, 2), b = ids(14, 3);
  std::vector<int32_t> packed = a, pos, seg;
  packed.insert(packed.end(), b.begin(), b.end());
  for (int i = 0; i < 9; ++i) pos.push_back(i), seg.push_back(0);
  for (int i = 0; i < 14; ++i) pos.push_back(i), seg.push_back(1);
  model::Batch pb;
  pb.ids = packed;
  pb.positions = pos;
  pb.segments = seg;
  Tensor lp = m.forward(*be, pb);
  model::Batch ba, bb;
  ba.ids = a;
  bb.ids = b;
  Tensor la = m.forward(*be, ba), lb = m.forward(*be, bb);
  const int64_t V = m.vocab_size();
  EXPECT_LT(rel(lp.data<float>(), la.data<float>(), 9 * V), 1e-5);
  EXPECT_LT(rel(lp.data<float>() + 9 * V, lb.data<float>(), 14 * V), 1e-5);
}

TEST_P(Families, Nf4LoadStaysClose) {
  auto cfg = tiny(GetParam());
  auto ckpt = model::random_checkpoint(cfg, 5);
  auto m = model::Model::from_tensors(cfg, ckpt);
  model::LoadOptions q;
  q.load_in_4bit = true;
  auto mq = model::Model::from_tensors(cfg, ckpt, q);
  EXPECT_LT(mq.weight_bytes(), m.weight_bytes());
  auto be = cpu::make_backend();
  auto x = ids(12, 4);
  model::Batch b;
  b.ids = x;
  Tensor l = m.forward(*be, b), lq = mq.forward(*be, b);
  EXPECT_LT(rel(lq.data<float>(), l.data<float>(), l.numel()), 0.3);
}

INSTANTIATE_TEST_SUITE_P(All, Families,
                         ::testing::Values("llama", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "mixtral", "deepseek_v2",
                                           "deepseek_v3", "llama4"));

TEST(ModelLoad, FusedExpertLayoutEqualsPerExpert) {
  auto cfg = tiny("qwen3_moe");
  auto ckpt = model::random_checkpoint(cfg, 9);
  const int64_t E = cfg.moe.num_experts, I = cfg.moe.moe_intermediate_size, H = cfg.hidden_size;
  std::vector<std::pair<std::string, Tensor>> fused;
  std::map<std::string, Tensor> byname(ckpt.begin(), ckpt.end());
  for (auto& [n, t] : ckpt)
    if (n.find(".experts.") == std::string::npos) fused.emplace_back(n, t);
  for (int64_t l = 1; l < cfg.num_hidden_layers; ++l) {
    Tensor gu = Tensor::empty({E, 2 * I, H}, DType::F32), dn = Tensor::empty({E, H, I}, DType::F32);
    for (int64_t e = 0; e < E; ++e) {
      const std::string p = "model.layers." + std::to_string(l) + ".mlp.experts." + std::to_string(e) + ".";
      std::copy_n(byname[p + "gate_proj.weight"].data<float>(), I * H, gu.data<float>() + e * 2 * I * H);
      std::copy_n(byname[p + "up_proj.weight"].data<float>(), I * H, gu.data<float>() + e * 2 * I * H + I * H);
      std::copy_n(byname[p + "down_proj.weight"].data<float>(), H * I, dn.data<float>() + e * H * I);
    }
    fused.emplace_back("model.layers." + std::to_string(l) + ".mlp.experts.gate_up_proj", gu);
    fused.emplace_back("model.layers." + std::to_string(l) + ".mlp.experts.down_proj", dn);
  }
  auto a = model::Model::from_tensors(cfg, ckpt), b = model::Model::from_tensors(cfg, fused);
  auto be = cpu::make_backend();
  auto x = ids(10, 6);
  model::Batch bt;
  bt.ids = x;
  Tensor la = a.forward(*be, bt), lb = b.forward(*be, bt);
  for (int64_t i = 0; i < la.numel(); ++i) ASSERT_EQ(la.data<float>()[i], lb.data<float>()[i]);
}

TEST(ModelLoad, BadCheckpointsNameTheTensor) {
  auto cfg = tiny("qwen3");
  auto ckpt = model::random_checkpoint(cfg, 1);
  auto expect_error = [&](std::vector<std::pair<std::string, Tensor>> t, const std::string& needle) {
    try {
      model::Model::from_tensors(cfg, t);
      ADD_FAILURE() << "no error for " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  auto missing = ckpt;
  missing.erase(std::find_if(missing.begin(), missing.end(), [](auto& p) { return p.first == "model.layers.2.self_attn.k_norm.weight"; }));
  expect_error(missing, "model.layers.2.self_attn.k_norm.weight' is missing");
  auto extra = ckpt;
  extra.emplace_back("model.layers.0.mlp.extra_proj.weight", Tensor::zeros({2, 2}, DType::F32));
  expect_error(extra, "model.layers.0.mlp.extra_proj.weight");
  auto shaped = ckpt;
  for (auto& [n, t] : shaped)
    if (n == "model.layers.1.mlp.up_proj.weight") t = Tensor::zeros({5, 64}, DType::F32);
  expect_error(shaped, "model.layers.1.mlp.up_proj.weight' has shape [5, 64], expected [128, 64]");
  auto typed = ckpt;
  for (auto& [n, t] : typed)
    if (n == "model.norm.weight") t = Tensor::zeros({64}, DType::I32);
  expect_error(typed, "model.norm.weight' has dtype i32");
}
