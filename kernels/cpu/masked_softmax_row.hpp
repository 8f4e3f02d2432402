// One row of masked softmax for the CPU attention forward and backward (attention.cpp, attention_bwd.cpp), so both
// form the same probabilities: exp with Eigen's vectorized exp (the scalar std::exp loop was 16% of a stories260K
// prefill, 2026-12-06, perf), masked entries exactly 0.
#pragma once

#include <Eigen/Core>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>
#include <limits>
#include <span>
#include <vector>

namespace graft::cpu {

struct SoftmaxRowStats {
  float max;  // largest visible logit; -inf when nothing is visible
  float sum;  // Σ exp(logit - max) over the visible entries; 0 when nothing is visible
};

// p[S] (=) exp(p - max) at visible entries (vis[j]), 0 elsewhere (unnormalized: the caller divides by .sum). Only
// the span from the first to the last visible entry is exponentiated (a causal row: its prefix, half the exps of a
// prefill); inside it the mask is applied as a bit select (masked logits become -inf before the max, masked results
// +0 after the exp), so every loop vectorizes; `vis[j] ? p[j] : -inf` did not (GCC 12 kept it scalar: a quarter of a
// stories260K prefill).
// [lo, hi): the span from the first to the last visible entry of a mask row vis[S] (lo == hi: none visible).
struct VisibleSpan {
  int64_t lo, hi;
};
inline VisibleSpan visible_span(const bool* vis, int64_t S) {
  const auto* v = reinterpret_cast<const unsigned char*>(vis);  // 0 or 1
  int64_t lo = 0, hi = S;
  while (lo < hi && !v[lo]) ++lo;
  for (; hi - lo >= 8; hi -= 8) {  // hidden tails (a causal row's future) skipped 8 entries at a time
    uint64_t word;
    std::memcpy(&word, v + hi - 8, sizeof(word));
    if (word != 0) break;
  }
  while (hi > lo && !v[hi - 1]) --hi;
  return {lo, hi};
}

inline SoftmaxRowStats masked_exp_row(float* p, int64_t S, const bool* vis) {
  const auto* v = reinterpret_cast<const unsigned char*>(vis);  // 0 or 1
  const auto [lo, hi] = visible_span(vis, S);
  std::fill(p, p + lo, 0.0f);
  std::fill(p + hi, p + S, 0.0f);
  if (lo == hi) return {-std::numeric_limits<float>::infinity(), 0.0f};
  float* q = p + lo;
  const unsigned char* m = v + lo;
  const int64_t n = hi - lo;
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const uint32_t masked = uint32_t{m[j]} - 1u;  // all ones where hidden
    q[j] = std::bit_cast<float>((std::bit_cast<uint32_t>(q[j]) & ~masked) | (0xFF800000u & masked));  // -inf
  }
  Eigen::Map<Eigen::ArrayXf> a(q, n);
  const float mx = a.maxCoeff();  // finite: q[0] is visible (a visible -inf logit is not produced by q · k)
  if (mx == -std::numeric_limits<float>::infinity()) {
    a.setZero();
    return {mx, 0.0f};
  }
  a = (a - mx).exp();
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const uint32_t masked = uint32_t{m[j]} - 1u;
    q[j] = std::bit_cast<float>(std::bit_cast<uint32_t>(q[j]) & ~masked);  // +0 where hidden
  }
  return {mx, a.sum()};
}

// vis[T, S] (row-major): whether query t may attend to key j under `mask` (causal, sliding window, chunked, packed
// segments), written branch-free per row so the compiler vectorizes it (it was the hottest loop of a stories260K
// prefill once the exp was vectorized).
template <class Mask>
inline void visibility(std::span<const int32_t> q_pos, std::span<const int32_t> k_pos, const Mask& mask, bool* vis) {
  const int64_t T = static_cast<int64_t>(q_pos.size()), S = static_cast<int64_t>(k_pos.size());
  const bool seg = !mask.q_segments.empty();
  const bool causal = mask.causal;
  const int64_t window = mask.sliding_window, chunk = mask.chunk_size;
  std::vector<int32_t> kchunk(chunk > 0 ? static_cast<size_t>(S) : 0);
  for (int64_t j = 0; j < static_cast<int64_t>(kchunk.size()); ++j)
    kchunk[static_cast<size_t>(j)] = static_cast<int32_t>(k_pos[static_cast<size_t>(j)] / chunk);
  const int32_t* kp = k_pos.data();
  const int32_t* kc = kchunk.data();
  const int32_t* ks = seg ? mask.k_segments.data() : nullptr;
  for (int64_t t = 0; t < T; ++t) {
    const int32_t qp = q_pos[static_cast<size_t>(t)];
    const int32_t qc = chunk > 0 ? static_cast<int32_t>(qp / chunk) : 0;
    const int32_t qs = seg ? mask.q_segments[static_cast<size_t>(t)] : 0;
    bool* row = vis + t * S;
#pragma omp simd
    for (int64_t j = 0; j < S; ++j) row[j] = !causal || kp[j] <= qp;
    if (window > 0) {
#pragma omp simd
      for (int64_t j = 0; j < S; ++j) row[j] = row[j] && int64_t(qp) - kp[j] < window;
    }
    if (chunk > 0) {
#pragma omp simd
      for (int64_t j = 0; j < S; ++j) row[j] = row[j] && kc[j] == qc;
    }
    if (seg) {
#pragma omp simd
      for (int64_t j = 0; j < S; ++j) row[j] = row[j] && ks[j] == qs;
    }
  }
}

}  // namespace graft::cpu
