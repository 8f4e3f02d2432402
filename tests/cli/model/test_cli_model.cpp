// End to end: `graft init-model`, `graft generate`, `graft quantize` as a user runs them.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "../../common/run_graft.hpp"
#include "graft/cpu/thread_pool.hpp"
#include "graft/mmap_file.hpp"

namespace fs = std::filesystem;

namespace {
using Run = graft::testing::RunResult;
Run run(const std::string& args) { return graft::testing::run_graft(args); }

class CliModel : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("graft_cli_model_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string d(const std::string& s) const { return (dir_ / s).string(); }
  fs::path dir_;
};
}  // namespace

TEST_F(CliModel, InitModelIsDeterministicAndGenerateIsRepeatable) {
  ASSERT_EQ(run("init-model --arch qwen3_moe --preset tiny --seed 3 --out " + d("a")).rc, 0);
  ASSERT_EQ(run("init-model --arch qwen3_moe --preset tiny --seed 3 --out " + d("b")).rc, 0);
  ASSERT_EQ(run("init-model --arch qwen3_moe --preset tiny --seed 4 --out " + d("c")).rc, 0);
  for (const char* f : {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}) {
    ASSERT_TRUE(fs::exists(dir_ / "a" / f)) << f;
    EXPECT_EQ(graft::read_text_file(d("a/") + f), graft::read_text_file(d("b/") + f)) << f;
  }
  EXPECT_NE(graft::read_text_file(d("a/model.safetensors")), graft::read_text_file(d("c/model.safetensors")));

  auto g1 = run("generate " + d("a") + " --prompt \"hello world\" --max-tokens 8 --json");
  auto g2 = run("generate " + d("a") + " --prompt \"hello world\" --max-tokens 8 --json");
  ASSERT_EQ(g1.rc, 0) << g1.err;
  EXPECT_EQ(g1.out, g2.out);
  auto j = nlohmann::json::parse(g1.out);
  EXPECT_EQ(j["prompt_ids"], (std::vector<int>{'h', 'e', 'l', 'l', 'o', ' ', 'w', 'o', 'r', 'l', 'd'}));  // byte ids
  EXPECT_GE(j["generated_ids"].size(), 1u);
  EXPECT_LE(j["generated_ids"].size(), 8u);
  EXPECT_TRUE(j["text"].is_string());
  // --chat wraps the prompt with the model's chat template (ChatML for the tiny tokenizer).
  auto gc = run("generate " + d("a") + " --prompt hi --chat --max-tokens 2 --json");
  ASSERT_EQ(gc.rc, 0) << gc.err;
  auto jc = nlohmann::json::parse(gc.out);
  EXPECT_EQ(jc["prompt_ids"][0], 257);  // <|im_start|>
  // Sampling with a seed is repeatable too.
  auto s1 = run("generate " + d("a") + " --prompt hi --max-tokens 6 --temperature 0.9 --top-p 0.9 --top-k 50 --seed 5 --json");
  auto s2 = run("generate " + d("a") + " --prompt hi --max-tokens 6 --temperature 0.9 --top-p 0.9 --top-k 50 --seed 5 --json");
  EXPECT_EQ(s1.out, s2.out);
}

TEST_F(CliModel, QuantizedCopyGeneratesLikeLoadIn4bit) {
  ASSERT_EQ(run("init-model --arch mixtral --preset tiny --seed 1 --out " + d("m")).rc, 0);
  auto q = run("quantize " + d("m") + " --out " + d("q"));
  ASSERT_EQ(q.rc, 0) << q.err;
  auto a = run("generate " + d("m") + " --prompt abc --max-tokens 6 --load-in-4bit --json");
  auto b = run("generate " + d("q") + " --prompt abc --max-tokens 6 --json");
  ASSERT_EQ(a.rc, 0) << a.err;
  ASSERT_EQ(b.rc, 0) << b.err;
  EXPECT_EQ(nlohmann::json::parse(a.out)["generated_ids"], nlohmann::json::parse(b.out)["generated_ids"]);
}

TEST_F(CliModel, Stories260kGreedyMatchesGolden) {
  const fs::path dir = fs::path(GRAFT_SOURCE_DIR) / ".." / "shared/assets/models/stories260K_hf_llama";
  if (!fs::exists(dir / "golden.json")) GTEST_SKIP() << "shared assets not found at " << dir;
  auto golden = nlohmann::json::parse(std::ifstream(dir / "golden.json"));
  auto r = run("generate " + dir.string() + " --prompt \"" + golden["prompt"].get<std::string>() + "\" --max-tokens 40 --json");
  ASSERT_EQ(r.rc, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["prompt_ids"], golden["prompt_ids"]);
  auto want = golden["greedy_ids_after_prompt"].get<std::vector<int>>();
  auto got = j["generated_ids"].get<std::vector<int>>();
  ASSERT_FALSE(got.empty());
  EXPECT_EQ(got, std::vector<int>(want.begin(), want.begin() + static_cast<long>(got.size())));  // stops early only at EOS
  // Streaming (non-JSON) output prints the same text.
  auto s = run("generate " + dir.string() + " --prompt \"" + golden["prompt"].get<std::string>() + "\" --max-tokens 40");
  EXPECT_EQ(s.out, j["text"].get<std::string>() + "\n");
}

TEST_F(CliModel, BadInputsGiveClearErrors) {
  auto r = run("generate " + d("nope") + " --prompt x");
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("config.json"), std::string::npos) << r.err;
  ASSERT_EQ(run("init-model --arch llama --preset tiny --out " + d("l")).rc, 0);
  r = run("generate " + d("l") + " --prompt x --temperature -1");
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("temperature"), std::string::npos) << r.err;
  r = run("init-model --arch gpt2 --out " + d("g"));
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("unknown architecture 'gpt2'"), std::string::npos) << r.err;
  r = run("init-model --arch llama --preset huge --out " + d("h"));
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("preset"), std::string::npos) << r.err;
  // A truncated weights file is reported, not crashed on.
  fs::resize_file(dir_ / "l" / "model.safetensors", 100);
  r = run("generate " + d("l") + " --prompt x");
  EXPECT_EQ(r.rc, 1) << r.err;
  EXPECT_NE(r.err.find("model.safetensors"), std::string::npos) << r.err;
}

// --device on the model-running commands: names are checked, cpu equals the default on a machine without a
// GPU, and asking for CUDA where there is none says why; `graft devices --json` reports what auto picks.
TEST_F(CliModel, DeviceFlag) {
  ASSERT_EQ(run("init-model --arch qwen3 --preset tiny --seed 2 --out " + d("q")).rc, 0);
  auto dev = run("devices --json");
  ASSERT_EQ(dev.rc, 0) << dev.err;
  const auto jd = nlohmann::json::parse(dev.out);
  const std::string dflt = jd["default_device"].get<std::string>();
  // graft starts OpenMP with a short spin (kernels/omp_wait) unless the user chose; both show here.
  if (!std::getenv("OMP_WAIT_POLICY") && !std::getenv("GOMP_SPINCOUNT")) {
    EXPECT_EQ(jd["cpu_openmp_wait"], "GOMP_SPINCOUNT=1000") << dev.out;
  }
  // graft's CPU thread pool: its spin time, the user's GRAFT_CPU_SPIN_US, and a malformed one named in the error.
  if (!std::getenv("GRAFT_CPU_SPIN_US")) {
    EXPECT_EQ(jd["cpu_pool_spin_us"], graft::cpu::kDefaultSpinUs) << dev.out;
  }
  const std::string graft_bin = std::string(GRAFT_BINARY_DIR) + "/bin/graft";
  auto spin = graft::testing::run_shell("GRAFT_CPU_SPIN_US=0 " + graft_bin + " devices --json");
  ASSERT_EQ(spin.rc, 0) << spin.err;
  EXPECT_EQ(nlohmann::json::parse(spin.out)["cpu_pool_spin_us"], 0) << spin.out;
  auto bad_spin = graft::testing::run_shell("GRAFT_CPU_SPIN_US=soon " + graft_bin + " devices");
  EXPECT_EQ(bad_spin.rc, 1);
  EXPECT_NE(bad_spin.err.find("GRAFT_CPU_SPIN_US='soon'"), std::string::npos) << bad_spin.err;
  auto passive = graft::testing::run_shell("OMP_WAIT_POLICY=passive " + graft_bin + " devices --json");
  ASSERT_EQ(passive.rc, 0) << passive.err;
  EXPECT_EQ(nlohmann::json::parse(passive.out)["cpu_openmp_wait"].get<std::string>().rfind("OMP_WAIT_POLICY=passive", 0), 0u)
      << passive.out;
  auto g = run("generate " + d("q") + " --prompt hi --max-tokens 4 --json --device cpu");
  ASSERT_EQ(g.rc, 0) << g.err;
  if (dflt == "cpu") {
    auto ga = run("generate " + d("q") + " --prompt hi --max-tokens 4 --json");
    EXPECT_EQ(ga.out, g.out) << "auto is cpu here";
    auto gc = run("generate " + d("q") + " --prompt hi --max-tokens 4 --device cuda");
    EXPECT_EQ(gc.rc, 1);
    EXPECT_TRUE(gc.err.find("no CUDA device is usable") != std::string::npos ||
                gc.err.find("no CUDA backend") != std::string::npos)
        << gc.err;
  }
  auto bad = run("generate " + d("q") + " --prompt hi --device gpu0");
  EXPECT_EQ(bad.rc, 1);
  EXPECT_NE(bad.err.find("unknown device 'gpu0'"), std::string::npos) << bad.err;
  bad = run("eval " + d("q") + " --data nowhere.jsonl --device cuda:x");
  EXPECT_EQ(bad.rc, 1);
}
