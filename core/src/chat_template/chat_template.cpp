// ChatTemplate: loading from tokenizer_config.json, rendering, and mapping TemplateError → graft::Error.
#include "graft/chat_template/chat_template.hpp"

#include <fmt/format.h>

#include <filesystem>

#include "graft/chat_template/builtins.hpp"
#include "graft/chat_template/interpreter.hpp"
#include "graft/chat_template/parser.hpp"
#include "graft/error.hpp"
#include "graft/mmap_file.hpp"

namespace graft::chat_template {
namespace {

std::string source_line(const std::string& src, int line) {
  int l = 1;
  size_t b = 0;
  for (size_t k = 0; k < src.size() && l < line; ++k)
    if (src[k] == '\n') {
      ++l;
      b = k + 1;
    }
  if (l != line) return {};
  size_t e = src.find('\n', b);
  std::string s = src.substr(b, e == std::string::npos ? std::string::npos : e - b);
  if (s.size() > 200) s = s.substr(0, 200) + "...";
  return s;
}

[[noreturn]] void rethrow(const TemplateError& e, const std::string& name, const std::string& src, bool parsing) {
  std::string where = e.line > 0 ? fmt::format("line {}{}", e.line, e.col > 0 ? fmt::format(", column {}", e.col) : "") : "unknown line";
  std::string excerpt = e.line > 0 ? source_line(src, e.line) : "";
  if (!excerpt.empty()) excerpt = "\n    " + excerpt;
  if (e.kind == "raise_exception")
    GRAFT_FAIL("the template rejected this conversation; change the messages or options it complains about",
               "chat template '{}' raised an exception at {}: {}{}", name, where, e.what(), excerpt);
  if (parsing)
    GRAFT_FAIL("fix the template syntax (graft supports the Jinja subset in docs/chat_templates.md)",
               "chat template '{}' has a syntax error at {}: {}{}", name, where, e.what(), excerpt);
  GRAFT_FAIL("check the messages/options against what the template expects (docs/chat_templates.md)",
             "chat template '{}' failed at {}: {}: {}{}", name, where, e.kind, e.what(), excerpt);
}

}  // namespace

std::tm make_date(int year, int month, int day) {
  std::tm tm{};
  tm.tm_year = year - 1900;
  tm.tm_mon = month - 1;
  tm.tm_mday = day;
  std::time_t t = timegm(&tm);
  std::tm out{};
  gmtime_r(&t, &out);
  return out;
}

ChatTemplate::ChatTemplate(std::string source, std::string name) : source_(std::move(source)), name_(std::move(name)) {
  try {
    auto body = std::make_shared<Body>(parse_template(source_));
    check_filters_and_tests(*body);
    body_ = std::move(body);
  } catch (const TemplateError& e) {
    rethrow(e, name_, source_, true);
  }
}
ChatTemplate::~ChatTemplate() = default;
ChatTemplate::ChatTemplate(ChatTemplate&&) noexcept = default;
ChatTemplate& ChatTemplate::operator=(ChatTemplate&&) noexcept = default;

ChatTemplate ChatTemplate::from_tokenizer_config(const std::string& path, const std::string& template_name) {
  std::string file = path;
  if (std::filesystem::is_directory(path)) file = (std::filesystem::path(path) / "tokenizer_config.json").string();
  GRAFT_CHECK_FIX(std::filesystem::exists(file), "pass a Hugging Face model directory or its tokenizer_config.json",
                  "no tokenizer_config.json at '{}'", path);
  nlohmann::ordered_json cfg;
  try {
    cfg = nlohmann::ordered_json::parse(read_text_file(file));
  } catch (const nlohmann::json::exception& e) {
    GRAFT_FAIL("repair or re-download the file", "'{}' is not valid JSON: {}", file, e.what());
  }
  return from_tokenizer_config_json(cfg, template_name, file);
}

ChatTemplate ChatTemplate::from_tokenizer_config_json(const nlohmann::ordered_json& cfg, const std::string& template_name,
                                                      const std::string& origin) {
  GRAFT_CHECK_FIX(cfg.is_object() && cfg.contains("chat_template"),
                  "use a tokenizer_config.json that has a chat_template (or pass the template explicitly)",
                  "'{}' has no chat_template", origin);
  const auto& t = cfg["chat_template"];
  std::string src, name = template_name;
  if (t.is_string()) {
    GRAFT_CHECK_FIX(template_name == "default", "omit --template-name: this config has a single template",
                    "'{}' has a single chat template; no template named '{}'", origin, template_name);
    src = t.get<std::string>();
  } else {
    GRAFT_CHECK_FIX(t.is_array(), "chat_template must be a string or a list of {name, template}",
                    "'{}': chat_template is neither a string nor a list", origin);
    std::vector<std::string> names;
    bool found = false;
    for (auto& x : t) {
      if (!x.is_object() || !x.contains("name") || !x.contains("template")) continue;
      names.push_back(x["name"].get<std::string>());
      if (names.back() == template_name) {
        src = x["template"].get<std::string>();
        found = true;
      }
    }
    GRAFT_CHECK_FIX(found, fmt::format("pick one of: {}", fmt::join(names, ", ")), "'{}' has no chat template named '{}'",
                    origin, template_name);
  }
  ChatTemplate tpl(std::move(src), fmt::format("{}:{}", origin, name));
  for (auto& [k, v] : cfg.items()) {
    if (k.size() < 6 || k.compare(k.size() - 6, 6, "_token") != 0) continue;
    tpl.variables_[k] = (v.is_object() && v.contains("content")) ? v["content"] : v;
  }
  return tpl;
}

Rendered ChatTemplate::render(const nlohmann::ordered_json& messages, const RenderOptions& o) const {
  GRAFT_CHECK_FIX(o.extra.is_object() || o.extra.is_null(), "pass extra variables as a JSON object",
                  "extra template variables must be an object");
  nlohmann::ordered_json ctx = variables_;
  ctx["messages"] = messages;
  ctx["add_generation_prompt"] = o.add_generation_prompt;
  if (o.tools) ctx["tools"] = *o.tools;
  if (o.extra.is_object())
    for (auto& [k, v] : o.extra.items()) ctx[k] = v;
  return render_context(ctx, o.now);
}

Rendered ChatTemplate::render_context(const nlohmann::ordered_json& context, std::optional<std::tm> now) const {
  GRAFT_CHECK_FIX(context.is_object(), "pass the template variables as a JSON object", "render context must be a JSON object");
  auto root = std::make_shared<Scope>();
  Dict g;
  add_globals(g, now);
  for (auto& [k, v] : g.items) root->vars[k.s()] = v;
  auto ctx = std::make_shared<Scope>();
  ctx->parent = root;
  for (auto& [k, v] : context.items()) ctx->vars[k] = from_json(v);
  Rendered r;
  try {
    RenderResult res = render_body(*body_, ctx);
    r.text = std::move(res.text);
    for (auto& [b, e] : res.generation_spans) r.assistant_spans.push_back(Span{b, e});
  } catch (const TemplateError& e) {
    rethrow(e, name_, source_, false);
  }
  return r;
}

}  // namespace graft::chat_template
