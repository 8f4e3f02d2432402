// Lexer mirroring jinja2/lexer.py (3.1): root data scanning with OptionalLStrip, comment/raw handling,
// block and variable tag rules with the bracket balancing stack.
#include "graft/chat_template/lexer.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>

#include "graft/chat_template/strings.hpp"
#include "graft/chat_template/value.hpp"

namespace graft::chat_template {
namespace {

struct Lexer {
  std::string src;
  LexOptions opt;
  size_t pos = 0;
  std::vector<Token> out;
  bool line_starting = true;

  [[noreturn]] void fail(const std::string& msg, size_t at) {
    auto [l, c] = line_col(at);
    throw TemplateError("TemplateSyntaxError", msg, l, c);
  }
  std::vector<size_t> line_starts{0};  // byte offset of each line start, filled once
  std::pair<int, int> line_col(size_t at) const {
    auto it = std::upper_bound(line_starts.begin(), line_starts.end(), at);
    size_t line = static_cast<size_t>(it - line_starts.begin());  // 1-based
    return {static_cast<int>(line), static_cast<int>(at - line_starts[line - 1] + 1)};
  }
  void emit(Tok t, std::string text, size_t at) {
    Token k;
    k.type = t;
    k.text = std::move(text);
    auto [l, c] = line_col(at);
    k.line = l;
    k.col = c;
    out.push_back(std::move(k));
  }

  // Python's \s at position p (unicode whitespace); returns byte length or 0.
  size_t space_at(size_t p) const {
    if (p >= src.size()) return 0;
    unsigned char c = static_cast<unsigned char>(src[p]);
    if (c < 0x80) return str::py_isspace(c) ? 1 : 0;
    size_t len = (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 1;
    auto cps = str::decode(std::string_view(src).substr(p, len));
    return (cps.size() == 1 && str::py_isspace(cps[0])) ? len : 0;
  }
  size_t skip_space(size_t p) const {
    while (size_t n = space_at(p)) p += n;
    return p;
  }
  bool at(size_t p, std::string_view s) const { return src.compare(p, s.size(), s) == 0; }

  // Applies OptionalLStrip to the text before a tag and emits it.
  void emit_data(std::string text, size_t text_at, char sign, bool is_variable) {
    if (sign == '-') {
      text = str::strip(text, nullptr, false, true);
    } else if (sign != '+' && opt.lstrip_blocks && !is_variable) {
      size_t nl = text.rfind('\n');
      size_t l_pos = nl == std::string::npos ? 0 : nl + 1;
      if (l_pos > 0 || line_starting) {
        std::string_view tail = std::string_view(text).substr(l_pos);
        bool all_ws = !tail.empty();
        for (char32_t c : str::decode(tail))
          if (!str::py_isspace(c)) all_ws = false;
        if (all_ws) text.resize(l_pos);
      }
    }
    if (!text.empty()) emit(Tok::Data, std::move(text), text_at);
  }

  // Block end at p: returns end position or npos.
  size_t block_end(size_t p) const {
    if (at(p, "+%}")) return p + 3;
    if (at(p, "-%}")) return skip_space(p + 3);
    if (at(p, "%}")) return p + 2 + ((opt.trim_blocks && at(p + 2, "\n")) ? 1 : 0);
    return std::string::npos;
  }

  void run() {
    while (pos < src.size()) {
      // earliest tag start
      size_t t = pos;
      char kind = 0;
      for (; t + 1 < src.size(); ++t)
        if (src[t] == '{' && (src[t + 1] == '{' || src[t + 1] == '%' || src[t + 1] == '#')) {
          kind = src[t + 1];
          break;
        }
      if (!kind) {
        emit(Tok::Data, src.substr(pos), pos);
        return;
      }
      std::string text = src.substr(pos, t - pos);
      size_t p = t + 2;
      // raw block?
      if (kind == '%') {
        size_t q = p;
        char rsign = 0;
        if (at(q, "-") || at(q, "+")) rsign = src[q++];
        q = skip_space(q);
        if (at(q, "raw")) {
          size_t r = skip_space(q + 3);
          // {%(-|+|)\s*raw\s*(?:-%}\s*|%})  (no trim_blocks suffix on the raw opener, as in Jinja2)
          size_t e = std::string::npos;
          if (at(r, "-%}")) e = skip_space(r + 3);
          else if (at(r, "%}")) e = r + 2;
          if (e != std::string::npos) {
            emit_data(text, pos, rsign, false);
            line_starting = e > 0 && src[e - 1] == '\n';
            lex_raw(e);
            continue;
          }
        }
      }
      char sign = (p < src.size() && (src[p] == '-' || src[p] == '+')) ? src[p] : 0;
      emit_data(text, pos, sign, kind == '{');
      line_starting = false;
      if (sign) ++p;
      if (kind == '#') {
        size_t q = p;
        size_t e = std::string::npos;
        for (; q < src.size(); ++q) {
          if (at(q, "+#}")) { e = q + 3; break; }
          if (at(q, "-#}")) { e = skip_space(q + 3); break; }
          if (at(q, "#}")) { e = q + 2 + ((opt.trim_blocks && at(q + 2, "\n")) ? 1 : 0); break; }
        }
        if (e == std::string::npos) fail("Missing end of comment tag", t);
        line_starting = e > 0 && src[e - 1] == '\n';
        pos = e;
        continue;
      }
      emit(kind == '%' ? Tok::BlockBegin : Tok::VarBegin, "", t);
      pos = lex_tag(p, kind == '%', t);
    }
  }

  void lex_raw(size_t p) {
    // (.*?)({%(-|+|)\s*endraw\s*(+%}|-%}\s*|%}\n?))
    for (size_t q = p; q + 1 < src.size(); ++q) {
      if (!at(q, "{%")) continue;
      size_t r = q + 2;
      char sign = 0;
      if (at(r, "-") || at(r, "+")) sign = src[r++];
      r = skip_space(r);
      if (!at(r, "endraw")) continue;
      r = skip_space(r + 6);
      size_t e = block_end(r);
      if (e == std::string::npos) continue;
      emit_data(src.substr(p, q - p), p, sign, false);
      line_starting = src[e - 1] == '\n';
      pos = e;
      return;
    }
    fail("Missing end of raw directive", p);
  }

  size_t lex_tag(size_t p, bool block, size_t start) {
    std::vector<char> balance;
    while (true) {
      if (p >= src.size()) fail(block ? "unexpected end of template, expected end of block tag ('%}')"
                                      : "unexpected end of template, expected end of print statement ('}}')",
                                start);
      if (balance.empty()) {
        if (block) {
          size_t e = block_end(p);
          if (e != std::string::npos) {
            emit(Tok::BlockEnd, "", p);
            line_starting = src[e - 1] == '\n';
            return e;
          }
        } else {
          if (at(p, "-}}")) {
            emit(Tok::VarEnd, "", p);
            size_t e = skip_space(p + 3);
            line_starting = src[e - 1] == '\n';
            return e;
          }
          if (at(p, "}}")) {
            emit(Tok::VarEnd, "", p);
            line_starting = false;
            return p + 2;
          }
        }
      }
      if (size_t n = space_at(p)) {
        p += n;
        continue;
      }
      char c = src[p];
      if (std::isdigit(static_cast<unsigned char>(c))) {
        p = lex_number(p);
        continue;
      }
      if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
        size_t q = p;
        while (q < src.size() && (std::isalnum(static_cast<unsigned char>(src[q])) || src[q] == '_')) ++q;
        emit(Tok::Name, src.substr(p, q - p), p);
        p = q;
        continue;
      }
      if (c == '\'' || c == '"') {
        p = lex_string(p);
        continue;
      }
      static const char* ops2[] = {"//", "**", "==", "!=", "<=", ">="};
      std::string op;
      for (const char* o : ops2)
        if (at(p, o)) op = o;
      if (op.empty() && std::string_view("+-/*%~[](){}<>=.:|,;").find(c) != std::string_view::npos) op = std::string(1, c);
      if (op.empty()) fail(fmt::format("unexpected char '{}' at {}", c, p), p);
      if (op == "{" || op == "(" || op == "[") balance.push_back(op == "{" ? '}' : op == "(" ? ')' : ']');
      else if (op == "}" || op == ")" || op == "]") {
        if (balance.empty()) fail(fmt::format("unexpected '{}'", op), p);
        if (balance.back() != op[0]) fail(fmt::format("unexpected '{}', expected '{}'", op, balance.back()), p);
        balance.pop_back();
      }
      emit(Tok::Op, op, p);
      p += op.size();
    }
  }

  size_t digits(size_t p) const {  // (\d+_)*\d+
    size_t q = p;
    while (true) {
      size_t r = q;
      while (r < src.size() && std::isdigit(static_cast<unsigned char>(src[r]))) ++r;
      if (r == q) return q == p ? p : q - 1;  // no digits after '_' → back off
      q = r;
      if (q < src.size() && src[q] == '_' && q + 1 < src.size() && std::isdigit(static_cast<unsigned char>(src[q + 1]))) ++q;
      else return q;
    }
  }

  size_t lex_number(size_t p) {
    auto clean = [](std::string s) {
      std::string o;
      for (char c : s)
        if (c != '_') o.push_back(c);
      return o;
    };
    bool after_dot = p > 0 && src[p - 1] == '.';
    if (!after_dot) {
      size_t q = digits(p);
      size_t frac = q;
      if (at(q, ".") && q + 1 < src.size() && std::isdigit(static_cast<unsigned char>(src[q + 1]))) frac = digits(q + 1);
      size_t e = frac;
      if (e < src.size() && (src[e] == 'e' || src[e] == 'E')) {
        size_t r = e + 1;
        if (r < src.size() && (src[r] == '+' || src[r] == '-')) ++r;
        if (r < src.size() && std::isdigit(static_cast<unsigned char>(src[r]))) e = digits(r);
      }
      if (e > q) {
        emit(Tok::Float, src.substr(p, e - p), p);
        out.back().fval = std::strtod(clean(src.substr(p, e - p)).c_str(), nullptr);
        return e;
      }
    }
    // integer: 0x.. 0o.. 0b.. or decimal
    if (src[p] == '0' && p + 1 < src.size() && std::string_view("xXoObB").find(src[p + 1]) != std::string_view::npos) {
      int base = (src[p + 1] == 'x' || src[p + 1] == 'X') ? 16 : (src[p + 1] == 'o' || src[p + 1] == 'O') ? 8 : 2;
      size_t q = p + 2;
      while (q < src.size() && (std::isxdigit(static_cast<unsigned char>(src[q])) || src[q] == '_')) ++q;
      std::string d = clean(src.substr(p + 2, q - p - 2));
      emit(Tok::Int, src.substr(p, q - p), p);
      out.back().ival = std::strtoll(d.c_str(), nullptr, base);
      return q;
    }
    size_t q = digits(p);
    emit(Tok::Int, src.substr(p, q - p), p);
    out.back().ival = std::strtoll(clean(src.substr(p, q - p)).c_str(), nullptr, 10);
    return q;
  }

  size_t lex_string(size_t p) {
    char quote = src[p];
    size_t q = p + 1;
    std::string val;
    while (true) {
      if (q >= src.size()) fail("unexpected char '" + std::string(1, quote) + "'", p);
      char c = src[q];
      if (c == quote) break;
      if (c != '\\') {
        val.push_back(c);
        ++q;
        continue;
      }
      if (q + 1 >= src.size()) fail("unterminated string", p);
      char e = src[q + 1];
      q += 2;
      auto hex = [&](int n) -> char32_t {
        if (q + n > src.size()) fail("truncated \\xXX escape", p);
        char32_t v = 0;
        for (int k = 0; k < n; ++k) {
          char h = src[q + k];
          if (!std::isxdigit(static_cast<unsigned char>(h))) fail(n == 2 ? "truncated \\xXX escape" : n == 4 ? "truncated \\uXXXX escape" : "truncated \\UXXXXXXXX escape", p);
          v = v * 16 + static_cast<char32_t>(std::isdigit(static_cast<unsigned char>(h)) ? h - '0' : (std::tolower(h) - 'a' + 10));
        }
        q += n;
        return v;
      };
      switch (e) {
        case '\n': break;
        case '\\': val.push_back('\\'); break;
        case '\'': val.push_back('\''); break;
        case '"': val.push_back('"'); break;
        case 'a': val.push_back('\a'); break;
        case 'b': val.push_back('\b'); break;
        case 'f': val.push_back('\f'); break;
        case 'n': val.push_back('\n'); break;
        case 'r': val.push_back('\r'); break;
        case 't': val.push_back('\t'); break;
        case 'v': val.push_back('\v'); break;
        case 'x': str::append_utf8(val, hex(2)); break;
        case 'u': str::append_utf8(val, hex(4)); break;
        case 'U': str::append_utf8(val, hex(8)); break;
        default:
          if (e >= '0' && e <= '7') {
            char32_t v = static_cast<char32_t>(e - '0');
            for (int k = 0; k < 2 && q < src.size() && src[q] >= '0' && src[q] <= '7'; ++k) v = v * 8 + static_cast<char32_t>(src[q++] - '0');
            str::append_utf8(val, v);
          } else {
            val.push_back('\\');
            val.push_back(e);
          }
      }
    }
    emit(Tok::String, std::move(val), p);
    return q + 1;
  }
};

}  // namespace

std::vector<Token> tokenize(std::string_view source, const LexOptions& opt) {
  Lexer lx;
  lx.opt = opt;
  // newline normalisation (\r\n, \r → \n) and dropping one trailing newline, like Jinja2
  std::string s;
  s.reserve(source.size());
  for (size_t k = 0; k < source.size(); ++k) {
    if (source[k] == '\r') {
      s.push_back('\n');
      if (k + 1 < source.size() && source[k + 1] == '\n') ++k;
    } else s.push_back(source[k]);
  }
  if (!opt.keep_trailing_newline && !s.empty() && s.back() == '\n') s.pop_back();
  lx.src = std::move(s);
  for (size_t k = 0; k < lx.src.size(); ++k)
    if (lx.src[k] == '\n') lx.line_starts.push_back(k + 1);
  lx.run();
  Token eof;
  eof.type = Tok::Eof;
  auto [l, c] = lx.line_col(lx.src.size());
  eof.line = l;
  eof.col = c;
  lx.out.push_back(eof);
  return std::move(lx.out);
}

}  // namespace graft::chat_template
