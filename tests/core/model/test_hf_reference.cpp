// graft's model code against Hugging Face transformers' own modeling code (tools/ref/hf_logits.py in the
// reference venv; no remote code, fp32, eager attention and experts), for every supported family:
//  - checkpoints that transformers builds from a config and saves itself (save_pretrained), with real
//    top-k routing, DeepSeek group-limited softmax / noaux_tc sigmoid routing, MLA, Llama 4 chunked
//    attention + NoPE layers + temperature tuning, biases, a sliding window and every RoPE scaling
//    variant (linear, dynamic, llama3, yarn with mscale);
//  - checkpoints written by `graft init-model` (model::write_random_model), loaded by transformers.
// Per model: logits of a 64-token prompt agree within 1e-4 relative (L2 per position, max over
// positions) and the 32 greedy tokens of transformers' generate() equal graft's generate().
// The references are computed at test time in one Python run per test (nothing large is committed).
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <unistd.h>

#include "../../common/reference_python.hpp"
#include "graft/cpu/cpu_backend.hpp"
#include "graft/model/generate.hpp"
#include "graft/model/init_model.hpp"
#include "graft/model/model.hpp"
#include "graft/model/presets.hpp"

using namespace graft;
namespace fs = std::filesystem;

namespace {

constexpr double kMaxRelErr = 1e-4;

struct CaseResult {
  double max_rel = 0;
  int greedy_equal = 0, greedy_total = 0;
};

// Compares graft with the reference written into `dir` (reference.json + reference_logits.f32).
CaseResult compare(const fs::path& dir) {
  const std::string name = dir.filename().string();
  auto j = nlohmann::json::parse(std::ifstream(dir / "reference.json"));
  const auto ids = j["input_ids"].get<std::vector<int32_t>>();
  const auto ref_greedy = j["greedy"].get<std::vector<int32_t>>();
  auto m = model::Model::load(dir.string());
  const int64_t V = m.vocab_size(), T = static_cast<int64_t>(ids.size());
  EXPECT_EQ(j["vocab_size"].get<int64_t>(), V) << name;
  std::vector<float> ref(static_cast<size_t>(T * V));
  {
    std::ifstream f(dir / "reference_logits.f32", std::ios::binary);
    f.read(reinterpret_cast<char*>(ref.data()), static_cast<std::streamsize>(ref.size() * sizeof(float)));
    EXPECT_TRUE(f.good()) << name << ": reference_logits.f32 is shorter than [" << T << ", " << V << "]";
  }
  auto be = cpu::make_backend();
  model::Batch b;
  b.ids = ids;
  Tensor l = m.forward(*be, b);
  CaseResult r;
  for (int64_t t = 0; t < T; ++t) {
    double num = 0, den = 0;
    for (int64_t v = 0; v < V; ++v) {
      const double x = ref[static_cast<size_t>(t * V + v)];
      const double d = l.data<float>()[t * V + v] - x;
      num += d * d;
      den += x * x;
    }
    r.max_rel = std::max(r.max_rel, std::sqrt(num / std::max(den, 1e-30)));
  }
  model::GenerateOptions o;
  o.max_tokens = static_cast<int>(ref_greedy.size());
  const auto got = model::generate(m, *be, ids, o);
  r.greedy_total = static_cast<int>(ref_greedy.size());
  for (size_t i = 0; i < ref_greedy.size() && i < got.size() && got[i] == ref_greedy[i]; ++i) ++r.greedy_equal;
  EXPECT_LT(r.max_rel, kMaxRelErr) << name << ": max relative logit error over positions vs transformers "
                                   << j["transformers"].get<std::string>() << " (" << j["model_class"].get<std::string>()
                                   << ")";
  EXPECT_EQ(got, ref_greedy) << name << ": greedy tokens differ from transformers' generate() after "
                             << r.greedy_equal << " equal tokens";
  std::printf("  %-20s max rel logit err %.3g, greedy %d/%d equal (%s)\n", name.c_str(), r.max_rel, r.greedy_equal,
              r.greedy_total, j["model_class"].get<std::string>().c_str());
  return r;
}

// A fresh directory under the system temp dir, removed when the test passes (kept for inspection when not).
class TempRoot {
 public:
  explicit TempRoot(const std::string& tag) {
    path_ = fs::temp_directory_path() / ("graft_hf_ref_" + tag + "_" + std::to_string(::getpid()));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempRoot() {
    if (!::testing::Test::HasFailure()) fs::remove_all(path_);
    else std::printf("kept %s for inspection\n", path_.c_str());
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// Runs tools/ref/hf_logits.py with `args`; fails the test with its output when it fails.
bool run_reference(const std::string& args) {
  const std::string cmd = "HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 " + graft::testing::ref_python() + " " +
                          GRAFT_SOURCE_DIR "/tools/ref/hf_logits.py " + args + " 2>&1";
  auto [rc, out] = graft::testing::ref_run(cmd);
  EXPECT_EQ(rc, 0) << cmd << "\n" << out;
  return rc == 0;
}

void compare_all(const fs::path& root, size_t expected_cases) {
  size_t n = 0;
  for (const auto& e : fs::directory_iterator(root)) {
    if (!fs::exists(e.path() / "reference.json")) continue;
    SCOPED_TRACE(e.path().filename().string());
    compare(e.path());
    ++n;
  }
  EXPECT_EQ(n, expected_cases) << "reference cases found under " << root;
}

}  // namespace

// Checkpoints built and saved by transformers (one per case of hf_logits.py --list).
TEST(HfFixture, TransformersCheckpointsMatchTransformers) {
  GRAFT_REQUIRE_REFERENCE("torch, transformers");
  TempRoot root("hf");
  ASSERT_TRUE(run_reference("--make-hf " + root.path().string() + " --ref-under " + root.path().string()));
  compare_all(root.path(), 10);
}

// Checkpoints written by graft init-model (preset tiny) for every family, read by transformers.
TEST(HfFixture, InitModelCheckpointsMatchTransformers) {
  GRAFT_REQUIRE_REFERENCE("torch, transformers");
  TempRoot root("init");
  for (const auto& arch : model::init_architectures()) {
    model::InitModelOptions o;
    o.arch = arch;
    o.out = (root.path() / ("init_" + arch)).string();
    o.seed = 11;
    model::write_random_model(o);
  }
  ASSERT_TRUE(run_reference("--ref-under " + root.path().string()));
  compare_all(root.path(), model::init_architectures().size());
}
