// Shared helpers of the adapter tests: a tiny qwen3_moe model on disk and random adapters for it.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <random>
#include <string>
#include <unistd.h>

#include "graft/adapters/peft.hpp"
#include "graft/config/model_config.hpp"
#include "graft/io/safetensors.hpp"
#include "graft/mmap_file.hpp"
#include "graft/model/model.hpp"
#include "graft/model/presets.hpp"
#include "../common/tensor_test_util.hpp"

namespace graft::testutil {

namespace fs = std::filesystem;

inline nlohmann::ordered_json tiny_config_json(const std::string& arch = "qwen3_moe") {
  return model::preset_config(arch, "tiny", 300, 1, 2);
}
inline config::ModelConfig tiny_config(const std::string& arch = "qwen3_moe") {
  return config::parse_model_config_text(tiny_config_json(arch).dump());
}

inline void write_text(const fs::path& p, const std::string& s) { write_file_atomic(p.string(), s.data(), s.size()); }

// Writes a tiny model directory. fused = transformers v5 layout (mlp.experts.gate_up_proj [E, 2I, H],
// down_proj [E, H, I]) instead of per-expert tensors.
inline void write_tiny_model(const fs::path& dir, bool fused = false, const std::string& arch = "qwen3_moe",
                             uint64_t seed = 11) {
  fs::create_directories(dir);
  auto cj = tiny_config_json(arch);
  auto cfg = config::parse_model_config_text(cj.dump());
  auto ck = model::random_checkpoint(cfg, seed);
  io::NamedTensors named;
  if (!fused) {
    named = ck;
  } else {
    const int64_t E = cfg.moe.num_experts, I = cfg.expert_intermediate_size(), H = cfg.hidden_size;
    std::map<std::string, Tensor> by;
    for (auto& [n, t] : ck) by[n] = t;
    for (auto& [n, t] : ck)
      if (n.find(".experts.") == std::string::npos) named.emplace_back(n, t);
    for (int l = 0; l < cfg.num_hidden_layers; ++l) {
      if (!cfg.is_moe_layer(l)) continue;
      const std::string p = "model.layers." + std::to_string(l) + ".mlp.experts.";
      Tensor gu = Tensor::empty({E, 2 * I, H}, DType::F32), dn = Tensor::empty({E, H, I}, DType::F32);
      for (int e = 0; e < E; ++e) {
        const std::string q = p + std::to_string(e) + ".";
        const float* g = by.at(q + "gate_proj.weight").data<float>();
        const float* u = by.at(q + "up_proj.weight").data<float>();
        const float* d = by.at(q + "down_proj.weight").data<float>();
        std::copy(g, g + I * H, gu.data<float>() + e * 2 * I * H);
        std::copy(u, u + I * H, gu.data<float>() + e * 2 * I * H + I * H);
        std::copy(d, d + H * I, dn.data<float>() + e * H * I);
      }
      named.emplace_back(p + "gate_up_proj", gu);
      named.emplace_back(p + "down_proj", dn);
    }
  }
  io::save_safetensors((dir / "model.safetensors").string(), named, {{"format", "pt"}});
  write_text(dir / "config.json", cj.dump(2) + "\n");
  write_text(dir / "tokenizer.json", model::tiny_tokenizer_json().dump(2));
  write_text(dir / "tokenizer_config.json", model::tiny_tokenizer_config().dump(2));
  write_text(dir / "generation_config.json", R"({"bos_token_id": 1, "eos_token_id": 2})");
}

// A random adapter (rank r, alpha) on q/k/v/o of every layer, the dense MLP of layer 0, and experts
// {0, 3, 5} of every MoE layer (per-expert keys).
inline adapters::Adapter random_adapter(const config::ModelConfig& cfg, int64_t r, double alpha, uint32_t seed) {
  using model::ExpertProj;
  using model::Module;
  adapters::Adapter ad;
  ad.config = adapters::make_config(r, alpha, {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"});
  std::mt19937 g(seed);
  const int64_t H = cfg.hidden_size, D = cfg.head_dim, nh = cfg.num_attention_heads, nkv = cfg.num_key_value_heads;
  const float s = static_cast<float>(alpha / static_cast<double>(r));
  for (int l = 0; l < cfg.num_hidden_layers; ++l) {
    auto put = [&](Module m, int64_t out, int64_t in) {
      ad.modules[{l, m}] = LoraFactors{rnd({r, in}, g, 0.1f), rnd({out, r}, g, 0.1f), s};
    };
    put(Module::Q, nh * D, H);
    put(Module::K, nkv * D, H);
    put(Module::V, nkv * D, H);
    put(Module::O, H, nh * D);
    if (!cfg.is_moe_layer(l)) {
      const int64_t I = cfg.dense_intermediate_size();
      put(Module::Gate, I, H);
      put(Module::Up, I, H);
      put(Module::Down, H, I);
      continue;
    }
    const int64_t I = cfg.expert_intermediate_size();
    for (int e : {0, 3, 5}) {
      ad.experts[{l, ExpertProj::Gate, e}] = LoraFactors{rnd({r, H}, g, 0.1f), rnd({I, r}, g, 0.1f), s};
      ad.experts[{l, ExpertProj::Up, e}] = LoraFactors{rnd({r, H}, g, 0.1f), rnd({I, r}, g, 0.1f), s};
      ad.experts[{l, ExpertProj::Down, e}] = LoraFactors{rnd({r, I}, g, 0.1f), rnd({H, r}, g, 0.1f), s};
    }
  }
  return ad;
}

inline bool same_tensor(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() &&
         std::memcmp(a.contiguous().raw(), b.contiguous().raw(), a.nbytes()) == 0;
}

class TmpDir : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           (std::string("graft_adapters_") + info->test_suite_name() + "_" + info->name() + "_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

}  // namespace graft::testutil
