// Tree-walking interpreter with Jinja2's scoping: `for` bodies and macros get their own scope
// (assignments inside do not leak out), `if` does not; namespace() attributes are the way to carry
// state out of loops.
#include "graft/chat_template/interpreter.hpp"

#include <fmt/format.h>

#include "graft/chat_template/builtins.hpp"

namespace graft::chat_template {

const Value* Scope::lookup(const std::string& name) const {
  for (const Scope* s = this; s; s = s->parent.get()) {
    auto it = s->vars.find(name);
    if (it != s->vars.end()) return &it->second;
  }
  return nullptr;
}

namespace {

enum class Flow { Normal, Break, Continue };

class Interp {
 public:
  RenderResult result;
  std::string* out = &result.text;
  int capture_depth = 0;

  Value eval(const Expr& e, const std::shared_ptr<Scope>& sc) {
    try {
      return eval_inner(e, sc);
    } catch (TemplateError& err) {
      if (err.line == 0) {
        err.line = e.line;
        err.col = e.col;
      }
      throw;
    }
  }

  Flow exec(const Body& body, const std::shared_ptr<Scope>& sc) {
    for (auto& s : body) {
      Flow f;
      try {
        f = exec_stmt(*s, sc);
      } catch (TemplateError& err) {
        if (err.line == 0) {
          err.line = s->line;
          err.col = s->col;
        }
        throw;
      }
      if (f != Flow::Normal) return f;
    }
    return Flow::Normal;
  }

 private:
  std::string capture(const Body& body, const std::shared_ptr<Scope>& sc) {
    std::string buf;
    std::string* saved = out;
    out = &buf;
    ++capture_depth;
    try {
      exec(body, sc);
    } catch (...) {
      out = saved;
      --capture_depth;
      throw;
    }
    out = saved;
    --capture_depth;
    return buf;
  }

  void assign(const Expr& target, const Value& v, Scope& sc) {
    if (target.k == Expr::K::Name) {
      sc.vars[target.name] = v;
      return;
    }
    if (target.k == Expr::K::Tuple) {
      auto items = iterate(v);
      if (items.size() < target.kids.size())
        throw_error("ValueError", fmt::format("not enough values to unpack (expected {}, got {})", target.kids.size(), items.size()));
      if (items.size() > target.kids.size())
        throw_error("ValueError", fmt::format("too many values to unpack (expected {})", target.kids.size()));
      for (size_t k = 0; k < items.size(); ++k) assign(*target.kids[k], items[k], sc);
      return;
    }
    throw_error("TemplateSyntaxError", "can't assign to expression");
  }

  Flow exec_stmt(const Stmt& s, const std::shared_ptr<Scope>& sc) {
    switch (s.k) {
      case Stmt::K::Text: *out += s.text; return Flow::Normal;
      case Stmt::K::Output: *out += to_str(eval(*s.expr, sc)); return Flow::Normal;
      case Stmt::K::If:
        for (size_t k = 0; k < s.conds.size(); ++k)
          if (truthy(eval(*s.conds[k], sc))) return exec(s.bodies[k], sc);
        return exec(s.else_body, sc);
      case Stmt::K::For: return exec_for(s, sc);
      case Stmt::K::Set: {
        Value v = eval(*s.expr, sc);
        if (s.target->k == Expr::K::Attr) {
          const Expr& nsx = *s.target->kids[0];
          const Value* ns = sc->lookup(nsx.name);
          if (!ns || !ns->is_namespace())
            throw_error("TemplateRuntimeError", "cannot assign attribute on non-namespace object");
          ns->dict().set(Value(s.target->name), v);
          return Flow::Normal;
        }
        assign(*s.target, v, *sc);
        return Flow::Normal;
      }
      case Stmt::K::SetBlock: {
        Value v(capture(s.body, sc));
        if (s.filters) v = apply_filter_chain(*s.filters, v, sc);
        if (s.target->k == Expr::K::Attr) {
          const Value* ns = sc->lookup(s.target->kids[0]->name);
          if (!ns || !ns->is_namespace())
            throw_error("TemplateRuntimeError", "cannot assign attribute on non-namespace object");
          ns->dict().set(Value(s.target->name), v);
        } else assign(*s.target, v, *sc);
        return Flow::Normal;
      }
      case Stmt::K::Macro: sc->vars[s.name] = make_macro(s, sc, nullptr); return Flow::Normal;
      case Stmt::K::CallBlock: {
        Value caller = make_macro(s, sc, &s);
        const Expr& call = *s.expr;
        Value callee = eval(*call.kids[0], sc);
        CallArgs args = eval_args(call, sc, 1);
        args.kw.emplace_back("caller", caller);
        *out += to_str(call_value(callee, args));
        return Flow::Normal;
      }
      case Stmt::K::FilterBlock: {
        Value v(capture(s.body, sc));
        *out += to_str(apply_filter_chain(*s.filters, v, sc));
        return Flow::Normal;
      }
      case Stmt::K::Break: return Flow::Break;
      case Stmt::K::Continue: return Flow::Continue;
      case Stmt::K::Generation: {
        size_t begin = out->size();
        Flow f = exec(s.body, sc);
        if (capture_depth == 0) result.generation_spans.emplace_back(begin, out->size());
        return f;
      }
    }
    return Flow::Normal;
  }

  // Applies a Filter chain whose innermost subject is null to `v`.
  Value apply_filter_chain(const Expr& f, const Value& v, const std::shared_ptr<Scope>& sc) {
    Value subject = f.kids[0] ? apply_filter_chain(*f.kids[0], v, sc) : v;
    CallArgs args = eval_args(f, sc, 1);
    return apply_filter(f.name, subject, args);
  }

  Value make_macro(const Stmt& s, const std::shared_ptr<Scope>& defining, const Stmt* call_block) {
    const Stmt* def = &s;
    std::string name = call_block ? "caller" : s.name;
    std::weak_ptr<Scope> weak = defining;  // weak: the scope holds the macro, avoid a reference cycle
    return Value::function(name, [this, def, weak, name](CallArgs& a) -> Value {
      auto sc = std::make_shared<Scope>();
      sc->parent = weak.lock();
      const auto& params = def->params;
      if (a.pos.size() > params.size())
        type_error(fmt::format("macro '{}' takes not more than {} argument(s)", name, params.size()));
      std::vector<bool> bound(params.size(), false);
      for (size_t k = 0; k < a.pos.size(); ++k) {
        sc->vars[params[k].name] = a.pos[k];
        bound[k] = true;
      }
      for (auto& [key, v] : a.kw) {
        bool found = false;
        for (size_t k = 0; k < params.size(); ++k)
          if (params[k].name == key) {
            if (bound[k]) type_error(fmt::format("macro '{}' got multiple values for argument '{}'", name, key));
            sc->vars[key] = v;
            bound[k] = true;
            found = true;
          }
        if (!found) {
          if (key == "caller") sc->vars["caller"] = v;
          else type_error(fmt::format("macro '{}' takes no keyword argument '{}'", name, key));
        }
      }
      for (size_t k = 0; k < params.size(); ++k)
        if (!bound[k])
          sc->vars[params[k].name] = params[k].def ? eval(*params[k].def, sc)
                                                   : Value::undefined(fmt::format("parameter '{}' was not provided", params[k].name));
      return Value(capture(def->body, sc));
    });
  }

  // Each iteration runs in a fresh scope (Jinja2 re-reads outer variables at the top of every
  // iteration: `set` inside a loop body neither leaks out nor survives into the next iteration).
  Flow exec_for(const Stmt& s, const std::shared_ptr<Scope>& sc) {
    Value seq = eval(*s.expr, sc);
    auto items = iterate(seq);
    if (s.cond) {
      std::vector<Value> kept;
      for (auto& it : items) {
        auto test_sc = std::make_shared<Scope>();
        test_sc->parent = sc;
        assign(*s.target, it, *test_sc);
        if (truthy(eval(*s.cond, test_sc))) kept.push_back(it);
      }
      items = std::move(kept);
    }
    const int64_t n = static_cast<int64_t>(items.size());
    const int64_t depth = 1;  // loop.depth counts recursive loop levels only; recursive loops are not supported
    for (int64_t k = 0; k < n; ++k) {
      auto loop_sc = std::make_shared<Scope>();
      loop_sc->parent = sc;
      assign(*s.target, items[static_cast<size_t>(k)], *loop_sc);
      Dict loop;
      loop.set(Value("index"), Value(k + 1));
      loop.set(Value("index0"), Value(k));
      loop.set(Value("revindex"), Value(n - k));
      loop.set(Value("revindex0"), Value(n - k - 1));
      loop.set(Value("first"), Value(k == 0));
      loop.set(Value("last"), Value(k == n - 1));
      loop.set(Value("length"), Value(n));
      loop.set(Value("depth"), Value(depth));
      loop.set(Value("depth0"), Value(depth - 1));
      loop.set(Value("previtem"), k > 0 ? items[static_cast<size_t>(k - 1)] : Value::undefined("there is no previous item"));
      loop.set(Value("nextitem"), k + 1 < n ? items[static_cast<size_t>(k + 1)] : Value::undefined("there is no next item"));
      loop.set(Value("cycle"), Value::function("cycle", [k](CallArgs& a) -> Value {
                 if (a.pos.empty()) type_error("no items for cycling given");
                 return a.pos[static_cast<size_t>(k) % a.pos.size()];
               }));
      loop_sc->vars["loop"] = Value::make_dict(std::move(loop));
      Flow f = exec(s.body, loop_sc);
      if (f == Flow::Break) break;
    }
    if (n == 0) {
      auto else_sc = std::make_shared<Scope>();
      else_sc->parent = sc;
      exec(s.else_body, else_sc);
    }
    return Flow::Normal;
  }

  CallArgs eval_args(const Expr& e, const std::shared_ptr<Scope>& sc, size_t first) {
    CallArgs a;
    for (size_t k = first; k < e.kids.size(); ++k) a.pos.push_back(eval(*e.kids[k], sc));
    for (auto& [key, x] : e.kwargs) a.kw.emplace_back(key, eval(*x, sc));
    return a;
  }

  Value eval_inner(const Expr& e, const std::shared_ptr<Scope>& sc) {
    switch (e.k) {
      case Expr::K::Const: return e.value;
      case Expr::K::Name: {
        const Value* v = sc->lookup(e.name);
        if (v) return *v;
        return Value::undefined(fmt::format("'{}' is undefined", e.name));
      }
      case Expr::K::List:
      case Expr::K::Tuple: {
        std::vector<Value> items;
        for (auto& k : e.kids) items.push_back(eval(*k, sc));
        return Value::make_list(std::move(items), e.k == Expr::K::Tuple);
      }
      case Expr::K::Dict: {
        Dict d;
        for (size_t k = 0; k + 1 < e.kids.size(); k += 2) d.set(eval(*e.kids[k], sc), eval(*e.kids[k + 1], sc));
        return Value::make_dict(std::move(d));
      }
      case Expr::K::Attr: return get_attr(eval(*e.kids[0], sc), e.name);
      case Expr::K::Item: return get_item(eval(*e.kids[0], sc), eval(*e.kids[1], sc));
      case Expr::K::Slice: {
        Value obj = eval(*e.kids[0], sc);
        auto part = [&](size_t k) { return e.kids[k] ? eval(*e.kids[k], sc) : Value::none(); };
        Value a = part(1), b = part(2), c = part(3);
        return slice_value(obj, a, b, c);
      }
      case Expr::K::Call: {
        Value callee = eval(*e.kids[0], sc);
        CallArgs args = eval_args(e, sc, 1);
        return call_value(callee, args);
      }
      case Expr::K::Filter: {
        Value subject = eval(*e.kids[0], sc);
        CallArgs args = eval_args(e, sc, 1);
        return apply_filter(e.name, subject, args);
      }
      case Expr::K::Test: {
        Value subject = eval(*e.kids[0], sc);
        CallArgs args = eval_args(e, sc, 1);
        return Value(apply_test(e.name, subject, args));
      }
      case Expr::K::Unary: {
        Value v = eval(*e.kids[0], sc);
        if (e.name == "not") return Value(!truthy(v));
        return unary_op(e.name, v);
      }
      case Expr::K::Binary: {
        Value a = eval(*e.kids[0], sc);
        if (e.name == "and") return truthy(a) ? eval(*e.kids[1], sc) : a;
        if (e.name == "or") return truthy(a) ? a : eval(*e.kids[1], sc);
        return binary_op(e.name, a, eval(*e.kids[1], sc));
      }
      case Expr::K::Compare: {
        Value left = eval(*e.kids[0], sc);
        for (size_t k = 0; k < e.ops.size(); ++k) {
          Value right = eval(*e.kids[k + 1], sc);
          if (!compare_op(e.ops[k], left, right)) return Value(false);
          left = std::move(right);
        }
        return Value(true);
      }
      case Expr::K::CondExpr: {
        if (truthy(eval(*e.kids[1], sc))) return eval(*e.kids[0], sc);
        if (e.kids[2]) return eval(*e.kids[2], sc);
        return Value::undefined("the inline if-expression evaluated to false and no else section was defined.");
      }
    }
    return Value();
  }
};

}  // namespace

RenderResult render_body(const Body& body, std::shared_ptr<Scope> root) {
  Interp in;
  in.exec(body, root);
  return std::move(in.result);
}

}  // namespace graft::chat_template
