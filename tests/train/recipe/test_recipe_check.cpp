// `graft train --check` on LoRA target names (issue 17): checked against the base's config.json alone
// (no weights on disk), reported with the family's valid names; "not checked" when the base is absent.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <unistd.h>

#include "graft/model/presets.hpp"
#include "graft/train/chat_templates.hpp"
#include "graft/train/recipe.hpp"

namespace fs = std::filesystem;
using graft::train::check_recipe_files;
using graft::train::parse_recipe_text;

namespace {

std::string joined(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += x + "\n";
  return s;
}

// A base directory holding only config.json of a tiny `arch` model.
fs::path config_only_base(const std::string& arch) {
  const fs::path d = fs::temp_directory_path() / ("graft_check_targets_" + arch + "_" + std::to_string(::getpid()));
  fs::create_directories(d);
  std::ofstream(d / "config.json") << graft::model::preset_config(arch, "tiny", 300, 0, 1).dump();
  return d;
}

std::string recipe(const std::string& base, const std::string& targets) {
  return "base_model: " + base + "\n" + targets + "\ndatasets:\n  - path: data/train.jsonl\noutput_dir: out/x\n";
}

}  // namespace

TEST(RecipeCheckTargets, UnknownNameReportedWithTheFamilysNames) {
  const fs::path base = config_only_base("qwen3");
  auto c = check_recipe_files(parse_recipe_text(recipe(base.string(), "lora_target_modules: [q_proj, wq]"), "t.yaml"));
  const std::string p = joined(c.problems);
  EXPECT_NE(p.find("lora_target_modules entry 'wq' matches no module of this qwen3 base"), std::string::npos) << p;
  EXPECT_NE(p.find("q_proj, up_proj, v_proj"), std::string::npos) << p;  // the sorted valid names end so
  EXPECT_EQ(p.find("'q_proj'"), std::string::npos) << p;
  fs::remove_all(base);
}

TEST(RecipeCheckTargets, ValidNamesRegexAndFusedExperts) {
  const fs::path base = config_only_base("qwen3_moe");
  auto ok = check_recipe_files(parse_recipe_text(
      recipe(base.string(), "lora_target_modules: [q_proj, gate_proj]\nlora_target_parameters: [mlp.experts.down_proj]"), "t.yaml"));
  EXPECT_EQ(joined(ok.problems).find("lora_target"), std::string::npos) << joined(ok.problems);
  EXPECT_NE(joined(ok.notes).find("LoRA targets: every target name matches"), std::string::npos) << joined(ok.notes);
  auto bad = check_recipe_files(parse_recipe_text(
      recipe(base.string(), "lora_target_modules: '.*\\.wq'\nlora_target_parameters: [mlp.experts.w1]"), "t.yaml"));
  const std::string p = joined(bad.problems);
  EXPECT_NE(p.find("lora_target_modules regex '.*\\.wq' matches no module name"), std::string::npos) << p;
  EXPECT_NE(p.find("lora_target_parameters entry 'mlp.experts.w1' matches no fused expert tensor"), std::string::npos) << p;
  EXPECT_NE(p.find("mlp.experts.down_proj, mlp.experts.gate_up_proj"), std::string::npos) << p;
  fs::remove_all(base);
}

TEST(RecipeCheckTargets, AbsentBaseSaysTargetsNotChecked) {
  auto c = check_recipe_files(parse_recipe_text(recipe("Qwen/Qwen3-8B", "lora_target_modules: [q_proj, wq]"), "t.yaml"));
  EXPECT_EQ(joined(c.problems).find("wq"), std::string::npos);
  EXPECT_NE(joined(c.notes).find("LoRA targets: not checked against the architecture"), std::string::npos) << joined(c.notes);
}
