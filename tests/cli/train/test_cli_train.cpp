// `graft train` end to end: a run killed with SIGKILL mid-training and resumed with --resume ends with
// an adapter byte-identical to an uninterrupted run; the exported adapter loads in `graft eval`;
// malformed recipes and data fail with clear errors.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "../../common/run_graft.hpp"
#include "graft/mmap_file.hpp"

namespace fs = std::filesystem;

namespace {
const std::string kGraft = std::string(GRAFT_BINARY_DIR) + "/bin/graft";

using Run = graft::testing::RunResult;
Run run(const std::string& args) { return graft::testing::run_graft(args); }

class CliTrain : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("graft_cli_train_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_ / "data");
    ASSERT_EQ(run("init-model --arch qwen3_moe --preset tiny --seed 2 --embed-std 0.125 --out " + d("base")).rc, 0);
    std::mt19937 r(3);
    const char* w[] = {"good", "bad", "nice", "sad"};
    std::ofstream o(dir_ / "data" / "train.jsonl");
    for (int i = 0; i < 48; ++i) {
      std::string s = std::string(w[r() % 4]) + " " + w[r() % 4] + " " + w[r() % 4];
      o << nlohmann::json{{"messages", {{{"role", "user"}, {"content", s}}, {{"role", "assistant"}, {"content", i % 2 ? "yes" : "no"}}}}}.dump() << "\n";
    }
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string d(const std::string& s) const { return (dir_ / s).string(); }
  std::string recipe(const std::string& out) {
    const fs::path p = dir_ / ("recipe_" + out + ".yaml");
    std::ofstream(p) << "base_model: " << d("base") << "\nload_in_4bit: true\nadapter: qlora\nlora_r: 4\nlora_alpha: 8\n"
                     << "lora_target_modules: [q_proj, v_proj, gate_proj, down_proj]\n"
                     << "datasets:\n  - path: " << d("data/train.jsonl") << "\n    type: chat_template\n"
                     << "val_set_size: 0.15\nsequence_len: 64\nmicro_batch_size: 2\ngradient_accumulation_steps: 2\n"
                     << "max_steps: 12\nlearning_rate: 0.003\nlr_scheduler: cosine\nwarmup_steps: 2\nsave_steps: 3\n"
                     << "logging_steps: 1\nseed: 7\noutput_dir: " << d(out) << "\n";
    return p.string();
  }
  fs::path dir_;
};
}  // namespace

TEST_F(CliTrain, KilledAndResumedRunIsBitExact) {
  auto a = run("train " + recipe("a"));
  ASSERT_EQ(a.rc, 0) << a.err;
  EXPECT_NE(a.out.find("trained 12 steps"), std::string::npos) << a.out;
  ASSERT_TRUE(fs::exists(dir_ / "a" / "adapter_model.safetensors"));
  ASSERT_TRUE(fs::exists(dir_ / "a" / "adapter_config.json"));
  ASSERT_TRUE(fs::exists(dir_ / "a" / "loss.svg"));
  // Run b: same recipe, killed with SIGKILL once a checkpoint exists, then resumed.
  const std::string rb = recipe("b");
  pid_t pid = fork();
  if (pid == 0) {
    freopen("/dev/null", "w", stderr);
    freopen("/dev/null", "w", stdout);
    execl(kGraft.c_str(), kGraft.c_str(), "train", rb.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  const auto t0 = std::chrono::steady_clock::now();
  bool killed = false;
  while (std::chrono::steady_clock::now() - t0 < std::chrono::seconds(120)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    if (fs::exists(dir_ / "b" / "checkpoints" / "step-00000006.h5")) {
      ::kill(pid, SIGKILL);
      killed = true;
      break;
    }
  }
  int st = 0;
  ::waitpid(pid, &st, 0);
  ASSERT_TRUE(killed) << "the run never wrote its step-6 checkpoint";
  ASSERT_FALSE(fs::exists(dir_ / "b" / "adapter_model.safetensors")) << "the run finished before it was killed";
  for (auto& e : fs::directory_iterator(dir_ / "b" / "checkpoints"))  // no half-written checkpoint is ever visible
    EXPECT_EQ(e.path().extension(), ".h5") << e.path();
  auto b = run("train " + rb + " --resume");
  ASSERT_EQ(b.rc, 0) << b.err;
  EXPECT_NE(b.err.find("resumed from"), std::string::npos) << b.err;
  EXPECT_EQ(graft::read_text_file(d("a/adapter_model.safetensors")), graft::read_text_file(d("b/adapter_model.safetensors")));
  // The exported adapter loads and evaluates.
  auto e = run("eval " + d("base") + " --adapter " + d("a") + " --data " + d("data/train.jsonl") + " --load-in-4bit --json --max-tokens 2");
  ASSERT_EQ(e.rc, 0) << e.err;
  auto j = nlohmann::json::parse(e.out);
  ASSERT_EQ(j["results"].size(), 2u);
  EXPECT_LT(j["results"][1]["loss"].get<double>(), j["results"][0]["loss"].get<double>());
}

TEST_F(CliTrain, BadRecipesAndDataFailClearly) {
  std::ofstream(dir_ / "bad.yaml") << "base_model: " << d("base") << "\nlora_rank: 8\noutput_dir: " << d("x") << "\n";
  auto r = run("train " + d("bad.yaml"));
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("lora_rank"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("lora_r"), std::string::npos) << r.err;
  std::ofstream(dir_ / "data" / "broken.jsonl") << "{\"messages\": []}\n{not json\n";
  r = run("train " + recipe("c") + " --set datasets.0.path=" + d("data/broken.jsonl"));
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("broken.jsonl"), std::string::npos) << r.err;
  r = run("train " + recipe("d") + " --set output_dir=/proc/graft_cannot_write_here");
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("output_dir"), std::string::npos) << r.err;
  r = run("train " + recipe("e") + " --device tpu");
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("unknown device 'tpu'"), std::string::npos) << r.err;
}
