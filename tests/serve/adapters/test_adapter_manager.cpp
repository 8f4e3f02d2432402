// AdapterManager: registry, confinement of adapter paths to the roots (names, "..", symlinks, files
// that are symlinks), the byte-bounded host LRU with pinning, the background loader (deduplication,
// callbacks, remove during a load, shutdown), limits (rank, cache size) and clean errors for bad files.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include "../../adapters/adapter_test_util.hpp"
#include "graft/adapters/peft.hpp"
#include "graft/error.hpp"
#include "graft/serve/adapter_manager.hpp"
#include "graft/serve/api_error.hpp"
#include "graft/serve/path_safety.hpp"

using namespace graft;
using namespace graft::testutil;
using serve::AdapterLimits;
using serve::AdapterManager;
using serve::ApiError;
using AdapterPtr = std::shared_ptr<const adapters::Adapter>;

namespace {

using namespace std::chrono_literals;

struct Caught {
  bool thrown = false;
  int status = 0;
  std::string type, param, code, message;
};

template <class F>
Caught api_error_of(F&& f) {
  try {
    f();
  } catch (const ApiError& e) {
    return {true, e.status, e.type, e.param, e.code, e.message()};
  }
  return {};
}

// Collects on_ready calls.
struct Waiter {
  std::mutex mu;
  std::condition_variable cv;
  int calls = 0;
  std::string error;

  std::function<void(const std::string&)> cb() {
    return [this](const std::string& e) {
      std::lock_guard lk(mu);
      ++calls;
      error = e;
      cv.notify_all();
    };
  }
  // True when called within the timeout.
  bool wait(std::chrono::milliseconds t = 10s) {
    std::unique_lock lk(mu);
    return cv.wait_for(lk, t, [&] { return calls > 0; });
  }
  int count() {
    std::lock_guard lk(mu);
    return calls;
  }
  void reset() {
    std::lock_guard lk(mu);
    calls = 0;
    error.clear();
  }
};

// Acquires NAME, waiting for the loader when needed. Returns null with `error` set when a load failed.
AdapterPtr acquire_wait(AdapterManager& m, const std::string& name, std::string* error = nullptr) {
  Waiter w;
  if (auto p = m.acquire(name, w.cb())) return p;
  EXPECT_TRUE(w.wait()) << "on_ready never called for " << name;
  if (!w.error.empty()) {
    if (error) *error = w.error;
    return nullptr;
  }
  return m.acquire(name, {});
}

std::string quote(const std::string& s) { return serve::quote_for_message(s); }

float first_q_value(const adapters::Adapter& a) {
  const LoraFactors* f = a.find(0, model::Module::Q);
  return f ? f->a.data<float>()[0] : -1e30f;
}

bool has_name(const std::vector<serve::AdapterInfo>& l, const std::string& n) {
  for (auto& i : l)
    if (i.name == n) return true;
  return false;
}
serve::AdapterInfo info_of(const AdapterManager& m, const std::string& n) {
  for (auto& i : m.list())
    if (i.name == n) return i;
  ADD_FAILURE() << n << " not listed";
  return {};
}

// The suite is named after the test binary so that `ctest -R serve_adapters` selects it.
class serve_adapters : public TmpDir {
 protected:
  void SetUp() override {
    TmpDir::SetUp();
    cfg_ = tiny_config();
    root_ = dir_ / "root";
    outside_ = dir_ / "outside";
    fs::create_directories(root_);
    fs::create_directories(outside_);
  }
  // Writes a random rank-r adapter (non-zero B) to DIR and returns it.
  adapters::Adapter write_adapter(const fs::path& d, int64_t r = 4, uint32_t seed = 1) {
    adapters::Adapter a = random_adapter(cfg_, r, double(2 * r), seed);
    fs::create_directories(d);
    adapters::save_peft(d.string(), a, cfg_);
    return a;
  }
  AdapterLimits limits(size_t bytes = size_t(1) << 30, int64_t rank = 64) {
    AdapterLimits l;
    l.max_cpu_bytes = bytes;
    l.max_rank = rank;
    return l;
  }
  std::unique_ptr<AdapterManager> manager(AdapterLimits l) {
    return std::make_unique<AdapterManager>(cfg_, std::vector<std::string>{root_.string()}, l);
  }
  std::unique_ptr<AdapterManager> manager() { return manager(limits()); }

  config::ModelConfig cfg_;
  fs::path root_, outside_;
};

// ---- registry and loading -------------------------------------------------------------------------

TEST_F(serve_adapters, AddThenAcquireLoadsInBackgroundAndCallsEveryWaiter) {
  auto a = write_adapter(root_ / "a_dir", 4, 7);
  auto m = manager();
  m->add("alpha", (root_ / "a_dir").string());
  auto l0 = info_of(*m, "alpha");
  EXPECT_FALSE(l0.loaded);
  EXPECT_EQ(l0.path, fs::canonical(root_ / "a_dir").string());
  EXPECT_EQ(m->cached_bytes(), 0u);

  // Three requests before the load finishes: one load, three callbacks, each exactly once.
  Waiter w1, w2, w3;
  EXPECT_EQ(m->acquire("alpha", w1.cb()), nullptr);  // never loads on the caller's thread
  auto p2 = m->acquire("alpha", w2.cb());
  auto p3 = m->acquire("alpha", w3.cb());
  ASSERT_TRUE(w1.wait());
  if (!p2) {
    ASSERT_TRUE(w2.wait());
  }
  if (!p3) {
    ASSERT_TRUE(w3.wait());
  }
  EXPECT_EQ(w1.error, "");
  std::this_thread::sleep_for(20ms);
  EXPECT_EQ(w1.count(), 1);
  EXPECT_EQ(w2.count(), p2 ? 0 : 1);
  EXPECT_EQ(w3.count(), p3 ? 0 : 1);

  auto p = m->acquire("alpha", {});
  ASSERT_NE(p, nullptr);
  EXPECT_TRUE(same_tensor(p->find(0, model::Module::Q)->a, a.find(0, model::Module::Q)->a));
  EXPECT_TRUE(same_tensor(p->find_expert(1, model::ExpertProj::Down, 3)->b, a.find_expert(1, model::ExpertProj::Down, 3)->b));
  auto i = info_of(*m, "alpha");
  EXPECT_TRUE(i.loaded);
  EXPECT_EQ(i.bytes, a.bytes());
  EXPECT_EQ(i.max_rank, 4);
  EXPECT_EQ(i.requests, 1 + (p2 ? 1 : 0) + (p3 ? 1 : 0));
  EXPECT_EQ(m->cached_bytes(), a.bytes());
  EXPECT_EQ(m->acquire("alpha", {}).get(), p.get());  // resident: the same copy
}

TEST_F(serve_adapters, AddAndLoadIsSynchronousAndNamesAreUnique) {
  auto a = write_adapter(root_ / "b_dir", 8, 3);
  write_adapter(root_ / "c_dir", 4, 4);
  auto m = manager();
  m->add_and_load("beta", (root_ / "b_dir").string());
  Waiter w;
  auto p = m->acquire("beta", w.cb());
  ASSERT_NE(p, nullptr);
  EXPECT_FLOAT_EQ(first_q_value(*p), first_q_value(a));
  EXPECT_EQ(m->cached_bytes(), a.bytes());
  for (auto f : {std::function<void()>([&] { m->add("beta", (root_ / "c_dir").string()); }),
                 std::function<void()>([&] { m->add_and_load("beta", (root_ / "c_dir").string()); })}) {
    Caught c = api_error_of(f);
    EXPECT_EQ(c.status, 400);
    EXPECT_EQ(c.code, "adapter_already_loaded");
    EXPECT_NE(c.message.find("already"), std::string::npos) << c.message;
  }
  EXPECT_EQ(first_q_value(*m->acquire("beta", {})), first_q_value(a));  // the first one stays
  std::this_thread::sleep_for(20ms);
  EXPECT_EQ(w.count(), 0);
}

TEST_F(serve_adapters, NamesUnderAnAdapterDirResolveLazily) {
  auto a = write_adapter(root_ / "lazy-1", 4, 5);
  fs::create_directories(root_ / "not_an_adapter");
  auto m = manager();
  EXPECT_TRUE(m->known("lazy-1"));
  EXPECT_FALSE(m->known("not_an_adapter"));
  EXPECT_FALSE(m->known("ghost"));
  EXPECT_FALSE(has_name(m->list(), "lazy-1"));  // known() registers nothing
  std::string err;
  auto p = acquire_wait(*m, "lazy-1", &err);
  ASSERT_NE(p, nullptr) << err;
  EXPECT_FLOAT_EQ(first_q_value(*p), first_q_value(a));
  EXPECT_TRUE(has_name(m->list(), "lazy-1"));
  Caught c = api_error_of([&] { m->acquire("not_an_adapter", {}); });
  EXPECT_EQ(c.status, 404);
}

TEST_F(serve_adapters, UnknownNamesAre404) {
  auto m = manager();
  for (auto f : {std::function<void()>([&] { m->acquire("ghost", {}); }),
                 std::function<void()>([&] { m->remove("ghost"); })}) {
    Caught c = api_error_of(f);
    EXPECT_EQ(c.status, 404);
    EXPECT_EQ(c.type, "not_found_error");
    EXPECT_NE(c.message.find("ghost"), std::string::npos);
  }
}

TEST_F(serve_adapters, RootsMustExist) {
  EXPECT_THROW(AdapterManager(cfg_, {(dir_ / "nope").string()}, limits()), graft::Error);
  std::ofstream(dir_ / "file") << "x";
  EXPECT_THROW(AdapterManager(cfg_, {(dir_ / "file").string()}, limits()), graft::Error);
}

// ---- names and paths ------------------------------------------------------------------------------

TEST_F(serve_adapters, MalformedNamesAreRejectedEverywhere) {
  write_adapter(root_ / "ok");
  write_adapter(outside_ / "x");
  // Also a directory literally named like an encoded traversal, to show the name never reaches the disk.
  write_adapter(root_ / "%2e%2e");
  auto m = manager();
  const std::vector<std::string> bad = {"../x", "a/b", "..", ".", "", std::string(200, 'a'), std::string(129, 'a'),
                                        "%2e%2e", std::string("ok\0x", 4), "/etc/passwd", "..\\x", "a b", "-lead",
                                        ".hidden", "_x", "na\xc3\xafve", "ok\n", "x/../ok", "ok/"};
  for (const auto& n : bad) {
    SCOPED_TRACE(quote(n));
    Caught c = api_error_of([&] { serve::check_adapter_name(n); });
    EXPECT_EQ(c.status, 400);
    EXPECT_EQ(c.param, "lora_name");
    EXPECT_EQ(c.code, "invalid_adapter_name");
    EXPECT_EQ(api_error_of([&] { m->add(n, (root_ / "ok").string()); }).status, 400);
    EXPECT_EQ(api_error_of([&] { m->add_and_load(n, (root_ / "ok").string()); }).status, 400);
    Caught ca = api_error_of([&] { m->acquire(n, {}); });
    EXPECT_EQ(ca.status, 400);
    EXPECT_EQ(ca.param, "model");
    EXPECT_FALSE(m->known(n));
    EXPECT_EQ(c.message.find('\n'), std::string::npos);  // echoed names are made printable
    EXPECT_LT(c.message.size(), 400u);
  }
  EXPECT_TRUE(m->list().empty());
  EXPECT_EQ(m->cached_bytes(), 0u);
  for (const std::string& n : std::vector<std::string>{"a", "Qwen3-lora_v1.2:prod", std::string(128, 'z'), "0"})
    EXPECT_NO_THROW(serve::check_adapter_name(n)) << n;
}

TEST_F(serve_adapters, PathsOutsideTheRootsAre403) {
  write_adapter(outside_ / "a1");
  write_adapter(dir_ / "root2" / "a");  // shares the root's name as a string prefix
  auto m = manager();
  const std::vector<std::string> forbidden = {
      (outside_ / "a1").string(),
      (root_ / ".." / "outside" / "a1").string(),
      root_.string() + "/./../outside/a1/",
      (root_ / "nonexistent" / ".." / ".." / "outside" / "a1").string(),
      (dir_ / "root2" / "a").string(),
      "/etc",
      "/nonexistent/adapter",                     // missing outside: still 403, no existence oracle
      "../../../../../../../../../../etc",        // relative to the working directory
  };
  for (const auto& p : forbidden) {
    SCOPED_TRACE(p);
    for (int add_only : {1, 0}) {
      Caught c = api_error_of([&] { add_only ? m->add("x", p) : m->add_and_load("x", p); });
      EXPECT_EQ(c.status, 403);
      EXPECT_EQ(c.type, "permission_error");
      EXPECT_EQ(c.param, "lora_path");
      EXPECT_EQ(c.code, "adapter_path_forbidden");
      EXPECT_NE(c.message.find("--adapter-dir"), std::string::npos) << c.message;
    }
  }
  EXPECT_TRUE(m->list().empty());
}

TEST_F(serve_adapters, MalformedPathsInsideTheRootsAre400) {
  write_adapter(root_ / "good");
  fs::create_directories(root_ / "nocfg");
  fs::copy_file(root_ / "good" / "adapter_model.safetensors", root_ / "nocfg" / "adapter_model.safetensors");
  std::ofstream(root_ / "file.txt") << "x";
  auto m = manager();
  const std::vector<std::string> bad = {"",
                                        (root_ / "missing").string(),
                                        (root_ / "file.txt").string(),
                                        (root_ / "nocfg").string(),
                                        (root_ / "good").string() + std::string("\0/../../outside", 15),
                                        std::string(5000, 'a')};
  for (const auto& p : bad) {
    SCOPED_TRACE(quote(p.substr(0, 80)));
    Caught c = api_error_of([&] { m->add("x", p); });
    EXPECT_EQ(c.status, 400);
    EXPECT_EQ(c.param, "lora_path");
  }
  EXPECT_NE(api_error_of([&] { m->add("x", (root_ / "nocfg").string()); }).message.find("adapter_config.json"),
            std::string::npos);
  // Odd but harmless spellings inside the root work.
  m->add("g1", root_.string() + "//./good/");
  m->add("g2", (root_ / "nocfg" / ".." / "good").string());
  EXPECT_EQ(info_of(*m, "g1").path, info_of(*m, "g2").path);
  EXPECT_NE(acquire_wait(*m, "g1"), nullptr);
}

TEST_F(serve_adapters, SymlinksLeavingTheRootAre403) {
  write_adapter(outside_ / "a1");
  write_adapter(root_ / "inside");
  fs::create_directory_symlink(outside_ / "a1", root_ / "evil");          // directory link out
  fs::create_directory_symlink(root_ / "evil", root_ / "chain");          // link to a link out
  fs::create_directory_symlink(root_ / "inside", root_ / "alias");        // link staying inside
  fs::create_directories(root_ / "sneaky_cfg");                          // real dir, file links out
  fs::create_symlink(outside_ / "a1" / "adapter_config.json", root_ / "sneaky_cfg" / "adapter_config.json");
  fs::copy_file(outside_ / "a1" / "adapter_model.safetensors", root_ / "sneaky_cfg" / "adapter_model.safetensors");
  fs::create_directories(root_ / "sneaky_st");
  fs::copy_file(outside_ / "a1" / "adapter_config.json", root_ / "sneaky_st" / "adapter_config.json");
  fs::create_symlink(outside_ / "a1" / "adapter_model.safetensors", root_ / "sneaky_st" / "adapter_model.safetensors");
  auto m = manager();
  // A missing component followed by ".." must not hide a link out ("ROOT/missing/../evil").
  for (const auto& p : {(root_ / "missing" / ".." / "evil").string(), (root_ / "m1" / "m2" / ".." / ".." / "chain" / ".").string(),
                        (root_ / "missing" / ".." / "evil" / "nonexistent").string()}) {
    SCOPED_TRACE(p);
    EXPECT_EQ(api_error_of([&] { m->add("x", p); }).status, 403);
  }
  for (const std::string n : {"evil", "chain", "sneaky_cfg", "sneaky_st"}) {
    SCOPED_TRACE(n);
    EXPECT_EQ(api_error_of([&] { m->add("x", (root_ / n).string()); }).status, 403);
    EXPECT_EQ(api_error_of([&] { m->add_and_load("x", (root_ / n).string()); }).status, 403);
    Caught lazy = api_error_of([&] { m->acquire(n, {}); });  // ROOT/NAME resolution
    EXPECT_EQ(lazy.status, 403);
    EXPECT_EQ(lazy.type, "permission_error");
    EXPECT_FALSE(m->known(n));
  }
  EXPECT_TRUE(m->list().empty());
  EXPECT_EQ(m->cached_bytes(), 0u);
  m->add_and_load("alias", (root_ / "alias").string());
  EXPECT_EQ(info_of(*m, "alias").path, fs::canonical(root_ / "inside").string());
}

TEST_F(serve_adapters, DirectorySwappedForASymlinkAfterRegistrationIsNotRead) {
  write_adapter(outside_ / "a1", 4, 9);
  write_adapter(root_ / "swap", 4, 10);
  auto m = manager();
  m->add("swap", (root_ / "swap").string());
  fs::remove_all(root_ / "swap");
  fs::create_directory_symlink(outside_ / "a1", root_ / "swap");
  std::string err;
  EXPECT_EQ(acquire_wait(*m, "swap", &err), nullptr);
  EXPECT_NE(err.find("outside"), std::string::npos) << err;
  EXPECT_EQ(m->cached_bytes(), 0u);
}

// ---- bad files and limits -------------------------------------------------------------------------

TEST_F(serve_adapters, CorruptFilesGiveA400AndTheManagerKeepsWorking) {
  auto good = write_adapter(root_ / "good", 4, 1);
  write_adapter(root_ / "garbage");
  std::ofstream(root_ / "garbage" / "adapter_model.safetensors", std::ios::trunc) << "this is not safetensors";
  write_adapter(root_ / "truncated");
  fs::resize_file(root_ / "truncated" / "adapter_model.safetensors",
                  fs::file_size(root_ / "truncated" / "adapter_model.safetensors") / 2);
  write_adapter(root_ / "badjson");
  std::ofstream(root_ / "badjson" / "adapter_config.json", std::ios::trunc) << "{\"r\": 4, \"lora_alpha\": ";
  write_adapter(root_ / "nost");
  fs::remove(root_ / "nost" / "adapter_model.safetensors");
  auto m = manager();
  for (const std::string n : {"garbage", "truncated", "badjson", "nost"}) {
    SCOPED_TRACE(n);
    Caught c = api_error_of([&] { m->add_and_load(n, (root_ / n).string()); });
    EXPECT_EQ(c.status, 400);
    EXPECT_EQ(c.code, "invalid_adapter");
    EXPECT_NE(c.message.find(n), std::string::npos) << c.message;
    EXPECT_FALSE(has_name(m->list(), n));  // a failed add_and_load registers nothing
    // The lazy path reports the same through on_ready, and a later request retries.
    std::string err;
    EXPECT_EQ(acquire_wait(*m, n, &err), nullptr);
    EXPECT_NE(err.find("cannot load adapter"), std::string::npos) << err;
    EXPECT_FALSE(info_of(*m, n).loaded);
  }
  EXPECT_NE(api_error_of([&] { m->add_and_load("g", (root_ / "nost").string()); }).message.find("adapter_model.safetensors"),
            std::string::npos);
  EXPECT_EQ(m->cached_bytes(), 0u);
  auto p = acquire_wait(*m, "good");
  ASSERT_NE(p, nullptr);
  EXPECT_FLOAT_EQ(first_q_value(*p), first_q_value(good));
}

TEST_F(serve_adapters, BaseMismatchIsA400) {
  write_adapter(root_ / "a", 4, 1);
  config::ModelConfig fewer = cfg_;
  fewer.num_hidden_layers = 1;
  AdapterManager m(fewer, {root_.string()}, limits());
  Caught c = api_error_of([&] { m.add_and_load("a", (root_ / "a").string()); });
  EXPECT_EQ(c.status, 400);
  EXPECT_EQ(c.code, "invalid_adapter");
}

TEST_F(serve_adapters, RankAboveTheLimitIsRejectedNamingTheFlag) {
  write_adapter(root_ / "r8", 8, 1);
  write_adapter(root_ / "r4", 4, 2);
  auto m = manager(limits(size_t(1) << 30, 4));
  Caught c = api_error_of([&] { m->add_and_load("r8", (root_ / "r8").string()); });
  EXPECT_EQ(c.status, 400);
  EXPECT_EQ(c.code, "lora_rank_too_large");
  EXPECT_NE(c.message.find("--max-lora-rank 4"), std::string::npos) << c.message;
  EXPECT_NE(c.message.find("rank 8"), std::string::npos) << c.message;
  std::string err;
  EXPECT_EQ(acquire_wait(*m, "r8", &err), nullptr);
  EXPECT_NE(err.find("--max-lora-rank"), std::string::npos) << err;
  m->add_and_load("r4", (root_ / "r4").string());
  EXPECT_EQ(m->cached_bytes(), info_of(*m, "r4").bytes);
}

// ---- the LRU cache --------------------------------------------------------------------------------

TEST_F(serve_adapters, LruEvictsUnpinnedOnlyAndFailsCleanlyWhenPinnedFillIt) {
  std::map<std::string, float> q;
  for (std::string n : {"a", "b", "c", "d"}) q[n] = first_q_value(write_adapter(root_ / n, 4, uint32_t(n[0])));
  const size_t one = random_adapter(cfg_, 4, 8, 1).bytes();
  write_adapter(root_ / "big", 16, 99);  // four times the bytes: more than the whole cache
  auto m = manager(limits(2 * one + one / 2));
  m->add_and_load("a", (root_ / "a").string());
  m->add_and_load("b", (root_ / "b").string());
  EXPECT_EQ(m->cached_bytes(), 2 * one);
  {
    auto pa = m->acquire("a", {});  // a is now the most recent, b the LRU
    ASSERT_NE(pa, nullptr);
  }
  m->add_and_load("c", (root_ / "c").string());  // evicts b
  EXPECT_TRUE(info_of(*m, "a").loaded);
  EXPECT_FALSE(info_of(*m, "b").loaded);
  EXPECT_TRUE(info_of(*m, "c").loaded);
  EXPECT_EQ(m->cached_bytes(), 2 * one);

  auto pinned_a = m->acquire("a", {});  // a pinned; c is newer but unpinned
  ASSERT_NE(pinned_a, nullptr);
  auto pb = acquire_wait(*m, "b");  // evicts c, not the older but pinned a
  ASSERT_NE(pb, nullptr);
  EXPECT_TRUE(info_of(*m, "a").loaded);
  EXPECT_FALSE(info_of(*m, "c").loaded);
  EXPECT_EQ(m->acquire("a", {}).get(), pinned_a.get());

  // a and b pinned: nothing can make room. The load fails with 503 naming the flag; nothing is evicted.
  Caught c = api_error_of([&] { m->add_and_load("d", (root_ / "d").string()); });
  EXPECT_EQ(c.status, 503);
  EXPECT_EQ(c.code, "adapter_cache_full");
  EXPECT_NE(c.message.find("--max-cpu-loras-bytes"), std::string::npos) << c.message;
  EXPECT_FALSE(has_name(m->list(), "d"));
  std::string err;
  EXPECT_EQ(acquire_wait(*m, "c", &err), nullptr);
  EXPECT_NE(err.find("--max-cpu-loras-bytes"), std::string::npos) << err;
  EXPECT_TRUE(info_of(*m, "a").loaded);
  EXPECT_TRUE(info_of(*m, "b").loaded);
  EXPECT_LE(m->cached_bytes(), 2 * one + one / 2);
  EXPECT_FLOAT_EQ(first_q_value(*pinned_a), q["a"]);
  EXPECT_FLOAT_EQ(first_q_value(*pb), q["b"]);

  // Larger than the whole cache: 400, whatever is pinned.
  Caught big = api_error_of([&] { m->add_and_load("big", (root_ / "big").string()); });
  EXPECT_EQ(big.status, 400);
  EXPECT_EQ(big.code, "adapter_too_large");
  EXPECT_NE(big.message.find("--max-cpu-loras-bytes"), std::string::npos);

  pinned_a.reset();  // unpinned: d now fits by evicting a
  m->add_and_load("d", (root_ / "d").string());
  EXPECT_FALSE(info_of(*m, "a").loaded);
  EXPECT_TRUE(info_of(*m, "b").loaded);
  EXPECT_TRUE(info_of(*m, "d").loaded);
  EXPECT_EQ(m->cached_bytes(), 2 * one);
}

TEST_F(serve_adapters, ConcurrentAcquireOfManyAdaptersWithASmallBudget) {
  constexpr int kAdapters = 20, kThreads = 8, kUses = 12;
  std::map<std::string, float> expect;
  for (int i = 0; i < kAdapters; ++i) {
    const std::string n = "ad" + std::to_string(i);
    expect[n] = first_q_value(write_adapter(root_ / n, 4, uint32_t(100 + i)));
  }
  const size_t one = random_adapter(cfg_, 4, 8, 1).bytes();
  const size_t budget = 3 * one + one / 2;
  auto m = manager(limits(budget));
  for (int i = 0; i < kAdapters; i += 2) m->add("ad" + std::to_string(i), (root_ / ("ad" + std::to_string(i))).string());
  // Odd ones resolve lazily as ROOT/NAME.

  std::atomic<int64_t> served{0}, cache_full{0}, over_budget{0}, wrong{0}, evicted_while_pinned{0}, other_errors{0};
  std::atomic<bool> stop_monitor{false};
  std::thread monitor([&] {
    while (!stop_monitor) {
      if (m->cached_bytes() > budget) ++over_budget;
      std::this_thread::yield();
    }
  });
  const auto deadline = std::chrono::steady_clock::now() + 60s;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      std::mt19937 rng(uint32_t(t) * 7919u);
      for (int u = 0; u < kUses; ++u) {
        const std::string n = "ad" + std::to_string(rng() % kAdapters);
        AdapterPtr p;
        while (!p && std::chrono::steady_clock::now() < deadline) {
          Waiter w;
          p = m->acquire(n, w.cb());
          if (p) break;
          if (!w.wait(20s)) break;
          if (!w.error.empty()) {
            if (w.error.find("--max-cpu-loras-bytes") != std::string::npos)
              ++cache_full;  // every other slot pinned by other threads: clean failure, retry
            else
              ++other_errors;
            std::this_thread::sleep_for(1ms);
          }
        }
        if (!p) continue;
        ++served;
        if (first_q_value(*p) != expect[n]) ++wrong;
        if (m->cached_bytes() > budget) ++over_budget;
        std::this_thread::sleep_for(std::chrono::microseconds(1000 + rng() % 3000));  // hold: pins pile up
        auto again = m->acquire(n, {});  // pinned: must still be the resident copy
        if (again.get() != p.get()) ++evicted_while_pinned;
        if (again) ++served;
      }
    });
  for (auto& th : threads) th.join();
  stop_monitor = true;
  monitor.join();

  EXPECT_EQ(served.load(), 2 * kThreads * kUses) << "some requests never got their adapter";
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_EQ(over_budget.load(), 0);
  EXPECT_EQ(evicted_while_pinned.load(), 0);
  EXPECT_EQ(other_errors.load(), 0);
  int64_t requests = 0;
  size_t resident = 0;
  for (auto& i : m->list()) {
    requests += i.requests;
    if (i.loaded) resident += i.bytes;
  }
  EXPECT_EQ(requests, served.load());
  EXPECT_EQ(resident, m->cached_bytes());
  EXPECT_LE(m->cached_bytes(), budget);
  RecordProperty("cache_full_retries", int(cache_full.load()));
}

// ---- remove ---------------------------------------------------------------------------------------

TEST_F(serve_adapters, RemoveWhilePinnedKeepsTheHoldersCopy) {
  auto a = write_adapter(root_ / "pinned_dir", 4, 21);
  auto m = manager();
  m->add_and_load("pinned", (root_ / "pinned_dir").string());
  auto p = m->acquire("pinned", {});
  ASSERT_NE(p, nullptr);
  m->remove("pinned");
  EXPECT_FALSE(has_name(m->list(), "pinned"));
  EXPECT_EQ(m->cached_bytes(), 0u);
  EXPECT_EQ(api_error_of([&] { m->acquire("pinned", {}); }).status, 404);
  EXPECT_EQ(api_error_of([&] { m->remove("pinned"); }).status, 404);
  EXPECT_TRUE(same_tensor(p->find(1, model::Module::O)->b, a.find(1, model::Module::O)->b));
  m->add_and_load("pinned", (root_ / "pinned_dir").string());  // the name can be reused
  EXPECT_NE(m->acquire("pinned", {}).get(), p.get());
}

// Opens a FIFO for writing once the loader has opened it for reading (or gives up after 10 s).
int open_fifo_writer(const fs::path& f) {
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (std::chrono::steady_clock::now() < deadline) {
    int fd = ::open(f.c_str(), O_WRONLY | O_NONBLOCK);
    if (fd >= 0) {
      ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
      return fd;
    }
    std::this_thread::sleep_for(1ms);
  }
  return -1;
}

TEST_F(serve_adapters, RemoveDuringLoadDiscardsTheResultAndTellsTheWaiters) {
  // "slow" has a FIFO for adapter_config.json: its load blocks in the loader until the test writes it.
  write_adapter(root_ / "slow_src", 4, 31);
  fs::create_directories(root_ / "slow");
  fs::copy_file(root_ / "slow_src" / "adapter_model.safetensors", root_ / "slow" / "adapter_model.safetensors");
  const fs::path fifo = root_ / "slow" / "adapter_config.json";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0) << std::strerror(errno);
  const std::string cfg_text = [&] {
    std::ifstream in(root_ / "slow_src" / "adapter_config.json");
    return std::string(std::istreambuf_iterator<char>(in), {});
  }();
  auto replacement = write_adapter(root_ / "other", 4, 32);
  write_adapter(root_ / "queued", 4, 33);

  auto m = manager();
  m->add("slow", (root_ / "slow").string());
  m->add("queued", (root_ / "queued").string());
  Waiter ws1, ws2, wq;
  EXPECT_EQ(m->acquire("slow", ws1.cb()), nullptr);
  const int fd = open_fifo_writer(fifo);
  ASSERT_GE(fd, 0) << "the loader never opened adapter_config.json";
  // The loader is now inside load_peft("slow"). A second waiter joins the same load; "queued" waits
  // behind it.
  EXPECT_EQ(m->acquire("slow", ws2.cb()), nullptr);
  EXPECT_EQ(m->acquire("queued", wq.cb()), nullptr);
  m->remove("slow");
  m->remove("queued");
  EXPECT_TRUE(m->list().empty());
  // Same name again, other files, loaded synchronously while the old load is still running.
  m->add_and_load("slow", (root_ / "other").string());
  ASSERT_EQ(::write(fd, cfg_text.data(), cfg_text.size()), ssize_t(cfg_text.size()));
  ::close(fd);

  for (Waiter* w : {&ws1, &ws2, &wq}) ASSERT_TRUE(w->wait());
  EXPECT_EQ(ws1.error, "adapter slow was unloaded");
  EXPECT_EQ(ws2.error, "adapter slow was unloaded");
  EXPECT_EQ(wq.error, "adapter queued was unloaded");
  std::this_thread::sleep_for(20ms);
  EXPECT_EQ(ws1.count(), 1);
  EXPECT_EQ(wq.count(), 1);
  // The discarded result replaced nothing.
  auto p = m->acquire("slow", {});
  ASSERT_NE(p, nullptr);
  EXPECT_FLOAT_EQ(first_q_value(*p), first_q_value(replacement));
  EXPECT_EQ(m->cached_bytes(), replacement.bytes());
  ASSERT_EQ(m->list().size(), 1u);
  EXPECT_EQ(m->list()[0].path, fs::canonical(root_ / "other").string());
}

TEST_F(serve_adapters, DestructionWithLoadsPendingCallsEveryWaiterOnce) {
  for (int i = 0; i < 6; ++i) write_adapter(root_ / ("p" + std::to_string(i)), 4, uint32_t(40 + i));
  std::vector<std::unique_ptr<Waiter>> ws;
  {
    auto m = manager();
    for (int i = 0; i < 6; ++i) {
      ws.push_back(std::make_unique<Waiter>());
      EXPECT_EQ(m->acquire("p" + std::to_string(i), ws.back()->cb()), nullptr);
    }
  }  // joins the loader
  for (auto& w : ws) {
    EXPECT_EQ(w->count(), 1);
    EXPECT_TRUE(w->error.empty() || w->error.find("shutting down") != std::string::npos) << w->error;
  }
}

}  // namespace
