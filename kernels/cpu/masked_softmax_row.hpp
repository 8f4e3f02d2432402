// One row of masked softmax for the CPU attention forward and backward (attention.cpp, attention_bwd.cpp), so both
// form the same probabilities: exp with Eigen's vectorized exp (the scalar std::exp loop was 16% of a stories260K
// prefill, 2026-12-06, perf), masked entries exactly 0.
#pragma once

#include <Eigen/Core>

#include <algorithm>
#include <cstdint>
#include <limits>

namespace graft::cpu {

struct SoftmaxRowStats {
  float max;  // largest visible logit; -inf when nothing is visible
  float sum;  // Σ exp(logit - max) over the visible entries; 0 when nothing is visible
};

// p[S] (=) exp(p - max) at visible entries (vis[j]), 0 elsewhere (unnormalized: the caller divides by .sum).
template <class Visible>
inline SoftmaxRowStats masked_exp_row(float* p, int64_t S, const Visible& vis) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  float mx = kNegInf;
  for (int64_t j = 0; j < S; ++j)
    if (vis(j)) mx = std::max(mx, p[j]);
  Eigen::Map<Eigen::ArrayXf> a(p, S);
  if (mx == kNegInf) {
    a.setZero();
    return {mx, 0.0f};
  }
  a = (a - mx).exp();
  for (int64_t j = 0; j < S; ++j)
    if (!vis(j)) p[j] = 0.0f;
  return {mx, a.sum()};
}

}  // namespace graft::cpu
