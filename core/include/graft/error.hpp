// graft::Error — the one error type of the library, and the GRAFT_CHECK family of macros.
//
// Library code throws graft::Error; only `main` catches and exits. Every error carries
//   what  — what went wrong, in the user's terms (names the file, tensor, key, flag ...),
//   where — the failing expression with file:line (filled in by the macros),
//   fix   — what the user should do about it (optional but expected at user-facing boundaries).
#pragma once

#ifndef __CUDACC__
#include <fmt/format.h>
#else
#include <sstream>
#endif

#include <stdexcept>
#include <string>
#include <string_view>

namespace graft {

class Error : public std::runtime_error {
 public:
  Error(std::string what, std::string where, std::string fix);

  const std::string& message() const noexcept { return what_; }  // the "what" part only
  const std::string& where() const noexcept { return where_; }
  const std::string& fix() const noexcept { return fix_; }

 private:
  static std::string compose(const std::string& what, const std::string& where, const std::string& fix);
  std::string what_, where_, fix_;
};

namespace detail {
#ifdef __CUDACC__
// nvcc's host pass cannot compile fmt's C++20 headers, so .cu files get a minimal formatter:
// each "{}" is replaced by the next argument streamed with operator<<.
inline void format_rest(std::ostringstream& o, std::string_view f) { o << f; }
template <class A, class... R>
void format_rest(std::ostringstream& o, std::string_view f, const A& a, const R&... r) {
  size_t p = f.find("{}");
  if (p == std::string_view::npos) {
    o << f;
    return;
  }
  o << f.substr(0, p) << a;
  format_rest(o, f.substr(p + 2), r...);
}
template <class... A>
std::string format_message(std::string_view f, const A&... a) {
  std::ostringstream o;
  format_rest(o, f, a...);
  return o.str();
}
#define GRAFT_FORMAT_ ::graft::detail::format_message
#else
#define GRAFT_FORMAT_ ::fmt::format
#endif
[[noreturn]] void throw_check_failed(const char* expr, const char* file, int line, std::string what,
                                     std::string fix);
}  // namespace detail

}  // namespace graft

// GRAFT_CHECK(cond, "fmt {}", args...): throws graft::Error naming cond, file and line.
#define GRAFT_CHECK(cond, ...)                                                                      \
  do {                                                                                               \
    if (!(cond)) [[unlikely]]                                                                        \
      ::graft::detail::throw_check_failed(#cond, __FILE__, __LINE__, GRAFT_FORMAT_(__VA_ARGS__), {}); \
  } while (0)

// GRAFT_CHECK_FIX(cond, "how to fix", "fmt {}", args...): same, with a remedy for the user.
#define GRAFT_CHECK_FIX(cond, fix, ...)                                                               \
  do {                                                                                                \
    if (!(cond)) [[unlikely]]                                                                         \
      ::graft::detail::throw_check_failed(#cond, __FILE__, __LINE__, GRAFT_FORMAT_(__VA_ARGS__), fix); \
  } while (0)

// GRAFT_FAIL("how to fix", "fmt {}", args...): unconditional throw (fix may be "").
#define GRAFT_FAIL(fix, ...) \
  ::graft::detail::throw_check_failed(nullptr, __FILE__, __LINE__, GRAFT_FORMAT_(__VA_ARGS__), fix)
