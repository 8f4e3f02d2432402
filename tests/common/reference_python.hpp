// The Python test references (tools/.venv: torch, transformers, peft, bitsandbytes, tokenizers, openai,
// lm-eval, jinja2, made by scripts/setup.sh). Tests that run them carry the CTest label `reference` and skip
// with a message only when the venv is absent or lacks a module.
#pragma once

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <map>
#include <mutex>
#include <string>
#include <utility>

namespace graft::testing {

// The interpreter path ("" when the venv does not exist).
inline std::string ref_python() {
  const std::string p = GRAFT_REF_PYTHON;
  return std::filesystem::exists(p) ? p : std::string();
}

// "" when `import <modules>` works in the reference venv, else the reason to skip.
inline std::string ref_python_missing(const std::string& modules) {
  static std::mutex mu;
  static std::map<std::string, std::string> cache;
  std::lock_guard<std::mutex> lock(mu);
  if (auto it = cache.find(modules); it != cache.end()) return it->second;
  std::string why;
  const std::string py = ref_python();
  if (py.empty()) {
    why = std::string("the Python test references are absent (") + GRAFT_REF_PYTHON +
          "): run scripts/setup.sh (it creates tools/.venv from tools/requirements-reference.txt)";
  } else if (std::system((py + " -c 'import " + modules + "' >/dev/null 2>&1").c_str()) != 0) {
    why = "the reference venv cannot import " + modules + ": rerun scripts/setup.sh (tools/requirements-reference.txt)";
  }
  cache[modules] = why;
  return why;
}

// Runs a shell command, returns {exit code, stdout+stderr as chosen by the caller's redirections}.
inline std::pair<int, std::string> ref_run(const std::string& cmd) {
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return {-1, "popen failed: " + cmd};
  std::string out;
  std::array<char, 65536> buf{};
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  const int rc = pclose(p);
  return {WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, out};
}

// A test suite whose cases share one expensive reference run (one Python process for the whole suite).
// State: a struct with members `std::filesystem::path dir`, `std::string skip` (non-empty: every case skips with
// it) and `std::string error` (non-empty: the set-up failed, every case fails showing it). Prepare() fills the state
// from a fresh temporary dir (named Prefix + pid, kept when GRAFT_KEEP_TMP is set) once `import Modules` works.
template <class State, State& (*Get)(), std::string (*Prepare)(), const char* Modules, const char* Prefix>
class ReferenceSuite : public ::testing::Test {
 protected:
  static State& shared() { return Get(); }
  static void SetUpTestSuite() {
    State& s = Get();
    s.skip = ref_python_missing(Modules);
    if (!s.skip.empty()) return;
    s.dir = std::filesystem::temp_directory_path() / (std::string(Prefix) + std::to_string(::getpid()));
    std::filesystem::remove_all(s.dir);
    std::filesystem::create_directories(s.dir);
    try {
      s.error = Prepare();
    } catch (const std::exception& e) {
      s.error = e.what();
    }
  }
  static void TearDownTestSuite() {
    if (!Get().dir.empty() && !std::getenv("GRAFT_KEEP_TMP")) std::filesystem::remove_all(Get().dir);
  }
  void SetUp() override {
    if (!Get().skip.empty()) GTEST_SKIP() << Get().skip;
    ASSERT_TRUE(Get().error.empty()) << Get().error;
  }
};

}  // namespace graft::testing

// Skips the current test (with the reason) unless the reference venv imports `modules` ("torch, peft").
#define GRAFT_REQUIRE_REFERENCE(modules)                                                      \
  do {                                                                                        \
    const std::string graft_ref_why_ = ::graft::testing::ref_python_missing(modules);         \
    if (!graft_ref_why_.empty()) GTEST_SKIP() << graft_ref_why_;                              \
  } while (0)
