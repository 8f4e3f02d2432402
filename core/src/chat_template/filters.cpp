// Jinja2 filters (jinja2/filters.py semantics) plus Hugging Face's tojson override
// (json.dumps(x, ensure_ascii=False, indent=, separators=, sort_keys=)).
#include <fmt/format.h>

#include <unicode/uchar.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <map>

#include "graft/chat_template/builtins.hpp"
#include "graft/chat_template/strings.hpp"

namespace graft::chat_template {
namespace {

Value f_tojson(const Value& v, CallArgs& a) {
  JsonDumpOptions o;
  Value indent = a.get(0, "indent", Value::none());
  Value seps = a.get(1, "separators", Value::none());
  o.sort_keys = truthy(a.get(2, "sort_keys", Value(false)));
  if (!indent.is_none()) {
    o.has_indent = true;
    o.item_sep = ",";
    if (indent.is_string()) o.indent = indent.s();
    else if (indent.is_integral()) o.indent = std::string(static_cast<size_t>(std::max<int64_t>(0, indent.i())), ' ');
    else type_error(fmt::format("indent must be int or str, not {}", type_name(indent)));
  }
  if (!seps.is_none()) {
    if (!seps.is_list() || seps.list().items.size() != 2 || !seps.list().items[0].is_string() || !seps.list().items[1].is_string())
      type_error("separators must be a (item_separator, key_separator) pair of strings");
    o.item_sep = seps.list().items[0].s();
    o.key_sep = seps.list().items[1].s();
  }
  return Value(json_dumps(v, o));
}

Value f_trim(const Value& v, CallArgs& a) {
  Value chars = a.get(0, "chars", Value::none());
  std::string c = chars.is_none() ? "" : to_str(chars);
  return Value(str::strip(to_str(v), chars.is_none() ? nullptr : &c, true, true));
}
Value f_length(const Value& v, CallArgs&) { return Value(length(v)); }
Value f_upper(const Value& v, CallArgs&) { return Value(str::upper(to_str(v))); }
Value f_lower(const Value& v, CallArgs&) { return Value(str::lower(to_str(v))); }
Value f_capitalize(const Value& v, CallArgs&) { return Value(str::capitalize(to_str(v))); }
Value f_title(const Value& v, CallArgs&) {
  // "".join(item[0].upper() + item[1:].lower() for item in re.split(r"([-\s({\[<]+)", s) if item)
  auto cps = str::decode(to_str(v));
  auto is_sep = [](char32_t c) { return str::py_isspace(c) || c == '-' || c == '(' || c == '{' || c == '[' || c == '<'; };
  std::string out;
  size_t k = 0;
  while (k < cps.size()) {
    size_t e = k;
    bool sep = is_sep(cps[k]);
    while (e < cps.size() && is_sep(cps[e]) == sep) ++e;
    std::u32string_view item(cps.data() + k, e - k);
    out += str::upper(str::encode(item.substr(0, 1)));
    out += str::lower(str::encode(item.substr(1)));
    k = e;
  }
  return Value(std::move(out));
}
Value f_default(const Value& v, CallArgs& a) {
  Value def = a.get(0, "default_value", Value(""));
  bool boolean = truthy(a.get(1, "boolean", Value(false)));
  if (v.is_undefined() || (boolean && !truthy(v))) return def;
  return v;
}
Value f_items(const Value& v, CallArgs&) {
  if (v.is_undefined()) return Value::make_list();
  if (!v.is_dict()) type_error("Can only get item pairs from a mapping.");
  std::vector<Value> out;
  for (auto& [k, x] : v.dict().items) out.push_back(Value::make_list({k, x}, true));
  return Value::make_list(std::move(out));
}

// environment.getitem over a dotted attribute path ("a.b", "0.name"), like make_attrgetter.
Value attr_path(const Value& item, const Value& attribute) {
  if (!attribute.is_string()) return get_item(item, attribute);
  Value cur = item;
  std::string_view path = attribute.s();
  size_t b = 0;
  while (true) {
    size_t e = path.find('.', b);
    std::string part(path.substr(b, e == std::string_view::npos ? std::string_view::npos : e - b));
    bool digits = !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return std::isdigit(static_cast<unsigned char>(c)); });
    cur = get_item(cur, digits ? Value(static_cast<int64_t>(std::stoll(part))) : Value(part));
    if (e == std::string_view::npos) break;
    b = e + 1;
  }
  return cur;
}

Value f_join(const Value& v, CallArgs& a) {
  std::string d = to_str(a.get(0, "d", Value("")));
  Value attribute = a.get(1, "attribute", Value::none());
  std::string out;
  bool first = true;
  for (auto& x : iterate(v)) {
    if (!first) out += d;
    first = false;
    out += to_str(attribute.is_none() ? x : attr_path(x, attribute));
  }
  return Value(std::move(out));
}
Value f_list(const Value& v, CallArgs&) { return Value::make_list(iterate(v)); }
Value f_first(const Value& v, CallArgs&) {
  auto items = iterate(v);
  if (items.empty()) return Value::undefined("No first item, sequence was empty.");
  return items.front();
}
Value f_last(const Value& v, CallArgs&) {
  if (v.is_undefined()) v.fail_undefined();
  if (v.is_dict()) type_error("'dict' object is not reversible");
  auto items = iterate(v);
  if (items.empty()) return Value::undefined("No last item, sequence was empty.");
  return items.back();
}
Value f_replace(const Value& v, CallArgs& a) {
  Value count = a.get(2, "count", Value::none());
  return Value(str::replace(to_str(v), to_str(a.get(0, "old")), to_str(a.get(1, "new")), count.is_none() ? -1 : count.i()));
}
Value f_string(const Value& v, CallArgs&) { return Value(to_str(v)); }

std::optional<int64_t> parse_int(std::string s, int base) {
  s = str::strip(s, nullptr, true, true);
  std::string c;
  for (size_t k = 0; k < s.size(); ++k) {
    if (s[k] == '_' && k > 0 && k + 1 < s.size() && std::isalnum(static_cast<unsigned char>(s[k - 1])) &&
        std::isalnum(static_cast<unsigned char>(s[k + 1])))
      continue;
    c.push_back(s[k]);
  }
  if (c.empty()) return std::nullopt;
  size_t p = 0;
  if (c[0] == '+' || c[0] == '-') p = 1;
  if (p >= c.size()) return std::nullopt;
  for (size_t k = p; k < c.size(); ++k) {
    char ch = static_cast<char>(std::tolower(static_cast<unsigned char>(c[k])));
    int d = std::isdigit(static_cast<unsigned char>(ch)) ? ch - '0' : (ch >= 'a' && ch <= 'z') ? ch - 'a' + 10 : 99;
    if (d >= base) return std::nullopt;
  }
  return std::strtoll(c.c_str(), nullptr, base);
}
std::optional<double> parse_float(const std::string& s0) {
  std::string s = str::strip(s0, nullptr, true, true);
  if (s.empty()) return std::nullopt;
  std::string l = str::lower(s);
  std::string body = (l[0] == '+' || l[0] == '-') ? l.substr(1) : l;
  double sign = l[0] == '-' ? -1 : 1;
  if (body == "inf" || body == "infinity") return sign * INFINITY;
  if (body == "nan") return NAN;
  for (char c : body)
    if (!(std::isdigit(static_cast<unsigned char>(c)) || c == '.' || c == 'e' || c == '+' || c == '-' || c == '_')) return std::nullopt;
  std::string clean;
  for (char c : s)
    if (c != '_') clean.push_back(c);
  char* end = nullptr;
  double d = std::strtod(clean.c_str(), &end);
  if (end == clean.c_str() || *end != '\0') return std::nullopt;
  return d;
}

Value f_int(const Value& v, CallArgs& a) {
  Value def = a.get(0, "default", Value(0));
  int base = static_cast<int>(a.get(1, "base", Value(10)).i());
  if (v.is_string()) {
    if (auto i = parse_int(v.s(), base)) return Value(*i);
    if (auto f = parse_float(v.s()))
      if (std::isfinite(*f)) return Value(static_cast<int64_t>(*f));
    return def;
  }
  if (v.is_integral()) return Value(v.i());
  if (v.is_float()) return std::isfinite(v.f()) ? Value(static_cast<int64_t>(v.f())) : def;
  return def;
}
Value f_float(const Value& v, CallArgs& a) {
  Value def = a.get(0, "default", Value(0.0));
  if (v.is_number()) return Value(v.f());
  if (v.is_string())
    if (auto f = parse_float(v.s())) return Value(*f);
  return def;
}
Value f_abs(const Value& v, CallArgs&) {
  if (v.is_float()) return Value(std::fabs(v.f()));
  if (v.is_integral()) return Value(static_cast<int64_t>(std::llabs(v.i())));
  if (v.is_undefined()) v.fail_undefined();
  type_error(fmt::format("bad operand type for abs(): '{}'", type_name(v)));
}
Value f_round(const Value& v, CallArgs& a) {
  int64_t precision = a.get(0, "precision", Value(0)).i();
  std::string method = to_str(a.get(1, "method", Value("common")));
  if (method != "common" && method != "ceil" && method != "floor")
    throw_error("FilterArgumentError", "method must be common, ceil or floor");
  if (!v.is_number()) {
    if (v.is_undefined()) v.fail_undefined();
    type_error(fmt::format("type {} doesn't define __round__ method", type_name(v)));
  }
  if (method == "common") {
    if (v.is_integral()) return Value(v.i());
    char buf[512];
    std::snprintf(buf, sizeof buf, "%.*f", static_cast<int>(std::clamp<int64_t>(precision, 0, 300)), v.f());
    double r = std::strtod(buf, nullptr);
    if (precision < 0) {
      double m = std::pow(10.0, static_cast<double>(-precision));
      r = std::nearbyint(v.f() / m) * m;
    }
    return Value(r);
  }
  double m = std::pow(10.0, static_cast<double>(precision));
  double x = v.f() * m;
  return Value((method == "ceil" ? std::ceil(x) : std::floor(x)) / m);
}
std::string html_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&#34;"; break;
      case '\'': out += "&#39;"; break;
      default: out.push_back(c);
    }
  }
  return out;
}
Value f_safe(const Value& v, CallArgs&) { return Value(to_str(v)); }
Value f_escape(const Value& v, CallArgs&) { return Value(html_escape(to_str(v))); }

Value select_impl(const Value& seq, CallArgs& a, bool by_attr, bool select) {
  size_t off = by_attr ? 1 : 0;
  Value attribute = by_attr ? a.get(0, "attribute") : Value();
  std::string test;
  CallArgs targs;
  if (a.pos.size() > off) {
    test = to_str(a.pos[off]);
    targs.pos.assign(a.pos.begin() + static_cast<std::ptrdiff_t>(off) + 1, a.pos.end());
  }
  for (auto& [k, v] : a.kw)
    if (k != "attribute") targs.kw.emplace_back(k, v);
  std::vector<Value> out;
  for (auto& item : iterate(seq)) {
    Value x = by_attr ? attr_path(item, attribute) : item;
    CallArgs ta = targs;
    bool r = test.empty() ? truthy(x) : apply_test(test, x, ta);
    if (r == select) out.push_back(item);
  }
  return Value::make_list(std::move(out));
}
Value f_select(const Value& v, CallArgs& a) { return select_impl(v, a, false, true); }
Value f_reject(const Value& v, CallArgs& a) { return select_impl(v, a, false, false); }
Value f_selectattr(const Value& v, CallArgs& a) { return select_impl(v, a, true, true); }
Value f_rejectattr(const Value& v, CallArgs& a) { return select_impl(v, a, true, false); }

Value f_map(const Value& v, CallArgs& a) {
  std::vector<Value> out;
  const Value* attribute = nullptr;
  Value def;
  bool has_def = false;
  for (auto& [k, x] : a.kw) {
    if (k == "attribute") attribute = &x;
    if (k == "default") {
      def = x;
      has_def = true;
    }
  }
  if (attribute) {
    for (auto& item : iterate(v)) {
      Value r = attr_path(item, *attribute);
      out.push_back(r.is_undefined() && has_def ? def : r);
    }
    return Value::make_list(std::move(out));
  }
  if (a.pos.empty()) throw_error("FilterArgumentError", "map requires a filter argument");
  std::string name = to_str(a.pos[0]);
  CallArgs fa;
  fa.pos.assign(a.pos.begin() + 1, a.pos.end());
  fa.kw = a.kw;
  for (auto& item : iterate(v)) {
    CallArgs c = fa;
    out.push_back(apply_filter(name, item, c));
  }
  return Value::make_list(std::move(out));
}

Value sort_key(const Value& item, const Value& attribute, bool case_sensitive) {
  Value k = attribute.is_none() ? item : attr_path(item, attribute);
  if (!case_sensitive && k.is_string()) return Value(str::lower(k.s()));
  return k;
}
Value f_unique(const Value& v, CallArgs& a) {
  bool cs = truthy(a.get(0, "case_sensitive", Value(false)));
  Value attribute = a.get(1, "attribute", Value::none());
  std::vector<Value> out, seen;
  for (auto& item : iterate(v)) {
    Value k = sort_key(item, attribute, cs);
    bool dup = false;
    for (auto& s : seen)
      if (equals(s, k)) dup = true;
    if (!dup) {
      seen.push_back(k);
      out.push_back(item);
    }
  }
  return Value::make_list(std::move(out));
}
Value f_sort(const Value& v, CallArgs& a) {
  bool rev = truthy(a.get(0, "reverse", Value(false)));
  bool cs = truthy(a.get(1, "case_sensitive", Value(false)));
  Value attribute = a.get(2, "attribute", Value::none());
  std::vector<std::pair<Value, Value>> keyed;
  for (auto& item : iterate(v)) keyed.emplace_back(sort_key(item, attribute, cs), item);
  std::stable_sort(keyed.begin(), keyed.end(), [rev](const auto& x, const auto& y) {
    return rev ? compare(y.first, x.first, "<") < 0 : compare(x.first, y.first, "<") < 0;
  });
  std::vector<Value> out;
  for (auto& kv : keyed) out.push_back(kv.second);
  return Value::make_list(std::move(out));
}
Value f_reverse(const Value& v, CallArgs&) {
  if (v.is_string()) return slice_value(v, Value::none(), Value::none(), Value(-1));
  if (v.is_dict()) type_error("'dict' object is not reversible");
  auto items = iterate(v);
  std::reverse(items.begin(), items.end());
  return Value::make_list(std::move(items));
}
Value f_batch(const Value& v, CallArgs& a) {
  int64_t n = a.get(0, "linecount").i();
  if (n <= 0) throw_error("FilterArgumentError", "batch size must be positive");
  bool fill = a.has(1, "fill_with");
  Value fw = a.get(1, "fill_with", Value::none());
  std::vector<Value> out, cur;
  for (auto& item : iterate(v)) {
    cur.push_back(item);
    if (static_cast<int64_t>(cur.size()) == n) {
      out.push_back(Value::make_list(std::move(cur)));
      cur.clear();
    }
  }
  if (!cur.empty()) {
    if (fill && !fw.is_none())
      while (static_cast<int64_t>(cur.size()) < n) cur.push_back(fw);
    out.push_back(Value::make_list(std::move(cur)));
  }
  return Value::make_list(std::move(out));
}
Value f_indent(const Value& v, CallArgs& a) {
  Value width = a.get(0, "width", Value(4));
  bool first = truthy(a.get(1, "first", Value(false)));
  bool blank = truthy(a.get(2, "blank", Value(false)));
  std::string ind = width.is_string() ? width.s() : std::string(static_cast<size_t>(std::max<int64_t>(0, width.i())), ' ');
  std::string s = to_str(v) + "\n";
  CallArgs none;
  auto lines_v = get_method(Value(s), "splitlines")->fn().fn(none);
  auto& lines = lines_v.list().items;
  std::string rv;
  if (blank) {
    for (size_t k = 0; k < lines.size(); ++k) rv += (k ? "\n" + ind : "") + lines[k].s();
  } else {
    rv = lines.empty() ? "" : lines[0].s();
    for (size_t k = 1; k < lines.size(); ++k) rv += "\n" + (lines[k].s().empty() ? "" : ind + lines[k].s());
  }
  if (first) rv = ind + rv;
  return Value(std::move(rv));
}
Value f_wordcount(const Value& v, CallArgs&) {
  int64_t n = 0;
  bool in = false;
  for (char32_t c : str::decode(to_str(v))) {
    bool w = c == '_' || u_isalnum(static_cast<UChar32>(c));
    if (w && !in) ++n;
    in = w;
  }
  return Value(n);
}
Value f_center(const Value& v, CallArgs& a) {
  CallArgs c;
  c.pos.push_back(a.get(0, "width", Value(80)));
  return get_method(Value(to_str(v)), "center")->fn().fn(c);
}
Value minmax(const Value& v, CallArgs& a, bool is_max) {
  bool cs = truthy(a.get(0, "case_sensitive", Value(false)));
  Value attribute = a.get(1, "attribute", Value::none());
  auto items = iterate(v);
  if (items.empty()) return Value::undefined(std::string("No aggregated item, sequence was empty."));
  size_t best = 0;
  for (size_t k = 1; k < items.size(); ++k) {
    int c = compare(sort_key(items[k], attribute, cs), sort_key(items[best], attribute, cs), "<");
    if (is_max ? c > 0 : c < 0) best = k;
  }
  return items[best];
}
Value f_min(const Value& v, CallArgs& a) { return minmax(v, a, false); }
Value f_max(const Value& v, CallArgs& a) { return minmax(v, a, true); }
Value f_sum(const Value& v, CallArgs& a) {
  Value attribute = a.get(0, "attribute", Value::none());
  Value acc = a.get(1, "start", Value(0));
  for (auto& item : iterate(v)) acc = binary_op("+", acc, attribute.is_none() ? item : attr_path(item, attribute));
  return acc;
}
Value f_dictsort(const Value& v, CallArgs& a) {
  bool cs = truthy(a.get(0, "case_sensitive", Value(false)));
  std::string by = to_str(a.get(1, "by", Value("key")));
  bool rev = truthy(a.get(2, "reverse", Value(false)));
  if (!v.is_dict()) type_error("dictsort expects a mapping");
  auto items = v.dict().items;
  size_t pos = by == "value" ? 1 : 0;
  std::stable_sort(items.begin(), items.end(), [&](const auto& x, const auto& y) {
    Value kx = sort_key(pos ? x.second : x.first, Value::none(), cs), ky = sort_key(pos ? y.second : y.first, Value::none(), cs);
    return rev ? compare(ky, kx, "<") < 0 : compare(kx, ky, "<") < 0;
  });
  std::vector<Value> out;
  for (auto& [k, x] : items) out.push_back(Value::make_list({k, x}, true));
  return Value::make_list(std::move(out));
}
// Python getattr only: unlike `x.name`, the attr filter does not fall back to x["name"].
Value f_attr(const Value& v, CallArgs& a) {
  std::string name = to_str(a.get(0, "name"));
  if (v.is_namespace()) {
    if (const Value* x = v.dict().find_key(name)) return *x;
  } else if (name.empty() || name[0] != '_') {
    if (auto m = get_method(v, name)) return *m;
  }
  return undefined_for(v, Value(name));
}
Value f_format(const Value& v, CallArgs& a) {
  if (!a.kw.empty()) {
    Dict d;
    for (auto& [k, x] : a.kw) d.set(Value(k), x);
    return Value(percent_format(to_str(v), Value::make_dict(std::move(d))));
  }
  return Value(percent_format(to_str(v), Value::make_list(a.pos, true)));
}

const std::map<std::string, FilterFn, std::less<>>& filters() {
  static const std::map<std::string, FilterFn, std::less<>> m = {
      {"tojson", f_tojson},       {"trim", f_trim},           {"length", f_length},       {"count", f_length},
      {"upper", f_upper},         {"lower", f_lower},         {"title", f_title},         {"capitalize", f_capitalize},
      {"default", f_default},     {"d", f_default},           {"items", f_items},         {"join", f_join},
      {"list", f_list},           {"first", f_first},         {"last", f_last},           {"replace", f_replace},
      {"string", f_string},       {"int", f_int},             {"float", f_float},         {"abs", f_abs},
      {"round", f_round},         {"safe", f_safe},           {"e", f_escape},            {"escape", f_escape},
      {"forceescape", f_escape},  {"select", f_select},       {"reject", f_reject},       {"selectattr", f_selectattr},
      {"rejectattr", f_rejectattr}, {"map", f_map},           {"unique", f_unique},       {"sort", f_sort},
      {"reverse", f_reverse},     {"batch", f_batch},         {"indent", f_indent},       {"wordcount", f_wordcount},
      {"center", f_center},       {"min", f_min},             {"max", f_max},             {"sum", f_sum},
      {"dictsort", f_dictsort},   {"attr", f_attr},           {"format", f_format},
  };
  return m;
}

}  // namespace

FilterFn find_filter(std::string_view name) {
  auto it = filters().find(name);
  return it == filters().end() ? nullptr : it->second;
}

Value apply_filter(std::string_view name, const Value& subject, CallArgs& args) {
  FilterFn f = find_filter(name);
  if (!f) throw_error("TemplateAssertionError", fmt::format("No filter named '{}'.", name));
  return f(subject, args);
}

}  // namespace graft::chat_template
