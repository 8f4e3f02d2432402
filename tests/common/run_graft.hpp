// Runs the built `graft` binary for end-to-end tests: exit code, stdout and stderr.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "graft/mmap_file.hpp"

namespace graft::testing {

struct RunResult {
  int rc;
  std::string out, err;
};

// Runs `cmd` through /bin/sh: exit code (128 + the signal when one ended it), stdout and stderr.
inline RunResult run_shell(const std::string& cmd) {
  const auto err = std::filesystem::temp_directory_path() / ("graft_test_err_" + std::to_string(::getpid()));
  FILE* p = popen((cmd + " 2>" + err.string()).c_str(), "r");
  std::string out;
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  const int rc = pclose(p);
  std::string e = std::filesystem::exists(err) ? graft::read_text_file(err.string()) : "";
  std::filesystem::remove(err);
  return {WIFEXITED(rc) ? WEXITSTATUS(rc) : 128 + WTERMSIG(rc), out, e};
}

inline RunResult run_graft(const std::string& args) {
  static const std::string kGraft = std::string(GRAFT_BINARY_DIR) + "/bin/graft";
  return run_shell(kGraft + " " + args);
}

// Runs this test binary again (/proc/self/exe) as `env ENV <binary> --gtest_filter=FILTER`, where FILTER names a
// DISABLED_ test that prints one line "REPORT <text>", and returns <text> (or what went wrong): a test of something
// a process decides once at its start (its environment, a static default).
inline std::string rerun_self_report(const std::string& env, const std::string& filter) {
  std::array<char, 4096> self{};
  const ssize_t n = readlink("/proc/self/exe", self.data(), self.size() - 1);  // this test binary (not the shell's)
  if (n <= 0) return "readlink /proc/self/exe failed";
  const auto r = run_shell("env " + env + " '" + std::string(self.data(), size_t(n)) +
                           "' --gtest_also_run_disabled_tests --gtest_filter=" + filter);
  const size_t at = r.out.find("REPORT ");
  return at == std::string::npos ? "no report in: " + r.out + r.err
                                 : r.out.substr(at + 7, r.out.find('\n', at) - at - 7);
}

// `mpirun` for N ranks on this machine: oversubscribed, unbound, one OpenMP thread per rank. Tests
// call allow_mpirun_as_root() once first (containers and CI run as root; OpenMPI refuses that unless told).
inline std::string mpirun(int np) {
  return "mpirun --oversubscribe --bind-to none -x OMP_NUM_THREADS=1 -np " + std::to_string(np) + " ";
}
inline void allow_mpirun_as_root() {
  if (::geteuid() == 0) {
    ::setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
    ::setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
  }
  ::setenv("OMP_NUM_THREADS", "1", 1);
}

}  // namespace graft::testing
