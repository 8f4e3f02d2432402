// CPU training-step ops (graft/cpu/train_step_ops.hpp): plain loops in a fixed order, so results are
// bit-reproducible (the training step's gradient-checkpointing test compares bytes).
#include "graft/cpu/train_step_ops.hpp"

#include <algorithm>
#include <cmath>

#include "graft/backend/dropout_hash.hpp"
#include "graft/error.hpp"

namespace graft::cpu {
namespace {
void check_f32(const Tensor& t, const char* what) {
  GRAFT_CHECK(t.defined() && t.dtype() == DType::F32 && t.is_contiguous(), "{}: {} must be a contiguous f32 tensor",
              what, t.defined() ? t.describe() : std::string("undefined"));
}
int64_t rows_of(const Tensor& t) { return t.numel() / std::max<int64_t>(t.size(-1), 1); }
// The scale of row i: row_scale[i], or 1 when undefined.   row_scale [n] or [n, 1]
const float* scales(const Tensor& row_scale, int64_t n, const char* what) {
  if (!row_scale.defined()) return nullptr;
  check_f32(row_scale, what);
  GRAFT_CHECK(row_scale.numel() == n, "{}: {} row scales for {} rows", what, row_scale.numel(), n);
  return row_scale.data<float>();
}
int64_t count(std::span<const int32_t> rows, int64_t identity_n) {
  return rows.empty() ? identity_n : static_cast<int64_t>(rows.size());
}
int64_t row_at(std::span<const int32_t> rows, int64_t i, int64_t R, const char* what) {
  const int64_t r = rows.empty() ? i : rows[static_cast<size_t>(i)];
  GRAFT_CHECK(r >= 0 && r < R, "{}: row index {} outside [0, {})", what, r, R);
  return r;
}
}  // namespace

void fill(Tensor& y, float v) {
  check_f32(y, "fill");
  std::fill_n(y.data<float>(), y.numel(), v);
}

void mul(const Tensor& x, const Tensor& m, Tensor& y) {
  check_f32(x, "mul: x");
  check_f32(m, "mul: m");
  check_f32(y, "mul: y");
  GRAFT_CHECK(x.numel() == m.numel() && y.numel() == x.numel(), "mul: x {}, m {}, y {} must have equal sizes",
              x.describe(), m.describe(), y.describe());
  const float* a = x.data<float>();
  const float* b = m.data<float>();
  float* o = y.data<float>();
  for (int64_t i = 0; i < x.numel(); ++i) o[i] = a[i] * b[i];
}

void dropout_mask(uint64_t key, std::span<const int32_t> rows, double p, Tensor& out) {
  check_f32(out, "dropout_mask: out");
  GRAFT_CHECK(out.ndim() == 2, "dropout_mask: out {} must be [n, cols]", out.describe());
  GRAFT_CHECK_FIX(p >= 0.0 && p < 1.0, "use a dropout probability in [0, 1)", "dropout_mask: p = {}", p);
  const int64_t n = out.size(0);
  GRAFT_CHECK(rows.empty() || static_cast<int64_t>(rows.size()) == n, "dropout_mask: {} row ids for {} rows",
              rows.size(), n);
  dropout_scales<float>(key, rows, n, out.size(1), p, out.data<float>());
}

void gather_rows(const Tensor& x, std::span<const int32_t> rows, const Tensor& row_scale, Tensor& out) {
  check_f32(x, "gather_rows: x");
  check_f32(out, "gather_rows: out");
  const int64_t H = x.size(-1), R = rows_of(x), n = count(rows, R);
  GRAFT_CHECK(out.numel() == n * H && out.size(-1) == H, "gather_rows: out {} must be [{}, {}]", out.describe(), n, H);
  const float* s = scales(row_scale, n, "gather_rows");
  const float* xp = x.data<float>();
  float* o = out.data<float>();
  for (int64_t i = 0; i < n; ++i) {
    const float* src = xp + row_at(rows, i, R, "gather_rows") * H;
    float* dst = o + i * H;
    if (s) {
      for (int64_t h = 0; h < H; ++h) dst[h] = src[h] * s[i];
    } else {
      std::copy_n(src, H, dst);
    }
  }
}

void scatter_add_rows(const Tensor& x, std::span<const int32_t> rows, const Tensor& row_scale, Tensor& out) {
  check_f32(x, "scatter_add_rows: x");
  check_f32(out, "scatter_add_rows: out");
  const int64_t H = x.size(-1), n = rows_of(x), R = rows_of(out);
  GRAFT_CHECK(out.size(-1) == H, "scatter_add_rows: x {} and out {} differ in the last dim", x.describe(), out.describe());
  GRAFT_CHECK(rows.empty() ? n == R : static_cast<int64_t>(rows.size()) == n, "scatter_add_rows: {} row ids for x {}",
              rows.size(), x.describe());
  const float* s = scales(row_scale, n, "scatter_add_rows");
  const float* xp = x.data<float>();
  float* o = out.data<float>();
  for (int64_t i = 0; i < n; ++i) {
    const float* src = xp + i * H;
    float* dst = o + row_at(rows, i, R, "scatter_add_rows") * H;
    if (s) {
      for (int64_t h = 0; h < H; ++h) dst[h] += s[i] * src[h];
    } else {
      for (int64_t h = 0; h < H; ++h) dst[h] += src[h];
    }
  }
}

void rows_dot(const Tensor& x, std::span<const int32_t> rows, const Tensor& y, Tensor& out) {
  check_f32(x, "rows_dot: x");
  check_f32(y, "rows_dot: y");
  check_f32(out, "rows_dot: out");
  const int64_t H = x.size(-1), R = rows_of(x), n = rows_of(y);
  GRAFT_CHECK(y.size(-1) == H && out.numel() == n && count(rows, R) == n,
              "rows_dot: x {}, {} row ids, y {}, out {} do not fit [R, H], [n], [n, H], [n]", x.describe(), rows.size(),
              y.describe(), out.describe());
  const float* xp = x.data<float>();
  const float* yp = y.data<float>();
  for (int64_t i = 0; i < n; ++i) {
    const float* a = xp + row_at(rows, i, R, "rows_dot") * H;
    const float* b = yp + i * H;
    double d = 0;
    for (int64_t h = 0; h < H; ++h) d += double(a[h]) * b[h];
    out.data<float>()[i] = static_cast<float>(d);
  }
}

void copy_cols(const Tensor& src, int64_t src_col, int64_t width, Tensor& dst, int64_t dst_col) {
  check_f32(src, "copy_cols: src");
  check_f32(dst, "copy_cols: dst");
  const int64_t Cs = src.size(-1), Cd = dst.size(-1), R = rows_of(src);
  GRAFT_CHECK(rows_of(dst) == R && width >= 0 && src_col >= 0 && dst_col >= 0 && src_col + width <= Cs &&
                  dst_col + width <= Cd,
              "copy_cols: columns [{}, {}) of {} into [{}, {}) of {} do not fit", src_col, src_col + width,
              src.describe(), dst_col, dst_col + width, dst.describe());
  const float* s = src.data<float>();
  float* d = dst.data<float>();
  for (int64_t r = 0; r < R; ++r) std::copy_n(s + r * Cs + src_col, width, d + r * Cd + dst_col);
}

void set_rows(const Tensor& x, std::span<const int32_t> rows, Tensor& out) {
  check_f32(x, "set_rows: x");
  check_f32(out, "set_rows: out");
  const int64_t C = x.size(-1), n = rows_of(x), R = rows_of(out);
  GRAFT_CHECK(out.size(-1) == C && static_cast<int64_t>(rows.size()) == n,
              "set_rows: x {} ({} row ids) and out {} must share the last dim", x.describe(), rows.size(), out.describe());
  const float* xp = x.data<float>();
  float* o = out.data<float>();
  for (int64_t i = 0; i < n; ++i) std::copy_n(xp + i * C, C, o + row_at(rows, i, R, "set_rows") * C);
}

void sigmoid(const Tensor& x, Tensor& y) {
  check_f32(x, "sigmoid: x");
  check_f32(y, "sigmoid: y");
  GRAFT_CHECK(x.numel() == y.numel(), "sigmoid: x {} and y {} differ", x.describe(), y.describe());
  const float* a = x.data<float>();
  float* o = y.data<float>();
  for (int64_t i = 0; i < x.numel(); ++i) o[i] = 1.0f / (1.0f + std::exp(-a[i]));
}

void sigmoid_bwd(const Tensor& y, const Tensor& dy, Tensor& dx) {
  check_f32(y, "sigmoid_bwd: y");
  check_f32(dy, "sigmoid_bwd: dy");
  check_f32(dx, "sigmoid_bwd: dx");
  GRAFT_CHECK(dy.numel() == y.numel() && dx.numel() == y.numel(), "sigmoid_bwd: y {}, dy {}, dx {} must have equal sizes",
              y.describe(), dy.describe(), dx.describe());
  const float* s = y.data<float>();
  const float* g = dy.data<float>();
  float* o = dx.data<float>();
  for (int64_t i = 0; i < y.numel(); ++i) o[i] = g[i] * s[i] * (1.0f - s[i]);
}

}  // namespace graft::cpu
