#include "graft/model_info.hpp"

#include <fmt/format.h>

#include <cstdlib>

#include "graft/error.hpp"
#include "graft/io/safetensors.hpp"

namespace graft {

using config::Family;
using config::ModelConfig;

std::string_view weight_kind_name(WeightKind k) {
  switch (k) {
    case WeightKind::Embedding: return "embedding";
    case WeightKind::LmHead: return "lm_head";
    case WeightKind::Attention: return "attention";
    case WeightKind::Norm: return "norms";
    case WeightKind::DenseMlp: return "dense_mlp";
    case WeightKind::RoutedExperts: return "routed_experts";
    case WeightKind::SharedExperts: return "shared_experts";
    case WeightKind::Router: return "routers";
    case WeightKind::Bias: return "biases";
  }
  return "?";
}

namespace {
// Checked arithmetic: absurd configs must give an error, not signed overflow.
int64_t M(int64_t a) { return a; }
template <class... R>
int64_t M(int64_t a, int64_t b, R... rest) {
  int64_t r = 0;
  GRAFT_CHECK_FIX(!__builtin_mul_overflow(a, b, &r), "fix config.json: its sizes are implausibly large",
                  "parameter count overflows 64 bits ({} x {})", a, b);
  return M(r, rest...);
}
int64_t A(int64_t a, int64_t b) {
  int64_t r = 0;
  GRAFT_CHECK_FIX(!__builtin_add_overflow(a, b, &r), "fix config.json: its sizes are implausibly large",
                  "parameter count overflows 64 bits ({} + {})", a, b);
  return r;
}

// Accumulates groups by name so the list stays short (summed over layers).
struct Groups {
  std::vector<WeightGroup> v;
  void add(const std::string& name, WeightKind kind, int64_t numel, int64_t count, bool linear, int64_t active = -1) {
    if (numel <= 0 || count <= 0) return;
    if (active < 0) active = count;
    for (auto& g : v)
      if (g.name == name && g.numel_each == numel) {
        g.count = A(g.count, count);
        g.active = A(g.active, active);
        (void)M(g.numel_each, g.count);  // params() must fit too
        return;
      }
    (void)M(numel, count);
    v.push_back({name, kind, numel, count, active, linear});
  }
};
}  // namespace

std::vector<WeightGroup> weight_groups(const ModelConfig& c) {
  Groups g;
  const int64_t H = c.hidden_size, nh = c.num_attention_heads, kv = c.num_key_value_heads, hd = c.head_dim;
  const auto& m = c.moe;
  g.add("embed_tokens.weight", WeightKind::Embedding, M(c.vocab_size, H), 1, false);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    g.add("input_layernorm.weight + post_attention_layernorm.weight", WeightKind::Norm, H, 2, false);
    // ---- attention ----
    if (c.is_mla) {
      const auto& a = c.mla;
      if (a.q_lora_rank > 0) {
        g.add("self_attn.q_a_proj.weight", WeightKind::Attention, M(H, a.q_lora_rank), 1, true);
        if (c.attention_bias) g.add("self_attn.q_a_proj.bias", WeightKind::Bias, a.q_lora_rank, 1, false);
        g.add("self_attn.q_a_layernorm.weight", WeightKind::Norm, a.q_lora_rank, 1, false);
        g.add("self_attn.q_b_proj.weight", WeightKind::Attention, M(a.q_lora_rank, nh, a.qk_head_dim()), 1, true);
      } else {
        g.add("self_attn.q_proj.weight", WeightKind::Attention, M(H, nh, a.qk_head_dim()), 1, true);
      }
      g.add("self_attn.kv_a_proj_with_mqa.weight", WeightKind::Attention, M(H, A(a.kv_lora_rank, a.qk_rope_head_dim)), 1,
            true);
      if (c.attention_bias)
        g.add("self_attn.kv_a_proj_with_mqa.bias", WeightKind::Bias, a.kv_lora_rank + a.qk_rope_head_dim, 1, false);
      g.add("self_attn.kv_a_layernorm.weight", WeightKind::Norm, a.kv_lora_rank, 1, false);
      g.add("self_attn.kv_b_proj.weight", WeightKind::Attention, M(a.kv_lora_rank, nh, A(a.qk_nope_head_dim, a.v_head_dim)),
            1, true);
      g.add("self_attn.o_proj.weight", WeightKind::Attention, M(nh, a.v_head_dim, H), 1, true);
      if (c.attention_bias) g.add("self_attn.o_proj.bias", WeightKind::Bias, H, 1, false);
    } else {
      g.add("self_attn.q_proj.weight", WeightKind::Attention, M(H, nh, hd), 1, true);
      g.add("self_attn.k_proj.weight + v_proj.weight", WeightKind::Attention, M(H, kv, hd), 2, true);
      g.add("self_attn.o_proj.weight", WeightKind::Attention, M(nh, hd, H), 1, true);
      if (c.qkv_bias || c.attention_bias) {
        g.add("self_attn.q_proj.bias", WeightKind::Bias, M(nh, hd), 1, false);
        g.add("self_attn.k_proj.bias + v_proj.bias", WeightKind::Bias, M(kv, hd), 2, false);
      }
      if (c.attention_bias) g.add("self_attn.o_proj.bias", WeightKind::Bias, H, 1, false);
      if (c.qk_norm && c.qk_norm_has_weight)
        g.add("self_attn.q_norm.weight + k_norm.weight", WeightKind::Norm, hd, 2, false);
    }
    // ---- feed-forward ----
    if (c.is_moe_layer(l)) {
      const int64_t E = m.num_experts, k = m.num_experts_per_tok, I = c.expert_intermediate_size();
      g.add("mlp.gate.weight (router)", WeightKind::Router, M(E, H), 1, false);
      if (m.e_score_correction_bias) g.add("mlp.gate.e_score_correction_bias", WeightKind::Router, E, 1, false);
      g.add("mlp.experts.*.{gate,up,down}_proj.weight", WeightKind::RoutedExperts, M(H, I), M(3, E), true, M(3, k));
      if (m.shared_expert_intermediate_size > 0) {
        g.add("mlp.shared_expert(s).{gate,up,down}_proj.weight", WeightKind::SharedExperts,
              M(H, m.shared_expert_intermediate_size), 3, true);
        if (m.shared_expert_gate) g.add("mlp.shared_expert_gate.weight", WeightKind::Router, H, 1, false);
      }
    } else {
      const int64_t I = c.dense_intermediate_size();
      g.add("mlp.{gate,up,down}_proj.weight", WeightKind::DenseMlp, M(H, I), 3, true);
      if (c.mlp_bias) {
        g.add("mlp.{gate,up}_proj.bias", WeightKind::Bias, I, 2, false);
        g.add("mlp.down_proj.bias", WeightKind::Bias, H, 1, false);
      }
    }
  }
  g.add("norm.weight", WeightKind::Norm, H, 1, false);
  if (!c.tie_word_embeddings) g.add("lm_head.weight", WeightKind::LmHead, M(c.vocab_size, H), 1, false);
  return g.v;
}

ParamCounts count_parameters(const ModelConfig& c) {
  ParamCounts p;
  for (const auto& g : weight_groups(c)) {
    p.total = A(p.total, g.params());
    p.active = A(p.active, g.active_params());
    auto& k = p.by_kind[std::string(weight_kind_name(g.kind))];
    k = A(k, g.params());
    if (g.kind == WeightKind::Embedding) p.active_excl_embedding -= g.params();
  }
  p.active_excl_embedding += p.active;
  return p;
}

uint64_t nf4_dq_bytes(int64_t numel) {
  if (numel <= 0) return 0;
  uint64_t n = static_cast<uint64_t>(numel);
  uint64_t blocks = (n + 63) / 64;        // blocksize 64
  uint64_t nested = (blocks + 255) / 256;  // nested blocksize 256
  return (n + 1) / 2 + blocks /* uint8 absmax */ + 4 * nested /* fp32 nested absmax */ + 4 /* fp32 offset */;
}

MemoryEstimate estimate_memory(const ModelConfig& c) {
  MemoryEstimate e;
  for (const auto& g : weight_groups(c)) {
    e.bf16_bytes += 2 * static_cast<uint64_t>(g.params());
    if (g.linear) {
      e.nf4_bytes += static_cast<uint64_t>(g.count) * nf4_dq_bytes(g.numel_each);
      e.nf4_quantized_params += g.params();
      e.nf4_quantized_tensors += g.count;
    } else {
      e.nf4_bytes += 2 * static_cast<uint64_t>(g.params());
      e.nf4_bf16_params += g.params();
    }
  }
  const uint64_t L = static_cast<uint64_t>(c.num_hidden_layers);
  if (c.is_mla) {
    e.kv_cache_bytes_per_1k_tokens = L * static_cast<uint64_t>(c.mla.kv_lora_rank + c.mla.qk_rope_head_dim) * 2 * 1024;
    e.kv_notes.push_back(fmt::format("MLA: caches the {}-dim latent + {}-dim rope key per layer per token",
                                     c.mla.kv_lora_rank, c.mla.qk_rope_head_dim));
  } else {
    e.kv_cache_bytes_per_1k_tokens =
        L * 2 /*K,V*/ * static_cast<uint64_t>(M(c.num_key_value_heads, c.head_dim)) * 2 /*bf16*/ * 1024;
  }
  int64_t sliding = 0, chunked = 0;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    auto k = c.layer_kind(l);
    sliding += k.sliding;
    chunked += k.chunked;
  }
  if (sliding > 0 && c.sliding_window)
    e.kv_notes.push_back(fmt::format("{} of {} layers use a sliding window of {} tokens: their cache stops growing there",
                                     sliding, c.num_hidden_layers, *c.sliding_window));
  if (chunked > 0)
    e.kv_notes.push_back(fmt::format("{} of {} layers use chunked attention ({} tokens): their cache needs only the "
                                     "current chunk",
                                     chunked, c.num_hidden_layers, c.attention_chunk_size));
  return e;
}

namespace {
bool ends_with(const std::string& s, std::string_view suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}
// Layer index in "...layers.N...." or -1.
int64_t layer_index(const std::string& name) {
  auto p = name.find("layers.");
  if (p == std::string::npos) return -1;
  p += 7;
  if (p >= name.size() || name[p] < '0' || name[p] > '9') return -1;
  return std::strtoll(name.c_str() + p, nullptr, 10);
}
}  // namespace

WeightsSummary summarize_weights(const io::SafetensorsModel& w, const ModelConfig& c) {
  WeightsSummary s;
  for (const auto& f : w.files())
    for (const auto& t : f.tensors()) {
      ++s.tensors;
      s.bytes += t.nbytes();
      s.elements += t.numel();
      std::string dn(dtype_safetensors_name(t.dtype));
      s.dtype_tensors[dn] += 1;
      s.dtype_bytes[dn] += t.nbytes();
      const std::string& n = t.name;
      const char* reason = nullptr;
      if (n.find("vision_model.") != std::string::npos || n.find("multi_modal_projector.") != std::string::npos ||
          n.find("vision_tower.") != std::string::npos)
        reason = "vision";
      else if (ends_with(n, "_scale_inv") || ends_with(n, ".weight_scale") || ends_with(n, ".input_scale") ||
               ends_with(n, ".absmax") || ends_with(n, ".quant_map") || ends_with(n, ".nested_absmax") ||
               ends_with(n, ".nested_quant_map") || n.find(".quant_state.") != std::string::npos)
        reason = "quantization_aux";
      else if (layer_index(n) >= c.num_hidden_layers)
        reason = "mtp_layers";
      if (reason) {
        ++s.extra_tensors;
        s.extra_elements += t.numel();
        s.extra_by_reason[reason] += t.numel();
      }
      if (n.find(".quant_state.bitsandbytes") != std::string::npos) s.prequantized_packed = true;
    }
  return s;
}

}  // namespace graft
