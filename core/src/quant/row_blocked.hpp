// Shared by the row-blocked lm_head formats (q8, q6): a block's absmax with the non-finite check, and whole-weight
// dequantization from their dequantize_rows.
#pragma once

#include <algorithm>
#include <cmath>
#include <span>

#include "graft/error.hpp"
#include "graft/tensor.hpp"

namespace graft::quant_detail {

// max |src[k]| over k in [k0, k1) of row n; throws naming `what`, the element and the shape on a non-finite value.
inline float block_absmax(const float* src, int64_t n, int64_t k0, int64_t k1, const Dims& shape, const char* what) {
  float amax = 0.0f;
  for (int64_t k = k0; k < k1; ++k) {
    GRAFT_CHECK(std::isfinite(src[k]), "{}: weight [{}, {}] of {} is {}: the checkpoint holds a non-finite value",
                what, n, k, shape.str(), src[k]);
    amax = std::max(amax, std::fabs(src[k]));
  }
  return amax;
}

// out[numel] = every row of w; `what` names the function for the size error.
template <class W, class Rows>
void dequantize_all(const W& w, std::span<float> out, const char* what, Rows rows) {
  GRAFT_CHECK(static_cast<int64_t>(out.size()) == w.shape.numel(), "{}: {} outputs for a weight of shape {}", what,
              out.size(), w.shape.str());
  rows(w, 0, w.rows(), out.data());
}

template <class W, class Rows>
Tensor dequantize_tensor(const W& w, Rows rows) {
  Tensor t = Tensor::empty(w.shape, DType::F32);
  rows(w, 0, w.rows(), t.data<float>());
  return t;
}

}  // namespace graft::quant_detail
