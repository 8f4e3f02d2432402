// parallel_gemm(A, B, C, alpha, accumulate): C (=, or += when accumulate) alpha · A · B on graft's CPU thread pool.
// A [M, K], B [K, N], C [M, N]: Eigen expressions (maps, transposes, blocks). C's columns are cut in one block per
// thread (widths a multiple of 16), and each block is one Eigen GEMM on the thread that claims it (inside a pool loop
// Eigen runs on that thread), so a large product uses the same threads as every other CPU loop instead of starting an
// OpenMP team next to them (docs/architecture.md, "Threads"). Small products (graft::parallel_worth) run inline.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>

#include "graft/parallel.hpp"
#include "parallel_for.hpp"

namespace graft::cpu {

template <class MA, class MB, class MC>
void parallel_gemm(const MA& A, const MB& B, MC&& C, float alpha, bool accumulate) {
  const int64_t M = C.rows(), N = C.cols(), K = A.cols();
  if (M == 0 || N == 0) return;
  const int64_t threads = graft::parallel_worth(M * N * K) ? omp_get_max_threads() : 1;
  const int64_t width = std::max<int64_t>(16, ((N + threads - 1) / threads + 15) / 16 * 16);
  const int64_t blocks = (N + width - 1) / width;
  parallel_for(blocks, threads > 1, [&](int64_t b) {
    const int64_t c0 = b * width, w = std::min(width, N - c0);
    if (accumulate)
      C.middleCols(c0, w).noalias() += alpha * (A * B.middleCols(c0, w));
    else
      C.middleCols(c0, w).noalias() = alpha * (A * B.middleCols(c0, w));
  });
}

}  // namespace graft::cpu
