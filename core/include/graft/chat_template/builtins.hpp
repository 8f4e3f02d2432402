// Builtins of the Jinja subset: operators, attribute/item access (with the immutable sandbox's rules),
// Python str/dict/list methods, filters, tests and global functions.
#pragma once

#include <ctime>
#include <optional>
#include <string>
#include <string_view>

#include "graft/chat_template/value.hpp"

namespace graft::chat_template {

// ---- operators (ops.cpp) ----
Value binary_op(std::string_view op, const Value& a, const Value& b);  // + - * / // % ** ~
Value unary_op(std::string_view op, const Value& a);                   // - +
bool compare_op(std::string_view op, const Value& a, const Value& b);  // == != < <= > >= in notin
// Jinja2's environment.getattr (x.name) and getitem (x[key]) under ImmutableSandboxedEnvironment.
Value get_attr(const Value& obj, const std::string& name);
Value get_item(const Value& obj, const Value& key);
Value slice_value(const Value& obj, const Value& start, const Value& stop, const Value& step);
Value undefined_for(const Value& obj, const Value& key);  // Undefined with Jinja2's message
Value call_value(const Value& callee, CallArgs& args);
// Python %-formatting of a string (str % args).
std::string percent_format(const std::string& fmt, const Value& args);

// ---- methods (methods.cpp) ----
// Bound method `obj.name` of a str/dict/list, or nullopt when the object has no such attribute.
// Mutating list/dict methods return an Undefined that raises SecurityError when called.
std::optional<Value> get_method(const Value& obj, const std::string& name);

// ---- filters and tests (filters.cpp, jinja_tests.cpp) ----
using FilterFn = Value (*)(const Value& subject, CallArgs& args);
using TestFn = bool (*)(const Value& subject, CallArgs& args);
FilterFn find_filter(std::string_view name);
TestFn find_test(std::string_view name);
Value apply_filter(std::string_view name, const Value& subject, CallArgs& args);  // unknown → error
bool apply_test(std::string_view name, const Value& subject, CallArgs& args);

// ---- globals (globals.cpp) ----
// range, dict, namespace, raise_exception, strftime_now (clock fixed to `now` when given).
void add_globals(Dict& scope, std::optional<std::tm> now);
// Python str.format subset used by templates ("{}", "{0}", "{name}", with simple format specs).
std::string str_format(const std::string& fmt, CallArgs& args);

}  // namespace graft::chat_template
