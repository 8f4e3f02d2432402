#include "graft/config/model_config.hpp"

#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>

#include "graft/error.hpp"
#include "graft/mmap_file.hpp"

namespace graft::config {
namespace {
using json = nlohmann::json;

constexpr const char* kFixConfig = "fix config.json (compare with the model's published config.json)";

std::string short_dump(const json& v) {
  std::string s = v.dump(-1, ' ', false, json::error_handler_t::replace);
  if (s.size() > 60) s = s.substr(0, 57) + "...";
  return s;
}

// Typed, checked access to one JSON object. A key that is absent or null yields the default.
class Reader {
 public:
  Reader(const json& j, std::string source, std::string prefix = "") : j_(j), src_(std::move(source)), prefix_(std::move(prefix)) {}

  bool has(const char* k) const {
    auto it = j_.find(k);
    return it != j_.end() && !it->is_null();
  }
  bool present(const char* k) const { return j_.find(k) != j_.end(); }  // even when null
  const json* get(const char* k) const {
    auto it = j_.find(k);
    return (it == j_.end() || it->is_null()) ? nullptr : &*it;
  }

  int64_t i64(const char* k, int64_t def) const {
    const json* v = get(k);
    return v ? to_i64(*v, k) : def;
  }
  std::optional<int64_t> opt_i64(const char* k) const {
    const json* v = get(k);
    if (!v) return std::nullopt;
    return to_i64(*v, k);
  }
  double f64(const char* k, double def) const {
    const json* v = get(k);
    if (!v) return def;
    if (!v->is_number()) type_error(k, "a number", *v);
    return v->get<double>();
  }
  bool boolean(const char* k, bool def) const {
    const json* v = get(k);
    if (!v) return def;
    if (!v->is_boolean()) type_error(k, "true or false", *v);
    return v->get<bool>();
  }
  std::string str(const char* k, const std::string& def) const {
    const json* v = get(k);
    if (!v) return def;
    if (!v->is_string()) type_error(k, "a string", *v);
    return v->get<std::string>();
  }
  std::vector<int64_t> i64_list(const char* k) const {
    std::vector<int64_t> out;
    const json* v = get(k);
    if (!v) return out;
    if (!v->is_array()) type_error(k, "a list of integers", *v);
    for (const auto& e : *v) out.push_back(to_i64(e, k));
    return out;
  }
  std::vector<std::string> str_list(const char* k) const {
    std::vector<std::string> out;
    const json* v = get(k);
    if (!v) return out;
    if (v->is_string()) return {v->get<std::string>()};
    if (!v->is_array()) type_error(k, "a list of strings", *v);
    for (const auto& e : *v) {
      if (!e.is_string()) type_error(k, "a list of strings", *v);
      out.push_back(e.get<std::string>());
    }
    return out;
  }
  const std::string& source() const { return src_; }
  std::string key(const char* k) const { return prefix_ + k; }

  [[noreturn]] void type_error(const char* k, const char* want, const json& v) const {
    GRAFT_FAIL(kFixConfig, "{}: key '{}' must be {}, got {} {}", src_, key(k), want, v.type_name(), short_dump(v));
  }

 private:
  int64_t to_i64(const json& v, const char* k) const {
    if (v.is_number_integer()) {
      if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        type_error(k, "an integer that fits 64 bits", v);
      return v.get<int64_t>();
    }
    if (v.is_number_float()) {  // accept 4096.0, reject 4096.5
      double d = v.get<double>();
      if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.0e15) return static_cast<int64_t>(d);
    }
    type_error(k, "an integer", v);
  }
  const json& j_;
  std::string src_, prefix_;
};

RopeScaling parse_rope_scaling(const json& v, const std::string& source, const char* key) {
  RopeScaling r;
  if (v.is_null()) return r;
  GRAFT_CHECK_FIX(v.is_object(), kFixConfig, "{}: key '{}' must be an object or null, got {} {}", source, key,
                  v.type_name(), short_dump(v));
  Reader rd(v, source, std::string(key) + ".");
  // transformers accepts both "rope_type" (current) and "type" (legacy).
  r.type = rd.has("rope_type") ? rd.str("rope_type", "default") : rd.str("type", "default");
  static const std::vector<std::string> kTypes = {"default", "linear", "dynamic", "llama3", "yarn"};
  if (std::find(kTypes.begin(), kTypes.end(), r.type) == kTypes.end())
    GRAFT_FAIL("use one of: default, linear, dynamic, llama3, yarn",
               "{}: {}.rope_type '{}' is not supported (supported: default, linear, dynamic, llama3, yarn)", source,
               key, r.type);
  r.factor = rd.f64("factor", 1.0);
  // llama3: transformers' _compute_llama3_parameters requires these; its documented defaults are 1 and 4.
  r.low_freq_factor = rd.f64("low_freq_factor", 1.0);
  r.high_freq_factor = rd.f64("high_freq_factor", 4.0);
  r.original_max_position_embeddings = rd.i64("original_max_position_embeddings", 0);
  // yarn: transformers' _compute_yarn_parameters defaults beta_fast=32, beta_slow=1.
  r.beta_fast = rd.f64("beta_fast", 32.0);
  r.beta_slow = rd.f64("beta_slow", 1.0);
  r.mscale = rd.f64("mscale", 1.0);
  r.mscale_all_dim = rd.f64("mscale_all_dim", 0.0);
  if (rd.has("attention_factor")) r.attention_factor = rd.f64("attention_factor", 1.0);
  if (r.type != "default")
    GRAFT_CHECK_FIX(r.factor > 0, kFixConfig, "{}: {}.factor must be > 0, got {}", source, key, r.factor);
  // llama3 with high_freq_factor == low_freq_factor is valid (Llama 4: both 1.0): the smoothed band is empty.
  if (r.type == "llama3")
    GRAFT_CHECK_FIX(r.original_max_position_embeddings > 0 && r.high_freq_factor >= r.low_freq_factor, kFixConfig,
                    "{}: {} of type llama3 needs original_max_position_embeddings > 0 and high_freq_factor >= "
                    "low_freq_factor",
                    source, key);
  return r;
}

QuantizationConfig parse_quantization(const json& v, const std::string& source) {
  QuantizationConfig q;
  if (v.is_null()) return q;
  GRAFT_CHECK_FIX(v.is_object(), kFixConfig, "{}: key 'quantization_config' must be an object, got {} {}", source,
                  v.type_name(), short_dump(v));
  Reader rd(v, source, "quantization_config.");
  q.method = rd.str("quant_method", "");
  // BitsAndBytesConfig defaults: load_in_4bit=False, bnb_4bit_quant_type="fp4",
  // bnb_4bit_use_double_quant=False, bnb_4bit_compute_dtype=float32, bnb_4bit_quant_storage=uint8.
  q.load_in_4bit = rd.boolean("load_in_4bit", false);
  q.load_in_8bit = rd.boolean("load_in_8bit", false);
  if (q.method.empty() && (q.load_in_4bit || q.load_in_8bit)) q.method = "bitsandbytes";
  q.bnb_4bit_quant_type = rd.str("bnb_4bit_quant_type", "fp4");
  q.bnb_4bit_use_double_quant = rd.boolean("bnb_4bit_use_double_quant", false);
  q.bnb_4bit_compute_dtype = rd.str("bnb_4bit_compute_dtype", "float32");
  q.bnb_4bit_quant_storage = rd.str("bnb_4bit_quant_storage", "uint8");
  q.skip_modules = rd.str_list("llm_int8_skip_modules");
  for (auto& s : rd.str_list("modules_to_not_convert")) q.skip_modules.push_back(s);
  q.fmt = rd.str("fmt", "");
  q.activation_scheme = rd.str("activation_scheme", "");
  q.weight_block_size = rd.i64_list("weight_block_size");
  return q;
}

struct FamilyName {
  const char* type;
  Family family;
};
constexpr FamilyName kFamilies[] = {
    {"llama", Family::Llama},          {"qwen2", Family::Qwen2},           {"qwen3", Family::Qwen3},
    {"qwen2_moe", Family::Qwen2Moe},   {"qwen3_moe", Family::Qwen3Moe},    {"mixtral", Family::Mixtral},
    {"deepseek_v2", Family::DeepseekV2}, {"deepseek_v3", Family::DeepseekV3}, {"llama4", Family::Llama4},
    {"llama4_text", Family::Llama4},
};

bool contains(const std::vector<int64_t>& v, int64_t x) { return std::find(v.begin(), v.end(), x) != v.end(); }

// Generous upper bounds for config.json sizes (docs/formats.md, "config.json"): every published
// checkpoint is far inside them, while a typo or a hostile file (vocab_size 1e12, max_position_embeddings
// 2^62) would otherwise size tensors, tables or loops from the value.
void check_plausible(const ModelConfig& c, const std::string& source, const Reader& r) {
  struct Bound {
    const char* key;
    int64_t value, max;
  };
  const MoeConfig& m = c.moe;
  const Bound bounds[] = {
      {"vocab_size", c.vocab_size, kMaxVocabSize},
      {"hidden_size", c.hidden_size, int64_t{1} << 18},
      {"intermediate_size", c.intermediate_size, int64_t{1} << 20},
      {"num_hidden_layers", c.num_hidden_layers, int64_t{1} << 12},
      {"num_attention_heads", c.num_attention_heads, int64_t{1} << 14},
      {"num_key_value_heads", c.num_key_value_heads, int64_t{1} << 14},
      {"head_dim", c.head_dim, int64_t{1} << 14},
      {"max_position_embeddings", c.max_position_embeddings, kMaxPositionEmbeddings},
      {"moe_intermediate_size", m.moe_intermediate_size, int64_t{1} << 20},
      {"shared_expert_intermediate_size", m.shared_expert_intermediate_size, int64_t{1} << 20},
      {"n_shared_experts", m.n_shared_experts, int64_t{1} << 10},
      {"intermediate_size_mlp", c.intermediate_size_mlp, int64_t{1} << 20},
      {"q_lora_rank", c.mla.q_lora_rank, int64_t{1} << 16},
      {"kv_lora_rank", c.mla.kv_lora_rank, int64_t{1} << 16},
      {"qk_nope_head_dim", c.mla.qk_nope_head_dim, int64_t{1} << 14},
      {"qk_rope_head_dim", c.mla.qk_rope_head_dim, int64_t{1} << 14},
      {"v_head_dim", c.mla.v_head_dim, int64_t{1} << 14},
      {"attention_chunk_size", c.attention_chunk_size, kMaxPositionEmbeddings},
      {"num_nextn_predict_layers", c.num_nextn_predict_layers, int64_t{1} << 12},
  };
  for (const Bound& b : bounds)
    GRAFT_CHECK_FIX(b.value <= b.max, kFixConfig,
                    "{}: key '{}' = {} is implausible (graft accepts at most {}; published models stay far below)", source,
                    r.key(b.key), b.value, b.max);
  GRAFT_CHECK_FIX(c.max_position_embeddings > 0, kFixConfig, "{}: key '{}' must be a positive integer, got {}", source,
                  r.key("max_position_embeddings"), c.max_position_embeddings);
  if (c.sliding_window)
    GRAFT_CHECK_FIX(*c.sliding_window <= kMaxPositionEmbeddings, kFixConfig,
                    "{}: key '{}' = {} is implausible (graft accepts at most {})", source, r.key("sliding_window"),
                    *c.sliding_window, kMaxPositionEmbeddings);
}

}  // namespace

const std::vector<std::string>& supported_model_types() {
  static const std::vector<std::string> v = [] {
    std::vector<std::string> out;
    for (const auto& f : kFamilies) out.emplace_back(f.type);
    return out;
  }();
  return v;
}

std::string_view family_name(Family f) {
  for (const auto& n : kFamilies)
    if (n.family == f) return n.type;
  return "?";
}

// ------------------------------------------------------------------ layer helpers

bool ModelConfig::is_moe_layer(int64_t i) const {
  GRAFT_CHECK(i >= 0 && i < num_hidden_layers, "layer {} out of range [0, {})", i, num_hidden_layers);
  if (moe.num_experts <= 0) return false;
  switch (family) {
    case Family::Qwen2Moe:
    case Family::Qwen3Moe:
      // transformers: (layer_idx not in mlp_only_layers) and num_experts > 0 and (layer_idx + 1) % decoder_sparse_step == 0
      return !contains(moe.mlp_only_layers, i) && moe.decoder_sparse_step > 0 && (i + 1) % moe.decoder_sparse_step == 0;
    case Family::DeepseekV2:
    case Family::DeepseekV3:
      // layer_idx >= first_k_dense_replace and layer_idx % moe_layer_freq == 0
      return i >= moe.first_k_dense_replace && moe.moe_layer_freq > 0 && i % moe.moe_layer_freq == 0;
    case Family::Llama4:
      return contains(moe.moe_layers, i);
    case Family::Mixtral:
      return true;
    default:
      return false;
  }
}

int64_t ModelConfig::num_moe_layers() const {
  int64_t n = 0;
  for (int64_t i = 0; i < num_hidden_layers; ++i) n += is_moe_layer(i) ? 1 : 0;
  return n;
}

LayerKind ModelConfig::layer_kind(int64_t i) const {
  LayerKind k;
  k.moe = is_moe_layer(i);
  if (!layer_types.empty()) {
    k.sliding = layer_types[static_cast<size_t>(i)] == "sliding_attention";
  } else if (sliding_window) {
    switch (family) {
      case Family::Mixtral:
        k.sliding = true;
        break;
      case Family::Qwen2:
      case Family::Qwen3:
      case Family::Qwen2Moe:
      case Family::Qwen3Moe:
        k.sliding = use_sliding_window && i >= max_window_layers;
        break;
      default:
        break;
    }
  }
  if (family == Family::Llama4) {
    k.rope = no_rope_layers.empty() || no_rope_layers[static_cast<size_t>(i)] != 0;
    k.chunked = k.rope && attention_chunk_size > 0;
  }
  return k;
}

int64_t ModelConfig::dense_intermediate_size() const {
  return family == Family::Llama4 ? intermediate_size_mlp : intermediate_size;
}
int64_t ModelConfig::expert_intermediate_size() const {
  if (family == Family::Mixtral || family == Family::Llama4) return intermediate_size;
  return moe.moe_intermediate_size;
}

// ------------------------------------------------------------------ parsing

ModelConfig parse_model_config(const json& top, const std::string& source) {
  GRAFT_CHECK_FIX(top.is_object(), kFixConfig, "{}: config is a {}, not a JSON object", source, top.type_name());
  Reader tr(top, source);
  GRAFT_CHECK_FIX(tr.has("model_type"), "add \"model_type\" (one of: " + fmt::format("{}", fmt::join(supported_model_types(), ", ")) + ")",
                  "{}: missing key 'model_type'", source);
  std::string mt = tr.str("model_type", "");
  const FamilyName* fam = nullptr;
  for (const auto& f : kFamilies)
    if (mt == f.type) fam = &f;
  GRAFT_CHECK_FIX(fam != nullptr, "graft supports these model families only; convert or choose a supported model",
                  "{}: model_type '{}' is not supported (supported: {})", source, mt,
                  fmt::join(supported_model_types(), ", "));

  ModelConfig c;
  c.family = fam->family;
  c.architectures = tr.str_list("architectures");
  c.torch_dtype = tr.str("torch_dtype", tr.str("dtype", ""));

  // Llama 4: the text model's keys live under text_config when model_type is "llama4".
  const json* textp = &top;
  std::string prefix;
  if (mt == "llama4") {
    const json* tc = tr.get("text_config");
    GRAFT_CHECK_FIX(tc && tc->is_object(), kFixConfig, "{}: model_type 'llama4' needs a 'text_config' object", source);
    textp = tc;
    prefix = "text_config.";
    c.model_type = Reader(*tc, source, prefix).str("model_type", "llama4_text");
  } else {
    c.model_type = mt;
  }
  const json& j = *textp;
  Reader r(j, source, prefix);

  // quantization_config sits at the top level (also for llama4).
  if (const json* q = tr.get("quantization_config")) c.quantization = parse_quantization(*q, source);
  else if (const json* q2 = r.get("quantization_config")) c.quantization = parse_quantization(*q2, source);

  // ---- family defaults (transformers configuration classes) ----
  struct Defaults {
    int64_t vocab, hidden, inter, layers, heads;
    std::optional<int64_t> kv_heads;  // nullopt = num_attention_heads
    std::optional<int64_t> head_dim;  // nullopt = hidden_size / num_attention_heads
    int64_t max_pos;
    double eps, theta;
  };
  Defaults d{};
  switch (c.family) {
    case Family::Llama:  // LlamaConfig
      d = {32000, 4096, 11008, 32, 32, std::nullopt, std::nullopt, 2048, 1e-6, 10000.0};
      break;
    case Family::Qwen2:  // Qwen2Config
      d = {151936, 4096, 22016, 32, 32, 32, std::nullopt, 32768, 1e-6, 10000.0};
      break;
    case Family::Qwen3:  // Qwen3Config (head_dim=128)
      d = {151936, 4096, 22016, 32, 32, 32, 128, 32768, 1e-6, 10000.0};
      break;
    case Family::Qwen2Moe:  // Qwen2MoeConfig
      d = {151936, 2048, 5632, 24, 16, 16, std::nullopt, 32768, 1e-6, 10000.0};
      break;
    case Family::Qwen3Moe:  // Qwen3MoeConfig (attention uses getattr(config, "head_dim", hidden // heads))
      d = {151936, 2048, 6144, 24, 32, 4, std::nullopt, 32768, 1e-6, 10000.0};
      break;
    case Family::Mixtral:  // MixtralConfig (max_position_embeddings=4096*32, rope_theta=1e6, eps=1e-5)
      d = {32000, 4096, 14336, 32, 32, 8, std::nullopt, 4096 * 32, 1e-5, 1e6};
      break;
    case Family::DeepseekV2:  // DeepseekV2Config
      d = {102400, 4096, 11008, 30, 32, 32, std::nullopt, 2048, 1e-6, 10000.0};
      break;
    case Family::DeepseekV3:  // DeepseekV3Config
      d = {129280, 7168, 18432, 61, 128, 128, std::nullopt, 4096, 1e-6, 10000.0};
      break;
    case Family::Llama4:  // Llama4TextConfig (head_dim=128, max_position_embeddings=4096*32, rope_theta=500000)
      d = {202048, 5120, 8192, 48, 40, 8, 128, 4096 * 32, 1e-5, 500000.0};
      break;
  }
  c.vocab_size = r.i64("vocab_size", d.vocab);
  c.hidden_size = r.i64("hidden_size", d.hidden);
  c.intermediate_size = r.i64("intermediate_size", d.inter);
  c.num_hidden_layers = r.i64("num_hidden_layers", d.layers);
  c.num_attention_heads = r.i64("num_attention_heads", d.heads);
  c.num_key_value_heads = r.i64("num_key_value_heads", d.kv_heads.value_or(c.num_attention_heads));
  c.max_position_embeddings = r.i64("max_position_embeddings", d.max_pos);
  c.rms_norm_eps = r.f64("rms_norm_eps", d.eps);
  c.hidden_act = r.str("hidden_act", "silu");  // every family's default is "silu"
  // tie_word_embeddings: False for every family here (PretrainedConfig default is True, but each class
  // passes False). Llama 4 may carry it on the outer config.
  c.tie_word_embeddings = r.has("tie_word_embeddings") ? r.boolean("tie_word_embeddings", false)
                                                       : tr.boolean("tie_word_embeddings", false);

  for (auto [k, v] : {std::pair{"vocab_size", c.vocab_size}, std::pair{"hidden_size", c.hidden_size},
                      std::pair{"num_hidden_layers", c.num_hidden_layers},
                      std::pair{"num_attention_heads", c.num_attention_heads},
                      std::pair{"num_key_value_heads", c.num_key_value_heads}})
    GRAFT_CHECK_FIX(v > 0 && v < (int64_t{1} << 40), kFixConfig, "{}: key '{}' must be a positive integer, got {}",
                    source, r.key(k), v);
  GRAFT_CHECK_FIX(c.intermediate_size >= 0, kFixConfig, "{}: key '{}' must be >= 0", source, r.key("intermediate_size"));
  GRAFT_CHECK_FIX(c.num_hidden_layers <= 100000, kFixConfig, "{}: num_hidden_layers {} is implausible", source,
                  c.num_hidden_layers);

  if (d.head_dim && !r.present("head_dim")) {
    c.head_dim = *d.head_dim;
  } else if (auto hd = r.opt_i64("head_dim")) {
    c.head_dim = *hd;
  } else {
    GRAFT_CHECK_FIX(c.hidden_size % c.num_attention_heads == 0, "set head_dim explicitly",
                    "{}: hidden_size {} is not divisible by num_attention_heads {} and head_dim is not given", source,
                    c.hidden_size, c.num_attention_heads);
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  GRAFT_CHECK_FIX(c.head_dim > 0, kFixConfig, "{}: head_dim must be positive, got {}", source, c.head_dim);
  GRAFT_CHECK_FIX(c.num_attention_heads % c.num_key_value_heads == 0, kFixConfig,
                  "{}: num_attention_heads {} is not a multiple of num_key_value_heads {}", source,
                  c.num_attention_heads, c.num_key_value_heads);

  // RoPE: rope_theta + rope_scaling, or transformers v5 "rope_parameters" {rope_theta, rope_type, ...}.
  c.rope_theta = r.f64("rope_theta", d.theta);
  if (const json* rp = r.get("rope_parameters")) {
    GRAFT_CHECK_FIX(rp->is_object(), kFixConfig, "{}: key '{}' must be an object", source, r.key("rope_parameters"));
    Reader rr(*rp, source, r.key("rope_parameters."));
    c.rope_theta = rr.f64("rope_theta", c.rope_theta);
    c.rope_scaling = parse_rope_scaling(*rp, source, "rope_parameters");
  } else if (const json* rs = r.get("rope_scaling")) {
    c.rope_scaling = parse_rope_scaling(*rs, source, "rope_scaling");
  }
  GRAFT_CHECK_FIX(c.rope_theta > 0, kFixConfig, "{}: rope_theta must be > 0, got {}", source, c.rope_theta);

  // ---- attention variants ----
  c.attention_bias = r.boolean("attention_bias", false);  // default False in every class that has it
  c.mlp_bias = c.family == Family::Llama && r.boolean("mlp_bias", false);
  if (c.family == Family::Qwen2 || c.family == Family::Qwen2Moe) {
    // Qwen2Attention/Qwen2MoeAttention: q/k/v always biased (newer configs spell it "qkv_bias", default True).
    c.qkv_bias = r.boolean("qkv_bias", true);
    c.attention_bias = false;
  }
  if (c.family == Family::Qwen3 || c.family == Family::Qwen3Moe) {
    c.qk_norm = true;  // per-head RMSNorm q_norm/k_norm with weights of size head_dim
    c.qk_norm_has_weight = true;
  }

  // ---- sliding window ----
  switch (c.family) {
    case Family::Qwen2:
    case Family::Qwen3:
    case Family::Qwen2Moe:
    case Family::Qwen3Moe:
      // Qwen*Config: use_sliding_window=False, sliding_window=4096, max_window_layers=28;
      // the window only applies when use_sliding_window is true.
      c.use_sliding_window = r.boolean("use_sliding_window", false);
      c.sliding_window = r.present("sliding_window") ? r.opt_i64("sliding_window") : std::optional<int64_t>(4096);
      c.max_window_layers = r.i64("max_window_layers", 28);
      if (!c.use_sliding_window) c.sliding_window.reset();
      break;
    case Family::Mixtral:
      c.sliding_window = r.opt_i64("sliding_window");  // MixtralConfig: sliding_window=None
      c.use_sliding_window = c.sliding_window.has_value();
      break;
    default:
      break;
  }
  if (c.sliding_window)
    GRAFT_CHECK_FIX(*c.sliding_window > 0, kFixConfig, "{}: sliding_window must be positive or null, got {}", source,
                    *c.sliding_window);
  if (r.has("layer_types")) {
    std::vector<std::string> lt;
    for (const auto& s : Reader(j, source, prefix).str_list("layer_types")) lt.push_back(s);
    GRAFT_CHECK_FIX(static_cast<int64_t>(lt.size()) == c.num_hidden_layers, kFixConfig,
                    "{}: layer_types has {} entries for {} layers", source, lt.size(), c.num_hidden_layers);
    for (const auto& s : lt)
      GRAFT_CHECK_FIX(s == "full_attention" || s == "sliding_attention" || s == "chunked_attention", kFixConfig,
                      "{}: layer_types entry '{}' is not full_attention, sliding_attention or chunked_attention",
                      source, s);
    if (c.family != Family::Llama4) c.layer_types = lt;
  }

  // ---- MoE ----
  MoeConfig& m = c.moe;
  switch (c.family) {
    case Family::Qwen2Moe:
      // Qwen2MoeConfig: num_experts=60, num_experts_per_tok=4, moe_intermediate_size=1408,
      // shared_expert_intermediate_size=5632, norm_topk_prob=False, decoder_sparse_step=1, mlp_only_layers=[].
      m.num_experts = r.i64("num_experts", 60);
      m.num_experts_per_tok = r.i64("num_experts_per_tok", 4);
      m.moe_intermediate_size = r.i64("moe_intermediate_size", 1408);
      m.shared_expert_intermediate_size = r.i64("shared_expert_intermediate_size", 5632);
      m.shared_expert_gate = m.shared_expert_intermediate_size > 0;
      m.norm_topk_prob = r.boolean("norm_topk_prob", false);
      m.decoder_sparse_step = r.i64("decoder_sparse_step", 1);
      m.mlp_only_layers = r.i64_list("mlp_only_layers");
      m.router_aux_loss_coef = r.f64("router_aux_loss_coef", 0.001);
      break;
    case Family::Qwen3Moe:
      // Qwen3MoeConfig: num_experts=128, num_experts_per_tok=8, moe_intermediate_size=768,
      // norm_topk_prob=False (real checkpoints say true), decoder_sparse_step=1, mlp_only_layers=[].
      // transformers >= 5 maps num_experts to num_local_experts (attribute_map) and saves that name.
      m.num_experts = r.has("num_experts") ? r.i64("num_experts", 128) : r.i64("num_local_experts", 128);
      m.num_experts_per_tok = r.i64("num_experts_per_tok", 8);
      m.moe_intermediate_size = r.i64("moe_intermediate_size", 768);
      m.norm_topk_prob = r.boolean("norm_topk_prob", false);
      m.decoder_sparse_step = r.i64("decoder_sparse_step", 1);
      m.mlp_only_layers = r.i64_list("mlp_only_layers");
      m.router_aux_loss_coef = r.f64("router_aux_loss_coef", 0.001);
      break;
    case Family::Mixtral:
      // MixtralConfig: num_local_experts=8, num_experts_per_tok=2; experts are intermediate_size wide;
      // top-k weights always renormalised.
      m.num_experts = r.i64("num_local_experts", 8);
      m.num_experts_per_tok = r.i64("num_experts_per_tok", 2);
      m.moe_intermediate_size = c.intermediate_size;
      m.norm_topk_prob = true;
      m.router_aux_loss_coef = r.f64("router_aux_loss_coef", 0.001);
      m.router_jitter_noise = r.f64("router_jitter_noise", 0.0);
      break;
    case Family::DeepseekV2:
    case Family::DeepseekV3: {
      bool v3 = c.family == Family::DeepseekV3;
      // DeepseekV2Config: n_routed_experts=None (dense), n_shared_experts=None, num_experts_per_tok=None,
      //   moe_intermediate_size=1407, first_k_dense_replace=0, moe_layer_freq=1, routed_scaling_factor=1.0,
      //   topk_method="greedy", n_group=None, topk_group=None, norm_topk_prob=False, scoring_func="softmax".
      // DeepseekV3Config: n_routed_experts=256, n_shared_experts=1, num_experts_per_tok=8,
      //   moe_intermediate_size=2048, first_k_dense_replace=3, routed_scaling_factor=2.5, n_group=8,
      //   topk_group=4, norm_topk_prob=True, topk_method="noaux_tc", scoring_func="sigmoid".
      m.num_experts = r.i64("n_routed_experts", v3 ? 256 : 0);
      m.n_shared_experts = r.i64("n_shared_experts", v3 ? 1 : 0);
      m.num_experts_per_tok = r.i64("num_experts_per_tok", v3 ? 8 : 0);
      m.moe_intermediate_size = r.i64("moe_intermediate_size", v3 ? 2048 : 1407);
      m.shared_expert_intermediate_size = m.n_shared_experts * m.moe_intermediate_size;
      m.first_k_dense_replace = r.i64("first_k_dense_replace", v3 ? 3 : 0);
      m.moe_layer_freq = r.i64("moe_layer_freq", 1);
      m.routed_scaling_factor = r.f64("routed_scaling_factor", v3 ? 2.5 : 1.0);
      m.topk_method = r.str("topk_method", v3 ? "noaux_tc" : "greedy");
      m.n_group = r.i64("n_group", v3 ? 8 : 0);
      m.topk_group = r.i64("topk_group", v3 ? 4 : 0);
      m.norm_topk_prob = r.boolean("norm_topk_prob", v3);
      m.scoring_func = r.str("scoring_func", v3 ? "sigmoid" : "softmax");
      m.e_score_correction_bias = v3 && m.topk_method == "noaux_tc";
      m.router_aux_loss_coef = r.f64("aux_loss_alpha", 0.001);
      static const std::vector<std::string> kMethods = {"greedy", "group_limited_greedy", "noaux_tc"};
      GRAFT_CHECK_FIX(std::find(kMethods.begin(), kMethods.end(), m.topk_method) != kMethods.end(), kFixConfig,
                      "{}: topk_method '{}' is not supported (supported: greedy, group_limited_greedy, noaux_tc)",
                      source, m.topk_method);
      GRAFT_CHECK_FIX(m.scoring_func == "softmax" || m.scoring_func == "sigmoid", kFixConfig,
                      "{}: scoring_func '{}' is not supported (supported: softmax, sigmoid)", source, m.scoring_func);
      if (m.n_group > 0)
        GRAFT_CHECK_FIX(m.num_experts % m.n_group == 0 && m.topk_group <= m.n_group, kFixConfig,
                        "{}: n_routed_experts {} must be divisible by n_group {} and topk_group {} <= n_group", source,
                        m.num_experts, m.n_group, m.topk_group);
      // MLA. DeepseekV2/V3Config: q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128,
      // qk_rope_head_dim=64, v_head_dim=128. "q_lora_rank": null = plain q_proj (V2-Lite).
      c.is_mla = true;
      c.mla.q_lora_rank = r.present("q_lora_rank") ? r.opt_i64("q_lora_rank").value_or(0) : 1536;
      c.mla.kv_lora_rank = r.i64("kv_lora_rank", 512);
      c.mla.qk_nope_head_dim = r.i64("qk_nope_head_dim", 128);
      c.mla.qk_rope_head_dim = r.i64("qk_rope_head_dim", 64);
      c.mla.v_head_dim = r.i64("v_head_dim", 128);
      for (auto [k, v] : {std::pair{"kv_lora_rank", c.mla.kv_lora_rank}, std::pair{"qk_rope_head_dim", c.mla.qk_rope_head_dim},
                          std::pair{"v_head_dim", c.mla.v_head_dim}, std::pair{"qk_nope_head_dim", c.mla.qk_nope_head_dim},
                          std::pair{"q_lora_rank", c.mla.q_lora_rank}})
        GRAFT_CHECK_FIX(v >= 0 && v < (int64_t{1} << 30), kFixConfig, "{}: key '{}' must be a non-negative integer, got {}",
                        source, k, v);
      c.head_dim = c.mla.qk_head_dim();  // the q/k head width under MLA
      // Multi-token-prediction layers (remote-code key; transformers does not build them): default 0.
      c.num_nextn_predict_layers = r.i64("num_nextn_predict_layers", 0);
      break;
    }
    case Family::Llama4: {
      // Llama4TextConfig: num_local_experts=16, num_experts_per_tok=1, intermediate_size=8192 (experts and
      // shared expert), intermediate_size_mlp=16384 (dense layers), interleave_moe_layer_step=1,
      // moe_layers=None -> range(step-1, L, step), use_qk_norm=True (weightless L2 norm),
      // no_rope_layers=None/[] -> [(i+1) % no_rope_layer_interval != 0], no_rope_layer_interval=4,
      // attention_chunk_size=8192, attn_temperature_tuning=True, floor_scale=8192, attn_scale=0.1.
      m.num_experts = r.i64("num_local_experts", 16);
      m.num_experts_per_tok = r.i64("num_experts_per_tok", 1);
      m.moe_intermediate_size = c.intermediate_size;
      m.shared_expert_intermediate_size = c.intermediate_size;
      m.scoring_func = "sigmoid";
      m.norm_topk_prob = false;
      m.router_aux_loss_coef = r.f64("router_aux_loss_coef", 0.001);
      m.router_jitter_noise = r.f64("router_jitter_noise", 0.0);
      c.intermediate_size_mlp = r.i64("intermediate_size_mlp", 16384);
      m.interleave_moe_layer_step = r.i64("interleave_moe_layer_step", 1);
      GRAFT_CHECK_FIX(m.interleave_moe_layer_step > 0, kFixConfig, "{}: interleave_moe_layer_step must be > 0", source);
      if (r.has("moe_layers")) {
        m.moe_layers = r.i64_list("moe_layers");
      } else {
        if (m.interleave_moe_layer_step <= c.num_hidden_layers)  // (also keeps i + step from overflowing)
          for (int64_t i = m.interleave_moe_layer_step - 1; i < c.num_hidden_layers; i += m.interleave_moe_layer_step)
            m.moe_layers.push_back(i);
      }
      c.no_rope_layers = r.i64_list("no_rope_layers");
      int64_t interval = r.i64("no_rope_layer_interval", 4);
      if (c.no_rope_layers.empty()) {
        GRAFT_CHECK_FIX(interval > 0, kFixConfig, "{}: no_rope_layer_interval must be > 0", source);
        for (int64_t i = 0; i < c.num_hidden_layers; ++i) c.no_rope_layers.push_back((i + 1) % interval != 0 ? 1 : 0);
      }
      GRAFT_CHECK_FIX(static_cast<int64_t>(c.no_rope_layers.size()) == c.num_hidden_layers, kFixConfig,
                      "{}: no_rope_layers has {} entries for {} layers", source, c.no_rope_layers.size(),
                      c.num_hidden_layers);
      c.attention_chunk_size = r.i64("attention_chunk_size", 8192);
      c.qk_norm = r.boolean("use_qk_norm", true);
      c.qk_norm_has_weight = false;
      c.attn_temperature_tuning = true;  // some configs write it as an integer
      if (const json* t = r.get("attn_temperature_tuning"))
        c.attn_temperature_tuning = t->is_boolean() ? t->get<bool>() : r.i64("attn_temperature_tuning", 1) != 0;
      c.floor_scale = r.f64("floor_scale", 8192);
      c.attn_scale = r.f64("attn_scale", 0.1);
      break;
    }
    default:
      break;
  }
  if (m.num_experts > 0) {
    GRAFT_CHECK_FIX(m.num_experts < (int64_t{1} << 20), kFixConfig, "{}: {} routed experts is implausible", source,
                    m.num_experts);
    GRAFT_CHECK_FIX(m.num_experts_per_tok > 0 && m.num_experts_per_tok <= m.num_experts, kFixConfig,
                    "{}: num_experts_per_tok {} must be in [1, {}] (the number of routed experts)", source,
                    m.num_experts_per_tok, m.num_experts);
    GRAFT_CHECK_FIX(c.expert_intermediate_size() > 0, kFixConfig, "{}: the routed experts' intermediate size must be > 0",
                    source);
  }
  GRAFT_CHECK_FIX(m.shared_expert_intermediate_size >= 0 && m.n_shared_experts >= 0, kFixConfig,
                  "{}: shared expert sizes must be >= 0", source);
  for (int64_t l : m.mlp_only_layers)
    GRAFT_CHECK_FIX(l >= 0 && l < c.num_hidden_layers, kFixConfig, "{}: mlp_only_layers entry {} is not a layer in [0, {})",
                    source, l, c.num_hidden_layers);
  for (int64_t l : m.moe_layers)
    GRAFT_CHECK_FIX(l >= 0 && l < c.num_hidden_layers, kFixConfig, "{}: moe_layers entry {} is not a layer in [0, {})",
                    source, l, c.num_hidden_layers);
  check_plausible(c, source, r);
  return c;
}

ModelConfig parse_model_config_text(const std::string& text, const std::string& source) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    GRAFT_FAIL(kFixConfig, "{}: not valid JSON: {}", source, e.what());
  }
  return parse_model_config(j, source);
}

ModelConfig load_model_config(const std::string& path) {
  namespace fs = std::filesystem;
  std::string file = fs::is_directory(path) ? (fs::path(path) / "config.json").string() : path;
  GRAFT_CHECK_FIX(fs::exists(file), "point at a Hugging Face model directory (it holds config.json) or a config.json file",
                  "'{}' not found", file);
  GRAFT_CHECK_FIX(!fs::is_directory(file), "a model directory must hold config.json", "'{}' is a directory", file);
  return parse_model_config_text(read_text_file(file), file);
}

json apply_config_overrides(json config, const json& overrides) {
  GRAFT_CHECK_FIX(config.is_object() && overrides.is_object(), "give overrides_of_model_config as a mapping of config keys",
                  "config overrides must be a JSON object applied to a JSON object");
  json& target = config.contains("text_config") && config["text_config"].is_object() ? config["text_config"] : config;
  for (const auto& [k, v] : overrides.items()) target[k] = v;
  return config;
}

ModelConfig load_model_config(const std::string& path, const std::string& overrides_json) {
  if (overrides_json.empty()) return load_model_config(path);
  namespace fs = std::filesystem;
  const std::string file = fs::is_directory(path) ? (fs::path(path) / "config.json").string() : path;
  load_model_config(path);  // the file exists and parses without the overrides
  json base = json::parse(read_text_file(file), nullptr, false);
  json ov = json::parse(overrides_json, nullptr, false);
  GRAFT_CHECK_FIX(!ov.is_discarded(), "give overrides_of_model_config as a mapping of config keys",
                  "overrides_of_model_config is not valid JSON: {}", overrides_json);
  return parse_model_config(apply_config_overrides(std::move(base), ov), file + " with overrides_of_model_config");
}

}  // namespace graft::config
