// Small tensor helpers shared by the model and adapter tests (tests/core/model, tests/adapters and
// everything that includes tests/adapters/adapter_test_util.hpp): seeded normal F32 tensors and the
// relative L2 error of two float arrays.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>

#include "graft/tensor.hpp"

namespace graft::testutil {

inline Tensor rnd(const Dims& s, std::mt19937& r, float sd) {
  Tensor t = Tensor::empty(s, DType::F32);
  std::normal_distribution<float> g(0, sd);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = g(r);
  return t;
}

// ‖a − b‖ / ‖b‖ over n floats, accumulated in double.
inline double rel(const float* a, const float* b, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) num += double(a[i] - b[i]) * (a[i] - b[i]), den += double(b[i]) * b[i];
  return std::sqrt(num / den);
}

}  // namespace graft::testutil
