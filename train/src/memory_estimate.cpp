// Training memory estimate (see memory_estimate.hpp).
#include "graft/train/memory_estimate.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <limits>

#include "graft/adapters/peft.hpp"

namespace graft::train {
namespace {
using model::ExpertProj;
using model::Module;

constexpr uint64_t kMax = std::numeric_limits<uint64_t>::max();
uint64_t sat_mul(uint64_t a, uint64_t b) { return a != 0 && b > kMax / a ? kMax : a * b; }
uint64_t sat_add(uint64_t a, uint64_t b) { return b > kMax - a ? kMax : a + b; }
uint64_t u(int64_t v) { return v > 0 ? static_cast<uint64_t>(v) : 0; }

}  // namespace

std::string format_bytes(uint64_t b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  double v = static_cast<double>(b);
  int i = 0;
  while (v >= 1024 && i < 6) v /= 1024, ++i;
  return i == 0 ? fmt::format("{} B", b) : fmt::format("{:.1f} {}", v, units[i]);
}

std::string MemoryEstimate::summary() const {
  return fmt::format("{} (adapter {} for {} LoRA parameters on {} modules, activations {})", format_bytes(total_bytes()),
                     format_bytes(adapter_bytes), lora_params, adapted_modules, format_bytes(activation_bytes));
}

MemoryEstimate estimate_training_memory(const model::Model& m, const Recipe& r) {
  const auto& cfg = m.config();
  std::vector<std::string> mods(r.lora_target_modules().begin(), r.lora_target_modules().end());
  std::vector<std::string> params(r.lora_target_parameters().begin(), r.lora_target_parameters().end());
  auto pc = adapters::make_config(r.lora_r(), r.lora_alpha(), mods, params);
  pc.target_modules_regex = r.lora_target_modules_regex();
  pc.all_linear = r.lora_target_linear();
  for (auto& [k, v] : r.rank_pattern()) pc.rank_pattern[k] = v;

  MemoryEstimate e;
  uint64_t lora = 0, per_layer_rank_sum = 0;  // the largest layer's sum of ranks (LoRA intermediates)
  for (int l = 0; l < static_cast<int>(m.layers().size()); ++l) {
    const auto& L = m.layers()[static_cast<size_t>(l)];
    uint64_t rank_sum = 0;
    auto add = [&](int64_t in, int64_t out, int64_t rank) {
      lora = sat_add(lora, sat_mul(u(rank), sat_add(u(in), u(out))));
      rank_sum = sat_add(rank_sum, u(rank));
      e.max_rank = std::max(e.max_rank, rank);
      ++e.adapted_modules;
    };
    for (Module mod : model::kDenseModules) {
      const LinearWeight* w = model::dense_weight(L, mod);
      if (!w || !w->defined()) continue;
      const std::string key = fmt::format("model.layers.{}.{}", l, model::module_path(cfg.family, mod));
      if (adapters::targets_module(pc, key, l)) add(w->in, w->out, adapters::expected_rank(pc, key));
    }
    if (L.kind.moe) {
      for (int x = 0; x < static_cast<int>(L.moe.experts.num_experts()); ++x)
        for (ExpertProj pj : {ExpertProj::Gate, ExpertProj::Up, ExpertProj::Down}) {
          const std::string key = adapters::expert_key(cfg, l, pj, x);
          const std::string fused = adapters::fused_experts_key(cfg, l) + (pj == ExpertProj::Down ? ".down_proj" : ".gate_up_proj");
          const bool by_param = std::any_of(pc.target_parameters.begin(), pc.target_parameters.end(), [&](const std::string& t) {
            return fused.size() >= t.size() && fused.compare(fused.size() - t.size(), t.size(), t) == 0;
          });
          if (!by_param && !adapters::targets_module(pc, key, l)) continue;
          const LinearWeight& w = pj == ExpertProj::Gate ? L.moe.experts.gate[static_cast<size_t>(x)]
                                  : pj == ExpertProj::Up ? L.moe.experts.up[static_cast<size_t>(x)]
                                                         : L.moe.experts.down[static_cast<size_t>(x)];
          add(w.in, w.out, adapters::expected_rank(pc, by_param ? fused : key));
        }
    }
    per_layer_rank_sum = std::max(per_layer_rank_sum, rank_sum);
  }
  // lora_modules_to_save: full copies of embed_tokens / lm_head [vocab, hidden], trained and checkpointed
  // like the factors.
  for (const auto& n : r.lora_modules_to_save())
    if (!adapters::saved_module_name(n).empty()) lora = sat_add(lora, sat_mul(u(cfg.vocab_size), u(cfg.hidden_size)));
  e.lora_params = lora > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ? std::numeric_limits<int64_t>::max()
                                                                                      : static_cast<int64_t>(lora);
  e.adapter_bytes = sat_mul(lora, 4 * 12);

  // Activations of one sequence (floats per token).
  const uint64_t T = u(r.sequence_len()), H = u(cfg.hidden_size), V = u(cfg.vocab_size), Lyr = u(cfg.num_hidden_layers);
  const auto& moe = cfg.moe;
  const uint64_t inter = std::max<uint64_t>(
      u(cfg.intermediate_size),
      sat_add(sat_mul(u(moe.num_experts_per_tok), u(moe.moe_intermediate_size)),
              sat_add(u(moe.shared_expert_intermediate_size), sat_mul(u(moe.n_shared_experts), u(moe.moe_intermediate_size)))));
  const uint64_t heads = u(cfg.num_attention_heads), hd = std::max(u(cfg.head_dim), u(cfg.mla.qk_head_dim()));
  // One layer's working set per token: q/k/v/o and norms (~8 H + 4 heads·head_dim), attention
  // probabilities over the sequence (heads × T, saved for backward), MLP intermediates (6 × inter),
  // LoRA intermediates (2 × the layer's ranks).
  const uint64_t layer = sat_add(sat_add(sat_mul(8, H), sat_mul(4, sat_mul(heads, hd))),
                                 sat_add(sat_add(sat_mul(heads, T), sat_mul(6, inter)), sat_mul(2, per_layer_rank_sum)));
  const uint64_t saved = r.gradient_checkpointing() ? sat_add(sat_mul(Lyr, H), layer) : sat_mul(Lyr, layer);
  const uint64_t per_token = sat_add(saved, sat_mul(2, V));  // + logits and their gradient
  e.activation_bytes = sat_mul(sat_mul(T, per_token), 4);
  return e;
}

}  // namespace graft::train
