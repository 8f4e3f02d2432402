// API keys of `graft serve`: --api-key KEY (full access) and --api-keys-file FILE. See http_server.hpp.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>

#include "graft/error.hpp"
#include "graft/mmap_file.hpp"
#include "graft/serve/http_server.hpp"

namespace graft::serve {
namespace {

bool ct_equal(std::string_view a, std::string_view b) {
  // Constant time in the key's content (the length of a configured key is not secret enough to hide).
  unsigned char diff = static_cast<unsigned char>(a.size() != b.size());
  const size_t n = std::max(a.size(), b.size());
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff |= static_cast<unsigned char>(x ^ y);
  }
  return diff == 0;
}

}  // namespace

void ApiKeys::add(const std::string& key, const ApiGrant& grant) {
  GRAFT_CHECK_FIX(!key.empty(), "give a non-empty API key", "an API key is empty");
  for (char c : key)
    GRAFT_CHECK_FIX(std::isgraph(static_cast<unsigned char>(c)), "use printable ASCII without spaces in API keys",
                    "an API key contains whitespace or a control character");
  for (auto& [k, g] : keys_) {
    if (k == key) {
      g.all = g.all || grant.all;
      g.adapters.insert(grant.adapters.begin(), grant.adapters.end());
      return;
    }
  }
  keys_.emplace_back(key, grant);
}

void ApiKeys::add_json(std::string_view text, const std::string& origin) {
  const char* fix = "write the keys file as a JSON object {\"KEY\": [\"adapter\", ...] or \"*\"}";
  nlohmann::json j = nlohmann::json::parse(text.begin(), text.end(), nullptr, false);
  GRAFT_CHECK_FIX(!j.is_discarded(), fix, "{} is not valid JSON", origin);
  GRAFT_CHECK_FIX(j.is_object(), fix, "{} must hold a JSON object, not {}", origin, j.type_name());
  for (const auto& [key, v] : j.items()) {
    ApiGrant g;
    if (v.is_string()) {
      GRAFT_CHECK_FIX(v.get<std::string>() == "*", fix,
                      "{}: key '{}...' has the string \"{}\"; only \"*\" (all adapters) is allowed", origin,
                      key.substr(0, 4), v.get<std::string>());
      g.all = true;
    } else if (v.is_array()) {
      for (const auto& a : v) {
        GRAFT_CHECK_FIX(a.is_string() && !a.get<std::string>().empty(), fix,
                        "{}: key '{}...' lists a non-string or empty adapter name", origin, key.substr(0, 4));
        if (a.get<std::string>() == "*") g.all = true;
        else g.adapters.insert(a.get<std::string>());
      }
    } else {
      GRAFT_FAIL(fix, "{}: the value of key '{}...' must be a list of adapter names or \"*\", not {}", origin,
                 key.substr(0, 4), v.type_name());
    }
    add(key, g);
  }
}

void ApiKeys::add_file(const std::string& path) { add_json(read_text_file(path), path); }

const ApiGrant* ApiKeys::find(std::string_view key) const {
  const ApiGrant* found = nullptr;
  for (const auto& [k, g] : keys_)
    if (ct_equal(k, key) && !found) found = &g;
  return found;
}

std::string ApiKeys::key_of(const ApiGrant* grant) const {
  for (const auto& [k, g] : keys_)
    if (&g == grant) return k;
  return "";
}

std::vector<const ApiGrant*> ApiKeys::grants_where(const std::function<bool(std::string_view)>& match) const {
  std::vector<const ApiGrant*> out;
  for (const auto& [k, g] : keys_)
    if (match(k)) out.push_back(&g);
  return out;
}

const ApiGrant* ApiKeys::authorize(std::string_view h) const {
  while (!h.empty() && h.front() == ' ') h.remove_prefix(1);
  if (h.size() < 7) return nullptr;
  std::string scheme(h.substr(0, 7));
  for (auto& c : scheme) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (scheme != "bearer ") return nullptr;
  h.remove_prefix(7);
  while (!h.empty() && h.front() == ' ') h.remove_prefix(1);
  while (!h.empty() && (h.back() == ' ' || h.back() == '\r' || h.back() == '\n')) h.remove_suffix(1);
  if (h.empty()) return nullptr;
  return find(h);
}

}  // namespace graft::serve
