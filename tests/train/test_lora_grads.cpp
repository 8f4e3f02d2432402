// LoRA gradients of whole models against PyTorch autograd in float64 (tools/ref/torch_lora_grads.py,
// torch in the reference venv tools/.venv; skipped with a message when torch is missing):
// packed samples, -100 labels, LoRA on every attention projection (q/k/v/o or MLA's q/q_a/q_b/kv_a/
// kv_b/o), the dense MLPs, three routed experts and the shared expert of every MoE layer, for every
// family graft trains. Each case also checks that the training forward matches Model::forward and
// that gradient checkpointing gives bit-identical gradients with fewer saved-activation bytes.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <tuple>

#include "graft/config/model_config.hpp"
#include "graft/cpu/cpu_backend.hpp"
#include "graft/backend/make_backend.hpp"
#include "graft/error.hpp"
#include "graft/cpu/reference_bwd.hpp"
#include "graft/io/safetensors.hpp"
#include "graft/model/presets.hpp"
#include "graft/train/lora_train.hpp"

using namespace graft;
namespace fs = std::filesystem;
using model::ExpertProj;
using model::Module;
using ojson = nlohmann::ordered_json;

namespace {
const std::pair<Module, const char*> kMods[] = {
    {Module::Q, "q"},     {Module::K, "k"},     {Module::V, "v"},       {Module::O, "o"},       {Module::QA, "qa"},
    {Module::QB, "qb"},   {Module::KVA, "kva"}, {Module::KVB, "kvb"},   {Module::Gate, "gate"}, {Module::Up, "up"},
    {Module::Down, "down"}};

const LinearWeight& weight_of(const model::LayerWeights& L, Module m) {
  switch (m) {
    case Module::Q: return L.attn.q;
    case Module::K: return L.attn.k;
    case Module::V: return L.attn.v;
    case Module::O: return L.attn.o;
    case Module::QA: return L.attn.q_a;
    case Module::QB: return L.attn.q_b;
    case Module::KVA: return L.attn.kv_a;
    case Module::KVB: return L.attn.kv_b;
    case Module::Gate: return L.mlp.gate;
    case Module::Up: return L.mlp.up;
    case Module::Down: return L.mlp.down;
    case Module::SharedGate: return L.moe.shared.gate;
    case Module::SharedUp: return L.moe.shared.up;
    default: return L.moe.shared.down;
  }
}

std::string run(const std::string& cmd) {
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  std::array<char, 65536> buf{};
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  return pclose(p) == 0 ? out : std::string();
}

bool ends_with(const std::string& s, const std::string& t) {
  return s.size() >= t.size() && s.compare(s.size() - t.size(), t.size(), t) == 0;
}

struct Case {
  std::string arch;
  std::function<void(ojson&)> patch;  // edits of the preset config (the text part for llama4)
  double dropout = 0.0;                // LoRA dropout (masks shared with the torch reference)
  float router_gain = 1.0f;            // scales the router weights: clear routing margins
  float bias_std = 0.0f;               // random DeepSeek-V3 e_score_correction_bias (changes the selection)
};

struct Grads {
  std::vector<std::vector<float>> g;
};
Grads snapshot(train::TrainableAdapter& ad) {
  Grads s;
  for (auto& [k, p] : ad.params())
    for (const Tensor* t : {&p.da, &p.db}) s.g.emplace_back(t->data<float>(), t->data<float>() + t->numel());
  for (auto& [k, p] : ad.expert_params())
    for (const Tensor* t : {&p.da, &p.db}) s.g.emplace_back(t->data<float>(), t->data<float>() + t->numel());
  return s;
}

// Largest relative error (‖g − want‖ / ‖want‖ per tensor) over the model's LoRA gradients.
double check_case(const std::string& name, const Case& cs) {
  const fs::path dir = fs::temp_directory_path() / ("graft_grads_" + name + std::to_string(::getpid()));
  fs::create_directories(dir);
  ojson cj = model::preset_config(cs.arch, "tiny", 300, 1, 2);
  if (cs.patch) cs.patch(cj.contains("text_config") ? cj["text_config"] : cj);
  std::ofstream(dir / "config.json") << cj.dump();
  auto cfg = config::parse_model_config_text(cj.dump());
  auto ckpt = model::random_checkpoint(cfg, 8);
  std::mt19937_64 brng(11);
  std::normal_distribution<float> bn(0.0f, 1.0f);
  for (auto& [n, t] : ckpt) {
    if (ends_with(n, "mlp.gate.weight") || ends_with(n, "block_sparse_moe.gate.weight") || ends_with(n, "feed_forward.router.weight"))
      for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] *= cs.router_gain;
    if (ends_with(n, "e_score_correction_bias"))
      for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = cs.bias_std * bn(brng);
  }
  io::NamedTensors st;
  for (auto& [n, t] : ckpt) st.emplace_back(n, t);
  io::save_safetensors((dir / "model.safetensors").string(), st);
  auto m = model::Model::load(dir.string());

  train::TrainableAdapter ad;
  std::mt19937_64 rng(3);
  io::NamedTensors lora;
  nlohmann::json scales;
  std::vector<std::tuple<train::LoraParam*, std::string>> keys;
  std::normal_distribution<float> gb(0, 0.05f);  // non-zero B so every gradient is exercised
  auto put = [&](train::LoraParam& p, const std::string& key) {
    for (int64_t i = 0; i < p.f.b.numel(); ++i) p.f.b.data<float>()[i] = gb(rng);
    lora.emplace_back(key + ".A", p.f.a);
    lora.emplace_back(key + ".B", p.f.b);
    scales[key] = p.f.scale;
    keys.emplace_back(&p, key);
  };
  int attn_mods = 0;
  for (int l = 0; l < cfg.num_hidden_layers; ++l) {
    const auto& L = m.layers()[static_cast<size_t>(l)];
    for (auto [mod, mname] : kMods) {
      const LinearWeight& w = weight_of(L, mod);
      if (!w.defined()) continue;
      attn_mods += mod <= Module::KVB;
      put(ad.add(l, mod, w.in, w.out, 4, 8.0f, rng), std::to_string(l) + "." + mname);
    }
    if (!L.kind.moe) continue;
    const int E = static_cast<int>(L.moe.experts.num_experts());
    for (int e : {0, 2, 5}) {
      if (e >= E) continue;
      for (auto [pj, pn] : {std::pair{ExpertProj::Gate, "gate"}, std::pair{ExpertProj::Up, "up"}, std::pair{ExpertProj::Down, "down"}}) {
        const auto& ex = L.moe.experts;
        const LinearWeight& w = pj == ExpertProj::Gate ? ex.gate[static_cast<size_t>(e)]
                                : pj == ExpertProj::Up ? ex.up[static_cast<size_t>(e)]
                                                       : ex.down[static_cast<size_t>(e)];
        put(ad.add_expert(l, pj, e, w.in, w.out, 3, 6.0f, rng), std::to_string(l) + ".e" + std::to_string(e) + "." + pn);
      }
    }
    if (L.moe.shared.defined())
      for (auto [mod, pn] : {std::pair{Module::SharedGate, "sgate"}, std::pair{Module::SharedUp, "sup"}, std::pair{Module::SharedDown, "sdown"}}) {
        const LinearWeight& w = weight_of(L, mod);
        put(ad.add(l, mod, w.in, w.out, 2, 4.0f, rng), std::to_string(l) + "." + pn);
      }
  }
  EXPECT_GT(attn_mods, 0);
  io::save_safetensors((dir / "adapter.safetensors").string(), lora);
  std::ofstream(dir / "adapter.json") << scales.dump();
  // Two packed samples; prompt tokens masked with -100.
  std::vector<int32_t> ids = {5, 77, 140, 9, 250, 33, 1, 60, 61, 62, 299}, pos = {0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4},
                       seg = {0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1}, labels = {-100, -100, 9, 250, 33, -100, -100, 61, 62, 299, -100};
  train::StepOptions so;
  so.lora_dropout = cs.dropout;
  so.dropout_seed = 1234;
  so.dropout_draw = 7;
  nlohmann::json batch{{"ids", ids}, {"labels", labels}, {"positions", pos}, {"segments", seg}};
  if (cs.dropout > 0) batch["dropout"] = {{"p", cs.dropout}, {"seed", so.dropout_seed}, {"draw", so.dropout_draw}};
  std::ofstream(dir / "batch.json") << batch.dump();

  train::StepStats full, ckpt_stats;
  const double loss = train::forward_backward(m, ids, labels, ad, pos, seg, so, &full);
  const Grads g_full = snapshot(ad);
  // Gradient checkpointing: bit-identical loss and gradients, fewer saved-activation bytes.
  ad.zero_grad();
  so.gradient_checkpointing = true;
  const double loss_ckpt = train::forward_backward(m, ids, labels, ad, pos, seg, so, &ckpt_stats);
  EXPECT_EQ(std::memcmp(&loss, &loss_ckpt, sizeof loss), 0) << name;
  const Grads g_ckpt = snapshot(ad);
  EXPECT_TRUE(g_full.g == g_ckpt.g) << name << ": checkpointed gradients differ";
  EXPECT_LT(ckpt_stats.peak_saved_activation_bytes, full.peak_saved_activation_bytes) << name;
  if (cs.dropout == 0) {  // the training forward agrees with the inference forward (no dropout there)
    auto be = cpu::make_backend();
    std::vector<const model::LoraSource*> slots = {&ad};
    model::Batch b;
    b.ids = ids;
    b.positions = pos;
    b.segments = seg;
    b.adapters = slots;
    Tensor lg = m.forward(*be, b);
    const double loss_inf =
        cpu::ref::cross_entropy<float>(lg.data<float>(), labels, static_cast<int64_t>(ids.size()), m.vocab_size(), nullptr);
    EXPECT_NEAR(loss, loss_inf, 1e-5 * std::fabs(loss_inf)) << name;
  }

  const std::string out = run(std::string(GRAFT_REF_PYTHON) + " " + std::string(GRAFT_SOURCE_DIR) + "/tools/ref/torch_lora_grads.py " +
                              dir.string() + " " + (dir / "adapter.safetensors").string() + " " +
                              (dir / "adapter.json").string() + " " + (dir / "batch.json").string() + " 2>/dev/null");
  if (out.empty()) {
    if (!std::getenv("GRAFT_KEEP_TMP")) fs::remove_all(dir);
    return -1;
  }
  auto ref = nlohmann::json::parse(out);
  EXPECT_NEAR(loss, ref["loss"].get<double>(), 1e-5 * std::fabs(loss)) << name;
  double worst = 0;
  int nonzero = 0;
  for (auto& [p, key] : keys)
    for (auto [g, suffix] : {std::pair{&p->da, ".A"}, std::pair{&p->db, ".B"}}) {
      auto want = ref["grads"][key + suffix].get<std::vector<double>>();
      EXPECT_EQ(static_cast<int64_t>(want.size()), g->numel()) << key;
      if (static_cast<int64_t>(want.size()) != g->numel()) continue;
      double num = 0, den = 0;
      for (size_t i = 0; i < want.size(); ++i) {
        const double d = g->data<float>()[i] - want[i];
        num += d * d;
        den += want[i] * want[i];
      }
      // An expert no token was routed to has zero gradient on both sides.
      const double rel = den == 0 ? std::sqrt(num) : std::sqrt(num / den);
      nonzero += den > 0;
      worst = std::max(worst, rel);
      EXPECT_LT(rel, 1e-4) << name << " " << key << suffix;
    }
  EXPECT_GT(nonzero, static_cast<int>(keys.size()));  // most tensors carry gradient
  std::printf("[ grads    ] %-40s loss %.6f  max rel err %.2e over %zu LoRA tensors  saved activations %zu -> %zu bytes\n",
              name.c_str(), loss, worst, 2 * keys.size(), full.peak_saved_activation_bytes,
              ckpt_stats.peak_saved_activation_bytes);
  if (!std::getenv("GRAFT_KEEP_TMP")) fs::remove_all(dir);
  return worst;
}

void check(const std::string& name, const Case& cs) {
  if (check_case(name, cs) < 0) GTEST_SKIP() << "the reference venv (tools/.venv, scripts/setup.sh) with torch is unavailable";
}

const auto kYarn = [](ojson& c) {
  c["rope_scaling"] = {{"type", "yarn"}, {"rope_type", "yarn"}, {"factor", 4.0}, {"original_max_position_embeddings", 1024},
                       {"beta_fast", 32}, {"beta_slow", 1}, {"mscale", 0.9}, {"mscale_all_dim", 1.0}};
};
}  // namespace

TEST(LoraGrads, LlamaMatchesTorchAutograd) { check("llama", {"llama"}); }
// Dynamic NTK RoPE: the 6-token sample outgrows max_position_embeddings 4, so the table is rescaled.
TEST(LoraGrads, LlamaDynamicRopeMatchesTorchAutograd) {
  check("llama_dynamic", {"llama", [](ojson& c) {
          c["max_position_embeddings"] = 4;
          c["rope_scaling"] = {{"type", "dynamic"}, {"rope_type", "dynamic"}, {"factor", 2.0}};
        }});
}
TEST(LoraGrads, Qwen2WithBiasesMatchesTorchAutograd) { check("qwen2", {"qwen2"}); }
TEST(LoraGrads, Qwen3WithQkNormMatchesTorchAutograd) { check("qwen3", {"qwen3"}); }
TEST(LoraGrads, Qwen3MoeExpertsAndRouterPathMatchTorchAutograd) { check("qwen3_moe", {"qwen3_moe"}); }
TEST(LoraGrads, Qwen2MoeSharedExpertMatchesTorchAutograd) { check("qwen2_moe", {"qwen2_moe"}); }
TEST(LoraGrads, MixtralMatchesTorchAutograd) { check("mixtral", {"mixtral"}); }

// DeepSeek-V3: MLA with q_lora, yarn RoPE + softmax mscale; sigmoid router with a correction bias
// that changes the selection, group-limited top-k (2 groups, keep 1), renorm, routed scaling 2.5.
TEST(LoraGrads, DeepseekV3QLoraYarnGroupRoutingMatchesTorchAutograd) {
  check("deepseek_v3", {"deepseek_v3", kYarn, 0.0, 8.0f, 0.3f});
}
// DeepSeek-V3 without q_lora (plain q_proj), 4 groups keep 2, no renorm (weights = 2.5·σ).
TEST(LoraGrads, DeepseekV3PlainQNoRenormMatchesTorchAutograd) {
  check("deepseek_v3_plain_q", {"deepseek_v3", [](ojson& c) {
          c["q_lora_rank"] = nullptr;
          c["n_group"] = 4;
          c["topk_group"] = 2;
          c["norm_topk_prob"] = false;
        }, 0.0, 8.0f, 0.3f});
}
// DeepSeek-V2: softmax, group_limited_greedy (group max, keep 1 of 2), renormalised top-2.
TEST(LoraGrads, DeepseekV2GroupLimitedGreedyMatchesTorchAutograd) {
  check("deepseek_v2", {"deepseek_v2", [](ojson& c) { c["norm_topk_prob"] = true; }, 0.0, 8.0f});
}
// DeepSeek-V2: greedy top-2 without renorm, × routed_scaling_factor; q_lora on.
TEST(LoraGrads, DeepseekV2GreedyRoutedScalingMatchesTorchAutograd) {
  check("deepseek_v2_greedy", {"deepseek_v2", [](ojson& c) {
          c["topk_method"] = "greedy";
          c["norm_topk_prob"] = false;
          c["routed_scaling_factor"] = 16.0;
          c["q_lora_rank"] = 32;
        }, 0.0, 8.0f});
}
// Llama 4: chunked attention (chunk 3 within 6-token samples), NoPE layer 3 with attention
// temperature (floor_scale 2: the scale varies over the positions), L2 q/k norm on RoPE layers,
// MoE on layers 1 and 3 (dense 0 and 2), top-1 sigmoid router scaling the expert input, shared expert.
TEST(LoraGrads, Llama4ChunkedNopeMoeInterleaveMatchesTorchAutograd) {
  check("llama4", {"llama4", [](ojson& c) {
          c["interleave_moe_layer_step"] = 2;
          c["attention_chunk_size"] = 3;
          c["floor_scale"] = 2;
          c["attn_scale"] = 0.5;
        }, 0.0, 8.0f});
}
// Llama 4 with top-2 routing and every layer MoE.
TEST(LoraGrads, Llama4Top2MatchesTorchAutograd) {
  check("llama4_top2", {"llama4", [](ojson& c) {
          c["num_experts_per_tok"] = 2;
          c["attention_chunk_size"] = 4;
          c["floor_scale"] = 3;
        }, 0.0, 8.0f});
}
// LoRA dropout (PEFT semantics) with masks drawn from the shared hash: dense and MoE families.
TEST(LoraGrads, LlamaWithLoraDropoutMatchesTorchAutograd) { check("llama_dropout", {"llama", nullptr, 0.3}); }
TEST(LoraGrads, DeepseekV3WithLoraDropoutMatchesTorchAutograd) {
  check("deepseek_v3_dropout", {"deepseek_v3", nullptr, 0.25, 8.0f, 0.3f});
}
TEST(LoraGrads, Llama4WithLoraDropoutMatchesTorchAutograd) { check("llama4_dropout", {"llama4", nullptr, 0.2, 8.0f}); }

// The trainer's backend factory: "cpu" is the CPU reference backend, any other device is a clear error.
TEST(MakeBackend, DeviceNamesAndUnavailableCuda) {
  EXPECT_EQ(graft::make_backend("cpu")->name(), "cpu");
  auto message = [](const std::string& device) {
    try {
      graft::make_backend(device);
    } catch (const graft::Error& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  EXPECT_NE(message("gpu").find("unknown device 'gpu'"), std::string::npos) << message("gpu");
  EXPECT_NE(message("cuda:x").find("no valid device index"), std::string::npos) << message("cuda:x");
  const std::string dflt = graft::default_device();
  EXPECT_EQ(graft::make_backend("auto")->name(), dflt == "cpu" ? "cpu" : "cuda");
  EXPECT_NE(graft::devices_report().find("default (--device auto): " + dflt), std::string::npos);
  if (!graft::build_has_cuda()) {
    EXPECT_NE(message("cuda").find("this graft build has no CUDA backend"), std::string::npos) << message("cuda");
  } else if (dflt == "cpu") {  // CUDA built in, no GPU here (CI)
    EXPECT_NE(message("cuda").find("no CUDA device is usable"), std::string::npos) << message("cuda");
  } else {
    EXPECT_EQ(graft::make_backend("cuda")->name(), "cuda");
    EXPECT_NE(message("cuda:99").find("does not exist"), std::string::npos) << message("cuda:99");
  }
}
