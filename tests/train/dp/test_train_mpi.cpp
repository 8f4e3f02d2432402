// `mpirun -np N graft train` end to end (labels e2e, mpi) on a tiny Qwen3-MoE (the demo's base at
// test size, LoRA on attention and every expert, LoRA dropout on), one thread per rank:
//  * N = 1 under mpirun writes a byte-identical adapter to the plain single-process run; N = 2 and
//    N = 4 (oversubscribed) write the same adapter up to the reduction order of the gradient sums:
//    ||theta_N - theta_1|| / ||theta_1|| <= 1e-6 over the whole adapter (docs/distributed.md explains
//    the tolerance); the metrics (written by rank 0 alone) agree likewise;
//  * with lora_modules_to_save (a fully trained lm_head) too;
//  * a checkpoint resumes on another rank count (2 -> 4, 1 -> 2) to the same adapter;
//  * ranks started with different recipes refuse to start, naming the rank and the difference;
//  * SIGKILL of one rank mid-run: every rank exits, mpirun non-zero, within 30 s, naming the lost rank;
//  * expert parallel (expert_parallel_size 2, 3, 4; 2 groups of 2): byte-identical adapters, resume 2 -> 4.
// Skips with a message when mpirun is absent or graft was built without MPI.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <random>
#include <thread>

#include "../../common/run_graft.hpp"
#include "graft/io/safetensors.hpp"
#include "graft/mmap_file.hpp"

extern char** environ;

namespace fs = std::filesystem;
using graft::testing::RunResult;

namespace {

const std::string kGraft = std::string(GRAFT_BINARY_DIR) + "/bin/graft";

using graft::testing::allow_mpirun_as_root;
using graft::testing::mpirun;
RunResult shell(const std::string& cmd) { return graft::testing::run_shell(cmd); }



// ||a - b|| / ||a|| over every tensor of two adapter files (same names, f32).
double relative_difference(const std::string& a_path, const std::string& b_path) {
  auto a = graft::io::SafetensorsFile::open(a_path), b = graft::io::SafetensorsFile::open(b_path);
  EXPECT_EQ(a.tensors().size(), b.tensors().size());
  double num = 0, den = 0;
  for (const auto& info : a.tensors()) {
    const auto ta = a.tensor(info.name), tb = b.tensor(info.name);
    EXPECT_EQ(ta.dtype(), graft::DType::F32) << info.name;
    EXPECT_EQ(ta.numel(), tb.numel()) << info.name;
    for (int64_t i = 0; i < ta.numel(); ++i) {
      const double x = ta.data<float>()[i], y = tb.data<float>()[i];
      num += (x - y) * (x - y);
      den += x * x;
    }
  }
  return std::sqrt(num / den);
}

std::vector<double> metric(const std::string& dir, const char* key) {
  std::vector<double> v;
  std::ifstream f(dir + "/metrics.jsonl");
  for (std::string line; std::getline(f, line);) {
    const auto j = nlohmann::json::parse(line, nullptr, false);  // the last line may be half-written
    if (!j.is_discarded() && j.contains(key)) v.push_back(j[key].get<double>());
  }
  return v;
}

class TrainMpi : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    allow_mpirun_as_root();
    have_mpirun_ = shell("command -v mpirun").rc == 0;
    if (!have_mpirun_ || !GRAFT_TEST_HAVE_MPI) return;
    dir_ = fs::temp_directory_path() / ("graft_train_mpi_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    ASSERT_EQ(shell(kGraft + " init-model --arch qwen3_moe --preset tiny --seed 2 --embed-std 0.125 --out " + d("base")).rc, 0);
    std::mt19937 r(3);
    const char* w[] = {"good", "bad", "nice", "sad", "fun", "awful"};
    std::ofstream o(dir_ / "train.jsonl");
    for (int i = 0; i < 40; ++i) {
      const std::string s = std::string(w[r() % 6]) + " " + w[r() % 6] + " " + w[r() % 6];
      o << nlohmann::json{{"messages", {{{"role", "user"}, {"content", s}}, {{"role", "assistant"}, {"content", i % 2 ? "yes" : "no"}}}}}.dump()
        << "\n";
    }
    o.close();
    // Global batch 2 x 2 = 4 sequences per step; a held-out split so evaluation is sharded too.
    std::ofstream(dir_ / "r.yaml") << "base_model: " << d("base") << "\nadapter: lora\nlora_r: 4\nlora_alpha: 8\n"
                                   << "lora_target_modules: [q_proj, v_proj, gate_proj, up_proj, down_proj]\nlora_dropout: 0.1\n"
                                   << "datasets:\n  - path: " << d("train.jsonl") << "\n    type: chat_template\n"
                                   << "val_set_size: 0.2\nsequence_len: 48\nmicro_batch_size: 2\ngradient_accumulation_steps: 2\n"
                                   << "max_steps: 4\nlearning_rate: 0.01\nlr_scheduler: constant\nsave_steps: 2\neval_steps: 2\n"
                                   << "logging_steps: 1\nseed: 5\noutput_dir: " << d("unused") << "\n";
    reference_ = shell(kGraft + " train " + d("r.yaml") + " --set output_dir=" + d("single"));
  }
  static void TearDownTestSuite() {
    if (!dir_.empty() && !std::getenv("GRAFT_KEEP_TMP")) fs::remove_all(dir_);
  }
  void SetUp() override {
    if (!have_mpirun_) GTEST_SKIP() << "mpirun not found: install openmpi-bin (and libopenmpi-dev) to test data parallel";
    if (!GRAFT_TEST_HAVE_MPI) GTEST_SKIP() << "graft was built without MPI (install libopenmpi-dev and reconfigure)";
    ASSERT_EQ(reference_.rc, 0) << reference_.err;
  }
  static std::string d(const std::string& s) { return (dir_ / s).string(); }
  static RunResult train(int np, const std::string& out, const std::string& extra = "") {
    return shell(mpirun(np) + kGraft + " train " + d("r.yaml") + " --set output_dir=" + d(out) + " " + extra);
  }
  static std::string adapter(const std::string& out) { return d(out + "/adapter_model.safetensors"); }

  static inline fs::path dir_;
  static inline bool have_mpirun_ = false;
  static inline RunResult reference_;
};

TEST_F(TrainMpi, AnyRankCountTrainsTheSingleProcessAdapter) {
  auto one = train(1, "np1");
  ASSERT_EQ(one.rc, 0) << one.err;
  EXPECT_EQ(graft::read_text_file(adapter("single")), graft::read_text_file(adapter("np1"))) << "N = 1 must be bit-identical";
  EXPECT_EQ(metric(d("single"), "loss"), metric(d("np1"), "loss"));
  EXPECT_EQ(metric(d("single"), "eval_loss"), metric(d("np1"), "eval_loss"));
  for (int np : {2, 4}) {
    const std::string out = "np" + std::to_string(np);
    auto r = train(np, out);
    ASSERT_EQ(r.rc, 0) << r.err;
    EXPECT_NE(r.out.find("data parallel over " + std::to_string(np) + " ranks (mpi)"), std::string::npos) << r.out;
    const double rel = relative_difference(adapter("single"), adapter(out));
    EXPECT_LE(rel, 1e-6) << "np " << np;
    std::printf("np %d: ||theta_N - theta_1|| / ||theta_1|| = %.3g\n", np, rel);
    // Rank 0 alone wrote the metrics: one line per step, the reduced loss and the sharded eval loss.
    const auto l1 = metric(d("single"), "loss"), ln = metric(d(out), "loss");
    ASSERT_EQ(ln.size(), l1.size()) << "np " << np;
    for (size_t i = 0; i < l1.size(); ++i) EXPECT_NEAR(ln[i], l1[i], 1e-6 * std::abs(l1[i])) << "np " << np << " step " << i + 1;
    const auto e1 = metric(d("single"), "eval_loss"), en = metric(d(out), "eval_loss");
    ASSERT_EQ(en.size(), 2u) << "np " << np;
    for (size_t i = 0; i < e1.size(); ++i) EXPECT_NEAR(en[i], e1[i], 1e-6 * std::abs(e1[i])) << "np " << np;
    EXPECT_TRUE(fs::exists(d(out + "/loss.svg")));
    EXPECT_TRUE(fs::exists(d(out + "/checkpoints/step-00000002.h5")));
    // Every rank reported the same held-out loss; rank 0 printed it once.
    EXPECT_EQ(r.out.find("held-out loss"), r.out.rfind("held-out loss")) << r.out;
  }
}

TEST_F(TrainMpi, ModulesToSaveGradientsAreReducedToo) {
  // lm_head trained fully (PEFT modules_to_save): its gradient goes through the same reduction.
  const std::string saved = "--set lora_modules_to_save=[lm_head]";
  auto one = shell(kGraft + " train " + d("r.yaml") + " --set output_dir=" + d("saved1") + " " + saved);
  ASSERT_EQ(one.rc, 0) << one.err;
  auto two = train(2, "saved2", saved);
  ASSERT_EQ(two.rc, 0) << two.err;
  EXPECT_LE(relative_difference(adapter("saved1"), adapter("saved2")), 1e-6);
  const auto f = graft::io::SafetensorsFile::open(adapter("saved2"));
  EXPECT_TRUE(std::any_of(f.tensors().begin(), f.tensors().end(),
                          [](const auto& t) { return t.name.find("lm_head") != std::string::npos; }))
      << "no lm_head in the adapter";
}

TEST_F(TrainMpi, ResumesOnAnotherRankCount) {
  // 2 ranks up to the step-2 checkpoint, then 4 ranks to the end.
  auto a = train(2, "resume24");
  ASSERT_EQ(a.rc, 0) << a.err;
  fs::remove(adapter("resume24"));
  fs::remove(d("resume24/checkpoints/step-00000004.h5"));
  auto b = train(4, "resume24", "--resume");
  ASSERT_EQ(b.rc, 0) << b.err;
  EXPECT_NE(b.err.find("resumed from " + d("resume24/checkpoints/step-00000002.h5") + " at step 2"), std::string::npos) << b.err;
  EXPECT_LE(relative_difference(adapter("single"), adapter("resume24")), 1e-6);
  EXPECT_EQ(metric(d("resume24"), "loss").size(), 6u);  // 4 steps, then steps 3 and 4 again
  // The single-process checkpoint, continued by 2 ranks.
  fs::create_directories(d("resume12/checkpoints"));
  fs::copy_file(d("single/checkpoints/step-00000002.h5"), d("resume12/checkpoints/step-00000002.h5"));
  auto c = train(2, "resume12", "--resume");
  ASSERT_EQ(c.rc, 0) << c.err;
  EXPECT_LE(relative_difference(adapter("single"), adapter("resume12")), 1e-6);
}

TEST_F(TrainMpi, RanksWithDifferentRecipesRefuseToStart) {
  // MPMD: rank 1 gets another learning rate.
  const std::string base = kGraft + " train " + d("r.yaml") + " --set output_dir=" + d("mismatch");
  auto r = shell("mpirun --oversubscribe --bind-to none -np 1 " + base + " : -np 1 " + base + " --set learning_rate=0.02");
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.err.find("refusing to start"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("rank 1 has recipe hash"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("'learning_rate: 0.02' vs rank 0's 'learning_rate: 0.01'"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(d("mismatch/adapter_model.safetensors")));
  // data_parallel_size must match the launched ranks; expert_parallel_size must divide them.
  auto s = train(2, "mismatch", "--set data_parallel_size=4");
  EXPECT_NE(s.rc, 0);
  EXPECT_NE(s.err.find("data_parallel_size: 4 x expert_parallel_size: 1 needs 4 ranks, but 2 ranks were started"), std::string::npos)
      << s.err;
  auto e = train(3, "mismatch", "--set expert_parallel_size=2");
  EXPECT_NE(e.rc, 0);
  EXPECT_NE(e.err.find("expert_parallel_size: 2 does not divide the 3 ranks started"), std::string::npos) << e.err;
  auto x = train(2, "mismatch", "--set expert_parallel_size=2 --set data_parallel_size=2");
  EXPECT_NE(x.rc, 0);
  EXPECT_NE(x.err.find("data_parallel_size: 2 x expert_parallel_size: 2 needs 4 ranks, but 2 ranks were started"), std::string::npos)
      << x.err;
  EXPECT_FALSE(fs::exists(d("mismatch/adapter_model.safetensors")));
}

// Expert parallel: the routed experts sharded over groups of ranks (each rank loads only its shard),
// rows exchanged with MPI_Alltoallv forward and backward; the owner's expert gradients enter the
// double-precision sum one sequence at a time, so the adapter is byte-identical to the single-process
// one — for 2 and 4 ranks in one group, for 2 groups of 2 (expert replicas) and with a global batch
// of 4 sequences over 3 ranks (rank 2 runs one sequence fewer: a label-less token).
TEST_F(TrainMpi, ExpertParallelTrainsTheSingleProcessAdapter) {
  for (auto [np, ep] : {std::pair{2, 2}, {4, 4}, {4, 2}, {3, 3}}) {
    const std::string out = "ep" + std::to_string(np) + "x" + std::to_string(ep);
    auto r = train(np, out, "--set expert_parallel_size=" + std::to_string(ep));
    ASSERT_EQ(r.rc, 0) << r.err;
    const std::string held = ep == 3 ? "2-3" : std::to_string(8 / ep);
    EXPECT_NE(r.err.find("expert parallel: " + std::to_string(np / ep) + " group" + (np / ep > 1 ? "s" : "") + " of " +
                         std::to_string(ep) + " ranks; each rank holds " + held + " of 8 experts per MoE layer"),
              std::string::npos)
        << r.err;
    EXPECT_EQ(graft::read_text_file(adapter("single")), graft::read_text_file(adapter(out))) << np << " ranks, ep " << ep;
    EXPECT_EQ(metric(d("single"), "loss"), metric(d(out), "loss")) << np << " ranks, ep " << ep;
    // Evaluation batches every rank's rows of an expert into one GEMM: equal up to float rounding.
    const auto e1 = metric(d("single"), "eval_loss"), en = metric(d(out), "eval_loss");
    ASSERT_EQ(en.size(), e1.size());
    for (size_t i = 0; i < e1.size(); ++i) EXPECT_NEAR(en[i], e1[i], 1e-6 * std::abs(e1[i])) << np << " ranks, ep " << ep;
  }
  // A checkpoint of 2 expert-parallel ranks continues on 4 (and the single-process one on 2).
  auto a = train(2, "epresume", "--set expert_parallel_size=2");
  ASSERT_EQ(a.rc, 0) << a.err;
  fs::remove(adapter("epresume"));
  fs::remove(d("epresume/checkpoints/step-00000004.h5"));
  auto b = train(4, "epresume", "--resume --set expert_parallel_size=4");
  ASSERT_EQ(b.rc, 0) << b.err;
  EXPECT_EQ(graft::read_text_file(adapter("single")), graft::read_text_file(adapter("epresume")));
}

// The pids of mpirun's children and their ranks (OMPI_COMM_WORLD_RANK in their environment).
std::map<int, pid_t> ranks_of(pid_t launcher) {
  std::map<int, pid_t> out;
  for (const auto& e : fs::directory_iterator("/proc")) {
    const std::string name = e.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream stat(e.path() / "stat");
    std::string line;
    std::getline(stat, line);
    const auto paren = line.rfind(')');
    if (paren == std::string::npos) continue;
    std::istringstream rest(line.substr(paren + 2));
    char state;
    long ppid = 0;
    rest >> state >> ppid;
    if (ppid != launcher) continue;
    std::ifstream env(e.path() / "environ");
    std::string var;
    while (std::getline(env, var, '\0'))
      if (var.rfind("OMPI_COMM_WORLD_RANK=", 0) == 0) out[std::stoi(var.substr(21))] = static_cast<pid_t>(std::stol(name));
  }
  return out;
}

// Exited (reaped, or a zombie nobody reaped yet).
bool gone(pid_t pid) {
  if (::kill(pid, 0) != 0) return true;
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  std::getline(stat, line);
  const auto paren = line.rfind(')');
  return paren == std::string::npos || line.size() < paren + 3 || line[paren + 2] == 'Z' || line[paren + 2] == 'X';
}

TEST_F(TrainMpi, KillingOneRankStopsEveryRankNamingIt) {
  // Data parallel, and expert parallel (the ranks then meet in an all-to-all at every MoE layer).
  auto kill_one_rank = [](const std::string& out, const std::string& extra) {
    const std::string err = d(out + ".err");
    const std::string cmd = "exec " + mpirun(3) + kGraft + " train " + d("r.yaml") + " --set output_dir=" + d(out) +
                            " --set max_steps=100000 --set save_steps=3 " + extra + " >/dev/null 2>" + err;
    const char* argv[] = {"/bin/sh", "-c", cmd.c_str(), nullptr};
    pid_t launcher = 0;
    ASSERT_EQ(posix_spawn(&launcher, "/bin/sh", nullptr, nullptr, const_cast<char**>(argv), environ), 0);
    // Wait until the run is stepping (4 metrics lines: a checkpoint is written at step 3).
    const auto t0 = std::chrono::steady_clock::now();
    std::map<int, pid_t> ranks;
    while (std::chrono::steady_clock::now() - t0 < std::chrono::seconds(120)) {
      ranks = ranks_of(launcher);
      if (ranks.size() == 3 && metric(d(out), "loss").size() >= 4) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    ASSERT_EQ(ranks.size(), 3u) << graft::read_text_file(err);
    ASSERT_GE(metric(d(out), "loss").size(), 4u) << graft::read_text_file(err);
    ASSERT_EQ(::kill(ranks[1], SIGKILL), 0);
    const auto killed = std::chrono::steady_clock::now();
    int status = 0;
    pid_t w = 0;
    const auto ranks_gone = [&] {
      return std::all_of(ranks.begin(), ranks.end(), [](const auto& rp) { return gone(rp.second); });
    };
    while (((w == 0 && (w = ::waitpid(launcher, &status, WNOHANG)) == 0) || !ranks_gone()) &&
           std::chrono::steady_clock::now() - killed < std::chrono::seconds(30))
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - killed).count();
    if (w == 0) {  // still running after 30 s: fail, and do not leave the job behind
      ::kill(launcher, SIGKILL);
      ::waitpid(launcher, &status, 0);
      for (auto [r, pid] : ranks) ::kill(pid, SIGKILL);
      FAIL() << "mpirun still running 30 s after rank 1 was killed";
    }
    if (!ranks_gone()) {
      for (auto [r, pid] : ranks) ::kill(pid, SIGKILL);
      FAIL() << "a rank is still running 30 s after rank 1 was killed";
    }
    std::printf("%s: every rank gone %.2f s after SIGKILL of rank 1\n", out.c_str(), secs);
    EXPECT_TRUE(!WIFEXITED(status) || WEXITSTATUS(status) != 0) << "mpirun exited 0";
    const std::string text = graft::read_text_file(err);
    EXPECT_NE(text.find("lost rank 1 (pid " + std::to_string(ranks[1])), std::string::npos) << text;
    // The step-3 checkpoint written before the kill is whole (the save is atomic).
    EXPECT_TRUE(fs::exists(d(out + "/checkpoints/step-00000003.h5")));
  };
  kill_one_rank("kill", "");
  kill_one_rank("kill_ep", "--set expert_parallel_size=3");
}

}  // namespace

// `mpirun -np 2 graft devices --json`: rank 0 prints what every rank sees (host, local rank, devices).
TEST_F(TrainMpi, DevicesReportsEveryRank) {
  const auto r = shell(mpirun(2) + kGraft + " devices --json");
  ASSERT_EQ(r.rc, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j["ranks"].size(), 2u) << r.out;
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(j["ranks"][i]["rank"], i);
    EXPECT_EQ(j["ranks"][i]["world_size"], 2);
    EXPECT_TRUE(j["ranks"][i].contains("default_device"));
  }
}
