// Parameter counts (total / active) against the published sizes, and memory estimates.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "graft/config/model_config.hpp"
#include "graft/error.hpp"
#include "graft/io/safetensors.hpp"
#include "graft/model_info.hpp"

using namespace graft;

namespace {
std::string data(const std::string& f) { return std::string(GRAFT_SOURCE_DIR) + "/tests/core/config/data/" + f; }
std::string shared_model(const std::string& m) {
  return std::string(GRAFT_SOURCE_DIR) + "/../shared/assets/models/" + m;
}
// |actual / published - 1| <= tol
void expect_near_rel(double actual, double published, double tol, const std::string& what) {
  EXPECT_LE(std::abs(actual / published - 1.0), tol) << what << ": " << actual << " vs published " << published;
}
struct Counts {
  ParamCounts p;
  MemoryEstimate m;
  config::ModelConfig c;
};
Counts counts(const std::string& f) {
  auto c = config::load_model_config(data(f));
  return {count_parameters(c), estimate_memory(c), c};
}
}  // namespace

TEST(ModelInfo, PublishedParameterCounts) {
  // Qwen3-30B-A3B: 30.5B total, 3.3B activated (embedding and lm_head included).
  auto q = counts("qwen3_30b_a3b.json");
  EXPECT_EQ(q.p.total, 30532122624);  // = the element count of the released safetensors
  expect_near_rel(q.p.total, 30.5e9, 0.01, "Qwen3-30B-A3B total");
  expect_near_rel(q.p.active, 3.3e9, 0.02, "Qwen3-30B-A3B active");
  expect_near_rel(counts("qwen3_8b.json").p.total, 8.2e9, 0.01, "Qwen3-8B");
  expect_near_rel(counts("qwen2_5_7b.json").p.total, 7.61e9, 0.01, "Qwen2.5-7B");
  auto q15 = counts("qwen1_5_moe_a2_7b.json");
  expect_near_rel(q15.p.total, 14.3e9, 0.01, "Qwen1.5-MoE-A2.7B total");
  expect_near_rel(q15.p.active, 2.7e9, 0.02, "Qwen1.5-MoE-A2.7B active");
  auto q57 = counts("qwen2_57b_a14b.json");
  expect_near_rel(q57.p.total, 57.4e9, 0.01, "Qwen2-57B-A14B total");
  expect_near_rel(q57.p.active, 14e9, 0.02, "Qwen2-57B-A14B active");
  auto mx = counts("mixtral_8x7b.json");
  expect_near_rel(mx.p.total, 46.7e9, 0.01, "Mixtral-8x7B total");
  expect_near_rel(mx.p.active, 12.9e9, 0.01, "Mixtral-8x7B active");
  // DeepSeek counts activated parameters without the input embedding table.
  auto v3 = counts("deepseek_v3.json");
  expect_near_rel(v3.p.total, 671e9, 0.01, "DeepSeek-V3 total (MTP layer excluded)");
  expect_near_rel(v3.p.active_excl_embedding, 37e9, 0.02, "DeepSeek-V3 active");
  auto lite = counts("deepseek_v2_lite.json");
  expect_near_rel(lite.p.total, 15.7e9, 0.01, "DeepSeek-V2-Lite total");
  // 2.45B computed; the published "2.4B" is rounded down, hence 2.5%.
  expect_near_rel(lite.p.active_excl_embedding, 2.4e9, 0.025, "DeepSeek-V2-Lite active");
  auto l31 = counts("llama3_1_8b.json");
  EXPECT_EQ(l31.p.total, 8030261248);
  expect_near_rel(l31.p.total, 8.03e9, 0.005, "Llama-3.1-8B");
  EXPECT_EQ(l31.p.total, l31.p.active);
  // Llama 4 Scout: 109B / 17B published for the whole multimodal model; the text decoder is 107.8B.
  auto sc = counts("llama4_scout_17b_16e.json");
  expect_near_rel(sc.p.total, 109e9, 0.02, "Llama-4-Scout total");
  expect_near_rel(sc.p.active, 17e9, 0.02, "Llama-4-Scout active");
}

TEST(ModelInfo, MemoryEstimates) {
  auto q = counts("qwen3_30b_a3b.json");
  // NF4 + double quantization of every Linear weight (attention + 18432 expert projections), bf16 for
  // embed_tokens, lm_head, norms and routers: 16,693,261,056 bytes = 16.69 GB.
  EXPECT_EQ(q.m.nf4_bytes, 16693261056u);
  EXPECT_GE(q.m.nf4_bytes, 16'000'000'000u);
  EXPECT_LE(q.m.nf4_bytes, 17'000'000'000u);
  EXPECT_EQ(q.m.bf16_bytes, 2u * 30532122624u);
  EXPECT_EQ(q.m.nf4_quantized_tensors, 48 * (4 + 128 * 3));
  EXPECT_EQ(q.m.nf4_quantized_params + q.m.nf4_bf16_params, q.p.total);
  // KV: 48 layers x (K+V) x 4 kv heads x 128 x 2 bytes x 1024 tokens
  EXPECT_EQ(q.m.kv_cache_bytes_per_1k_tokens, 48u * 2 * 4 * 128 * 2 * 1024);
  // MLA caches kv_lora_rank + qk_rope_head_dim per layer.
  auto v3 = counts("deepseek_v3.json");
  EXPECT_EQ(v3.m.kv_cache_bytes_per_1k_tokens, 61u * (512 + 64) * 2 * 1024);
  EXPECT_FALSE(v3.m.kv_notes.empty());
  auto sc = counts("llama4_scout_17b_16e.json");
  ASSERT_EQ(sc.m.kv_notes.size(), 1u);
  EXPECT_NE(sc.m.kv_notes[0].find("36 of 48 layers use chunked attention"), std::string::npos);
  // bitsandbytes byte layout for one tensor: 4096 elements = 64 blocks.
  EXPECT_EQ(nf4_dq_bytes(4096), 2048u + 64u + 4u + 4u);
  EXPECT_EQ(nf4_dq_bytes(65), 33u + 2u + 4u + 4u);
  EXPECT_EQ(nf4_dq_bytes(0), 0u);
}

TEST(ModelInfo, Stories260K) {
  std::string dir = shared_model("stories260K_hf_llama");
  if (!std::filesystem::exists(dir)) GTEST_SKIP() << "shared assets absent: " << dir;
  auto c = config::load_model_config(dir);
  auto p = count_parameters(c);
  EXPECT_EQ(p.total, 260032);  // tied embeddings: no lm_head tensor
  EXPECT_EQ(p.by_kind.count("lm_head"), 0u);
  auto w = io::SafetensorsModel::open(dir);
  auto s = summarize_weights(w, c);
  EXPECT_EQ(s.tensors, 47);  // embed + 5 x (2 norms + q,k,v,o + gate,up,down) + final norm
  EXPECT_EQ(s.elements, 260032);
  EXPECT_EQ(s.dtype_tensors.at("F32"), 47);
  EXPECT_EQ(s.extra_elements, 0);
  for (const char* m : {"stories260K_mixtral_split4", "stories260K_qwen2moe_split4"}) {
    auto cm = config::load_model_config(shared_model(m));
    auto sm = summarize_weights(io::SafetensorsModel::open(shared_model(m)), cm);
    EXPECT_EQ(sm.model_elements(), count_parameters(cm).total) << m;
  }
}

TEST(ModelInfo, AbsurdSizesGiveErrorsNotOverflow) {
  // parse_model_config rejects such sizes (tests/core/config/test_config_bounds.cpp); a config built in
  // code may still carry them.
  auto c = config::parse_model_config(nlohmann::json::parse(
      R"({"model_type":"llama","vocab_size":1000,"hidden_size":64,"num_attention_heads":1,"num_key_value_heads":1})"));
  c.vocab_size = c.hidden_size = 1099511627775;
  try {
    count_parameters(c);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("overflows 64 bits"), std::string::npos) << e.what();
  }
}

TEST(ModelInfo, WeightsSummaryFlagsExtrasAndDisagreement) {
  namespace fs = std::filesystem;
  fs::path dir = fs::temp_directory_path() / ("graft_info_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  // 1-layer llama, hidden 8, 2 heads (head_dim 4), 1 kv head, inter 16, vocab 10, tied embeddings.
  auto c = config::parse_model_config(nlohmann::json::parse(
      R"({"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":16,"num_hidden_layers":1,
          "num_attention_heads":2,"num_key_value_heads":1,"tie_word_embeddings":true})"));
  auto z = [](Dims d, DType t = DType::BF16) { return Tensor::zeros(d, t); };
  io::NamedTensors t = {{"model.embed_tokens.weight", z({10, 8})},
                        {"model.layers.0.input_layernorm.weight", z({8})},
                        {"model.layers.0.post_attention_layernorm.weight", z({8})},
                        {"model.layers.0.self_attn.q_proj.weight", z({8, 8})},
                        {"model.layers.0.self_attn.k_proj.weight", z({4, 8})},
                        {"model.layers.0.self_attn.v_proj.weight", z({4, 8})},
                        {"model.layers.0.self_attn.o_proj.weight", z({8, 8})},
                        {"model.layers.0.mlp.gate_proj.weight", z({16, 8})},
                        {"model.layers.0.mlp.up_proj.weight", z({16, 8})},
                        {"model.layers.0.mlp.down_proj.weight", z({8, 16})},
                        {"model.norm.weight", z({8}, DType::F32)}};
  const int64_t expect = 80 + 16 + 64 + 32 + 32 + 64 + 3 * 128 + 8;
  EXPECT_EQ(count_parameters(c).total, expect);
  io::save_safetensors((dir / "model.safetensors").string(), t);
  auto s = summarize_weights(io::SafetensorsModel::open(dir.string()), c);
  EXPECT_EQ(s.model_elements(), expect);
  EXPECT_EQ(s.dtype_tensors.at("BF16"), 10);
  EXPECT_EQ(s.dtype_tensors.at("F32"), 1);
  EXPECT_EQ(s.dtype_bytes.at("F32"), 32u);
  // An MTP-style layer past num_hidden_layers and an FP8 scale are reported apart from the model.
  t.emplace_back("model.layers.1.eh_proj.weight", z({8, 16}));
  t.emplace_back("model.layers.0.mlp.down_proj.weight_scale_inv", z({1, 1}, DType::F32));
  io::save_safetensors((dir / "model.safetensors").string(), t);
  s = summarize_weights(io::SafetensorsModel::open(dir.string()), c);
  EXPECT_EQ(s.extra_by_reason.at("mtp_layers"), 128);
  EXPECT_EQ(s.extra_by_reason.at("quantization_aux"), 1);
  EXPECT_EQ(s.model_elements(), expect);
  // A missing tensor shows up as a difference.
  t.erase(t.begin() + 7);
  io::save_safetensors((dir / "model.safetensors").string(), t);
  s = summarize_weights(io::SafetensorsModel::open(dir.string()), c);
  EXPECT_EQ(s.model_elements(), expect - 128);
  fs::remove_all(dir);
}
