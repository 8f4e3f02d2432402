// Runs the built `graft` binary for end-to-end tests: exit code, stdout and stderr.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <string>

#include "graft/mmap_file.hpp"

namespace graft::testing {

struct RunResult {
  int rc;
  std::string out, err;
};

inline RunResult run_graft(const std::string& args) {
  static const std::string kGraft = std::string(GRAFT_BINARY_DIR) + "/bin/graft";
  const auto err = std::filesystem::temp_directory_path() / ("graft_test_err_" + std::to_string(::getpid()));
  FILE* p = popen((kGraft + " " + args + " 2>" + err.string()).c_str(), "r");
  std::string out;
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  const int rc = pclose(p);
  std::string e = std::filesystem::exists(err) ? graft::read_text_file(err.string()) : "";
  std::filesystem::remove(err);
  return {WEXITSTATUS(rc), out, e};
}

}  // namespace graft::testing
