// `graft train --check`: do the recipe's LoRA target names match modules of the base's architecture?
// Works from config.json alone (module names follow from the family, the layer kinds and the expert
// count), so no weight is read.
#include <fmt/format.h>

#include <algorithm>
#include <set>

#include "graft/adapters/peft.hpp"
#include "graft/config/model_config.hpp"
#include "graft/model/model.hpp"
#include "graft/train/chat_templates.hpp"

namespace graft::train {
using model::ExpertProj;
using model::Module;

namespace {

// Every LoRA-adaptable module name of the model ("model.layers.0.self_attn.q_proj", expert
// projections "model.layers.1.mlp.experts.3.gate_proj"), with its layer.
std::vector<std::pair<std::string, int>> module_keys(const config::ModelConfig& cfg) {
  std::vector<std::pair<std::string, int>> keys;
  for (int l = 0; l < static_cast<int>(cfg.num_hidden_layers); ++l) {
    std::vector<Module> mods;
    if (cfg.is_mla)
      mods = {cfg.mla.q_lora_rank > 0 ? Module::QA : Module::Q, Module::KVA, Module::KVB, Module::O};
    else
      mods = {Module::Q, Module::K, Module::V, Module::O};
    if (cfg.is_mla && cfg.mla.q_lora_rank > 0) mods.push_back(Module::QB);
    if (cfg.is_moe_layer(l)) {
      if (cfg.moe.shared_expert_intermediate_size > 0 || cfg.moe.n_shared_experts > 0)
        mods.insert(mods.end(), {Module::SharedGate, Module::SharedUp, Module::SharedDown});
      for (int e = 0; e < static_cast<int>(cfg.moe.num_experts); ++e)
        for (ExpertProj p : {ExpertProj::Gate, ExpertProj::Up, ExpertProj::Down})
          keys.emplace_back(adapters::expert_key(cfg, l, p, e), l);
    } else {
      mods.insert(mods.end(), {Module::Gate, Module::Up, Module::Down});
    }
    for (Module m : mods) keys.emplace_back(adapters::module_key(cfg, l, m), l);
  }
  return keys;
}

std::string last_component(const std::string& key) {
  const auto dot = key.rfind('.');
  return dot == std::string::npos ? key : key.substr(dot + 1);
}

std::string join(const std::set<std::string>& s) {
  std::string out;
  for (const auto& x : s) out += (out.empty() ? "" : ", ") + x;
  return out;
}

}  // namespace

std::vector<std::string> lora_target_problems(const Recipe& r, const config::ModelConfig& cfg) {
  std::vector<std::string> problems;
  const auto keys = module_keys(cfg);
  std::set<std::string> names;  // the family's module names as lora_target_modules takes them
  for (const auto& [k, l] : keys) names.insert(last_component(k));
  const std::string what = fmt::format("this {} base (config.json)", cfg.model_type);
  for (const auto& t : r.lora_target_modules()) {
    adapters::PeftConfig one = adapters::make_config(8, 16, {t}, {});
    const bool hit = std::any_of(keys.begin(), keys.end(), [&](const auto& kl) { return adapters::targets_module(one, kl.first, kl.second); });
    if (!hit)
      problems.push_back(fmt::format("lora_target_modules entry '{}' matches no module of {}; its module names are: {}"
                                     "\n  fix: use names from that list (e.g. [q_proj, v_proj]) or lora_target_linear: true",
                                     t, what, join(names)));
  }
  if (r.has_lora_target_modules_regex()) {
    adapters::PeftConfig one = adapters::make_config(8, 16, {}, {});
    one.target_modules_regex = r.lora_target_modules_regex();
    const bool hit = std::any_of(keys.begin(), keys.end(), [&](const auto& kl) { return adapters::targets_module(one, kl.first, kl.second); });
    if (!hit)
      problems.push_back(fmt::format("lora_target_modules regex '{}' matches no module name of {} (it must match a whole "
                                     "name such as {}); its module names end in: {}"
                                     "\n  fix: e.g. '.*\\.(q_proj|v_proj)'",
                                     r.lora_target_modules_regex(), what, keys.empty() ? "" : keys.front().first, join(names)));
  }
  if (r.lora_target_parameters_size() > 0) {
    std::set<std::string> fused;  // "model.layers.1.mlp.experts.gate_up_proj", ...
    for (int l = 0; l < static_cast<int>(cfg.num_hidden_layers); ++l)
      if (cfg.is_moe_layer(l))
        for (const char* leaf : {".gate_up_proj", ".down_proj"}) fused.insert(adapters::fused_experts_key(cfg, l) + leaf);
    std::set<std::string> valid;
    for (const auto& f : fused) {
      const auto layers = f.find(".layers.");
      const auto after = layers == std::string::npos ? 0 : f.find('.', layers + 8);
      valid.insert(after == std::string::npos ? f : f.substr(after + 1));
    }
    for (const auto& t : r.lora_target_parameters()) {
      const bool hit = std::any_of(fused.begin(), fused.end(), [&](const std::string& f) {
        return f.size() >= t.size() && f.compare(f.size() - t.size(), t.size(), t) == 0;
      });
      if (hit) continue;
      if (fused.empty())
        problems.push_back(fmt::format("lora_target_parameters entry '{}': {} has no fused expert tensors (it is not a "
                                       "mixture of experts)\n  fix: use lora_target_modules instead",
                                       t, what));
      else
        problems.push_back(fmt::format("lora_target_parameters entry '{}' matches no fused expert tensor of {}; valid: {}"
                                       "\n  fix: use one of those names",
                                       t, what, join(valid)));
    }
  }
  return problems;
}

}  // namespace graft::train
