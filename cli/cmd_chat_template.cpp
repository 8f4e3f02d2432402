// `graft chat-template DIR --messages FILE.json [--add-generation-prompt] [--tools FILE.json]
//                        [--template-name NAME] [--set key=json ...] [--now YYYY-MM-DD] [--spans]`
// Renders a conversation with the model's chat template (tokenizer_config.json in DIR) exactly as
// Jinja2/transformers would, and prints the text to stdout with no newline added.
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <memory>

#include "command.hpp"
#include "graft/chat_template/chat_template.hpp"
#include "graft/error.hpp"
#include "graft/mmap_file.hpp"

namespace {

nlohmann::ordered_json read_json(const std::string& path, const char* what) {
  try {
    return nlohmann::ordered_json::parse(graft::read_text_file(path));
  } catch (const nlohmann::json::exception& e) {
    GRAFT_FAIL("pass a valid JSON file", "{} file '{}' is not valid JSON: {}", what, path, e.what());
  }
}

struct Opts {
  std::string dir, messages, tools, template_name = "default";
  std::string now;
  bool add_generation_prompt = false, spans = false;
  std::vector<std::string> sets;
};

graft::cli::Registration reg{"chat-template", 40, [](CLI::App& app) {
  auto o = std::make_shared<Opts>();
  auto* sub = app.add_subcommand("chat-template", "Render a conversation with a model's chat template (Jinja2-exact)");
  sub->add_option("dir", o->dir, "Model directory holding tokenizer_config.json (or the file itself)")->required();
  sub->add_option("--messages", o->messages, "JSON file with the list of messages")->required();
  sub->add_flag("--add-generation-prompt", o->add_generation_prompt, "Append the assistant turn header");
  sub->add_option("--tools", o->tools, "JSON file with the list of tool definitions");
  sub->add_option("--template-name", o->template_name, "Named template to use when the config has several (default, tool_use, ...)");
  sub->add_option("--set", o->sets, "Extra template variable as key=JSON, e.g. --set enable_thinking=false (repeatable)");
  sub->add_option("--now", o->now, "Fix strftime_now()'s clock to a date YYYY-MM-DD (default: the local time)");
  sub->add_flag("--spans", o->spans, "Print the {% generation %} byte spans as JSON on stderr");
  sub->callback([o] {
    auto tpl = graft::chat_template::ChatTemplate::from_tokenizer_config(o->dir, o->template_name);
    auto messages = read_json(o->messages, "--messages");
    GRAFT_CHECK_FIX(messages.is_array(), "the messages file must hold a JSON array of {role, content} objects",
                    "--messages file '{}' is not a JSON array", o->messages);
    graft::chat_template::RenderOptions ro;
    ro.add_generation_prompt = o->add_generation_prompt;
    if (!o->tools.empty()) ro.tools = read_json(o->tools, "--tools");
    for (auto& s : o->sets) {
      auto eq = s.find('=');
      GRAFT_CHECK_FIX(eq != std::string::npos && eq > 0, "write --set key=json, e.g. --set enable_thinking=false",
                      "--set '{}' is not key=value", s);
      std::string key = s.substr(0, eq), val = s.substr(eq + 1);
      try {
        ro.extra[key] = nlohmann::ordered_json::parse(val);
      } catch (const nlohmann::json::exception&) {
        GRAFT_FAIL("quote strings as JSON, e.g. --set date_string='\"26 Jul 2024\"'", "--set {}: value '{}' is not JSON", key, val);
      }
    }
    if (!o->now.empty()) {
      int y = 0, m = 0, d = 0;
      GRAFT_CHECK_FIX(std::sscanf(o->now.c_str(), "%d-%d-%d", &y, &m, &d) == 3 && m >= 1 && m <= 12 && d >= 1 && d <= 31,
                      "write the date as YYYY-MM-DD, e.g. --now 2024-07-26", "--now '{}' is not a date", o->now);
      ro.now = graft::chat_template::make_date(y, m, d);
    }
    auto r = tpl.render(messages, ro);
    std::fwrite(r.text.data(), 1, r.text.size(), stdout);
    std::fflush(stdout);
    if (o->spans) {
      nlohmann::json spans = nlohmann::json::array();
      for (auto& sp : r.assistant_spans) spans.push_back({sp.begin, sp.end});
      std::fprintf(stderr, "%s\n", spans.dump().c_str());
    }
  });
}};

}  // namespace
