// `graft inspect [--json]` run as a subprocess on stories260K and on a config-only directory.
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <unistd.h>

namespace {
std::string graft_bin() { return std::string(GRAFT_BINARY_DIR) + "/bin/graft"; }

// Runs `cmd`, returns stdout; `rc` gets the exit status.
std::string run(const std::string& cmd, int& rc) {
  std::string out;
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return out;
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  int st = ::pclose(p);
  rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return out;
}

nlohmann::json inspect_json(const std::string& dir) {
  int rc = 0;
  std::string out = run(graft_bin() + " inspect --json '" + dir + "'", rc);
  EXPECT_EQ(rc, 0) << out;
  return nlohmann::json::parse(out);
}
}  // namespace

TEST(CliInspect, Stories260K) {
  std::string dir = std::string(GRAFT_SOURCE_DIR) + "/../shared/assets/models/stories260K_hf_llama";
  if (!std::filesystem::exists(dir)) GTEST_SKIP() << "shared assets absent: " << dir;
  ASSERT_TRUE(std::filesystem::exists(graft_bin())) << graft_bin();
  auto j = inspect_json(dir);
  EXPECT_EQ(j["model_type"], "llama");
  EXPECT_EQ(j["architectures"][0], "LlamaForCausalLM");
  EXPECT_EQ(j["num_hidden_layers"], 5);
  EXPECT_EQ(j["hidden_size"], 64);
  EXPECT_EQ(j["num_attention_heads"], 8);
  EXPECT_EQ(j["num_key_value_heads"], 4);
  EXPECT_EQ(j["head_dim"], 8);
  EXPECT_EQ(j["vocab_size"], 512);
  EXPECT_EQ(j["tie_word_embeddings"], true);
  EXPECT_TRUE(j["moe"].is_null());
  EXPECT_EQ(j["params"]["total"], 260032);
  EXPECT_EQ(j["params"]["active"], 260032);
  EXPECT_EQ(j["memory"]["bf16_bytes"], 2 * 260032);
  EXPECT_EQ(j["memory"]["kv_cache_bf16_bytes_per_1k_tokens"], 5 * 2 * 4 * 8 * 2 * 1024);
  ASSERT_FALSE(j["weights"].is_null());
  EXPECT_EQ(j["weights"]["tensors"], 47);
  EXPECT_EQ(j["weights"]["elements"], 260032);
  EXPECT_EQ(j["weights"]["matches_config"], true);
  EXPECT_EQ(j["weights"]["dtypes"]["F32"]["tensors"], 47);
  EXPECT_EQ(j["weights"]["dtypes"]["F32"]["bytes"], 4 * 260032);
  // Human-readable form works too.
  int rc = 0;
  std::string text = run(graft_bin() + " inspect '" + dir + "'", rc);
  EXPECT_EQ(rc, 0) << text;
  EXPECT_NE(text.find("260032"), std::string::npos) << text;
  EXPECT_NE(text.find("match the parameter count"), std::string::npos) << text;
}

TEST(CliInspect, ConfigOnlyDirectory) {
  ASSERT_TRUE(std::filesystem::exists(graft_bin())) << graft_bin();
  auto j = inspect_json(std::string(GRAFT_SOURCE_DIR) + "/tests/cli/inspect/data/qwen3_30b_a3b");
  EXPECT_EQ(j["model_type"], "qwen3_moe");
  EXPECT_TRUE(j["weights"].is_null());
  EXPECT_EQ(j["moe"]["routed_experts"], 128);
  EXPECT_EQ(j["moe"]["experts_per_token"], 8);
  EXPECT_EQ(j["moe"]["shared_experts"], 0);
  EXPECT_EQ(j["moe"]["moe_layers"], 48);
  EXPECT_EQ(j["moe"]["dense_layers"], 0);
  EXPECT_EQ(j["params"]["total"], 30532122624LL);
  EXPECT_EQ(j["params"]["active"], 3353032704LL);
  EXPECT_EQ(j["memory"]["nf4_dq_bytes"], 16693261056LL);
  for (const char* k : {"path", "family", "torch_dtype", "intermediate_size", "max_position_embeddings", "rope_theta",
                        "rope_scaling", "attention", "layers", "sliding_window", "quantization"})
    EXPECT_TRUE(j.contains(k)) << k;
}

TEST(CliInspect, ErrorsAreReported) {
  ASSERT_TRUE(std::filesystem::exists(graft_bin())) << graft_bin();
  int rc = 0;
  std::string out = run(graft_bin() + " inspect /nonexistent/graft/model", rc);
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("'/nonexistent/graft/model' not found"), std::string::npos) << out;
  // A directory without config.json names the missing file.
  std::string empty = std::filesystem::temp_directory_path() / ("graft_inspect_" + std::to_string(::getpid()));
  std::filesystem::create_directories(empty);
  out = run(graft_bin() + " inspect " + empty, rc);
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find(empty + "/config.json' not found"), std::string::npos) << out;
  // Implausible sizes are rejected with the key and the bound (was: "64T params", rc 0).
  for (const auto& [key, value] : {std::pair<std::string, std::string>{"vocab_size", "1e12"},
                                   std::pair<std::string, std::string>{"max_position_embeddings", "4611686018427387904"}}) {
    const std::string cfg = R"({"model_type":"llama","vocab_size":512,"hidden_size":64,"intermediate_size":128,
      "num_hidden_layers":2,"num_attention_heads":4,"max_position_embeddings":256,")" + key + "\":" + value + "}";
    FILE* f = std::fopen((empty + "/config.json").c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::fputs(cfg.c_str(), f);
    std::fclose(f);
    out = run(graft_bin() + " inspect " + empty, rc);
    EXPECT_NE(rc, 0) << key << ": " << out;
    EXPECT_NE(out.find("'" + key + "'"), std::string::npos) << out;
    EXPECT_NE(out.find("implausible"), std::string::npos) << out;
  }
  std::filesystem::remove_all(empty);
}
