// AdapterManager: adapter registry, path-confined resolution, host LRU cache bounded in bytes, and the
// background loader thread (see adapter_manager.hpp and docs/serving.md, "Adapters in the server").
//
// Locking: one mutex guards everything below; it is never held during file-system work, while a
// PEFT file is parsed, or while a callback runs. Callbacks run on the loader thread.
#include "graft/serve/adapter_manager.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <map>
#include <mutex>
#include <thread>
#include <utility>

#include "graft/error.hpp"
#include "graft/serve/api_error.hpp"
#include "graft/serve/path_safety.hpp"

namespace graft::serve {

namespace fs = std::filesystem;
using AdapterPtr = std::shared_ptr<const adapters::Adapter>;
using ReadyFn = std::function<void(const std::string& error)>;

namespace {

constexpr size_t kMaxNameLen = 128;

bool name_char(char c, bool first) {
  const bool alnum = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
  return alnum || (!first && (c == '.' || c == '_' || c == ':' || c == '-'));
}

ApiError not_found(const std::string& name, const std::string& param) {
  return ApiError(404, "not_found_error",
                  fmt::format("adapter {} does not exist: it was not loaded (--adapter, /v1/load_lora_adapter) and "
                              "no --adapter-dir holds a directory of that name",
                              quote_for_message(name)),
                  param, "model_not_found");
}

// An exception as one line for on_ready / ApiError messages (graft::Error: its "what" and its fix).
std::string message_of(const std::exception& e) {
  if (const auto* ge = dynamic_cast<const Error*>(&e)) {
    std::string m = ge->message();
    if (!ge->fix().empty()) m += " (fix: " + ge->fix() + ")";
    return m;
  }
  return e.what();
}

}  // namespace

void check_adapter_name(const std::string& name, const std::string& param) {
  bool ok = !name.empty() && name.size() <= kMaxNameLen;
  for (size_t i = 0; ok && i < name.size(); ++i) ok = name_char(name[i], i == 0);
  if (!ok)
    throw bad_request(fmt::format("invalid adapter name {}: a name is 1-{} characters from [A-Za-z0-9._:-] and starts "
                                  "with a letter or digit",
                                  quote_for_message(name, 64), kMaxNameLen),
                      param, "invalid_adapter_name");
}

struct AdapterManager::Impl {
  // One load of one name: queued, then running on the loader thread. remove() cancels it.
  struct Load {
    std::string name;
    fs::path dir;
    std::vector<ReadyFn> waiters;
    bool cancelled = false;
  };
  struct Entry {
    fs::path dir;
    AdapterPtr adapter;            // resident in the host cache when set
    size_t bytes = 0;              // of the last load
    int64_t rank = 0;              // of the last load
    int64_t requests = 0;
    uint64_t last_use = 0;         // LRU clock
    std::shared_ptr<Load> pending; // a load queued or running
  };

  config::ModelConfig cfg;
  std::vector<fs::path> roots;
  AdapterLimits limits;

  mutable std::mutex mu;
  std::condition_variable cv;
  std::map<std::string, Entry> entries;
  std::deque<std::shared_ptr<Load>> queue;
  size_t cached = 0;
  uint64_t clock = 0;
  bool stopping = false;
  std::thread loader;

  // --- resolution -------------------------------------------------------------------------------

  // ROOT/NAME for the first root holding NAME/adapter_config.json, canonical and confined (403 when a
  // symlink leads out). Empty when no root has it. `name` is valid, so ROOT/NAME is one component.
  fs::path resolve_in_roots(const std::string& name, const std::string& param) const {
    for (const auto& root : roots) {
      std::error_code ec;
      const fs::path cand = root / name;
      if (!fs::exists(cand / "adapter_config.json", ec)) continue;
      return resolve_adapter_dir(cand.string(), roots, param);
    }
    return {};
  }

  // --- loading ----------------------------------------------------------------------------------

  // Reads and checks one adapter (any thread; no lock held). ApiError 400/403 on failure.
  AdapterPtr load(const std::string& name, const fs::path& dir) const {
    // The directory was checked when it was registered; check again right before reading it, in case
    // it was replaced by a symlink since.
    const fs::path real = resolve_adapter_dir(dir.string(), roots, "lora_path");
    adapters::Adapter a;
    try {
      a = adapters::load_peft(real.string(), cfg);
    } catch (const std::bad_alloc&) {
      throw;
    } catch (const std::exception& e) {
      throw bad_request(fmt::format("cannot load adapter {}: {}", quote_for_message(name), message_of(e)), "lora_path",
                        "invalid_adapter");
    }
    const int64_t r = a.max_rank();
    if (r > limits.max_rank)
      throw bad_request(fmt::format("adapter {} has rank {}, above the server's limit --max-lora-rank {}: restart the "
                                    "server with --max-lora-rank {} or more",
                                    quote_for_message(name), r, limits.max_rank, r),
                        "lora_path", "lora_rank_too_large");
    return std::make_shared<const adapters::Adapter>(std::move(a));
  }

  // Evicts unpinned adapters, least recently used first, until `need` more bytes fit. Throws without
  // evicting anything when they cannot fit. Lock held.
  void make_room_locked(const std::string& name, size_t need) {
    if (need > limits.max_cpu_bytes)
      throw ApiError(400, "invalid_request_error",
                     fmt::format("adapter {} needs {} bytes of host memory, more than the whole adapter cache "
                                 "(--max-cpu-loras-bytes {}): raise --max-cpu-loras-bytes",
                                 quote_for_message(name), need, limits.max_cpu_bytes),
                     "lora_path", "adapter_too_large");
    if (cached + need <= limits.max_cpu_bytes) return;
    std::vector<std::pair<uint64_t, std::string>> victims;  // (last use, name) of unpinned residents
    size_t freeable = 0;
    for (auto& [n, e] : entries)
      if (e.adapter && e.adapter.use_count() == 1) victims.emplace_back(e.last_use, n), freeable += e.bytes;
    if (cached - freeable + need > limits.max_cpu_bytes)
      throw ApiError(503, "server_error",
                     fmt::format("cannot load adapter {} ({} bytes): the host adapter cache (--max-cpu-loras-bytes {}) "
                                 "holds {} bytes of adapters in use by running requests; retry when they finish, or "
                                 "raise --max-cpu-loras-bytes",
                                 quote_for_message(name), need, limits.max_cpu_bytes, cached - freeable),
                     "", "adapter_cache_full");
    std::sort(victims.begin(), victims.end());
    for (auto& [t, n] : victims) {
      if (cached + need <= limits.max_cpu_bytes) break;
      Entry& e = entries.at(n);
      cached -= e.bytes;
      e.adapter.reset();
    }
  }

  // Makes `a` the resident copy of `e`, moving it (lock held). Throws ApiError when it cannot fit and
  // leaves `a` to the caller, to be freed after the lock is released.
  void install_locked(const std::string& name, Entry& e, AdapterPtr& a) {
    const size_t bytes = a->bytes();
    make_room_locked(name, bytes);
    e.bytes = bytes;
    e.rank = a->max_rank();
    e.adapter = std::move(a);
    e.last_use = ++clock;
    cached += bytes;
  }

  std::map<std::string, ApiError> failures;  // name -> why its last background load failed

  static void notify(const std::vector<ReadyFn>& waiters, const std::string& error) {
    for (const auto& w : waiters) {
      if (!w) continue;
      try {
        w(error);
      } catch (...) {
        // A callback's failure is its owner's; the loader keeps serving the others.
      }
    }
  }

  void loader_main() {
    std::unique_lock lk(mu);
    for (;;) {
      cv.wait(lk, [&] { return stopping || !queue.empty(); });
      if (stopping) break;
      std::shared_ptr<Load> job = std::move(queue.front());
      queue.pop_front();
      if (job->cancelled) {
        auto waiters = std::move(job->waiters);
        lk.unlock();
        notify(waiters, fmt::format("adapter {} was unloaded", job->name));
        lk.lock();
        continue;
      }
      lk.unlock();
      AdapterPtr a;
      std::string error;
      std::optional<ApiError> failure;
      try {
        a = load(job->name, job->dir);
      } catch (const ApiError& e) {
        error = message_of(e);
        failure.emplace(e.status, e.type, error, "model", e.code);
      } catch (const std::exception& e) {
        error = message_of(e);
      } catch (...) {
        error = "unknown error";
      }
      lk.lock();
      if (job->cancelled) {
        error = fmt::format("adapter {} was unloaded", job->name);
        failure.emplace(404, "not_found_error", error, "model", "model_not_found");
      } else if (auto it = entries.find(job->name); it == entries.end() || it->second.pending != job) {
        // Cannot happen (remove() cancels before erasing); never install into another entry.
        error = fmt::format("adapter {} was unloaded", job->name);
        failure.emplace(404, "not_found_error", error, "model", "model_not_found");
      } else {
        Entry& e = it->second;
        e.pending.reset();
        if (a) {
          try {
            install_locked(job->name, e, a);
          } catch (const ApiError& ex) {
            error = message_of(ex);
            failure.emplace(ex.status, ex.type, error, "model", ex.code);
          } catch (const std::exception& ex) {
            error = message_of(ex);
          }
        }
      }
      if (!error.empty() && !failure) failure.emplace(400, "invalid_request_error", error, "model", "invalid_adapter");
      if (failure) failures.insert_or_assign(job->name, *failure);
      else failures.erase(job->name);
      auto waiters = std::move(job->waiters);
      lk.unlock();
      a.reset();  // a discarded copy is freed here, not under the lock
      notify(waiters, error);
      lk.lock();
    }
    // Shutting down: everyone still waiting is told so.
    std::vector<std::shared_ptr<Load>> left(queue.begin(), queue.end());
    queue.clear();
    for (auto& [n, e] : entries) e.pending.reset();
    lk.unlock();
    for (auto& job : left) notify(job->waiters, fmt::format("adapter {} was not loaded: the server is shutting down", job->name));
  }
};

AdapterManager::AdapterManager(config::ModelConfig cfg, std::vector<std::string> roots, AdapterLimits limits)
    : impl_(std::make_unique<Impl>()) {
  GRAFT_CHECK_FIX(limits.max_loras >= 1, "pass --max-loras >= 1", "--max-loras is {}", limits.max_loras);
  GRAFT_CHECK_FIX(limits.max_rank >= 1, "pass --max-lora-rank >= 1", "--max-lora-rank is {}", limits.max_rank);
  GRAFT_CHECK_FIX(limits.max_cpu_bytes >= 1, "pass --max-cpu-loras-bytes >= 1", "--max-cpu-loras-bytes is 0");
  impl_->cfg = std::move(cfg);
  impl_->limits = limits;
  for (const auto& r : roots) {
    fs::path c = canonical_root(r);
    if (std::find(impl_->roots.begin(), impl_->roots.end(), c) == impl_->roots.end()) impl_->roots.push_back(c);
  }
  impl_->loader = std::thread([this] { impl_->loader_main(); });
}

AdapterManager::~AdapterManager() {
  {
    std::lock_guard lk(impl_->mu);
    impl_->stopping = true;
  }
  impl_->cv.notify_all();
  if (impl_->loader.joinable()) impl_->loader.join();
}

const AdapterLimits& AdapterManager::limits() const { return impl_->limits; }

void AdapterManager::add(const std::string& name, const std::string& dir) {
  check_adapter_name(name);
  {
    std::lock_guard lk(impl_->mu);
    if (impl_->entries.count(name))
      throw bad_request(fmt::format("adapter {} has already been loaded", quote_for_message(name)), "lora_name",
                        "adapter_already_loaded");
  }
  fs::path real = resolve_adapter_dir(dir, impl_->roots, "lora_path");
  std::lock_guard lk(impl_->mu);
  auto [it, inserted] = impl_->entries.try_emplace(name);
  if (!inserted)
    throw bad_request(fmt::format("adapter {} has already been loaded", quote_for_message(name)), "lora_name",
                      "adapter_already_loaded");
  it->second.dir = std::move(real);
}

void AdapterManager::add_and_load(const std::string& name, const std::string& dir) {
  check_adapter_name(name);
  {
    std::lock_guard lk(impl_->mu);
    if (impl_->entries.count(name))
      throw bad_request(fmt::format("adapter {} has already been loaded", quote_for_message(name)), "lora_name",
                        "adapter_already_loaded");
  }
  fs::path real = resolve_adapter_dir(dir, impl_->roots, "lora_path");
  AdapterPtr a = impl_->load(name, real);  // on this thread, without the lock
  std::unique_lock lk(impl_->mu);
  if (impl_->entries.count(name))
    throw bad_request(fmt::format("adapter {} has already been loaded", quote_for_message(name)), "lora_name",
                      "adapter_already_loaded");
  Impl::Entry e;
  e.dir = std::move(real);
  impl_->install_locked(name, e, a);  // throws before registering when it cannot fit
  impl_->entries.emplace(name, std::move(e));
}

void AdapterManager::remove(const std::string& name) {
  AdapterPtr dropped;  // freed after the lock is released (unless a request still holds it)
  std::lock_guard lk(impl_->mu);
  auto it = impl_->entries.find(name);
  if (it == impl_->entries.end()) throw not_found(name, "lora_name");
  Impl::Entry& e = it->second;
  if (e.pending) e.pending->cancelled = true;  // the loader discards its result and tells the waiters
  if (e.adapter) impl_->cached -= e.bytes;
  dropped = std::move(e.adapter);
  impl_->entries.erase(it);
}

bool AdapterManager::known(const std::string& name) {
  try {
    check_adapter_name(name, "model");
  } catch (const ApiError&) {
    return false;
  }
  {
    std::lock_guard lk(impl_->mu);
    if (impl_->entries.count(name)) return true;
  }
  try {
    return !impl_->resolve_in_roots(name, "model").empty();
  } catch (const ApiError&) {
    return false;
  }
}

std::optional<ApiError> AdapterManager::load_failure(const std::string& name) const {
  std::lock_guard lk(impl_->mu);
  auto it = impl_->failures.find(name);
  if (it == impl_->failures.end()) return std::nullopt;
  return it->second;
}

std::shared_ptr<const adapters::Adapter> AdapterManager::acquire(const std::string& name, ReadyFn on_ready) {
  check_adapter_name(name, "model");
  Impl& m = *impl_;
  std::unique_lock lk(m.mu);
  auto it = m.entries.find(name);
  if (it == m.entries.end()) {
    // Not registered: ROOT/NAME under an --adapter-dir (a few stat calls; no file is read here).
    lk.unlock();
    fs::path dir = m.resolve_in_roots(name, "model");
    if (dir.empty()) throw not_found(name, "model");
    lk.lock();
    it = m.entries.try_emplace(name).first;  // another thread may have registered it meanwhile
    if (it->second.dir.empty()) it->second.dir = std::move(dir);
  }
  Impl::Entry& e = it->second;
  if (e.adapter) {
    e.last_use = ++m.clock;
    ++e.requests;
    return e.adapter;
  }
  if (m.stopping) throw ApiError(503, "server_error", "the server is shutting down", "", "shutting_down");
  if (!e.pending) {
    e.pending = std::make_shared<Impl::Load>();
    e.pending->name = name;
    e.pending->dir = e.dir;
    m.queue.push_back(e.pending);
    m.cv.notify_one();
  }
  if (on_ready) e.pending->waiters.push_back(std::move(on_ready));
  return nullptr;
}

std::vector<AdapterInfo> AdapterManager::list() const {
  std::lock_guard lk(impl_->mu);
  std::vector<AdapterInfo> out;
  out.reserve(impl_->entries.size());
  for (const auto& [n, e] : impl_->entries) {
    AdapterInfo i;
    i.name = n;
    i.path = e.dir.string();
    i.loaded = e.adapter != nullptr;
    i.max_rank = e.rank;
    i.bytes = e.bytes;
    i.requests = e.requests;
    out.push_back(std::move(i));
  }
  return out;
}

size_t AdapterManager::cached_bytes() const {
  std::lock_guard lk(impl_->mu);
  return impl_->cached;
}

}  // namespace graft::serve
