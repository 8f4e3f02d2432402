// CPU reference: dense, NF4 and LoRA linear layers (fp32, Eigen GEMM).
#include <Eigen/Core>

#include <omp.h>

#include <algorithm>
#include <string>
#include <vector>

#include "graft/cpu/nf4_gemv.hpp"
#include "graft/cpu/ops.hpp"
#include "graft/cpu/q6_gemv.hpp"
#include "graft/cpu/q8_gemv.hpp"
#include "graft/cpu/small_gemm.hpp"
#include "graft/parallel.hpp"
#include "parallel_for.hpp"
#include "parallel_gemm.hpp"

namespace graft::cpu {
namespace {
// Up to this many rows linear streams W once through small_gemv; more rows use small_gemm's tiles. Measured
// 2026-12-06, 1 thread, the 151,669 × 512 f32 lm_head (bench_lm_head): T = 4 14.5 vs 40.3 ms, T = 8 25.0 vs 39.4,
// T = 16 62.4 vs 39.3 (there the FMAs, not the stream, bound it).
constexpr int64_t kStreamMaxT = 8;

// Rows of x up to which linear_nf4 decodes the codes in registers (nf4_gemv); more rows dequantize panels and run
// small_gemm on them. AVX2 (Zen 3, 1 thread, bench_gemm 2026-12-07, N = 1536, K = 512): decode T = 2 104 us, 4 165,
// 8 437, 16 1145; panels T = 2 290, 4 293, 8 295, 16 389: the decode kernel keeps T accumulators per weight vector,
// which spill past T = 4 with 16 ymm registers. AVX-512 (Zen 4, 1 thread, bench_gemm 2026-12-07, N = K = 512):
// decode T = 4 39 us, 6 56, 8 79, 10 107, 16 203; panels T = 4..8 72-73, 10 105, 16 106 (the decode kernel's cost
// grows with T, the panels' barely: dequantizing the panel is most of it).
int64_t nf4_decode_max_t() { return nf4_isa_detect() == Nf4Isa::Avx2 ? 4 : 7; }
using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using MapC = Eigen::Map<const RowMat>;
using Map = Eigen::Map<RowMat>;

void check_f32_2d(const Tensor& t, const char* what) {
  GRAFT_CHECK(t.dtype() == DType::F32 && t.ndim() == 2 && t.is_contiguous() && t.device().is_cpu(),
              "{} must be a contiguous 2-d f32 host tensor, got {}", what, t.describe());
}
}  // namespace

void linear(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& y) {
  check_f32_2d(x, "linear: x");
  check_f32_2d(w, "linear: w");
  check_f32_2d(y, "linear: y");
  const int64_t T = x.size(0), K = x.size(1), N = w.size(0);
  GRAFT_CHECK(w.size(1) == K, "linear: x {} and w {} disagree on K", x.describe(), w.describe());
  GRAFT_CHECK(y.size(0) == T && y.size(1) == N, "linear: y {} must be [{}, {}]", y.describe(), T, N);
  if (T == 0 || N == 0) return;
  Map Y(y.data<float>(), T, N);
  if (K == 0) {
    Y.setZero();
  } else if (T <= kStreamMaxT && small_gemv_runs()) {
    // Decode (and small decode batches): one slice of W's rows per thread, each streamed once by the SIMD GEMV
    // for all T rows (small_gemm.hpp). T = 1 on AVX2 runs Eigen's GEMV on the slice instead: it reads four rows at
    // once, which on Zen 3 beats the one-stream kernel (1 thread, bench_gemm 2026-12-07: the 18,958 × 512 head
    // slice 1.60 vs 1.88 ms, 1536 × 512 43 vs 48 us, 512 × 64 1.75 vs 2.04 us).
    const bool eigen_gemv = T == 1 && nf4_isa_detect() != Nf4Isa::Avx512;
    const int64_t threads = graft::parallel_worth(T * N * K) ? omp_get_max_threads() : 1;
    const int64_t rows = (N + threads - 1) / threads;
    const auto slice = [&](int64_t b) {
      const int64_t n0 = std::min(N, b * rows), n1 = std::min(N, n0 + rows);
      if (eigen_gemv)
        Y.middleCols(n0, n1 - n0).noalias() =
            MapC(x.data<float>(), 1, K) * MapC(w.data<float>() + n0 * K, n1 - n0, K).transpose();
      else
        small_gemv(x.data<float>(), T, K, w.data<float>() + n0 * K, n1 - n0, y.data<float>() + n0, N);
    };
    parallel_for(threads, threads > 1, slice);
  } else if (T <= 64 || small_gemm_runs(T)) {
    // Small batches (more than kStreamMaxT rows, e.g. a serving step's decode rows): split W's rows into panels
    // across threads; each thread streams its own slice of W once and multiplies all T rows by it.
    // Up to T = 64 this beats one Eigen GEMM over the whole W (K = 512, measured 2026-11-24 on the
    // 2-core box: N = 20000 T = 9 3.9 vs 6.2 ms, T = 64 9.5 vs 12.4 ms; N = 1536 T = 9 0.17 vs
    // 0.31 ms; equal or better at every T <= 64, 1 and 2 threads). Each panel is multiplied by small_gemm (no packed
    // copy of W; 111-125 vs Eigen's 63-100 GFLOP/s at T = 16..256, N = K = 512, 1 thread, 2026-12-06) where it runs,
    // at any T; otherwise prefill-sized T uses one Eigen GEMM.
    MapC X(x.data<float>(), T, K);
    // small_gemm streams W without blocking for cache: one slice per thread (it transposes x once per slice).
    const int64_t kRows = small_gemm_runs(T) ? std::max<int64_t>(12, (N + omp_get_max_threads() - 1) / omp_get_max_threads()) : 256;
    const int64_t blocks = (N + kRows - 1) / kRows;
    parallel_for(blocks, graft::parallel_worth(T * N * K), [&](int64_t b) {
      const int64_t n0 = b * kRows, rows = std::min(kRows, N - n0);
      if (!small_gemm(x.data<float>(), T, K, w.data<float>() + n0 * K, rows, y.data<float>() + n0, N))
        Y.middleCols(n0, rows).noalias() = X * MapC(w.data<float>() + n0 * K, rows, K).transpose();
    });
  } else {
    parallel_gemm(MapC(x.data<float>(), T, K), MapC(w.data<float>(), N, K).transpose(), Y, 1.0f, false);
  }
  if (bias.defined() && bias.numel() > 0) {
    GRAFT_CHECK(bias.dtype() == DType::F32 && bias.numel() == N, "linear: bias {} must be f32 [{}]", bias.describe(), N);
    Eigen::Map<const Eigen::RowVectorXf> b(bias.data<float>(), N);
    Y.rowwise() += b;
  }
}

namespace {
// y[T, N] (=) x[T, K] · Wᵀ for more rows than the decode kernels take, W known only through dequant(r0, r1, out)
// (rows [r0, r1) as f32): panels of W dequantized into a per-thread buffer of about 512 KiB, which stays in L2 while
// the GEMM multiplies every row of x by it. At least one panel per thread.
template <class DequantRows>
void panel_gemm(const Tensor& x, int64_t N, Tensor& y, const DequantRows& dequant) {
  const int64_t T = x.size(0), K = x.size(1);
  const int64_t threads = graft::parallel_worth(N * K * (T + 2)) ? omp_get_max_threads() : 1;
  int64_t rows = std::max<int64_t>(16, (int64_t{1} << 17) / std::max<int64_t>(K, 1));
  rows = std::min(rows, (N + threads - 1) / threads);
  rows = std::max<int64_t>(16, (rows + 15) / 16 * 16);
  const int64_t panels = (N + rows - 1) / rows;
  MapC X(x.data<float>(), T, K);
  Map Y(y.data<float>(), T, N);
  const SmallGemmX xt(x.data<float>(), T, K, threads > 1 && panels > 1);  // x transposed once for every panel
  parallel_for(panels, threads > 1 && panels > 1, [&](int64_t p) {
    thread_local std::vector<float> buf;
    const int64_t r0 = p * rows, n = std::min(rows, N - r0);
    buf.resize(static_cast<size_t>(n * K));
    dequant(r0, r0 + n, buf.data());
    if (!small_gemm(xt, buf.data(), n, y.data<float>() + r0, N))
      Y.middleCols(r0, n).noalias() = X * MapC(buf.data(), n, K).transpose();
  }, Schedule::Dynamic);
}

void check_quantized_linear(const Tensor& x, const Dims& w_shape, const Tensor& y, const char* what) {
  check_f32_2d(x, (std::string(what) + ": x").c_str());
  check_f32_2d(y, (std::string(what) + ": y").c_str());
  GRAFT_CHECK(w_shape.size() == 2, "{}: weight must be 2-d, got {}", what, w_shape.str());
  GRAFT_CHECK(w_shape[1] == x.size(1), "{}: x {} and weight {} disagree on K", what, x.describe(), w_shape.str());
  GRAFT_CHECK(y.size(0) == x.size(0) && y.size(1) == w_shape[0], "{}: y {} must be [{}, {}]", what, y.describe(),
              x.size(0), w_shape[0]);
}
}  // namespace

void linear_nf4(const Tensor& x, const nf4::QuantizedWeight& w, Tensor& y) {
  check_quantized_linear(x, w.shape, y, "linear_nf4");
  const int64_t T = x.size(0), K = x.size(1), N = w.shape[0];
  if (T == 0 || N == 0) return;
  if (T <= nf4_decode_max_t()) {
    // Decode: codes decoded in registers, the packed weight streamed once (nf4_gemv.cpp).
    nf4_gemv(x.data<float>(), T, K, w, y.data<float>());
    return;
  }
  // Prefill: NF4 panels dequantized with SIMD (nf4_dequant_rows), then multiplied in f32.
  panel_gemm(x, N, y, [&](int64_t r0, int64_t r1, float* out) { nf4_dequant_rows(w, r0, r1, out); });
}

namespace {
// The inference-only quantized heads: up to 16 rows through their decode kernel gemv(x, T, K, w, y), more through
// dequantized panels (rows(w, r0, r1, out)).
template <class W, class Gemv, class Rows>
void linear_quant_head(const Tensor& x, const W& w, Tensor& y, const char* what, Gemv gemv, Rows rows) {
  check_quantized_linear(x, w.shape, y, what);
  const int64_t T = x.size(0), K = x.size(1), N = w.shape[0];
  if (T == 0 || N == 0) return;
  if (T <= 16) {
    gemv(x.data<float>(), T, K, w, y.data<float>(), Nf4Isa::Auto, Q8Dot::Auto);
    return;
  }
  panel_gemm(x, N, y, [&](int64_t r0, int64_t r1, float* out) { rows(w, r0, r1, out, Nf4Isa::Auto); });
}
}  // namespace

void linear_q8(const Tensor& x, const q8::QuantizedWeight& w, Tensor& y) {
  linear_quant_head(x, w, y, "linear_q8", q8_gemv, q8_dequant_rows);
}

void linear_q6(const Tensor& x, const q6::QuantizedWeight& w, Tensor& y) {
  linear_quant_head(x, w, y, "linear_q6", q6_gemv, q6_dequant_rows);
}

void lora_acc(const Tensor& x, const Tensor& a, const Tensor& b, float scale, Tensor& y) {
  check_f32_2d(x, "lora: x");
  check_f32_2d(a, "lora: A");
  check_f32_2d(b, "lora: B");
  check_f32_2d(y, "lora: y");
  const int64_t T = x.size(0), K = x.size(1), r = a.size(0), N = b.size(0);
  GRAFT_CHECK(a.size(1) == K, "lora: A {} must be [r, {}]", a.describe(), K);
  GRAFT_CHECK(b.size(1) == r, "lora: B {} must be [N, {}]", b.describe(), r);
  GRAFT_CHECK(y.size(0) == T && y.size(1) == N, "lora: y {} must be [{}, {}]", y.describe(), T, N);
  if (T == 0 || r == 0) return;
  RowMat xa = MapC(x.data<float>(), T, K) * MapC(a.data<float>(), r, K).transpose();  // [T, r]
  Map(y.data<float>(), T, N).noalias() += scale * (xa * MapC(b.data<float>(), N, r).transpose());
}

}  // namespace graft::cpu
