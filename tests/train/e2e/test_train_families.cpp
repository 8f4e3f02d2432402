// `graft train` end to end on the families with hand-written MLA / router / Llama 4 backward: a tiny
// DeepSeek-V3 (MLA with q_lora, sigmoid group-limited router, shared expert; every linear layer
// adapted, LoRA dropout on) and a tiny Llama 4 (chunked + NoPE attention, MoE, PEFT fused-expert
// target_parameters). Each run trains and exports an adapter that `graft eval` loads and that beats
// the base on its training data; gradient checkpointing on (the default) and off give byte-identical
// adapters; and a run resumed from a mid-run checkpoint ends byte-identical too (dropout masks follow
// the step).
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "../../common/run_graft.hpp"
#include "graft/mmap_file.hpp"

namespace fs = std::filesystem;

namespace {
using Run = graft::testing::RunResult;
Run run(const std::string& args) { return graft::testing::run_graft(args); }

class TrainFamilies : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("graft_train_families_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    std::mt19937 r(3);
    const char* w[] = {"good", "bad", "nice", "sad"};
    std::ofstream o(dir_ / "train.jsonl");
    for (int i = 0; i < 24; ++i) {
      std::string s = std::string(w[r() % 4]) + " " + w[r() % 4];
      o << nlohmann::json{{"messages", {{{"role", "user"}, {"content", s}}, {{"role", "assistant"}, {"content", i % 2 ? "yes" : "no"}}}}}.dump() << "\n";
    }
  }
  void TearDown() override {
    if (!std::getenv("GRAFT_KEEP_TMP")) fs::remove_all(dir_);
  }
  std::string d(const std::string& s) const { return (dir_ / s).string(); }
  std::string recipe(const std::string& arch, const std::string& targets) {
    const fs::path p = dir_ / (arch + ".yaml");
    std::ofstream(p) << "base_model: " << d(arch) << "\nadapter: lora\nlora_r: 4\nlora_alpha: 8\n" << targets
                     << "datasets:\n  - path: " << d("train.jsonl") << "\n    type: chat_template\n"
                     << "sequence_len: 48\nsample_packing: true\nmicro_batch_size: 2\ngradient_accumulation_steps: 1\n"
                     << "max_steps: 4\nlearning_rate: 0.01\nlr_scheduler: constant\nsave_steps: 2\nlogging_steps: 1\nseed: 5\n";
    return p.string();
  }
  std::vector<double> losses(const std::string& out) {
    std::vector<double> v;
    std::ifstream f(d(out + "/metrics.jsonl"));
    for (std::string line; std::getline(f, line);) v.push_back(nlohmann::json::parse(line)["loss"].get<double>());
    return v;
  }
  void train_family(const std::string& arch, const std::string& targets) {
    ASSERT_EQ(run("init-model --arch " + arch + " --preset tiny --seed 2 --embed-std 0.125 --out " + d(arch)).rc, 0);
    const std::string rc = recipe(arch, targets);
    auto a = run("train " + rc + " --set output_dir=" + d(arch + "_a"));
    ASSERT_EQ(a.rc, 0) << a.err;
    const auto la = losses(arch + "_a");
    ASSERT_EQ(la.size(), 4u);
    for (double l : la) EXPECT_TRUE(std::isfinite(l)) << arch;
    const std::string adapter = graft::read_text_file(d(arch + "_a/adapter_model.safetensors"));
    // Checkpointing off: byte-identical adapter.
    auto b = run("train " + rc + " --set output_dir=" + d(arch + "_b") + " --set gradient_checkpointing=false");
    ASSERT_EQ(b.rc, 0) << b.err;
    EXPECT_EQ(adapter, graft::read_text_file(d(arch + "_b/adapter_model.safetensors"))) << arch;
    // Resume from the step-2 checkpoint of a finished run: the same final adapter.
    fs::remove(d(arch + "_b/adapter_model.safetensors"));
    fs::remove(d(arch + "_b/checkpoints/step-00000004.h5"));
    auto c = run("train " + rc + " --set output_dir=" + d(arch + "_b") + " --resume");
    ASSERT_EQ(c.rc, 0) << c.err;
    EXPECT_NE(c.err.find("resumed from"), std::string::npos) << c.err;
    EXPECT_EQ(adapter, graft::read_text_file(d(arch + "_b/adapter_model.safetensors"))) << arch << " after --resume";
    // The exported adapter loads in eval and beats the base on its training data.
    auto e = run("eval " + d(arch) + " --adapter " + d(arch + "_a") + " --data " + d("train.jsonl") + " --json --max-tokens 1");
    ASSERT_EQ(e.rc, 0) << e.err;
    auto j = nlohmann::json::parse(e.out);
    ASSERT_EQ(j["results"].size(), 2u);
    EXPECT_LT(j["results"][1]["loss"].get<double>(), j["results"][0]["loss"].get<double>()) << arch;
  }
  fs::path dir_;
};
}  // namespace

TEST_F(TrainFamilies, DeepseekV3AllLinearWithDropout) {
  train_family("deepseek_v3", "lora_target_linear: true\nlora_dropout: 0.1\n");
}

TEST_F(TrainFamilies, Llama4AttentionAndFusedExperts) {
  train_family("llama4", "lora_target_modules: [q_proj, k_proj, v_proj, o_proj]\n"
                         "lora_target_parameters: [feed_forward.experts.gate_up_proj, feed_forward.experts.down_proj]\n");
}
