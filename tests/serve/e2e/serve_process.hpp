// Starts `graft serve ... --port 0 --port-file F` as a child process for end-to-end tests, waits
// until it listens, and stops it with a signal (bounded waits everywhere: a test never hangs).
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace graft::testing {

class ServeProcess {
 public:
  // args: everything after `graft serve`; the port file and stderr log go to `work_dir`.
  bool start(const std::vector<std::string>& args, const std::filesystem::path& work_dir, std::string name = "serve") {
    port_file_ = work_dir / (name + ".port");
    log_ = work_dir / (name + ".log");
    std::filesystem::remove(port_file_);
    std::vector<std::string> argv_s = {std::string(GRAFT_BINARY_DIR) + "/bin/graft", "serve"};
    argv_s.insert(argv_s.end(), args.begin(), args.end());
    argv_s.push_back("--port");
    argv_s.push_back("0");
    argv_s.push_back("--port-file");
    argv_s.push_back(port_file_.string());
    std::vector<char*> argv;
    for (auto& s : argv_s) argv.push_back(s.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 2, log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    const int rc = posix_spawn(&pid_, argv[0], &fa, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) return false;
    const auto t0 = std::chrono::steady_clock::now();
    while (std::chrono::steady_clock::now() - t0 < std::chrono::seconds(60)) {
      if (std::filesystem::exists(port_file_) && log().find("listening on") != std::string::npos) {
        std::ifstream(port_file_) >> port_;
        if (port_ > 0) return true;
      }
      int st = 0;
      if (::waitpid(pid_, &st, WNOHANG) == pid_) {
        pid_ = -1;
        return false;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }
  // Sends `sig` and waits (at most timeout_s) for the exit; returns the exit code (-1: killed or
  // did not exit in time, then SIGKILLed).
  int stop(int sig = SIGTERM, double timeout_s = 30) {
    if (pid_ <= 0) return -1;
    ::kill(pid_, sig);
    return wait(timeout_s);
  }
  int wait(double timeout_s) {
    const auto t0 = std::chrono::steady_clock::now();
    while (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() < timeout_s) {
      int st = 0;
      if (::waitpid(pid_, &st, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ::kill(pid_, SIGKILL);
    int st = 0;
    ::waitpid(pid_, &st, 0);
    pid_ = -1;
    return -1;
  }
  bool alive() const { return pid_ > 0 && ::kill(pid_, 0) == 0; }
  ~ServeProcess() {
    if (pid_ > 0) stop(SIGKILL, 5);
  }
  int port() const { return port_; }
  pid_t pid() const { return pid_; }
  std::string log() const {
    std::ifstream f(log_);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  }

 private:
  pid_t pid_ = -1;
  int port_ = 0;
  std::filesystem::path port_file_, log_;
};

// Runs a shell command, returning (exit code, stdout). Output of stderr goes to stdout with 2>&1.
inline std::pair<int, std::string> shell(const std::string& cmd) {
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return {-1, {}};
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  const int rc = ::pclose(p);
  return {WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, out};
}

inline bool have_program(const std::string& name) {
  return shell("command -v " + name + " >/dev/null 2>&1").first == 0;
}

}  // namespace graft::testing
