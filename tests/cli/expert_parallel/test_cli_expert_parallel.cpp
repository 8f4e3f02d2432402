// Expert-parallel inference end to end (labels e2e, mpi): `mpirun -np N graft generate|serve` loads
// expert shard r of N on rank r; rank 0 runs the command and the other ranks answer their experts'
// rows (docs/distributed.md).
//  * generate: greedy ids equal the single-process run for N = 2, 3, 4 on the real stories260K MoE
//    conversions (../shared/assets; skipped without them) and on a tiny Qwen3-MoE with a trained adapter
//    (LoRA on every expert) and a weighted combination of two adapters (the workers load them by origin);
//  * serve: one HTTP front on rank 0; greedy completions for the base and a hot-loaded adapter equal the
//    single-process server's; the idle worker rank uses no CPU (no spinning in MPI); SIGTERM to mpirun
//    drains rank 0, releases the workers and every rank exits;
//  * refusals: a dense model under mpirun, and --enable-fine-tuning with sharded experts.
#include <gtest/gtest.h>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "../../common/run_graft.hpp"
#include "graft/mmap_file.hpp"

extern char** environ;

namespace fs = std::filesystem;
using graft::testing::RunResult;

namespace {

const std::string kGraft = std::string(GRAFT_BINARY_DIR) + "/bin/graft";
const fs::path kModels = fs::path(GRAFT_SOURCE_DIR) / ".." / "shared" / "assets" / "models";

using graft::testing::allow_mpirun_as_root;
using graft::testing::mpirun;
RunResult shell(const std::string& cmd) { return graft::testing::run_shell(cmd); }


// CPU seconds (user + system) a process has used so far.
double cpu_seconds(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  std::getline(f, line);
  const auto paren = line.rfind(')');
  if (paren == std::string::npos) return -1;
  std::istringstream rest(line.substr(paren + 2));
  std::string field;
  double ut = 0, st = 0;
  for (int i = 3; i <= 15 && rest >> field; ++i) {
    if (i == 14) ut = std::stod(field);
    if (i == 15) st = std::stod(field);
  }
  return (ut + st) / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

// The graft processes mpirun started (its children), by pid.
std::vector<pid_t> children_of(pid_t parent) {
  std::vector<pid_t> out;
  for (const auto& e : fs::directory_iterator("/proc")) {
    const std::string name = e.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream stat(e.path() / "stat");
    std::string line;
    std::getline(stat, line);
    const auto paren = line.rfind(')');
    if (paren == std::string::npos || line.find("(graft)") == std::string::npos) continue;
    std::istringstream rest(line.substr(paren + 2));
    char state;
    long ppid = 0;
    rest >> state >> ppid;
    if (ppid == parent) out.push_back(static_cast<pid_t>(std::stol(name)));
  }
  return out;
}

// Exited (gone, or a zombie nobody reaped yet), waiting up to 5 s.
bool gone(pid_t pid) {
  for (int i = 0; i < 500; ++i) {
    std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
    std::string line;
    std::getline(stat, line);
    const auto paren = line.rfind(')');
    if (!stat || paren == std::string::npos || line.size() < paren + 3 || line[paren + 2] == 'Z' || line[paren + 2] == 'X')
      return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

class ExpertParallelCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    allow_mpirun_as_root();
    have_mpirun_ = shell("command -v mpirun").rc == 0;
    if (!have_mpirun_ || !GRAFT_TEST_HAVE_MPI) return;
    dir_ = fs::temp_directory_path() / ("graft_cli_ep_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    ASSERT_EQ(shell(kGraft + " init-model --arch qwen3_moe --preset tiny --seed 2 --embed-std 0.125 --out " + d("base")).rc, 0);
    ASSERT_EQ(shell(kGraft + " init-model --arch llama --preset tiny --seed 2 --out " + d("dense")).rc, 0);
    std::ofstream o(dir_ / "train.jsonl");
    const char* w[] = {"good", "bad", "nice", "sad"};
    for (int i = 0; i < 16; ++i)
      o << nlohmann::json{{"messages", {{{"role", "user"}, {"content", std::string(w[i % 4]) + " " + w[(i / 4) % 4]}},
                                        {{"role", "assistant"}, {"content", i % 2 ? "yes" : "no"}}}}}.dump() << "\n";
    o.close();
    for (const char* name : {"ad1", "ad2"}) {
      std::ofstream(dir_ / (std::string(name) + ".yaml"))
          << "base_model: " << d("base") << "\nadapter: lora\nlora_r: 4\nlora_alpha: 8\n"
          << "lora_target_modules: [q_proj, v_proj, gate_proj, up_proj, down_proj]\ndatasets:\n  - path: " << d("train.jsonl")
          << "\n    type: chat_template\nsequence_len: 32\nmicro_batch_size: 2\nmax_steps: 3\nlearning_rate: 0.05\n"
          << "seed: " << (name[2] == '1' ? 1 : 2) << "\noutput_dir: " << d(name) << "\n";
      const auto t = shell(kGraft + " train " + d(std::string(name) + ".yaml"));
      ASSERT_EQ(t.rc, 0) << t.err;
    }
  }
  static void TearDownTestSuite() {
    if (!dir_.empty() && !std::getenv("GRAFT_KEEP_TMP")) fs::remove_all(dir_);
  }
  void SetUp() override {
    if (!have_mpirun_) GTEST_SKIP() << "mpirun not found: install openmpi-bin (and libopenmpi-dev) to test expert parallel";
    if (!GRAFT_TEST_HAVE_MPI) GTEST_SKIP() << "graft was built without MPI (install libopenmpi-dev and reconfigure)";
  }
  static std::string d(const std::string& s) { return (dir_ / s).string(); }
  static inline fs::path dir_;
  static inline bool have_mpirun_ = false;
};

TEST_F(ExpertParallelCli, GenerateEqualsTheSingleProcessRun) {
  struct Run {
    std::string model, args;
  };
  std::vector<Run> runs = {{d("base"), "--prompt 'good bad' --chat --max-tokens 24"},
                           {d("base"), "--prompt 'good bad' --chat --max-tokens 24 --adapter " + d("ad1")},
                           {d("base"), "--prompt 'nice sad' --chat --max-tokens 24 --adapter " + d("ad1") + " --adapter " +
                                           d("ad2") + " --adapter-scale 0.5 --adapter-scale 1.5"}};
  for (const char* m : {"stories260K_mixtral_split4", "stories260K_qwen2moe_split4"})
    if (fs::exists(kModels / m)) runs.push_back({(kModels / m).string(), "--prompt 'Once upon a time' --max-tokens 40"});
    else std::printf("skipping %s: shared assets not found at %s\n", m, kModels.string().c_str());
  for (const Run& r : runs) {
    const auto one = shell(kGraft + " generate " + r.model + " " + r.args + " --json");
    ASSERT_EQ(one.rc, 0) << one.err;
    const auto want = nlohmann::json::parse(one.out)["generated_ids"];
    ASSERT_FALSE(want.empty());
    for (int np : {2, 3, 4}) {
      const auto many = shell(mpirun(np) + kGraft + " generate " + r.model + " " + r.args + " --json");
      ASSERT_EQ(many.rc, 0) << many.err;
      EXPECT_NE(many.err.find("expert parallel: " + std::to_string(np) + " ranks; each holds"), std::string::npos) << many.err;
      // rank 0 alone prints the result
      EXPECT_EQ(nlohmann::json::parse(many.out)["generated_ids"], want) << r.model << " " << r.args << " np " << np;
    }
  }
}

TEST_F(ExpertParallelCli, ServeShardsExpertsBehindOneFront) {
  const auto port_file = [](const std::string& name) { return d(name + ".port"); };
  const auto start = [&](const std::string& launcher, const std::string& name, pid_t& pid) {
    const std::string cmd = "exec " + launcher + kGraft + " serve " + d("base") + " --adapter ad1=" + d("ad1") +
                            " --adapter-dir " + dir_.string() + " --port 0 --port-file " + port_file(name) +
                            " >/dev/null 2>" + d(name + ".log");
    const char* argv[] = {"/bin/sh", "-c", cmd.c_str(), nullptr};
    EXPECT_EQ(posix_spawn(&pid, "/bin/sh", nullptr, nullptr, const_cast<char**>(argv), environ), 0);
    const auto t0 = std::chrono::steady_clock::now();
    while (std::chrono::steady_clock::now() - t0 < std::chrono::seconds(60)) {
      if (fs::exists(port_file(name)) && graft::read_text_file(d(name + ".log")).find("listening on") != std::string::npos) {
        int port = 0;
        std::ifstream(port_file(name)) >> port;
        if (port > 0) return port;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return 0;
  };
  const auto complete = [](int port, const std::string& model) {
    httplib::Client cli("127.0.0.1", port);
    cli.set_read_timeout(60);
    const nlohmann::json req = {{"model", model}, {"prompt", "good bad nice"}, {"max_tokens", 16}, {"temperature", 0}};
    auto r = cli.Post("/v1/completions", req.dump(), "application/json");
    EXPECT_TRUE(r && r->status == 200) << (r ? r->body : httplib::to_string(r.error()));
    return r ? nlohmann::json::parse(r->body)["choices"][0]["text"].get<std::string>() : std::string();
  };
  const auto stop = [](pid_t pid) {
    ::kill(pid, SIGTERM);
    int st = 0;
    for (int i = 0; i < 3000; ++i) {
      if (::waitpid(pid, &st, WNOHANG) == pid) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &st, 0);
    return false;
  };
  pid_t single = 0, group = 0;
  const int p1 = start("", "single", single);
  ASSERT_GT(p1, 0) << graft::read_text_file(d("single.log"));
  const std::string base1 = complete(p1, d("base")), ad1 = complete(p1, "ad1"), ad2 = complete(p1, "ad2");
  EXPECT_TRUE(stop(single));
  const int p2 = start(mpirun(2), "group", group);
  ASSERT_GT(p2, 0) << graft::read_text_file(d("group.log"));
  EXPECT_NE(graft::read_text_file(d("group.log")).find("expert parallel: 2 ranks; each holds 4 of 8 experts"), std::string::npos);
  EXPECT_EQ(complete(p2, d("base")), base1);
  EXPECT_EQ(complete(p2, "ad1"), ad1);
  EXPECT_EQ(complete(p2, "ad2"), ad2);  // loaded on demand from --adapter-dir on rank 0, by origin on rank 1
  EXPECT_NE(ad1, base1);
  // Idle: the worker rank waits for rank 0 without spinning.
  const auto ranks = children_of(group);
  ASSERT_EQ(ranks.size(), 2u);
  std::vector<double> before;
  for (pid_t p : ranks) before.push_back(cpu_seconds(p));
  std::this_thread::sleep_for(std::chrono::seconds(2));
  for (size_t i = 0; i < ranks.size(); ++i) {
    const double used = cpu_seconds(ranks[i]) - before[i];
    std::printf("rank pid %d: %.3f CPU s in 2 s idle\n", static_cast<int>(ranks[i]), used);
    EXPECT_LT(used, 0.5) << "an idle rank spins";
  }
  EXPECT_TRUE(stop(group)) << "mpirun did not exit within 30 s of SIGTERM";
  for (pid_t p : ranks) EXPECT_TRUE(gone(p)) << "rank pid " << p << " still running";
  EXPECT_NE(graft::read_text_file(d("group.log")).find("graft serve: stopped"), std::string::npos)
      << graft::read_text_file(d("group.log"));
}

TEST_F(ExpertParallelCli, RefusesWhatCannotBeSharded) {
  const auto dense = shell(mpirun(2) + kGraft + " generate " + d("dense") + " --prompt hi --max-tokens 2");
  EXPECT_NE(dense.rc, 0);
  EXPECT_NE(dense.err.find("has no routed experts to shard"), std::string::npos) << dense.err;
  const auto ft = shell(mpirun(2) + kGraft + " serve " + d("base") + " --enable-fine-tuning --port 0");
  EXPECT_NE(ft.rc, 0);
  EXPECT_NE(ft.err.find("--enable-fine-tuning trains on the served base, which cannot have its experts sharded"),
            std::string::npos)
      << ft.err;
}

}  // namespace
