// Loading a model's weights into graft's internal layout: names per family (FamilySpec), dtype
// conversion to f32, NF4 quantization on load or bitsandbytes pre-quantized weights, FP8
// block-scaled dequantization, per-expert and fused expert layouts. Every tensor of the checkpoint
// must be used (or be known to be ignorable); every expected tensor must exist with its shape.
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <random>
#include <set>

#include "family_spec.hpp"
#include "graft/error.hpp"
#include "graft/huge_pages.hpp"
#include "graft/io/safetensors.hpp"
#include "graft/model/model.hpp"
#include "graft/model/expert_parallel.hpp"
#include "graft/quant/q6.hpp"
#include "graft/quant/q8.hpp"

namespace graft::model {
namespace {
constexpr const char* kFixWeights =
    "check that the weights belong to this config.json (same architecture and sizes) and are complete";

class TensorSource {
 public:
  virtual ~TensorSource() = default;
  virtual bool has(const std::string& n) const = 0;
  virtual Tensor get(const std::string& n) const = 0;
  virtual std::vector<std::string> names() const = 0;
  virtual std::string where() const = 0;
  // A tensor the loader expects with `shape` (sources that synthesise weights use the shape).
  virtual Tensor get_expected(const std::string& n, const Dims&) const { return get(n); }
};
class SafetensorsSource final : public TensorSource {
 public:
  explicit SafetensorsSource(io::SafetensorsModel m) : m_(std::move(m)) {}
  bool has(const std::string& n) const override { return m_.contains(n); }
  Tensor get(const std::string& n) const override { return m_.tensor(n); }
  std::vector<std::string> names() const override { return m_.names(); }
  std::string where() const override { return m_.source(); }
 private:
  io::SafetensorsModel m_;
};
class MemorySource final : public TensorSource {
 public:
  explicit MemorySource(const std::vector<std::pair<std::string, Tensor>>& t) {
    for (auto& [n, x] : t) m_[n] = x;
  }
  bool has(const std::string& n) const override { return m_.count(n) != 0; }
  Tensor get(const std::string& n) const override { return m_.at(n); }
  std::vector<std::string> names() const override {
    std::vector<std::string> v;
    for (auto& [n, x] : m_) v.push_back(n);
    return v;
  }
  std::string where() const override { return "in-memory tensors"; }
 private:
  std::map<std::string, Tensor> m_;
};

// Synthesises the canonical checkpoint of a config: every tensor the loader asks for, per-expert
// expert layout (fused for Llama 4, whose checkpoints only have it), deterministic values from
// (seed, name): N(0, 0.02) weights and biases, ones for norms, zeros for router correction biases.
class RandomSource final : public TensorSource {
 public:
  RandomSource(const config::ModelConfig& cfg, uint64_t seed, float embed_std) : cfg_(cfg), seed_(seed), embed_std_(embed_std) {}
  bool has(const std::string& n) const override {
    if (n.find(".quant_state.") != std::string::npos || n.find("weight_scale_inv") != std::string::npos) return false;
    if (n.rfind("language_model.", 0) == 0) return false;
    if (n == "lm_head.weight") return !cfg_.tie_word_embeddings;
    if (n.find(".gate_up_proj") != std::string::npos) return cfg_.family == config::Family::Llama4;
    if (n.find("e_score_correction_bias") != std::string::npos) return cfg_.moe.e_score_correction_bias;
    return true;
  }
  Tensor get(const std::string& n) const override {
    GRAFT_FAIL("", "random source: no shape known for '{}'", n);
  }
  Tensor get_expected(const std::string& n, const Dims& shape) const override {
    Tensor t = Tensor::empty(shape, DType::F32);
    float* p = t.data<float>();
    const bool norm = n.size() > 11 && (n.find("norm.weight") != std::string::npos);
    const bool zero = n.find("e_score_correction_bias") != std::string::npos;
    uint64_t h = seed_ ^ 0x9E3779B97F4A7C15ull;
    for (char c : n) h = (h ^ static_cast<uint8_t>(c)) * 0x100000001B3ull;
    std::mt19937_64 rng(h);
    const bool embed = n.find("embed_tokens") != std::string::npos || n.find("lm_head") != std::string::npos;
    std::normal_distribution<float> g(0.0f, embed && embed_std_ > 0 ? embed_std_ : 0.02f);
    for (int64_t i = 0; i < t.numel(); ++i) p[i] = norm ? 1.0f : zero ? 0.0f : g(rng);
    made_.emplace_back(n, t);
    return t;
  }
  std::vector<std::string> names() const override {
    std::vector<std::string> v;
    for (auto& [n, t] : made_) v.push_back(n);
    return v;
  }
  std::string where() const override { return "random init"; }
  std::vector<std::pair<std::string, Tensor>> take() { return std::move(made_); }

 private:
  const config::ModelConfig& cfg_;
  uint64_t seed_;
  float embed_std_;
  mutable std::vector<std::pair<std::string, Tensor>> made_;
};

bool ignorable(const std::string& n, const config::ModelConfig& cfg, const std::string& prefix) {
  if (n.find("rotary_emb.inv_freq") != std::string::npos) return true;
  if (n.rfind("vision_model.", 0) == 0 || n.rfind("multi_modal_projector.", 0) == 0) return true;  // Llama 4 multimodal
  // DeepSeek multi-token-prediction layers follow the decoder: model.layers.{N..N+k}
  const std::string lp = prefix + "model.layers.";
  if (cfg.num_nextn_predict_layers > 0 && n.rfind(lp, 0) == 0) {
    const int64_t i = std::atoll(n.c_str() + lp.size());
    if (i >= cfg.num_hidden_layers) return true;
  }
  return false;
}
}  // namespace

namespace {
ops::RopeParams rope_params(const config::ModelConfig& cfg, int rot_dim) {
  ops::RopeParams p;
  p.theta = cfg.rope_theta;
  p.rot_dim = rot_dim;
  const auto& rs = cfg.rope_scaling;
  p.factor = rs.factor;
  const double orig = rs.original_max_position_embeddings > 0 ? static_cast<double>(rs.original_max_position_embeddings)
                                                               : static_cast<double>(cfg.max_position_embeddings);
  p.original_max_position = orig;
  if (rs.type == "default") {
    p.kind = ops::RopeKind::Default;
  } else if (rs.type == "linear") {
    p.kind = ops::RopeKind::Linear;
  } else if (rs.type == "dynamic") {
    p.kind = ops::RopeKind::Dynamic;
  } else if (rs.type == "llama3") {
    p.kind = ops::RopeKind::Llama3;
    p.low_freq_factor = rs.low_freq_factor;
    p.high_freq_factor = rs.high_freq_factor;
  } else if (rs.type == "yarn") {
    p.kind = ops::RopeKind::Yarn;
    p.beta_fast = rs.beta_fast;
    p.beta_slow = rs.beta_slow;
    p.mscale = rs.mscale;
    p.mscale_all_dim = rs.mscale_all_dim;
    p.attention_factor = rs.attention_factor.value_or(0.0);
  } else {
    GRAFT_FAIL("use rope_scaling type default, linear, llama3 or yarn",
               "rope_scaling type '{}' is not supported (config.json)", rs.type);
  }
  return p;
}
}  // namespace

struct Loader {
  const config::ModelConfig& cfg;
  const TensorSource& src;
  LoadOptions opts;
  FamilySpec spec;
  std::string prefix;  // "" or "language_model."
  std::set<std::string> used;
  // Every projection loaded, by its per-module weight name (fused experts get per-expert names).
  std::vector<std::pair<std::string, LinearWeight>> linears;
  std::set<std::string> fused_sources;  // fused 3-D expert tensors replaced by per-expert weights

  std::string full(const std::string& n) const { return prefix + n; }

  Tensor raw(const std::string& n) {
    const std::string f = full(n);
    GRAFT_CHECK_FIX(src.has(f), kFixWeights, "tensor '{}' is missing from {}", f, src.where());
    used.insert(f);
    return src.get(f);
  }

  // Converts a checkpoint tensor to f32 (FP8 with its block scale when present).
  Tensor to_f32(const std::string& n, const Tensor& t) {
    if (t.dtype() == DType::F32) return t.contiguous().clone();
    if (t.dtype() == DType::F8E4M3 || t.dtype() == DType::F8E5M2) {
      const std::string sname = n.substr(0, n.size() - std::string("weight").size()) + "weight_scale_inv";
      Tensor f = t.to(DType::F32);
      if (src.has(full(sname))) {
        Tensor s = raw(sname).to(DType::F32);
        int64_t bo = 128, bi = 128;
        if (cfg.quantization.weight_block_size.size() == 2) {
          bo = cfg.quantization.weight_block_size[0];
          bi = cfg.quantization.weight_block_size[1];
        }
        GRAFT_CHECK_FIX(f.ndim() == 2 && s.ndim() == 2 && s.size(0) == (f.size(0) + bo - 1) / bo &&
                            s.size(1) == (f.size(1) + bi - 1) / bi,
                        kFixWeights, "FP8 tensor '{}' {} has a block scale {} that does not match {}x{} blocks", full(n),
                        f.describe(), s.describe(), bo, bi);
        float* p = f.data<float>();
        const float* sp = s.data<float>();
        for (int64_t r = 0; r < f.size(0); ++r)
          for (int64_t c = 0; c < f.size(1); ++c) p[r * f.size(1) + c] *= sp[(r / bo) * s.size(1) + c / bi];
      }
      return f;
    }
    GRAFT_CHECK_FIX(dtype_is_float(t.dtype()), kFixWeights, "tensor '{}' has dtype {}, expected a float type", full(n),
                    dtype_name(t.dtype()));
    return t.to(DType::F32);
  }

  DType last_dtype = DType::F32;  // the stored dtype of the tensor dense() read last
  Tensor dense(const std::string& n, const Dims& shape) {
    const std::string f = full(n);
    GRAFT_CHECK_FIX(src.has(f), kFixWeights, "tensor '{}' is missing from {}", f, src.where());
    used.insert(f);
    Tensor t = src.get_expected(f, shape);
    GRAFT_CHECK_FIX(t.shape() == shape, kFixWeights, "tensor '{}' has shape {}, expected {} from config.json", full(n),
                    t.shape().str(), shape.str());
    last_dtype = t.dtype();
    return to_f32(n, t);
  }

  // bitsandbytes pre-quantized weight: P.weight (u8 packed) + P.weight.absmax, quant_map, nested_*, quant_state.
  bool is_bnb(const std::string& wname) const { return src.has(full(wname + ".quant_state.bitsandbytes__nf4")); }
  std::shared_ptr<nf4::QuantizedWeight> bnb(const std::string& wname, int64_t out, int64_t in) {
    Tensor st = raw(wname + ".quant_state.bitsandbytes__nf4");
    std::string js(static_cast<const char*>(st.raw()), st.nbytes());
    nlohmann::json q = nlohmann::json::parse(js, nullptr, false);
    GRAFT_CHECK_FIX(q.is_object(), kFixWeights, "'{}' is not a bitsandbytes quant state (bad JSON)", full(wname));
    auto w = std::make_shared<nf4::QuantizedWeight>();
    w->shape = Dims{out, in};
    w->blocksize = q.value("blocksize", 64);
    GRAFT_CHECK_FIX(q.value("quant_type", std::string()) == "nf4", "re-quantize with bnb_4bit_quant_type=nf4",
                    "'{}': only NF4 is supported, got quant_type '{}'", full(wname), q.value("quant_type", std::string()));
    if (q.contains("shape")) {
      auto sh = q["shape"].get<std::vector<int64_t>>();
      GRAFT_CHECK_FIX(sh.size() == 2 && sh[0] == out && sh[1] == in, kFixWeights,
                      "'{}' quant state shape does not match [{}, {}]", full(wname), out, in);
    }
    Tensor packed = raw(wname);
    GRAFT_CHECK_FIX(packed.dtype() == DType::U8 && packed.numel() == (out * in + 1) / 2, kFixWeights,
                    "'{}' is {}, expected {} packed NF4 bytes", full(wname), packed.describe(), (out * in + 1) / 2);
    const uint8_t* pp = static_cast<const uint8_t*>(packed.raw());
    resize_huge(w->packed, static_cast<size_t>(packed.numel()));  // streamed every token (graft/huge_pages.hpp)
    std::copy(pp, pp + packed.numel(), w->packed.begin());
    const int64_t nb = w->num_blocks();
    Tensor am = raw(wname + ".absmax");
    if (src.has(full(wname + ".quant_map"))) used.insert(full(wname + ".quant_map"));
    if (src.has(full(wname + ".nested_absmax"))) {
      w->double_quant = true;
      GRAFT_CHECK_FIX(am.dtype() == DType::U8 && am.numel() == nb, kFixWeights, "'{}.absmax' is {}, expected u8[{}]",
                      full(wname), am.describe(), nb);
      const uint8_t* ap = static_cast<const uint8_t*>(am.raw());
      w->absmax_q.assign(ap, ap + nb);
      Tensor na = raw(wname + ".nested_absmax").to(DType::F32);
      w->nested_blocksize = q.value("nested_blocksize", 256);
      GRAFT_CHECK_FIX(na.numel() == (nb + w->nested_blocksize - 1) / w->nested_blocksize, kFixWeights,
                      "'{}.nested_absmax' has {} values for {} blocks", full(wname), na.numel(), nb);
      w->nested_absmax.assign(na.data<float>(), na.data<float>() + na.numel());
      w->nested_offset = q.value("nested_offset", 0.0f);
      if (src.has(full(wname + ".nested_quant_map"))) {
        // bitsandbytes builds this map at run time with torch (create_dynamic_map), and torch versions differ
        // in the last bit of some entries. A file whose map is not graft's table keeps its own values: its
        // absmax is decoded here exactly as bitsandbytes decodes it (map[code] * nested_absmax + offset, f32).
        Tensor nm = raw(wname + ".nested_quant_map").to(DType::F32);
        GRAFT_CHECK_FIX(nm.numel() == 256, kFixWeights, "'{}.nested_quant_map' has {} values, expected 256", full(wname),
                        nm.numel());
        const auto& ours = nf4::dynamic_map_signed();
        if (!std::equal(ours.begin(), ours.end(), nm.data<float>())) {
          std::vector<float> am_f(static_cast<size_t>(nb));
          for (int64_t b = 0; b < nb; ++b) {
            am_f[static_cast<size_t>(b)] = nf4::decode_absmax(nm.data<float>()[w->absmax_q[static_cast<size_t>(b)]],
                                                              w->nested_absmax[static_cast<size_t>(b / w->nested_blocksize)],
                                                              w->nested_offset);
          }
          w->double_quant = false;
          w->absmax = std::move(am_f);
          w->absmax_q.clear();
          w->nested_absmax.clear();
        }
      }
    } else {
      w->double_quant = false;
      Tensor af = am.to(DType::F32);
      GRAFT_CHECK_FIX(af.numel() == nb, kFixWeights, "'{}.absmax' has {} values for {} blocks", full(wname), af.numel(), nb);
      w->absmax.assign(af.data<float>(), af.data<float>() + nb);
    }
    return w;
  }

  // `stored` is the checkpoint's dtype of the weight: bitsandbytes records it in the quant state (what
  // dequantization yields), so a bf16 source quantizes to a state saying "bfloat16", as bitsandbytes writes.
  LinearWeight from_dense(Tensor w, Tensor bias, DType stored) {
    LinearWeight lw;
    lw.out = w.size(0);
    lw.in = w.size(1);
    lw.bias = std::move(bias);
    if (opts.load_in_4bit) {
      const DType orig = stored == DType::F16 || stored == DType::F32 ? stored : DType::BF16;
      auto q = nf4::quantize(std::span<const float>(w.data<float>(), static_cast<size_t>(w.numel())), w.shape(),
                             opts.double_quant, 64, orig);
      lw.nf4 = std::make_shared<nf4::QuantizedWeight>(std::move(q));
    }
    else lw.dense = std::move(w);
    return lw;
  }

  LinearWeight linear(const std::string& module, int64_t out, int64_t in, bool bias) {
    const std::string wn = module + ".weight";
    Tensor b;
    if (bias) b = dense(module + ".bias", Dims{out});
    LinearWeight lw;
    if (is_bnb(wn)) {
      lw.out = out;
      lw.in = in;
      lw.nf4 = bnb(wn, out, in);
      lw.bias = b;
    } else {
      Tensor w = dense(wn, Dims{out, in});
      lw = from_dense(std::move(w), b, last_dtype);
    }
    linears.emplace_back(full(wn), lw);
    return lw;
  }
  // A matrix kept dense (routers, gates): bitsandbytes checkpoints may hold it quantized.
  Tensor dense_matrix(const std::string& wn, int64_t out, int64_t in) {
    if (is_bnb(wn)) return nf4::dequantize(*bnb(wn, out, in));
    return dense(wn, Dims{out, in});
  }

  MlpWeights mlp(const std::string& m, int64_t H, int64_t I, const std::string& g, const std::string& u,
                 const std::string& d) {
    return {linear(m + "." + g, I, H, cfg.mlp_bias), linear(m + "." + u, I, H, cfg.mlp_bias),
            linear(m + "." + d, H, I, cfg.mlp_bias)};
  }

  // Expert parallelism (LoadOptions::expert_shard_*): this rank holds only its shard of the experts.
  bool held(int64_t e, int64_t E) const {
    if (opts.expert_shard_count <= 1) return true;
    const auto [first, last] = expert_shard(E, opts.expert_shard_rank, opts.expert_shard_count);
    return e >= first && e < last;
  }
  // An expert of another rank: its shape only (no weights).
  static void not_held(ExpertWeights& ex, int64_t e, int64_t H, int64_t I) {
    ex.gate[static_cast<size_t>(e)] = LinearWeight{I, H, {}, nullptr, {}};
    ex.up[static_cast<size_t>(e)] = LinearWeight{I, H, {}, nullptr, {}};
    ex.down[static_cast<size_t>(e)] = LinearWeight{H, I, {}, nullptr, {}};
  }

  void experts(const std::string& block, int64_t E, int64_t H, int64_t I, ExpertWeights& ex) {
    const std::string base = block + "." + spec.experts;
    ex.gate.resize(static_cast<size_t>(E));
    ex.up.resize(static_cast<size_t>(E));
    ex.down.resize(static_cast<size_t>(E));
    if (src.has(full(base + ".gate_up_proj"))) {  // fused 3-D layout
      const bool io = spec.fused_in_out;
      Tensor gu = dense(base + ".gate_up_proj", io ? Dims{E, H, 2 * I} : Dims{E, 2 * I, H});
      const DType stored = last_dtype;
      Tensor dn = dense(base + ".down_proj", io ? Dims{E, I, H} : Dims{E, H, I});
      fused_sources.insert(full(base + ".gate_up_proj"));
      fused_sources.insert(full(base + ".down_proj"));
      for (int64_t e = 0; e < E; ++e) {
        if (!held(e, E)) {
          not_held(ex, e, H, I);
          continue;
        }
        Tensor g = gu.select(0, e), d = dn.select(0, e);
        Tensor gate = io ? g.slice(1, 0, I).transpose(0, 1).contiguous() : g.slice(0, 0, I).contiguous();
        Tensor up = io ? g.slice(1, I, 2 * I).transpose(0, 1).contiguous() : g.slice(0, I, 2 * I).contiguous();
        Tensor down = io ? d.transpose(0, 1).contiguous() : d.contiguous();
        ex.gate[static_cast<size_t>(e)] = from_dense(gate.clone(), {}, stored);
        ex.up[static_cast<size_t>(e)] = from_dense(up.clone(), {}, stored);
        ex.down[static_cast<size_t>(e)] = from_dense(down.clone(), {}, stored);
        const std::string p = full(fmt::format("{}.{}.", base, e));
        linears.emplace_back(p + spec.e_gate + ".weight", ex.gate[static_cast<size_t>(e)]);
        linears.emplace_back(p + spec.e_up + ".weight", ex.up[static_cast<size_t>(e)]);
        linears.emplace_back(p + spec.e_down + ".weight", ex.down[static_cast<size_t>(e)]);
      }
      return;
    }
    for (int64_t e = 0; e < E; ++e) {
      const std::string p = fmt::format("{}.{}.", base, e);
      if (!held(e, E)) {  // another rank's expert: its tensors are accounted for, not read
        not_held(ex, e, H, I);
        for (const auto& n : src.names())
          if (n.rfind(full(p), 0) == 0) used.insert(n);
        continue;
      }
      ex.gate[static_cast<size_t>(e)] = linear(p + spec.e_gate, I, H, false);
      ex.up[static_cast<size_t>(e)] = linear(p + spec.e_up, I, H, false);
      ex.down[static_cast<size_t>(e)] = linear(p + spec.e_down, H, I, false);
    }
  }

  void attention(const std::string& a, AttentionWeights& w) {
    const int64_t H = cfg.hidden_size, nh = cfg.num_attention_heads, nkv = cfg.num_key_value_heads, D = cfg.head_dim;
    if (spec.mla) {
      const auto& m = cfg.mla;
      if (m.q_lora_rank > 0) {
        w.q_a = linear(a + ".q_a_proj", m.q_lora_rank, H, cfg.attention_bias);
        w.q_a_norm = dense(a + ".q_a_layernorm.weight", Dims{m.q_lora_rank});
        w.q_b = linear(a + ".q_b_proj", nh * m.qk_head_dim(), m.q_lora_rank, false);
      } else {
        w.q = linear(a + ".q_proj", nh * m.qk_head_dim(), H, false);
      }
      w.kv_a = linear(a + ".kv_a_proj_with_mqa", m.kv_lora_rank + m.qk_rope_head_dim, H, cfg.attention_bias);
      w.kv_a_norm = dense(a + ".kv_a_layernorm.weight", Dims{m.kv_lora_rank});
      w.kv_b = linear(a + ".kv_b_proj", nh * (m.qk_nope_head_dim + m.v_head_dim), m.kv_lora_rank, false);
      w.o = linear(a + ".o_proj", H, nh * m.v_head_dim, cfg.attention_bias);
      return;
    }
    const bool qkvb = cfg.attention_bias || cfg.qkv_bias;
    w.q = linear(a + ".q_proj", nh * D, H, qkvb);
    w.k = linear(a + ".k_proj", nkv * D, H, qkvb);
    w.v = linear(a + ".v_proj", nkv * D, H, qkvb);
    w.o = linear(a + ".o_proj", H, nh * D, cfg.attention_bias);
    if (spec.qk_norm) {
      w.q_norm = dense(a + ".q_norm.weight", Dims{D});
      w.k_norm = dense(a + ".k_norm.weight", Dims{D});
    }
  }

  static void finish(Model& m, const config::ModelConfig& cfg) {
    const int rot = static_cast<int>(cfg.is_mla ? cfg.mla.qk_rope_head_dim : cfg.head_dim);
    m.rope_params_ = rope_params(cfg, rot);
    m.rope_.push_back(ops::rope_table(m.rope_params_));
  }

  void load(Model& m) {
    const int64_t H = cfg.hidden_size, V = cfg.vocab_size;
    GRAFT_CHECK_FIX(H > 0 && V > 0 && cfg.num_hidden_layers > 0, "fix config.json",
                    "config has hidden_size {}, vocab_size {}, num_hidden_layers {}", H, V, cfg.num_hidden_layers);
    if (!src.has("model.embed_tokens.weight") && src.has("language_model.model.embed_tokens.weight"))
      prefix = "language_model.";
    if (opts.experts_only) {  // an expert-parallel worker: its routed experts, nothing else is read
      m.experts_only_ = true;
      m.layers_.resize(static_cast<size_t>(cfg.num_hidden_layers));
      for (int64_t i = 0; i < cfg.num_hidden_layers; ++i) {
        LayerWeights& L = m.layers_[static_cast<size_t>(i)];
        L.kind = cfg.layer_kind(i);
        if (L.kind.moe)
          experts(fmt::format("model.layers.{}.", i) + spec.moe, cfg.moe.num_experts, H, cfg.expert_intermediate_size(),
                  L.moe.experts);
      }
      return;
    }
    m.embed_ = dense("model.embed_tokens.weight", Dims{V, H});
    m.final_norm_ = dense("model.norm.weight", Dims{H});
    if (src.has(full("lm_head.weight")) || !cfg.tie_word_embeddings) {
      // Like bitsandbytes (modules_to_not_convert = the output embedding), lm_head stays unquantized.
      m.lm_head_.out = V;
      m.lm_head_.in = H;
      if (is_bnb("lm_head.weight")) m.lm_head_.nf4 = bnb("lm_head.weight", V, H);
      else m.lm_head_.dense = dense("lm_head.weight", Dims{V, H});
    } else {
      m.lm_head_.out = V;
      m.lm_head_.in = H;
      m.lm_head_.dense = m.embed_;  // tied: shares the embedding table (unless lm_head_dtype quantizes a copy)
    }
    if (opts.lm_head_dtype == LmHeadDtype::NF4 && !m.lm_head_.quantized()) {
      // Inference only: the projection reads an NF4 copy; a tied embedding lookup keeps the f32 table.
      const Tensor& w = m.lm_head_.dense;
      auto q = nf4::quantize(std::span<const float>(w.data<float>(), static_cast<size_t>(w.numel())), w.shape(),
                             /*double_quant=*/true, 64, DType::F32);
      m.lm_head_.nf4 = std::make_shared<nf4::QuantizedWeight>(std::move(q));
      m.lm_head_.dense = Tensor();
    }
    if (opts.lm_head_dtype == LmHeadDtype::Q8 || opts.lm_head_dtype == LmHeadDtype::Q6) {
      // Inference only, like NF4 above; an lm_head stored in NF4 by the checkpoint (bnb) is dequantized first.
      const Tensor w = m.lm_head_.quantized() ? nf4::dequantize(*m.lm_head_.nf4) : m.lm_head_.dense;
      const std::span<const float> all(w.data<float>(), static_cast<size_t>(w.numel()));
      if (opts.lm_head_dtype == LmHeadDtype::Q8)
        m.lm_head_.q8 = std::make_shared<q8::QuantizedWeight>(q8::quantize(all, w.shape()));
      else
        m.lm_head_.q6 = std::make_shared<q6::QuantizedWeight>(q6::quantize(all, w.shape()));
      m.lm_head_.dense = Tensor();
      m.lm_head_.nf4 = nullptr;
    }
    m.lm_head_dtype_ = opts.lm_head_dtype;
    m.layers_.resize(static_cast<size_t>(cfg.num_hidden_layers));
    for (int64_t i = 0; i < cfg.num_hidden_layers; ++i) {
      LayerWeights& L = m.layers_[static_cast<size_t>(i)];
      const std::string p = fmt::format("model.layers.{}.", i);
      L.kind = cfg.layer_kind(i);
      L.input_norm = dense(p + "input_layernorm.weight", Dims{H});
      L.post_norm = dense(p + "post_attention_layernorm.weight", Dims{H});
      attention(p + spec.attn, L.attn);
      if (L.kind.moe) {
        const int64_t E = cfg.moe.num_experts, I = cfg.expert_intermediate_size();
        const std::string b = p + spec.moe;
        L.moe.router = dense_matrix(b + "." + spec.router + ".weight", E, H);
        if (cfg.moe.e_score_correction_bias || src.has(full(b + "." + spec.router + ".e_score_correction_bias")))
          L.moe.correction_bias = dense(b + "." + spec.router + ".e_score_correction_bias", Dims{E});
        experts(b, E, H, I, L.moe.experts);
        if (!spec.shared.empty()) {
          int64_t SI = cfg.moe.shared_expert_intermediate_size;
          if (SI == 0 && cfg.moe.n_shared_experts > 0) SI = cfg.moe.n_shared_experts * cfg.moe.moe_intermediate_size;
          if (SI == 0 && cfg.family == config::Family::Llama4) SI = cfg.intermediate_size;
          if (SI > 0) L.moe.shared = mlp(b + "." + spec.shared, H, SI, "gate_proj", "up_proj", "down_proj");
        }
        if (!spec.shared_gate.empty() && L.moe.shared.defined())
          L.moe.shared_gate = dense_matrix(b + "." + spec.shared_gate + ".weight", 1, H);
      } else {
        L.mlp = mlp(p + spec.mlp, H, cfg.dense_intermediate_size(), "gate_proj", "up_proj", "down_proj");
      }
    }
    std::vector<std::string> extra;
    for (const auto& n : src.names())
      if (!used.count(n) && !ignorable(n, cfg, prefix)) extra.push_back(n);
    if (!extra.empty()) {
      std::string list;
      for (size_t i = 0; i < extra.size() && i < 5; ++i) list += (i ? ", " : "") + extra[i];
      GRAFT_FAIL(kFixWeights, "{} has {} tensor(s) the {} config does not describe: {}{}", src.where(), extra.size(),
                 cfg.model_type, list, extra.size() > 5 ? ", ..." : "");
    }
  }
};

Model Model::load(const std::string& dir, const LoadOptions& opts) {
  Model m;
  m.cfg_ = config::load_model_config(dir, opts.config_overrides_json);
  LoadOptions o = opts;
  SafetensorsSource src(io::SafetensorsModel::open(dir));
  Loader ld{m.cfg_, src, o, family_spec(m.cfg_), "", {}};
  ld.load(m);
  Loader::finish(m, m.cfg_);
  m.shard_rank_ = o.expert_shard_rank, m.shard_count_ = std::max(o.expert_shard_count, 1);
  return m;
}

LmHeadDtype parse_lm_head_dtype(const std::string& value, const std::string& what) {
  if (value == "f32") return LmHeadDtype::F32;
  if (value == "nf4") return LmHeadDtype::NF4;
  if (value == "q8") return LmHeadDtype::Q8;
  if (value == "q6") return LmHeadDtype::Q6;
  GRAFT_FAIL(fmt::format("pass {} f32 (exact, the default), q8 (8-bit, inference only, CPU), q6 (6-bit, inference "
                         "only, CPU) or nf4 (4-bit, inference only)", what),
             "{} '{}' is not one of: f32, q8, q6, nf4", what, value);
}

const char* lm_head_dtype_name(LmHeadDtype d) {
  switch (d) {
    case LmHeadDtype::NF4: return "nf4";
    case LmHeadDtype::Q8: return "q8";
    case LmHeadDtype::Q6: return "q6";
    default: return "f32";
  }
}

Model Model::from_tensors(const config::ModelConfig& cfg, const std::vector<std::pair<std::string, Tensor>>& tensors,
                          const LoadOptions& opts) {
  Model m;
  m.cfg_ = cfg;
  MemorySource src(tensors);
  Loader ld{m.cfg_, src, opts, family_spec(m.cfg_), "", {}};
  ld.load(m);
  Loader::finish(m, m.cfg_);
  m.shard_rank_ = opts.expert_shard_rank, m.shard_count_ = std::max(opts.expert_shard_count, 1);
  return m;
}


std::vector<std::pair<std::string, Tensor>> random_checkpoint(const config::ModelConfig& cfg, uint64_t seed, float embed_std) {
  RandomSource src(cfg, seed, embed_std);
  Model m;
  m.cfg_ = cfg;
  Loader ld{m.cfg_, src, {}, family_spec(m.cfg_), "", {}};
  ld.load(m);
  return src.take();
}

QuantizedCheckpoint quantize_checkpoint(const std::string& dir, bool double_quant) {
  QuantizedCheckpoint qc;
  qc.config = config::load_model_config(dir);
  io::SafetensorsModel st = io::SafetensorsModel::open(dir);
  SafetensorsSource src(st);
  Model m;
  m.cfg_ = qc.config;
  LoadOptions o;
  o.load_in_4bit = true;
  o.double_quant = double_quant;
  Loader ld{m.cfg_, src, o, family_spec(m.cfg_), "", {}};
  ld.load(m);
  std::set<std::string> replaced = ld.fused_sources;
  for (auto& [name, lw] : ld.linears) {
    replaced.insert(name);
    qc.quantized.emplace_back(name, lw.nf4);
  }
  for (const auto& n : st.names())
    if (!replaced.count(n)) qc.kept.emplace_back(n, st.tensor(n));
  return qc;
}

size_t Model::weight_bytes() const {
  const auto nb = [](const Tensor& t) -> size_t { return t.defined() ? t.nbytes() : 0; };  // undefined: not held
  size_t b = nb(embed_) + nb(final_norm_);
  if (lm_head_.dense.raw() != embed_.raw()) b += lm_head_.bytes();
  for (const auto& L : layers_) {
    b += nb(L.input_norm) + nb(L.post_norm);
    for (const LinearWeight* w : {&L.attn.q, &L.attn.k, &L.attn.v, &L.attn.o, &L.attn.q_a, &L.attn.q_b, &L.attn.kv_a,
                                  &L.attn.kv_b, &L.mlp.gate, &L.mlp.up, &L.mlp.down, &L.moe.shared.gate,
                                  &L.moe.shared.up, &L.moe.shared.down})
      b += w->bytes();
    for (const auto* v : {&L.moe.experts.gate, &L.moe.experts.up, &L.moe.experts.down})
      for (const auto& w : *v) b += w.bytes();
    b += nb(L.moe.router);
  }
  return b;
}

}  // namespace graft::model
