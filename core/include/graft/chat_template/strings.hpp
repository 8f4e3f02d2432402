// UTF-8 and Python-string helpers for the chat template interpreter (code-point semantics).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace graft::chat_template::str {

std::vector<char32_t> decode(std::string_view s);  // invalid bytes decode as U+FFFD
std::string encode(const std::u32string_view cps);
void append_utf8(std::string& out, char32_t c);
size_t count_code_points(std::string_view s);
bool is_ascii(std::string_view s);

bool py_isspace(char32_t c);      // Python str.isspace() for one code point
bool py_isprintable(char32_t c);  // Python str.isprintable() for one code point (approximation beyond BMP letters)

// Python str methods.
std::string strip(std::string_view s, const std::string* chars, bool left, bool right);
std::vector<std::string> split(std::string_view s, const std::string* sep, int64_t maxsplit);
std::vector<std::string> rsplit(std::string_view s, const std::string* sep, int64_t maxsplit);
std::string replace(std::string_view s, std::string_view old, std::string_view repl, int64_t count);
std::string upper(std::string_view s);
std::string lower(std::string_view s);
std::string title(std::string_view s);       // Python str.title()
std::string capitalize(std::string_view s);  // Python str.capitalize()
int64_t find(std::string_view s, std::string_view sub, bool reverse);  // code-point index or -1
int64_t count(std::string_view s, std::string_view sub);
std::string repr(std::string_view s);  // Python repr() of a str, quotes included

}  // namespace graft::chat_template::str
