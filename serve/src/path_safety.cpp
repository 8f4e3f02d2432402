// Adapter directory resolution confined to the configured roots (see path_safety.hpp).
#include "graft/serve/path_safety.hpp"

#include <fmt/format.h>

#include <system_error>

#include "graft/error.hpp"
#include "graft/serve/api_error.hpp"

namespace graft::serve {

namespace fs = std::filesystem;

namespace {

constexpr size_t kMaxPathBytes = 4096;

ApiError forbidden(const std::string& dir, const std::string& param, const std::string& what) {
  return ApiError(403, "permission_error",
                  fmt::format("adapter path {} {}: adapters are only read from inside the configured adapter "
                              "directories (--adapter-dir, or the parent of an --adapter NAME=DIR)",
                              quote_for_message(dir), what),
                  param, "adapter_path_forbidden");
}

// Canonical form with symlinks followed for the part that exists. No trailing separator.
// weakly_canonical stops at the first missing component and normalizes the rest lexically, so
// "ROOT/missing/../link/x" comes back as "ROOT/link/x" with `link` unresolved: resolving again until
// nothing changes follows such links too (the tail left is missing and has no "..").
fs::path resolve(const fs::path& p, std::error_code& ec) {
  fs::path r = p;
  for (int i = 0; i < 8; ++i) {
    fs::path next = fs::weakly_canonical(r, ec);
    if (ec) return {};
    next = next.lexically_normal();
    if (next.has_relative_path() && next.filename().empty()) next = next.parent_path();
    if (next == r) return r;
    r = std::move(next);
  }
  ec = std::make_error_code(std::errc::too_many_symbolic_link_levels);
  return {};
}

bool within_any(const fs::path& p, const std::vector<fs::path>& roots) {
  for (const auto& root : roots)
    if (path_within(p, root)) return true;
  return false;
}

}  // namespace

std::string quote_for_message(const std::string& s, size_t max) {
  std::string out = "'";
  size_t n = 0;
  for (unsigned char c : s) {
    if (n++ == max) {
      out += "...";
      break;
    }
    if (c < 0x20 || c >= 0x7f || c == '\\' || c == '\'')
      out += fmt::format("\\x{:02x}", c);
    else
      out += static_cast<char>(c);
  }
  return out + "'";
}

fs::path canonical_root(const std::string& dir) {
  std::error_code ec;
  GRAFT_CHECK_FIX(!dir.empty(), "pass an existing directory to --adapter-dir", "adapter root is an empty path");
  fs::path c = fs::canonical(fs::path(dir), ec);
  GRAFT_CHECK_FIX(!ec, "pass an existing directory to --adapter-dir", "adapter root '{}' cannot be resolved: {}", dir,
                  ec.message());
  GRAFT_CHECK_FIX(fs::is_directory(c, ec), "pass an existing directory to --adapter-dir",
                  "adapter root '{}' is not a directory", dir);
  return c;
}

bool path_within(const fs::path& path, const fs::path& root) {
  auto p = path.begin(), pe = path.end();
  for (auto r = root.begin(), re = root.end(); r != re; ++r) {
    if (r->empty()) continue;  // a trailing separator of the root
    if (p == pe || *p != *r) return false;
    ++p;
  }
  return true;
}

fs::path resolve_adapter_dir(const std::string& dir, const std::vector<fs::path>& roots, const std::string& param) {
  if (dir.empty()) throw bad_request("adapter path is empty: pass the PEFT adapter directory", param, "invalid_adapter_path");
  if (dir.size() > kMaxPathBytes)
    throw bad_request(fmt::format("adapter path is {} bytes long (at most {})", dir.size(), kMaxPathBytes), param,
                      "invalid_adapter_path");
  if (dir.find('\0') != std::string::npos)
    throw bad_request(fmt::format("adapter path {} contains a NUL byte", quote_for_message(dir)), param,
                      "invalid_adapter_path");

  std::error_code ec;
  fs::path abs = fs::absolute(fs::path(dir), ec);
  if (ec)
    throw bad_request(fmt::format("adapter path {} cannot be resolved: {}", quote_for_message(dir), ec.message()),
                      param, "invalid_adapter_path");
  fs::path real = resolve(abs, ec);
  if (ec) {
    // Permission denied or a symlink loop on the way. Outside the roots this must not say more than 403.
    fs::path lexical = abs.lexically_normal();
    if (!within_any(lexical, roots)) throw forbidden(dir, param, "is outside the allowed directories");
    throw bad_request(fmt::format("adapter path {} cannot be resolved: {}", quote_for_message(dir), ec.message()),
                      param, "invalid_adapter_path");
  }
  if (!within_any(real, roots)) throw forbidden(dir, param, "is outside the allowed directories");

  if (!fs::is_directory(real, ec))
    throw bad_request(fmt::format("adapter directory {} does not exist or is not a directory", quote_for_message(dir)),
                      param, "invalid_adapter_path");
  const fs::path cfg = real / "adapter_config.json";
  if (!fs::exists(cfg, ec))  // a dangling symlink included
    throw bad_request(fmt::format("adapter directory {} has no adapter_config.json (expected a PEFT adapter: "
                                  "adapter_config.json + adapter_model.safetensors)",
                                  quote_for_message(dir)),
                      param, "invalid_adapter_path");
  for (const char* file : {"adapter_config.json", "adapter_model.safetensors"}) {
    const fs::path f = real / file;
    std::error_code fec;
    if (!fs::exists(f, fec)) continue;  // nothing readable there (load_peft reports a missing file)
    fs::path fr = resolve(f, fec);
    if (fec || !within_any(fr, roots))
      throw forbidden(dir, param, fmt::format("has a {} that leads outside the allowed directories", file));
  }
  if (fs::is_directory(cfg, ec))
    throw bad_request(fmt::format("adapter directory {}: adapter_config.json is a directory", quote_for_message(dir)),
                      param, "invalid_adapter_path");
  return real;
}

}  // namespace graft::serve
