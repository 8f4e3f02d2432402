// AST of the Jinja subset: expressions (Expr) and statements (Stmt), each with its template line/column.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "graft/chat_template/value.hpp"

namespace graft::chat_template {

struct Expr;
using ExprP = std::unique_ptr<Expr>;

struct Expr {
  enum class K {
    Const,     // value
    Name,      // name
    List,      // kids
    Tuple,     // kids
    Dict,      // kids: k0, v0, k1, v1, ...
    Attr,      // kids[0] . name
    Item,      // kids[0] [ kids[1] ]
    Slice,     // kids[0] [ kids[1] : kids[2] : kids[3] ] (null = omitted)
    Call,      // kids[0] ( kids[1..], kwargs )
    Filter,    // name; kids[0] = subject (null inside a filter block), kids[1..] args, kwargs
    Test,      // name; kids[0] = subject, kids[1..] args, kwargs
    Unary,     // op ("-", "+", "not"), kids[0]
    Binary,    // op ("+", "-", "*", "/", "//", "%", "**", "~", "and", "or"), kids[0], kids[1]
    Compare,   // kids[0] then (ops[i], kids[i+1])...
    CondExpr,  // kids[0] if kids[1] else kids[2] (kids[2] may be null)
  };
  K k;
  int line = 0, col = 0;
  Value value;
  std::string name;  // Name, Attr, Filter, Test, Unary/Binary operator
  std::vector<ExprP> kids;
  std::vector<std::pair<std::string, ExprP>> kwargs;
  std::vector<std::string> ops;  // Compare operators: "==", "!=", "<", "<=", ">", ">=", "in", "notin"
};

struct Stmt;
using StmtP = std::unique_ptr<Stmt>;
using Body = std::vector<StmtP>;

struct MacroParam {
  std::string name;
  ExprP def;  // may be null
};

struct Stmt {
  enum class K {
    Text,         // text
    Output,       // expr
    If,           // conds[i] → bodies[i]; else_body
    For,          // target, expr (iterable), cond (filter, may be null), body, else_body
    Set,          // target (Name / Tuple / Attr on a namespace), expr
    SetBlock,     // target, body, filters (Filter chain with null subject, may be null)
    Macro,        // name, params, body
    CallBlock,    // expr (the Call), params (caller's), body
    FilterBlock,  // filters, body
    Break,
    Continue,
    Generation,   // body: assistant span
  };
  K k;
  int line = 0, col = 0;
  std::string text;
  std::string name;
  ExprP expr, target, cond, filters;
  std::vector<ExprP> conds;
  std::vector<Body> bodies;
  Body body, else_body;
  std::vector<MacroParam> params;
};

}  // namespace graft::chat_template
