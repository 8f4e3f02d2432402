// Axolotl compatibility of recipes (issue 17): every problem reported at once, blank boilerplate
// keys, runtime-only keys accepted with one warning each, honoured Axolotl keys (evals/saves per
// epoch, fractional warmup, gradient_checkpointing: offload, named chat templates, special_tokens,
// 8-bit/paged AdamW names, fsdp/deepspeed), rejected keys, suggestions, the corpus of Axolotl-style
// configs under tests/train/axolotl_configs, and the docs table.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "graft/error.hpp"
#include "graft/mmap_file.hpp"
#include "graft/model/presets.hpp"
#include "graft/train/chat_templates.hpp"
#include "graft/train/recipe.hpp"

namespace fs = std::filesystem;
using graft::train::load_recipe;
using graft::train::LoadedRecipe;
using graft::train::parse_recipe_text;

namespace {

const std::string kBase =
    "base_model: some/model\n"
    "lora_target_modules: [q_proj, v_proj]\n"
    "datasets:\n"
    "  - path: data/train.jsonl\n"
    "output_dir: out/x\n";  // 5 lines: the next key is on line 6

std::string error_of(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
  try {
    parse_recipe_text(yaml, "t.yaml", overrides);
  } catch (const graft::Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected an error for:\n" << yaml;
  return "";
}

LoadedRecipe parse(const std::string& yaml) { return parse_recipe_text(yaml, "t.yaml"); }

void expect_all(const std::string& text, const std::vector<std::string>& needles) {
  for (const auto& n : needles) EXPECT_NE(text.find(n), std::string::npos) << "missing '" << n << "' in:\n" << text;
}

std::string joined(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += x + "\n";
  return s;
}

}  // namespace

TEST(RecipeAxolotl, EveryProblemIsReportedInOneError) {
  const std::string e = error_of(kBase +
                                 "lora_rank: 16\n"            // 6: alias
                                 "lora_alpha: sixteen\n"      // 7: type
                                 "load_in_8bit: true\n"       // 8: rejected value
                                 "lr_scheduler: cosin\n"      // 9: choice
                                 "learning_rate: -1\n"        // 10: range
                                 "peft_use_dora: true\n");    // 11: rejected value
  expect_all(e, {"t.yaml: 6 problems in the recipe", "t.yaml:6:1: unknown recipe key 'lora_rank'", "did you mean 'lora_r'",
                 "t.yaml:7:13: key 'lora_alpha' expects an integer", "t.yaml:8:15: key 'load_in_8bit' = true",
                 "t.yaml:9:15: key 'lr_scheduler' = 'cosin'", "t.yaml:10:16: key 'learning_rate' = -1",
                 "t.yaml:11:16: key 'peft_use_dora' = true", "fix: rename 'lora_rank' to 'lora_r'",
                 "fix: use load_in_4bit: true", "graft train --check"});
  // Problems in different dataset entries, and a cross-key rule, together.
  const std::string e2 = error_of(
      "base_model: m\noutput_dir: o\nlora_target_linear: true\nwarmup_steps: 5\nwarmup_ratio: 0.1\n"
      "datasets:\n  - path: a\n    type: alpacca\n  - path: b\n    feild: x\n");
  expect_all(e2, {"3 problems", "t.yaml:5:15", "warmup_ratio", "t.yaml:8:11: key 'datasets.0.type' = 'alpacca'",
                  "t.yaml:10:5: unknown dataset entry key 'feild' — did you mean 'field'?"});
  // A rejected value is not reported again as a missing required key.
  const std::string e3 = error_of("base_model: [a]\noutput_dir: o\nlora_target_linear: true\ndatasets: [{path: d}]\n");
  EXPECT_EQ(e3.find("required key 'base_model'"), std::string::npos) << e3;
  EXPECT_NE(e3.find("expects a string"), std::string::npos) << e3;
}

TEST(RecipeAxolotl, BlankBoilerplateKeysAreAbsent) {
  const std::string blank =
      "wandb_project:\nwandb_entity:\nwandb_watch:\nwandb_name:\nwandb_log_model:\nlora_model_dir:\n"
      "special_tokens:\nfsdp:\nfsdp_config:\ndeepspeed:\nevals_per_epoch:\nsaves_per_epoch:\neval_table_size:\n"
      "early_stopping_patience:\nlocal_rank:\nxformers_attention:\ndebug:\nlora_fan_in_fan_out:\nfp16: ~\n"
      "resume_from_checkpoint: null\nlora_modules_to_save:\n";
  auto r = parse_recipe_text(kBase + blank, "t.yaml");
  EXPECT_TRUE(r.warnings.empty()) << joined(r.warnings);
  EXPECT_FALSE(r.proto.has_evals_per_epoch());
  EXPECT_EQ(r.proto.special_tokens_size(), 0);
  EXPECT_EQ(r.hash, parse_recipe_text(kBase).hash);
  // A blank key that is neither graft's nor Axolotl's is still a typo.
  expect_all(error_of(kBase + "learnig_rate:\n"), {"t.yaml:6:1", "did you mean 'learning_rate'"});
}

TEST(RecipeAxolotl, RuntimeKeysAreAcceptedWithOneWarningEach) {
  const std::vector<std::string> keys = {
      "bf16: auto",          "tf32: true",          "attn_implementation: flash_attention_2",
      "flash_attention: true", "wandb_project: proj", "plugins: [axolotl.integrations.liger.LigerPlugin]",
      "liger_rope: true",    "lora_mlp_kernel: true", "lora_qkv_kernel: true",
      "torch_compile: true", "loss_watchdog_threshold: 5.0", "loss_watchdog_patience: 3",
      "model_type: AutoModelForCausalLM", "tokenizer_type: AutoTokenizer", "trust_remote_code: true",
      "strict: false",       "gradient_checkpointing_kwargs: {use_reentrant: false}", "eval_sample_packing: false",
      "load_in_8bit: false", "pad_to_sequence_len: true", "deepspeed: deepspeed_configs/zero2.json",
      "fsdp: [full_shard, auto_wrap]", "fsdp_config: {fsdp_offload_params: true}"};
  std::string y = kBase;
  for (const auto& k : keys) y += k + "\n";
  auto r = parse_recipe_text(y, "t.yaml");
  ASSERT_EQ(r.warnings.size(), keys.size()) << joined(r.warnings);
  for (size_t i = 0; i < keys.size(); ++i) {
    const std::string key = keys[i].substr(0, keys[i].find(':'));
    EXPECT_NE(r.warnings[i].find("t.yaml:" + std::to_string(6 + i) + ":1: key '" + key + "' is ignored: "),
              std::string::npos)
        << r.warnings[i];
  }
  // The warnings say what graft does instead.
  expect_all(joined(r.warnings), {"fp32 on the CPU backend", "metrics.jsonl", "never runs model code",
                                  "single-process", "gradient_accumulation_steps N-fold"});
  // Ignored keys do not change the recipe.
  EXPECT_EQ(r.hash, parse_recipe_text(kBase).hash);
}

TEST(RecipeAxolotl, ResultChangingKeysStayErrorsWithAFix) {
  expect_all(error_of(kBase + "load_in_8bit: true\n"), {"t.yaml:6:15", "load_in_8bit", "NF4", "fix: use load_in_4bit"});
  expect_all(error_of(kBase + "lora_model_dir: ./old-adapter\n"), {"t.yaml:6:1", "lora_model_dir", "resume_from_checkpoint"});
  expect_all(error_of(kBase + "tokens: ['<|im_start|>']\n"), {"t.yaml:6:1", "embedding matrix", "fix:"});
  expect_all(error_of(kBase + "cosine_min_lr_ratio: 0.1\n"), {"t.yaml:6:1", "decays to 0"});
  expect_all(error_of(kBase + "group_by_length: true\n"), {"t.yaml:6:18", "data order"});
  expect_all(error_of(kBase + "optimizer: adafactor\n"), {"t.yaml:6:12", "'optimizer' = 'adafactor'", "adamw"});
  expect_all(error_of(kBase + "lr_scheduler: cosine_with_min_lr\n"), {"t.yaml:6:15", "constant, linear, cosine"});
  expect_all(error_of("base_model: m\noutput_dir: o\nlora_target_linear: true\ndatasets:\n  - path: d\n"
                      "    name: subset\n    data_files: [a.json]\n"),
             {"t.yaml:6:5", "'name'", "t.yaml:7:5", "'data_files'"});
  // group_by_length: false (Axolotl's boilerplate) is fine.
  EXPECT_EQ(parse_recipe_text(kBase + "group_by_length: false\n").warnings.size(), 1u);
}

// PEFT modules_to_save: embed_tokens and lm_head (a name or a dotted suffix, as PEFT matches) are
// trained copies; any other entry is an error collected with the recipe's other problems; blank or []
// is absent.
TEST(RecipeAxolotl, ModulesToSaveTakesEmbeddingsAndLmHead) {
  const auto r = parse(kBase + "lora_modules_to_save:\n  - embed_tokens\n  - lm_head\n");
  ASSERT_EQ(r.proto.lora_modules_to_save_size(), 2);
  EXPECT_TRUE(r.warnings.empty()) << joined(r.warnings);
  EXPECT_NE(r.hash, parse(kBase).hash);
  EXPECT_EQ(parse(r.text).hash, r.hash);
  EXPECT_NO_THROW(parse(kBase + "lora_modules_to_save: [model.embed_tokens]\n"));
  const std::string e = error_of(kBase + "lora_modules_to_save:\n  - embed_tokens\n  - score\n  - lm_head\n  - lm_head\n"
                                         "optimizer: adafactor\n");
  expect_all(e, {"t.yaml: 3 problems in the recipe", "t.yaml:8:5: lora_modules_to_save entry 'score' is not supported",
                 "fix: remove 'score'", "t.yaml:10:5: lora_modules_to_save names lm_head twice",
                 "t.yaml:11:12: key 'optimizer' = 'adafactor'"});
  for (const char* absent : {"lora_modules_to_save:\n", "lora_modules_to_save: []\n", "lora_modules_to_save: null\n"}) {
    const auto a = parse(kBase + absent);
    EXPECT_EQ(a.proto.lora_modules_to_save_size(), 0) << absent;
    EXPECT_TRUE(a.warnings.empty()) << absent << joined(a.warnings);
    EXPECT_EQ(a.hash, parse(kBase).hash) << absent;
  }
}

TEST(RecipeAxolotl, SuggestionsOnlyForCloseSpellings) {
  // tokenizer_type is an Axolotl key (accepted), never "did you mean 'tokenizer'".
  auto r = parse_recipe_text(kBase + "tokenizer_type: AutoTokenizer\n");
  EXPECT_EQ(r.warnings.size(), 1u);
  EXPECT_EQ(r.warnings[0].find("did you mean"), std::string::npos);
  // A key sharing only a prefix with a graft key gets no suggestion.
  for (const char* k : {"tokenizer_kind", "output", "lora_target_layers", "sequence"}) {
    const std::string e = error_of(kBase + k + ": x\n");
    EXPECT_EQ(e.find("did you mean"), std::string::npos) << e;
    EXPECT_NE(e.find("valid keys:"), std::string::npos) << e;
  }
  // Misspellings still get one.
  expect_all(error_of(kBase + "base_mdoel: x\n"), {"did you mean 'base_model'"});
  expect_all(error_of(kBase + "micro_batchsize: 2\n"), {"did you mean 'micro_batch_size'"});
  expect_all(error_of(kBase + "sequence_length: 512\n"), {"did you mean 'sequence_len'"});
}

TEST(RecipeAxolotl, HonouredKeys) {
  // Fractional warmup_steps is a ratio (transformers' convention).
  auto w = parse(kBase + "warmup_steps: 0.05\n");
  EXPECT_FALSE(w.proto.has_warmup_steps());
  EXPECT_DOUBLE_EQ(w.proto.warmup_ratio(), 0.05);
  EXPECT_EQ(w.hash, parse(kBase + "warmup_ratio: 0.05\n").hash);
  EXPECT_EQ(parse(kBase + "warmup_steps: 10\n").proto.warmup_steps(), 10);
  expect_all(error_of(kBase + "warmup_steps: 0.05\nwarmup_ratio: 0.1\n"), {"t.yaml:7:1", "warmup_ratio"});
  expect_all(error_of(kBase + "warmup_steps: 2.5\n"), {"t.yaml:6:15", "expects an integer"});
  // gradient_checkpointing: offload / unsloth = true with a warning.
  for (const char* v : {"offload", "unsloth"}) {
    auto g = parse(kBase + "gradient_checkpointing: " + v + "\n");
    EXPECT_TRUE(g.proto.gradient_checkpointing());
    ASSERT_EQ(g.warnings.size(), 1u);
    expect_all(g.warnings[0], {"t.yaml:6:25", "host memory"});
  }
  expect_all(error_of(kBase + "gradient_checkpointing: sometimes\n"), {"t.yaml:6:25", "offload"});
  // Named chat templates, and the fallback form.
  for (const auto& n : graft::train::named_chat_template_names()) {
    EXPECT_EQ(parse(kBase + "chat_template: " + n + "\n").proto.chat_template(), n);
    EXPECT_NO_THROW(parse(kBase + "chat_template: tokenizer_default_fallback_" + n + "\n"));
  }
  expect_all(error_of(kBase + "chat_template: gemma\n"), {"t.yaml:6:16", "'gemma'", "qwen3", "chat_template_jinja"});
  expect_all(error_of(kBase + "chat_template: llama_3\n"), {"did you mean 'llama3'"});
  // AdamW spellings: the 8-bit / paged ones run graft's AdamW with a warning.
  for (const char* o : {"adamw_bnb_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "adamw_8bit", "adamw_torch_4bit"}) {
    auto a = parse(kBase + "optimizer: " + o + "\n");
    EXPECT_EQ(a.proto.optimizer(), "adamw");
    ASSERT_EQ(a.warnings.size(), 1u) << o;
    expect_all(a.warnings[0], {"t.yaml:6:12", o, "fp32 moments"});
  }
  EXPECT_TRUE(parse(kBase + "optimizer: adamw_torch_fused\n").warnings.empty());
  EXPECT_EQ(parse(kBase + "lr_scheduler: constant_with_warmup\n").proto.lr_scheduler(), "constant");
  // evals_per_epoch / saves_per_epoch; not together with eval_steps / save_steps.
  auto e = parse(kBase + "evals_per_epoch: 4\nsaves_per_epoch: 2\n");
  EXPECT_EQ(e.proto.evals_per_epoch(), 4);
  EXPECT_EQ(e.proto.saves_per_epoch(), 2);
  EXPECT_EQ(parse(kBase + "saves_per_epoch: 3\n").hash, parse_recipe_text(kBase).hash);  // operational
  EXPECT_NE(parse(kBase + "evals_per_epoch: 3\n").hash, parse_recipe_text(kBase).hash);
  expect_all(error_of(kBase + "evals_per_epoch: 4\neval_steps: 10\n"), {"t.yaml:6:18", "eval_steps", "evals_per_epoch"});
  expect_all(error_of(kBase + "saves_per_epoch: 1\nsave_steps: 10\n"), {"t.yaml:6:18", "save_steps"});
  // special_tokens: the four token roles.
  auto s = parse(kBase + "special_tokens:\n  pad_token: <|end_of_text|>\n  eos_token: <|eot_id|>\n");
  EXPECT_EQ(s.proto.special_tokens().at("pad_token"), "<|end_of_text|>");
  EXPECT_NE(s.hash, parse_recipe_text(kBase).hash);
  EXPECT_EQ(parse(s.text).hash, s.hash);
  expect_all(error_of(kBase + "special_tokens:\n  sep_token: x\n"), {"t.yaml:7:14", "special_tokens.sep_token", "eos_token"});
  // Axolotl's older message_field_role / message_field_content.
  auto m = parse("base_model: m\noutput_dir: o\nlora_target_linear: true\ndatasets:\n  - path: d\n"
                             "    message_field_role: from\n    message_field_content: value\n");
  EXPECT_EQ(m.proto.datasets(0).message_property_mappings().at("role"), "from");
  EXPECT_EQ(m.proto.datasets(0).message_property_mappings().at("content"), "value");
}

TEST(RecipeAxolotl, CorpusOfAxolotlConfigsLoads) {
  const fs::path dir = fs::path(GRAFT_SOURCE_DIR) / "tests/train/axolotl_configs";
  int n = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().extension() != ".yaml") continue;
    ++n;
    SCOPED_TRACE(e.path().filename().string());
    LoadedRecipe r;
    try {
      r = load_recipe(e.path().string());
    } catch (const graft::Error& err) {
      ADD_FAILURE() << err.what();
      continue;
    }
    EXPECT_FALSE(r.warnings.empty());  // every one carries Axolotl runtime keys
    for (const auto& w : r.warnings) EXPECT_EQ(w.rfind(e.path().string() + ":", 0), 0u) << w;
    EXPECT_EQ(parse_recipe_text(r.text).hash, r.hash);
  }
  EXPECT_GE(n, 15);
}

TEST(RecipeAxolotl, DocsTableMatchesTheLoader) {
  const std::string docs = graft::read_text_file(std::string(GRAFT_SOURCE_DIR) + "/docs/recipes.md");
  const std::string table = graft::train::axolotl_keys_markdown();
  EXPECT_NE(docs.find(table), std::string::npos)
      << "docs/recipes.md must contain the Axolotl key table exactly as the loader has it:\n"
      << table;
}
