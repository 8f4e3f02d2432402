// GPU benchmark: NF4 dequant-matmul (graft) vs cuBLAS bf16 GEMM on the same shape vs
// "dequantize to bf16 + cuBLAS" (the Unsloth / bitsandbytes path), at training shapes (T = 8192)
// and decode shapes (T = 1, 4, 16, compared with the measured device-to-device copy bandwidth).
// Timing: CUDA events around each call, warmup, median of --reps. Decode shapes cycle through
// enough weight copies to exceed 3x the L2 so the weights come from HBM.
// Usage: bench_cuda_nf4_matmul [--reps N] [--quick]
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "graft/cuda/check.hpp"
#include "graft/cuda/device_info.hpp"
#include "graft/cuda/nf4_matmul.hpp"
#include "graft/error.hpp"
#include "graft/quant/nf4.hpp"

namespace {
namespace gc = graft::cuda;
using bf16 = __nv_bfloat16;

int g_reps = 20;

struct Dev {
  void* p = nullptr;
  explicit Dev(size_t bytes) {
    GRAFT_CUDA_CHECK(cudaMalloc(&p, std::max<size_t>(bytes, 16)));
    GRAFT_CUDA_CHECK(cudaMemset(p, 0, std::max<size_t>(bytes, 16)));
  }
  ~Dev() { cudaFree(p); }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  template <class T> T* as() const { return static_cast<T*>(p); }
};

void fill_bf16(bf16* p, size_t n, uint32_t seed, float sd) {
  std::vector<bf16> h(n);
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.f, sd);
  for (auto& v : h) v = __float2bfloat16(g(rng));
  GRAFT_CUDA_CHECK(cudaMemcpy(p, h.data(), n * sizeof(bf16), cudaMemcpyHostToDevice));
}

// Median milliseconds of fn(i) over g_reps runs after 3 warmups (i = call counter, for rotation).
double time_ms(const std::function<void(int)>& fn) {
  cudaEvent_t a, b;
  GRAFT_CUDA_CHECK(cudaEventCreate(&a));
  GRAFT_CUDA_CHECK(cudaEventCreate(&b));
  int call = 0;
  for (int i = 0; i < 3; ++i) fn(call++);
  std::vector<float> ms;
  for (int i = 0; i < g_reps; ++i) {
    GRAFT_CUDA_CHECK(cudaEventRecord(a));
    fn(call++);
    GRAFT_CUDA_CHECK(cudaEventRecord(b));
    GRAFT_CUDA_CHECK(cudaEventSynchronize(b));
    float t = 0;
    GRAFT_CUDA_CHECK(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
  }
  GRAFT_CUDA_CHECK(cudaEventDestroy(a));
  GRAFT_CUDA_CHECK(cudaEventDestroy(b));
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

graft::nf4::QuantizedWeight random_nf4(int64_t n, int64_t k, uint32_t seed) {
  std::vector<float> w(static_cast<size_t>(n * k));
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.f, 0.02f);
  for (auto& v : w) v = g(rng);
  return graft::nf4::quantize(w, {n, k}, /*double_quant=*/true);
}

// Y[T, N] = X[T, K] · W[N, K]ᵀ in cuBLAS column-major terms: Yᵀ = op_T(W) · Xᵀ.
void gemm_fwd(cublasHandle_t h, const bf16* x, const bf16* w, bf16* y, int64_t T, int64_t N, int64_t K) {
  const float one = 1.0f, zero = 0.0f;
  GRAFT_CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(N), static_cast<int>(T),
                                  static_cast<int>(K), &one, w, CUDA_R_16BF, static_cast<int>(K), x, CUDA_R_16BF,
                                  static_cast<int>(K), &zero, y, CUDA_R_16BF, static_cast<int>(N),
                                  CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}
// dX[T, K] = dY[T, N] · W[N, K]: dXᵀ = Wᵀ(col-major [K, N]) · dYᵀ.
void gemm_dx(cublasHandle_t h, const bf16* dy, const bf16* w, bf16* dx, int64_t T, int64_t N, int64_t K) {
  const float one = 1.0f, zero = 0.0f;
  GRAFT_CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(K), static_cast<int>(T),
                                  static_cast<int>(N), &one, w, CUDA_R_16BF, static_cast<int>(K), dy, CUDA_R_16BF,
                                  static_cast<int>(N), &zero, dx, CUDA_R_16BF, static_cast<int>(K),
                                  CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

// ‖a − b‖/‖b‖ over the first `rows` rows of two [T, cols] bf16 device matrices (sanity check of
// the timed kernels against dequant + cuBLAS on the same data).
double rel_diff_rows(const bf16* a, const bf16* b, int64_t rows, int64_t cols) {
  const size_t n = static_cast<size_t>(rows * cols);
  std::vector<bf16> ha(n), hb(n);
  GRAFT_CUDA_CHECK(cudaMemcpy(ha.data(), a, n * sizeof(bf16), cudaMemcpyDeviceToHost));
  GRAFT_CUDA_CHECK(cudaMemcpy(hb.data(), b, n * sizeof(bf16), cudaMemcpyDeviceToHost));
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    const double x = __bfloat162float(ha[i]), y = __bfloat162float(hb[i]);
    num += (x - y) * (x - y);
    den += y * y;
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

struct Shape {
  const char* name;
  int64_t n, k;
};

void bench_training(cublasHandle_t h, const Shape& s, int64_t T) {
  const auto q = random_nf4(s.n, s.k, 1);
  gc::Nf4WeightBuffer w(q);
  Dev x(T * s.k * 2), y(T * s.n * 2), wbf(s.n * s.k * 2), dy(T * s.n * 2), dx(T * s.k * 2);
  Dev la(64 * s.k * 2), lb(s.n * 64 * 2), xa(T * 64 * 4), dyb(T * 64 * 4);
  fill_bf16(x.as<bf16>(), T * s.k, 2, 1.0f);
  fill_bf16(dy.as<bf16>(), T * s.n, 3, 1.0f);
  fill_bf16(wbf.as<bf16>(), s.n * s.k, 4, 0.02f);
  fill_bf16(la.as<bf16>(), 64 * s.k, 5, 0.02f);
  fill_bf16(lb.as<bf16>(), s.n * 64, 6, 0.02f);
  const double flop = 2.0 * T * s.n * s.k;

  auto fwd = [&](int r) {
    gc::Nf4MatmulDesc d;
    d.x = x.as<bf16>();
    d.w = w.view();
    d.y = y.as<bf16>();
    d.t = T;
    d.r = r;
    d.scale = 2.0f;
    if (r) {
      d.lora_a = la.as<bf16>();
      d.lora_b = lb.as<bf16>();
      d.xa_out = xa.as<float>();
    }
    return d;
  };
  const auto d0 = fwd(0), d16 = fwd(16), d64 = fwd(64);
  const double t_cublas = time_ms([&](int) { gemm_fwd(h, x.as<bf16>(), wbf.as<bf16>(), y.as<bf16>(), T, s.n, s.k); });
  const double t_deq = time_ms([&](int) {
    gc::nf4_dequant_bf16(w.view(), wbf.as<bf16>(), nullptr);
    gemm_fwd(h, x.as<bf16>(), wbf.as<bf16>(), y.as<bf16>(), T, s.n, s.k);
  });
  const double t_nf4 = time_ms([&](int) { gc::nf4_matmul(d0, nullptr); });
  const double t_nf4_16 = time_ms([&](int) { gc::nf4_matmul(d16, nullptr); });
  const double t_nf4_64 = time_ms([&](int) { gc::nf4_matmul(d64, nullptr); });
  auto tf = [&](double ms) { return flop / (ms * 1e-3) / 1e12; };
  // sanity: nf4 output vs dequant + cuBLAS on the first rows
  Dev yref(T * s.n * 2);
  gc::nf4_dequant_bf16(w.view(), wbf.as<bf16>(), nullptr);
  gemm_fwd(h, x.as<bf16>(), wbf.as<bf16>(), yref.as<bf16>(), T, s.n, s.k);
  gc::nf4_matmul(d0, nullptr);
  GRAFT_CUDA_CHECK(cudaDeviceSynchronize());
  const double err_fwd = rel_diff_rows(y.as<bf16>(), yref.as<bf16>(), std::min<int64_t>(T, 256), s.n);
  fmt::print("fwd  {:<22} T={:<5} N={:<6} K={:<6} | cuBLAS bf16 {:7.3f} ms {:6.1f} TF/s | dequant+cuBLAS {:7.3f} ms | "
             "nf4 {:7.3f} ms {:6.1f} TF/s  = {:4.2f}x cuBLAS, {:4.2f}x faster than dequant+cuBLAS | "
             "nf4+LoRA r16 {:7.3f} ms, r64 {:7.3f} ms | rel diff vs dequant+cuBLAS {:.1e}\n",
             s.name, T, s.n, s.k, t_cublas, tf(t_cublas), t_deq, t_nf4, tf(t_nf4), t_cublas / t_nf4, t_deq / t_nf4,
             t_nf4_16, t_nf4_64, err_fwd);

  gc::Nf4MatmulBwdDxDesc b;
  b.dy = dy.as<bf16>();
  b.w = w.view();
  b.dx = dx.as<bf16>();
  b.t = T;
  const double c_dx = time_ms([&](int) { gemm_dx(h, dy.as<bf16>(), wbf.as<bf16>(), dx.as<bf16>(), T, s.n, s.k); });
  const double q_dx = time_ms([&](int) {
    gc::nf4_dequant_bf16(w.view(), wbf.as<bf16>(), nullptr);
    gemm_dx(h, dy.as<bf16>(), wbf.as<bf16>(), dx.as<bf16>(), T, s.n, s.k);
  });
  const double n_dx = time_ms([&](int) { gc::nf4_matmul_bwd_dx(b, nullptr); });
  Dev dxref(T * s.k * 2);
  gc::nf4_dequant_bf16(w.view(), wbf.as<bf16>(), nullptr);
  gemm_dx(h, dy.as<bf16>(), wbf.as<bf16>(), dxref.as<bf16>(), T, s.n, s.k);
  gc::nf4_matmul_bwd_dx(b, nullptr);
  GRAFT_CUDA_CHECK(cudaDeviceSynchronize());
  const double err_dx = rel_diff_rows(dx.as<bf16>(), dxref.as<bf16>(), std::min<int64_t>(T, 256), s.k);
  b.r = 16;
  b.lora_a = la.as<bf16>();
  b.lora_b = lb.as<bf16>();
  b.scale = 2.0f;
  b.dyb_out = dyb.as<float>();
  const double n_dx16 = time_ms([&](int) { gc::nf4_matmul_bwd_dx(b, nullptr); });
  gc::LoraGradDesc g;
  g.x = x.as<bf16>();
  g.dy = dy.as<bf16>();
  g.xa = xa.as<float>();
  g.dyb = dyb.as<float>();
  g.da = reinterpret_cast<float*>(la.as<bf16>());  // scratch: 16·K fp32 fits in 64·K bf16
  Dev dbuf(s.n * 16 * 4);
  g.db = dbuf.as<float>();
  g.t = T;
  g.n = s.n;
  g.k = s.k;
  g.r = 16;
  g.scale = 2.0f;
  const double t_grad = time_ms([&](int) { gc::lora_grad(g, nullptr); });
  fmt::print("bwdx {:<22} T={:<5} N={:<6} K={:<6} | cuBLAS bf16 {:7.3f} ms {:6.1f} TF/s | dequant+cuBLAS {:7.3f} ms | "
             "nf4 {:7.3f} ms {:6.1f} TF/s  = {:4.2f}x cuBLAS, {:4.2f}x faster than dequant+cuBLAS | "
             "nf4+LoRA r16 {:7.3f} ms | lora_grad dA+dB r16 {:7.3f} ms | rel diff vs dequant+cuBLAS {:.1e}\n",
             s.name, T, s.n, s.k, c_dx, tf(c_dx), q_dx, n_dx, tf(n_dx), c_dx / n_dx, q_dx / n_dx, n_dx16, t_grad, err_dx);
}

void bench_decode(cublasHandle_t h, const Shape& s, int64_t T, double copy_gbps, const gc::DeviceInfo& dev) {
  const auto q = random_nf4(s.n, s.k, 7);
  const size_t nf4_bytes = q.bytes();
  const size_t bf16_bytes = static_cast<size_t>(s.n * s.k * 2);
  const int copies_nf4 = static_cast<int>(std::max<size_t>(2, 3 * static_cast<size_t>(dev.l2_bytes) / nf4_bytes + 1));
  const int copies_bf = static_cast<int>(std::max<size_t>(2, 3 * static_cast<size_t>(dev.l2_bytes) / bf16_bytes + 1));
  std::vector<gc::Nf4WeightBuffer> ws;
  for (int i = 0; i < copies_nf4; ++i) ws.emplace_back(q);
  std::vector<std::unique_ptr<Dev>> wb;
  for (int i = 0; i < copies_bf; ++i) {
    wb.push_back(std::make_unique<Dev>(bf16_bytes));
    fill_bf16(wb.back()->as<bf16>(), static_cast<size_t>(s.n * s.k), 8 + i, 0.02f);
  }
  Dev x(T * s.k * 2), y(T * s.n * 2);
  fill_bf16(x.as<bf16>(), T * s.k, 9, 1.0f);
  const double t_cublas =
      time_ms([&](int i) { gemm_fwd(h, x.as<bf16>(), wb[static_cast<size_t>(i % copies_bf)]->as<bf16>(), y.as<bf16>(), T, s.n, s.k); });
  const double t_nf4 = time_ms([&](int i) {
    gc::Nf4MatmulDesc d;
    d.x = x.as<bf16>();
    d.w = ws[static_cast<size_t>(i % copies_nf4)].view();
    d.y = y.as<bf16>();
    d.t = T;
    gc::nf4_matmul(d, nullptr);
  });
  const double io = static_cast<double>(T * (s.k + s.n) * 2);
  const double gbps_nf4 = (static_cast<double>(nf4_bytes) + io) / (t_nf4 * 1e-3) / 1e9;
  const double gbps_cub = (static_cast<double>(bf16_bytes) + io) / (t_cublas * 1e-3) / 1e9;
  fmt::print("dec  {:<22} T={:<5} N={:<6} K={:<6} | cuBLAS bf16 {:7.4f} ms {:6.0f} GB/s | nf4 {:7.4f} ms {:6.0f} GB/s "
             "= {:4.2f}x faster than cuBLAS, {:4.1f}% of measured copy bandwidth ({:.0f} GB/s)\n",
             s.name, T, s.n, s.k, t_cublas, gbps_cub, t_nf4, gbps_nf4, t_cublas / t_nf4, 100.0 * gbps_nf4 / copy_gbps,
             copy_gbps);
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) g_reps = std::max(1, std::atoi(argv[++i]));
    else if (!std::strcmp(argv[i], "--quick")) quick = true;
  }
  try {
    if (gc::device_count() == 0) {
      fmt::print("no GPU: {}\n", gc::no_device_reason());
      return 0;
    }
    const auto dev = gc::device_info(0);
    fmt::print("device: {} (sm_{}{}), {} SMs, L2 {} MB, theoretical DRAM {:.0f} GB/s\n", dev.name, dev.cc_major,
               dev.cc_minor, dev.sm_count, dev.l2_bytes >> 20, dev.peak_dram_gbps());
    // Device-to-device copy: bytes read + written.
    double copy_gbps = 0;
    {
      const size_t bytes = size_t{1} << 30;
      Dev a(bytes), b(bytes);
      const double ms = time_ms([&](int) { GRAFT_CUDA_CHECK(cudaMemcpyAsync(b.p, a.p, bytes, cudaMemcpyDeviceToDevice)); });
      copy_gbps = 2.0 * static_cast<double>(bytes) / (ms * 1e-3) / 1e9;
      fmt::print("device-to-device copy (1 GiB): {:.3f} ms, {:.0f} GB/s (read + write)\n", ms, copy_gbps);
    }
    cublasHandle_t h;
    GRAFT_CUBLAS_CHECK(cublasCreate(&h));
    const std::vector<Shape> train = {{"qwen3-30b-a3b q_proj", 4096, 2048},
                                      {"qwen3-30b-a3b k/v_proj", 512, 2048},
                                      {"qwen3-30b-a3b o_proj", 2048, 4096},
                                      {"llama3-8b gate/up", 14336, 4096},
                                      {"llama3-8b down", 4096, 14336}};
    for (const auto& s : train) {
      bench_training(h, s, quick ? 2048 : 8192);
      if (quick) break;
    }
    for (int64_t T : {1, 4, 16})
      for (const auto& s : train) bench_decode(h, s, T, copy_gbps, dev);
    GRAFT_CUBLAS_CHECK(cublasDestroy(h));
  } catch (const std::exception& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  }
  return 0;
}
