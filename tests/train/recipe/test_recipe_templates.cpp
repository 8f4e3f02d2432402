// Named chat templates (chat_template: llama3, qwen3, ...) and how a recipe's chat_template /
// chat_template_jinja / special_tokens resolve against a tokenizer (graft/train/chat_templates.hpp).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "graft/error.hpp"
#include "graft/model/presets.hpp"
#include "graft/train/chat_templates.hpp"

namespace fs = std::filesystem;
using graft::chat_template::ChatTemplate;
using graft::chat_template::RenderOptions;
using graft::train::named_chat_template_source;
using graft::train::parse_recipe_text;
using graft::train::recipe_chat_template;

namespace {

const nlohmann::ordered_json kChat = nlohmann::ordered_json::parse(R"([
  {"role": "system", "content": "Be brief."},
  {"role": "user", "content": "Hi there"},
  {"role": "assistant", "content": "Hello!"},
  {"role": "user", "content": "2+2?"},
  {"role": "assistant", "content": "<think>\nadd\n</think>\n\n4"}
])");

std::string render(const std::string& name, const nlohmann::ordered_json& msgs, bool gen = false,
                   const std::string& bos = "<s>", const std::string& eos = "</s>") {
  ChatTemplate t(named_chat_template_source(name), name);
  t.variables()["bos_token"] = bos;
  t.variables()["eos_token"] = eos;
  RenderOptions o;
  o.add_generation_prompt = gen;
  return t.render(msgs, o).text;
}

std::string assets() { return std::string(GRAFT_SOURCE_DIR) + "/../shared/assets"; }

// A tokenizer directory with graft's tiny byte-level tokenizer; `with_template` keeps its ChatML template.
std::string tiny_tokenizer_dir(const std::string& name, bool with_template) {
  const fs::path d = fs::temp_directory_path() / (name + "_" + std::to_string(::getpid()));
  fs::create_directories(d);
  std::ofstream(d / "tokenizer.json") << graft::model::tiny_tokenizer_json().dump();
  auto cfg = graft::model::tiny_tokenizer_config();
  if (!with_template) cfg.erase("chat_template");
  std::ofstream(d / "tokenizer_config.json") << cfg.dump();
  return d.string();
}

const std::string kRecipe = "base_model: m\noutput_dir: o\nlora_target_linear: true\ndatasets: [{path: d}]\n";

}  // namespace

TEST(RecipeTemplates, NamedTemplatesRenderTheirFormats) {
  const auto two = nlohmann::ordered_json::parse(R"([{"role":"user","content":" Hi "},{"role":"assistant","content":"Yo"}])");
  EXPECT_EQ(render("chatml", two, true), "<|im_start|>user\n Hi <|im_end|>\n<|im_start|>assistant\nYo<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(render("llama3", two, true, "<|begin_of_text|>"),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant"
            "<|end_header_id|>\n\nYo<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
  EXPECT_EQ(render("llama4", two, false, "<|begin_of_text|>"),
            "<|begin_of_text|><|header_start|>user<|header_end|>\n\nHi<|eot|><|header_start|>assistant<|header_end|>\n\nYo<|eot|>");
  EXPECT_EQ(render("deepseek_v2", two, true, "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
            "<｜begin▁of▁sentence｜>User:  Hi \n\nAssistant: Yo<｜end▁of▁sentence｜>Assistant:");
  EXPECT_EQ(render("qwen_25", two), "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
                                    "assistant.<|im_end|>\n<|im_start|>user\n Hi <|im_end|>\n<|im_start|>assistant\nYo<|im_end|>\n");
  // Qwen3 keeps the reasoning of the turn after the last user turn only, and always shows that turn's block.
  EXPECT_EQ(render("qwen3", kChat),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
            "Hello!<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n<think>\nadd\n</think>\n\n4<|im_end|>\n");
  EXPECT_EQ(render("deepseek_v3", kChat, false, "<B>"),
            "<B>Be brief.<｜User｜>Hi there<｜Assistant｜>Hello!<｜end▁of▁sentence｜><｜User｜>2+2?<｜Assistant｜><think>\nadd\n"
            "</think>\n\n4<｜end▁of▁sentence｜>");
  EXPECT_EQ(named_chat_template_source("gemma"), "");
}

// The named templates render tool-free conversations exactly like the real tokenizers' own templates.
TEST(RecipeTemplates, NamedTemplatesMatchTheRealTokenizers) {
  if (!fs::exists(assets() + "/tokenizers/qwen3/tokenizer_config.json"))
    GTEST_SKIP() << "../shared/assets is absent: real tokenizer templates not compared";
  const auto two = nlohmann::ordered_json::parse(R"([{"role":"user","content":"Hi"},{"role":"assistant","content":"Yo"}])");
  const auto sys = nlohmann::ordered_json::parse(
      R"([{"role":"system","content":"S"},{"role":"user","content":"A"},{"role":"assistant","content":"B"},{"role":"user","content":"C"}])");
  for (const auto& [name, dir] : std::vector<std::pair<std::string, std::string>>{
           {"qwen3", "qwen3"}, {"qwen_25", "qwen2_5"}, {"llama3", "llama3_1"}, {"deepseek_v3", "deepseek_v3"}}) {
    SCOPED_TRACE(name);
    const std::string d = assets() + "/tokenizers/" + dir;
    ChatTemplate real = ChatTemplate::from_tokenizer_config(d);
    ChatTemplate mine(named_chat_template_source(name), name);
    for (const auto& [k, v] : real.variables().items()) mine.variables()[k] = v;
    for (const auto* msgs : {&kChat, &two, &sys})
      for (bool gen : {false, true}) {
        RenderOptions o;
        o.add_generation_prompt = gen;
        EXPECT_EQ(mine.render(*msgs, o).text, real.render(*msgs, o).text) << msgs->dump() << " gen=" << gen;
      }
    if (name == "qwen3") {
      RenderOptions o;
      o.add_generation_prompt = true;
      o.extra["enable_thinking"] = false;
      EXPECT_EQ(mine.render(two, o).text, real.render(two, o).text);
    }
  }
}

TEST(RecipeTemplates, RecipeChoosesTheTemplate) {
  const std::string with = tiny_tokenizer_dir("graft_tpl_with", true), without = tiny_tokenizer_dir("graft_tpl_without", false);
  auto tw = graft::tokenizer::Tokenizer::from_file(with);
  auto two = graft::tokenizer::Tokenizer::from_file(without);
  const auto msgs = nlohmann::ordered_json::parse(R"([{"role":"user","content":"Hi"}])");
  auto text = [&](const std::string& extra, const graft::tokenizer::Tokenizer& tok, const std::string& dir) -> std::string {
    auto t = recipe_chat_template(parse_recipe_text(kRecipe + extra).proto, tok, dir);
    return t ? t->render(msgs).text : std::string("<none>");
  };
  const std::string chatml = "<|im_start|>user\nHi<|im_end|>\n";
  // tokenizer_default: the tokenizer's own, or none.
  EXPECT_EQ(text("", tw, with), chatml);
  EXPECT_EQ(text("", two, without), "<none>");
  // A named template replaces the tokenizer's own (as in Axolotl).
  EXPECT_EQ(text("chat_template: deepseek_v2\n", tw, with), "User: Hi\n\n");
  // tokenizer_default_fallback_<name>: the tokenizer's when it has one, else <name>.
  EXPECT_EQ(text("chat_template: tokenizer_default_fallback_deepseek_v2\n", tw, with), chatml);
  EXPECT_EQ(text("chat_template: tokenizer_default_fallback_deepseek_v2\n", two, without), "User: Hi\n\n");
  // Inline Jinja and chat_template_jinja (inline or a file).
  EXPECT_EQ(text("chat_template: '{% for m in messages %}[{{ m.content }}]{% endfor %}'\n", two, without), "[Hi]");
  const fs::path jf = fs::path(without) / "t.jinja";
  std::ofstream(jf) << "{{ eos_token }}{% for m in messages %}<{{ m.content }}>{% endfor %}";
  EXPECT_EQ(text("chat_template_jinja: " + jf.string() + "\n", two, without), "<|im_end|><Hi>");
  // special_tokens become the template's variables.
  EXPECT_EQ(text("chat_template_jinja: " + jf.string() + "\nspecial_tokens: {eos_token: <|endoftext|>}\n", two, without),
            "<|endoftext|><Hi>");
  EXPECT_THROW(text("chat_template_jinja: /nonexistent/t.jinja\n", two, without), graft::Error);
  fs::remove_all(with);
  fs::remove_all(without);
}

TEST(RecipeTemplates, SpecialTokensMustBeInTheVocabulary) {
  const std::string dir = tiny_tokenizer_dir("graft_tpl_special", true);
  auto tok = graft::tokenizer::Tokenizer::from_file(dir);
  auto problems = [&](const std::string& extra, bool has_template) {
    return graft::train::special_token_problems(parse_recipe_text(kRecipe + extra).proto, tok, has_template);
  };
  EXPECT_TRUE(problems("special_tokens: {pad_token: <|endoftext|>, eos_token: <|im_end|>}\n", true).empty());
  auto p = problems("special_tokens: {pad_token: <|end_of_text|>}\n", true);
  ASSERT_EQ(p.size(), 1u);
  EXPECT_NE(p[0].find("special_tokens.pad_token '<|end_of_text|>' is not a token of the tokenizer"), std::string::npos) << p[0];
  EXPECT_NE(p[0].find("fix:"), std::string::npos);
  // A different EOS is honoured through the template; a completion dataset would not see it.
  EXPECT_TRUE(problems("special_tokens: {eos_token: <|endoftext|>}\n", true).empty());
  auto c = graft::train::special_token_problems(
      parse_recipe_text("base_model: m\noutput_dir: o\nlora_target_linear: true\ndatasets: [{path: d, type: completion}]\n"
                        "special_tokens: {eos_token: <|endoftext|>}\n")
          .proto,
      tok, true);
  ASSERT_EQ(c.size(), 1u);
  EXPECT_NE(c[0].find("type completion"), std::string::npos) << c[0];
  fs::remove_all(dir);
}
