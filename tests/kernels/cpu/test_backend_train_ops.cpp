// The Backend's training-step ops (backend.hpp, "training step") on the CPU backend: contracts on
// small hand-checked cases, and the dropout generator pinned to splitmix64 so a device port can be
// checked against the same constants.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "graft/backend/dropout_hash.hpp"
#include "graft/cpu/cpu_backend.hpp"
#include "graft/error.hpp"
#include "test_util.hpp"

using namespace graft;
using graft::testing::poisoned;
using graft::testing::randn;

namespace {
Tensor from(const Dims& shape, std::vector<float> v) {
  Tensor t = Tensor::empty(shape, DType::F32);
  EXPECT_EQ(t.numel(), static_cast<int64_t>(v.size()));
  std::copy(v.begin(), v.end(), t.data<float>());
  return t;
}
std::vector<float> values(const Tensor& t) { return {t.data<float>(), t.data<float>() + t.numel()}; }
}  // namespace

TEST(BackendTrainOps, DropoutMaskIsSplitmix64CounterHash) {
  EXPECT_EQ(mix64(0), 0xE220A8397B1DCDAFull);  // splitmix64's first output for seed 0
  auto be = cpu::make_backend();
  const double p = 0.3;
  const int64_t n = 64, cols = 50;
  Tensor m = poisoned({n, cols});
  be->dropout_mask(0x1234, {}, p, m);
  int kept = 0;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < cols; ++c) {
      const float v = m.data<float>()[i * cols + c];
      const double u = static_cast<double>(mix64(0x1234 ^ (uint64_t(i) << 32 | uint64_t(c))) >> 11) * 0x1.0p-53;
      ASSERT_EQ(v, u >= p ? 1.0f / (1.0f - 0.3f) : 0.0f) << i << "," << c;
      kept += v != 0;
    }
  EXPECT_NEAR(kept / double(n * cols), 1 - p, 0.03);
  // rows pick the stream rows: row 1 of a {7, 2} mask is row 2 of the identity mask
  Tensor r = poisoned({2, cols});
  const std::vector<int32_t> rows = {7, 2};
  be->dropout_mask(0x1234, rows, p, r);
  for (int64_t c = 0; c < cols; ++c) {
    EXPECT_EQ(r.data<float>()[c], m.data<float>()[7 * cols + c]);
    EXPECT_EQ(r.data<float>()[cols + c], m.data<float>()[2 * cols + c]);
  }
  EXPECT_THROW(be->dropout_mask(1, {}, 1.0, m), Error);
}

TEST(BackendTrainOps, GatherScatterRowsDot) {
  auto be = cpu::make_backend();
  const Tensor x = from({3, 2}, {1, 2, 3, 4, 5, 6});
  const std::vector<int32_t> rows = {2, 0, 2};
  const Tensor s = from({3}, {2, -1, 0.5f});
  Tensor g = poisoned({3, 2});
  be->gather_rows(x, rows, s, g);
  EXPECT_EQ(values(g), (std::vector<float>{10, 12, -1, -2, 2.5f, 3}));
  be->gather_rows(x, rows, Tensor(), g);
  EXPECT_EQ(values(g), (std::vector<float>{5, 6, 1, 2, 5, 6}));
  Tensor out = from({3, 2}, {1, 1, 1, 1, 1, 1});
  be->scatter_add_rows(g, rows, s, out);  // row 2 gets 2·[5,6] + 0.5·[5,6]; row 0 gets −[1,2]
  EXPECT_EQ(values(out), (std::vector<float>{0, -1, 1, 1, 13.5f, 16}));
  Tensor d = poisoned({3});
  be->rows_dot(x, rows, g, d);  // <x[2], [5,6]>, <x[0], [1,2]>, <x[2], [5,6]>
  EXPECT_EQ(values(d), (std::vector<float>{61, 5, 61}));
  Tensor id = poisoned({3, 2});
  be->gather_rows(x, {}, Tensor(), id);  // empty rows = identity
  EXPECT_EQ(values(id), values(x));
  const std::vector<int32_t> bad = {3};
  Tensor one = poisoned({1, 2});
  EXPECT_THROW(be->gather_rows(x, bad, Tensor(), one), Error);
}

TEST(BackendTrainOps, CopyColsFillMulSigmoid) {
  auto be = cpu::make_backend();
  const Tensor src = from({2, 3}, {1, 2, 3, 4, 5, 6});
  Tensor dst = from({2, 4}, {0, 0, 0, 0, 0, 0, 0, 0});
  be->copy_cols(src, 1, 2, dst, 2);
  EXPECT_EQ(values(dst), (std::vector<float>{0, 0, 2, 3, 0, 0, 5, 6}));
  EXPECT_THROW(be->copy_cols(src, 2, 2, dst, 0), Error);
  be->fill(dst, 0.25f);
  EXPECT_EQ(values(dst), std::vector<float>(8, 0.25f));
  Tensor y = poisoned({2, 3});
  be->mul(src, src, y);
  EXPECT_EQ(values(y), (std::vector<float>{1, 4, 9, 16, 25, 36}));
  const Tensor z = randn({5, 7}, 3, 2.0f), dy = randn({5, 7}, 4);
  Tensor sg = poisoned({5, 7}), dz = poisoned({5, 7});
  be->sigmoid(z, sg);
  be->sigmoid_bwd(sg, dy, dz);
  for (int64_t i = 0; i < z.numel(); ++i) {
    const double zi = z.data<float>()[i], h = 1e-3;
    const double fd = (1 / (1 + std::exp(-(zi + h))) - 1 / (1 + std::exp(-(zi - h)))) / (2 * h);
    EXPECT_NEAR(sg.data<float>()[i], 1 / (1 + std::exp(-zi)), 1e-6);
    EXPECT_NEAR(dz.data<float>()[i], dy.data<float>()[i] * fd, 1e-4);
  }
}

TEST(BackendTrainOps, LoraAccMatchesLinearWithOneSlot) {
  auto be = cpu::make_backend();
  const int64_t T = 6, in = 8, out = 5, r = 3;
  LoraFactors f{randn({r, in}, 1), randn({out, r}, 2), 0.75f};
  LinearWeight w;
  w.out = out;
  w.in = in;
  w.dense = randn({out, in}, 3);
  const Tensor x = randn({T, in}, 4);
  const LoraFactors* slots[] = {&f};
  const std::vector<int32_t> row_slot(static_cast<size_t>(T), 0);
  Tensor want = poisoned({T, out}), got = poisoned({T, out});
  be->linear(x, w, LoraBatch{slots, row_slot}, want);
  be->linear(x, w, LoraBatch{}, got);
  be->lora_acc(x, f, got);
  EXPECT_EQ(values(got), values(want));
  LoraFactors wrong{randn({r, in + 1}, 5), randn({out, r}, 6), 1.0f};
  EXPECT_THROW(be->lora_acc(x, wrong, got), Error);
}

TEST(BackendTrainOps, MoePlanAndRouteBwdForward) {
  auto be = cpu::make_backend();
  Tensor ids = Tensor::empty({3, 2}, DType::I32);
  const int32_t v[] = {1, 0, 1, 2, 0, 1};
  std::copy(v, v + 6, ids.data<int32_t>());
  const ops::MoePermutation plan = be->moe_permute_plan(ids, 3);
  EXPECT_EQ(plan.counts, (std::vector<int32_t>{2, 3, 1}));
  EXPECT_EQ(plan.order, (std::vector<int32_t>{1, 4, 0, 2, 5, 3}));
  // softmax top-2 renormalised: Σ_j w_j = 1, so a uniform dw has zero gradient
  ops::RouterParams p;
  p.top_k = 2;
  const Tensor logits = randn({3, 3}, 7);
  Tensor dw = from({3, 2}, {1, 1, 1, 1, 1, 1}), dl = poisoned({3, 3});
  be->moe_route_bwd(logits, p, ids, dw, dl);
  for (float g : values(dl)) EXPECT_NEAR(g, 0.0f, 1e-6);
}
