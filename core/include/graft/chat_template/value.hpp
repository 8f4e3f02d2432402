// graft::chat_template::Value — the dynamic value of the Jinja interpreter, with Python semantics.
//
// Kinds mirror what Hugging Face chat templates see in Jinja2: Undefined (Jinja2's default Undefined:
// prints empty, is falsy, raises on attribute access / arithmetic / calls), None, bool, int (int64),
// float (double), str (UTF-8; lengths, indexing and slicing count code points like Python), list /
// tuple, dict (insertion ordered, like Python), namespace() objects and callables.
// Lists and dicts are shared by reference (like Python objects); the sandbox forbids mutating them.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace graft::chat_template {

class Value;
struct CallArgs;

// Error raised while lexing, parsing or rendering. `line` is 0 until the interpreter attaches the
// template line of the node being evaluated. `kind` is Jinja2's exception class name.
struct TemplateError : std::runtime_error {
  TemplateError(std::string kind_, std::string msg, int line_ = 0, int col_ = 0)
      : std::runtime_error(msg), kind(std::move(kind_)), line(line_), col(col_) {}
  std::string kind;  // "TemplateSyntaxError", "UndefinedError", "TypeError", "SecurityError", "raise_exception", ...
  int line, col;
};
[[noreturn]] void throw_error(std::string kind, std::string msg);
[[noreturn]] inline void type_error(std::string msg) { throw_error("TypeError", std::move(msg)); }

enum class Kind : uint8_t { Undefined, None, Bool, Int, Float, String, List, Dict, Namespace, Function };

struct List {
  std::vector<Value> items;
  bool tuple = false;
};

struct Dict {
  std::vector<std::pair<Value, Value>> items;
  const Value* find(const Value& key) const;
  const Value* find_key(std::string_view key) const;
  void set(Value key, Value value);
};

struct Function {
  std::string name;
  std::function<Value(CallArgs&)> fn;
};

class Value {
 public:
  Value() = default;  // Undefined without a hint
  Value(bool b) : kind_(Kind::Bool), b_(b) {}
  Value(int i) : kind_(Kind::Int), i_(i) {}
  Value(int64_t i) : kind_(Kind::Int), i_(i) {}
  Value(double f) : kind_(Kind::Float), f_(f) {}
  Value(std::string s) : kind_(Kind::String), s_(std::move(s)) {}
  Value(std::string_view s) : kind_(Kind::String), s_(s) {}
  Value(const char* s) : kind_(Kind::String), s_(s) {}

  // hint: the message raised when the undefined value is used ("'x' is undefined").
  // error_kind: "UndefinedError", or "SecurityError" for unsafe attributes of the sandbox.
  static Value undefined(std::string hint, std::string error_kind = "UndefinedError");
  static Value none();
  static Value make_list(std::vector<Value> items = {}, bool tuple = false);
  static Value make_dict();
  static Value make_dict(Dict d);
  static Value namespace_();
  static Value function(std::string name, std::function<Value(CallArgs&)> fn);

  Kind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == Kind::Undefined; }
  bool is_none() const { return kind_ == Kind::None; }
  bool is_bool() const { return kind_ == Kind::Bool; }
  bool is_int() const { return kind_ == Kind::Int; }
  bool is_float() const { return kind_ == Kind::Float; }
  bool is_string() const { return kind_ == Kind::String; }
  bool is_list() const { return kind_ == Kind::List; }
  bool is_tuple() const { return kind_ == Kind::List && list().tuple; }
  bool is_dict() const { return kind_ == Kind::Dict; }
  bool is_namespace() const { return kind_ == Kind::Namespace; }
  bool is_function() const { return kind_ == Kind::Function; }
  bool is_number() const { return kind_ == Kind::Bool || kind_ == Kind::Int || kind_ == Kind::Float; }
  bool is_integral() const { return kind_ == Kind::Bool || kind_ == Kind::Int; }  // Python: bool is an int

  bool b() const { return b_; }
  int64_t i() const { return kind_ == Kind::Bool ? (b_ ? 1 : 0) : i_; }
  double f() const { return kind_ == Kind::Float ? f_ : static_cast<double>(i()); }
  const std::string& s() const { return s_; }
  List& list() const { return *static_cast<List*>(p_.get()); }
  Dict& dict() const { return *static_cast<Dict*>(p_.get()); }  // also the attributes of a namespace
  Function& fn() const { return *static_cast<Function*>(p_.get()); }
  const void* identity() const { return p_.get(); }
  const std::string& undefined_hint() const { return s_; }
  const std::string& undefined_kind() const { return undef_kind_; }

  // Raise this Undefined's error (UndefinedError or SecurityError).
  [[noreturn]] void fail_undefined() const;

 private:
  Kind kind_ = Kind::Undefined;
  union {
    bool b_;
    int64_t i_ = 0;
    double f_;
  };
  std::string s_;
  std::string undef_kind_;
  std::shared_ptr<void> p_;
};

struct CallArgs {
  std::vector<Value> pos;
  std::vector<std::pair<std::string, Value>> kw;
  // Positional argument i, else keyword `name`, else `def`.
  Value get(size_t i, std::string_view name, Value def = Value()) const;
  bool has(size_t i, std::string_view name) const;
};

// ---- Python semantics ----
bool truthy(const Value& v);
std::string to_str(const Value& v);   // Python str(): what {{ v }} prints
std::string repr(const Value& v);     // Python repr()
std::string type_name(const Value& v);  // "str", "int", "list", "dict", "NoneType", ...
std::string python_float_repr(double d);
bool equals(const Value& a, const Value& b);
int compare(const Value& a, const Value& b, const char* op);  // <0, 0, >0 or TypeError
bool contains(const Value& container, const Value& item);     // `item in container`
int64_t length(const Value& v);                                // len()
std::vector<Value> iterate(const Value& v);                    // for x in v (dict → keys; str → chars)

// ---- JSON ----
// Converts parsed JSON (as Python's json.loads would build it) into a Value.
Value from_json(const nlohmann::ordered_json& j);
// Python json.dumps(v, ensure_ascii=False, indent=..., separators=..., sort_keys=...).
// indent: empty optional = None; an int n ≥ 0 or a string indent. item_sep/key_sep default per Python.
struct JsonDumpOptions {
  bool has_indent = false;
  std::string indent;  // the indent unit
  std::string item_sep = ", ";
  std::string key_sep = ": ";
  bool sort_keys = false;
};
std::string json_dumps(const Value& v, const JsonDumpOptions& o);

}  // namespace graft::chat_template
