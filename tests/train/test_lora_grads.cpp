// LoRA gradients of the dense decoder against PyTorch autograd in float64 (Debian python3-torch, run
// as /usr/bin/python3): packed samples, -100 labels, every attention and MLP projection adapted.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <array>
#include <algorithm>
#include <cmath>
#include <tuple>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "graft/config/model_config.hpp"
#include "graft/cpu/cpu_backend.hpp"
#include "graft/cpu/reference_bwd.hpp"
#include "graft/io/safetensors.hpp"
#include "graft/model/presets.hpp"
#include "graft/train/lora_train.hpp"

using namespace graft;
namespace fs = std::filesystem;
using model::Module;

namespace {
const std::pair<Module, const char*> kMods[] = {{Module::Q, "q"},       {Module::K, "k"},   {Module::V, "v"},
                                                {Module::O, "o"},       {Module::Gate, "gate"}, {Module::Up, "up"},
                                                {Module::Down, "down"}};

std::string run(const std::string& cmd) {
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  std::array<char, 65536> buf{};
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  return pclose(p) == 0 ? out : std::string();
}

void check_arch(const std::string& arch) {
  const fs::path dir = fs::temp_directory_path() / ("graft_grads_" + arch + std::to_string(::getpid()));
  fs::create_directories(dir);
  auto cj = model::preset_config(arch, "tiny", 300, 1, 2);
  std::ofstream(dir / "config.json") << cj.dump();
  auto cfg = config::parse_model_config_text(cj.dump());
  auto ckpt = model::random_checkpoint(cfg, 8);
  io::NamedTensors st;
  for (auto& [n, t] : ckpt) st.emplace_back(n, t);
  io::save_safetensors((dir / "model.safetensors").string(), st);
  auto m = model::Model::load(dir.string());

  train::TrainableAdapter ad;
  std::mt19937_64 rng(3);
  io::NamedTensors lora;
  nlohmann::json scales;
  std::vector<std::tuple<int, model::ExpertProj, int, std::string>> expert_keys;
  for (int l = 0; l < cfg.num_hidden_layers; ++l) {
    const auto& L = m.layers()[static_cast<size_t>(l)];
    std::normal_distribution<float> gb(0, 0.05f);
    if (L.kind.moe) {  // LoRA on experts 0, 2 and 5 of every MoE layer, and on the shared expert
      for (int e : {0, 2, 5})
        for (auto [pj, pn] : {std::pair{model::ExpertProj::Gate, "gate"}, std::pair{model::ExpertProj::Up, "up"},
                              std::pair{model::ExpertProj::Down, "down"}}) {
          const LinearWeight& w = pj == model::ExpertProj::Gate ? L.moe.experts.gate[static_cast<size_t>(e)]
                                  : pj == model::ExpertProj::Up ? L.moe.experts.up[static_cast<size_t>(e)]
                                                                : L.moe.experts.down[static_cast<size_t>(e)];
          auto& p = ad.add_expert(l, pj, e, w.in, w.out, 3, 6.0f, rng);
          for (int64_t i = 0; i < p.f.b.numel(); ++i) p.f.b.data<float>()[i] = gb(rng);
          const std::string key = std::to_string(l) + ".e" + std::to_string(e) + "." + pn;
          lora.emplace_back(key + ".A", p.f.a);
          lora.emplace_back(key + ".B", p.f.b);
          scales[key] = p.f.scale;
          expert_keys.emplace_back(l, pj, e, key);
        }
      if (L.moe.shared.defined())
        for (auto [mod, pn] : {std::pair{Module::SharedGate, "sgate"}, std::pair{Module::SharedUp, "sup"},
                               std::pair{Module::SharedDown, "sdown"}}) {
          const LinearWeight& w = mod == Module::SharedGate ? L.moe.shared.gate : mod == Module::SharedUp ? L.moe.shared.up : L.moe.shared.down;
          auto& p = ad.add(l, mod, w.in, w.out, 2, 4.0f, rng);
          for (int64_t i = 0; i < p.f.b.numel(); ++i) p.f.b.data<float>()[i] = gb(rng);
          const std::string key = std::to_string(l) + "." + pn;
          lora.emplace_back(key + ".A", p.f.a);
          lora.emplace_back(key + ".B", p.f.b);
          scales[key] = p.f.scale;
          expert_keys.emplace_back(l, model::ExpertProj::Gate, -1 - static_cast<int>(mod), key);
        }
    }
    for (auto [mod, name] : kMods) {
      if (L.kind.moe && (mod == Module::Gate || mod == Module::Up || mod == Module::Down)) continue;
      const LinearWeight& w = mod == Module::Q ? L.attn.q : mod == Module::K ? L.attn.k : mod == Module::V ? L.attn.v
                              : mod == Module::O ? L.attn.o : mod == Module::Gate ? L.mlp.gate
                              : mod == Module::Up ? L.mlp.up : L.mlp.down;
      auto& p = ad.add(l, mod, w.in, w.out, 4, 8.0f, rng);
      std::normal_distribution<float> g(0, 0.05f);  // non-zero B so every gradient is exercised
      for (int64_t i = 0; i < p.f.b.numel(); ++i) p.f.b.data<float>()[i] = g(rng);
      const std::string key = std::to_string(l) + "." + name;
      lora.emplace_back(key + ".A", p.f.a);
      lora.emplace_back(key + ".B", p.f.b);
      scales[key] = p.f.scale;
    }
  }
  io::save_safetensors((dir / "adapter.safetensors").string(), lora);
  std::ofstream(dir / "adapter.json") << scales.dump();
  // Two packed samples; prompt tokens masked with -100.
  std::vector<int32_t> ids = {5, 77, 140, 9, 250, 33, 1, 60, 61, 62, 299}, pos = {0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4},
                       seg = {0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1}, labels = {-100, -100, 9, 250, 33, -100, -100, 61, 62, 299, -100};
  std::ofstream(dir / "batch.json") << nlohmann::json{{"ids", ids}, {"labels", labels}, {"positions", pos}, {"segments", seg}}.dump();

  const double loss = train::forward_backward(m, ids, labels, ad, pos, seg);
  // The training forward agrees with the inference forward.
  auto be = cpu::make_backend();
  std::vector<const model::LoraSource*> slots = {&ad};
  model::Batch b;
  b.ids = ids;
  b.positions = pos;
  b.segments = seg;
  b.adapters = slots;
  Tensor lg = m.forward(*be, b);
  const double loss_inf = cpu::ref::cross_entropy<float>(lg.data<float>(), labels, static_cast<int64_t>(ids.size()), m.vocab_size(), nullptr);
  EXPECT_NEAR(loss, loss_inf, 1e-5 * std::fabs(loss_inf));

  const std::string out = run("/usr/bin/python3 " + std::string(GRAFT_SOURCE_DIR) + "/tools/ref/torch_lora_grads.py " +
                              dir.string() + " " + (dir / "adapter.safetensors").string() + " " +
                              (dir / "adapter.json").string() + " " + (dir / "batch.json").string() + " 2>/dev/null");
  if (out.empty()) {
    if (!std::getenv("GRAFT_KEEP_TMP")) fs::remove_all(dir);
    GTEST_SKIP() << "/usr/bin/python3 with torch (python3-torch) unavailable";
  }
  auto ref = nlohmann::json::parse(out);
  EXPECT_NEAR(loss, ref["loss"].get<double>(), 1e-5 * std::fabs(loss)) << arch;
  int checked = 0;
  auto compare = [&](train::LoraParam* p, const std::string& key) {
    for (auto [g, suffix] : {std::pair{&p->da, ".A"}, std::pair{&p->db, ".B"}}) {
      auto want = ref["grads"][key + suffix].get<std::vector<double>>();
      ASSERT_EQ(static_cast<int64_t>(want.size()), g->numel());
      double num = 0, den = 0;
      for (size_t i = 0; i < want.size(); ++i) {
        const double d = g->data<float>()[i] - want[i];
        num += d * d;
        den += want[i] * want[i];
      }
      EXPECT_LT(std::sqrt(num / std::max(den, 1e-30)), 1e-4) << arch << " " << key << suffix;
      ++checked;
    }
  };
  for (auto& [l, pj, e, key] : expert_keys) {
    train::LoraParam* p = e >= 0 ? ad.expert_param(l, pj, e) : ad.param(l, static_cast<Module>(-1 - e));
    // An expert no token was routed to has zero gradient on both sides.
    compare(p, key);
  }
  int dense_checked = 0;
  for (int l = 0; l < cfg.num_hidden_layers; ++l)
    for (auto [mod, name] : kMods) {
      auto* p = ad.param(l, mod);
      if (!p) continue;
      ++dense_checked;
      for (auto [g, suffix] : {std::pair{&p->da, ".A"}, std::pair{&p->db, ".B"}}) {
        auto want = ref["grads"][std::to_string(l) + "." + name + suffix].get<std::vector<double>>();
        ASSERT_EQ(static_cast<int64_t>(want.size()), g->numel());
        double num = 0, den = 0;
        for (size_t i = 0; i < want.size(); ++i) {
          const double d = g->data<float>()[i] - want[i];
          num += d * d;
          den += want[i] * want[i];
        }
        EXPECT_LT(std::sqrt(num / den), 1e-4) << arch << " layer " << l << " " << name << suffix;
        ++checked;
      }
    }
  EXPECT_GT(dense_checked, 0);
  EXPECT_GE(checked, dense_checked * 2);
  fs::remove_all(dir);
}
}  // namespace

TEST(LoraGrads, LlamaMatchesTorchAutograd) { check_arch("llama"); }
TEST(LoraGrads, Qwen2WithBiasesMatchesTorchAutograd) { check_arch("qwen2"); }
TEST(LoraGrads, Qwen3WithQkNormMatchesTorchAutograd) { check_arch("qwen3"); }
TEST(LoraGrads, Qwen3MoeExpertsAndRouterPathMatchTorchAutograd) { check_arch("qwen3_moe"); }
TEST(LoraGrads, Qwen2MoeSharedExpertMatchesTorchAutograd) { check_arch("qwen2_moe"); }
TEST(LoraGrads, MixtralMatchesTorchAutograd) { check_arch("mixtral"); }
