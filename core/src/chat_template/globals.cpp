// Global functions of the HF chat template environment: range, dict, namespace, raise_exception,
// strftime_now; and str.format.
#include <fmt/format.h>

#include <chrono>

#include "graft/chat_template/builtins.hpp"
#include "graft/chat_template/strings.hpp"

namespace graft::chat_template {

std::string str_format(const std::string& f, CallArgs& args) {
  std::string out;
  size_t auto_idx = 0;
  for (size_t k = 0; k < f.size(); ++k) {
    char c = f[k];
    if (c == '{' && k + 1 < f.size() && f[k + 1] == '{') {
      out.push_back('{');
      ++k;
      continue;
    }
    if (c == '}' && k + 1 < f.size() && f[k + 1] == '}') {
      out.push_back('}');
      ++k;
      continue;
    }
    if (c != '{') {
      out.push_back(c);
      continue;
    }
    size_t e = f.find('}', k);
    if (e == std::string::npos) throw_error("ValueError", "Single '{' encountered in format string");
    std::string field = f.substr(k + 1, e - k - 1);
    std::string spec;
    if (auto colon = field.find(':'); colon != std::string::npos) {
      spec = field.substr(colon + 1);
      field = field.substr(0, colon);
    }
    Value v;
    if (field.empty()) {
      if (auto_idx >= args.pos.size()) throw_error("IndexError", "Replacement index out of range for positional args tuple");
      v = args.pos[auto_idx++];
    } else if (std::isdigit(static_cast<unsigned char>(field[0]))) {
      size_t i = std::stoul(field);
      if (i >= args.pos.size()) throw_error("IndexError", "Replacement index out of range for positional args tuple");
      v = args.pos[i];
    } else {
      bool found = false;
      for (auto& [kk, x] : args.kw)
        if (kk == field) {
          v = x;
          found = true;
        }
      if (!found) throw_error("KeyError", "'" + field + "'");
    }
    if (!spec.empty()) throw_error("TemplateRuntimeError", "format specs in str.format are not supported by graft");
    out += to_str(v);
    k = e;
  }
  return out;
}

void add_globals(Dict& g, std::optional<std::tm> now) {
  g.set(Value("range"), Value::function("range", [](CallArgs& a) {
          if (a.pos.empty() || a.pos.size() > 3) type_error("range expected 1 to 3 arguments");
          for (auto& x : a.pos)
            if (!x.is_integral()) type_error(fmt::format("'{}' object cannot be interpreted as an integer", type_name(x)));
          int64_t start = 0, stop, step = 1;
          if (a.pos.size() == 1) stop = a.pos[0].i();
          else {
            start = a.pos[0].i();
            stop = a.pos[1].i();
            if (a.pos.size() == 3) step = a.pos[2].i();
          }
          if (step == 0) throw_error("ValueError", "range() arg 3 must not be zero");
          std::vector<Value> out;
          for (int64_t k = start; step > 0 ? k < stop : k > stop; k += step) {
            if (out.size() >= 100000) throw_error("OverflowError", "Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
            out.emplace_back(k);
          }
          return Value::make_list(std::move(out));
        }));
  g.set(Value("dict"), Value::function("dict", [](CallArgs& a) {
          Dict d;
          if (!a.pos.empty()) {
            if (a.pos[0].is_dict()) d = a.pos[0].dict();
            else
              for (auto& kv : iterate(a.pos[0])) {
                auto pair = iterate(kv);
                if (pair.size() != 2) throw_error("ValueError", "dictionary update sequence element has wrong length");
                d.set(pair[0], pair[1]);
              }
          }
          for (auto& [k, v] : a.kw) d.set(Value(k), v);
          return Value::make_dict(std::move(d));
        }));
  g.set(Value("namespace"), Value::function("namespace", [](CallArgs& a) {
          Value ns = Value::namespace_();
          if (!a.pos.empty()) {
            if (!a.pos[0].is_dict()) type_error("namespace() positional argument must be a mapping");
            for (auto& [k, v] : a.pos[0].dict().items) ns.dict().set(k, v);
          }
          for (auto& [k, v] : a.kw) ns.dict().set(Value(k), v);
          return ns;
        }));
  g.set(Value("raise_exception"), Value::function("raise_exception", [](CallArgs& a) -> Value {
          throw_error("raise_exception", to_str(a.get(0, "message", Value(""))));
        }));
  g.set(Value("strftime_now"), Value::function("strftime_now", [now](CallArgs& a) {
          std::tm tm{};
          if (now) tm = *now;
          else {
            std::time_t t = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
            localtime_r(&t, &tm);
          }
          std::string f = to_str(a.get(0, "format", Value("")));
          if (f.empty()) return Value("");
          std::string buf(256 + f.size() * 8, '\0');
          size_t n = std::strftime(buf.data(), buf.size(), f.c_str(), &tm);
          buf.resize(n);
          return Value(std::move(buf));
        }));
}

}  // namespace graft::chat_template
