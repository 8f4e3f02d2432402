// The lm_head product of one decode step (T = 1, and small serving batches) in every head format graft has, side by
// side with a plain read of the same bytes (the memory ceiling), on the Qwen3-MoE `small` shape (vocab 151,936 ×
// hidden 512) by default. Each row reports the weight bytes streamed per call as GB/s; "of read" in
// docs/performance.md is that divided by BM_ReadCeiling's.
//   env -u OPENBLAS_CORETYPE OMP_NUM_THREADS=1 build/bench/bench_lm_head
// Rows: f32 (graft::cpu::linear, graft's default head), NF4 (nf4_gemv), Q8 and Q6 exact (codes widened to f32) and
// Q8 and Q6 int8 (x quantized per block, AVX-512 VNNI or AVX2; skipped on a CPU without AVX2).
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "graft/cpu/nf4_gemv.hpp"
#include "graft/cpu/ops.hpp"
#include "graft/cpu/q6_gemv.hpp"
#include "graft/cpu/q8_gemv.hpp"
#include "graft/quant/nf4.hpp"
#include "graft/quant/q6.hpp"
#include "graft/quant/q8.hpp"
#include "graft/tensor.hpp"

namespace {
constexpr int64_t kVocab = 151936, kHidden = 512;

struct Head {
  graft::Tensor w;  // [vocab, hidden] f32
  graft::q8::QuantizedWeight q8;
  graft::q6::QuantizedWeight q6;
  graft::nf4::QuantizedWeight nf4;
  Head() : w(graft::Tensor::empty({kVocab, kHidden}, graft::DType::F32)) {
    std::mt19937 r(1);
    std::normal_distribution<float> g(0.f, 0.05f);
    for (int64_t i = 0; i < w.numel(); ++i) w.data<float>()[i] = g(r);
    const std::span<const float> all(w.data<float>(), size_t(w.numel()));
    q8 = graft::q8::quantize(all, {kVocab, kHidden});
    q6 = graft::q6::quantize(all, {kVocab, kHidden});
    nf4 = graft::nf4::quantize(all, {kVocab, kHidden}, /*double_quant=*/true, 64);
  }
};
const Head& head() {
  static const Head h;
  return h;
}
graft::Tensor activations(int64_t T) {  // [T, hidden]
  graft::Tensor x = graft::Tensor::empty({T, kHidden}, graft::DType::F32);
  std::mt19937 r(2);
  std::normal_distribution<float> g;
  for (int64_t i = 0; i < x.numel(); ++i) x.data<float>()[i] = g(r);
  return x;
}
void rate(benchmark::State& st, double bytes) {
  st.counters["GB/s"] = benchmark::Counter(bytes, benchmark::Counter::kIsIterationInvariantRate,
                                           benchmark::Counter::kIs1000);
}
// The ceiling: the f32 head's bytes summed once, one thread (a streaming read; `omp simd` lets the compiler
// vectorize the sum).
void BM_ReadCeiling(benchmark::State& st) {
  const float* w = head().w.data<float>();
  const int64_t n = head().w.numel();
  for (auto _ : st) {
    float s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < n; ++i) s += w[i];
    benchmark::DoNotOptimize(s);
  }
  rate(st, double(n) * sizeof(float));
}

// graft::cpu::linear, the f32 head's product (T <= 8: small_gemv, one stream of W per thread; more: small_gemm).
void BM_F32Head(benchmark::State& st) {
  const graft::Tensor x = activations(st.range(0));
  graft::Tensor y = graft::Tensor::empty({x.size(0), kVocab}, graft::DType::F32);
  for (auto _ : st) {
    graft::cpu::linear(x, head().w, graft::Tensor(), y);
    benchmark::DoNotOptimize(y.data<float>());
  }
  rate(st, double(head().w.nbytes()));
}

void BM_Nf4Head(benchmark::State& st) {
  const int64_t T = st.range(0);
  const graft::Tensor x = activations(T);
  std::vector<float> y(size_t(T * kVocab));
  for (auto _ : st) {
    graft::cpu::nf4_gemv(x.data<float>(), T, kHidden, head().nf4, y.data());
    benchmark::DoNotOptimize(y.data());
  }
  rate(st, double(head().nf4.bytes()));
}

// gemv(x, T, w, y, dot): q8_gemv or q6_gemv on the head's weight w.
template <class W, class Gemv>
void int_head(benchmark::State& st, graft::cpu::Q8Dot dot, const W& w, Gemv gemv) {
  if (dot == graft::cpu::Q8Dot::Int8 && !graft::cpu::q8_int8_dot_supported()) {
    st.SkipWithError("this CPU lacks AVX2");
    return;
  }
  const int64_t T = st.range(0);
  const graft::Tensor x = activations(T);
  std::vector<float> y(size_t(T * kVocab));
  for (auto _ : st) {
    gemv(x.data<float>(), T, kHidden, w, y.data(), graft::cpu::Nf4Isa::Auto, dot);
    benchmark::DoNotOptimize(y.data());
  }
  rate(st, double(w.bytes()));
}
void BM_Q8HeadExact(benchmark::State& st) { int_head(st, graft::cpu::Q8Dot::Exact, head().q8, graft::cpu::q8_gemv); }
void BM_Q8HeadInt8(benchmark::State& st) { int_head(st, graft::cpu::Q8Dot::Int8, head().q8, graft::cpu::q8_gemv); }
void BM_Q6HeadExact(benchmark::State& st) { int_head(st, graft::cpu::Q8Dot::Exact, head().q6, graft::cpu::q6_gemv); }
void BM_Q6HeadInt8(benchmark::State& st) { int_head(st, graft::cpu::Q8Dot::Int8, head().q6, graft::cpu::q6_gemv); }

}  // namespace

BENCHMARK(BM_ReadCeiling)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_F32Head)->Arg(1)->Arg(4)->Arg(8)->Arg(16)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Nf4Head)->Arg(1)->Arg(4)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Q8HeadExact)->Arg(1)->Arg(4)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Q8HeadInt8)->Arg(1)->Arg(4)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Q6HeadExact)->Arg(1)->Arg(4)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Q6HeadInt8)->Arg(1)->Arg(4)->Unit(benchmark::kMillisecond)->UseRealTime();

BENCHMARK_MAIN();
