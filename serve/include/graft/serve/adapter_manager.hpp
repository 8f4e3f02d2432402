// AdapterManager: the registry of servable LoRA adapters and their tiered cache.
//
//   disk (PEFT directories under the configured roots)
//     -> host LRU cache of parsed adapters, bounded in bytes (--max-cpu-loras-bytes)
//     -> active slots: at most `max_loras` distinct adapters in one engine step (--max-loras)
//
// Names map to directories in three ways: `--adapter NAME=DIR` at start-up, POST /v1/load_lora_adapter
// {lora_name, lora_path} at run time (vLLM-compatible), and lazily `ROOT/NAME` for a name found
// under an `--adapter-dir ROOT`. A name is [A-Za-z0-9][A-Za-z0-9._:-]{0,127} and never becomes a path
// by itself except as ROOT/NAME; every path is resolved (symlinks followed) and must stay inside a
// configured root, else 400/403.
//
// Loading runs on a background thread and never blocks the serving loop: acquire() returns the
// adapter when it is in host memory, or starts a load and returns null; the caller is told through
// `on_ready` (called on the loader thread, with an empty string on success or the error message).
// Adapters in use are pinned (shared_ptr held by the request) and are never evicted while pinned;
// remove() drops the name at once, in-flight requests finish with the copy they hold.
// Errors, limits and the loader are described in docs/serving.md ("Adapters in the server").
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "graft/adapters/peft.hpp"
#include "graft/config/model_config.hpp"
#include "graft/serve/api_error.hpp"

namespace graft::serve {

struct AdapterLimits {
  int max_loras = 16;                          // distinct adapters per engine step (active slots)
  size_t max_cpu_bytes = size_t(2) << 30;      // host cache budget for parsed adapters
  int64_t max_rank = 256;                      // larger ranks are rejected at load time
};

struct AdapterInfo {
  std::string name, path;
  bool loaded = false;     // resident in the host cache
  int64_t max_rank = 0;    // 0 until loaded
  size_t bytes = 0;        // 0 until loaded
  int64_t requests = 0;    // requests served with it (for metrics)
};

class AdapterManager {
 public:
  // roots: directories adapters may be loaded from (--adapter-dir; each --adapter DIR's parent is
  // added by the caller). Throws graft::Error if a root does not exist.
  AdapterManager(config::ModelConfig cfg, std::vector<std::string> roots, AdapterLimits limits);
  ~AdapterManager();
  AdapterManager(const AdapterManager&) = delete;
  AdapterManager& operator=(const AdapterManager&) = delete;

  const AdapterLimits& limits() const;
  // Registers NAME -> DIR (no load yet; DIR must contain adapter_config.json and stay inside a root).
  // ApiError 400 on a bad name/path, 403 outside the roots, 400 "already loaded" when the name exists.
  void add(const std::string& name, const std::string& dir);
  // Registers and loads synchronously (start-up and /v1/load_lora_adapter): ApiError on any failure,
  // with the PEFT loader's message (bad files, rank over the limit, base mismatch), or 503
  // "adapter_cache_full" when pinned adapters fill the host cache; nothing is registered then.
  void add_and_load(const std::string& name, const std::string& dir);
  // Removes NAME (ApiError 404 if unknown). In-flight users keep their pinned copy.
  void remove(const std::string& name);
  // Whether NAME is registered or resolvable as ROOT/NAME.
  bool known(const std::string& name);
  // The adapter if resident (pinned by the returned pointer); else starts a load (once per name) and
  // returns null, calling on_ready(error_or_empty) when it finishes. ApiError 404 if unknown (400 for
  // a malformed name, 403 when ROOT/NAME leads outside the roots). Never reads a file; each non-null
  // return counts one request in AdapterInfo::requests.
  std::shared_ptr<const adapters::Adapter> acquire(const std::string& name,
                                                   std::function<void(const std::string& error)> on_ready);
  // Every registered name (ROOT/NAME names once requested), by name.
  // Why the last background load of NAME failed (status/type/code as ApiError), if it did; the
  // engine uses it to answer the waiting requests with the right status.
  std::optional<ApiError> load_failure(const std::string& name) const;
  std::vector<AdapterInfo> list() const;
  // Bytes of the adapters resident in the host cache (never above limits().max_cpu_bytes).
  size_t cached_bytes() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Validates an adapter name (ApiError 400 naming `param` otherwise).
void check_adapter_name(const std::string& name, const std::string& param = "lora_name");

}  // namespace graft::serve
