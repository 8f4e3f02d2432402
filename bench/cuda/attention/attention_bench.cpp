// Dense attention timings on the GPU (CUDA events, median of --iters after 3 warm-ups) for the
// training / prefill shapes: causal self-attention T = S in {2048, 4096} (--quick: 2048), Llama-3-8B
// heads (Hq 32, Hkv 8, D 128) and a D = 64 model (Hq 16, Hkv 4), both paths of attention_fwd and
// attention_bwd (tensor cores, CUDA cores; the backward with the forward's lse + out, its fast
// path). TFLOP/s count the visible half of the scores (causal): forward 2·2·T·S/2·D·Hq, backward
// 2.5x the forward (the flash-attention convention), so numbers compare with torch_baseline.py
// (F.scaled_dot_product_attention, same shapes and convention). Values are constant bit patterns:
// timing only (correctness: tests/kernels/cuda_attention). Prints `RESULT key=value ...` lines.
// Usage: bench_attention_cuda [--quick] [--iters N]
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <numeric>
#include <vector>

#include "graft/cuda/attention.hpp"
#include "graft/cuda/device_info.hpp"

namespace {
namespace gc = graft::cuda;

void ok(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(e));
    std::exit(1);
  }
}

struct Buf {
  void* p = nullptr;
  explicit Buf(size_t bytes, int byte = 0x3c) {
    ok(cudaMalloc(&p, std::max<size_t>(bytes, 16)), "cudaMalloc");
    ok(cudaMemset(p, byte, std::max<size_t>(bytes, 16)), "cudaMemset");
  }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  ~Buf() { cudaFree(p); }
  template <class T>
  T* as() const {
    return static_cast<T*>(p);
  }
};

// Median milliseconds of fn() over iters runs after 3 warm-ups.
double median_ms(const std::function<void()>& fn, int iters) {
  cudaEvent_t a, b;
  ok(cudaEventCreate(&a), "event");
  ok(cudaEventCreate(&b), "event");
  for (int i = 0; i < 3; ++i) fn();
  std::vector<float> ts;
  for (int i = 0; i < iters; ++i) {
    ok(cudaEventRecord(a, nullptr), "record");
    fn();
    ok(cudaEventRecord(b, nullptr), "record");
    ok(cudaEventSynchronize(b), "sync");
    float t = 0;
    ok(cudaEventElapsedTime(&t, a, b), "elapsed");
    ts.push_back(t);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(ts.begin(), ts.end());
  return ts[ts.size() / 2];
}

void run_shape(const char* model, int64_t T, int64_t Hq, int64_t Hkv, int64_t D, int iters) {
  using bf16 = __nv_bfloat16;
  Buf q(T * Hq * D * 2), k(T * Hkv * D * 2), v(T * Hkv * D * 2), dout(T * Hq * D * 2), out(T * Hq * D * 2),
      lse(T * Hq * 4, 0), dq(T * Hq * D * 2), dk(T * Hkv * D * 2), dv(T * Hkv * D * 2),
      ws(gc::attention_bwd_workspace_bytes(T, Hq), 0), pos(T * 4, 0);
  std::vector<int32_t> hp(static_cast<size_t>(T));
  std::iota(hp.begin(), hp.end(), 0);
  ok(cudaMemcpy(pos.p, hp.data(), hp.size() * 4, cudaMemcpyHostToDevice), "upload positions");
  const gc::AttentionDims dims{T, T, Hq, Hkv, D, D};
  const double fwd_flop = 2.0 * 2.0 * static_cast<double>(T) * T / 2.0 * D * Hq, bwd_flop = 2.5 * fwd_flop;
  for (const auto path : {gc::AttentionPath::TensorCores, gc::AttentionPath::CudaCores}) {
    const char* pname = path == gc::AttentionPath::TensorCores ? "tensor_cores" : "cuda_cores";
    gc::AttentionFwdDesc f;
    f.q = q.as<bf16>();
    f.k = k.as<bf16>();
    f.v = v.as<bf16>();
    f.q_pos = pos.as<int32_t>();
    f.k_pos = pos.as<int32_t>();
    f.scale = 0.088388f;
    f.dims = dims;
    f.out = out.as<bf16>();
    f.lse = lse.as<float>();
    f.path = path;
    gc::AttentionBwdDesc b;
    b.q = f.q;
    b.k = f.k;
    b.v = f.v;
    b.dout = dout.as<bf16>();
    b.q_pos = f.q_pos;
    b.k_pos = f.k_pos;
    b.scale = f.scale;
    b.dims = dims;
    b.lse = f.lse;
    b.out = f.out;
    b.dq = dq.as<bf16>();
    b.dk = dk.as<bf16>();
    b.dv = dv.as<bf16>();
    b.workspace = ws.p;
    b.workspace_bytes = gc::attention_bwd_workspace_bytes(T, Hq);
    b.path = path;
    const double tf = median_ms([&] { gc::attention_fwd(f, nullptr); }, iters);
    const double tb = median_ms([&] { gc::attention_bwd(b, nullptr); }, iters);
    std::printf("RESULT kernel=attention_fwd model=%s path=%s T=%lld Hq=%lld Hkv=%lld D=%lld ms=%.3f tflops=%.1f\n",
                model, pname, static_cast<long long>(T), static_cast<long long>(Hq), static_cast<long long>(Hkv),
                static_cast<long long>(D), tf, fwd_flop / tf * 1e-9);
    std::printf("RESULT kernel=attention_bwd model=%s path=%s T=%lld Hq=%lld Hkv=%lld D=%lld ms=%.3f tflops=%.1f\n",
                model, pname, static_cast<long long>(T), static_cast<long long>(Hq), static_cast<long long>(Hkv),
                static_cast<long long>(D), tb, bwd_flop / tb * 1e-9);
    std::fflush(stdout);
  }
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  int iters = 10;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--quick")) quick = true;
    else if (!std::strcmp(argv[i], "--iters") && i + 1 < argc) iters = std::max(1, std::atoi(argv[++i]));
    else {
      std::fprintf(stderr, "usage: %s [--quick] [--iters N]\n", argv[0]);
      return 2;
    }
  }
  if (gc::device_count() == 0) {
    std::printf("no CUDA device: %s\n", gc::no_device_reason().c_str());
    return 0;
  }
  const auto info = gc::device_info(0);
  std::printf("device %s, %d SMs, %zu bytes opt-in shared memory per block\n", info.name.c_str(), info.sm_count,
              info.smem_per_block_optin);
  std::vector<int64_t> Ts = quick ? std::vector<int64_t>{2048} : std::vector<int64_t>{2048, 4096};
  for (const int64_t T : Ts) {
    run_shape("llama3-8b", T, 32, 8, 128, iters);
    run_shape("d64", T, 16, 4, 64, iters);
  }
  return 0;
}
