// Real top-k routing against Hugging Face transformers: fixtures made by
// tools/hf_fixtures/make_fixtures.py on a machine with transformers (the GPU machine). Each fixture
// directory holds config.json, model.safetensors and expected.json; logits must match within 1e-4
// relative (max over positions).
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "graft/cpu/cpu_backend.hpp"
#include "graft/model/model.hpp"

using namespace graft;
namespace fs = std::filesystem;

class HfFixture : public ::testing::TestWithParam<std::string> {};

TEST_P(HfFixture, LogitsMatchTransformers) {
  const fs::path dir = fs::path(GRAFT_SOURCE_DIR) / "tests/core/model/fixtures" / GetParam();
  if (!fs::exists(dir / "expected.json"))
    GTEST_SKIP() << "fixture " << dir << " not generated yet: run tools/hf_fixtures/make_fixtures.py where transformers "
                 << "is installed (the GPU machine)";
  auto j = nlohmann::json::parse(std::ifstream(dir / "expected.json"));
  auto ids = j["input_ids"].get<std::vector<int32_t>>();
  auto m = model::Model::load(dir.string());
  auto be = cpu::make_backend();
  model::Batch b;
  b.ids = ids;
  Tensor l = m.forward(*be, b);
  const int64_t V = m.vocab_size();
  double worst = 0;
  for (size_t t = 0; t < ids.size(); ++t) {
    auto ref = j["logits"][t].get<std::vector<double>>();
    double num = 0, den = 0;
    for (int64_t v = 0; v < V; ++v) {
      double d = l.data<float>()[static_cast<int64_t>(t) * V + v] - ref[static_cast<size_t>(v)];
      num += d * d;
      den += ref[static_cast<size_t>(v)] * ref[static_cast<size_t>(v)];
    }
    worst = std::max(worst, std::sqrt(num / den));
  }
  EXPECT_LT(worst, 1e-4) << "max relative logit error over positions";
}

INSTANTIATE_TEST_SUITE_P(Moe, HfFixture,
                         ::testing::Values("qwen3_moe", "qwen2_moe", "mixtral", "deepseek_v3", "deepseek_v2", "llama4"));
