// Compile-time checks Jinja2 performs before rendering (unknown filters/tests outside soft frames).
#include <fmt/format.h>

#include "graft/chat_template/builtins.hpp"
#include "graft/chat_template/parser.hpp"

namespace graft::chat_template {
namespace {

void check_expr(const Expr* e, bool soft) {
  if (!e) return;
  if (!soft && (e->k == Expr::K::Filter || e->k == Expr::K::Test)) {
    bool filter = e->k == Expr::K::Filter;
    if (filter ? !find_filter(e->name) : !find_test(e->name))
      throw TemplateError("TemplateAssertionError", fmt::format("No {} named '{}'.", filter ? "filter" : "test", e->name),
                          e->line, e->col);
  }
  bool kid_soft = soft || e->k == Expr::K::CondExpr;
  for (auto& k : e->kids) check_expr(k.get(), kid_soft);
  for (auto& [n, k] : e->kwargs) check_expr(k.get(), kid_soft);
}

void check_body(const Body& body, bool soft) {
  for (auto& s : body) {
    switch (s->k) {
      case Stmt::K::If:
        for (auto& c : s->conds) check_expr(c.get(), true);
        for (auto& b : s->bodies) check_body(b, true);
        check_body(s->else_body, true);
        break;
      case Stmt::K::For:
        check_expr(s->expr.get(), soft);
        check_expr(s->cond.get(), false);
        check_body(s->body, false);
        check_body(s->else_body, false);
        break;
      case Stmt::K::Macro:
        for (auto& p : s->params) check_expr(p.def.get(), false);
        check_body(s->body, false);
        break;
      case Stmt::K::CallBlock:
        check_expr(s->expr.get(), soft);
        check_body(s->body, false);
        break;
      case Stmt::K::SetBlock:
      case Stmt::K::FilterBlock:
        check_expr(s->filters.get(), soft);
        check_body(s->body, false);
        break;
      case Stmt::K::Generation:
        check_body(s->body, soft);
        break;
      default:
        check_expr(s->expr.get(), soft);
        check_expr(s->target.get(), soft);
    }
  }
}

}  // namespace

void check_filters_and_tests(const Body& body) { check_body(body, false); }

}  // namespace graft::chat_template
