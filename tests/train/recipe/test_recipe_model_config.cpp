// Axolotl's overrides_of_model_config / model_config (issue 17): honoured keys replace config.json's
// values (in --check and in the loaded model), no-effect keys warn, every other key is an error with
// the recipe's other problems, and the recipe text round-trips with the same hash.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <unistd.h>

#include "graft/config/model_config.hpp"
#include "graft/error.hpp"
#include "graft/io/safetensors.hpp"
#include "graft/model/model.hpp"
#include "graft/model/presets.hpp"
#include "graft/train/chat_templates.hpp"
#include "graft/train/recipe.hpp"

namespace fs = std::filesystem;
using graft::train::parse_recipe_text;

namespace {

const std::string kBase =
    "base_model: some/model\n"
    "lora_target_modules: [q_proj, v_proj]\n"
    "datasets:\n"
    "  - path: data/train.jsonl\n"
    "output_dir: out/x\n";  // the next key is on line 6

std::string error_of(const std::string& yaml) {
  try {
    parse_recipe_text(yaml, "t.yaml");
  } catch (const graft::Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected an error for:\n" << yaml;
  return "";
}

void expect_all(const std::string& text, const std::vector<std::string>& needles) {
  for (const auto& n : needles) EXPECT_NE(text.find(n), std::string::npos) << "missing '" << n << "' in:\n" << text;
}

std::string joined(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += x + "\n";
  return s;
}

}  // namespace

TEST(RecipeModelConfig, HonouredKeysAreStoredAsCanonicalJsonAndRoundTrip) {
  const auto r = parse_recipe_text(kBase +
                                       "overrides_of_model_config:\n"
                                       "  rope_theta: 1000000\n"
                                       "  rope_scaling: {rope_type: yarn, factor: 4.0, original_max_position_embeddings: 32768}\n"
                                       "  max_position_embeddings: 131072\n",
                                   "t.yaml");
  EXPECT_EQ(r.proto.overrides_of_model_config(),
            R"({"max_position_embeddings":131072,"rope_scaling":{"factor":4.0,"original_max_position_embeddings":32768,)"
            R"("rope_type":"yarn"},"rope_theta":1000000})");
  EXPECT_TRUE(r.warnings.empty()) << joined(r.warnings);
  const auto again = parse_recipe_text(r.text, "again.yaml");
  EXPECT_EQ(again.proto.overrides_of_model_config(), r.proto.overrides_of_model_config());
  EXPECT_EQ(again.hash, r.hash);
  // model_config (Axolotl's older name) is the same key; a different value changes the hash.
  const auto alias = parse_recipe_text(kBase + "model_config:\n  rope_theta: 1000000\n", "t.yaml");
  EXPECT_EQ(alias.proto.overrides_of_model_config(), R"({"rope_theta":1000000})");
  EXPECT_NE(alias.hash, parse_recipe_text(kBase, "t.yaml").hash);
  for (const char* absent : {"model_config:\n", "overrides_of_model_config: null\n"}) {
    const auto a = parse_recipe_text(kBase + absent, "t.yaml");
    EXPECT_FALSE(a.proto.has_overrides_of_model_config()) << absent;
    EXPECT_EQ(a.hash, parse_recipe_text(kBase, "t.yaml").hash) << absent;
  }
}

TEST(RecipeModelConfig, NoEffectKeysWarnOthersAreErrorsWithTheRecipesOtherProblems) {
  const auto w = parse_recipe_text(
      kBase + "model_config:\n  output_router_logits: false\n  use_cache: false\n  attention_dropout: 0.0\n", "t.yaml");
  EXPECT_FALSE(w.proto.has_overrides_of_model_config());
  ASSERT_EQ(w.warnings.size(), 3u) << joined(w.warnings);
  expect_all(joined(w.warnings), {"t.yaml:7:3: key 'model_config.output_router_logits' = false is ignored",
                                  "t.yaml:8:3: key 'model_config.use_cache' is ignored",
                                  "t.yaml:9:3: key 'model_config.attention_dropout' = 0 is ignored"});
  expect_all(error_of(kBase + "model_config: {attention_dropout: 0.1}\n"),
             {"t.yaml:6:16: key 'model_config.attention_dropout' = 0.1 is not supported", "fix: set attention_dropout to 0"});
  const std::string e = error_of(kBase +
                                 "overrides_of_model_config:\n"
                                 "  num_hidden_layers: 4\n"         // 7
                                 "  output_router_logits: true\n"   // 8
                                 "  rope_theta: 500000\n"
                                 "lora_rank: 8\n");                 // 10
  expect_all(e, {"t.yaml: 3 problems in the recipe",
                 "t.yaml:7:3: config.json key 'num_hidden_layers' in 'overrides_of_model_config' cannot be overridden",
                 "rope_scaling, rope_parameters, rope_theta, max_position_embeddings",
                 "fix: remove 'num_hidden_layers' from overrides_of_model_config",
                 "t.yaml:8:3: key 'overrides_of_model_config.output_router_logits' = true is not supported",
                 "router load-balancing loss", "t.yaml:10:1: unknown recipe key 'lora_rank'"});
  expect_all(error_of(kBase + "model_config: {rope_theta: 1}\noverrides_of_model_config: {rope_theta: 2}\n"),
             {"model_config and overrides_of_model_config are both given"});
  expect_all(error_of(kBase + "model_config: [rope_theta]\n"), {"t.yaml:6:15: key 'model_config' expects a mapping"});
  expect_all(error_of(kBase + "rope_theta: 1000000\n"),
             {"t.yaml:6:1: Axolotl key 'rope_theta' is not supported", "fix: move it into overrides_of_model_config"});
}

TEST(RecipeModelConfig, CheckAndModelLoadApplyTheOverrides) {
  const fs::path d = fs::temp_directory_path() / ("graft_model_config_" + std::to_string(::getpid()));
  fs::create_directories(d);
  auto cj = graft::model::preset_config("qwen3", "tiny", 300, 0, 1);
  std::ofstream(d / "config.json") << cj.dump();
  const double base_theta = graft::config::load_model_config(d.string()).rope_theta;
  ASSERT_NE(base_theta, 123456.0);
  const std::string head = "base_model: " + d.string() + "\nlora_target_modules: [q_proj]\ndatasets:\n  - path: x.jsonl\noutput_dir: o\n";
  // --check parses config.json with the overrides: a value the config loader refuses is a problem.
  auto ok = graft::train::check_recipe_files(parse_recipe_text(head + "model_config: {rope_theta: 123456}\n", "t.yaml"));
  expect_all(joined(ok.notes), {"config.json with overrides_of_model_config is a supported qwen3"});
  EXPECT_EQ(joined(ok.problems).find("overrides_of_model_config"), std::string::npos) << joined(ok.problems);
  auto bad = graft::train::check_recipe_files(
      parse_recipe_text(head + "model_config: {rope_scaling: {rope_type: nonsense, factor: 2}}\n", "t.yaml"));
  expect_all(joined(bad.problems), {"with overrides_of_model_config", "nonsense"});
  // The overrides reach the loaded model's config (and from there its RoPE table).
  const auto r = parse_recipe_text(head + "model_config: {rope_theta: 123456, max_position_embeddings: 777}\n", "t.yaml");
  const auto cfg = graft::config::load_model_config(d.string(), r.proto.overrides_of_model_config());
  EXPECT_EQ(cfg.rope_theta, 123456.0);
  EXPECT_EQ(cfg.max_position_embeddings, 777);
  EXPECT_EQ(cfg.hidden_size, graft::config::load_model_config(d.string()).hidden_size);
  graft::io::save_safetensors((d / "model.safetensors").string(),
                               graft::model::random_checkpoint(graft::config::load_model_config(d.string()), 1));
  graft::model::LoadOptions lo;
  lo.config_overrides_json = r.proto.overrides_of_model_config();
  const auto m = graft::model::Model::load(d.string(), lo);
  EXPECT_EQ(m.config().rope_theta, 123456.0);
  EXPECT_EQ(m.config().max_position_embeddings, 777);
  EXPECT_EQ(graft::model::Model::load(d.string()).config().rope_theta, base_theta);
  // Llama 4 style configs: overrides go into text_config, the decoder's config.
  nlohmann::json nested = {{"model_type", "llama4"}, {"text_config", {{"rope_theta", 1.0}}}};
  auto applied = graft::config::apply_config_overrides(nested, {{"rope_theta", 2.0}});
  EXPECT_EQ(applied["text_config"]["rope_theta"], 2.0);
  EXPECT_FALSE(applied.contains("rope_theta"));
  fs::remove_all(d);
}
