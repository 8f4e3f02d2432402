// graft::chat_template — Hugging Face chat templates rendered exactly like Jinja2.
//
//   auto tpl = ChatTemplate::from_tokenizer_config("models/qwen3");          // dir or tokenizer_config.json
//   RenderOptions o; o.add_generation_prompt = true; o.extra["enable_thinking"] = false;
//   Rendered r = tpl.render(messages_json, o);   // r.text, r.assistant_spans
//
// Semantics are those of transformers' environment: ImmutableSandboxedEnvironment(trim_blocks=True,
// lstrip_blocks=True, loopcontrols), tojson = json.dumps(ensure_ascii=False, ...), raise_exception,
// strftime_now, special tokens (`*_token` keys of tokenizer_config.json) as variables.
// See docs/chat_templates.md for the supported subset.
#pragma once

#include <ctime>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace graft::chat_template {

struct Stmt;

struct RenderOptions {
  bool add_generation_prompt = false;
  // Tool definitions; absent = `tools` undefined in the template (like render_chat.py); JSON null = None.
  std::optional<nlohmann::ordered_json> tools;
  // Extra template variables (enable_thinking, date_string, custom_tools, ...). They override the
  // special tokens of the same name.
  nlohmann::ordered_json extra = nlohmann::ordered_json::object();
  // Clock of strftime_now(); empty = the local time now.
  std::optional<std::tm> now;
};

// A byte range [begin, end) of Rendered::text.
struct Span {
  size_t begin = 0, end = 0;
  bool operator==(const Span&) const = default;
};

struct Rendered {
  std::string text;
  std::vector<Span> assistant_spans;  // the {% generation %} ... {% endgeneration %} blocks, in order
};

// std::tm for a calendar date at 00:00:00 (weekday and day of year filled in).
std::tm make_date(int year, int month, int day);

class ChatTemplate {
 public:
  // Parses `source`; throws graft::Error naming `name` and the line/column of a syntax error.
  explicit ChatTemplate(std::string source, std::string name = "chat_template");
  ~ChatTemplate();
  ChatTemplate(ChatTemplate&&) noexcept;
  ChatTemplate& operator=(ChatTemplate&&) noexcept;

  // `path` is a model directory holding tokenizer_config.json, or the file itself. `template_name`
  // picks one of a list of named templates ("default", "tool_use", ...). The special tokens
  // (bos_token, eos_token, ... including AddedToken dicts) become template variables.
  static ChatTemplate from_tokenizer_config(const std::string& path, const std::string& template_name = "default");
  static ChatTemplate from_tokenizer_config_json(const nlohmann::ordered_json& config,
                                                 const std::string& template_name = "default",
                                                 const std::string& origin = "tokenizer_config.json");

  // Renders a conversation (a JSON array of message objects). Throws graft::Error with the template
  // line for raise_exception(), undefined attribute access, type errors and sandbox violations.
  Rendered render(const nlohmann::ordered_json& messages, const RenderOptions& options = {}) const;

  // Renders with exactly these template variables (no messages/add_generation_prompt added); the
  // tokenizer_config special tokens are not added either.
  Rendered render_context(const nlohmann::ordered_json& context, std::optional<std::tm> now = std::nullopt) const;

  const std::string& source() const { return source_; }
  const std::string& name() const { return name_; }
  // Template variables bound before the context (special tokens from tokenizer_config.json).
  nlohmann::ordered_json& variables() { return variables_; }

 private:
  std::string source_, name_;
  std::shared_ptr<const std::vector<std::unique_ptr<Stmt>>> body_;
  nlohmann::ordered_json variables_ = nlohmann::ordered_json::object();
};

}  // namespace graft::chat_template
