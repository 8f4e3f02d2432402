// stories260K (Karpathy's trained tinyllamas checkpoint) in three Hugging Face layouts: the dense
// Llama and the Mixtral / Qwen2-MoE 4-expert splits must reproduce the float64 golden logits and the
// 40-token greedy continuation (../shared/assets/models/*/golden.json).
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "graft/cpu/cpu_backend.hpp"
#include "graft/model/model.hpp"

using namespace graft;
namespace fs = std::filesystem;

namespace {
const fs::path kModels = fs::path(GRAFT_SOURCE_DIR) / ".." / "shared" / "assets" / "models";

struct Golden {
  std::vector<int32_t> prompt, greedy;
  std::vector<double> logits_last, logits_bos;
};
Golden golden(const fs::path& dir) {
  std::ifstream in(dir / "golden.json");
  auto j = nlohmann::json::parse(in);
  return {j["prompt_ids"].get<std::vector<int32_t>>(), j["greedy_ids_after_prompt"].get<std::vector<int32_t>>(),
          j["logits_last_prompt_position"].get<std::vector<double>>(), j["logits_position0_bos"].get<std::vector<double>>()};
}
double rel_err(const float* a, const std::vector<double>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return std::sqrt(num / den);
}
int32_t argmax(const float* p, int64_t n) { return static_cast<int32_t>(std::max_element(p, p + n) - p); }

std::vector<int32_t> greedy(const model::Model& m, Backend& be, const std::vector<int32_t>& prompt, int n) {
  auto cache = m.new_cache(static_cast<int64_t>(prompt.size()) + n);
  model::Batch b;
  b.ids = prompt;
  Tensor logits = m.forward(be, b, &cache);
  std::vector<int32_t> out;
  int32_t next = argmax(logits.data<float>() + (logits.size(0) - 1) * m.vocab_size(), m.vocab_size());
  for (int i = 0; i < n; ++i) {
    out.push_back(next);
    if (i + 1 == n) break;
    std::vector<int32_t> one = {next};
    model::Batch s;
    s.ids = one;
    Tensor l = m.forward(be, s, &cache);
    next = argmax(l.data<float>(), m.vocab_size());
  }
  return out;
}

class Stories : public ::testing::TestWithParam<std::string> {};
}  // namespace

TEST_P(Stories, GoldenLogitsAndGreedyIds) {
  const fs::path dir = kModels / GetParam();
  if (!fs::exists(dir / "golden.json")) GTEST_SKIP() << "shared assets not found at " << dir << " (../shared is absent)";
  Golden g = golden(dir);
  auto m = model::Model::load(dir.string());
  auto be = cpu::make_backend();
  model::Batch b;
  b.ids = g.prompt;
  Tensor logits = m.forward(*be, b);
  const int64_t V = m.vocab_size();
  ASSERT_EQ(logits.size(0), static_cast<int64_t>(g.prompt.size()));
  EXPECT_LT(rel_err(logits.data<float>(), g.logits_bos), 1e-4);
  EXPECT_LT(rel_err(logits.data<float>() + (logits.size(0) - 1) * V, g.logits_last), 1e-4);
  EXPECT_EQ(greedy(m, *be, g.prompt, static_cast<int>(g.greedy.size())), g.greedy);
}

INSTANTIATE_TEST_SUITE_P(Layouts, Stories,
                         ::testing::Values("stories260K_hf_llama", "stories260K_mixtral_split4", "stories260K_qwen2moe_split4"));

TEST(StoriesNf4, MatchesDequantizedReferenceAndReportsError) {
  const fs::path dir = kModels / "stories260K_hf_llama";
  if (!fs::exists(dir / "golden.json")) GTEST_SKIP() << "shared assets not found at " << dir;
  Golden g = golden(dir);
  model::LoadOptions q4;
  q4.load_in_4bit = true;
  auto mq = model::Model::load(dir.string(), q4);
  auto be = cpu::make_backend();
  model::Batch b;
  b.ids = g.prompt;
  Tensor lq = mq.forward(*be, b);
  auto mf = model::Model::load(dir.string());
  // Reference: the same NF4 weights dequantized to f32 and run through the dense path.
  model::Model md = mq;
  for (size_t i = 0; i < md.layers().size(); ++i) {
    auto& L = const_cast<model::LayerWeights&>(md.layers()[i]);
    for (LinearWeight* w : {&L.attn.q, &L.attn.k, &L.attn.v, &L.attn.o, &L.mlp.gate, &L.mlp.up, &L.mlp.down}) {
      ASSERT_TRUE(w->quantized());
      w->dense = nf4::dequantize(*w->nf4);
      w->nf4.reset();
    }
  }
  Tensor ld = md.forward(*be, b);
  double num = 0, den = 0, qnum = 0;
  Tensor lf = mf.forward(*be, b);
  const float* pf = lf.data<float>();
  for (int64_t i = 0; i < lq.numel(); ++i) {
    num += (lq.data<float>()[i] - ld.data<float>()[i]) * double(lq.data<float>()[i] - ld.data<float>()[i]);
    den += double(ld.data<float>()[i]) * ld.data<float>()[i];
    qnum += (lq.data<float>()[i] - pf[i]) * double(lq.data<float>()[i] - pf[i]);
  }
  EXPECT_LT(std::sqrt(num / den), 1e-5) << "NF4 path vs dequantize-then-matmul";
  const double nf4_vs_fp32 = std::sqrt(qnum / den);
  auto gq = greedy(mq, *be, g.prompt, 40);
  int agree = 0;
  while (agree < 40 && gq[static_cast<size_t>(agree)] == g.greedy[static_cast<size_t>(agree)]) ++agree;
  std::printf("[ NF4      ] stories260K: logits rel. error vs fp32 %.4f; greedy ids agree for the first %d/40 tokens; "
              "weights %zu bytes (fp32 %zu)\n", nf4_vs_fp32, agree, mq.weight_bytes(), mf.weight_bytes());
  EXPECT_LT(nf4_vs_fp32, 0.5);  // NF4 on a 260K model: noticeably lossy, but still the same model
  EXPECT_LT(mq.weight_bytes(), mf.weight_bytes());
}
