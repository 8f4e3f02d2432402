// config.json plausibility bounds: sizes far beyond any published model (vocab_size 1e12,
// max_position_embeddings 2^62, ...) are errors naming the key and the bound, not tensors or tables sized
// from the value. Values at the bounds still load.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>

#include "graft/config/model_config.hpp"
#include "graft/error.hpp"

using namespace graft;
using namespace graft::config;
using nlohmann::json;

namespace {
json tiny() {
  return json::parse(R"({"model_type":"llama","vocab_size":512,"hidden_size":64,"intermediate_size":128,
    "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":4,"max_position_embeddings":256})");
}
std::string error_of(const json& j) {
  try {
    parse_model_config(j, "cfg.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}
void expect_rejected(const char* key, const json& value, const std::string& bound) {
  json j = tiny();
  j[key] = value;
  const std::string e = error_of(j);
  EXPECT_NE(e.find(std::string("key '") + key + "'"), std::string::npos) << key << ": " << e;
  EXPECT_NE(e.find("implausible"), std::string::npos) << key << ": " << e;
  EXPECT_NE(e.find(bound), std::string::npos) << key << ": " << e;
}
}  // namespace

TEST(ConfigBounds, ImplausibleSizesAreErrors) {
  expect_rejected("vocab_size", 1e12, "at most 16777216");
  expect_rejected("vocab_size", json::parse("1000000000000"), "= 1000000000000");
  expect_rejected("max_position_embeddings", int64_t{1} << 62, "at most 67108864");
  expect_rejected("hidden_size", 1 << 20, "at most 262144");
  expect_rejected("intermediate_size", int64_t{1} << 30, "at most 1048576");
  expect_rejected("num_hidden_layers", 5000, "at most 4096");
  expect_rejected("head_dim", 1 << 20, "at most 16384");
  json j = tiny();
  j["max_position_embeddings"] = 0;
  EXPECT_NE(error_of(j).find("must be a positive integer"), std::string::npos) << error_of(j);
  j = tiny();
  j["model_type"] = "mixtral";
  j["sliding_window"] = int64_t{1} << 40;
  EXPECT_NE(error_of(j).find("'sliding_window' = 1099511627776 is implausible"), std::string::npos) << error_of(j);
  j = tiny();
  j["model_type"] = "qwen2_moe";
  j["moe_intermediate_size"] = int64_t{1} << 40;
  EXPECT_NE(error_of(j).find("'moe_intermediate_size'"), std::string::npos) << error_of(j);
}

TEST(ConfigBounds, ValuesAtTheBoundsLoad) {
  json j = tiny();
  j["vocab_size"] = kMaxVocabSize;
  j["max_position_embeddings"] = kMaxPositionEmbeddings;
  const ModelConfig c = parse_model_config(j, "cfg.json");
  EXPECT_EQ(c.vocab_size, kMaxVocabSize);
  EXPECT_EQ(c.max_position_embeddings, kMaxPositionEmbeddings);
  // Llama 4 names keys under text_config.
  json l4 = json::parse(R"({"model_type":"llama4","text_config":{"vocab_size":1000000000000,"hidden_size":64,
    "num_attention_heads":4,"num_key_value_heads":4,"head_dim":16}})");
  EXPECT_NE(error_of(l4).find("'text_config.vocab_size'"), std::string::npos) << error_of(l4);
}
