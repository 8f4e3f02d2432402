// Header-only helpers shared by the CUDA kernel tests and their benchmarks (tests/kernels/cuda_serve,
// tests/kernels/cuda_moe, bench/cuda/moe): a checked CUDA call, an owning device buffer, seeded
// normal vectors, bf16 conversion and the relative error of a result. The area headers re-export them into their own namespaces.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "graft/dtype.hpp"

namespace graft::testing::cudatest {

// True when the tests run on the CPU SIMT target (kernels/cuda/simt, label simt) instead of a GPU:
// the same cases, with the few whose size only matters for speed (T = 1000 sweeps, model-sized
// shapes) skipped so the label stays within its time budget. Every code path keeps a smaller case.
#ifdef GRAFT_SIMT
inline constexpr bool kSimt = true;
#else
inline constexpr bool kSimt = false;
#endif
#define GRAFT_SKIP_UNDER_SIMT(why) \
  if (::graft::testing::cudatest::kSimt) GTEST_SKIP() << "skipped on the SIMT target (" << why << "); runs on a GPU"

inline void cuda_ok(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

template <class T>
struct Dev {
  T* p = nullptr;
  size_t n = 0;
  Dev() = default;
  explicit Dev(size_t count) : n(count) {
    if (n) cuda_ok(cudaMalloc(&p, n * sizeof(T)), "cudaMalloc");
  }
  explicit Dev(const std::vector<T>& v) : Dev(v.size()) { upload(v); }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  Dev(Dev&& o) noexcept : p(o.p), n(o.n) {
    o.p = nullptr;
    o.n = 0;
  }
  Dev& operator=(Dev&& o) noexcept {
    std::swap(p, o.p);
    std::swap(n, o.n);
    return *this;
  }
  ~Dev() {
    if (p) cudaFree(p);
  }
  void upload(const std::vector<T>& v) {
    if (v.size() != n) throw std::runtime_error("Dev::upload: size mismatch");
    if (n) cuda_ok(cudaMemcpy(p, v.data(), n * sizeof(T), cudaMemcpyHostToDevice), "upload");
  }
  void upload_async(const std::vector<T>& v, cudaStream_t st) {
    if (v.size() != n) throw std::runtime_error("Dev::upload_async: size mismatch");
    if (n) cuda_ok(cudaMemcpyAsync(p, v.data(), n * sizeof(T), cudaMemcpyHostToDevice, st), "upload_async");
  }
  std::vector<T> download() const {
    std::vector<T> v(n);
    if (n) cuda_ok(cudaMemcpy(v.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost), "download");
    return v;
  }
  // All bits set: NaN for f32 / bf16, -1 for i32. Catches any element a kernel forgets to write.
  void poison() {
    if (n) cuda_ok(cudaMemset(p, 0xff, n * sizeof(T)), "poison");
  }
  void poison_async(cudaStream_t st) {
    if (n) cuda_ok(cudaMemsetAsync(p, 0xff, n * sizeof(T), st), "poison_async");
  }
};

inline std::vector<float> randn(size_t n, uint32_t seed, float sd = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.f, sd);
  std::vector<float> v(n);
  for (auto& x : v) x = g(rng);
  return v;
}
// Rounds to bf16 in place (the reference then sees exactly what the GPU reads) and returns the bits.
inline std::vector<uint16_t> to_bf16(std::vector<float>& v) {
  std::vector<uint16_t> b(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    b[i] = f32_to_bf16(v[i]);
    v[i] = bf16_to_f32(b[i]);
  }
  return b;
}
inline std::vector<float> from_bf16(const std::vector<uint16_t>& b) {
  std::vector<float> v(b.size());
  for (size_t i = 0; i < b.size(); ++i) v[i] = bf16_to_f32(b[i]);
  return v;
}

// ‖a − b‖ / ‖b‖ (NaN in a gives NaN: every EXPECT_LT fails).
inline double rel(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return INFINITY;
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = static_cast<double>(a[i]) - b[i];
    num += d * d;
    den += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-30);
}

}  // namespace graft::testing::cudatest
