// Helpers for CPU op tests: seeded random tensors and relative-error norms.
#pragma once

#include <cmath>
#include <vector>
#include <random>

#include "graft/tensor.hpp"

namespace graft::testing {

inline Tensor randn(const Dims& shape, uint32_t seed, float stddev = 1.0f) {
  Tensor t = Tensor::empty(shape, DType::F32);
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.f, stddev);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = g(rng);
  return t;
}

// Fills with NaN so that an op that forgets to write an element is caught.
inline Tensor poisoned(const Dims& shape, DType dt = DType::F32) {
  Tensor t = Tensor::empty(shape, dt);
  if (dt == DType::F32) {
    float* p = t.data<float>();
    for (int64_t i = 0; i < t.numel(); ++i) p[i] = std::nanf("");
  }
  return t;
}

// ||a - b|| / ||b|| over all elements (b is the reference).
inline double rel_err(const float* a, const double* b, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}

// y[T, N] = x[T, K] · wᵀ (w [N, K] f32, e.g. a dequantized weight), accumulated in double: the reference of the
// quantized matmul kernels.
inline std::vector<double> matmul_ref(const Tensor& x, const Tensor& w) {
  const int64_t T = x.size(0), K = x.size(1), N = w.size(0);
  std::vector<double> y(static_cast<size_t>(T * N));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t n = 0; n < N; ++n) {
      double s = 0;
      for (int64_t k = 0; k < K; ++k) s += double(x.data<float>()[t * K + k]) * w.data<float>()[n * K + k];
      y[static_cast<size_t>(t * N + n)] = s;
    }
  return y;
}

}  // namespace graft::testing
