// `graft inspect DIR [--json]`: architecture, sizes, parameter counts (total / active per token),
// memory estimates (bf16, NF4 + double quantization, KV cache) of a Hugging Face model directory, and
// what its safetensors files hold. Works on config-only directories (no weights).
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <filesystem>
#include <string>

#include "command.hpp"
#include "graft/config/model_config.hpp"
#include "graft/io/safetensors.hpp"
#include "graft/model_info.hpp"

namespace {
using nlohmann::ordered_json;
namespace fs = std::filesystem;

ordered_json inspect_json(const std::string& path) {
  using namespace graft;
  auto c = config::load_model_config(path);
  auto p = count_parameters(c);
  auto mem = estimate_memory(c);
  ordered_json o;
  o["path"] = path;
  o["model_type"] = c.model_type;
  o["family"] = std::string(config::family_name(c.family));
  o["architectures"] = c.architectures;
  o["torch_dtype"] = c.torch_dtype;
  o["num_hidden_layers"] = c.num_hidden_layers;
  o["hidden_size"] = c.hidden_size;
  o["intermediate_size"] = c.intermediate_size;
  o["num_attention_heads"] = c.num_attention_heads;
  o["num_key_value_heads"] = c.num_key_value_heads;
  o["head_dim"] = c.head_dim;
  o["vocab_size"] = c.vocab_size;
  o["max_position_embeddings"] = c.max_position_embeddings;
  o["tie_word_embeddings"] = c.tie_word_embeddings;
  o["rms_norm_eps"] = c.rms_norm_eps;
  o["rope_theta"] = c.rope_theta;
  ordered_json rs = {{"type", c.rope_scaling.type}};
  if (c.rope_scaling.type != "default") {
    rs["factor"] = c.rope_scaling.factor;
    if (c.rope_scaling.original_max_position_embeddings)
      rs["original_max_position_embeddings"] = c.rope_scaling.original_max_position_embeddings;
    if (c.rope_scaling.type == "llama3") {
      rs["low_freq_factor"] = c.rope_scaling.low_freq_factor;
      rs["high_freq_factor"] = c.rope_scaling.high_freq_factor;
    }
    if (c.rope_scaling.type == "yarn") {
      rs["beta_fast"] = c.rope_scaling.beta_fast;
      rs["beta_slow"] = c.rope_scaling.beta_slow;
      rs["mscale"] = c.rope_scaling.mscale;
      rs["mscale_all_dim"] = c.rope_scaling.mscale_all_dim;
    }
  }
  o["rope_scaling"] = rs;
  o["attention"] = c.is_mla ? "mla" : (c.num_key_value_heads == c.num_attention_heads ? "mha" : "gqa");
  if (c.is_mla)
    o["mla"] = {{"q_lora_rank", c.mla.q_lora_rank},           {"kv_lora_rank", c.mla.kv_lora_rank},
                {"qk_nope_head_dim", c.mla.qk_nope_head_dim}, {"qk_rope_head_dim", c.mla.qk_rope_head_dim},
                {"v_head_dim", c.mla.v_head_dim}};
  int64_t sliding = 0, nope = 0, chunked = 0;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    auto k = c.layer_kind(l);
    sliding += k.sliding;
    nope += !k.rope;
    chunked += k.chunked;
  }
  o["layers"] = {{"moe", c.num_moe_layers()}, {"dense", c.num_dense_layers()}, {"sliding_window", sliding},
                 {"nope", nope},             {"chunked", chunked}};
  o["sliding_window"] = c.sliding_window ? ordered_json(*c.sliding_window) : ordered_json(nullptr);
  if (c.is_moe_model()) {
    const auto& m = c.moe;
    o["moe"] = {{"routed_experts", m.num_experts},
                {"experts_per_token", m.num_experts_per_tok},
                {"expert_intermediate_size", c.expert_intermediate_size()},
                {"shared_experts", m.n_shared_experts > 0 ? m.n_shared_experts : (m.shared_expert_intermediate_size > 0 ? 1 : 0)},
                {"shared_expert_intermediate_size", m.shared_expert_intermediate_size},
                {"moe_layers", c.num_moe_layers()},
                {"dense_layers", c.num_dense_layers()},
                {"scoring_func", m.scoring_func},
                {"topk_method", m.topk_method},
                {"norm_topk_prob", m.norm_topk_prob},
                {"routed_scaling_factor", m.routed_scaling_factor},
                {"n_group", m.n_group},
                {"topk_group", m.topk_group}};
  } else {
    o["moe"] = nullptr;
  }
  ordered_json by_kind = ordered_json::object();
  for (const auto& [k, v] : p.by_kind) by_kind[k] = v;
  o["params"] = {{"total", p.total}, {"active", p.active}, {"active_excl_embedding", p.active_excl_embedding},
                 {"by_kind", by_kind}};
  o["memory"] = {{"bf16_bytes", mem.bf16_bytes},
                 {"nf4_dq_bytes", mem.nf4_bytes},
                 {"nf4_quantized_params", mem.nf4_quantized_params},
                 {"nf4_quantized_tensors", mem.nf4_quantized_tensors},
                 {"nf4_bf16_params", mem.nf4_bf16_params},
                 {"nf4_kept_in_bf16", "embeddings, lm_head, norms, routers, biases"},
                 {"kv_cache_bf16_bytes_per_1k_tokens", mem.kv_cache_bytes_per_1k_tokens},
                 {"kv_notes", mem.kv_notes}};
  if (!c.quantization.method.empty()) {
    const auto& q = c.quantization;
    ordered_json qj = {{"method", q.method}};
    if (q.method == "bitsandbytes")
      qj.update({{"load_in_4bit", q.load_in_4bit}, {"quant_type", q.bnb_4bit_quant_type},
                 {"double_quant", q.bnb_4bit_use_double_quant}, {"compute_dtype", q.bnb_4bit_compute_dtype}});
    if (!q.fmt.empty()) qj["fmt"] = q.fmt;
    if (!q.weight_block_size.empty()) qj["weight_block_size"] = q.weight_block_size;
    o["quantization"] = qj;
  } else {
    o["quantization"] = nullptr;
  }

  std::string dir = fs::is_directory(path) ? path : fs::path(path).parent_path().string();
  if (!dir.empty() && io::SafetensorsModel::has_weights(dir)) {
    auto w = io::SafetensorsModel::open(dir);
    auto s = summarize_weights(w, c);
    ordered_json dt = ordered_json::object();
    for (const auto& [k, n] : s.dtype_tensors) dt[k] = {{"tensors", n}, {"bytes", s.dtype_bytes.at(k)}};
    ordered_json extra = ordered_json::object();
    for (const auto& [k, n] : s.extra_by_reason) extra[k] = n;
    int64_t diff = s.model_elements() - p.total;
    std::string note;
    if (s.prequantized_packed) note = "pre-quantized (bitsandbytes) weights: packed element counts are not parameter counts";
    else if (diff == 0) note = "the tensors match the parameter count computed from config.json";
    else note = fmt::format("the tensors hold {:+} elements relative to the count computed from config.json", diff);
    o["weights"] = {{"source", w.source()},
                    {"files", w.files().size()},
                    {"tensors", s.tensors},
                    {"bytes", s.bytes},
                    {"elements", s.elements},
                    {"extra_elements", s.extra_elements},
                    {"extra", extra},
                    {"model_elements", s.model_elements()},
                    {"matches_config", !s.prequantized_packed && diff == 0},
                    {"difference", diff},
                    {"note", note},
                    {"dtypes", dt}};
  } else {
    o["weights"] = nullptr;
  }
  return o;
}

std::string human(double v) {
  const char* units[] = {"", "K", "M", "B", "T"};
  int u = 0;
  while (v >= 1000 && u < 4) v /= 1000, ++u;
  return fmt::format("{:.2f}{}", v, units[u]);
}
std::string gb(uint64_t b) {
  double d = static_cast<double>(b);
  if (b < 1000000000ull) return d < 1e6 ? fmt::format("{:.1f} KB", d / 1e3) : fmt::format("{:.2f} MB", d / 1e6);
  return fmt::format("{:.2f} GB ({:.2f} GiB)", d / 1e9, d / (1ull << 30));
}

void print_text(const ordered_json& o) {
  auto I = [&](const char* k) { return o[k].get<int64_t>(); };
  std::string arch;
  for (const auto& a : o["architectures"]) arch += (arch.empty() ? "" : ", ") + a.get<std::string>();
  fmt::print("model_type     {} ({})\n", o["model_type"].get<std::string>(), arch.empty() ? "no architectures" : arch);
  fmt::print("layers         {}  hidden {}  intermediate {}  vocab {}  max positions {}\n", I("num_hidden_layers"),
             I("hidden_size"), I("intermediate_size"), I("vocab_size"), I("max_position_embeddings"));
  fmt::print("attention      {}: {} heads, {} kv heads, head_dim {}", o["attention"].get<std::string>(),
             I("num_attention_heads"), I("num_key_value_heads"), I("head_dim"));
  if (o.contains("mla"))
    fmt::print(" (q_lora_rank {}, kv_lora_rank {}, nope {}, rope {}, v {})", o["mla"]["q_lora_rank"].get<int64_t>(),
               o["mla"]["kv_lora_rank"].get<int64_t>(), o["mla"]["qk_nope_head_dim"].get<int64_t>(),
               o["mla"]["qk_rope_head_dim"].get<int64_t>(), o["mla"]["v_head_dim"].get<int64_t>());
  fmt::print("\n");
  fmt::print("rope           theta {} scaling {}\n", o["rope_theta"].get<double>(), o["rope_scaling"].dump());
  const auto& L = o["layers"];
  if (L["sliding_window"].get<int64_t>() || L["nope"].get<int64_t>() || L["chunked"].get<int64_t>())
    fmt::print("layer kinds    {} sliding-window, {} NoPE, {} chunked\n", L["sliding_window"].get<int64_t>(),
               L["nope"].get<int64_t>(), L["chunked"].get<int64_t>());
  fmt::print("embeddings     {}\n", o["tie_word_embeddings"].get<bool>() ? "tied (lm_head = embed_tokens)" : "untied lm_head");
  if (!o["moe"].is_null()) {
    const auto& m = o["moe"];
    fmt::print("experts        {} routed (top-{}, width {}), {} shared (width {}); {} MoE / {} dense layers; {} {}\n",
               m["routed_experts"].get<int64_t>(), m["experts_per_token"].get<int64_t>(),
               m["expert_intermediate_size"].get<int64_t>(), m["shared_experts"].get<int64_t>(),
               m["shared_expert_intermediate_size"].get<int64_t>(), m["moe_layers"].get<int64_t>(),
               m["dense_layers"].get<int64_t>(), m["scoring_func"].get<std::string>(),
               m["norm_topk_prob"].get<bool>() ? "renormalised" : "not renormalised");
  } else {
    fmt::print("experts        none (dense)\n");
  }
  const auto& p = o["params"];
  fmt::print("parameters     {} total ({}), {} active per token ({}; {} without the input embedding)\n",
             human(static_cast<double>(p["total"].get<int64_t>())), p["total"].get<int64_t>(),
             human(static_cast<double>(p["active"].get<int64_t>())), p["active"].get<int64_t>(),
             human(static_cast<double>(p["active_excl_embedding"].get<int64_t>())));
  std::string kinds;
  for (auto it = p["by_kind"].begin(); it != p["by_kind"].end(); ++it)
    kinds += fmt::format("{}{} {}", kinds.empty() ? "" : ", ", it.key(), human(static_cast<double>(it.value().get<int64_t>())));
  fmt::print("  by kind      {}\n", kinds);
  const auto& m = o["memory"];
  fmt::print("memory bf16    {}\n", gb(m["bf16_bytes"].get<uint64_t>()));
  fmt::print("memory NF4+DQ  {}  (Linear weights 4-bit + uint8 absmax/64 + fp32 absmax/256 blocks; "
             "embeddings, lm_head, norms, routers, biases stay bf16)\n",
             gb(m["nf4_dq_bytes"].get<uint64_t>()));
  fmt::print("KV cache bf16  {:.2f} MB per 1k tokens\n",
             static_cast<double>(m["kv_cache_bf16_bytes_per_1k_tokens"].get<uint64_t>()) / 1e6);
  for (const auto& n : m["kv_notes"]) fmt::print("  note         {}\n", n.get<std::string>());
  if (!o["quantization"].is_null()) fmt::print("quantization   {}\n", o["quantization"].dump());
  if (o["weights"].is_null()) {
    fmt::print("weights        none (config only)\n");
    return;
  }
  const auto& w = o["weights"];
  std::string dts;
  for (auto it = w["dtypes"].begin(); it != w["dtypes"].end(); ++it)
    dts += fmt::format("{}{} x{}", dts.empty() ? "" : ", ", it.key(), it.value()["tensors"].get<int64_t>());
  fmt::print("weights        {} tensors in {} file(s), {} ({}), {} elements\n", w["tensors"].get<int64_t>(),
             w["files"].get<size_t>(), gb(w["bytes"].get<uint64_t>()), dts, w["elements"].get<int64_t>());
  if (w["extra_elements"].get<int64_t>()) fmt::print("  not counted  {}\n", w["extra"].dump());
  fmt::print("  check        {}\n", w["note"].get<std::string>());
}

graft::cli::Registration reg{"inspect", 60, [](CLI::App& app) {
  auto* sub = app.add_subcommand("inspect", "Show a model directory's architecture, parameter counts and memory needs");
  auto path = std::make_shared<std::string>();
  auto json = std::make_shared<bool>(false);
  sub->add_option("DIR", *path, "Hugging Face model directory (or its config.json); weights are optional")->required();
  sub->add_flag("--json", *json, "Emit JSON (stable snake_case keys)");
  sub->callback([path, json] {
    auto o = inspect_json(*path);
    if (*json) std::printf("%s\n", o.dump(2).c_str());
    else print_text(o);
  });
}};
}  // namespace
