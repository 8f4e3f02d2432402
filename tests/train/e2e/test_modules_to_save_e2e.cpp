// `graft train` with lora_modules_to_save: [embed_tokens, lm_head] (PEFT modules_to_save, issue 17) on a
// tiny qwen3 (tied embeddings) and a tiny mixtral (untied): the exported adapter holds both trained
// copies under PEFT's keys and lists them in adapter_config.json; a run resumed from a mid-run checkpoint
// ends byte-identical (qwen3); `graft eval` loads the adapter and beats the base; and Hugging Face PEFT
// (tools/.venv, tools/ref/peft_reference.py) loads it without missing or unexpected keys and gives
// graft's logits.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>

#include "../../common/reference_python.hpp"
#include "../../common/run_graft.hpp"
#include "graft/adapters/peft.hpp"
#include "graft/backend/make_backend.hpp"
#include "graft/config/model_config.hpp"
#include "graft/io/safetensors.hpp"
#include "graft/mmap_file.hpp"
#include "graft/model/model.hpp"

namespace fs = std::filesystem;
using namespace graft;

namespace {
graft::testing::RunResult run(const std::string& args) { return graft::testing::run_graft(args); }

class ModulesToSaveE2E : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("graft_mts_e2e_" + std::to_string(::getpid()));
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
  std::string recipe(const std::string& arch) {
    const fs::path p = dir_ / (arch + ".yaml");
    std::ofstream(p) << "base_model: " << d(arch) << "\nadapter: lora\nlora_r: 4\nlora_alpha: 8\n"
                     << "lora_target_modules: [q_proj, v_proj]\nlora_modules_to_save: [embed_tokens, lm_head]\n"
                     << "datasets:\n  - path: " << d("train.jsonl") << "\n    type: chat_template\n"
                     << "sequence_len: 48\nsample_packing: true\nmicro_batch_size: 2\n"
                     << "max_steps: 4\nlearning_rate: 0.01\nlr_scheduler: constant\nsave_steps: 2\nlogging_steps: 1\nseed: 5\n";
    return p.string();
  }
  // Trains ARCH, checks the export, resume and eval; returns the adapter directory.
  std::string train(const std::string& arch, bool resume) {
    EXPECT_EQ(run("init-model --arch " + arch + " --preset tiny --seed 2 --embed-std 0.125 --out " + d(arch)).rc, 0);
    const std::string rc = recipe(arch), out = d(arch + "_a");
    auto a = run("train " + rc + " --set output_dir=" + out);
    EXPECT_EQ(a.rc, 0) << a.err;
    // adapter_config.json lists the copies; the safetensors file holds them under PEFT's keys.
    auto cj = nlohmann::json::parse(read_text_file(out + "/adapter_config.json"));
    EXPECT_EQ(cj["modules_to_save"], nlohmann::json({"embed_tokens", "lm_head"})) << cj.dump();
    const auto cfg = config::load_model_config(d(arch));
    auto st = io::SafetensorsModel::open(out + "/adapter_model.safetensors");
    auto base = io::SafetensorsModel::open(d(arch));
    Tensor e = st.tensor("base_model.model.model.embed_tokens.weight").to(DType::F32);
    Tensor h = st.tensor("base_model.model.lm_head.weight").to(DType::F32);
    EXPECT_EQ(e.shape().str(), Tensor::empty({cfg.vocab_size, cfg.hidden_size}, DType::F32).shape().str());
    Tensor be = base.tensor("model.embed_tokens.weight").to(DType::F32);
    Tensor bh = cfg.tie_word_embeddings ? be : base.tensor("lm_head.weight").to(DType::F32);
    double de = 0, dh = 0;
    for (int64_t i = 0; i < e.numel(); ++i) {
      de = std::max(de, double{std::fabs(e.data<float>()[i] - be.data<float>()[i])});
      dh = std::max(dh, double{std::fabs(h.data<float>()[i] - bh.data<float>()[i])});
    }
    EXPECT_GT(de, 1e-4) << arch << ": the embedding copy trained";
    EXPECT_GT(dh, 1e-4) << arch << ": the lm_head copy trained";
    // Resume from the step-2 checkpoint of a finished run: the same final adapter, byte for byte.
    if (resume) {
      const std::string adapter = read_text_file(out + "/adapter_model.safetensors");
      const std::string outb = d(arch + "_b");
      fs::create_directories(outb + "/checkpoints");
      fs::copy_file(out + "/checkpoints/step-00000002.h5", outb + "/checkpoints/step-00000002.h5");
      auto c = run("train " + rc + " --set output_dir=" + outb + " --resume");
      EXPECT_EQ(c.rc, 0) << c.err;
      EXPECT_NE(c.err.find("resumed from"), std::string::npos) << c.err;
      EXPECT_EQ(adapter, read_text_file(outb + "/adapter_model.safetensors")) << arch << " after --resume";
    }
    // graft eval loads the copies and beats the base on the training data.
    auto ev = run("eval " + d(arch) + " --adapter " + out + " --data " + d("train.jsonl") + " --json --max-tokens 1");
    EXPECT_EQ(ev.rc, 0) << ev.err;
    auto j = nlohmann::json::parse(ev.out, nullptr, false);
    if (!j.is_discarded() && j["results"].size() == 2)
      EXPECT_LT(j["results"][1]["loss"].get<double>(), j["results"][0]["loss"].get<double>()) << arch;
    else
      ADD_FAILURE() << "graft eval printed: " << ev.out;
    return out;
  }
  fs::path dir_;
};
}  // namespace

TEST_F(ModulesToSaveE2E, TrainResumeEvalAndPeftLogits) {
  const std::vector<std::string> archs = {"qwen3", "mixtral"};
  std::vector<std::string> adapters;
  for (const auto& a : archs) adapters.push_back(train(a, a == "qwen3"));  // resume: once is enough
  if (HasFailure()) return;
  const std::string why = graft::testing::ref_python_missing("torch, transformers, peft");
  if (!why.empty()) GTEST_SKIP() << "PEFT check skipped: " << why;
  std::vector<int32_t> ids;
  const int64_t V = config::load_model_config(d(archs[0])).vocab_size;
  for (int i = 0; i < 40; ++i) ids.push_back(static_cast<int32_t>((i * 37 + 11) % V));
  nlohmann::json job = {{"ids", ids}, {"load", nlohmann::json::array()}};
  for (size_t i = 0; i < archs.size(); ++i)
    job["load"].push_back({{"name", archs[i]}, {"base", d(archs[i])}, {"adapter", adapters[i]},
                           {"out", d(archs[i] + ".logits.safetensors")}});
  std::ofstream(d("job.json")) << job.dump(1);
  auto [rc, out] = graft::testing::ref_run(graft::testing::ref_python() + " " + GRAFT_SOURCE_DIR + "/tools/ref/peft_reference.py " +
                                    d("job.json") + " 2>" + d("python.err"));
  ASSERT_EQ(rc, 0) << read_text_file(d("python.err"));
  std::string last = out;
  while (!last.empty() && last.back() == '\n') last.pop_back();
  if (const auto nl = last.rfind('\n'); nl != std::string::npos) last = last.substr(nl + 1);
  const auto report = nlohmann::json::parse(last);
  auto be = make_backend("cpu");
  for (size_t i = 0; i < archs.size(); ++i) {
    const auto& rep = report.at(archs[i]);
    EXPECT_TRUE(rep.at("missing").empty()) << archs[i] << rep.dump();
    EXPECT_TRUE(rep.at("unexpected").empty()) << archs[i] << rep.dump();
    auto m = model::Model::load(d(archs[i]));
    auto ad = adapters::load_peft(adapters[i], m.config());
    ASSERT_NE(ad.embed_tokens(), nullptr);
    ASSERT_NE(ad.lm_head(), nullptr);
    std::vector<const model::LoraSource*> slots = {&ad};
    model::Batch b;
    b.ids = ids;
    b.adapters = slots;
    Tensor lg = m.forward(*be, b);
    auto st = io::SafetensorsModel::open(d(archs[i] + ".logits.safetensors"));
    Tensor ref = st.tensor("logits").to(DType::F32), ref_base = st.tensor("base_logits").to(DType::F32);
    ASSERT_EQ(ref.numel(), lg.numel());
    double mx = 0, err = 0, effect = 0;
    for (int64_t k = 0; k < ref.numel(); ++k) {
      mx = std::max(mx, double{std::fabs(ref.data<float>()[k])});
      err = std::max(err, double{std::fabs(lg.data<float>()[k] - ref.data<float>()[k])});
      effect = std::max(effect, double{std::fabs(ref.data<float>()[k] - ref_base.data<float>()[k])});
    }
    std::printf("[ figures ] %s modules_to_save: max rel logits error vs PEFT %.3g, adapter effect %.3g\n",
                archs[i].c_str(), err / mx, effect / mx);
    EXPECT_LE(err / mx, 1e-4) << archs[i];
    EXPECT_GT(effect / mx, 1e-3) << archs[i];
  }
}
