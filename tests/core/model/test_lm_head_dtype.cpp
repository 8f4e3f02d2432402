// LoadOptions::lm_head_dtype (--lm-head-dtype): an NF4, Q8 or Q6 lm_head gives the logits of an f32 lm_head holding
// the dequantized weights, keeps the embedding lookup f32 on tied models, and its quality against the exact f32
// lm_head (top-1 agreement, logit error, greedy continuation) is measured on stories260K and a tiny preset.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "../../common/scoped_env.hpp"
#include "graft/cpu/cpu_backend.hpp"
#include "graft/cpu/q8_gemv.hpp"
#include "graft/error.hpp"
#include "graft/model/generate.hpp"
#include "graft/model/model.hpp"
#include "graft/model/presets.hpp"
#include "graft/quant/nf4.hpp"
#include "graft/quant/q6.hpp"
#include "graft/quant/q8.hpp"

using namespace graft;
namespace fs = std::filesystem;

namespace {
config::ModelConfig tiny_cfg(const std::string& arch, bool tied) {
  auto j = model::preset_config(arch, "tiny", 300, 1, 2);
  j["tie_word_embeddings"] = tied;
  return config::parse_model_config_text(j.dump());
}

std::vector<int32_t> ids(int n, int64_t vocab) {
  std::vector<int32_t> v;
  for (int i = 0; i < n; ++i) v.push_back(static_cast<int32_t>((i * 37 + 5) % vocab));
  return v;
}

Tensor logits(const model::Model& m, Backend& be, const std::vector<int32_t>& t) {
  model::Batch b;
  b.ids = t;
  return m.forward(be, b);  // [T, vocab]
}

// [T, vocab]: row p is the logits of the prefix text[0..p] computed alone with last_logits_only, so the lm_head
// runs as in decoding (one row, the T <= 16 kernels: for Q8 and Q6 the Int8 dot where the CPU has it).
Tensor decode_logits(const model::Model& m, Backend& be, const std::vector<int32_t>& text) {
  const int64_t T = int64_t(text.size());
  Tensor out;
  for (int64_t p = 0; p < T; ++p) {
    model::Batch b;
    b.ids = std::span<const int32_t>(text.data(), size_t(p + 1));
    b.last_logits_only = true;
    const Tensor row = m.forward(be, b);  // [1, vocab]
    if (p == 0) out = Tensor::empty({T, row.size(1)}, DType::F32);
    std::memcpy(out.data<float>() + p * row.size(1), row.raw(), size_t(row.size(1)) * sizeof(float));
  }
  return out;
}

// Largest |a - b| and largest |a| over two [T, V] f32 tensors.
std::pair<float, float> max_diff(const Tensor& a, const Tensor& b) {
  float d = 0, mx = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    d = std::max(d, std::abs(a.data<float>()[i] - b.data<float>()[i]));
    mx = std::max(mx, std::abs(a.data<float>()[i]));
  }
  return {d, mx};
}

struct Quality {
  double top1_agree = 0, max_err = 0, rms_err = 0, logit_std = 0;
};
// Per position: does the argmax agree; logit error relative to nothing (absolute), and the f32 logits' std.
Quality compare(const Tensor& exact, const Tensor& q) {
  const int64_t T = exact.size(0), V = exact.size(1);
  Quality r;
  double se = 0, sx = 0, sxx = 0;
  int agree = 0;
  for (int64_t t = 0; t < T; ++t) {
    const float* e = exact.data<float>() + t * V;
    const float* g = q.data<float>() + t * V;
    agree += std::max_element(e, e + V) - e == std::max_element(g, g + V) - g;
    for (int64_t v = 0; v < V; ++v) {
      const double d = double(e[v]) - g[v];
      se += d * d;
      r.max_err = std::max(r.max_err, std::abs(d));
      sx += e[v];
      sxx += double(e[v]) * e[v];
    }
  }
  const double n = double(T * V);
  r.top1_agree = double(agree) / double(T);
  r.rms_err = std::sqrt(se / n);
  r.logit_std = std::sqrt(std::max(0.0, sxx / n - (sx / n) * (sx / n)));
  return r;
}

// W as the quantized head holds it: dequantize(quantize(W)) in the format `d` names.
Tensor round_trip(const Tensor& w, model::LmHeadDtype d) {
  if (d == model::LmHeadDtype::NF4) return nf4::dequantize(nf4::quantize(w, /*double_quant=*/true, 64));
  if (d == model::LmHeadDtype::Q6)
    return q6::dequantize(q6::quantize(std::span<const float>(w.data<float>(), size_t(w.numel())), w.shape()));
  return q8::dequantize(q8::quantize(std::span<const float>(w.data<float>(), size_t(w.numel())), w.shape()));
}

size_t common_prefix(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  size_t i = 0;
  while (i < a.size() && i < b.size() && a[i] == b[i]) ++i;
  return i;
}
}  // namespace

// Tied (the projection reads a quantized copy of the embedding table; the lookup stays f32) and untied.
TEST(LmHeadDtype, QuantizedLogitsEqualDequantizedF32Head) {
  auto be = cpu::make_backend();
  for (auto dtype : {model::LmHeadDtype::NF4, model::LmHeadDtype::Q8, model::LmHeadDtype::Q6})
    for (bool tied : {true, false}) {
      SCOPED_TRACE(::testing::Message() << model::lm_head_dtype_name(dtype) << (tied ? " tied" : " untied"));
      const auto cfg = tiny_cfg("qwen3_moe", tied);
      auto tensors = model::random_checkpoint(cfg, 7, 1.0f / std::sqrt(float(cfg.hidden_size)));
      model::LoadOptions o;
      o.lm_head_dtype = dtype;
      const auto q = model::Model::from_tensors(cfg, tensors, o);
      EXPECT_EQ(q.lm_head().quantized(), dtype == model::LmHeadDtype::NF4);
      EXPECT_EQ(q.lm_head().q8 != nullptr, dtype == model::LmHeadDtype::Q8);
      EXPECT_EQ(q.lm_head().q6 != nullptr, dtype == model::LmHeadDtype::Q6);
      EXPECT_FALSE(q.lm_head().dense.defined());
      EXPECT_EQ(q.lm_head_dtype(), dtype);
      // Reference: an untied model whose f32 lm_head holds dequantize(quantize(W)), same embedding table.
      const std::string head = tied ? "model.embed_tokens.weight" : "lm_head.weight";
      Tensor w;
      for (auto& [n, t] : tensors)
        if (n == head) w = t;
      ASSERT_TRUE(w.defined());
      auto ref_tensors = tensors;
      std::erase_if(ref_tensors, [](const auto& p) { return p.first == "lm_head.weight"; });
      ref_tensors.emplace_back("lm_head.weight", round_trip(w, dtype));
      auto ref_cfg = cfg;
      ref_cfg.tie_word_embeddings = false;
      const auto ref = model::Model::from_tensors(ref_cfg, ref_tensors);
      // The embedding lookup of the quantized model is still the exact f32 table.
      ASSERT_EQ(q.embedding().numel(), ref.embedding().numel());
      EXPECT_EQ(0, std::memcmp(q.embedding().raw(), ref.embedding().raw(), q.embedding().nbytes()));
      for (int T : {1, 5, 40}) {  // decode GEMV (T <= 16) and prefill paths of the quantized kernels
        // The exact product (for Q8 and Q6: GRAFT_Q8_DOT=exact) equals the dequantized head within f32 rounding.
        const graft::testing::ScopedEnv exact("GRAFT_Q8_DOT", "exact");
        auto [d, mx] = max_diff(logits(q, *be, ids(T, cfg.vocab_size)), logits(ref, *be, ids(T, cfg.vocab_size)));
        EXPECT_LE(d, 2e-5f * std::max(1.0f, mx)) << "T=" << T << " max |logit| " << mx;
        EXPECT_GT(mx, 0.1f);
      }
      if (dtype != model::LmHeadDtype::NF4) {
        // The Int8 dot where the CPU runs it (x quantized per 64-block: each hidden value moves by at most
        // absmax / 254 of its block), T <= 16 only; its exact bound is checked in CpuQ8Gemv.Int8Dot* and
        // CpuQ6Gemv.Int8Dot*. Measured here for Q8: at most 0.7% of the largest logit (2026-12-06), so 2% is the
        // ceiling; a wrong scale or offset is ~100%.
        const graft::testing::ScopedEnv auto_dot("GRAFT_Q8_DOT", nullptr);
        for (int T : {1, 5}) {
          auto [d, mx] = max_diff(logits(q, *be, ids(T, cfg.vocab_size)), logits(ref, *be, ids(T, cfg.vocab_size)));
          const bool int8 = cpu::q8_dot_detect() == cpu::Q8Dot::Int8;
          std::printf("[lm_head %s, %s dot] T=%d: max |logit diff| %.2e of max |logit| %.3f\n",
                      model::lm_head_dtype_name(dtype), int8 ? "int8" : "exact", T, double(d), double(mx));
          EXPECT_LE(d, (int8 ? 2e-2f : 2e-5f) * std::max(1.0f, mx)) << "T=" << T << " max |logit| " << mx;
          if (int8) {
            EXPECT_GT(d, 2e-5f * std::max(1.0f, mx)) << "the Int8 dot ran (it is not the exact product)";
          }
        }
      }
      // The default keeps the f32 lm_head (tied: the embedding table itself).
      const auto f = model::Model::from_tensors(cfg, tensors);
      EXPECT_FALSE(f.lm_head().quantized());
      EXPECT_EQ(f.lm_head().q8, nullptr);
      EXPECT_EQ(f.lm_head().q6, nullptr);
      EXPECT_EQ(f.lm_head_dtype(), model::LmHeadDtype::F32);
    }
}

// Quality against the exact f32 lm_head (figures quoted in docs/models.md and docs/performance.md).
TEST(LmHeadDtype, QualityOnStories260kAndTinyPreset) {
  auto be = cpu::make_backend();
  const fs::path dir = fs::path(GRAFT_SOURCE_DIR) / ".." / "shared" / "assets" / "models" / "stories260K_hf_llama";
  if (!fs::exists(dir / "config.json")) std::printf("stories260K rows skipped: ../shared/assets is absent\n");
  for (auto dtype : {model::LmHeadDtype::NF4, model::LmHeadDtype::Q8, model::LmHeadDtype::Q6}) {
    struct Case {
      std::string name;
      model::Model f32, quant;
      std::vector<int32_t> prompt;
    };
    std::vector<Case> cases;
    model::LoadOptions o;
    o.lm_head_dtype = dtype;
    if (fs::exists(dir / "config.json")) {
      cases.push_back({"stories260K", model::Model::load(dir.string()), model::Model::load(dir.string(), o),
                       {1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426}});
    }
    {
      const auto cfg = tiny_cfg("qwen3_moe", true);
      auto t = model::random_checkpoint(cfg, 3, 1.0f / std::sqrt(float(cfg.hidden_size)));
      cases.push_back({"qwen3_moe tiny (tied, unit-scale logits)", model::Model::from_tensors(cfg, t),
                       model::Model::from_tensors(cfg, t, o), ids(16, cfg.vocab_size)});
    }
    for (auto& c : cases) {
      SCOPED_TRACE(::testing::Message() << model::lm_head_dtype_name(dtype) << " " << c.name);
      model::GenerateOptions go;
      go.max_tokens = 40;
      const auto g32 = model::generate(c.f32, *be, c.prompt, go);
      const auto gq = model::generate(c.quant, *be, c.prompt, go);
      const size_t same = common_prefix(g32, gq);
      // Teacher-forced on the f32 model's own text (prompt + its greedy continuation): per-position top-1 agreement,
      // each position's quantized logits computed as a decode step computes them.
      auto text = c.prompt;
      text.insert(text.end(), g32.begin(), g32.end());
      const Quality qq = compare(logits(c.f32, *be, text), decode_logits(c.quant, *be, text));
      std::printf("[lm_head %s%s vs f32] %s: top-1 agreement %.1f%% of %zu positions, logit error max %.4f rms %.4f "
                  "(f32 logit std %.3f), greedy 40 tokens: first %zu identical\n",
                  model::lm_head_dtype_name(dtype),
                  dtype != model::LmHeadDtype::NF4 && cpu::q8_dot_detect() == cpu::Q8Dot::Int8 ? ", int8 dot" : "",
                  c.name.c_str(), 100 * qq.top1_agree, text.size(), qq.max_err,
                  qq.rms_err, qq.logit_std, same);
      EXPECT_GT(qq.rms_err, 0.0);  // it is a different (quantized) head
      if (dtype == model::LmHeadDtype::NF4) {
        // NF4's step is ~1/8 of a block's range: the logit error stays a small fraction of the logits' spread, and
        // most positions keep their top-1 token (stories260K's hidden 64 is one NF4 block a row).
        EXPECT_LT(qq.rms_err, 0.1 * qq.logit_std);
        EXPECT_GE(qq.top1_agree, 0.75);
      } else if (dtype == model::LmHeadDtype::Q8) {
        // Q8's step is 1/127 of a block's absmax: ~16x finer than NF4; the greedy text is the f32 model's.
        EXPECT_LT(qq.rms_err, 0.01 * qq.logit_std);
        EXPECT_GE(qq.top1_agree, 0.95);
      } else {
        // Q6's step is 1/31 of a block's absmax: ~4x coarser than Q8's, ~4x finer than NF4's.
        EXPECT_LT(qq.rms_err, 0.03 * qq.logit_std);
        EXPECT_GE(qq.top1_agree, 0.9);
      }
    }
  }
}

TEST(LmHeadDtype, ParseNamesTheFlagAndTheChoices) {
  EXPECT_EQ(model::parse_lm_head_dtype("f32"), model::LmHeadDtype::F32);
  EXPECT_EQ(model::parse_lm_head_dtype("nf4"), model::LmHeadDtype::NF4);
  EXPECT_EQ(model::parse_lm_head_dtype("q8"), model::LmHeadDtype::Q8);
  EXPECT_EQ(model::parse_lm_head_dtype("q6"), model::LmHeadDtype::Q6);
  for (auto d : {model::LmHeadDtype::F32, model::LmHeadDtype::NF4, model::LmHeadDtype::Q8, model::LmHeadDtype::Q6})
    EXPECT_EQ(model::parse_lm_head_dtype(model::lm_head_dtype_name(d)), d);
  try {
    model::parse_lm_head_dtype("q4", "--lm-head-dtype");
    FAIL() << "no throw";
  } catch (const Error& e) {
    const std::string w = e.what();
    EXPECT_NE(w.find("--lm-head-dtype"), std::string::npos) << w;
    EXPECT_NE(w.find("'q4'"), std::string::npos) << w;
    EXPECT_NE(w.find("f32, q8, q6, nf4"), std::string::npos) << w;
  }
}
