// Shared helpers of the double-precision finite-difference tests (tests/train, tests/kernels/cpu_bwd,
// tests/kernels/cpu_moe): seeded normal vectors, a dot product, the relative error of an analytic
// gradient against central differences, and the router test case of the RouterKind sweeps.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <vector>

#include "graft/backend/ops_desc.hpp"

namespace graft::fdtest {

using Vec = std::vector<double>;

// n draws of N(0, sd²) from mt19937(seed).
inline Vec rnd(size_t n, uint32_t seed, double sd = 1.0) {
  std::mt19937 r(seed);
  std::normal_distribution<double> g(0, sd);
  Vec v(n);
  for (auto& x : v) x = g(r);
  return v;
}
inline double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}
// Relative error between the analytic gradient `g` of L(x) and central differences of `loss`.
inline double fd_check(Vec& x, const Vec& g, const std::function<double()>& loss) {
  double num = 0, den = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double h = 1e-6 * std::max(1.0, std::fabs(x[i])), old = x[i];
    x[i] = old + h;
    const double lp = loss();
    x[i] = old - h;
    const double lm = loss();
    x[i] = old;
    const double fd = (lp - lm) / (2 * h);
    num += (fd - g[i]) * (fd - g[i]);
    den += fd * fd;
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

// One router configuration of a RouterKind sweep (TEST_P parameter).
struct RouterCase {
  ops::RouterKind kind;
  bool renorm;
  int k, n_group, topk_group;
  float rsf;
  bool bias;

  // The router parameters of this case; `correction_bias` ([E]) is used only when `bias` is set.
  ops::RouterParams params(const float* correction_bias) const {
    ops::RouterParams p;
    p.kind = kind;
    p.top_k = k;
    p.renormalize = renorm;
    p.n_group = n_group;
    p.topk_group = topk_group;
    p.routed_scaling_factor = rsf;
    p.correction_bias = bias ? correction_bias : nullptr;
    return p;
  }
};

}  // namespace graft::fdtest
