// Lexer: template source → tokens, following Jinja2 3.1's lexer exactly for whitespace control
// (`-` and `+` markers, trim_blocks, lstrip_blocks, one trailing newline dropped, newlines → "\n").
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace graft::chat_template {

enum class Tok : uint8_t { Data, VarBegin, VarEnd, BlockBegin, BlockEnd, Name, String, Int, Float, Op, Eof };

struct Token {
  Tok type;
  std::string text;  // data / name / unescaped string / operator
  int64_t ival = 0;
  double fval = 0;
  int line = 1, col = 1;
};

struct LexOptions {
  bool trim_blocks = true;
  bool lstrip_blocks = true;
  bool keep_trailing_newline = false;
};

// Throws TemplateError("TemplateSyntaxError", ..., line, col) on malformed input.
std::vector<Token> tokenize(std::string_view source, const LexOptions& opt = {});

}  // namespace graft::chat_template
