// Parser: tokens → AST, following jinja2/parser.py's grammar and operator precedence.
#pragma once

#include <string_view>

#include "graft/chat_template/ast.hpp"
#include "graft/chat_template/lexer.hpp"

namespace graft::chat_template {

// Throws TemplateError("TemplateSyntaxError", ..., line, col).
Body parse_template(std::string_view source, const LexOptions& opt = {});

// Jinja2's compile-time check: an unknown filter or test outside `if` statements and conditional
// expressions is a TemplateAssertionError before rendering (inside them it fails only when evaluated).
void check_filters_and_tests(const Body& body);

}  // namespace graft::chat_template
