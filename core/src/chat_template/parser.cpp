// Recursive-descent parser with jinja2/parser.py's grammar: statements (if/for/set/macro/call/filter/
// break/continue/generation) and expressions (condexpr > or > and > not > compare > + - > ~ > * / // %
// > ** > unary > primary/postfix/filters/tests).
#include "graft/chat_template/parser.hpp"

#include <fmt/format.h>

#include <initializer_list>

namespace graft::chat_template {
namespace {

class Parser {
 public:
  explicit Parser(std::vector<Token> toks) : t_(std::move(toks)) {}

  Body parse_all() {
    Body b = subparse({});
    if (cur().type != Tok::Eof) fail("unexpected end tag");
    return b;
  }

 private:
  std::vector<Token> t_;
  size_t i_ = 0;
  std::vector<std::string> block_stack_;

  const Token& cur() const { return t_[i_]; }
  const Token& peek(size_t n = 1) const { return t_[std::min(i_ + n, t_.size() - 1)]; }
  void next() {
    if (i_ + 1 < t_.size()) ++i_;
  }
  static std::string describe(const Token& t) {
    switch (t.type) {
      case Tok::Eof: return "end of template";
      case Tok::BlockEnd: return "end of statement block";
      case Tok::VarEnd: return "end of print statement";
      case Tok::BlockBegin: return "begin of statement block";
      case Tok::VarBegin: return "begin of print statement";
      case Tok::Data: return "template data";
      case Tok::String: return "string";
      case Tok::Int: return "integer";
      case Tok::Float: return "float";
      default: return "'" + t.text + "'";
    }
  }
  [[noreturn]] void fail(const std::string& msg) const { fail_at(msg, cur()); }
  [[noreturn]] static void fail_at(const std::string& msg, const Token& t) {
    throw TemplateError("TemplateSyntaxError", msg, t.line, t.col);
  }
  bool is_op(const char* op) const { return cur().type == Tok::Op && cur().text == op; }
  bool is_name(const char* n) const { return cur().type == Tok::Name && cur().text == n; }
  bool skip_op(const char* op) {
    if (!is_op(op)) return false;
    next();
    return true;
  }
  bool skip_name(const char* n) {
    if (!is_name(n)) return false;
    next();
    return true;
  }
  void expect_op(const char* op) {
    if (!skip_op(op)) fail(fmt::format("expected token '{}', got {}", op, describe(cur())));
  }
  std::string expect_name() {
    if (cur().type != Tok::Name) fail(fmt::format("expected token 'name', got {}", describe(cur())));
    std::string n = cur().text;
    next();
    return n;
  }
  void expect_block_end() {
    if (cur().type != Tok::BlockEnd) fail(fmt::format("expected token 'end of statement block', got {}", describe(cur())));
    next();
  }

  ExprP mk(Expr::K k, const Token& at) {
    auto e = std::make_unique<Expr>();
    e->k = k;
    e->line = at.line;
    e->col = at.col;
    return e;
  }
  StmtP mks(Stmt::K k, const Token& at) {
    auto s = std::make_unique<Stmt>();
    s->k = k;
    s->line = at.line;
    s->col = at.col;
    return s;
  }

  // ---- statements ----
  Body subparse(std::initializer_list<const char*> end_tokens) {
    Body body;
    while (cur().type != Tok::Eof) {
      const Token& t = cur();
      if (t.type == Tok::Data) {
        auto s = mks(Stmt::K::Text, t);
        s->text = t.text;
        body.push_back(std::move(s));
        next();
      } else if (t.type == Tok::VarBegin) {
        auto s = mks(Stmt::K::Output, t);
        next();
        s->expr = parse_tuple(false, true, {}, false);
        if (cur().type != Tok::VarEnd) fail(fmt::format("expected token 'end of print statement', got {}", describe(cur())));
        next();
        body.push_back(std::move(s));
      } else if (t.type == Tok::BlockBegin) {
        next();
        for (const char* e : end_tokens)
          if (is_name(e)) return body;
        body.push_back(parse_statement());
      } else {
        fail("unexpected token");
      }
    }
    if (end_tokens.size()) {
      std::string expected;
      for (const char* e : end_tokens) expected += (expected.empty() ? "'" : " or '") + std::string(e) + "'";
      fail(fmt::format("Unexpected end of template. Jinja was looking for the following tags: {}. The innermost block "
                       "that needs to be closed is '{}'.",
                       expected, block_stack_.empty() ? "" : block_stack_.back()));
    }
    return body;
  }

  StmtP parse_statement() {
    const Token& t = cur();
    if (t.type != Tok::Name) fail("tag name expected");
    std::string n = t.text;
    if (n == "if") return parse_if();
    if (n == "for") return parse_for();
    if (n == "set") return parse_set();
    if (n == "macro") return parse_macro();
    if (n == "call") return parse_call_block();
    if (n == "filter") return parse_filter_block();
    if (n == "generation") {
      auto s = mks(Stmt::K::Generation, t);
      next();
      expect_block_end();
      block_stack_.push_back("generation");
      s->body = subparse({"endgeneration"});
      block_stack_.pop_back();
      next();
      expect_block_end();
      return s;
    }
    if (n == "break" || n == "continue") {
      auto s = mks(n == "break" ? Stmt::K::Break : Stmt::K::Continue, t);
      bool in_loop = false;
      for (auto& b : block_stack_)
        if (b == "for") in_loop = true;
      if (!in_loop) fail(fmt::format("'{}' is not allowed outside of a loop", n));  // approximates Jinja2's check
      next();
      expect_block_end();
      return s;
    }
    if (n.rfind("end", 0) == 0 || n == "elif" || n == "else")
      fail(fmt::format("Encountered unknown tag '{}'.{}", n,
                       block_stack_.empty() ? "" : fmt::format(" Jinja was looking for the end of '{}'.", block_stack_.back())));
    fail(fmt::format("Encountered unknown tag '{}'.", n));
  }

  StmtP parse_if() {
    auto s = mks(Stmt::K::If, cur());
    next();
    block_stack_.push_back("if");
    while (true) {
      s->conds.push_back(parse_tuple(false, false, {}, false));
      expect_block_end();
      s->bodies.push_back(subparse({"elif", "else", "endif"}));
      if (skip_name("elif")) continue;
      if (skip_name("else")) {
        expect_block_end();
        s->else_body = subparse({"endif"});
      }
      break;
    }
    next();  // endif
    expect_block_end();
    block_stack_.pop_back();
    return s;
  }

  StmtP parse_for() {
    auto s = mks(Stmt::K::For, cur());
    next();
    s->target = parse_assign_target(true, {"in"}, false);
    if (!skip_name("in")) fail(fmt::format("expected token 'in', got {}", describe(cur())));
    s->expr = parse_tuple(false, false, {"recursive"}, false);
    if (skip_name("if")) s->cond = parse_expression(true);
    if (skip_name("recursive")) fail("recursive for loops are not supported by graft's chat template interpreter");
    expect_block_end();
    block_stack_.push_back("for");
    s->body = subparse({"endfor", "else"});
    if (skip_name("else")) {
      expect_block_end();
      block_stack_.back() = "for-else";  // break/continue not valid in else
      s->else_body = subparse({"endfor"});
    }
    block_stack_.pop_back();
    next();  // endfor
    expect_block_end();
    return s;
  }

  StmtP parse_set() {
    auto s = mks(Stmt::K::Set, cur());
    next();
    s->target = parse_assign_target(true, {}, true);
    if (skip_op("=")) {
      s->expr = parse_tuple(false, true, {}, false);
      expect_block_end();
      return s;
    }
    s->k = Stmt::K::SetBlock;
    if (is_op("|")) s->filters = parse_filter(nullptr, false);
    expect_block_end();
    block_stack_.push_back("set");
    s->body = subparse({"endset"});
    block_stack_.pop_back();
    next();
    expect_block_end();
    return s;
  }

  void parse_signature(Stmt& s) {
    expect_op("(");
    while (!is_op(")")) {
      if (!s.params.empty()) expect_op(",");
      MacroParam p;
      p.name = expect_name();
      if (skip_op("=")) p.def = parse_expression(true);
      s.params.push_back(std::move(p));
    }
    expect_op(")");
  }

  StmtP parse_macro() {
    auto s = mks(Stmt::K::Macro, cur());
    next();
    s->name = expect_name();
    parse_signature(*s);
    expect_block_end();
    block_stack_.push_back("macro");
    s->body = subparse({"endmacro"});
    block_stack_.pop_back();
    next();
    expect_block_end();
    return s;
  }

  StmtP parse_call_block() {
    auto s = mks(Stmt::K::CallBlock, cur());
    next();
    if (is_op("(")) parse_signature(*s);
    s->expr = parse_expression(true);
    if (s->expr->k != Expr::K::Call) fail("expected call");
    expect_block_end();
    block_stack_.push_back("call");
    s->body = subparse({"endcall"});
    block_stack_.pop_back();
    next();
    expect_block_end();
    return s;
  }

  StmtP parse_filter_block() {
    auto s = mks(Stmt::K::FilterBlock, cur());
    next();
    s->filters = parse_filter(nullptr, true);
    expect_block_end();
    block_stack_.push_back("filter");
    s->body = subparse({"endfilter"});
    block_stack_.pop_back();
    next();
    expect_block_end();
    return s;
  }

  ExprP parse_assign_target(bool with_tuple, std::initializer_list<const char*> extra_end, bool with_namespace) {
    ExprP target;
    if (with_namespace && peek().type == Tok::Op && peek().text == "." && cur().type == Tok::Name) {
      const Token& at = cur();
      auto ns = mk(Expr::K::Name, at);
      ns->name = expect_name();
      next();  // '.'
      auto a = mk(Expr::K::Attr, at);
      a->name = expect_name();
      a->kids.push_back(std::move(ns));
      return a;
    }
    const Token& at = cur();
    target = with_tuple ? parse_tuple(true, true, extra_end, false) : parse_primary();
    auto check = [&](const Expr& e) {
      if (e.k != Expr::K::Name) fail_at("can't assign to " + std::string(e.k == Expr::K::Const ? "literal" : "expression"), at);
      if (e.name == "true" || e.name == "false" || e.name == "none" || e.name == "True" || e.name == "False" || e.name == "None")
        fail_at("can't assign to literal", at);
    };
    if (target->k == Expr::K::Tuple)
      for (auto& k : target->kids) check(*k);
    else check(*target);
    return target;
  }

  // ---- expressions ----
  bool is_tuple_end(std::initializer_list<const char*> extra_end) const {
    if (cur().type == Tok::VarEnd || cur().type == Tok::BlockEnd || cur().type == Tok::Eof) return true;
    if (is_op(")")) return true;
    for (const char* e : extra_end)
      if (is_name(e)) return true;
    return false;
  }

  ExprP parse_tuple(bool simplified, bool with_condexpr, std::initializer_list<const char*> extra_end, bool explicit_parens) {
    const Token& at = cur();
    std::vector<ExprP> args;
    bool is_tuple = false;
    while (true) {
      if (!args.empty()) expect_op(",");
      if (is_tuple_end(extra_end)) break;
      args.push_back(simplified ? parse_primary() : parse_expression(with_condexpr));
      if (is_op(",")) is_tuple = true;
      else break;
    }
    if (!is_tuple) {
      if (!args.empty()) return std::move(args[0]);
      if (!explicit_parens) fail(fmt::format("Expected an expression, got {}", describe(cur())));
    }
    auto t = mk(Expr::K::Tuple, at);
    t->kids = std::move(args);
    return t;
  }

  ExprP parse_expression(bool with_condexpr) { return with_condexpr ? parse_condexpr() : parse_or(); }

  ExprP parse_condexpr() {
    ExprP e1 = parse_or();
    while (is_name("if")) {
      const Token& at = cur();
      next();
      ExprP e2 = parse_or();
      ExprP e3;
      if (skip_name("else")) e3 = parse_condexpr();
      auto c = mk(Expr::K::CondExpr, at);
      c->kids.push_back(std::move(e1));
      c->kids.push_back(std::move(e2));
      c->kids.push_back(std::move(e3));
      e1 = std::move(c);
    }
    return e1;
  }

  ExprP binary(const char* op, ExprP l, ExprP r, const Token& at) {
    auto b = mk(Expr::K::Binary, at);
    b->name = op;
    b->kids.push_back(std::move(l));
    b->kids.push_back(std::move(r));
    return b;
  }

  ExprP parse_or() {
    ExprP l = parse_and();
    while (is_name("or")) {
      const Token& at = cur();
      next();
      l = binary("or", std::move(l), parse_and(), at);
    }
    return l;
  }
  ExprP parse_and() {
    ExprP l = parse_not();
    while (is_name("and")) {
      const Token& at = cur();
      next();
      l = binary("and", std::move(l), parse_not(), at);
    }
    return l;
  }
  ExprP parse_not() {
    if (is_name("not")) {
      auto u = mk(Expr::K::Unary, cur());
      next();
      u->name = "not";
      u->kids.push_back(parse_not());
      return u;
    }
    return parse_compare();
  }
  ExprP parse_compare() {
    const Token& at = cur();
    ExprP e = parse_math1();
    std::vector<std::string> ops;
    std::vector<ExprP> rest;
    while (true) {
      if (cur().type == Tok::Op && (cur().text == "==" || cur().text == "!=" || cur().text == "<" || cur().text == "<=" ||
                                    cur().text == ">" || cur().text == ">=")) {
        ops.push_back(cur().text);
        next();
      } else if (is_name("in")) {
        ops.push_back("in");
        next();
      } else if (is_name("not") && peek().type == Tok::Name && peek().text == "in") {
        ops.push_back("notin");
        next();
        next();
      } else break;
      rest.push_back(parse_math1());
    }
    if (ops.empty()) return e;
    auto c = mk(Expr::K::Compare, at);
    c->kids.push_back(std::move(e));
    for (auto& r : rest) c->kids.push_back(std::move(r));
    c->ops = std::move(ops);
    return c;
  }
  ExprP parse_math1() {
    ExprP l = parse_concat();
    while (is_op("+") || is_op("-")) {
      const Token& at = cur();
      const char* op = cur().text == "+" ? "+" : "-";
      next();
      l = binary(op, std::move(l), parse_concat(), at);
    }
    return l;
  }
  ExprP parse_concat() {
    ExprP l = parse_math2();
    while (is_op("~")) {
      const Token& at = cur();
      next();
      l = binary("~", std::move(l), parse_math2(), at);
    }
    return l;
  }
  ExprP parse_math2() {
    ExprP l = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const Token& at = cur();
      std::string op = cur().text;
      next();
      auto b = binary("", std::move(l), parse_pow(), at);
      b->name = op;
      l = std::move(b);
    }
    return l;
  }
  ExprP parse_pow() {
    ExprP l = parse_unary(true);
    while (is_op("**")) {
      const Token& at = cur();
      next();
      l = binary("**", std::move(l), parse_unary(true), at);
    }
    return l;
  }
  ExprP parse_unary(bool with_filter) {
    ExprP node;
    if (is_op("-") || is_op("+")) {
      auto u = mk(Expr::K::Unary, cur());
      u->name = cur().text;
      next();
      u->kids.push_back(parse_unary(false));
      node = std::move(u);
    } else {
      node = parse_primary();
    }
    node = parse_postfix(std::move(node));
    if (with_filter) node = parse_filter_expr(std::move(node));
    return node;
  }

  ExprP parse_primary() {
    const Token& t = cur();
    if (t.type == Tok::Name) {
      const std::string& n = t.text;
      auto c = mk(Expr::K::Const, t);
      if (n == "true" || n == "True") c->value = Value(true);
      else if (n == "false" || n == "False") c->value = Value(false);
      else if (n == "none" || n == "None") c->value = Value::none();
      else {
        c->k = Expr::K::Name;
        c->name = n;
      }
      next();
      return c;
    }
    if (t.type == Tok::String) {
      auto c = mk(Expr::K::Const, t);
      std::string s = t.text;
      next();
      while (cur().type == Tok::String) {
        s += cur().text;
        next();
      }
      c->value = Value(std::move(s));
      return c;
    }
    if (t.type == Tok::Int || t.type == Tok::Float) {
      auto c = mk(Expr::K::Const, t);
      c->value = t.type == Tok::Int ? Value(t.ival) : Value(t.fval);
      next();
      return c;
    }
    if (is_op("(")) {
      next();
      ExprP e = parse_tuple(false, true, {}, true);
      expect_op(")");
      return e;
    }
    if (is_op("[")) {
      auto l = mk(Expr::K::List, t);
      next();
      while (!is_op("]")) {
        if (!l->kids.empty()) expect_op(",");
        if (is_op("]")) break;
        l->kids.push_back(parse_expression(true));
      }
      expect_op("]");
      return l;
    }
    if (is_op("{")) {
      auto d = mk(Expr::K::Dict, t);
      next();
      while (!is_op("}")) {
        if (!d->kids.empty()) expect_op(",");
        if (is_op("}")) break;
        d->kids.push_back(parse_expression(true));
        expect_op(":");
        d->kids.push_back(parse_expression(true));
      }
      expect_op("}");
      return d;
    }
    fail(fmt::format("unexpected {}", describe(t)));
  }

  ExprP parse_postfix(ExprP node) {
    while (true) {
      if (is_op(".") || is_op("[")) node = parse_subscript(std::move(node));
      else if (is_op("(")) node = parse_call(std::move(node));
      else break;
    }
    return node;
  }

  ExprP parse_filter_expr(ExprP node) {
    while (true) {
      if (is_op("|")) node = parse_filter(std::move(node), false);
      else if (is_name("is")) node = parse_test(std::move(node));
      else if (is_op("(")) node = parse_call(std::move(node));
      else break;
    }
    return node;
  }

  ExprP parse_subscript(ExprP node) {
    const Token& t = cur();
    if (skip_op(".")) {
      const Token& a = cur();
      if (a.type == Tok::Name) {
        auto e = mk(Expr::K::Attr, t);
        e->name = a.text;
        e->kids.push_back(std::move(node));
        next();
        return e;
      }
      if (a.type != Tok::Int) fail("expected name or number");
      auto e = mk(Expr::K::Item, t);
      auto c = mk(Expr::K::Const, a);
      c->value = Value(a.ival);
      e->kids.push_back(std::move(node));
      e->kids.push_back(std::move(c));
      next();
      return e;
    }
    expect_op("[");
    std::vector<ExprP> args;
    while (!is_op("]")) {
      if (!args.empty()) {
        expect_op(",");
        if (is_op("]")) break;
      }
      args.push_back(parse_subscribed());
    }
    expect_op("]");
    if (args.size() == 1) {
      if (args[0]->k == Expr::K::Slice && !args[0]->kids[0]) {
        args[0]->kids[0] = std::move(node);
        return std::move(args[0]);
      }
      auto e = mk(Expr::K::Item, t);
      e->kids.push_back(std::move(node));
      e->kids.push_back(std::move(args[0]));
      return e;
    }
    auto tup = mk(Expr::K::Tuple, t);
    for (auto& a : args) {
      if (a->k == Expr::K::Slice && !a->kids[0]) fail("slices inside tuples are not supported");
      tup->kids.push_back(std::move(a));
    }
    auto e = mk(Expr::K::Item, t);
    e->kids.push_back(std::move(node));
    e->kids.push_back(std::move(tup));
    return e;
  }

  // Returns an expression, or a Slice with a null kids[0] placeholder for the subject.
  ExprP parse_subscribed() {
    const Token& t = cur();
    ExprP start;
    if (!is_op(":")) {
      start = parse_expression(true);
      if (!is_op(":")) return start;
    }
    next();  // ':'
    auto s = mk(Expr::K::Slice, t);
    s->kids.resize(4);
    s->kids[1] = std::move(start);
    if (!is_op("]") && !is_op(",") && !is_op(":")) s->kids[2] = parse_expression(true);
    if (skip_op(":"))
      if (!is_op("]") && !is_op(",")) s->kids[3] = parse_expression(true);
    return s;
  }

  void parse_call_args(Expr& e) {
    expect_op("(");
    bool first = true;
    while (!is_op(")")) {
      if (!first) {
        expect_op(",");
        if (is_op(")")) break;
      }
      first = false;
      if (is_op("*") || is_op("**")) fail("*args / **kwargs in calls are not supported");
      if (cur().type == Tok::Name && peek().type == Tok::Op && peek().text == "=") {
        std::string k = cur().text;
        next();
        next();
        e.kwargs.emplace_back(k, parse_expression(true));
      } else {
        if (!e.kwargs.empty()) fail("Invalid argument syntax");
        e.kids.push_back(parse_expression(true));
      }
    }
    expect_op(")");
  }

  ExprP parse_call(ExprP node) {
    auto c = mk(Expr::K::Call, cur());
    c->kids.push_back(std::move(node));
    parse_call_args(*c);
    return c;
  }

  std::string parse_dotted_name() {
    std::string n = expect_name();
    while (is_op(".")) {
      next();
      n += "." + expect_name();
    }
    return n;
  }

  ExprP parse_filter(ExprP node, bool start_inline) {
    while (is_op("|") || start_inline) {
      if (!start_inline) next();
      start_inline = false;
      auto f = mk(Expr::K::Filter, cur());
      f->name = parse_dotted_name();
      f->kids.push_back(std::move(node));
      if (is_op("(")) parse_call_args(*f);
      node = std::move(f);
    }
    return node;
  }

  ExprP parse_test(ExprP node) {
    const Token& at = cur();
    next();  // 'is'
    bool negated = skip_name("not");
    auto t = mk(Expr::K::Test, at);
    t->name = parse_dotted_name();
    t->kids.push_back(std::move(node));
    const Token& c = cur();
    if (is_op("(")) {
      parse_call_args(*t);
    } else if ((c.type == Tok::Name || c.type == Tok::String || c.type == Tok::Int || c.type == Tok::Float || is_op("[") ||
                is_op("{")) &&
               !is_name("else") && !is_name("or") && !is_name("and")) {
      if (is_name("is")) fail("You cannot chain multiple tests with is");
      ExprP arg = parse_postfix(parse_primary());
      t->kids.push_back(std::move(arg));
    }
    if (!negated) return t;
    auto u = mk(Expr::K::Unary, at);
    u->name = "not";
    u->kids.push_back(std::move(t));
    return u;
  }
};

}  // namespace

Body parse_template(std::string_view source, const LexOptions& opt) {
  Parser p(tokenize(source, opt));
  return p.parse_all();
}

}  // namespace graft::chat_template
