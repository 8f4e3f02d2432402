// End to end: --lm-head-dtype on generate / eval / serve (inference only; fine-tuning refuses it).
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>

#include "../../common/run_graft.hpp"

namespace fs = std::filesystem;

namespace {
graft::testing::RunResult run(const std::string& args) { return graft::testing::run_graft(args); }

class CliLmHead : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("graft_cli_lm_head_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
    ASSERT_EQ(run("init-model --arch qwen3_moe --preset tiny --seed 3 --out " + m()).rc, 0);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string m() const { return (dir_ / "m").string(); }
  fs::path dir_;
};
}  // namespace

TEST_F(CliLmHead, GenerateAndEvalRunWithAQuantizedLmHead) {
  for (const char* dt : {"nf4", "q8", "q6"}) {
    auto a = run("generate " + m() + " --prompt abc --max-tokens 6 --load-in-4bit --lm-head-dtype " + dt + " --json");
    ASSERT_EQ(a.rc, 0) << dt << ": " << a.err;
    EXPECT_GE(nlohmann::json::parse(a.out)["generated_ids"].size(), 1u) << dt;
  }
  auto f = run("generate " + m() + " --prompt abc --max-tokens 6 --lm-head-dtype f32 --json");
  auto d = run("generate " + m() + " --prompt abc --max-tokens 6 --json");
  ASSERT_EQ(f.rc, 0) << f.err;
  EXPECT_EQ(f.out, d.out);  // f32 is the default
  std::ofstream(dir_ / "d.jsonl") << R"({"text": "hello world, hello graft"})" << "\n";
  auto e = run("eval " + m() + " --data " + (dir_ / "d.jsonl").string() + " --type completion --max-tokens 2 "
               "--lm-head-dtype nf4 --json");
  ASSERT_EQ(e.rc, 0) << e.err;
  for (const char* dt : {"q8", "q6"}) {
    auto eq = run("eval " + m() + " --data " + (dir_ / "d.jsonl").string() + " --type completion --max-tokens 2 "
                  "--lm-head-dtype " + dt + " --json");
    ASSERT_EQ(eq.rc, 0) << dt << ": " << eq.err;
  }
}

TEST_F(CliLmHead, BadValueNamesTheFlagAndChoices) {
  for (const char* cmd : {"generate", "serve"}) {
    auto r = run(std::string(cmd) + " " + m() + (std::string(cmd) == "generate" ? " --prompt abc" : "") +
                 " --lm-head-dtype q4");
    EXPECT_NE(r.rc, 0) << cmd;
    EXPECT_NE(r.err.find("--lm-head-dtype 'q4' is not one of: f32, q8, q6, nf4"), std::string::npos) << cmd << ": " << r.err;
  }
}

TEST_F(CliLmHead, FineTuningRefusesAQuantizedLmHead) {
  auto r = run("serve " + m() + " --port 0 --lm-head-dtype nf4 --enable-fine-tuning --ft-dir " + (dir_ / "ft").string());
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.err.find("--lm-head-dtype nf4 is inference only"), std::string::npos) << r.err;
}
