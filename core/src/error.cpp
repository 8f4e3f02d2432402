#include "graft/error.hpp"

#include <cstring>

namespace graft {

Error::Error(std::string what, std::string where, std::string fix)
    : std::runtime_error(compose(what, where, fix)),
      what_(std::move(what)),
      where_(std::move(where)),
      fix_(std::move(fix)) {}

std::string Error::compose(const std::string& what, const std::string& where, const std::string& fix) {
  std::string s = what;
  if (!where.empty()) s += "\n  at " + where;
  if (!fix.empty()) s += "\n  fix: " + fix;
  return s;
}

namespace detail {

[[noreturn]] void throw_check_failed(const char* expr, const char* file, int line, std::string what,
                                     std::string fix) {
  // Strip the build-machine prefix so messages show project-relative paths: cut before the
  // earliest top-level project folder in the path.
  const char* rel = file;
  const char* best = nullptr;
  for (const char* marker : {"/core/", "/kernels/", "/adapters/", "/train/", "/serve/", "/cli/", "/tests/",
                             "/bench/", "/fuzz/"}) {
    const char* p = std::strstr(file, marker);
    if (p && (!best || p < best)) best = p;
  }
  if (best) rel = best + 1;
  std::string where = fmt::format("{}:{}", rel, line);
  if (expr) where += fmt::format(" (check failed: {})", expr);
  throw Error(std::move(what), std::move(where), std::move(fix));
}

}  // namespace detail
}  // namespace graft
