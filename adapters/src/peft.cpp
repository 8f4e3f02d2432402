// PEFT adapter files <-> graft Adapter: key naming, shape and rank validation, fused-expert packing.
#include <algorithm>
#include <filesystem>
#include <optional>
#include <regex>
#include <set>

#include <fmt/format.h>

#include "graft/adapters/peft.hpp"
#include "graft/error.hpp"
#include "graft/io/safetensors.hpp"
#include "graft/mmap_file.hpp"
#include "naming.hpp"

namespace graft::adapters {

namespace fs = std::filesystem;
using config::Family;
using model::ExpertProj;
using model::Module;
using detail::experts_block;
using detail::expert_proj_name;
using detail::fused_block;

namespace {
constexpr const char* kFixAdapter =
    "the adapter does not match this base model or is not a PEFT LoRA adapter: check base_model_name_or_path "
    "and adapter_config.json (docs/adapters.md lists the accepted keys)";

struct Dims2 {
  int64_t out = 0, in = 0;
};

int64_t shared_width(const config::ModelConfig& cfg) {
  int64_t s = cfg.moe.shared_expert_intermediate_size;
  if (s == 0 && cfg.moe.n_shared_experts > 0) s = cfg.moe.n_shared_experts * cfg.moe.moe_intermediate_size;
  return s;
}

// [out, in] of a dense module in `layer`, or nullopt when the layer has no such projection.
std::optional<Dims2> module_dims(const config::ModelConfig& cfg, int layer, Module m) {
  const int64_t H = cfg.hidden_size, nh = cfg.num_attention_heads, nkv = cfg.num_key_value_heads, D = cfg.head_dim;
  const bool moe = cfg.is_moe_layer(layer);
  const int64_t DI = cfg.dense_intermediate_size(), SI = shared_width(cfg);
  const auto& a = cfg.mla;
  switch (m) {
    case Module::Q:
      if (cfg.is_mla) return a.q_lora_rank > 0 ? std::nullopt : std::optional<Dims2>({nh * a.qk_head_dim(), H});
      return Dims2{nh * D, H};
    case Module::K:
    case Module::V:
      if (cfg.is_mla) return std::nullopt;
      return Dims2{nkv * D, H};
    case Module::O: return cfg.is_mla ? Dims2{H, nh * a.v_head_dim} : Dims2{H, nh * D};
    case Module::QA:
      if (!cfg.is_mla || a.q_lora_rank == 0) return std::nullopt;
      return Dims2{a.q_lora_rank, H};
    case Module::QB:
      if (!cfg.is_mla || a.q_lora_rank == 0) return std::nullopt;
      return Dims2{nh * a.qk_head_dim(), a.q_lora_rank};
    case Module::KVA:
      if (!cfg.is_mla) return std::nullopt;
      return Dims2{a.kv_lora_rank + a.qk_rope_head_dim, H};
    case Module::KVB:
      if (!cfg.is_mla) return std::nullopt;
      return Dims2{nh * (a.qk_nope_head_dim + a.v_head_dim), a.kv_lora_rank};
    case Module::Gate:
    case Module::Up:
      if (moe) return std::nullopt;
      return Dims2{DI, H};
    case Module::Down:
      if (moe) return std::nullopt;
      return Dims2{H, DI};
    case Module::SharedGate:
    case Module::SharedUp:
      if (!moe || SI == 0) return std::nullopt;
      return Dims2{SI, H};
    case Module::SharedDown:
      if (!moe || SI == 0) return std::nullopt;
      return Dims2{H, SI};
    case Module::kCount: break;
  }
  return std::nullopt;
}

Dims2 expert_dims(const config::ModelConfig& cfg, ExpertProj p) {
  const int64_t H = cfg.hidden_size, I = cfg.expert_intermediate_size();
  return p == ExpertProj::Down ? Dims2{H, I} : Dims2{I, H};
}

std::string shape_str(int64_t a, int64_t b) { return fmt::format("[{}, {}]", a, b); }

Tensor to_f32_owned(const Tensor& t) { return t.dtype() == DType::F32 ? t.clone() : t.to(DType::F32); }

// A modules_to_save tensor ("base_model.model.[language_model.][model.]embed_tokens.weight",
// "base_model.model.[language_model.]lm_head.weight", as PEFT saves them): read into `ad`. False for
// any other key.
bool load_saved_module(Adapter& ad, const io::SafetensorsFile& file, const std::string& k, const config::ModelConfig& cfg,
                       const std::string& src) {
  if (k.rfind("base_model.model.", 0) != 0 || k.find(".layers.") != std::string::npos) return false;
  std::string name;
  for (const char* m : {"embed_tokens", "lm_head"}) {
    const std::string suffix = std::string(m) + ".weight";
    if (k.size() >= suffix.size() && k.compare(k.size() - suffix.size(), suffix.size(), suffix) == 0 &&
        (k.size() == suffix.size() || k[k.size() - suffix.size() - 1] == '.'))
      name = m;
  }
  if (name.empty()) return false;
  GRAFT_CHECK_FIX(saves_module(ad.config, name), kFixAdapter,
                  "{}: tensor '{}' is a trained copy of {}, but adapter_config.json's modules_to_save does not name {}",
                  src, k, name, name);
  Tensor t = to_f32_owned(file.tensor(k));
  GRAFT_CHECK_FIX(t.ndim() == 2 && t.size(0) == cfg.vocab_size && t.size(1) == cfg.hidden_size, kFixAdapter,
                  "{}: tensor '{}' has shape {}, expected {} (vocab, hidden) for this model", src, k, t.shape().str(),
                  shape_str(cfg.vocab_size, cfg.hidden_size));
  if (name == "embed_tokens") {
    ad.embed_tokens_weight = t;
  } else {
    ad.lm_head_weight.out = t.size(0);
    ad.lm_head_weight.in = t.size(1);
    ad.lm_head_weight.dense = t;
  }
  return true;
}

// Where PEFT saves a modules_to_save copy, for an adapter whose layer keys start with `layer_prefix`
// ("base_model.model.model.layers." -> "base_model.model.model.embed_tokens.weight",
// "base_model.model.lm_head.weight").
std::string saved_module_key(const std::string& layer_prefix, const std::string& name) {
  const std::string model_part = layer_prefix.substr(0, layer_prefix.size() - std::string("layers.").size());
  if (name == "embed_tokens") return model_part + "embed_tokens.weight";
  if (layer_prefix == "base_model.model.language_model.model.layers.") return "base_model.model.language_model.lm_head.weight";
  return "base_model.model.lm_head.weight";
}

const std::vector<std::string>& layer_prefixes() {
  static const std::vector<std::string> p = {"base_model.model.model.layers.",
                                             "base_model.model.language_model.model.layers.",
                                             "base_model.model.model.language_model.layers."};
  return p;
}

// Which fused parameters a config targets (suffix match of "<experts>.gate_up_proj" / ".down_proj").
bool targets_fused(const PeftConfig& c, const std::string& param) {
  for (auto& t : c.target_parameters) {
    if (t == param) return true;
    if (param.size() > t.size() && param.compare(param.size() - t.size(), t.size(), t) == 0 &&
        param[param.size() - t.size() - 1] == '.')
      return true;
  }
  return false;
}

bool is_fused_gate_up_param(const std::string& t) { return t.size() >= 12 && t.compare(t.size() - 12, 12, "gate_up_proj") == 0; }
bool is_fused_down_param(const std::string& t) {
  return t.size() >= 17 && t.compare(t.size() - 17, 17, "experts.down_proj") == 0;
}
}  // namespace

std::string module_key(const config::ModelConfig& cfg, int layer, Module m) {
  return fmt::format("model.layers.{}.{}", layer, model::module_path(cfg.family, m));
}
std::string expert_key(const config::ModelConfig& cfg, int layer, ExpertProj p, int expert) {
  return fmt::format("model.layers.{}.{}.{}.{}", layer, experts_block(cfg), expert, expert_proj_name(cfg, p));
}
std::string fused_experts_key(const config::ModelConfig& cfg, int layer) {
  return fmt::format("model.layers.{}.{}", layer, fused_block(cfg));
}

const LoraFactors* Adapter::find(int layer, Module m) const {
  auto it = modules.find({layer, m});
  return it == modules.end() ? nullptr : &it->second;
}
const LoraFactors* Adapter::find_expert(int layer, ExpertProj p, int expert) const {
  auto it = experts.find({layer, p, expert});
  return it == experts.end() ? nullptr : &it->second;
}
size_t Adapter::bytes() const {
  std::set<const void*> seen;
  size_t n = 0;
  auto add = [&](const Tensor& t) {
    if (t.defined() && seen.insert(t.raw()).second) n += t.nbytes();
  };
  for (auto& [k, f] : modules) add(f.a), add(f.b);
  for (auto& [k, f] : experts) add(f.a), add(f.b);
  add(embed_tokens_weight), add(lm_head_weight.dense);
  return n;
}
int64_t Adapter::max_rank() const {
  int64_t r = 0;
  for (auto& [k, f] : modules) r = std::max(r, f.rank());
  for (auto& [k, f] : experts) r = std::max(r, f.rank());
  return r;
}

Adapter load_peft(const std::string& dir, const config::ModelConfig& cfg) {
  const fs::path d(dir);
  const fs::path cfg_path = d / "adapter_config.json", st_path = d / "adapter_model.safetensors";
  GRAFT_CHECK_FIX(fs::is_directory(d), "pass the directory holding adapter_config.json", "adapter directory '{}' not found",
                  dir);
  GRAFT_CHECK_FIX(fs::exists(cfg_path), "pass a PEFT adapter directory (adapter_config.json + adapter_model.safetensors)",
                  "'{}' has no adapter_config.json", dir);
  GRAFT_CHECK_FIX(fs::exists(st_path),
                  fs::exists(d / "adapter_model.bin")
                      ? "convert adapter_model.bin to safetensors (PEFT: save_pretrained(..., safe_serialization=True))"
                      : "pass a PEFT adapter directory (adapter_config.json + adapter_model.safetensors)",
                  "'{}' has no adapter_model.safetensors", dir);
  Adapter ad;
  ad.config = parse_peft_config(read_text_file(cfg_path.string()), cfg_path.string());
  const PeftConfig& c = ad.config;
  auto file = io::SafetensorsFile::open(st_path.string());
  const std::string src = st_path.string();

  // Group keys by (prefix, layer, module part) -> {A, B}.
  struct Pair {
    std::string a, b;
  };
  std::map<std::pair<int, std::string>, Pair> groups;
  std::string prefix;
  for (const auto& ti : file.tensors()) {
    const std::string& k = ti.name;
    if (load_saved_module(ad, file, k, cfg, src)) continue;  // modules_to_save copies
    std::string rest;
    std::string used;
    for (auto& p : layer_prefixes())
      if (k.rfind(p, 0) == 0) {
        rest = k.substr(p.size());
        used = p;
        break;
      }
    GRAFT_CHECK_FIX(!used.empty(), kFixAdapter,
                    "{}: unexpected tensor '{}': graft reads LoRA keys 'base_model.model.model.layers.<l>.<module>."
                    "lora_A.weight' / 'lora_B.weight', and modules_to_save copies 'base_model.model.model.embed_tokens.weight' / "
                    "'base_model.model.lm_head.weight' (biases and other modules are not supported)",
                    src, k);
    if (prefix.empty()) prefix = used;
    GRAFT_CHECK_FIX(used == prefix, kFixAdapter, "{}: tensor '{}' mixes key prefixes ('{}' and '{}')", src, k, prefix, used);
    size_t dot = rest.find('.');
    int layer = -1;
    try {
      size_t pos = 0;
      layer = std::stoi(rest.substr(0, dot), &pos);
      if (pos != dot) layer = -1;
    } catch (const std::exception&) {
      layer = -1;
    }
    GRAFT_CHECK_FIX(layer >= 0 && dot != std::string::npos, kFixAdapter, "{}: tensor '{}' has no layer index", src, k);
    GRAFT_CHECK_FIX(layer < cfg.num_hidden_layers, kFixAdapter, "{}: tensor '{}' is for layer {} but the model has {} layers",
                    src, k, layer, cfg.num_hidden_layers);
    std::string mod = rest.substr(dot + 1);
    bool ok_suffix = false, a_half = false;
    for (const char* s : {".lora_A.weight", ".lora_B.weight"}) {
      const std::string ss(s);
      if (mod.size() > ss.size() && mod.compare(mod.size() - ss.size(), ss.size(), ss) == 0) {
        ok_suffix = true;
        a_half = ss[6] == 'A';
        mod = mod.substr(0, mod.size() - ss.size());
        break;
      }
    }
    GRAFT_CHECK_FIX(ok_suffix, kFixAdapter,
                    "{}: unexpected tensor '{}': expected a '.lora_A.weight' or '.lora_B.weight' key (DoRA magnitudes, "
                    "biases and named adapters other than the default are not supported)",
                    src, k);
    auto& g = groups[{layer, mod}];
    (a_half ? g.a : g.b) = k;
  }
  if (!prefix.empty()) ad.prefix = prefix;
  for (const char* m : {"embed_tokens", "lm_head"}) {
    const bool have = std::string(m) == "embed_tokens" ? ad.embed_tokens_weight.defined() : ad.lm_head_weight.defined();
    GRAFT_CHECK_FIX(!saves_module(c, m) || have, kFixAdapter,
                    "{}: adapter_config.json lists {} in modules_to_save, but the file has no '{}' tensor", src, m,
                    saved_module_key(ad.prefix, m));
  }

  // Lookup of dense module paths.
  std::map<std::string, Module> dense;
  for (int m = 0; m < static_cast<int>(Module::kCount); ++m)
    dense[model::module_path(cfg.family, static_cast<Module>(m))] = static_cast<Module>(m);
  const std::regex per_expert("^" + std::regex_replace(experts_block(cfg), std::regex("\\."), "\\.") +
                              "\\.([0-9]+)\\.([A-Za-z0-9_]+)$");
  const std::string fblock = fused_block(cfg);
  const int64_t E = cfg.moe.num_experts, H = cfg.hidden_size, I = cfg.expert_intermediate_size();

  auto check_shape = [&](const std::string& key, int64_t r0, int64_t r1) {
    const auto& ti = file.info(key);
    GRAFT_CHECK_FIX(ti.dtype == DType::F32 || ti.dtype == DType::BF16 || ti.dtype == DType::F16, kFixAdapter,
                    "{}: tensor '{}' has dtype {}; LoRA factors must be F32, BF16 or F16", src, key, dtype_name(ti.dtype));
    GRAFT_CHECK_FIX(ti.shape.size() == 2 && ti.shape[0] == r0 && ti.shape[1] == r1, kFixAdapter,
                    "{}: tensor '{}' has shape {}, expected {}", src, key, ti.shape.str(), shape_str(r0, r1));
  };
  std::set<std::pair<int, std::string>> fused_seen;  // (layer, "gate_up"|"down")

  for (auto& [lk, g] : groups) {
    const int layer = lk.first;
    const std::string& mod = lk.second;
    const std::string any = g.a.empty() ? g.b : g.a;
    GRAFT_CHECK_FIX(!g.a.empty() && !g.b.empty(), kFixAdapter, "{}: '{}' has no matching {} half", src, any,
                    g.a.empty() ? "lora_A" : "lora_B");
    std::smatch sm;
    if (auto it = dense.find(mod); it != dense.end()) {
      const Module m = it->second;
      const std::string key = module_key(cfg, layer, m);
      auto dims = module_dims(cfg, layer, m);
      GRAFT_CHECK_FIX(dims.has_value(), kFixAdapter, "{}: '{}' adapts '{}', which layer {} of this {} model does not have",
                      src, g.a, key, layer, config::family_name(cfg.family));
      GRAFT_CHECK_FIX(targets_module(c, key, layer), kFixAdapter,
                      "{}: '{}' adapts '{}', which adapter_config.json's target_modules / layers_to_transform do not "
                      "select",
                      src, g.a, key);
      const int64_t r = expected_rank(c, key);
      check_shape(g.a, r, dims->in);
      check_shape(g.b, dims->out, r);
      ad.modules[{layer, m}] = LoraFactors{to_f32_owned(file.tensor(g.a)), to_f32_owned(file.tensor(g.b)),
                                           static_cast<float>(lora_scale(c, key, r))};
    } else if (std::regex_match(mod, sm, per_expert)) {
      GRAFT_CHECK_FIX(cfg.is_moe_layer(layer), kFixAdapter, "{}: '{}' adapts an expert of layer {}, which is not an MoE layer",
                      src, g.a, layer);
      const int64_t e = std::stoll(sm[1].str());
      GRAFT_CHECK_FIX(e < E, kFixAdapter, "{}: '{}' adapts expert {} but the model has {} experts", src, g.a, e, E);
      std::optional<ExpertProj> pj;
      for (ExpertProj p : {ExpertProj::Gate, ExpertProj::Up, ExpertProj::Down})
        if (sm[2].str() == expert_proj_name(cfg, p)) pj = p;
      GRAFT_CHECK_FIX(pj.has_value(), kFixAdapter, "{}: '{}': unknown expert projection '{}' (expected {}, {} or {})", src,
                      g.a, sm[2].str(), expert_proj_name(cfg, ExpertProj::Gate), expert_proj_name(cfg, ExpertProj::Up),
                      expert_proj_name(cfg, ExpertProj::Down));
      const std::string key = expert_key(cfg, layer, *pj, static_cast<int>(e));
      GRAFT_CHECK_FIX(targets_module(c, key, layer), kFixAdapter,
                      "{}: '{}' adapts '{}', which adapter_config.json's target_modules do not select", src, g.a, key);
      const Dims2 dd = expert_dims(cfg, *pj);
      const int64_t r = expected_rank(c, key);
      check_shape(g.a, r, dd.in);
      check_shape(g.b, dd.out, r);
      ad.experts[{layer, *pj, static_cast<int>(e)}] = LoraFactors{
          to_f32_owned(file.tensor(g.a)), to_f32_owned(file.tensor(g.b)), static_cast<float>(lora_scale(c, key, r))};
    } else if (mod == fblock || mod.rfind(fblock + ".base_layer", 0) == 0) {
      // Fused experts (target_parameters): nested wrappers add ".base_layer"; which parameter is which is
      // decided by shape (gate_up: A [E·r, H], B [2I, E·r]; down: A [E·r, I], B [H, E·r]).
      std::string tail = mod.substr(fblock.size());
      while (tail.rfind(".base_layer", 0) == 0) tail = tail.substr(11);
      GRAFT_CHECK_FIX(tail.empty(), kFixAdapter, "{}: unexpected tensor '{}'", src, g.a);
      GRAFT_CHECK_FIX(cfg.is_moe_layer(layer) && E > 0, kFixAdapter,
                      "{}: '{}' adapts fused experts of layer {}, which is not an MoE layer", src, g.a, layer);
      const auto& ia = file.info(g.a);
      const auto& ib = file.info(g.b);
      GRAFT_CHECK_FIX(ia.shape.size() == 2 && ib.shape.size() == 2, kFixAdapter, "{}: '{}' / '{}' must be 2-D", src, g.a,
                      g.b);
      const bool gate_up = ia.shape[1] == H && ib.shape[0] == 2 * I;
      const bool down = ia.shape[1] == I && ib.shape[0] == H;
      const std::string gu_key = fused_experts_key(cfg, layer) + ".gate_up_proj";
      const std::string dn_key = fused_experts_key(cfg, layer) + ".down_proj";
      GRAFT_CHECK_FIX(gate_up || down, kFixAdapter,
                      "{}: fused-expert tensors '{}' {} / '{}' {} fit neither gate_up_proj (lora_A [E·r, {}], lora_B "
                      "[{}, E·r]) nor down_proj (lora_A [E·r, {}], lora_B [{}, E·r])",
                      src, g.a, ia.shape.str(), g.b, ib.shape.str(), H, 2 * I, I, H);
      const std::string pkey = gate_up ? gu_key : dn_key;
      GRAFT_CHECK_FIX(fused_seen.insert({layer, gate_up ? "gate_up" : "down"}).second, kFixAdapter,
                      "{}: layer {} has two sets of fused {} tensors (second: '{}')", src, layer,
                      gate_up ? "gate_up_proj" : "down_proj", g.a);
      GRAFT_CHECK_FIX(targets_fused(c, pkey) &&
                          (c.layers_to_transform.empty() ||
                           std::find(c.layers_to_transform.begin(), c.layers_to_transform.end(), layer) !=
                               c.layers_to_transform.end()),
                      kFixAdapter, "{}: '{}' adapts '{}', which adapter_config.json's target_parameters do not name", src,
                      g.a, pkey);
      const int64_t r = expected_rank(c, pkey);
      const int64_t in = gate_up ? H : I, out = gate_up ? 2 * I : H;
      check_shape(g.a, E * r, in);
      check_shape(g.b, out, E * r);
      Tensor A = to_f32_owned(file.tensor(g.a)), B = to_f32_owned(file.tensor(g.b));
      const float scale = static_cast<float>(lora_scale(c, pkey, r));
      const float* pa = A.data<float>();
      const float* pb = B.data<float>();
      for (int64_t e = 0; e < E; ++e) {
        // A.reshape(E, r, in)[e]: rows e·r .. e·r+r-1.
        Tensor ae = Tensor::empty({r, in}, DType::F32);
        std::copy(pa + e * r * in, pa + (e + 1) * r * in, ae.data<float>());
        // B.reshape(out, r, E)[:, :, e]: column k·E + e.
        Tensor be = Tensor::empty({out, r}, DType::F32);
        float* q = be.data<float>();
        for (int64_t o = 0; o < out; ++o)
          for (int64_t k = 0; k < r; ++k) q[o * r + k] = pb[o * E * r + k * E + e];
        const int ei = static_cast<int>(e);
        if (gate_up) {
          ad.experts[{layer, ExpertProj::Gate, ei}] = LoraFactors{ae, be.slice(0, 0, I).contiguous(), scale};
          ad.experts[{layer, ExpertProj::Up, ei}] = LoraFactors{ae, be.slice(0, I, 2 * I).contiguous(), scale};
        } else {
          ad.experts[{layer, ExpertProj::Down, ei}] = LoraFactors{ae, be, scale};
        }
      }
    } else {
      GRAFT_FAIL(kFixAdapter, "{}: tensor '{}' names module '{}', which a {} model does not have", src, g.a, mod,
                 config::family_name(cfg.family));
    }
  }
  ad.source = "peft:" + fs::absolute(d).lexically_normal().string();
  return ad;
}

namespace {
// Whether save_peft writes this projection's experts fused (target_parameters gate_up_proj / experts.down_proj).
bool is_fused_in_config(const PeftConfig& c, ExpertProj p) {
  for (auto& t : c.target_parameters)
    if (p == ExpertProj::Down ? is_fused_down_param(t) : is_fused_gate_up_param(t)) return true;
  return false;
}
}  // namespace

void make_targets_explicit(Adapter& a, const config::ModelConfig& cfg) {
  PeftConfig& c = a.config;
  if (!c.all_linear || !cfg.is_moe_model()) return;
  static const std::set<std::string> kMlpLeaves = {"gate_proj", "up_proj", "down_proj", "w1", "w2", "w3"};
  std::set<std::string> modules;
  std::vector<std::string> params = c.target_parameters;
  for (const auto& [k, f] : a.modules) {
    const std::string key = module_key(cfg, k.first, k.second);  // model.layers.N.<parent>.<leaf>
    const size_t leaf_dot = key.rfind('.');
    const std::string leaf = key.substr(leaf_dot + 1);
    if (!kMlpLeaves.count(leaf)) {
      modules.insert(leaf);
      continue;
    }
    const size_t parent_dot = key.rfind('.', leaf_dot - 1);
    const std::string param = key.substr(parent_dot + 1) + ".weight";  // e.g. shared_experts.gate_proj.weight
    if (std::find(params.begin(), params.end(), param) == params.end()) params.push_back(param);
  }
  // Experts saved per expert (v4 names): PEFT's conversion fuses them, but only when target_modules names the
  // v4 projections (gate_proj/up_proj/down_proj, Mixtral's w1/w3/w2); it never touches target_parameters.
  bool per_expert = false;
  for (const auto& [k, f] : a.experts) {
    const ExpertProj p = std::get<1>(k);
    if (!is_fused_in_config(c, p)) per_expert = true;
  }
  if (per_expert)
    for (ExpertProj p : {ExpertProj::Gate, ExpertProj::Up, ExpertProj::Down}) modules.insert(expert_proj_name(cfg, p));
  c.all_linear = false;
  c.target_modules.assign(modules.begin(), modules.end());
  if (params.size() > c.target_parameters.size()) c.lora_dropout = 0;
  c.target_parameters = std::move(params);
}

void save_peft(const std::string& dir, const Adapter& a, const config::ModelConfig& cfg) {
  const PeftConfig& c = a.config;
  std::error_code ec;
  fs::create_directories(dir, ec);
  GRAFT_CHECK_FIX(!ec && fs::is_directory(dir), "choose a writable output directory", "cannot create adapter directory '{}': {}",
                  dir, ec.message());
  io::NamedTensors out;
  auto check_scale = [&](const std::string& key, const LoraFactors& f) {
    GRAFT_CHECK_FIX(f.a.defined() && f.b.defined() && f.a.ndim() == 2 && f.b.ndim() == 2 && f.a.dtype() == DType::F32 &&
                        f.b.dtype() == DType::F32 && f.b.size(1) == f.a.size(0),
                    "", "adapter factors of '{}' must be f32 A [r, in] and B [out, r], got {} and {}", key, f.a.describe(),
                    f.b.describe());
    const double want = lora_scale(c, key, f.rank());
    GRAFT_CHECK_FIX(std::fabs(want - f.scale) <= 1e-6 * std::fabs(want) + 1e-12,
                    "set lora_alpha / rank_pattern / alpha_pattern so that PEFT computes the scale the adapter uses",
                    "adapter scale {} of '{}' differs from what adapter_config.json gives PEFT ({}): the saved adapter "
                    "would compute something else",
                    f.scale, key, want);
    const int64_t r = expected_rank(c, key);
    GRAFT_CHECK_FIX(f.rank() == r, "set r / rank_pattern to the factors' ranks",
                    "adapter rank {} of '{}' differs from adapter_config.json's rank {}", f.rank(), key, r);
  };
  const std::string P = a.prefix;
  // modules_to_save copies, saved as PEFT does (without the ModulesToSaveWrapper's adapter name).
  for (const char* m : {"embed_tokens", "lm_head"}) {
    const Tensor* w = std::string(m) == "embed_tokens" ? a.embed_tokens() : (a.lm_head() ? &a.lm_head()->dense : nullptr);
    GRAFT_CHECK_FIX(saves_module(c, m) == (w != nullptr), "list exactly the trained copies in modules_to_save",
                    "adapter {} a trained copy of {} but its config's modules_to_save {} it", w ? "has" : "has no", m,
                    w ? "does not name" : "names");
    if (!w) continue;
    GRAFT_CHECK_FIX(w->ndim() == 2 && w->dtype() == DType::F32 && w->size(0) == cfg.vocab_size && w->size(1) == cfg.hidden_size,
                    "", "modules_to_save copy of {} must be f32 [{}, {}], got {}", m, cfg.vocab_size, cfg.hidden_size,
                    w->describe());
    out.emplace_back(saved_module_key(P, m), *w);
  }
  for (auto& [k, f] : a.modules) {
    const std::string key = module_key(cfg, k.first, k.second);
    check_scale(key, f);
    const std::string base = P + std::to_string(k.first) + "." + model::module_path(cfg.family, k.second);
    out.emplace_back(base + ".lora_A.weight", f.a);
    out.emplace_back(base + ".lora_B.weight", f.b);
  }
  // Experts: fused when target_parameters names gate_up_proj / down_proj, per expert otherwise.
  bool fuse_gu = false, fuse_dn = false;
  for (auto& t : c.target_parameters) {
    if (is_fused_gate_up_param(t)) fuse_gu = true;
    else if (is_fused_down_param(t)) fuse_dn = true;
  }
  const int64_t E = cfg.moe.num_experts, I = cfg.expert_intermediate_size();
  std::set<int> expert_layers;
  for (auto& [k, f] : a.experts) {
    const auto [l, p, e] = k;
    expert_layers.insert(l);
    if ((p == ExpertProj::Down && fuse_dn) || (p != ExpertProj::Down && fuse_gu)) continue;
    const std::string key = expert_key(cfg, l, p, e);
    check_scale(key, f);
    const std::string base =
        P + std::to_string(l) + "." + experts_block(cfg) + "." + std::to_string(e) + "." + expert_proj_name(cfg, p);
    out.emplace_back(base + ".lora_A.weight", f.a);
    out.emplace_back(base + ".lora_B.weight", f.b);
  }
  for (int l : expert_layers) {
    for (bool gu : {true, false}) {
      if (gu ? !fuse_gu : !fuse_dn) continue;
      const std::string pkey = fused_experts_key(cfg, l) + (gu ? ".gate_up_proj" : ".down_proj");
      std::vector<const LoraFactors*> fs1, fs2;  // gate (or down), up
      int present = 0;
      for (int e = 0; e < E; ++e) {
        const LoraFactors* f1 = a.find_expert(l, gu ? ExpertProj::Gate : ExpertProj::Down, e);
        const LoraFactors* f2 = gu ? a.find_expert(l, ExpertProj::Up, e) : nullptr;
        present += (f1 != nullptr) + (f2 != nullptr);
        fs1.push_back(f1);
        fs2.push_back(f2);
      }
      if (present == 0) continue;
      for (int e = 0; e < E; ++e)
        GRAFT_CHECK_FIX(fs1[e] && (!gu || fs2[e]),
                        "give every expert factors, or drop target_parameters to save experts per expert",
                        "cannot write fused '{}': expert {} has no {} factors (a fused LoRA covers all {} experts)", pkey, e,
                        gu ? (fs1[e] ? "up" : "gate") : "down", E);
      const int64_t r = fs1[0]->rank(), in = fs1[0]->a.size(1);
      const int64_t out_dim = gu ? 2 * I : cfg.hidden_size;
      Tensor A = Tensor::empty({E * r, in}, DType::F32), B = Tensor::empty({out_dim, E * r}, DType::F32);
      float* pa = A.data<float>();
      float* pb = B.data<float>();
      for (int e = 0; e < E; ++e) {
        for (const LoraFactors* f : {fs1[e], fs2[e]}) {
          if (!f) continue;
          GRAFT_CHECK_FIX(f->rank() == r && f->a.size(1) == in && f->a.is_contiguous() && f->b.is_contiguous() &&
                              f->scale == fs1[0]->scale,
                          "give all experts the same rank and scale, or save per expert",
                          "cannot write fused '{}': expert {} has factors {} / {} (scale {}), expert 0 has rank {} (scale {})",
                          pkey, e, f->a.describe(), f->b.describe(), f->scale, r, fs1[0]->scale);
        }
        check_scale(pkey, *fs1[e]);
        const float* ae = fs1[e]->a.data<float>();
        if (gu)
          GRAFT_CHECK_FIX(std::equal(ae, ae + r * in, fs2[e]->a.data<float>()),
                          "save experts per expert (drop gate_up_proj from target_parameters)",
                          "cannot write fused '{}': expert {}'s gate and up factors have different A (fused gate_up LoRA "
                          "shares one A per expert)",
                          pkey, e);
        std::copy(ae, ae + r * in, pa + int64_t(e) * r * in);
        auto put_b = [&](const LoraFactors& f, int64_t row0) {
          const float* q = f.b.data<float>();
          const int64_t rows = f.b.size(0);
          GRAFT_CHECK(row0 + rows <= out_dim, "fused '{}': B of expert {} has {} rows", pkey, e, rows);
          for (int64_t o = 0; o < rows; ++o)
            for (int64_t k = 0; k < r; ++k) pb[(row0 + o) * E * r + k * E + e] = q[o * r + k];
        };
        put_b(*fs1[e], 0);
        if (gu) put_b(*fs2[e], I);
      }
      // Nested wrappers: gate_up is the inner one ("experts.base_layer") when both are fused (vLLM's
      // convention); a lone fused parameter is "experts".
      const std::string base =
          P + std::to_string(l) + "." + fused_block(cfg) + (gu && fuse_dn ? ".base_layer" : "");
      out.emplace_back(base + ".lora_A.weight", A);
      out.emplace_back(base + ".lora_B.weight", B);
    }
  }
  const std::string text = peft_config_json(c);
  io::save_safetensors((fs::path(dir) / "adapter_model.safetensors").string(), out, {{"format", "pt"}});
  write_file_atomic((fs::path(dir) / "adapter_config.json").string(), text.data(), text.size());
}

}  // namespace graft::adapters
