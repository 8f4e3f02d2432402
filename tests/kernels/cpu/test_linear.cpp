#include <gtest/gtest.h>

#include <vector>

#include "graft/cpu/ops.hpp"
#include "test_util.hpp"

using namespace graft;
using graft::testing::poisoned;
using graft::testing::randn;
using graft::testing::rel_err;

static std::vector<double> naive_linear(const Tensor& x, const Tensor& w, const float* bias) {
  const int64_t T = x.size(0), K = x.size(1), N = w.size(0);
  std::vector<double> y(static_cast<size_t>(T * N));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t n = 0; n < N; ++n) {
      double s = bias ? bias[n] : 0.0;
      for (int64_t k = 0; k < K; ++k) s += double(x.data<float>()[t * K + k]) * w.data<float>()[n * K + k];
      y[static_cast<size_t>(t * N + n)] = s;
    }
  return y;
}

TEST(CpuLinear, MatchesNaiveAtOddShapes) {
  for (auto [T, K, N] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{{1, 1, 1}, {7, 33, 65}, {37, 129, 3}, {64, 64, 64}}) {
    Tensor x = randn({T, K}, 1), w = randn({N, K}, 2), b = randn({N}, 3);
    Tensor y = poisoned({T, N});
    cpu::linear(x, w, b, y);
    auto ref = naive_linear(x, w, b.data<float>());
    EXPECT_LT(rel_err(y.data<float>(), ref.data(), T * N), 1e-6) << T << "x" << K << "x" << N;
    cpu::linear(x, w, Tensor(), y);
    ref = naive_linear(x, w, nullptr);
    EXPECT_LT(rel_err(y.data<float>(), ref.data(), T * N), 1e-6);
  }
}

TEST(CpuLinear, EmptyAndMismatched) {
  Tensor x = randn({0, 8}, 1), w = randn({4, 8}, 2), y = Tensor::empty({0, 4}, DType::F32);
  EXPECT_NO_THROW(cpu::linear(x, w, Tensor(), y));
  Tensor x0 = randn({3, 0}, 1), w0 = Tensor::empty({4, 0}, DType::F32), y0 = poisoned({3, 4});
  cpu::linear(x0, w0, Tensor(), y0);
  for (int i = 0; i < 12; ++i) EXPECT_EQ(y0.data<float>()[i], 0.0f);
  Tensor bad = randn({4, 9}, 2), y2 = Tensor::empty({3, 4}, DType::F32);
  EXPECT_THROW(cpu::linear(randn({3, 8}, 1), bad, Tensor(), y2), Error);
  Tensor wrong_y = Tensor::empty({3, 5}, DType::F32);
  EXPECT_THROW(cpu::linear(randn({3, 8}, 1), w, Tensor(), wrong_y), Error);
}

TEST(CpuLinear, Nf4MatchesDequantizeThenMatmul) {
  const int64_t T = 5, K = 200, N = 131;  // N not a multiple of the 64-row panel
  Tensor x = randn({T, K}, 4), wf = randn({N, K}, 5, 0.05f);
  for (bool dq : {false, true}) {
    auto q = nf4::quantize(wf, dq);
    Tensor wd = nf4::dequantize(q);
    Tensor y = poisoned({T, N});
    cpu::linear_nf4(x, q, y);
    auto ref = naive_linear(x, wd, nullptr);
    EXPECT_LT(rel_err(y.data<float>(), ref.data(), T * N), 1e-6);
  }
}

TEST(CpuLinear, LoraAccumulates) {
  const int64_t T = 6, K = 40, N = 24, r = 3;
  Tensor x = randn({T, K}, 6), a = randn({r, K}, 7), b = randn({N, r}, 8), y = randn({T, N}, 9);
  std::vector<double> ref(static_cast<size_t>(T * N));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t n = 0; n < N; ++n) {
      double s = 0;
      for (int64_t j = 0; j < r; ++j) {
        double xa = 0;
        for (int64_t k = 0; k < K; ++k) xa += double(x.data<float>()[t * K + k]) * a.data<float>()[j * K + k];
        s += xa * b.data<float>()[n * r + j];
      }
      ref[static_cast<size_t>(t * N + n)] = y.data<float>()[t * N + n] + 0.5 * s;
    }
  cpu::lora_acc(x, a, b, 0.5f, y);
  EXPECT_LT(rel_err(y.data<float>(), ref.data(), T * N), 1e-6);
}
