// config.json parsing: every family, defaults, layer helpers, errors.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>

#include "graft/config/model_config.hpp"
#include "graft/error.hpp"

using namespace graft;
using namespace graft::config;
using nlohmann::json;

namespace {
std::string data(const std::string& f) { return std::string(GRAFT_SOURCE_DIR) + "/tests/core/config/data/" + f; }

std::string error_of(const json& j) {
  try {
    parse_model_config(j, "cfg.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST(ModelConfig, Qwen3Moe30B) {
  auto c = load_model_config(data("qwen3_30b_a3b.json"));
  EXPECT_EQ(c.family, Family::Qwen3Moe);
  EXPECT_EQ(c.architectures, std::vector<std::string>{"Qwen3MoeForCausalLM"});
  EXPECT_EQ(c.hidden_size, 2048);
  EXPECT_EQ(c.head_dim, 128);  // explicit, != 2048/32
  EXPECT_EQ(c.num_key_value_heads, 4);
  EXPECT_EQ(c.moe.num_experts, 128);
  EXPECT_EQ(c.moe.num_experts_per_tok, 8);
  EXPECT_EQ(c.expert_intermediate_size(), 768);
  EXPECT_TRUE(c.moe.norm_topk_prob);
  EXPECT_TRUE(c.qk_norm);
  EXPECT_FALSE(c.sliding_window.has_value());
  EXPECT_DOUBLE_EQ(c.rope_theta, 1e6);
  EXPECT_EQ(c.rope_scaling.type, "default");
  EXPECT_EQ(c.num_moe_layers(), 48);
  EXPECT_EQ(c.torch_dtype, "bfloat16");
}

TEST(ModelConfig, QwenMoeLayerPlacementAndSlidingWindow) {
  json j = json::parse(R"({"model_type":"qwen3_moe","num_hidden_layers":8,"hidden_size":64,"num_attention_heads":4,
    "num_key_value_heads":2,"decoder_sparse_step":2,"mlp_only_layers":[3],"num_experts":4,"num_experts_per_tok":2,
    "use_sliding_window":true,"sliding_window":128,"max_window_layers":6})");
  auto c = parse_model_config(j);
  // MoE when (i+1) % 2 == 0 and i not in mlp_only_layers: 1, 5, 7 (3 excluded)
  std::vector<int64_t> moe;
  for (int64_t i = 0; i < 8; ++i)
    if (c.is_moe_layer(i)) moe.push_back(i);
  EXPECT_EQ(moe, (std::vector<int64_t>{1, 5, 7}));
  EXPECT_EQ(c.num_dense_layers(), 5);
  EXPECT_EQ(c.head_dim, 16);  // qwen3 (dense) defaults head_dim=128, but qwen3_moe uses hidden/heads
  EXPECT_TRUE(c.layer_kind(6).sliding);
  EXPECT_FALSE(c.layer_kind(5).sliding);
  EXPECT_EQ(*c.sliding_window, 128);
  EXPECT_FALSE(c.moe.norm_topk_prob);  // class default False when absent
  EXPECT_THROW(c.is_moe_layer(8), Error);
}

TEST(ModelConfig, QwenDefaultsAndBias) {
  auto c = parse_model_config(json::parse(R"({"model_type":"qwen2"})"));
  // Qwen2Config defaults
  EXPECT_EQ(c.vocab_size, 151936);
  EXPECT_EQ(c.hidden_size, 4096);
  EXPECT_EQ(c.intermediate_size, 22016);
  EXPECT_EQ(c.num_hidden_layers, 32);
  EXPECT_EQ(c.num_key_value_heads, 32);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.max_position_embeddings, 32768);
  EXPECT_TRUE(c.qkv_bias);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_FALSE(c.sliding_window.has_value());  // use_sliding_window defaults to false
  auto q3 = parse_model_config(json::parse(R"({"model_type":"qwen3","hidden_size":1024,"num_attention_heads":16,"num_key_value_heads":8})"));
  EXPECT_EQ(q3.head_dim, 128);  // Qwen3Config head_dim default
  auto q25 = load_model_config(data("qwen2_5_7b.json"));
  EXPECT_FALSE(q25.sliding_window.has_value());  // sliding_window given but use_sliding_window false
  EXPECT_EQ(q25.head_dim, 128);
  auto q2m = load_model_config(data("qwen1_5_moe_a2_7b.json"));
  EXPECT_TRUE(q2m.moe.shared_expert_gate);
  EXPECT_EQ(q2m.moe.shared_expert_intermediate_size, 5632);
}

TEST(ModelConfig, Mixtral) {
  auto c = load_model_config(data("mixtral_8x7b.json"));
  EXPECT_EQ(c.family, Family::Mixtral);
  EXPECT_EQ(c.moe.num_experts, 8);
  EXPECT_EQ(c.moe.num_experts_per_tok, 2);
  EXPECT_EQ(c.expert_intermediate_size(), 14336);
  EXPECT_TRUE(c.is_moe_layer(0));
  EXPECT_FALSE(c.layer_kind(0).sliding);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  auto w = parse_model_config(json::parse(R"({"model_type":"mixtral","sliding_window":4096})"));
  EXPECT_TRUE(w.layer_kind(3).sliding);
  EXPECT_EQ(w.hidden_size, 4096);  // MixtralConfig default
  EXPECT_EQ(w.num_key_value_heads, 8);
}

TEST(ModelConfig, DeepSeek) {
  auto v3 = load_model_config(data("deepseek_v3.json"));
  EXPECT_TRUE(v3.is_mla);
  EXPECT_EQ(v3.mla.q_lora_rank, 1536);
  EXPECT_EQ(v3.mla.kv_lora_rank, 512);
  EXPECT_EQ(v3.head_dim, 192);
  EXPECT_EQ(v3.moe.num_experts, 256);
  EXPECT_EQ(v3.moe.n_shared_experts, 1);
  EXPECT_EQ(v3.moe.topk_method, "noaux_tc");
  EXPECT_EQ(v3.moe.scoring_func, "sigmoid");
  EXPECT_TRUE(v3.moe.e_score_correction_bias);
  EXPECT_DOUBLE_EQ(v3.moe.routed_scaling_factor, 2.5);
  EXPECT_EQ(v3.moe.n_group, 8);
  EXPECT_EQ(v3.moe.topk_group, 4);
  EXPECT_FALSE(v3.is_moe_layer(2));
  EXPECT_TRUE(v3.is_moe_layer(3));
  EXPECT_EQ(v3.num_moe_layers(), 58);
  EXPECT_EQ(v3.num_nextn_predict_layers, 1);
  EXPECT_EQ(v3.rope_scaling.type, "yarn");
  EXPECT_DOUBLE_EQ(v3.rope_scaling.factor, 40);
  EXPECT_DOUBLE_EQ(v3.rope_scaling.mscale_all_dim, 1.0);
  EXPECT_EQ(v3.rope_scaling.original_max_position_embeddings, 4096);
  EXPECT_EQ(v3.quantization.method, "fp8");
  EXPECT_EQ(v3.quantization.fmt, "e4m3");
  EXPECT_EQ(v3.quantization.weight_block_size, (std::vector<int64_t>{128, 128}));

  auto lite = load_model_config(data("deepseek_v2_lite.json"));
  EXPECT_EQ(lite.mla.q_lora_rank, 0);  // "q_lora_rank": null -> plain q_proj
  EXPECT_EQ(lite.moe.num_experts, 64);
  EXPECT_EQ(lite.moe.shared_expert_intermediate_size, 2 * 1408);
  EXPECT_FALSE(lite.moe.e_score_correction_bias);
  EXPECT_FALSE(lite.is_moe_layer(0));
  EXPECT_TRUE(lite.is_moe_layer(1));
  EXPECT_DOUBLE_EQ(lite.rope_scaling.mscale, 0.707);

  // DeepseekV3Config defaults when keys are absent; q_lora_rank absent -> 1536.
  auto d = parse_model_config(json::parse(R"({"model_type":"deepseek_v3","num_hidden_layers":4})"));
  EXPECT_EQ(d.mla.q_lora_rank, 1536);
  EXPECT_EQ(d.moe.first_k_dense_replace, 3);
  EXPECT_EQ(d.moe.num_experts, 256);
  EXPECT_EQ(d.hidden_size, 7168);
  // DeepseekV2Config: no routed experts by default -> dense.
  auto d2 = parse_model_config(json::parse(R"({"model_type":"deepseek_v2","num_hidden_layers":2})"));
  EXPECT_FALSE(d2.is_moe_model());
  EXPECT_EQ(d2.num_moe_layers(), 0);
}

TEST(ModelConfig, Llama31AndLlama4) {
  auto l = load_model_config(data("llama3_1_8b.json"));
  EXPECT_EQ(l.family, Family::Llama);
  EXPECT_EQ(l.rope_scaling.type, "llama3");
  EXPECT_DOUBLE_EQ(l.rope_scaling.factor, 8);
  EXPECT_DOUBLE_EQ(l.rope_scaling.high_freq_factor, 4);
  EXPECT_EQ(l.rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_EQ(l.head_dim, 128);
  EXPECT_FALSE(l.is_moe_model());

  auto s = load_model_config(data("llama4_scout_17b_16e.json"));
  EXPECT_EQ(s.family, Family::Llama4);
  EXPECT_EQ(s.model_type, "llama4_text");
  EXPECT_EQ(s.architectures, std::vector<std::string>{"Llama4ForConditionalGeneration"});
  EXPECT_EQ(s.hidden_size, 5120);
  EXPECT_EQ(s.moe.num_experts, 16);
  EXPECT_EQ(s.moe.num_experts_per_tok, 1);
  EXPECT_EQ(s.moe.shared_expert_intermediate_size, 8192);
  EXPECT_EQ(s.intermediate_size_mlp, 16384);
  EXPECT_EQ(s.num_moe_layers(), 48);
  EXPECT_TRUE(s.qk_norm);
  EXPECT_FALSE(s.qk_norm_has_weight);
  EXPECT_EQ(s.attention_chunk_size, 8192);
  EXPECT_EQ(s.rope_scaling.type, "llama3");  // high == low freq factor (1.0) is valid
  // no_rope_layers [] -> default: every 4th layer is NoPE (and not chunked)
  EXPECT_TRUE(s.layer_kind(0).rope);
  EXPECT_TRUE(s.layer_kind(0).chunked);
  EXPECT_FALSE(s.layer_kind(3).rope);
  EXPECT_FALSE(s.layer_kind(3).chunked);

  // Maverick-style interleaving: MoE on odd layers; llama4_text at top level.
  auto m = parse_model_config(json::parse(R"({"model_type":"llama4_text","num_hidden_layers":6,
    "interleave_moe_layer_step":2,"no_rope_layers":[1,1,1,0,1,1]})"));
  EXPECT_FALSE(m.is_moe_layer(0));
  EXPECT_TRUE(m.is_moe_layer(1));
  EXPECT_EQ(m.num_moe_layers(), 3);
  EXPECT_EQ(m.dense_intermediate_size(), 16384);
  EXPECT_FALSE(m.layer_kind(3).rope);
}

TEST(ModelConfig, HeadDimAndKvHeadsDefaults) {
  auto c = parse_model_config(json::parse(R"({"model_type":"llama","hidden_size":64,"num_attention_heads":8})"));
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_EQ(c.num_key_value_heads, 8);  // None -> num_attention_heads
  EXPECT_EQ(c.vocab_size, 32000);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  auto n = parse_model_config(json::parse(R"({"model_type":"llama","num_key_value_heads":null,"head_dim":null})"));
  EXPECT_EQ(n.num_key_value_heads, 32);
  EXPECT_EQ(n.head_dim, 128);
  auto rs = parse_model_config(json::parse(R"({"model_type":"llama","rope_scaling":{"type":"linear","factor":2}})"));
  EXPECT_EQ(rs.rope_scaling.type, "linear");
  auto dyn = parse_model_config(json::parse(R"({"model_type":"qwen2","rope_scaling":{"rope_type":"dynamic","factor":2.0}})"));
  EXPECT_EQ(dyn.rope_scaling.type, "dynamic");
  auto i = parse_model_config(json::parse(R"({"model_type":"llama","hidden_size":64.0,"num_attention_heads":8})"));
  EXPECT_EQ(i.hidden_size, 64);  // integral floats accepted
}

TEST(ModelConfig, QuantizationConfigBitsandbytes) {
  auto c = parse_model_config(json::parse(R"({"model_type":"llama","quantization_config":{"quant_method":"bitsandbytes",
    "load_in_4bit":true,"bnb_4bit_quant_type":"nf4","bnb_4bit_use_double_quant":true,"bnb_4bit_compute_dtype":"bfloat16",
    "llm_int8_skip_modules":["lm_head"]}})"));
  EXPECT_EQ(c.quantization.method, "bitsandbytes");
  EXPECT_TRUE(c.quantization.load_in_4bit);
  EXPECT_EQ(c.quantization.bnb_4bit_quant_type, "nf4");
  EXPECT_TRUE(c.quantization.bnb_4bit_use_double_quant);
  EXPECT_EQ(c.quantization.bnb_4bit_compute_dtype, "bfloat16");
  EXPECT_EQ(c.quantization.skip_modules, std::vector<std::string>{"lm_head"});
}

TEST(ModelConfig, Errors) {
  std::string e = error_of(json::parse(R"({"model_type":"gpt2"})"));
  EXPECT_NE(e.find("model_type 'gpt2' is not supported"), std::string::npos) << e;
  for (const auto& t : supported_model_types()) EXPECT_NE(e.find(t), std::string::npos) << t;
  EXPECT_NE(error_of(json::parse(R"({"hidden_size":4})")).find("missing key 'model_type'"), std::string::npos);
  e = error_of(json::parse(R"({"model_type":"llama","hidden_size":"4096"})"));
  EXPECT_NE(e.find("key 'hidden_size' must be an integer, got string \"4096\""), std::string::npos) << e;
  EXPECT_NE(e.find("cfg.json"), std::string::npos) << e;
  e = error_of(json::parse(R"({"model_type":"llama","rope_theta":"big"})"));
  EXPECT_NE(e.find("key 'rope_theta' must be a number"), std::string::npos) << e;
  e = error_of(json::parse(R"({"model_type":"llama","tie_word_embeddings":1})"));
  EXPECT_NE(e.find("key 'tie_word_embeddings' must be true or false"), std::string::npos) << e;
  e = error_of(json::parse(R"({"model_type":"llama","hidden_size":4096.5})"));
  EXPECT_NE(e.find("'hidden_size' must be an integer"), std::string::npos) << e;
  e = error_of(json::parse(R"({"model_type":"qwen3_moe","mlp_only_layers":"3"})"));
  EXPECT_NE(e.find("'mlp_only_layers' must be a list of integers"), std::string::npos) << e;
  e = error_of(json::parse(R"({"model_type":"llama4","text_config":{"hidden_size":"x"}})"));
  EXPECT_NE(e.find("'text_config.hidden_size' must be an integer"), std::string::npos) << e;
  e = error_of(json::parse(R"({"model_type":"llama4"})"));
  EXPECT_NE(e.find("text_config"), std::string::npos) << e;
  e = error_of(json::parse(R"({"model_type":"llama","rope_scaling":{"rope_type":"longrope","factor":2}})"));
  EXPECT_NE(e.find("rope_type 'longrope' is not supported"), std::string::npos) << e;
  e = error_of(json::parse(R"({"model_type":"llama","hidden_size":100,"num_attention_heads":7})"));
  EXPECT_NE(e.find("not divisible"), std::string::npos) << e;
  e = error_of(json::parse(R"({"model_type":"mixtral","num_experts_per_tok":9})"));
  EXPECT_NE(e.find("num_experts_per_tok 9"), std::string::npos) << e;
  e = error_of(json::parse(R"({"model_type":"llama","num_hidden_layers":-1})"));
  EXPECT_NE(e.find("'num_hidden_layers' must be a positive integer"), std::string::npos) << e;
  e = error_of(json::parse(R"({"model_type":"deepseek_v3","scoring_func":"relu"})"));
  EXPECT_NE(e.find("scoring_func 'relu'"), std::string::npos) << e;
  e = error_of(json::parse("[1]"));
  EXPECT_NE(e.find("not a JSON object"), std::string::npos) << e;
  EXPECT_THROW(parse_model_config_text("{bad", "x.json"), Error);
  EXPECT_THROW(load_model_config("/nonexistent/graft/dir"), Error);
}
