#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "graft/cpu/ops.hpp"
#include "test_util.hpp"

using namespace graft;

namespace {
struct Routed {
  std::vector<int32_t> ids;
  std::vector<float> w;
};
Routed route(const std::vector<float>& logits, int E, const cpu::RouterParams& p) {
  const int64_t T = static_cast<int64_t>(logits.size()) / E;
  Tensor l = Tensor::from_f32({T, E}, logits);
  Tensor ids = Tensor::empty({T, p.top_k}, DType::I32), w = Tensor::empty({T, p.top_k}, DType::F32);
  cpu::moe_route(l, p, ids, w);
  return {std::vector<int32_t>(ids.data<int32_t>(), ids.data<int32_t>() + ids.numel()),
          std::vector<float>(w.data<float>(), w.data<float>() + w.numel())};
}
}  // namespace

TEST(CpuMoeRoute, SoftmaxTopKWithAndWithoutRenorm) {
  std::vector<float> l = {1.0f, 3.0f, 2.0f, 0.0f};
  double z = std::exp(1.0) + std::exp(3.0) + std::exp(2.0) + 1.0;
  cpu::RouterParams p;
  p.top_k = 2;
  p.renormalize = false;
  auto r = route(l, 4, p);
  EXPECT_EQ(r.ids, (std::vector<int32_t>{1, 2}));
  EXPECT_NEAR(r.w[0], std::exp(3.0) / z, 1e-6);
  EXPECT_NEAR(r.w[1], std::exp(2.0) / z, 1e-6);
  p.renormalize = true;
  r = route(l, 4, p);
  EXPECT_NEAR(r.w[0], std::exp(3.0) / (std::exp(3.0) + std::exp(2.0)), 1e-6);
  EXPECT_NEAR(r.w[0] + r.w[1], 1.0, 1e-6);
  // Ties resolve to the lower expert index (zero router: split models route to all experts in order).
  p.top_k = 4;
  r = route({0, 0, 0, 0}, 4, p);
  EXPECT_EQ(r.ids, (std::vector<int32_t>{0, 1, 2, 3}));
  for (float w : r.w) EXPECT_FLOAT_EQ(w, 0.25f);
}

TEST(CpuMoeRoute, DeepSeekV3SigmoidGroupLimited) {
  // 8 experts, 4 groups of 2, keep 2 groups, top-2, bias steers selection but not weights.
  std::vector<float> l = {0.5f, 0.1f, 2.0f, -1.0f, 0.3f, 0.2f, 1.0f, 1.5f};
  std::vector<float> bias = {0, 0, 0, 0, 0, 0, 0, 0};
  bias[4] = 3.0f;  // group 2 gets boosted for selection
  cpu::RouterParams p;
  p.kind = cpu::RouterKind::SigmoidGroupTopK;
  p.top_k = 2;
  p.n_group = 4;
  p.topk_group = 2;
  p.renormalize = true;
  p.routed_scaling_factor = 2.5f;
  p.correction_bias = bias.data();
  auto r = route(l, 8, p);
  auto sig = [](double x) { return 1 / (1 + std::exp(-x)); };
  // choice scores: e4 = sig(.3)+3 (best), e2 = sig(2.0); groups: g2 (e4,e5) and g1 (e2,e3) win vs g3 (e6,e7)
  // g1 sum = sig(2)+sig(-1) = 1.150; g3 = sig(1)+sig(1.5) = 1.549 -> g3 beats g1! so groups {g2, g3}.
  EXPECT_EQ(r.ids[0], 4);
  EXPECT_EQ(r.ids[1], 7);
  double s4 = sig(0.3), s7 = sig(1.5);
  EXPECT_NEAR(r.w[0], s4 / (s4 + s7) * 2.5, 1e-5);
  EXPECT_NEAR(r.w[1], s7 / (s4 + s7) * 2.5, 1e-5);
}

TEST(CpuMoeRoute, Llama4TopKSigmoidAndV2GroupGreedy) {
  cpu::RouterParams p;
  p.kind = cpu::RouterKind::TopKSigmoid;
  p.top_k = 1;
  auto r = route({0.2f, -1.0f, 0.7f}, 3, p);
  EXPECT_EQ(r.ids[0], 2);
  EXPECT_NEAR(r.w[0], 1 / (1 + std::exp(-0.7)), 1e-6);

  p = {};
  p.kind = cpu::RouterKind::SoftmaxGroupTopK;
  p.top_k = 2;
  p.n_group = 2;
  p.topk_group = 1;
  p.renormalize = false;
  p.routed_scaling_factor = 16.0f;
  std::vector<float> l = {3.0f, 0.0f, 2.9f, 2.8f};  // group0 max 3.0 wins: experts {0,1}
  r = route(l, 4, p);
  EXPECT_EQ(r.ids, (std::vector<int32_t>{0, 1}));
  double z = std::exp(3.0) + 1 + std::exp(2.9) + std::exp(2.8);
  EXPECT_NEAR(r.w[0], std::exp(3.0) / z * 16, 1e-4);
}

TEST(CpuMoeRoute, PermutePlanSkewedAndEmptyExperts) {
  std::vector<float> dummy;
  Tensor ids = Tensor::empty({4, 2}, DType::I32);
  int32_t v[] = {3, 0, 3, 1, 3, 0, 3, 1};
  std::copy(v, v + 8, ids.data<int32_t>());
  auto plan = cpu::moe_permute_plan(ids, 5);
  EXPECT_EQ(plan.counts, (std::vector<int32_t>{2, 2, 0, 4, 0}));
  EXPECT_EQ(plan.offsets, (std::vector<int32_t>{0, 2, 4, 4, 8, 8}));
  EXPECT_EQ(plan.order, (std::vector<int32_t>{1, 5, 3, 7, 0, 2, 4, 6}));
  v[0] = 5;
  std::copy(v, v + 8, ids.data<int32_t>());
  EXPECT_THROW(cpu::moe_permute_plan(ids, 5), Error);
  cpu::RouterParams p;
  p.top_k = 5;
  Tensor l = Tensor::zeros({1, 4}, DType::F32), i2 = Tensor::empty({1, 5}, DType::I32), w2 = Tensor::empty({1, 5}, DType::F32);
  EXPECT_THROW(cpu::moe_route(l, p, i2, w2), Error);
}
