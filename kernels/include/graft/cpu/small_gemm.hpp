// Y = X · Wᵀ reading the weight rows in place, for T >= 2 rows of X (the MoE experts of a prefill have ~32 rows each
// at T = 128, top-2 of 8). A GEMM library packs W into its own layout on every call, which at T ≈ 32 costs
// about half as much as the multiply itself (perf, Qwen3-MoE small prefill: Eigen's gemm_pack_lhs 19% of the
// samples); here X is transposed once per call instead (T·K values) and W is streamed once.
#pragma once

#include <cstdint>
#include <vector>

#include "graft/cpu/nf4_gemv.hpp"  // Nf4Isa: the SIMD level

namespace graft::cpu {

// Each call takes the SIMD level to run at: Nf4Isa::Auto (nf4_isa_detect(): the best this CPU has, capped by
// GRAFT_NF4_ISA), or Avx2 / Avx512 (tests). On a CPU without AVX2 + FMA, or for a level it lacks, nothing runs: the
// calls return false and callers use Eigen.
//
// T = 1 is a GEMV: small_gemv below. N = K = 512, 1 thread, 2026-12-06: small_gemm vs Eigen 68 vs 76 us at T = 2,
// 69 vs 88 at T = 8, 71 vs 108 at T = 12.
constexpr int64_t kSmallGemmMinT = 2;

// Rows of x the streaming GEMV takes (small_gemv); more rows go to small_gemm.
constexpr int64_t kSmallGemvMaxT = 16;

// y[t * ldy + n] = Σ_k x[t * K + k] · w[n * K + k] for t < T <= kSmallGemvMaxT, n < N (x: [T, K], w: [N, K], both
// row-major f32): decode-shaped products, one weight row at a time (a single sequential stream of W, each weight
// vector loaded once for all T rows), any K (masked or scalar tail). Returns false (nothing written) where it does not
// run (small_gemv_runs(isa)) or for T outside [1, kSmallGemvMaxT]. Single-threaded: callers split N. (1 thread, the
// 151,669 × 512 lm_head, 2026-12-06: T = 1 at 16-18 GB/s vs Eigen's GEMV 14.7 GB/s, of a 21-22 GB/s read; reading
// several weight rows at once, as small_gemm does, halves it: the interleaved streams defeat the prefetcher.)
bool small_gemv(const float* x, int64_t T, int64_t K, const float* w, int64_t N, float* y, int64_t ldy,
                Nf4Isa isa = Nf4Isa::Auto);
bool small_gemv_runs(Nf4Isa isa = Nf4Isa::Auto);

// Whether small_gemm runs for T rows here: the level runs on this CPU and T >= kSmallGemmMinT (AVX2: and T <= 64;
// beyond, Eigen's packed GEMM is as fast).
bool small_gemm_runs(int64_t T, Nf4Isa isa = Nf4Isa::Auto);
// y[t * ldy + n] = Σ_k x[t * K + k] · w[n * K + k] for t < T, n < N (x: [T, K], w: [N, K], both row-major f32).
// Returns true when it ran (small_gemm_runs(T)); otherwise writes nothing and returns false (the caller uses its
// GEMM). Single-threaded: callers split N.
bool small_gemm(const float* x, int64_t T, int64_t K, const float* w, int64_t N, float* y, int64_t ldy,
                Nf4Isa isa = Nf4Isa::Auto);

// x [T, K] transposed once (in chunks of 64 rows, zero-padded to 8) for several small_gemm calls on slices or
// panels of one weight; read-only afterwards, so threads share it. Not ready() when small_gemm_runs(T) is false.
// `parallel`: the transpose itself is split over the CPU thread pool (for a caller about to split the panels over
// it: otherwise the other threads wait while the caller transposes alone).
class SmallGemmX {
 public:
  SmallGemmX(const float* x, int64_t T, int64_t K, bool parallel = false);
  ~SmallGemmX();
  SmallGemmX(const SmallGemmX&) = delete;
  SmallGemmX& operator=(const SmallGemmX&) = delete;
  bool ready() const { return !xt_.empty(); }

 private:
  friend bool small_gemm(const SmallGemmX& x, const float* w, int64_t N, float* y, int64_t ldy, Nf4Isa isa);
  int64_t T_, K_;
  std::vector<float> xt_;
};
// As above, for a prepared x: y[t * ldy + n] = Σ_k x[t, k] · w[n * K + k]. False (nothing written) if !x.ready().
bool small_gemm(const SmallGemmX& x, const float* w, int64_t N, float* y, int64_t ldy, Nf4Isa isa = Nf4Isa::Auto);

}  // namespace graft::cpu
