#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "graft/cpu/ops.hpp"
#include "test_util.hpp"

using namespace graft;
using graft::testing::poisoned;
using graft::testing::randn;
using graft::testing::rel_err;

TEST(CpuRmsNorm, MatchesNaiveAndAliases) {
  const int64_t T = 9, H = 77;
  Tensor x = randn({T, H}, 1, 3.0f), w = randn({H}, 2);
  std::vector<double> ref(static_cast<size_t>(T * H));
  for (int64_t t = 0; t < T; ++t) {
    double ss = 0;
    for (int64_t i = 0; i < H; ++i) ss += double(x.data<float>()[t * H + i]) * x.data<float>()[t * H + i];
    double inv = 1.0 / std::sqrt(ss / H + 1e-6);
    for (int64_t i = 0; i < H; ++i) ref[static_cast<size_t>(t * H + i)] = x.data<float>()[t * H + i] * inv * w.data<float>()[i];
  }
  Tensor y = poisoned({T, H});
  cpu::rmsnorm(x, w, 1e-6f, y);
  EXPECT_LT(rel_err(y.data<float>(), ref.data(), T * H), 1e-6);
  cpu::rmsnorm(x, w, 1e-6f, x);  // in place
  EXPECT_LT(rel_err(x.data<float>(), ref.data(), T * H), 1e-6);
  Tensor wbad = randn({H + 1}, 3);
  EXPECT_THROW(cpu::rmsnorm(x, wbad, 1e-6f, y), Error);
}

TEST(CpuSwiGlu, MatchesFormula) {
  Tensor g = randn({4, 10}, 1, 4.0f), u = randn({4, 10}, 2), o = poisoned({4, 10});
  cpu::swiglu(g, u, o);
  for (int i = 0; i < 40; ++i) {
    double gv = g.data<float>()[i];
    EXPECT_NEAR(o.data<float>()[i], gv / (1 + std::exp(-gv)) * u.data<float>()[i], 1e-5);
  }
  Tensor bad = Tensor::empty({4, 11}, DType::F32);
  EXPECT_THROW(cpu::swiglu(g, u, bad), Error);
}

TEST(CpuEmbedding, GathersAndRejectsOutOfRange) {
  Tensor table = randn({10, 3}, 1), out = poisoned({3, 3});
  std::vector<int32_t> ids = {9, 0, 4};
  cpu::embedding(ids, table, out);
  for (int t = 0; t < 3; ++t)
    for (int h = 0; h < 3; ++h) EXPECT_EQ(out.data<float>()[t * 3 + h], table.data<float>()[ids[static_cast<size_t>(t)] * 3 + h]);
  std::vector<int32_t> bad = {10};
  Tensor o1 = Tensor::empty({1, 3}, DType::F32);
  EXPECT_THROW(cpu::embedding(bad, table, o1), Error);
  std::vector<int32_t> neg = {-1};
  EXPECT_THROW(cpu::embedding(neg, table, o1), Error);
  Tensor o0 = Tensor::empty({0, 3}, DType::F32);
  EXPECT_NO_THROW(cpu::embedding({}, table, o0));
}
