// CPU reference of the NF4 + LoRA linear layer backward: gradients against central finite
// differences in double precision, and the closed forms against naive loops.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "graft/cpu/nf4_matmul_ref.hpp"
#include "graft/error.hpp"
#include "graft/quant/nf4.hpp"

namespace {
using graft::DType;
using graft::Tensor;

Tensor randn(const graft::Dims& shape, uint32_t seed, float sd = 1.0f) {
  Tensor t = Tensor::empty(shape, DType::F32);
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.f, sd);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = g(rng);
  return t;
}
Tensor nan_tensor(const graft::Dims& shape) {
  Tensor t = Tensor::empty(shape, DType::F32);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = std::nanf("");
  return t;
}
double rel_err(const Tensor& a, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double d = a.data<float>()[i] - ref[i];
    num += d * d;
    den += ref[i] * ref[i];
  }
  return std::sqrt(num / den);
}

struct Problem {
  int64_t T, N, K, r;
  float s;
  bool dq;
  Tensor x, a, b, g;  // g = upstream gradient dL/dY
  graft::nf4::QuantizedWeight w;
  std::vector<double> W;  // dequantized [N, K]
};

Problem make(int64_t T, int64_t N, int64_t K, int64_t r, bool dq, uint32_t seed) {
  Problem p{T, N, K, r, 0.75f, dq, {}, {}, {}, {}, {}, {}};
  p.x = randn({T, K}, seed);
  p.a = randn({r, K}, seed + 1, 0.3f);
  p.b = randn({N, r}, seed + 2, 0.3f);
  p.g = randn({T, N}, seed + 3);
  Tensor wf = randn({N, K}, seed + 4, 0.05f);
  p.w = graft::nf4::quantize(std::span<const float>(wf.data<float>(), static_cast<size_t>(N * K)), {N, K}, dq);
  Tensor wd = graft::nf4::dequantize(p.w);
  p.W.assign(wd.data<float>(), wd.data<float>() + N * K);
  return p;
}

// L = Σ G ⊙ (X·Wᵀ + s·(X·Aᵀ)·Bᵀ), all in double.
double loss(const Problem& p, const std::vector<double>& X, const std::vector<double>& A, const std::vector<double>& B) {
  double L = 0;
  for (int64_t t = 0; t < p.T; ++t) {
    std::vector<double> xa(static_cast<size_t>(p.r), 0.0);
    for (int64_t j = 0; j < p.r; ++j)
      for (int64_t k = 0; k < p.K; ++k) xa[j] += X[t * p.K + k] * A[j * p.K + k];
    for (int64_t n = 0; n < p.N; ++n) {
      double y = 0;
      for (int64_t k = 0; k < p.K; ++k) y += X[t * p.K + k] * p.W[n * p.K + k];
      double l = 0;
      for (int64_t j = 0; j < p.r; ++j) l += xa[j] * B[n * p.r + j];
      y += p.s * l;
      L += p.g.data<float>()[t * p.N + n] * y;
    }
  }
  return L;
}

std::vector<double> to_d(const Tensor& t) { return {t.data<float>(), t.data<float>() + t.numel()}; }

// Central differences of the loss w.r.t. every element of `which` (0: X, 1: A, 2: B).
std::vector<double> finite_diff(const Problem& p, int which) {
  std::vector<double> X = to_d(p.x), A = to_d(p.a), B = to_d(p.b);
  std::vector<double>& v = which == 0 ? X : which == 1 ? A : B;
  std::vector<double> grad(v.size());
  const double eps = 1e-3;  // L is linear in each of X, A, B: central differences are exact up to rounding
  for (size_t i = 0; i < v.size(); ++i) {
    const double keep = v[i];
    v[i] = keep + eps;
    const double lp = loss(p, X, A, B);
    v[i] = keep - eps;
    const double lm = loss(p, X, A, B);
    v[i] = keep;
    grad[i] = (lp - lm) / (2 * eps);
  }
  return grad;
}

class Nf4BwdFd : public ::testing::TestWithParam<bool> {};

TEST_P(Nf4BwdFd, GradientsMatchFiniteDifferences) {
  Problem p = make(/*T=*/3, /*N=*/6, /*K=*/128, /*r=*/2, GetParam(), 11);
  Tensor dx = nan_tensor({p.T, p.K}), da = nan_tensor({p.r, p.K}), db = nan_tensor({p.N, p.r});
  graft::cpu::nf4_matmul_bwd(p.g, p.x, p.w, p.a, p.b, p.s, dx, &da, &db);
  // fp32 results of O(K)-long sums against double differences: 1e-5 is ~100 ulp of headroom.
  EXPECT_LT(rel_err(dx, finite_diff(p, 0)), 1e-5);
  EXPECT_LT(rel_err(da, finite_diff(p, 1)), 1e-5);
  EXPECT_LT(rel_err(db, finite_diff(p, 2)), 1e-5);
}
INSTANTIATE_TEST_SUITE_P(DoubleQuant, Nf4BwdFd, ::testing::Values(false, true));

// Closed forms against naive double loops on shapes that are not multiples of the 64-row panel.
TEST(Nf4Bwd, FormulasMatchNaiveLoops) {
  for (auto [T, N, K, r] : {std::array<int64_t, 4>{5, 130, 192, 3}, {17, 70, 64, 8}, {1, 2, 320, 1}}) {
    Problem p = make(T, N, K, r, true, static_cast<uint32_t>(T * 1000 + N));
    Tensor dx = nan_tensor({T, K}), da = nan_tensor({r, K}), db = nan_tensor({N, r});
    graft::cpu::nf4_matmul_bwd(p.g, p.x, p.w, p.a, p.b, p.s, dx, &da, &db);
    const float* G = p.g.data<float>();
    const float* X = p.x.data<float>();
    const float* A = p.a.data<float>();
    const float* B = p.b.data<float>();
    std::vector<double> gb(static_cast<size_t>(T * r), 0.0), xa(static_cast<size_t>(T * r), 0.0);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t j = 0; j < r; ++j) {
        for (int64_t n = 0; n < N; ++n) gb[t * r + j] += double(G[t * N + n]) * B[n * r + j];
        for (int64_t k = 0; k < K; ++k) xa[t * r + j] += double(X[t * K + k]) * A[j * K + k];
      }
    std::vector<double> rdx(static_cast<size_t>(T * K), 0.0), rda(static_cast<size_t>(r * K), 0.0),
        rdb(static_cast<size_t>(N * r), 0.0);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t k = 0; k < K; ++k) {
        double v = 0;
        for (int64_t n = 0; n < N; ++n) v += double(G[t * N + n]) * p.W[n * K + k];
        for (int64_t j = 0; j < r; ++j) v += double(p.s) * gb[t * r + j] * A[j * K + k];
        rdx[t * K + k] = v;
      }
    for (int64_t j = 0; j < r; ++j)
      for (int64_t k = 0; k < K; ++k)
        for (int64_t t = 0; t < T; ++t) rda[j * K + k] += double(p.s) * gb[t * r + j] * X[t * K + k];
    for (int64_t n = 0; n < N; ++n)
      for (int64_t j = 0; j < r; ++j)
        for (int64_t t = 0; t < T; ++t) rdb[n * r + j] += double(p.s) * G[t * N + n] * xa[t * r + j];
    EXPECT_LT(rel_err(dx, rdx), 1e-5) << T << "x" << N << "x" << K;
    EXPECT_LT(rel_err(da, rda), 1e-5) << T << "x" << N << "x" << K;
    EXPECT_LT(rel_err(db, rdb), 1e-5) << T << "x" << N << "x" << K;
  }
}

TEST(Nf4Bwd, WithoutLoraOnlyDx) {
  Problem p = make(4, 66, 128, 2, false, 5);
  Tensor dx = nan_tensor({p.T, p.K});
  graft::cpu::nf4_matmul_bwd(p.g, p.x, p.w, Tensor(), Tensor(), 1.0f, dx, nullptr, nullptr);
  std::vector<double> ref(static_cast<size_t>(p.T * p.K), 0.0);
  for (int64_t t = 0; t < p.T; ++t)
    for (int64_t k = 0; k < p.K; ++k)
      for (int64_t n = 0; n < p.N; ++n) ref[t * p.K + k] += double(p.g.data<float>()[t * p.N + n]) * p.W[n * p.K + k];
  EXPECT_LT(rel_err(dx, ref), 1e-5);
  Tensor da = nan_tensor({p.r, p.K});
  EXPECT_THROW(graft::cpu::nf4_matmul_bwd(p.g, p.x, p.w, Tensor(), Tensor(), 1.0f, dx, &da, nullptr), graft::Error);
}

TEST(Nf4Fwd, ReferenceMatchesNaiveLoops) {
  Problem p = make(7, 70, 192, 4, true, 21);
  Tensor bias = randn({p.N}, 99);
  Tensor y = nan_tensor({p.T, p.N});
  graft::cpu::nf4_matmul_fwd(p.x, p.w, bias, p.a, p.b, p.s, y);
  std::vector<double> ref(static_cast<size_t>(p.T * p.N));
  const float* X = p.x.data<float>();
  for (int64_t t = 0; t < p.T; ++t)
    for (int64_t n = 0; n < p.N; ++n) {
      double v = bias.data<float>()[n];
      for (int64_t k = 0; k < p.K; ++k) v += double(X[t * p.K + k]) * p.W[n * p.K + k];
      for (int64_t j = 0; j < p.r; ++j) {
        double xa = 0;
        for (int64_t k = 0; k < p.K; ++k) xa += double(X[t * p.K + k]) * p.a.data<float>()[j * p.K + k];
        v += double(p.s) * xa * p.b.data<float>()[n * p.r + j];
      }
      ref[t * p.N + n] = v;
    }
  EXPECT_LT(rel_err(y, ref), 1e-5);
}

}  // namespace
