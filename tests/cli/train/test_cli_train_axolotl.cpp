// `graft train --check` on the corpus of Axolotl-style configs (tests/train/axolotl_configs), the
// one-run report of every problem, and a few corpus configs trained for two steps on tiny
// `graft init-model` checkpoints with base_model / datasets / output_dir overridden (issue 17).
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "../../common/run_graft.hpp"
#include "graft/mmap_file.hpp"

namespace fs = std::filesystem;

namespace {
using Run = graft::testing::RunResult;
Run run(const std::string& args) { return graft::testing::run_graft(args); }

const fs::path kCorpus = fs::path(GRAFT_SOURCE_DIR) / "tests/train/axolotl_configs";
std::string assets() { return std::string(GRAFT_SOURCE_DIR) + "/../shared/assets"; }

class CliTrainAxolotl : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("graft_cli_axolotl_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    const char* w[] = {"good", "bad", "nice", "sad", "fine"};
    std::ofstream m(dir_ / "messages.jsonl"), c(dir_ / "conversations.jsonl"), a(dir_ / "alpaca.jsonl");
    for (int i = 0; i < 24; ++i) {
      const std::string q = std::string(w[i % 5]) + " " + w[(i * 3) % 5], ans = i % 2 ? "yes" : "no";
      m << nlohmann::json{{"messages", {{{"role", "user"}, {"content", q}}, {{"role", "assistant"}, {"content", ans}}}}}.dump() << "\n";
      c << nlohmann::json{{"conversations", {{{"from", "human"}, {"value", q}}, {{"from", "gpt"}, {"value", ans}}}}}.dump() << "\n";
      a << nlohmann::json{{"instruction", "Is it good?"}, {"input", q}, {"output", ans}}.dump() << "\n";
    }
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string d(const std::string& s) const { return (dir_ / s).string(); }
  // Two steps of a corpus config on a tiny checkpoint.
  graft::testing::RunResult train(const std::string& config, const std::string& base, const std::string& data, const std::string& out) {
    return run("train " + (kCorpus / config).string() + " --set base_model=" + base + " --set datasets.0.path=" + data +
               " --set output_dir=" + d(out) + " --set dataset_prepared_path=" + d(out + "_prepared") +
               " --set max_steps=2");
  }
  fs::path dir_;
};
}  // namespace

TEST_F(CliTrainAxolotl, EveryCorpusConfigPassesCheck) {
  int n = 0;
  for (const auto& e : fs::directory_iterator(kCorpus)) {
    if (e.path().extension() != ".yaml") continue;
    ++n;
    auto r = run("train --check " + e.path().string());
    EXPECT_EQ(r.rc, 0) << e.path() << "\n" << r.err;
    EXPECT_NE(r.out.find("recipe OK"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("not a local directory here"), std::string::npos) << r.out;  // Hub ids: said, not loaded
    EXPECT_NE(r.err.find("warning: " + e.path().string() + ":"), std::string::npos) << r.err;
  }
  EXPECT_GE(n, 15);
}

TEST_F(CliTrainAxolotl, CheckReportsEveryProblemAndReadsLocalFiles) {
  std::ofstream(dir_ / "bad.yaml") << "base_model: x\nlora_rank: 8\nlora_target_linear: maybe\nload_in_8bit: true\n"
                                      "chat_template: gemma\ndatasets: [{path: d}]\noutput_dir: o\n";
  auto r = run("train --check " + d("bad.yaml"));
  EXPECT_EQ(r.rc, 1);
  for (const char* needle : {"4 problems", "bad.yaml:2:1", "lora_rank", "bad.yaml:3:21", "bad.yaml:4:15", "bad.yaml:5:16"})
    EXPECT_NE(r.err.find(needle), std::string::npos) << needle << "\n" << r.err;
  // With a local base: config.json and the tokenizer are read (never the weights).
  ASSERT_EQ(run("init-model --arch qwen3 --preset tiny --seed 1 --out " + d("q3")).rc, 0);
  auto ok = run("train --check " + (kCorpus / "qwen3-8b-qlora.yaml").string() + " --set base_model=" + d("q3") +
                " --set datasets.0.path=" + d("conversations.jsonl"));
  EXPECT_EQ(ok.rc, 0) << ok.err;
  EXPECT_NE(ok.out.find("config.json is a supported qwen3"), std::string::npos) << ok.out;
  EXPECT_NE(ok.out.find("chat template: chat_template: qwen3"), std::string::npos) << ok.out;
  EXPECT_NE(ok.out.find("conversations.jsonl (chat_template): found"), std::string::npos) << ok.out;
  // ... so a special token the tokenizer lacks is caught before any weight is read.
  auto bad = run("train --check " + (kCorpus / "llama-3-8b-qlora.yaml").string() + " --set base_model=" + d("q3"));
  EXPECT_EQ(bad.rc, 1);
  EXPECT_NE(bad.err.find("special_tokens.pad_token '<|end_of_text|>' is not a token of the tokenizer"), std::string::npos)
      << bad.err;
}

TEST_F(CliTrainAxolotl, CorpusConfigsTrainOnTinyCheckpoints) {
  // Qwen3 QLoRA: ShareGPT-style conversations, chat_template: qwen3, gradient_checkpointing: offload.
  ASSERT_EQ(run("init-model --arch qwen3 --preset tiny --seed 1 --out " + d("q3")).rc, 0);
  auto q = train("qwen3-8b-qlora.yaml", d("q3"), d("conversations.jsonl"), "q3-out");
  ASSERT_EQ(q.rc, 0) << q.err;
  EXPECT_NE(q.out.find("trained 2 steps"), std::string::npos) << q.out;
  EXPECT_TRUE(fs::exists(dir_ / "q3-out" / "adapter_model.safetensors"));
  EXPECT_NE(q.err.find("warning:"), std::string::npos);
  // Mixtral QLoRA: alpaca data, lora_target_linear, adamw_bnb_8bit, deepspeed (single process).
  ASSERT_EQ(run("init-model --arch mixtral --preset tiny --seed 2 --out " + d("mx")).rc, 0);
  auto m = train("mixtral-8x7b-qlora.yaml", d("mx"), d("alpaca.jsonl"), "mx-out");
  ASSERT_EQ(m.rc, 0) << m.err;
  EXPECT_NE(m.out.find("trained 2 steps"), std::string::npos) << m.out;
  EXPECT_NE(m.err.find("single-process"), std::string::npos) << m.err;
  // Qwen2-MoE QLoRA with evals_per_epoch: 4 and val_set_size: held-out loss every step of a 2-step run.
  ASSERT_EQ(run("init-model --arch qwen2_moe --preset tiny --seed 3 --out " + d("q2")).rc, 0);
  auto e = train("qwen2-moe-qlora.yaml", d("q2"), d("alpaca.jsonl"), "q2-out");
  ASSERT_EQ(e.rc, 0) << e.err;
  int evals = 0;
  std::ifstream metrics(dir_ / "q2-out" / "metrics.jsonl");
  for (std::string line; std::getline(metrics, line);) evals += nlohmann::json::parse(line).contains("eval_loss");
  EXPECT_EQ(evals, 2);
  // Llama 3.1 LoRA with chat_template: llama3 and special_tokens, on the real Llama 3 tokenizer.
  if (!fs::exists(assets() + "/tokenizers/llama3_1/tokenizer.json")) GTEST_SKIP() << "../shared/assets is absent";
  ASSERT_EQ(run("init-model --arch llama --preset tiny --seed 4 --tokenizer " + assets() + "/tokenizers/llama3_1 --out " +
                d("l3")).rc, 0);
  auto l = train("llama-3.1-8b-lora.yaml", d("l3"), d("messages.jsonl"), "l3-out");
  ASSERT_EQ(l.rc, 0) << l.err;
  EXPECT_NE(l.out.find("trained 2 steps"), std::string::npos) << l.out;
}
