// Recipe schema, loader, validation and hashing (train/src/recipe).
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "graft/error.hpp"
#include "graft/train/recipe.hpp"

namespace fs = std::filesystem;
using graft::train::load_recipe;
using graft::train::LoadedRecipe;
using graft::train::parse_recipe_text;

namespace {

const char* kMinimal =
    "base_model: some/model\n"
    "lora_target_modules: [q_proj, v_proj]\n"
    "datasets:\n"
    "  - path: data/train.jsonl\n"
    "output_dir: out/x\n";

// Parses and expects a graft::Error whose message contains every one of `needles`.
void expect_error(const std::string& yaml, const std::vector<std::string>& needles,
                  const std::vector<std::string>& overrides = {}) {
  try {
    parse_recipe_text(yaml, "t.yaml", overrides);
    ADD_FAILURE() << "expected an error for:\n" << yaml;
  } catch (const graft::Error& e) {
    const std::string msg = e.what();
    for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "missing '" << n << "' in:\n" << msg;
  }
}

}  // namespace

TEST(Recipe, DefaultsAreFilledIn) {
  LoadedRecipe r = parse_recipe_text(kMinimal);
  const auto& p = r.proto;
  EXPECT_EQ(p.base_model(), "some/model");
  EXPECT_FALSE(p.has_tokenizer());
  EXPECT_EQ(p.adapter(), "lora");
  EXPECT_FALSE(p.load_in_4bit());
  EXPECT_TRUE(p.bnb_4bit_use_double_quant());
  EXPECT_EQ(p.lora_r(), 8);
  EXPECT_EQ(p.lora_alpha(), 16);
  EXPECT_EQ(p.lora_dropout(), 0.0);
  EXPECT_FALSE(p.lora_target_linear());
  EXPECT_FALSE(p.peft_use_rslora());
  EXPECT_EQ(p.chat_template(), "tokenizer_default");
  EXPECT_FALSE(p.train_on_inputs());
  EXPECT_EQ(p.sequence_len(), 2048);
  EXPECT_FALSE(p.sample_packing());
  EXPECT_EQ(p.micro_batch_size(), 1);
  EXPECT_EQ(p.gradient_accumulation_steps(), 1);
  EXPECT_EQ(p.num_epochs(), 1.0);
  EXPECT_FALSE(p.has_max_steps());
  EXPECT_DOUBLE_EQ(p.learning_rate(), 2e-4);
  EXPECT_EQ(p.lr_scheduler(), "cosine");
  EXPECT_FALSE(p.has_warmup_steps());
  EXPECT_FALSE(p.has_warmup_ratio());
  EXPECT_EQ(p.weight_decay(), 0.0);
  EXPECT_DOUBLE_EQ(p.adam_beta1(), 0.9);
  EXPECT_DOUBLE_EQ(p.adam_beta2(), 0.999);
  EXPECT_DOUBLE_EQ(p.adam_epsilon(), 1e-8);
  EXPECT_DOUBLE_EQ(p.max_grad_norm(), 1.0);
  EXPECT_EQ(p.optimizer(), "adamw");
  EXPECT_TRUE(p.gradient_checkpointing());
  EXPECT_EQ(p.eval_steps(), 0);
  EXPECT_EQ(p.save_steps(), 0);
  EXPECT_EQ(p.logging_steps(), 10);
  EXPECT_EQ(p.seed(), 42);
  EXPECT_EQ(p.num_threads(), 0);
  EXPECT_EQ(p.val_set_size(), 0.0);
  ASSERT_EQ(p.datasets_size(), 1);
  const auto& d = p.datasets(0);
  EXPECT_EQ(d.type(), "chat_template");
  EXPECT_EQ(d.split(), "train");
  EXPECT_EQ(d.field_messages(), "messages");
  EXPECT_EQ(d.message_property_mappings().at("role"), "role");
  EXPECT_EQ(d.message_property_mappings().at("content"), "content");
  ASSERT_EQ(d.roles_to_train_size(), 1);
  EXPECT_EQ(d.roles_to_train(0), "assistant");
  EXPECT_EQ(d.train_on_eos(), "turn");
  EXPECT_EQ(r.source, "<recipe>");
  EXPECT_EQ(r.hash.size(), 64u);
}

TEST(Recipe, QloraImpliesFourBitAndBack) {
  auto a = parse_recipe_text(std::string(kMinimal) + "adapter: qlora\n");
  EXPECT_TRUE(a.proto.load_in_4bit());
  auto b = parse_recipe_text(std::string(kMinimal) + "load_in_4bit: true\n");
  EXPECT_EQ(b.proto.adapter(), "qlora");
}

TEST(Recipe, SharegptDatasetDefaults) {
  auto r = parse_recipe_text(
      "base_model: m\nlora_target_linear: true\noutput_dir: o\n"
      "datasets:\n  - path: d.json\n    type: sharegpt\n    roles:\n      user: [human, user]\n      assistant: gpt\n");
  const auto& d = r.proto.datasets(0);
  EXPECT_EQ(d.field_messages(), "conversations");
  EXPECT_EQ(d.message_property_mappings().at("role"), "from");
  EXPECT_EQ(d.message_property_mappings().at("content"), "value");
  ASSERT_EQ(d.roles().at("user").values_size(), 2);
  EXPECT_EQ(d.roles().at("user").values(0), "human");
  EXPECT_EQ(d.roles().at("assistant").values(0), "gpt");
}

TEST(Recipe, TargetModulesListAndRegexForms) {
  auto list = parse_recipe_text(kMinimal);
  ASSERT_EQ(list.proto.lora_target_modules_size(), 2);
  EXPECT_EQ(list.proto.lora_target_modules(1), "v_proj");
  EXPECT_FALSE(list.proto.has_lora_target_modules_regex());

  auto re = parse_recipe_text(
      "base_model: m\noutput_dir: o\ndatasets: [{path: d.jsonl}]\n"
      "lora_target_modules: '.*\\.(q_proj|v_proj)'\n");
  EXPECT_EQ(re.proto.lora_target_modules_size(), 0);
  EXPECT_EQ(re.proto.lora_target_modules_regex(), ".*\\.(q_proj|v_proj)");

  // The explicit key is the same thing, and round-trips through the printed YAML.
  auto re2 = parse_recipe_text(
      "base_model: m\noutput_dir: o\ndatasets: [{path: d.jsonl}]\n"
      "lora_target_modules_regex: '.*\\.(q_proj|v_proj)'\n");
  EXPECT_EQ(re.hash, re2.hash);
  expect_error("base_model: m\noutput_dir: o\ndatasets: [{path: d.jsonl}]\nlora_target_modules: x\n"
               "lora_target_modules_regex: y\n",
               {"t.yaml:5:", "lora_target_modules_regex"});
  expect_error("base_model: m\noutput_dir: o\ndatasets: [{path: d.jsonl}]\nlora_target_modules: '(q_proj'\n",
               {"t.yaml:4:", "does not compile"});
}

TEST(Recipe, Overrides) {
  auto r = parse_recipe_text(kMinimal, "t.yaml",
                             {"lora_r=32", "learning_rate=1e-3", "datasets.0.path=other.jsonl",
                              "datasets.1.path=second.jsonl", "datasets.1.type=alpaca",
                              "lora_target_modules=[o_proj]", "sample_packing=true", "tokenizer=tok/dir",
                              "rank_pattern.experts=4"});
  EXPECT_EQ(r.proto.lora_r(), 32);
  EXPECT_DOUBLE_EQ(r.proto.learning_rate(), 1e-3);
  ASSERT_EQ(r.proto.datasets_size(), 2);
  EXPECT_EQ(r.proto.datasets(0).path(), "other.jsonl");
  EXPECT_EQ(r.proto.datasets(1).path(), "second.jsonl");
  EXPECT_EQ(r.proto.datasets(1).type(), "alpaca");
  ASSERT_EQ(r.proto.lora_target_modules_size(), 1);
  EXPECT_EQ(r.proto.lora_target_modules(0), "o_proj");
  EXPECT_TRUE(r.proto.sample_packing());
  EXPECT_EQ(r.proto.tokenizer(), "tok/dir");
  EXPECT_EQ(r.proto.rank_pattern().at("experts"), 4);
  // The canonical text carries the overrides and reloads to the same recipe.
  auto again = parse_recipe_text(r.text);
  EXPECT_EQ(again.hash, r.hash);
  EXPECT_EQ(again.proto.datasets(1).path(), "second.jsonl");
  // An override to null unsets the key.
  auto u = parse_recipe_text(std::string(kMinimal) + "max_steps: 10\n", "t.yaml", {"max_steps="});
  EXPECT_FALSE(u.proto.has_max_steps());
}

TEST(Recipe, OverrideErrorsNameTheOverride) {
  expect_error(kMinimal, {"--set lora_r=abc", "lora_r", "expects an integer", "'abc'"}, {"lora_r=abc"});
  expect_error(kMinimal, {"--set lora_rank=4", "unknown recipe key 'lora_rank'", "did you mean 'lora_r'"},
               {"lora_rank=4"});
  expect_error(kMinimal, {"--set learning_rate=-1", "learning_rate", "> 0"}, {"learning_rate=-1"});
  expect_error(kMinimal, {"--set datasets.3.path=x", "index 3 is out of range", "1 entries"}, {"datasets.3.path=x"});
  expect_error(kMinimal, {"not key=value"}, {"lora_r"});
  expect_error(kMinimal, {"--set datasets.0.typo=x", "unknown dataset entry key 'typo'", "did you mean 'type'"},
               {"datasets.0.typo=x"});
}

TEST(Recipe, UnknownKeyNamesLineAndSuggestion) {
  expect_error(std::string(kMinimal) + "lora_rank: 16\n",
               {"t.yaml:6:1", "unknown recipe key 'lora_rank'", "did you mean 'lora_r'?"});
  expect_error(std::string(kMinimal) + "learnig_rate: 0.1\n",
               {"t.yaml:6:1", "'learnig_rate'", "did you mean 'learning_rate'?"});
  expect_error(std::string(kMinimal) + "sequence_length: 512\n", {"t.yaml:6:1", "did you mean 'sequence_len'?"});
  expect_error(std::string(kMinimal) + "zzzz: 1\n", {"t.yaml:6:1", "unknown recipe key 'zzzz'", "valid keys:"});
  // Axolotl runtime keys are accepted with a warning (tests/train/recipe/test_recipe_axolotl.cpp).
  auto bf16 = parse_recipe_text(std::string(kMinimal) + "bf16: true\n", "t.yaml");
  ASSERT_EQ(bf16.warnings.size(), 1u);
  EXPECT_NE(bf16.warnings[0].find("t.yaml:6:1: key 'bf16' is ignored: graft picks the compute precision"), std::string::npos);
  expect_error("base_model: m\noutput_dir: o\nlora_target_linear: true\ndatasets:\n  - path: d\n    feild_messages: x\n",
               {"t.yaml:6:5", "unknown dataset entry key 'feild_messages'", "did you mean 'field_messages'?"});
  expect_error(std::string(kMinimal) + "lora_r: 4\nlora_r: 5\n", {"t.yaml:7:1", "'lora_r' appears twice"});
}

TEST(Recipe, WrongTypesNameKeyLineAndExpectedType) {
  expect_error(std::string(kMinimal) + "lora_r: sixteen\n", {"t.yaml:6:9", "'lora_r'", "expects an integer", "'sixteen'"});
  expect_error(std::string(kMinimal) + "lora_r: 16.5\n", {"t.yaml:6:9", "expects an integer"});
  expect_error(std::string(kMinimal) + "lora_r: [1, 2]\n", {"t.yaml:6:9", "'lora_r'", "expects an integer", "got a list"});
  expect_error(std::string(kMinimal) + "learning_rate: fast\n", {"t.yaml:6:16", "'learning_rate'", "expects a number"});
  expect_error(std::string(kMinimal) + "sample_packing: maybe\n", {"t.yaml:6:17", "expects a boolean"});
  expect_error("base_model: {a: 1}\n", {"t.yaml:1:13", "'base_model'", "expects a string", "got a mapping"});
  expect_error(std::string(kMinimal) + "lora_target_parameters: mlp.experts.down_proj\n",
               {"t.yaml:6:25", "'lora_target_parameters'", "expects a list of strings", "write a list"});
  expect_error(std::string(kMinimal) + "rank_pattern: [a]\n", {"t.yaml:6:15", "'rank_pattern'", "expects a mapping"});
  expect_error(std::string(kMinimal) + "rank_pattern:\n  experts: x\n", {"t.yaml:7:12", "rank_pattern.experts", "expects an integer"});
  expect_error("base_model: m\noutput_dir: o\nlora_target_linear: true\ndatasets: data.jsonl\n",
               {"t.yaml:4:11", "'datasets'", "expects a list of mappings"});
  expect_error("base_model: m\noutput_dir: o\nlora_target_linear: true\ndatasets:\n  - data.jsonl\n",
               {"t.yaml:5:5", "entry 0 of 'datasets'", "mapping"});
  expect_error(std::string(kMinimal) + "lora_r: 99999999999\n", {"t.yaml:6:9", "out of range"});
}

TEST(Recipe, OutOfRangeAndChoices) {
  const std::string m = kMinimal;
  expect_error(m + "lora_r: 0\n", {"t.yaml:6:9", "'lora_r' = 0", ">= 1"});
  expect_error(m + "learning_rate: 0\n", {"t.yaml:6:16", "'learning_rate'", "> 0"});
  expect_error(m + "sequence_len: 0\n", {"t.yaml:6:15", "'sequence_len'", ">= 1"});
  expect_error(m + "warmup_ratio: 1.0\n", {"t.yaml:6:15", "'warmup_ratio'", "[0, 1)"});
  expect_error(m + "lora_dropout: -0.1\n", {"t.yaml:6:15", "'lora_dropout'", "[0, 1)"});
  expect_error(m + "val_set_size: 1.5\n", {"t.yaml:6:15", "'val_set_size'", "[0, 1)"});
  expect_error(m + "lr_scheduler: cosin\n", {"t.yaml:6:15", "'lr_scheduler' = 'cosin'", "constant, linear, cosine",
                                               "did you mean 'cosine'?"});
  expect_error(m + "adapter: dora\n", {"t.yaml:6:10", "'adapter'", "lora, qlora"});
  expect_error(m + "optimizer: sgd\n", {"t.yaml:6:12", "'optimizer'", "adamw"});
  expect_error(m + "chat_template: qwen9\n", {"t.yaml:6:16", "'chat_template'", "tokenizer_default"});
  expect_error("base_model: m\noutput_dir: o\nlora_target_linear: true\ndatasets:\n  - path: d\n    type: alpacca\n",
               {"t.yaml:6:11", "'datasets.0.type' = 'alpacca'", "chat_template, alpaca, sharegpt, completion", "did you mean 'alpaca'?"});
  expect_error(m + "warmup_steps: 5\nwarmup_ratio: 0.1\n", {"t.yaml:7:15", "warmup_steps", "warmup_ratio"});
  expect_error(m + "adapter: qlora\nload_in_4bit: false\n", {"t.yaml:7:15", "qlora", "load_in_4bit"});
  expect_error(m + "lora_target_parameters: [mlp.experts.down_proj]\nlora_dropout: 0.1\n",
               {"t.yaml:7:15", "lora_dropout must be 0"});
  expect_error("base_model: m\noutput_dir: o\nlora_target_linear: true\ntest_datasets:\n  - path: d\n    train_on_eos: first\n",
               {"t.yaml:6:19", "'test_datasets.0.train_on_eos' = 'first'", "turn, last, all, none"});
  expect_error(m + "lora_modules_to_save: [lm_head, wte]\n",
               {"t.yaml:6:33", "lora_modules_to_save entry 'wte' is not supported", "embed_tokens and lm_head only"});
  // Optimizer aliases are accepted and normalised.
  EXPECT_EQ(parse_recipe_text(m + "optimizer: adamw_torch\n").proto.optimizer(), "adamw");
  // Inline Jinja is a valid chat_template.
  EXPECT_NO_THROW(parse_recipe_text(m + "chat_template: \"{% for m in messages %}{{ m.content }}{% endfor %}\"\n"));
}

TEST(Recipe, RequiredKeys) {
  expect_error("output_dir: o\nlora_target_linear: true\ndatasets: [{path: d}]\n", {"required key 'base_model'"});
  expect_error("base_model: m\nlora_target_linear: true\ndatasets: [{path: d}]\n", {"required key 'output_dir'"});
  expect_error("base_model: m\noutput_dir: o\nlora_target_linear: true\n", {"required key 'datasets'"});
  expect_error("base_model: m\noutput_dir: o\nlora_target_linear: true\ndatasets: [{type: alpaca}]\n",
               {"datasets.0", "required key 'path'"});
  expect_error("base_model: m\noutput_dir: o\ndatasets: [{path: d}]\n", {"no LoRA targets"});
  expect_error("", {"required key 'base_model'"});
  // An evaluation-only recipe needs test_datasets instead of datasets.
  EXPECT_NO_THROW(parse_recipe_text("base_model: m\noutput_dir: o\nlora_target_linear: true\ntest_datasets: [{path: d}]\n"));
}

TEST(Recipe, YamlSyntaxErrorsGiveLineAndColumn) {
  expect_error("base_model: m\nlora_r: [1, 2\n", {"t.yaml:", "YAML syntax error"});
  expect_error("base_model: m\n  bad: indent\n", {"t.yaml:2:", "YAML syntax error"});
  expect_error("- a\n- b\n", {"a recipe is a mapping"});
}

TEST(Recipe, HashStability) {
  const std::string a =
      "base_model: m\noutput_dir: o\nlora_r: 16\nlora_target_modules: [q_proj, v_proj]\n"
      "rank_pattern: {x: 2, y: 3}\ndatasets:\n  - path: d\n    type: chat_template\n";
  const std::string reordered =
      "datasets:\n  - type: chat_template\n    path: d\nrank_pattern: {y: 3, x: 2}\n"
      "lora_target_modules: [q_proj, v_proj]\nlora_r: 16\noutput_dir: o\nbase_model: m\n";
  auto ha = parse_recipe_text(a).hash;
  EXPECT_EQ(ha, parse_recipe_text(reordered).hash);
  // Spelling out defaults changes nothing.
  EXPECT_EQ(ha, parse_recipe_text(a + "lora_dropout: 0.0\nlr_scheduler: cosine\nseed: 42\n").hash);
  // Different values, different hashes.
  EXPECT_NE(ha, parse_recipe_text(a, "t", {"lora_r=17"}).hash);
  EXPECT_NE(ha, parse_recipe_text(a, "t", {"datasets.0.path=e"}).hash);
  EXPECT_NE(ha, parse_recipe_text(a, "t", {"rank_pattern.x=5"}).hash);
  EXPECT_NE(ha, parse_recipe_text(a, "t", {"lora_target_modules=[v_proj, q_proj]"}).hash);
  // Operational keys do not change the training trajectory, so not the hash either.
  EXPECT_EQ(ha, parse_recipe_text(a, "t", {"output_dir=elsewhere", "resume_from_checkpoint=o/ckpt", "num_threads=3"}).hash);
  // Nor does activation checkpointing (bit-identical gradients): a run may resume with it toggled.
  EXPECT_EQ(ha, parse_recipe_text(a, "t", {"gradient_checkpointing=false"}).hash);
  // sha256 itself.
  EXPECT_EQ(graft::train::sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(graft::train::sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(graft::train::sha256_hex(std::string(1000, 'a')),
            "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3");
}

TEST(Recipe, PrintedYamlHasEveryKeyAndRoundTrips) {
  auto r = parse_recipe_text(kMinimal);
  const auto* d = graft::train::Recipe::descriptor();
  for (int i = 0; i < d->field_count(); ++i)
    EXPECT_NE(("\n" + r.text).find("\n" + d->field(i)->name() + ":"), std::string::npos) << d->field(i)->name();
  EXPECT_EQ(r.text, graft::train::recipe_to_yaml(r.proto));
  auto again = parse_recipe_text(r.text);
  EXPECT_EQ(again.hash, r.hash);
  EXPECT_EQ(again.text, r.text);
}

TEST(Recipe, TrickyStringsRoundTrip) {
  auto r = parse_recipe_text(std::string(kMinimal) +
                             "tokenizer: 'null'\n"
                             "eval_prompts: ['yes', 'a: b # c', '\"quoted\"', '', '8']\n"
                             "chat_template: |\n  {% for m in messages %}\n  {{ m.content }}\n  {% endfor %}\n");
  EXPECT_EQ(r.proto.tokenizer(), "null");
  ASSERT_EQ(r.proto.eval_prompts_size(), 5);
  auto again = parse_recipe_text(r.text);
  EXPECT_EQ(again.proto.tokenizer(), "null");
  for (int i = 0; i < 5; ++i) EXPECT_EQ(again.proto.eval_prompts(i), r.proto.eval_prompts(i));
  EXPECT_EQ(again.proto.chat_template(), r.proto.chat_template());
  EXPECT_EQ(again.hash, r.hash);
}

TEST(Recipe, EveryShippedRecipeValidates) {
  const fs::path dir = fs::path(GRAFT_SOURCE_DIR) / "recipes";
  int n = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().extension() != ".yaml") continue;
    ++n;
    SCOPED_TRACE(e.path().string());
    LoadedRecipe r;
    ASSERT_NO_THROW(r = load_recipe(e.path().string())) << e.path();
    EXPECT_FALSE(r.proto.base_model().empty());
    EXPECT_EQ(r.source, e.path().string());
    EXPECT_EQ(parse_recipe_text(r.text).hash, r.hash);
  }
  EXPECT_GE(n, 5);
  auto demo = load_recipe((dir / "demo.yaml").string());
  EXPECT_EQ(demo.proto.base_model(), "build/demo/base");
  EXPECT_EQ(demo.proto.sequence_len(), 128);
  EXPECT_EQ(demo.proto.lora_r(), 8);
  EXPECT_DOUBLE_EQ(demo.proto.learning_rate(), 2e-3);
  EXPECT_EQ(demo.proto.lr_scheduler(), "cosine");
  EXPECT_EQ(demo.proto.output_dir(), "build/demo/adapter");
  EXPECT_EQ(demo.proto.seed(), 1);
  ASSERT_EQ(demo.proto.test_datasets_size(), 1);
  EXPECT_EQ(demo.proto.test_datasets(0).path(), "build/demo/data/val.jsonl");
  auto qwen = load_recipe((dir / "qwen3-30b-a3b-qlora.yaml").string());
  EXPECT_EQ(qwen.proto.adapter(), "qlora");
  EXPECT_EQ(qwen.proto.lora_target_parameters_size(), 2);
}

TEST(Recipe, MissingFileIsAClearError) {
  try {
    load_recipe("/nonexistent/recipe.yaml");
    FAIL();
  } catch (const graft::Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/recipe.yaml"), std::string::npos);
  }
}
