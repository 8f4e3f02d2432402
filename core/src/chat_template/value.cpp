// Value: construction and Python semantics (truthiness, str/repr, ==, <, in, len, iteration).
#include "graft/chat_template/value.hpp"

#include <fmt/format.h>

#include <charconv>
#include <cmath>

#include "graft/chat_template/strings.hpp"

namespace graft::chat_template {

void throw_error(std::string kind, std::string msg) { throw TemplateError(std::move(kind), std::move(msg)); }

Value Value::undefined(std::string hint, std::string error_kind) {
  Value v;
  v.s_ = std::move(hint);
  v.undef_kind_ = std::move(error_kind);
  return v;
}
Value Value::none() {
  Value v;
  v.kind_ = Kind::None;
  return v;
}
Value Value::make_list(std::vector<Value> items, bool tuple) {
  Value v;
  v.kind_ = Kind::List;
  auto l = std::make_shared<List>();
  l->items = std::move(items);
  l->tuple = tuple;
  v.p_ = l;
  return v;
}
Value Value::make_dict() { return make_dict(Dict{}); }
Value Value::make_dict(Dict d) {
  Value v;
  v.kind_ = Kind::Dict;
  v.p_ = std::make_shared<Dict>(std::move(d));
  return v;
}
Value Value::namespace_() {
  Value v;
  v.kind_ = Kind::Namespace;
  v.p_ = std::make_shared<Dict>();
  return v;
}
Value Value::function(std::string name, std::function<Value(CallArgs&)> fn) {
  Value v;
  v.kind_ = Kind::Function;
  v.p_ = std::make_shared<Function>(Function{std::move(name), std::move(fn)});
  return v;
}

void Value::fail_undefined() const {
  throw_error(undef_kind_.empty() ? "UndefinedError" : undef_kind_, s_.empty() ? "value is undefined" : s_);
}

const Value* Dict::find(const Value& key) const {
  if (key.is_string()) return find_key(key.s());
  for (auto& [k, v] : items)
    if (equals(k, key)) return &v;
  return nullptr;
}
const Value* Dict::find_key(std::string_view key) const {
  for (auto& [k, v] : items)
    if (k.is_string() && k.s() == key) return &v;
  return nullptr;
}
void Dict::set(Value key, Value value) {
  for (auto& [k, v] : items)
    if (equals(k, key)) {
      v = std::move(value);
      return;
    }
  items.emplace_back(std::move(key), std::move(value));
}

Value CallArgs::get(size_t i, std::string_view name, Value def) const {
  if (i < pos.size()) return pos[i];
  for (auto& [k, v] : kw)
    if (k == name) return v;
  return def;
}
bool CallArgs::has(size_t i, std::string_view name) const {
  if (i < pos.size()) return true;
  for (auto& [k, v] : kw)
    if (k == name) return true;
  return false;
}

bool truthy(const Value& v) {
  switch (v.kind()) {
    case Kind::Undefined: case Kind::None: return false;
    case Kind::Bool: return v.b();
    case Kind::Int: return v.i() != 0;
    case Kind::Float: return v.f() != 0.0;
    case Kind::String: return !v.s().empty();
    case Kind::List: return !v.list().items.empty();
    case Kind::Dict: return !v.dict().items.empty();
    default: return true;
  }
}

std::string python_float_repr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  if (d == 0) return std::signbit(d) ? "-0.0" : "0.0";
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific);
  std::string sci(buf, r.ptr);  // e.g. "-1.2345e+02"
  bool neg = sci[0] == '-';
  if (neg) sci.erase(0, 1);
  size_t epos = sci.find('e');
  std::string mant = sci.substr(0, epos);
  int exp = std::stoi(sci.substr(epos + 1));
  std::string digits;
  for (char c : mant)
    if (c != '.') digits.push_back(c);
  std::string out;
  if (exp >= -5 + 1 && exp < 16) {  // Python repr: fixed when -4 <= exp < 16
    int nd = static_cast<int>(digits.size());
    if (exp >= 0) {
      if (nd <= exp + 1) out = digits + std::string(exp + 1 - nd, '0') + ".0";
      else out = digits.substr(0, exp + 1) + "." + digits.substr(exp + 1);
    } else {
      out = "0." + std::string(-exp - 1, '0') + digits;
    }
  } else {
    out = digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    out += fmt::format("e{}{:02d}", exp < 0 ? '-' : '+', std::abs(exp));
  }
  return neg ? "-" + out : out;
}

std::string type_name(const Value& v) {
  switch (v.kind()) {
    case Kind::Undefined: return "Undefined";
    case Kind::None: return "NoneType";
    case Kind::Bool: return "bool";
    case Kind::Int: return "int";
    case Kind::Float: return "float";
    case Kind::String: return "str";
    case Kind::List: return v.list().tuple ? "tuple" : "list";
    case Kind::Dict: return "dict";
    case Kind::Namespace: return "Namespace";
    case Kind::Function: return "function";
  }
  return "object";
}

std::string repr(const Value& v) {
  switch (v.kind()) {
    case Kind::Undefined: return "Undefined";
    case Kind::String: return str::repr(v.s());
    case Kind::List: {
      auto& l = v.list();
      std::string out = l.tuple ? "(" : "[";
      for (size_t k = 0; k < l.items.size(); ++k) {
        if (k) out += ", ";
        out += repr(l.items[k]);
      }
      if (l.tuple && l.items.size() == 1) out += ",";
      out += l.tuple ? ")" : "]";
      return out;
    }
    case Kind::Dict: {
      std::string out = "{";
      bool first = true;
      for (auto& [k, x] : v.dict().items) {
        if (!first) out += ", ";
        first = false;
        out += repr(k) + ": " + repr(x);
      }
      return out + "}";
    }
    case Kind::Namespace: {
      std::string out = "<Namespace {";
      bool first = true;
      for (auto& [k, x] : v.dict().items) {
        if (!first) out += ", ";
        first = false;
        out += repr(k) + ": " + repr(x);
      }
      return out + "}>";
    }
    case Kind::Function: return "<function " + v.fn().name + ">";
    default: return to_str(v);
  }
}

std::string to_str(const Value& v) {
  switch (v.kind()) {
    case Kind::Undefined: return "";
    case Kind::None: return "None";
    case Kind::Bool: return v.b() ? "True" : "False";
    case Kind::Int: return std::to_string(v.i());
    case Kind::Float: return python_float_repr(v.f());
    case Kind::String: return v.s();
    default: return repr(v);
  }
}

bool equals(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.is_float() || b.is_float()) return a.f() == b.f();
    return a.i() == b.i();
  }
  if (a.kind() != b.kind()) return false;
  switch (a.kind()) {
    case Kind::Undefined: case Kind::None: return true;
    case Kind::String: return a.s() == b.s();
    case Kind::List: {
      auto &x = a.list(), &y = b.list();
      if (x.tuple != y.tuple || x.items.size() != y.items.size()) return false;
      for (size_t k = 0; k < x.items.size(); ++k)
        if (!equals(x.items[k], y.items[k])) return false;
      return true;
    }
    case Kind::Dict: {
      auto &x = a.dict(), &y = b.dict();
      if (a.identity() == b.identity()) return true;
      if (x.items.size() != y.items.size()) return false;
      for (auto& [k, v] : x.items) {
        const Value* o = y.find(k);
        if (!o || !equals(v, *o)) return false;
      }
      return true;
    }
    default: return a.identity() == b.identity();
  }
}

int compare(const Value& a, const Value& b, const char* op) {
  if (a.is_number() && b.is_number()) {
    if (a.is_float() || b.is_float()) return a.f() < b.f() ? -1 : (a.f() > b.f() ? 1 : 0);
    return a.i() < b.i() ? -1 : (a.i() > b.i() ? 1 : 0);
  }
  if (a.is_string() && b.is_string()) return a.s() < b.s() ? -1 : (a.s() > b.s() ? 1 : 0);
  if (a.is_list() && b.is_list() && a.list().tuple == b.list().tuple) {
    auto &x = a.list().items, &y = b.list().items;
    for (size_t k = 0; k < x.size() && k < y.size(); ++k)
      if (!equals(x[k], y[k])) return compare(x[k], y[k], op);
    return x.size() < y.size() ? -1 : (x.size() > y.size() ? 1 : 0);
  }
  if (a.is_undefined()) a.fail_undefined();
  if (b.is_undefined()) b.fail_undefined();
  type_error(fmt::format("'{}' not supported between instances of '{}' and '{}'", op, type_name(a), type_name(b)));
}

bool contains(const Value& c, const Value& item) {
  switch (c.kind()) {
    case Kind::String:
      if (!item.is_string()) {
        if (item.is_undefined()) item.fail_undefined();
        type_error(fmt::format("'in <string>' requires string as left operand, not {}", type_name(item)));
      }
      return c.s().find(item.s()) != std::string::npos;
    case Kind::List:
      for (auto& x : c.list().items)
        if (equals(x, item)) return true;
      return false;
    case Kind::Dict: return c.dict().find(item) != nullptr;
    case Kind::Undefined: return false;
    default: type_error(fmt::format("argument of type '{}' is not iterable", type_name(c)));
  }
}

int64_t length(const Value& v) {
  switch (v.kind()) {
    case Kind::Undefined: return 0;
    case Kind::String: return static_cast<int64_t>(str::count_code_points(v.s()));
    case Kind::List: return static_cast<int64_t>(v.list().items.size());
    case Kind::Dict: return static_cast<int64_t>(v.dict().items.size());
    default: type_error(fmt::format("object of type '{}' has no len()", type_name(v)));
  }
}

std::vector<Value> iterate(const Value& v) {
  std::vector<Value> out;
  switch (v.kind()) {
    case Kind::Undefined: return out;
    case Kind::String:
      for (char32_t c : str::decode(v.s())) {
        std::string s;
        str::append_utf8(s, c);
        out.emplace_back(std::move(s));
      }
      return out;
    case Kind::List: return v.list().items;
    case Kind::Dict:
      for (auto& [k, x] : v.dict().items) out.push_back(k);
      return out;
    default: type_error(fmt::format("'{}' object is not iterable", type_name(v)));
  }
}

}  // namespace graft::chat_template
