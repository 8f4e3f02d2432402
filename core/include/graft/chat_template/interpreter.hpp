// Interpreter: executes a parsed template (Body) against a root variable scope, producing the text
// and the byte spans of {% generation %} blocks.
#pragma once

#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "graft/chat_template/ast.hpp"

namespace graft::chat_template {

struct Scope {
  std::unordered_map<std::string, Value> vars;
  std::shared_ptr<Scope> parent;
  const Value* lookup(const std::string& name) const;
};

struct RenderResult {
  std::string text;
  std::vector<std::pair<size_t, size_t>> generation_spans;  // [begin, end) byte offsets into text
};

// Renders `body` with the given root scope (globals + context variables). Throws TemplateError with the
// line/column of the failing node.
RenderResult render_body(const Body& body, std::shared_ptr<Scope> root);

}  // namespace graft::chat_template
