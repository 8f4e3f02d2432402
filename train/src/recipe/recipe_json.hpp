// Helpers shared by the recipe loader and emitter (internal to train/src/recipe).
#pragma once

#include <fmt/format.h>

#include <string>

namespace graft::train::recipe_detail {

// A JSON string literal for `s` (quotes included; control characters as \uXXXX). Part of the
// recipe hash: changing the escaping changes hashes.
inline std::string json_escape(const std::string& s) {
  std::string o = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"': o += "\\\""; break;
      case '\\': o += "\\\\"; break;
      case '\n': o += "\\n"; break;
      case '\r': o += "\\r"; break;
      case '\t': o += "\\t"; break;
      default:
        if (c < 0x20)
          o += fmt::format("\\u{:04x}", unsigned(c));
        else
          o += char(c);
    }
  }
  return o + "\"";
}

}  // namespace graft::train::recipe_detail
