// Jinja2 tests (`x is defined`, `x is string`, `n is divisibleby 3`, ...), jinja2/tests.py semantics.
#include <fmt/format.h>

#include <map>

#include "graft/chat_template/builtins.hpp"
#include "graft/chat_template/strings.hpp"

namespace graft::chat_template {
namespace {

Value arg0(CallArgs& a) {
  if (a.pos.empty() && a.kw.empty()) type_error("test expects an argument");
  return a.pos.empty() ? a.kw[0].second : a.pos[0];
}

bool t_defined(const Value& v, CallArgs&) { return !v.is_undefined(); }
bool t_undefined(const Value& v, CallArgs&) { return v.is_undefined(); }
bool t_none(const Value& v, CallArgs&) { return v.is_none(); }
bool t_string(const Value& v, CallArgs&) { return v.is_string(); }
bool t_number(const Value& v, CallArgs&) { return v.is_number(); }
bool t_integer(const Value& v, CallArgs&) { return v.is_int(); }
bool t_float(const Value& v, CallArgs&) { return v.is_float(); }
bool t_mapping(const Value& v, CallArgs&) { return v.is_dict(); }
bool t_iterable(const Value& v, CallArgs&) {
  return v.is_undefined() || v.is_string() || v.is_list() || v.is_dict();
}
bool t_sequence(const Value& v, CallArgs&) { return v.is_undefined() || v.is_string() || v.is_list() || v.is_dict(); }
bool t_boolean(const Value& v, CallArgs&) { return v.is_bool(); }
bool t_true(const Value& v, CallArgs&) { return v.is_bool() && v.b(); }
bool t_false(const Value& v, CallArgs&) { return v.is_bool() && !v.b(); }
bool t_callable(const Value& v, CallArgs&) { return v.is_function(); }
bool t_eq(const Value& v, CallArgs& a) { return compare_op("==", v, arg0(a)); }
bool t_ne(const Value& v, CallArgs& a) { return compare_op("!=", v, arg0(a)); }
bool t_lt(const Value& v, CallArgs& a) { return compare_op("<", v, arg0(a)); }
bool t_le(const Value& v, CallArgs& a) { return compare_op("<=", v, arg0(a)); }
bool t_gt(const Value& v, CallArgs& a) { return compare_op(">", v, arg0(a)); }
bool t_ge(const Value& v, CallArgs& a) { return compare_op(">=", v, arg0(a)); }
bool t_in(const Value& v, CallArgs& a) { return compare_op("in", v, arg0(a)); }
bool t_divisibleby(const Value& v, CallArgs& a) { return equals(binary_op("%", v, arg0(a)), Value(0)); }
bool t_odd(const Value& v, CallArgs&) { return equals(binary_op("%", v, Value(2)), Value(1)); }
bool t_even(const Value& v, CallArgs&) { return equals(binary_op("%", v, Value(2)), Value(0)); }
bool t_sameas(const Value& v, CallArgs& a) {
  Value o = arg0(a);
  if (v.kind() != o.kind()) return false;
  switch (v.kind()) {
    case Kind::Undefined: return false;
    case Kind::None: return true;
    case Kind::Bool: case Kind::Int: case Kind::Float: case Kind::String: return equals(v, o);
    default: return v.identity() == o.identity();
  }
}
bool t_lower(const Value& v, CallArgs&) {
  std::string s = to_str(v);
  return str::lower(s) == s && str::upper(s) != s;
}
bool t_upper(const Value& v, CallArgs&) {
  std::string s = to_str(v);
  return str::upper(s) == s && str::lower(s) != s;
}
bool t_escaped(const Value&, CallArgs&) { return false; }
bool t_filter(const Value& v, CallArgs&) { return v.is_string() && find_filter(v.s()) != nullptr; }
bool t_test(const Value& v, CallArgs&) { return v.is_string() && find_test(v.s()) != nullptr; }

const std::map<std::string, TestFn, std::less<>>& tests() {
  static const std::map<std::string, TestFn, std::less<>> m = {
      {"defined", t_defined},   {"undefined", t_undefined}, {"none", t_none},         {"string", t_string},
      {"number", t_number},     {"integer", t_integer},     {"float", t_float},       {"mapping", t_mapping},
      {"iterable", t_iterable}, {"sequence", t_sequence},   {"boolean", t_boolean},   {"true", t_true},
      {"false", t_false},       {"callable", t_callable},   {"equalto", t_eq},        {"eq", t_eq},
      {"==", t_eq},             {"ne", t_ne},               {"!=", t_ne},             {"lt", t_lt},
      {"lessthan", t_lt},       {"<", t_lt},                {"le", t_le},             {"<=", t_le},
      {"gt", t_gt},             {"greaterthan", t_gt},      {">", t_gt},              {"ge", t_ge},
      {">=", t_ge},             {"in", t_in},               {"divisibleby", t_divisibleby}, {"odd", t_odd},
      {"even", t_even},         {"sameas", t_sameas},       {"lower", t_lower},       {"upper", t_upper},
      {"escaped", t_escaped},   {"filter", t_filter},       {"test", t_test},
  };
  return m;
}

}  // namespace

TestFn find_test(std::string_view name) {
  auto it = tests().find(name);
  return it == tests().end() ? nullptr : it->second;
}

bool apply_test(std::string_view name, const Value& subject, CallArgs& args) {
  TestFn t = find_test(name);
  if (!t) throw_error("TemplateAssertionError", fmt::format("No test named '{}'.", name));
  return t(subject, args);
}

}  // namespace graft::chat_template
