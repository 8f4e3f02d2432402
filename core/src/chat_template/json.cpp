// JSON in (json.loads-like) and out (Python json.dumps with ensure_ascii=False, exactly).
#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "graft/chat_template/value.hpp"

namespace graft::chat_template {

Value from_json(const nlohmann::ordered_json& j) {
  using T = nlohmann::ordered_json::value_t;
  switch (j.type()) {
    case T::null: return Value::none();
    case T::boolean: return Value(j.get<bool>());
    case T::number_integer: return Value(j.get<int64_t>());
    case T::number_unsigned: {
      uint64_t u = j.get<uint64_t>();
      if (u <= static_cast<uint64_t>(INT64_MAX)) return Value(static_cast<int64_t>(u));
      return Value(static_cast<double>(u));
    }
    case T::number_float: return Value(j.get<double>());
    case T::string: return Value(j.get<std::string>());
    case T::array: {
      std::vector<Value> items;
      items.reserve(j.size());
      for (auto& x : j) items.push_back(from_json(x));
      return Value::make_list(std::move(items));
    }
    case T::object: {
      Dict d;
      for (auto& [k, x] : j.items()) d.set(Value(k), from_json(x));
      return Value::make_dict(std::move(d));
    }
    default: type_error("unsupported JSON value (binary or discarded)");
  }
}

namespace {

void escape_json_string(std::string& out, const std::string& s) {
  out.push_back('"');
  for (char ch : s) {
    unsigned char c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20) out += fmt::format("\\u{:04x}", c);
        else out.push_back(ch);
    }
  }
  out.push_back('"');
}

std::string float_json(double d) {
  if (std::isnan(d)) return "NaN";
  if (std::isinf(d)) return d > 0 ? "Infinity" : "-Infinity";
  return python_float_repr(d);
}

std::string key_json(const Value& k) {
  switch (k.kind()) {
    case Kind::String: return k.s();
    case Kind::Int: return std::to_string(k.i());
    case Kind::Float: return float_json(k.f());
    case Kind::Bool: return k.b() ? "true" : "false";
    case Kind::None: return "null";
    default: type_error(fmt::format("keys must be str, int, float, bool or None, not {}", type_name(k)));
  }
}

void dump(std::string& out, const Value& v, const JsonDumpOptions& o, int level) {
  switch (v.kind()) {
    case Kind::None: out += "null"; return;
    case Kind::Bool: out += v.b() ? "true" : "false"; return;
    case Kind::Int: out += std::to_string(v.i()); return;
    case Kind::Float: out += float_json(v.f()); return;
    case Kind::String: escape_json_string(out, v.s()); return;
    case Kind::List: {
      auto& items = v.list().items;
      if (items.empty()) {
        out += "[]";
        return;
      }
      out.push_back('[');
      std::string nl;
      if (o.has_indent) {
        nl = "\n";
        for (int k = 0; k <= level; ++k) nl += o.indent;
        out += nl;
      }
      for (size_t k = 0; k < items.size(); ++k) {
        if (k) out += o.item_sep + nl;
        dump(out, items[k], o, level + 1);
      }
      if (o.has_indent) {
        out.push_back('\n');
        for (int k = 0; k < level; ++k) out += o.indent;
      }
      out.push_back(']');
      return;
    }
    case Kind::Dict: {
      std::vector<std::pair<Value, Value>> items = v.dict().items;
      if (items.empty()) {
        out += "{}";
        return;
      }
      if (o.sort_keys)
        std::stable_sort(items.begin(), items.end(),
                         [](const auto& a, const auto& b) { return compare(a.first, b.first, "<") < 0; });
      out.push_back('{');
      std::string nl;
      if (o.has_indent) {
        nl = "\n";
        for (int k = 0; k <= level; ++k) nl += o.indent;
        out += nl;
      }
      bool first = true;
      for (auto& [k, x] : items) {
        if (!first) out += o.item_sep + nl;
        first = false;
        escape_json_string(out, key_json(k));
        out += o.key_sep;
        dump(out, x, o, level + 1);
      }
      if (o.has_indent) {
        out.push_back('\n');
        for (int k = 0; k < level; ++k) out += o.indent;
      }
      out.push_back('}');
      return;
    }
    default: type_error(fmt::format("Object of type {} is not JSON serializable", type_name(v)));
  }
}

}  // namespace

std::string json_dumps(const Value& v, const JsonDumpOptions& o) {
  std::string out;
  dump(out, v, o, 0);
  return out;
}

}  // namespace graft::chat_template
