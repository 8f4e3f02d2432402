// Y = X · Wᵀ reading the weight rows in place, for T >= 9 rows of X (the MoE experts of a prefill have ~32 rows each
// at T = 128, top-2 of 8). A GEMM library packs W into its own layout on every call, which at T ≈ 32 costs
// about half as much as the multiply itself (perf, Qwen3-MoE small prefill: Eigen's gemm_pack_lhs 19% of the
// samples); here X is transposed once per call instead (T·K values) and W is streamed once.
#pragma once

#include <cstdint>

namespace graft::cpu {

constexpr int64_t kSmallGemmMinT = 9;  // below, a GEMV-shaped product (Eigen's) is as fast

// Whether small_gemm runs for T rows here (an AVX-512 CPU and T >= kSmallGemmMinT).
bool small_gemm_runs(int64_t T);
// y[t * ldy + n] = Σ_k x[t * K + k] · w[n * K + k] for t < T, n < N (x: [T, K], w: [N, K], both row-major f32).
// Returns true when it ran (small_gemm_runs(T)); otherwise writes nothing and returns false (the caller uses its
// GEMM). Single-threaded: callers split N.
bool small_gemm(const float* x, int64_t T, int64_t K, const float* w, int64_t N, float* y, int64_t ldy);

}  // namespace graft::cpu
