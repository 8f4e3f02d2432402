// Operators, attribute/item access and slicing with Python/Jinja2 semantics.
#include <fmt/format.h>

#include <cmath>

#include "graft/chat_template/builtins.hpp"
#include "graft/chat_template/strings.hpp"

namespace graft::chat_template {
namespace {

[[noreturn]] void unsupported(std::string_view op, const Value& a, const Value& b) {
  if (a.is_undefined()) a.fail_undefined();
  if (b.is_undefined()) b.fail_undefined();
  if (op == "+" && (a.is_string() || a.is_list()) && !a.is_tuple())
    type_error(fmt::format("can only concatenate {} (not \"{}\") to {}", type_name(a), type_name(b), type_name(a)));
  type_error(fmt::format("unsupported operand type(s) for {}: '{}' and '{}'", op, type_name(a), type_name(b)));
}

int64_t floordiv(int64_t a, int64_t b) {
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}
int64_t pymod(int64_t a, int64_t b) {
  int64_t m = a % b;
  if (m != 0 && ((m < 0) != (b < 0))) m += b;
  return m;
}
double pyfmod(double a, double b) {
  double m = std::fmod(a, b);
  if (m != 0 && ((m < 0) != (b < 0))) m += b;
  return m;
}

Value repeat(const Value& seq, int64_t n) {
  if (seq.is_string()) {
    std::string out;
    for (int64_t k = 0; k < n; ++k) out += seq.s();
    return Value(std::move(out));
  }
  std::vector<Value> out;
  for (int64_t k = 0; k < n; ++k)
    for (auto& x : seq.list().items) out.push_back(x);
  return Value::make_list(std::move(out), seq.list().tuple);
}

}  // namespace

Value binary_op(std::string_view op, const Value& a, const Value& b) {
  if (op == "~") return Value(to_str(a) + to_str(b));
  bool nums = a.is_number() && b.is_number();
  bool ints = a.is_integral() && b.is_integral();
  if (op == "+") {
    if (ints) return Value(a.i() + b.i());
    if (nums) return Value(a.f() + b.f());
    if (a.is_string() && b.is_string()) return Value(a.s() + b.s());
    if (a.is_list() && b.is_list() && a.list().tuple == b.list().tuple) {
      std::vector<Value> v = a.list().items;
      v.insert(v.end(), b.list().items.begin(), b.list().items.end());
      return Value::make_list(std::move(v), a.list().tuple);
    }
    unsupported(op, a, b);
  }
  if (op == "-") {
    if (ints) return Value(a.i() - b.i());
    if (nums) return Value(a.f() - b.f());
    unsupported(op, a, b);
  }
  if (op == "*") {
    if (ints) return Value(a.i() * b.i());
    if (nums) return Value(a.f() * b.f());
    if ((a.is_string() || a.is_list()) && b.is_integral()) return repeat(a, b.i());
    if ((b.is_string() || b.is_list()) && a.is_integral()) return repeat(b, a.i());
    unsupported(op, a, b);
  }
  if (op == "/") {
    if (!nums) unsupported(op, a, b);
    if (b.f() == 0) throw_error("ZeroDivisionError", "division by zero");
    return Value(a.f() / b.f());
  }
  if (op == "//") {
    if (!nums) unsupported(op, a, b);
    if (b.f() == 0) throw_error("ZeroDivisionError", "integer division or modulo by zero");
    if (ints) return Value(floordiv(a.i(), b.i()));
    return Value(std::floor(a.f() / b.f()));
  }
  if (op == "%") {
    if (a.is_string()) return Value(percent_format(a.s(), b));
    if (!nums) unsupported(op, a, b);
    if (b.f() == 0) throw_error("ZeroDivisionError", "integer division or modulo by zero");
    if (ints) return Value(pymod(a.i(), b.i()));
    return Value(pyfmod(a.f(), b.f()));
  }
  if (op == "**") {
    if (!nums) unsupported(op, a, b);
    if (ints && b.i() >= 0) {
      int64_t r = 1;
      for (int64_t k = 0; k < b.i(); ++k) r *= a.i();
      return Value(r);
    }
    return Value(std::pow(a.f(), b.f()));
  }
  type_error(fmt::format("unknown operator {}", op));
}

Value unary_op(std::string_view op, const Value& a) {
  if (a.is_undefined()) a.fail_undefined();
  if (!a.is_number()) type_error(fmt::format("bad operand type for unary {}: '{}'", op, type_name(a)));
  if (op == "-") return a.is_float() ? Value(-a.f()) : Value(-a.i());
  return a.is_float() ? Value(a.f()) : Value(a.i());
}

bool compare_op(std::string_view op, const Value& a, const Value& b) {
  if (op == "==") return equals(a, b);
  if (op == "!=") return !equals(a, b);
  if (op == "in") return contains(b, a);
  if (op == "notin") return !contains(b, a);
  std::string o(op);
  int c = compare(a, b, o.c_str());
  if (op == "<") return c < 0;
  if (op == "<=") return c <= 0;
  if (op == ">") return c > 0;
  if (op == ">=") return c >= 0;
  type_error(fmt::format("unknown comparison {}", op));
}

Value undefined_for(const Value& obj, const Value& key) {
  std::string t = obj.is_none() ? "None" : type_name(obj) + " object";
  if (key.is_string()) return Value::undefined(fmt::format("'{}' has no attribute '{}'", t, key.s()));
  return Value::undefined(fmt::format("{} has no element {}", t, repr(key)));
}

namespace {
// Python index normalisation; returns false when out of range.
bool norm_index(int64_t& i, int64_t n) {
  if (i < 0) i += n;
  return i >= 0 && i < n;
}
// obj[key] without the getattr fallback; nullopt on TypeError/LookupError.
std::optional<Value> subscript(const Value& obj, const Value& key) {
  switch (obj.kind()) {
    case Kind::Dict: {
      const Value* v = obj.dict().find(key);
      if (v) return *v;
      return std::nullopt;
    }
    case Kind::List: {
      if (!key.is_integral()) return std::nullopt;
      int64_t i = key.i();
      auto& items = obj.list().items;
      if (!norm_index(i, static_cast<int64_t>(items.size()))) return std::nullopt;
      return items[static_cast<size_t>(i)];
    }
    case Kind::String: {
      if (!key.is_integral()) return std::nullopt;
      int64_t i = key.i();
      if (str::is_ascii(obj.s())) {
        if (!norm_index(i, static_cast<int64_t>(obj.s().size()))) return std::nullopt;
        return Value(obj.s().substr(static_cast<size_t>(i), 1));
      }
      auto cps = str::decode(obj.s());
      if (!norm_index(i, static_cast<int64_t>(cps.size()))) return std::nullopt;
      std::string s;
      str::append_utf8(s, cps[static_cast<size_t>(i)]);
      return Value(std::move(s));
    }
    case Kind::Namespace: return std::nullopt;
    default: return std::nullopt;
  }
}

std::optional<Value> attribute(const Value& obj, const std::string& name) {
  if (obj.is_namespace()) {
    const Value* v = obj.dict().find_key(name);
    if (v) return *v;
    return std::nullopt;
  }
  if (!name.empty() && name[0] == '_') return std::nullopt;  // the sandbox hides private attributes
  return get_method(obj, name);
}
}  // namespace

Value get_attr(const Value& obj, const std::string& name) {
  if (obj.is_undefined()) obj.fail_undefined();
  if (auto a = attribute(obj, name)) return *a;
  if (auto v = subscript(obj, Value(name))) return *v;
  return undefined_for(obj, Value(name));
}

Value get_item(const Value& obj, const Value& key) {
  if (obj.is_undefined()) obj.fail_undefined();
  if (key.is_list() && !obj.is_dict()) type_error("list indices must be integers or slices, not tuple");
  if (auto v = subscript(obj, key)) return *v;
  if (key.is_string())
    if (auto a = attribute(obj, key.s())) return *a;
  return undefined_for(obj, key);
}

Value slice_value(const Value& obj, const Value& start, const Value& stop, const Value& step) {
  if (obj.is_undefined()) obj.fail_undefined();
  auto opt_int = [](const Value& v, const char* what) -> std::optional<int64_t> {
    if (v.is_none() || v.is_undefined()) return std::nullopt;
    if (!v.is_integral()) type_error(fmt::format("slice {} must be an integer or None", what));
    return v.i();
  };
  auto st = opt_int(step, "step");
  int64_t stp = st.value_or(1);
  if (stp == 0) throw_error("ValueError", "slice step cannot be zero");
  std::vector<char32_t> cps;
  bool is_str = obj.is_string(), ascii = is_str && str::is_ascii(obj.s());
  int64_t n;
  if (is_str) {
    if (!ascii) cps = str::decode(obj.s());
    n = ascii ? static_cast<int64_t>(obj.s().size()) : static_cast<int64_t>(cps.size());
  } else if (obj.is_list()) {
    n = static_cast<int64_t>(obj.list().items.size());
  } else {
    type_error(fmt::format("'{}' object is not subscriptable", type_name(obj)));
  }
  auto clampi = [&](std::optional<int64_t> v, bool is_start) -> int64_t {
    if (!v) return stp > 0 ? (is_start ? 0 : n) : (is_start ? n - 1 : -1);
    int64_t x = *v;
    if (x < 0) {
      x += n;
      if (x < 0) x = stp > 0 ? 0 : -1;
    } else if (x >= n) {
      x = stp > 0 ? n : n - 1;
    }
    return x;
  };
  int64_t b = clampi(opt_int(start, "start"), true), e = clampi(opt_int(stop, "stop"), false);
  std::vector<int64_t> idx;
  if (stp > 0)
    for (int64_t k = b; k < e; k += stp) idx.push_back(k);
  else
    for (int64_t k = b; k > e; k += stp) idx.push_back(k);
  if (is_str) {
    std::string out;
    for (int64_t k : idx) {
      if (ascii) out.push_back(obj.s()[static_cast<size_t>(k)]);
      else str::append_utf8(out, cps[static_cast<size_t>(k)]);
    }
    return Value(std::move(out));
  }
  std::vector<Value> out;
  for (int64_t k : idx) out.push_back(obj.list().items[static_cast<size_t>(k)]);
  return Value::make_list(std::move(out), obj.list().tuple);
}

Value call_value(const Value& callee, CallArgs& args) {
  if (callee.is_undefined()) callee.fail_undefined();
  if (!callee.is_function()) type_error(fmt::format("'{}' object is not callable", type_name(callee)));
  return callee.fn().fn(args);
}

std::string percent_format(const std::string& fmt, const Value& args) {
  std::vector<Value> vals = args.is_tuple() ? args.list().items : std::vector<Value>{args};
  const Dict* mapping = args.is_dict() ? &args.dict() : nullptr;
  std::string out;
  size_t ai = 0;
  for (size_t k = 0; k < fmt.size(); ++k) {
    if (fmt[k] != '%') {
      out.push_back(fmt[k]);
      continue;
    }
    if (++k >= fmt.size()) throw_error("ValueError", "incomplete format");
    if (fmt[k] == '%') {
      out.push_back('%');
      continue;
    }
    Value v;
    if (fmt[k] == '(' && mapping) {
      size_t e = fmt.find(')', k);
      if (e == std::string::npos) throw_error("ValueError", "incomplete format key");
      const Value* p = mapping->find_key(std::string_view(fmt).substr(k + 1, e - k - 1));
      if (!p) throw_error("KeyError", fmt.substr(k + 1, e - k - 1));
      v = *p;
      k = e + 1;
    } else {
      if (ai >= vals.size()) type_error("not enough arguments for format string");
      v = vals[ai++];
    }
    std::string spec;
    while (k < fmt.size() && std::string_view("-+ #0123456789.").find(fmt[k]) != std::string_view::npos) spec.push_back(fmt[k++]);
    if (k >= fmt.size()) throw_error("ValueError", "incomplete format");
    char conv = fmt[k];
    std::string body;
    switch (conv) {
      case 's': body = to_str(v); break;
      case 'r': body = repr(v); break;
      case 'd': case 'i':
        if (!v.is_number()) type_error(fmt::format("%{} format: a real number is required, not {}", conv, type_name(v)));
        body = std::to_string(v.is_float() ? static_cast<int64_t>(v.f()) : v.i());
        break;
      case 'f': case 'F': case 'e': case 'g': {
        if (!v.is_number()) type_error(fmt::format("must be real number, not {}", type_name(v)));
        char buf[512];
        std::string f = "%" + spec + conv;
        std::snprintf(buf, sizeof buf, f.c_str(), v.f());
        out += buf;
        continue;
      }
      default: throw_error("ValueError", fmt::format("unsupported format character '{}'", conv));
    }
    // width for %s/%d
    size_t width = 0;
    bool left = spec.find('-') != std::string::npos;
    for (char c : spec)
      if (std::isdigit(static_cast<unsigned char>(c))) width = width * 10 + static_cast<size_t>(c - '0');
    size_t len = str::count_code_points(body);
    if (len < width) body = left ? body + std::string(width - len, ' ') : std::string(width - len, ' ') + body;
    out += body;
  }
  if (!args.is_dict() && ai < vals.size()) type_error("not all arguments converted during string formatting");
  return out;
}

}  // namespace graft::chat_template
