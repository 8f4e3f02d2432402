// CPU GEMM ceiling: graft's f32 linear (small_gemv / small_gemm where the CPU has AVX2 or AVX-512, else Eigen), Eigen's
// GEMM and OpenBLAS sgemm on the shapes of the model hot paths, side by side. Run with OPENBLAS_CORETYPE unset (the environment's Haswell
// override slows OpenBLAS) and OMP/OPENBLAS threads equal to the cores you want to measure:
//   env -u OPENBLAS_CORETYPE ./build/bench/bench_gemm
#include <benchmark/benchmark.h>

#include <Eigen/Core>

#include "graft/cpu/ops.hpp"
#include "graft/quant/nf4.hpp"
#include "graft/tensor.hpp"

#include <random>
#include <vector>

#ifdef GRAFT_HAVE_OPENBLAS
extern "C" void cblas_sgemm(int order, int transA, int transB, int M, int N, int K, float alpha, const float* A,
                            int lda, const float* B, int ldb, float beta, float* C, int ldc);
#endif

namespace {
using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

struct Shapes {
  std::vector<float> x, w, y;
  int T, K, N;
  Shapes(int t, int k, int n) : x(size_t(t) * k), w(size_t(n) * k), y(size_t(t) * n), T(t), K(k), N(n) {
    std::mt19937 r(1);
    std::normal_distribution<float> g;
    for (auto& v : x) v = g(r);
    for (auto& v : w) v = g(r);
  }
};

void BM_EigenLinear(benchmark::State& st) {
  Shapes s(static_cast<int>(st.range(0)), static_cast<int>(st.range(1)), static_cast<int>(st.range(2)));
  Eigen::Map<const RowMat> X(s.x.data(), s.T, s.K), W(s.w.data(), s.N, s.K);
  Eigen::Map<RowMat> Y(s.y.data(), s.T, s.N);
  for (auto _ : st) {
    Y.noalias() = X * W.transpose();
    benchmark::DoNotOptimize(s.y.data());
  }
  st.counters["GFLOP/s"] = benchmark::Counter(2.0 * s.T * s.K * s.N, benchmark::Counter::kIsIterationInvariantRate,
                                              benchmark::Counter::kIs1000);
}

// graft::cpu::linear, as the models call it (T <= 8: small_gemv; more: small_gemm panels; Eigen without AVX2).
void BM_GraftLinear(benchmark::State& st) {
  Shapes s(static_cast<int>(st.range(0)), static_cast<int>(st.range(1)), static_cast<int>(st.range(2)));
  const graft::Tensor X = graft::Tensor::wrap(s.x.data(), {s.T, s.K}, graft::DType::F32);
  const graft::Tensor W = graft::Tensor::wrap(s.w.data(), {s.N, s.K}, graft::DType::F32);
  graft::Tensor Y = graft::Tensor::wrap(s.y.data(), {s.T, s.N}, graft::DType::F32);
  for (auto _ : st) {
    graft::cpu::linear(X, W, graft::Tensor(), Y);
    benchmark::DoNotOptimize(s.y.data());
  }
  st.counters["GFLOP/s"] = benchmark::Counter(2.0 * s.T * s.K * s.N, benchmark::Counter::kIsIterationInvariantRate,
                                              benchmark::Counter::kIs1000);
}

// graft::cpu::linear_nf4 on the same shapes, W quantized to NF4 (blocksize 64, double quantization): T <= 16 the
// in-register decode, more rows SIMD-dequantized panels times the f32 GEMM. GFLOP/s of the f32-equivalent product.
void BM_GraftLinearNf4(benchmark::State& st) {
  Shapes s(static_cast<int>(st.range(0)), static_cast<int>(st.range(1)), static_cast<int>(st.range(2)));
  const graft::nf4::QuantizedWeight q = graft::nf4::quantize(s.w, graft::Dims{s.N, s.K}, true, 64);
  const graft::Tensor X = graft::Tensor::wrap(s.x.data(), {s.T, s.K}, graft::DType::F32);
  graft::Tensor Y = graft::Tensor::wrap(s.y.data(), {s.T, s.N}, graft::DType::F32);
  for (auto _ : st) {
    graft::cpu::linear_nf4(X, q, Y);
    benchmark::DoNotOptimize(s.y.data());
  }
  st.counters["GFLOP/s"] = benchmark::Counter(2.0 * s.T * s.K * s.N, benchmark::Counter::kIsIterationInvariantRate,
                                              benchmark::Counter::kIs1000);
}

#ifdef GRAFT_HAVE_OPENBLAS
void BM_OpenBlasLinear(benchmark::State& st) {
  Shapes s(static_cast<int>(st.range(0)), static_cast<int>(st.range(1)), static_cast<int>(st.range(2)));
  for (auto _ : st) {
    // row-major (101), X no-trans (111), W transposed (112)
    cblas_sgemm(101, 111, 112, s.T, s.N, s.K, 1.0f, s.x.data(), s.K, s.w.data(), s.K, 0.0f, s.y.data(), s.N);
    benchmark::DoNotOptimize(s.y.data());
  }
  st.counters["GFLOP/s"] = benchmark::Counter(2.0 * s.T * s.K * s.N, benchmark::Counter::kIsIterationInvariantRate,
                                              benchmark::Counter::kIs1000);
}
#endif

// {T, K, N}: decode (T=1), prefill (T=128), the small MoE preset (512 / 1536; an expert's gate+up and down over the
// ~32 rows top-2 of 8 routes to it at T = 128; a 4-row decode batch) and stories260K (64 / 172).
#define SHAPES                                                                                              \
  ->Args({1, 512, 1536})->Args({128, 512, 1536})->Args({512, 512, 512})->Args({1, 64, 512})->Args({128, 64, 172}) \
      ->Args({1, 512, 151669 / 8})->Args({32, 512, 1024})->Args({32, 512, 512})->Args({4, 512, 1536})->Args({16, 512, 1536})->Args({64, 512, 1536})       \
      ->Args({1, 256, 1536})->Args({2, 512, 1536})->Args({8, 512, 1536})->Args({12, 512, 512})->Args({4, 512, 512})->Args({6, 512, 512})->Args({8, 512, 512})->Args({10, 512, 512})->Args({16, 512, 512})->Args({20, 512, 512})->Args({40, 512, 512})->UseRealTime()
BENCHMARK(BM_GraftLinear) SHAPES;
BENCHMARK(BM_GraftLinearNf4) SHAPES;
BENCHMARK(BM_EigenLinear) SHAPES;
#ifdef GRAFT_HAVE_OPENBLAS
BENCHMARK(BM_OpenBlasLinear) SHAPES;
#endif
}  // namespace

BENCHMARK_MAIN();
