// Python methods of str, dict and list reachable from templates (x.strip(), d.items(), ...).
// The immutable sandbox (ImmutableSandboxedEnvironment) refuses list/dict mutators: accessing one gives
// an Undefined whose call raises SecurityError, like Jinja2's unsafe_undefined.
#include <fmt/format.h>

#include <set>

#include "graft/chat_template/builtins.hpp"
#include "graft/chat_template/strings.hpp"

namespace graft::chat_template {
namespace {

Value method(const std::string& name, std::function<Value(CallArgs&)> fn) { return Value::function(name, std::move(fn)); }

std::optional<std::string> opt_str(const CallArgs& a, size_t i, const char* name) {
  Value v = a.get(i, name, Value::none());
  if (v.is_none()) return std::nullopt;
  if (!v.is_string()) type_error(fmt::format("argument must be str or None, not {}", type_name(v)));
  return v.s();
}
int64_t opt_int(const CallArgs& a, size_t i, const char* name, int64_t def) {
  Value v = a.get(i, name, Value(def));
  if (v.is_none()) return def;
  if (!v.is_integral()) type_error(fmt::format("'{}' object cannot be interpreted as an integer", type_name(v)));
  return v.i();
}
std::string need_str(const Value& v, const char* what) {
  if (!v.is_string()) type_error(fmt::format("{} arg must be str, not {}", what, type_name(v)));
  return v.s();
}
Value str_list(std::vector<std::string> parts) {
  std::vector<Value> out;
  out.reserve(parts.size());
  for (auto& p : parts) out.emplace_back(std::move(p));
  return Value::make_list(std::move(out));
}

// s[start:end] in code points for startswith/endswith/find with optional start/end.
std::string sub_range(const std::string& s, const CallArgs& a, size_t first) {
  if (!a.has(first, "start") && !a.has(first + 1, "end")) return s;
  return slice_value(Value(s), a.get(first, "start", Value::none()), a.get(first + 1, "end", Value::none()), Value::none()).s();
}

std::optional<Value> str_method(const Value& self, const std::string& n) {
  const std::string s = self.s();
  if (n == "strip" || n == "lstrip" || n == "rstrip")
    return method(n, [s, n](CallArgs& a) {
      auto chars = opt_str(a, 0, "chars");
      return Value(str::strip(s, chars ? &*chars : nullptr, n != "rstrip", n != "lstrip"));
    });
  if (n == "split" || n == "rsplit")
    return method(n, [s, n](CallArgs& a) {
      auto sep = opt_str(a, 0, "sep");
      int64_t maxsplit = opt_int(a, 1, "maxsplit", -1);
      if (sep && sep->empty()) throw_error("ValueError", "empty separator");
      return str_list(n == "split" ? str::split(s, sep ? &*sep : nullptr, maxsplit) : str::rsplit(s, sep ? &*sep : nullptr, maxsplit));
    });
  if (n == "splitlines")
    return method(n, [s](CallArgs& a) {
      bool keep = truthy(a.get(0, "keepends", Value(false)));
      std::vector<std::string> parts;
      size_t b = 0;
      for (size_t k = 0; k < s.size(); ++k) {
        if (s[k] == '\n' || s[k] == '\r') {
          size_t e = k;
          if (s[k] == '\r' && k + 1 < s.size() && s[k + 1] == '\n') ++k;
          parts.push_back(s.substr(b, (keep ? k + 1 : e) - b));
          b = k + 1;
        }
      }
      if (b < s.size()) parts.push_back(s.substr(b));
      return str_list(parts);
    });
  if (n == "startswith" || n == "endswith")
    return method(n, [s, n](CallArgs& a) {
      if (a.pos.empty()) type_error(n + "() takes at least 1 argument (0 given)");
      std::string hay = sub_range(s, a, 1);
      std::vector<Value> cands = a.pos[0].is_tuple() ? a.pos[0].list().items : std::vector<Value>{a.pos[0]};
      for (auto& c : cands) {
        if (!c.is_string())
          type_error(fmt::format("{} first arg must be str or a tuple of str, not {}", n, type_name(c)));
        const std::string& p = c.s();
        bool ok = n == "startswith" ? hay.compare(0, p.size(), p) == 0 && hay.size() >= p.size()
                                    : hay.size() >= p.size() && hay.compare(hay.size() - p.size(), p.size(), p) == 0;
        if (ok) return Value(true);
      }
      return Value(false);
    });
  if (n == "upper") return method(n, [s](CallArgs&) { return Value(str::upper(s)); });
  if (n == "lower") return method(n, [s](CallArgs&) { return Value(str::lower(s)); });
  if (n == "title") return method(n, [s](CallArgs&) { return Value(str::title(s)); });
  if (n == "capitalize") return method(n, [s](CallArgs&) { return Value(str::capitalize(s)); });
  if (n == "replace")
    return method(n, [s](CallArgs& a) {
      if (a.pos.size() < 2) type_error("replace() takes at least 2 arguments");
      return Value(str::replace(s, need_str(a.pos[0], "replace()"), need_str(a.pos[1], "replace()"), opt_int(a, 2, "count", -1)));
    });
  if (n == "find" || n == "rfind" || n == "index" || n == "rindex")
    return method(n, [s, n](CallArgs& a) {
      if (a.pos.empty()) type_error(n + "() takes at least 1 argument (0 given)");
      std::string sub = need_str(a.pos[0], "must be str");
      int64_t off = 0;
      std::string hay = s;
      if (a.has(1, "start")) {
        Value st = a.get(1, "start");
        int64_t start = st.is_none() ? 0 : st.i();
        int64_t len = static_cast<int64_t>(str::count_code_points(s));
        if (start < 0) start = std::max<int64_t>(0, start + len);
        off = start;
        hay = sub_range(s, a, 1);
      }
      int64_t r = str::find(hay, sub, n[0] == 'r');
      if (r < 0 && (n == "index" || n == "rindex")) throw_error("ValueError", "substring not found");
      return Value(r < 0 ? r : r + off);
    });
  if (n == "count")
    return method(n, [s](CallArgs& a) {
      if (a.pos.empty()) type_error("count() takes at least 1 argument (0 given)");
      return Value(str::count(sub_range(s, a, 1), need_str(a.pos[0], "must be str")));
    });
  if (n == "join")
    return method(n, [s](CallArgs& a) {
      if (a.pos.empty()) type_error("join() takes exactly one argument (0 given)");
      std::string out;
      bool first = true;
      for (auto& x : iterate(a.pos[0])) {
        if (!x.is_string()) type_error(fmt::format("sequence item: expected str instance, {} found", type_name(x)));
        if (!first) out += s;
        first = false;
        out += x.s();
      }
      return Value(std::move(out));
    });
  if (n == "format") return method(n, [s](CallArgs& a) { return Value(str_format(s, a)); });
  if (n == "removeprefix" || n == "removesuffix")
    return method(n, [s, n](CallArgs& a) {
      std::string p = need_str(a.get(0, "prefix"), n.c_str());
      if (n == "removeprefix") return Value(s.compare(0, p.size(), p) == 0 ? s.substr(p.size()) : s);
      return Value(s.size() >= p.size() && s.compare(s.size() - p.size(), p.size(), p) == 0 ? s.substr(0, s.size() - p.size()) : s);
    });
  auto pred = [&](auto fn) {
    return method(n, [s, fn](CallArgs&) {
      auto cps = str::decode(s);
      if (cps.empty()) return Value(false);
      for (char32_t c : cps)
        if (!fn(c)) return Value(false);
      return Value(true);
    });
  };
  if (n == "isspace") return pred([](char32_t c) { return str::py_isspace(c); });
  if (n == "isdigit" || n == "isdecimal" || n == "isnumeric") return pred([](char32_t c) { return c >= '0' && c <= '9'; });
  if (n == "isalpha") return pred([](char32_t c) { return (c | 0x20) >= 'a' && (c | 0x20) <= 'z'; });
  if (n == "isalnum")
    return pred([](char32_t c) { return ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') || (c >= '0' && c <= '9'); });
  if (n == "islower") return method(n, [s](CallArgs&) { return Value(str::lower(s) == s && str::upper(s) != s); });
  if (n == "isupper") return method(n, [s](CallArgs&) { return Value(str::upper(s) == s && str::lower(s) != s); });
  if (n == "center" || n == "ljust" || n == "rjust")
    return method(n, [s, n](CallArgs& a) {
      int64_t width = opt_int(a, 0, "width", 0);
      std::string fill = a.has(1, "fillchar") ? need_str(a.get(1, "fillchar"), "fillchar") : " ";
      int64_t len = static_cast<int64_t>(str::count_code_points(s));
      if (width <= len) return Value(s);
      int64_t pad = width - len, left = 0;
      if (n == "center") left = pad / 2 + (pad & width & 1);
      else if (n == "rjust") left = pad;
      std::string out;
      for (int64_t k = 0; k < left; ++k) out += fill;
      out += s;
      for (int64_t k = 0; k < pad - left; ++k) out += fill;
      return Value(std::move(out));
    });
  static const std::set<std::string> other = {"casefold", "encode", "expandtabs", "format_map", "isascii",
                                              "isidentifier", "isprintable", "istitle", "maketrans", "partition",
                                              "rpartition", "swapcase", "translate", "zfill"};
  if (other.count(n))
    return method(n, [n](CallArgs&) -> Value {
      throw_error("TemplateRuntimeError", fmt::format("str.{}() is not supported by graft's chat template interpreter", n));
    });
  return std::nullopt;
}

Value unsafe(const Value& obj, const std::string& n) {
  return Value::undefined(fmt::format("access to attribute '{}' of '{}' object is unsafe.", n, type_name(obj)), "SecurityError");
}

std::optional<Value> dict_method(const Value& self, const std::string& n) {
  if (n == "items")
    return method(n, [self](CallArgs&) {
      std::vector<Value> out;
      for (auto& [k, v] : self.dict().items) out.push_back(Value::make_list({k, v}, true));
      return Value::make_list(std::move(out));
    });
  if (n == "keys")
    return method(n, [self](CallArgs&) {
      std::vector<Value> out;
      for (auto& [k, v] : self.dict().items) out.push_back(k);
      return Value::make_list(std::move(out));
    });
  if (n == "values")
    return method(n, [self](CallArgs&) {
      std::vector<Value> out;
      for (auto& [k, v] : self.dict().items) out.push_back(v);
      return Value::make_list(std::move(out));
    });
  if (n == "get")
    return method(n, [self](CallArgs& a) {
      if (a.pos.empty()) type_error("get expected at least 1 argument, got 0");
      const Value* v = self.dict().find(a.pos[0]);
      if (v) return *v;
      return a.pos.size() > 1 ? a.pos[1] : Value::none();
    });
  if (n == "copy") return method(n, [self](CallArgs&) { return Value::make_dict(self.dict()); });
  if (n == "pop" || n == "popitem" || n == "setdefault" || n == "update" || n == "clear") return unsafe(self, n);
  if (n == "fromkeys")
    return method(n, [](CallArgs&) -> Value { throw_error("TemplateRuntimeError", "dict.fromkeys() is not supported"); });
  return std::nullopt;
}

std::optional<Value> list_method(const Value& self, const std::string& n) {
  if (n == "index")
    return method(n, [self](CallArgs& a) {
      if (a.pos.empty()) type_error("index expected at least 1 argument, got 0");
      auto& items = self.list().items;
      for (size_t k = 0; k < items.size(); ++k)
        if (equals(items[k], a.pos[0])) return Value(static_cast<int64_t>(k));
      throw_error("ValueError", fmt::format("{} is not in list", repr(a.pos[0])));
    });
  if (n == "count")
    return method(n, [self](CallArgs& a) {
      if (a.pos.empty()) type_error("count() takes exactly one argument (0 given)");
      int64_t c = 0;
      for (auto& x : self.list().items)
        if (equals(x, a.pos[0])) ++c;
      return Value(c);
    });
  if (self.is_tuple()) return std::nullopt;
  if (n == "copy") return method(n, [self](CallArgs&) { return Value::make_list(self.list().items); });
  if (n == "append" || n == "clear" || n == "extend" || n == "insert" || n == "pop" || n == "remove" || n == "reverse" ||
      n == "sort")
    return unsafe(self, n);
  return std::nullopt;
}

}  // namespace

std::optional<Value> get_method(const Value& obj, const std::string& name) {
  switch (obj.kind()) {
    case Kind::String: return str_method(obj, name);
    case Kind::Dict: return dict_method(obj, name);
    case Kind::List: return list_method(obj, name);
    default: return std::nullopt;
  }
}

}  // namespace graft::chat_template
