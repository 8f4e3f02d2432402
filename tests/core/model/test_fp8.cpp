// DeepSeek-V3-style FP8 checkpoints: e4m3 weights with a weight_scale_inv per block are dequantized
// on load to exactly the f32 model built from the dequantized values.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "graft/config/model_config.hpp"
#include "graft/cpu/cpu_backend.hpp"
#include "graft/model/model.hpp"
#include "graft/model/presets.hpp"

using namespace graft;

TEST(Fp8, BlockScaledWeightsDequantizeOnLoad) {
  auto j = model::preset_config("deepseek_v3", "tiny", 300, 1, 2);
  j["quantization_config"] = {{"quant_method", "fp8"}, {"fmt", "e4m3"}, {"activation_scheme", "dynamic"},
                              {"weight_block_size", {16, 16}}};
  auto cfg = config::parse_model_config_text(j.dump());
  auto ckpt = model::random_checkpoint(cfg, 21);
  std::vector<std::pair<std::string, Tensor>> fp8, ref;
  int converted = 0;
  for (auto& [n, t] : ckpt) {
    const bool proj = t.ndim() == 2 && n.size() > 12 && n.compare(n.size() - 12, 12, "_proj.weight") == 0;
    if (!proj) {
      fp8.emplace_back(n, t);
      ref.emplace_back(n, t);
      continue;
    }
    const int64_t R = t.size(0), C = t.size(1), br = (R + 15) / 16, bc = (C + 15) / 16;
    Tensor scale = Tensor::empty({br, bc}, DType::F32), q = Tensor::empty({R, C}, DType::F8E4M3),
           deq = Tensor::empty({R, C}, DType::F32);
    for (int64_t a = 0; a < br; ++a)
      for (int64_t b = 0; b < bc; ++b) {
        float mx = 0;
        for (int64_t r = a * 16; r < std::min(R, a * 16 + 16); ++r)
          for (int64_t c = b * 16; c < std::min(C, b * 16 + 16); ++c) mx = std::max(mx, std::fabs(t.data<float>()[r * C + c]));
        scale.data<float>()[a * bc + b] = mx / 448.0f;
      }
    auto* qp = static_cast<uint8_t*>(q.raw());
    for (int64_t r = 0; r < R; ++r)
      for (int64_t c = 0; c < C; ++c) {
        const float s = scale.data<float>()[(r / 16) * bc + c / 16];
        qp[r * C + c] = f32_to_fp8e4m3(t.data<float>()[r * C + c] / s);
        deq.data<float>()[r * C + c] = fp8e4m3_to_f32(qp[r * C + c]) * s;
      }
    fp8.emplace_back(n, q);
    fp8.emplace_back(n.substr(0, n.size() - 6) + "weight_scale_inv", scale);
    ref.emplace_back(n, deq);
    ++converted;
  }
  ASSERT_GT(converted, 20);
  auto a = model::Model::from_tensors(cfg, fp8), b = model::Model::from_tensors(cfg, ref);
  auto be = cpu::make_backend();
  std::vector<int32_t> ids = {4, 8, 15, 16, 23, 42};
  model::Batch bt;
  bt.ids = ids;
  Tensor la = a.forward(*be, bt), lb = b.forward(*be, bt);
  for (int64_t i = 0; i < la.numel(); ++i) ASSERT_EQ(la.data<float>()[i], lb.data<float>()[i]);
  // A scale of the wrong block grid is an error naming the tensor.
  for (auto& [n, t] : fp8)
    if (n == "model.layers.0.self_attn.o_proj.weight_scale_inv") t = Tensor::zeros({1, 1}, DType::F32);
  try {
    model::Model::from_tensors(cfg, fp8);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.layers.0.self_attn.o_proj.weight"), std::string::npos) << e.what();
  }
}
