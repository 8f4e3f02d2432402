// graft's adapters against Hugging Face PEFT itself (tools/.venv: peft 0.21.2, transformers 5.23, CPU, fp32):
//  * graft -> PEFT: adapters written by `graft train` on tiny qwen3_moe / mixtral / deepseek_v3 bases
//    (attention only; all-linear; every routed expert fused via target_parameters) load with
//    `PeftModel.from_pretrained` without missing or unexpected keys, and PEFT's logits equal graft's.
//  * PEFT -> graft: adapters PEFT creates (random, non-zero B; target_modules list / regex / all-linear and
//    target_parameters; rank_pattern, alpha_pattern, use_rslora) load in graft and give PEFT's logits;
//    `graft merge` writes PEFT's `merge_and_unload()` weights.
// Everything Python does runs in one process (tools/ref/peft_reference.py) from SetUpTestSuite; the tests
// then check its report. Figures: docs/testing.md, "PEFT".
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>

#include "../../common/reference_python.hpp"
#include "../../common/run_graft.hpp"
#include "graft/adapters/peft.hpp"
#include "graft/config/model_config.hpp"
#include "graft/cpu/cpu_backend.hpp"
#include "graft/io/safetensors.hpp"
#include "graft/mmap_file.hpp"
#include "graft/model/model.hpp"

using namespace graft;
namespace fs = std::filesystem;

namespace {

constexpr double kTol = 1e-4;  // max |graft - PEFT| / max |PEFT| over the logits

struct Case {
  std::string name, arch, kind;  // kind: "train" (graft wrote it) or "create" (PEFT did)
  std::string adapter;
};

struct Shared {
  fs::path dir;
  std::string skip;   // non-empty: why every test skips
  std::string error;  // non-empty: the set-up failed (every test fails showing it)
  nlohmann::json report;
  std::vector<Case> cases;
  std::vector<int32_t> ids;
};

Shared& shared() {
  static Shared s;
  return s;
}

std::string d(const std::string& x) { return (shared().dir / x).string(); }

const char* kArchs[] = {"qwen3_moe", "mixtral", "deepseek_v3"};

std::string attention_targets(const std::string& arch) {
  return arch == "deepseek_v3" ? "[q_a_proj, q_b_proj, kv_a_proj_with_mqa, kv_b_proj, o_proj]" : "[q_proj, k_proj, v_proj, o_proj]";
}

// The recipe body selecting what a `graft train` case adapts.
std::string targets_of(const std::string& arch, const std::string& what) {
  if (what == "attn") return "lora_target_modules: " + attention_targets(arch) + "\n";
  if (what == "linear") return "lora_target_linear: true\n";
  // every routed expert, fused (PEFT target_parameters), plus o_proj
  return "lora_target_modules: [o_proj]\nlora_target_parameters: [mlp.experts.gate_up_proj, mlp.experts.down_proj]\n";
}

std::string train_recipe(const std::string& arch, const std::string& what) {
  const fs::path p = shared().dir / ("train_" + arch + "_" + what + ".yaml");
  std::ofstream(p) << "base_model: " << d(arch) << "\nadapter: lora\nlora_r: 4\nlora_alpha: 8\n"
                   << targets_of(arch, what) << "datasets:\n  - path: " << d("train.jsonl")
                   << "\n    type: chat_template\nsequence_len: 32\nsample_packing: true\nmicro_batch_size: 2\n"
                   << "gradient_accumulation_steps: 1\nmax_steps: 3\nlearning_rate: 0.05\nlr_scheduler: constant\n"
                   << "save_steps: 100\nlogging_steps: 1\nseed: 5\n";
  return p.string();
}

// PEFT-created adapters: LoraConfig kwargs per case.
std::vector<std::tuple<std::string, std::string, nlohmann::json>> peft_created() {
  using J = nlohmann::json;
  return {
      {"peft_qwen3_moe_params", "qwen3_moe",
       J{{"r", 4}, {"lora_alpha", 8}, {"use_rslora", true}, {"target_modules", {"q_proj", "o_proj"}},
         {"target_parameters", {"mlp.experts.gate_up_proj", "mlp.experts.down_proj"}},
         {"rank_pattern", {{"o_proj", 2}, {"down_proj", 3}}}, {"alpha_pattern", {{"q_proj", 16}, {"gate_up_proj", 5}}}}},
      {"peft_mixtral_v4_names", "mixtral",
       J{{"r", 2}, {"lora_alpha", 6}, {"target_modules", {"q_proj", "v_proj", "w1", "w2", "w3"}}}},
      {"peft_deepseek_v3_regex", "deepseek_v3",
       J{{"r", 3}, {"lora_alpha", 4}, {"target_modules", R"(.*\.(q_b_proj|kv_b_proj))"},
         {"target_parameters", {"mlp.experts.down_proj"}}}},
      {"peft_llama_all_linear", "llama",
       J{{"r", 4}, {"lora_alpha", 8}, {"target_modules", "all-linear"}, {"rank_pattern", {{"v_proj", 2}}},
         {"alpha_pattern", {{"down_proj", 3}}}}},
  };
}

void write_train_data() {
  std::mt19937 r(3);
  const char* w[] = {"good", "bad", "nice", "sad"};
  std::ofstream o(shared().dir / "train.jsonl");
  for (int i = 0; i < 12; ++i) {
    const std::string s = std::string(w[r() % 4]) + " " + w[r() % 4];
    o << nlohmann::json{{"messages", {{{"role", "user"}, {"content", s}}, {{"role", "assistant"}, {"content", i % 2 ? "yes" : "no"}}}}}.dump()
      << "\n";
  }
}

std::string set_up() {
  Shared& s = shared();
  nlohmann::json job;
  for (int i = 0; i < 24; ++i) s.ids.push_back(3 + (i * 37) % 250);
  job["ids"] = s.ids;
  write_train_data();
  for (const char* arch : {"qwen3_moe", "mixtral", "deepseek_v3", "llama"}) {
    auto r = graft::testing::run_graft(std::string("init-model --arch ") + arch + " --preset tiny --seed 7 --embed-std 0.125 --out " + d(arch));
    if (r.rc != 0) return "graft init-model " + std::string(arch) + " failed: " + r.err;
  }
  for (const char* arch : kArchs)
    for (const char* what : {"attn", "linear", "fused"}) {
      const std::string name = std::string("graft_") + arch + "_" + what;
      auto r = graft::testing::run_graft("train " + train_recipe(arch, what) + " --set output_dir=" + d(name));
      if (r.rc != 0) return "graft train " + name + " failed: " + r.err;
      s.cases.push_back({name, arch, "train", d(name)});
      job["load"].push_back({{"name", name}, {"base", d(arch)}, {"adapter", d(name)}, {"out", d(name + ".logits.safetensors")}});
    }
  int seed = 1;
  for (auto& [name, arch, cfg] : peft_created()) {
    s.cases.push_back({name, arch, "create", d(name)});
    job["create"].push_back({{"name", name}, {"base", d(arch)}, {"adapter", d(name)}, {"merged", d(name + "_merged")},
                             {"out", d(name + ".logits.safetensors")}, {"seed", seed++}, {"config", cfg}});
  }
  const std::string job_path = d("job.json");
  std::ofstream(job_path) << job.dump(1);
  auto [rc, out] = graft::testing::ref_run(graft::testing::ref_python() + " " + GRAFT_SOURCE_DIR +
                                           "/tools/ref/peft_reference.py " + job_path + " 2>" + d("python.err"));
  if (rc != 0) return "tools/ref/peft_reference.py failed (" + std::to_string(rc) + "): " + read_text_file(d("python.err"));
  // The report is the last line (one JSON document); earlier lines are library chatter.
  std::string last = out;
  while (!last.empty() && last.back() == '\n') last.pop_back();
  if (const auto nl = last.rfind('\n'); nl != std::string::npos) last = last.substr(nl + 1);
  s.report = nlohmann::json::parse(last, nullptr, false);
  if (s.report.is_discarded()) return "tools/ref/peft_reference.py printed no JSON report on its last line: " + out;
  return "";
}

constexpr char kPeftReferenceModules[] = "torch, transformers, peft";
constexpr char kPeftReferenceDirPrefix[] = "graft_peft_ref_";
class PeftReference : public graft::testing::ReferenceSuite<Shared, shared, set_up, kPeftReferenceModules, kPeftReferenceDirPrefix> {};

struct Compare {
  double max_rel = 0;       // max |a - b| / max |b|
  double effect = 0;        // max |adapter - base| / max |base| on the reference side
};

std::vector<float> tensor_f32(const io::SafetensorsModel& st, const std::string& name) {
  Tensor t = st.tensor(name).to(DType::F32);
  return std::vector<float>(t.data<float>(), t.data<float>() + t.numel());
}

double max_abs(const std::vector<float>& v) {
  double m = 0;
  for (float x : v) m = std::max(m, static_cast<double>(std::fabs(x)));
  return m;
}

double max_rel(const float* a, const std::vector<float>& b) {
  double m = 0;
  for (size_t i = 0; i < b.size(); ++i) m = std::max(m, static_cast<double>(std::fabs(a[i] - b[i])));
  return m / max_abs(b);
}

// graft's logits of `c` (in-process loader) vs PEFT's.
Compare compare_logits(const Case& c) {
  const std::string base = d(c.arch);
  auto cfg = config::load_model_config(base);
  auto m = model::Model::load(base);
  auto ad = adapters::load_peft(c.adapter, cfg);
  auto be = cpu::make_backend();
  std::vector<const model::LoraSource*> slots = {&ad};
  model::Batch b;
  b.ids = shared().ids;
  b.adapters = slots;
  Tensor lg = m.forward(*be, b);
  auto st = io::SafetensorsModel::open(d(c.name + ".logits.safetensors"));
  const auto ref = tensor_f32(st, "logits"), ref_base = tensor_f32(st, "base_logits");
  EXPECT_EQ(static_cast<int64_t>(ref.size()), lg.numel()) << c.name;
  Compare r;
  r.max_rel = max_rel(lg.data<float>(), ref);
  r.max_rel = std::isnan(r.max_rel) ? 1e9 : r.max_rel;
  std::vector<float> diff(ref.size());
  for (size_t i = 0; i < ref.size(); ++i) diff[i] = ref[i] - ref_base[i];
  r.effect = max_abs(diff) / max_abs(ref_base);
  return r;
}

void expect_clean_load(const std::string& name) {
  const auto& rep = shared().report.at(name);
  EXPECT_TRUE(rep.at("missing").empty()) << name << " missing keys: " << rep.at("missing").dump();
  EXPECT_TRUE(rep.at("unexpected").empty()) << name << " unexpected keys: " << rep.at("unexpected").dump();
  for (const auto& w : rep.at("warnings")) {
    const std::string s = w.get<std::string>();
    EXPECT_EQ(s.find("missing"), std::string::npos) << name << ": " << s;
    EXPECT_EQ(s.find("nexpected"), std::string::npos) << name << ": " << s;
  }
}

}  // namespace

TEST_F(PeftReference, GraftTrainedAdaptersLoadInPeftWithTheSameLogits) {
  for (const auto& c : shared().cases) {
    if (c.kind != "train") continue;
    SCOPED_TRACE(c.name);
    // all-linear on MoE families: graft exports the explicit form (attention in target_modules, dense/shared
    // MLP Linears as target_parameters "<parent>.<leaf>.weight") because PEFT's MoE conversion rewrites every
    // gate_proj/up_proj/down_proj target_modules entry (and "all-linear") to the fused experts + router.
    expect_clean_load(c.name);
    const Compare r = compare_logits(c);
    std::printf("[ figures ] %s: max rel logits error %.3g, adapter effect %.3g\n", c.name.c_str(), r.max_rel, r.effect);
    EXPECT_LE(r.max_rel, kTol) << c.name;
    EXPECT_GT(r.effect, 1e-3) << c.name << ": the trained adapter must change the logits for the check to mean anything";
  }
}

TEST_F(PeftReference, PeftCreatedAdaptersGiveTheSameLogitsInGraft) {
  for (const auto& c : shared().cases) {
    if (c.kind != "create") continue;
    SCOPED_TRACE(c.name);
    const Compare r = compare_logits(c);
    std::printf("[ figures ] %s: max rel logits error %.3g, adapter effect %.3g\n", c.name.c_str(), r.max_rel, r.effect);
    EXPECT_LE(r.max_rel, kTol) << c.name;
    EXPECT_GT(r.effect, 1e-2) << c.name;
  }
}

TEST_F(PeftReference, GraftMergeEqualsPeftMergeAndUnload) {
  for (const auto& c : shared().cases) {
    if (c.kind != "create") continue;
    SCOPED_TRACE(c.name);
    const std::string out = d(c.name + "_graft_merged");
    auto r = graft::testing::run_graft("merge " + d(c.arch) + " --adapter " + c.adapter + " --out " + out);
    ASSERT_EQ(r.rc, 0) << r.err;
    auto ours = io::SafetensorsModel::open(out);
    auto peft = io::SafetensorsModel::open(d(c.name + "_merged"));
    double worst = 0;
    int64_t values = 0, changed = 0;
    for (const auto& n : peft.names()) {
      ASSERT_TRUE(ours.contains(n)) << "PEFT's merged model has " << n << ", graft's has not";
      const auto a = tensor_f32(ours, n), b = tensor_f32(peft, n), base = tensor_f32(io::SafetensorsModel::open(d(c.arch)), n);
      ASSERT_EQ(a.size(), b.size()) << n;
      const double m = max_abs(b);
      for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::fabs(a[i] - b[i]) / (m > 0 ? m : 1));
      changed += (a != base);
      values += static_cast<int64_t>(a.size());
    }
    EXPECT_EQ(ours.names().size(), peft.names().size());
    std::printf("[ figures ] %s: merged %lld values, %lld tensors changed, max rel error %.3g\n", c.name.c_str(),
                static_cast<long long>(values), static_cast<long long>(changed), worst);
    EXPECT_LE(worst, 1e-6) << c.name;
    EXPECT_GT(changed, 0) << c.name;
  }
}
