// Path safety for adapter directories: a client-supplied path (POST /v1/load_lora_adapter's lora_path,
// `--adapter NAME=DIR`, or ROOT/NAME) may only be read when its real location, with every symlink
// followed, lies inside one of the configured adapter roots (--adapter-dir).
//
// Checks are made on the resolved path, component by component ("/a/bc" is not inside "/a/b"), so
// "..", redundant separators, symlinked directories and symlinked files inside the adapter directory
// cannot leave the roots. The check is repeated just before the files are read; what remains is the
// usual window between a check and an open (a local user who can rewrite a root can race it).
#pragma once

#include <filesystem>
#include <string>
#include <vector>

namespace graft::serve {

// The canonical form of an adapter root (symlinks resolved). graft::Error when it does not exist or
// is not a directory.
std::filesystem::path canonical_root(const std::string& dir);

// Whether `path` equals `root` or lies below it. Both must be canonical; compared component-wise.
bool path_within(const std::filesystem::path& path, const std::filesystem::path& root);

// Resolves an adapter directory: `dir` (relative paths are taken from the working directory) with
// symlinks followed. Throws ApiError
//   400 (param `param`, code "invalid_adapter_path") when `dir` is empty, longer than 4096 bytes,
//       contains a NUL byte or cannot be resolved;
//   403 (type "permission_error", code "adapter_path_forbidden") when the real path is outside every
//       root, or when adapter_config.json / adapter_model.safetensors inside it lead outside (symlinks);
//   400 (code "invalid_adapter_path") when, inside a root, it is not a directory or has no
//       adapter_config.json.
// The 403 check comes first, so the answer never says whether a path outside the roots exists.
// Returns the canonical directory.
std::filesystem::path resolve_adapter_dir(const std::string& dir, const std::vector<std::filesystem::path>& roots,
                                          const std::string& param = "lora_path");

// `s` quoted for an error message: control bytes and bytes >= 0x7f as \xNN, cut to `max` bytes
// with "..." (client-supplied names and paths are echoed back, so they are made printable).
std::string quote_for_message(const std::string& s, size_t max = 160);

}  // namespace graft::serve
