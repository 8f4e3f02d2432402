// Unit tests of the Jinja subset: every feature on small templates (expected outputs produced by Jinja2
// and committed in data/features.json, so no Python is needed), the API (generation spans, named
// templates, special tokens), error reporting with template lines, and the immutable sandbox.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "graft/chat_template/chat_template.hpp"
#include "graft/error.hpp"

namespace ct = graft::chat_template;
namespace fs = std::filesystem;
using json = nlohmann::ordered_json;

namespace {

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string render(const std::string& src, const json& ctx = json::object()) {
  return ct::ChatTemplate(src).render_context(ctx, ct::make_date(2024, 7, 26)).text;
}

std::string error_of(const std::string& src, const json& ctx = json::object()) {
  try {
    render(src, ctx);
  } catch (const graft::Error& e) {
    return e.what();
  }
  return "<no error>";
}

}  // namespace

TEST(ChatTemplateFeatures, MatchJinja2Fixtures) {
  const fs::path data = fs::path(GRAFT_SOURCE_DIR) / "tests" / "core" / "chat_template" / "data" / "features.json";
  auto fx = json::parse(slurp(data));
  const json& ctx = fx["context"];
  int n = 0, errors = 0;
  for (auto& c : fx["cases"]) {
    const std::string id = c["id"].get<std::string>(), src = c["template"].get<std::string>();
    SCOPED_TRACE(id + ": " + src);
    std::string got, err;
    bool failed = false;
    try {
      got = ct::ChatTemplate(src).render_context(ctx, ct::make_date(2024, 7, 26)).text;
    } catch (const graft::Error& e) {
      failed = true;
      err = e.what();
    }
    ++n;
    if (c.contains("error")) {
      ++errors;
      EXPECT_TRUE(failed) << "Jinja2 raised " << c["error"].get<std::string>() << " (" << c["error_message"].get<std::string>()
                          << ") but graft rendered: " << got;
      const std::string kind = c["error"].get<std::string>();
      if (failed && c.contains("error_line") && (kind == "TemplateSyntaxError" || kind == "TemplateAssertionError")) {
        EXPECT_NE(err.find("line " + std::to_string(c["error_line"].get<int>())), std::string::npos) << err;
      }
      continue;
    }
    EXPECT_FALSE(failed) << err;
    EXPECT_EQ(got, c["expected"].get<std::string>());
  }
  EXPECT_GT(n, 80);
  EXPECT_GT(errors, 10);
}

TEST(ChatTemplateApi, GenerationSpans) {
  ct::ChatTemplate t(
      "{% for m in messages %}<{{ m.role }}>{% if m.role == 'assistant' %}{% generation %}{{ m.content }}</s>"
      "{% endgeneration %}{% else %}{{ m.content }}{% endif %}\n{% endfor %}");
  json msgs = json::parse(R"([{"role":"user","content":"hi"},{"role":"assistant","content":"hello"},
                              {"role":"user","content":"again"},{"role":"assistant","content":"sure 👍"}])");
  auto r = t.render(msgs);
  EXPECT_EQ(r.text, "<user>hi<assistant>hello</s><user>again<assistant>sure 👍</s>");  // trim_blocks ate the \n
  ASSERT_EQ(r.assistant_spans.size(), 2u);
  EXPECT_EQ(r.text.substr(r.assistant_spans[0].begin, r.assistant_spans[0].end - r.assistant_spans[0].begin), "hello</s>");
  EXPECT_EQ(r.text.substr(r.assistant_spans[1].begin, r.assistant_spans[1].end - r.assistant_spans[1].begin), "sure 👍</s>");
}

TEST(ChatTemplateApi, NamedTemplatesAndSpecialTokens) {
  json cfg = json::parse(R"({
    "bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": false},
    "eos_token": "</s>", "unk_token": null, "add_bos_token": true,
    "chat_template": [{"name": "default", "template": "D{{ bos_token }}{{ eos_token }}{{ unk_token }}{{ add_bos_token }}"},
                      {"name": "tool_use", "template": "T{{ tools | length }}{{ messages[0].content }}"}]})");
  auto d = ct::ChatTemplate::from_tokenizer_config_json(cfg);
  EXPECT_EQ(d.render(json::array()).text, "D<s></s>NoneTrue");
  auto tu = ct::ChatTemplate::from_tokenizer_config_json(cfg, "tool_use");
  ct::RenderOptions o;
  o.tools = json::parse(R"([{"type": "function"}])");
  EXPECT_EQ(tu.render(json::parse(R"([{"role":"user","content":"x"}])"), o).text, "T1x");
  EXPECT_THROW(ct::ChatTemplate::from_tokenizer_config_json(cfg, "nope"), graft::Error);
}

TEST(ChatTemplateApi, OptionsAndClock) {
  ct::ChatTemplate t("{{ add_generation_prompt }} {{ tools is defined }} {{ enable_thinking }} {{ strftime_now('%d %b %Y') }}");
  ct::RenderOptions o;
  o.add_generation_prompt = true;
  o.extra["enable_thinking"] = false;
  o.now = ct::make_date(2025, 2, 3);
  EXPECT_EQ(t.render(json::array(), o).text, "True False False 03 Feb 2025");
  o.tools = json();  // JSON null → None: defined
  EXPECT_EQ(t.render(json::array(), o).text, "True True False 03 Feb 2025");
}

TEST(ChatTemplateErrors, SyntaxErrorsCarryLineAndColumn) {
  std::string e = error_of("line one\n{% if x %}\n  {{ x + }}\n{% endif %}");
  EXPECT_NE(e.find("syntax error at line 3"), std::string::npos) << e;
  EXPECT_NE(e.find("{{ x + }}"), std::string::npos) << e;  // the offending template line is quoted
  e = error_of("a\nb\n{% for x in y %}never closed");
  EXPECT_NE(e.find("line 3"), std::string::npos) << e;
  EXPECT_NE(e.find("endfor"), std::string::npos) << e;
  e = error_of("{% endif %}");
  EXPECT_NE(e.find("unknown tag 'endif'"), std::string::npos) << e;
  e = error_of("x\n{{ y | no_such_filter }}");
  EXPECT_NE(e.find("line 2"), std::string::npos) << e;
  EXPECT_NE(e.find("No filter named 'no_such_filter'"), std::string::npos) << e;
}

TEST(ChatTemplateErrors, RuntimeErrorsCarryLine) {
  std::string e = error_of("ok\n\n{{ raise_exception('roles must alternate') }}");
  EXPECT_NE(e.find("raised an exception at line 3"), std::string::npos) << e;
  EXPECT_NE(e.find("roles must alternate"), std::string::npos) << e;
  e = error_of("{{ m.content }}\n{{ nothing.attr }}", json{{"m", {{"content", "x"}}}});
  EXPECT_NE(e.find("line 2"), std::string::npos) << e;
  EXPECT_NE(e.find("'nothing' is undefined"), std::string::npos) << e;
  e = error_of("{{ 'a' + 1 }}");
  EXPECT_NE(e.find("TypeError"), std::string::npos) << e;
  // an unknown filter inside an if branch fails only when the branch runs (Jinja2's soft frames)
  EXPECT_EQ(render("{% if false %}{{ x | no_such_filter }}{% endif %}ok"), "ok");
}

TEST(ChatTemplateErrors, SandboxForbidsMutation) {
  json ctx = {{"xs", {1, 2}}, {"d", {{"a", 1}}}};
  for (const char* src : {"{{ xs.append(3) }}", "{{ xs.pop() }}", "{{ d.update({'b': 2}) }}", "{{ d.clear() }}",
                          "{% set _ = xs.extend([1]) %}", "{{ d.setdefault('k', 1) }}"}) {
    std::string e = error_of(src, ctx);
    EXPECT_NE(e.find("SecurityError"), std::string::npos) << src << " → " << e;
    EXPECT_NE(e.find("unsafe"), std::string::npos) << e;
  }
  EXPECT_EQ(render("{{ xs.append }}|{{ ''.__class__ }}|{{ xs }}", ctx), "||[1, 2]");
  std::string e = error_of("{% set x = 1 %}{% set x.y = 2 %}");
  EXPECT_NE(e.find("non-namespace"), std::string::npos) << e;
}

TEST(ChatTemplateSemantics, ScopingAndLoops) {
  EXPECT_EQ(render("{% set x = 1 %}{% for i in [1, 2] %}{{ x }}{% set x = i * 10 %}{{ x }}{% endfor %}|{{ x }}"), "110120|1");
  EXPECT_EQ(render("{% set ns = namespace(n=0) %}{% for i in range(4) %}{% set ns.n = ns.n + i %}{% endfor %}{{ ns.n }}"), "6");
  EXPECT_EQ(render("{% for x in [1, 2, 3] if x != 2 %}{{ loop.index }}{{ x }}{{ loop.last }} {% endfor %}"), "11False 23True ");
  EXPECT_EQ(render("{% for k, v in {'a': 1, 'b': [2]}.items() %}{{ k }}{{ v }}{% endfor %}"), "a1b[2]");
  EXPECT_EQ(render("{% for x in [] %}x{% else %}empty{% endfor %}"), "empty");
  EXPECT_EQ(render("{% for x in [1, 2, 3, 4] %}{% if x is even %}{% continue %}{% endif %}{% if x > 2 %}{% break %}{% endif %}{{ x }}{% endfor %}"),
            "1");
}

TEST(ChatTemplateSemantics, PythonValueFormatting) {
  EXPECT_EQ(render("{{ 1.0 }} {{ 1e16 }} {{ 0.0001 }} {{ 1e-5 }} {{ 3 / 2 }} {{ 4 / 2 }} {{ -7 // 2 }} {{ -7 % 3 }}"),
            "1.0 1e+16 0.0001 1e-05 1.5 2.0 -4 2");
  EXPECT_EQ(render("{{ [1, 'a', none, true, 2.5] }} {{ {'k': \"it's\"} }} {{ ('x',) }}"),
            "[1, 'a', None, True, 2.5] {'k': \"it's\"} ('x',)");
  EXPECT_EQ(render("{{ x | tojson }}", json{{"x", json::parse(R"({"b": 1.0, "a": "é\n", "c": [true, null]})")}}),
            R"({"b": 1.0, "a": "é\n", "c": [true, null]})");
  EXPECT_EQ(render("{{ x | tojson(indent=2, sort_keys=true) }}", json{{"x", json::parse(R"({"b": 1, "a": []})")}}),
            "{\n  \"a\": [],\n  \"b\": 1\n}");
}

TEST(ChatTemplateSemantics, WhitespaceControl) {
  // trim_blocks removes the newline after a block tag; lstrip_blocks strips indentation before it.
  EXPECT_EQ(render("<\n  {% if true %}\n  x\n  {% endif %}\n>"), "<\n  x\n>");
  EXPECT_EQ(render("a  {{- ' b ' -}}  c"), "a b c");
  EXPECT_EQ(render("x {%+ if true %}y{% endif +%}\nz"), "x y\nz");
  EXPECT_EQ(render("trailing newline dropped\n"), "trailing newline dropped");
}
