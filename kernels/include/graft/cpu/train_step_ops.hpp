// CPU implementations of the Backend's training-step ops (graft/backend/backend.hpp, section
// "training step"): fill, mul, dropout masks, row gather / scatter / dot, column-block copies,
// sigmoid and its backward. fp32, contiguous. Contracts as on Backend.
#pragma once

#include <cstdint>
#include <span>

#include "graft/tensor.hpp"

namespace graft::cpu {

// y[:] = v.   y f32
void fill(Tensor& y, float v);
// y = x ⊙ m.   x, m, y same numel, f32; y may alias x
void mul(const Tensor& x, const Tensor& m, Tensor& y);
// out [n, cols] (=) dropout scales of graft/backend/dropout_hash.hpp; rows [n] or empty (0..n−1)
void dropout_mask(uint64_t key, std::span<const int32_t> rows, double p, Tensor& out);
// out[i] = x[rows[i]] · row_scale[i].   x [R, H], row_scale [n] or undefined -> out [n, H] (=)
void gather_rows(const Tensor& x, std::span<const int32_t> rows, const Tensor& row_scale, Tensor& out);
// out[rows[i]] += x[i] · row_scale[i], i ascending.   x [n, H] -> out [R, H] (+=)
void scatter_add_rows(const Tensor& x, std::span<const int32_t> rows, const Tensor& row_scale, Tensor& out);
// out[i] = Σ_h x[rows[i], h] · y[i, h] in double.   x [R, H], y [n, H] -> out [n] (=)
void rows_dot(const Tensor& x, std::span<const int32_t> rows, const Tensor& y, Tensor& out);
// dst[r, dst_col + j] = src[r, src_col + j], j < width.   src [R, Cs], dst [R, Cd] over the last dim
void copy_cols(const Tensor& src, int64_t src_col, int64_t width, Tensor& dst, int64_t dst_col);
// out[rows[i]] = x[i] (=), rows distinct.   x [n, C], rows [n] -> out [R, C]
void set_rows(const Tensor& x, std::span<const int32_t> rows, Tensor& out);
// y = 1/(1 + exp(−x)); y may alias x
void sigmoid(const Tensor& x, Tensor& y);
// dx = dy·y·(1 − y)
void sigmoid_bwd(const Tensor& y, const Tensor& dy, Tensor& dx);

}  // namespace graft::cpu
