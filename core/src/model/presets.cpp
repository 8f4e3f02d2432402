#include "graft/model/presets.hpp"

#include <algorithm>

#include "graft/error.hpp"

namespace graft::model {
using ojson = nlohmann::ordered_json;

const std::vector<std::string>& init_architectures() {
  static const std::vector<std::string> a = {"llama", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe",
                                             "mixtral", "deepseek_v2", "deepseek_v3", "llama4"};
  return a;
}
const std::vector<std::string>& init_presets() {
  static const std::vector<std::string> p = {"tiny", "small"};
  return p;
}

namespace {
struct Sizes {
  int64_t hidden, layers, heads, kv, head_dim, inter, experts, topk, moe_inter;
};
Sizes sizes(const std::string& preset) {
  if (preset == "tiny") return {64, 4, 4, 2, 16, 128, 8, 2, 32};
  if (preset == "small") return {512, 8, 8, 4, 64, 1536, 8, 2, 512};
  GRAFT_FAIL("use one of: tiny, small", "unknown preset '{}'", preset);
}
const char* arch_class(const std::string& a) {
  if (a == "llama") return "LlamaForCausalLM";
  if (a == "qwen2") return "Qwen2ForCausalLM";
  if (a == "qwen3") return "Qwen3ForCausalLM";
  if (a == "qwen2_moe") return "Qwen2MoeForCausalLM";
  if (a == "qwen3_moe") return "Qwen3MoeForCausalLM";
  if (a == "mixtral") return "MixtralForCausalLM";
  if (a == "deepseek_v2") return "DeepseekV2ForCausalLM";
  if (a == "deepseek_v3") return "DeepseekV3ForCausalLM";
  return "Llama4ForCausalLM";
}
}  // namespace

ojson preset_config(const std::string& arch, const std::string& preset, int64_t vocab, int64_t bos, int64_t eos) {
  const auto& archs = init_architectures();
  GRAFT_CHECK_FIX(std::find(archs.begin(), archs.end(), arch) != archs.end(),
                  "use one of: llama, qwen2, qwen3, qwen2_moe, qwen3_moe, mixtral, deepseek_v2, deepseek_v3, llama4",
                  "unknown architecture '{}'", arch);
  const Sizes s = sizes(preset);
  ojson c;
  c["architectures"] = {arch_class(arch)};
  c["model_type"] = arch;
  c["vocab_size"] = vocab;
  c["hidden_size"] = s.hidden;
  c["intermediate_size"] = s.inter;
  c["num_hidden_layers"] = s.layers;
  c["num_attention_heads"] = s.heads;
  c["num_key_value_heads"] = s.kv;
  c["head_dim"] = s.head_dim;
  c["hidden_act"] = "silu";
  c["max_position_embeddings"] = 4096;
  c["rms_norm_eps"] = 1e-6;
  c["rope_theta"] = 1000000.0;
  c["tie_word_embeddings"] = true;
  c["bos_token_id"] = bos;
  c["eos_token_id"] = eos;
  c["torch_dtype"] = "float32";
  c["initializer_range"] = 0.02;
  if (arch == "qwen2_moe" || arch == "qwen3_moe") {
    c["num_experts"] = s.experts;
    c["num_experts_per_tok"] = s.topk;
    c["moe_intermediate_size"] = s.moe_inter;
    c["norm_topk_prob"] = true;
    c["decoder_sparse_step"] = 1;
    // tiny: one dense layer to exercise mixed stacks; small (benchmarks): every layer MoE, as llama.cpp's
    // qwen3moe graph expects.
    c["mlp_only_layers"] = preset == "tiny" ? ojson::array({0}) : ojson::array();
    if (arch == "qwen2_moe") c["shared_expert_intermediate_size"] = s.moe_inter * 2;
  } else if (arch == "mixtral") {
    c["num_local_experts"] = s.experts;
    c["num_experts_per_tok"] = s.topk;
    c["intermediate_size"] = s.moe_inter;
    c["sliding_window"] = nullptr;
    c["tie_word_embeddings"] = false;
  } else if (arch == "deepseek_v2" || arch == "deepseek_v3") {
    c.erase("head_dim");
    c["num_key_value_heads"] = s.heads;
    c["n_routed_experts"] = s.experts;
    c["num_experts_per_tok"] = s.topk;
    c["moe_intermediate_size"] = s.moe_inter;
    c["n_shared_experts"] = 1;
    c["first_k_dense_replace"] = 1;
    c["moe_layer_freq"] = 1;
    c["q_lora_rank"] = arch == "deepseek_v3" ? ojson(s.hidden / 2) : ojson(nullptr);
    c["kv_lora_rank"] = s.hidden / 4;
    c["qk_nope_head_dim"] = s.head_dim;
    c["qk_rope_head_dim"] = s.head_dim / 2;
    c["v_head_dim"] = s.head_dim;
    // DeepSeek-V2/V2-Lite ship norm_topk_prob false (transformers' DeepseekV2 router also ignores true).
    c["norm_topk_prob"] = arch == "deepseek_v3";
    c["routed_scaling_factor"] = arch == "deepseek_v3" ? 2.5 : 1.0;
    c["n_group"] = 2;
    c["topk_group"] = 1;
    c["scoring_func"] = arch == "deepseek_v3" ? "sigmoid" : "softmax";
    c["topk_method"] = arch == "deepseek_v3" ? "noaux_tc" : "group_limited_greedy";
    c["tie_word_embeddings"] = false;
  } else if (arch == "llama4") {
    ojson t = c;
    t["model_type"] = "llama4_text";
    t.erase("architectures");
    t["num_local_experts"] = 4;
    t["num_experts_per_tok"] = 1;
    t["intermediate_size"] = s.moe_inter;
    t["intermediate_size_mlp"] = s.inter;
    t["interleave_moe_layer_step"] = 1;
    t["no_rope_layers"] = ojson::array();
    for (int64_t i = 0; i < s.layers; ++i) t["no_rope_layers"].push_back((i + 1) % 4 != 0 ? 1 : 0);
    t["attention_chunk_size"] = 32;
    t["use_qk_norm"] = true;
    t["attn_temperature_tuning"] = true;
    t["floor_scale"] = 16;
    t["attn_scale"] = 0.1;
    t["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                         {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 1024}};
    t["rope_theta"] = 500000.0;
    t["tie_word_embeddings"] = false;
    ojson top;
    top["architectures"] = {arch_class(arch)};
    top["model_type"] = "llama4";
    top["text_config"] = t;
    top["tie_word_embeddings"] = false;
    return top;
  }
  if (arch == "qwen2" || arch == "qwen2_moe") c["use_sliding_window"] = false;
  return c;
}

namespace {
// GPT-2's byte -> printable unicode mapping used by byte-level BPE.
std::string byte_char(int b) {
  int cp;
  if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255)) {
    cp = b;
  } else {
    int n = 0;
    for (int x = 0; x < b; ++x)
      if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255))) ++n;
    cp = 256 + n;
  }
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return s;
}
}  // namespace

ojson tiny_tokenizer_json() {
  ojson vocab = ojson::object();
  for (int b = 0; b < 256; ++b) vocab[byte_char(b)] = b;
  ojson added = ojson::array();
  const char* specials[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
  for (int i = 0; i < 3; ++i)
    added.push_back({{"id", 256 + i}, {"content", specials[i]}, {"single_word", false}, {"lstrip", false},
                     {"rstrip", false}, {"normalized", false}, {"special", true}});
  ojson t;
  t["version"] = "1.0";
  t["truncation"] = nullptr;
  t["padding"] = nullptr;
  t["added_tokens"] = added;
  t["normalizer"] = nullptr;
  t["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
  t["post_processor"] = nullptr;
  t["decoder"] = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}};
  t["model"] = {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", nullptr},
                {"end_of_word_suffix", nullptr}, {"fuse_unk", false}, {"byte_fallback", false}, {"ignore_merges", false},
                {"vocab", vocab}, {"merges", ojson::array()}};
  return t;
}

ojson tiny_tokenizer_config() {
  ojson c;
  c["bos_token"] = nullptr;
  c["eos_token"] = "<|im_end|>";
  c["pad_token"] = "<|endoftext|>";
  c["chat_template"] =
      "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
      "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
  c["model_max_length"] = 4096;
  c["tokenizer_class"] = "PreTrainedTokenizerFast";
  return c;
}

}  // namespace graft::model
