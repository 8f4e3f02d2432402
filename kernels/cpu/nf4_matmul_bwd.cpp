// CPU reference: NF4 linear + LoRA, forward (composition of existing ops) and backward (fp32, Eigen).
#include <Eigen/Core>

#include <algorithm>
#include <vector>

#include "graft/cpu/nf4_matmul_ref.hpp"
#include "graft/cpu/ops.hpp"

namespace graft::cpu {
namespace {
using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using MapC = Eigen::Map<const RowMat>;
using Map = Eigen::Map<RowMat>;

void check2d(const Tensor& t, const char* what, int64_t rows, int64_t cols) {
  GRAFT_CHECK(t.dtype() == DType::F32 && t.ndim() == 2 && t.is_contiguous() && t.device().is_cpu(),
              "{} must be a contiguous 2-d f32 host tensor, got {}", what, t.describe());
  GRAFT_CHECK(t.size(0) == rows && t.size(1) == cols, "{} {} must be [{}, {}]", what, t.describe(), rows, cols);
}
bool has_lora(const Tensor& a, const Tensor& b) {
  const bool ha = a.defined() && a.numel() > 0, hb = b.defined() && b.numel() > 0;
  GRAFT_CHECK(ha == hb, "nf4_matmul: LoRA a and b must be given together");
  return ha;
}
}  // namespace

void nf4_matmul_fwd(const Tensor& x, const nf4::QuantizedWeight& w, const Tensor& bias, const Tensor& a,
                    const Tensor& b, float scale, Tensor& y) {
  linear_nf4(x, w, y);
  const int64_t T = x.size(0), N = w.shape[0];
  if (bias.defined() && bias.numel() > 0) {
    GRAFT_CHECK(bias.dtype() == DType::F32 && bias.numel() == N, "nf4_matmul_fwd: bias {} must be f32 [{}]",
                bias.describe(), N);
    float* yp = y.data<float>();
    const float* bp = bias.data<float>();
    for (int64_t t = 0; t < T; ++t)
      for (int64_t n = 0; n < N; ++n) yp[t * N + n] += bp[n];
  }
  if (has_lora(a, b)) lora_acc(x, a, b, scale, y);
}

void nf4_matmul_bwd(const Tensor& dy, const Tensor& x, const nf4::QuantizedWeight& w, const Tensor& a,
                    const Tensor& b, float scale, Tensor& dx, Tensor* da, Tensor* db) {
  GRAFT_CHECK(w.shape.size() == 2, "nf4_matmul_bwd: weight must be 2-d, got {}", w.shape.str());
  const int64_t N = w.shape[0], K = w.shape[1];
  GRAFT_CHECK(dy.ndim() == 2, "nf4_matmul_bwd: dy must be 2-d, got {}", dy.describe());
  const int64_t T = dy.size(0);
  check2d(dy, "nf4_matmul_bwd: dy", T, N);
  check2d(x, "nf4_matmul_bwd: x", T, K);
  check2d(dx, "nf4_matmul_bwd: dx", T, K);
  const bool lora = has_lora(a, b);
  const int64_t r = lora ? a.size(0) : 0;
  if (lora) {
    check2d(a, "nf4_matmul_bwd: a", r, K);
    check2d(b, "nf4_matmul_bwd: b", N, r);
  }
  MapC DY(dy.data<float>(), T, N), X(x.data<float>(), T, K);
  Map DX(dx.data<float>(), T, K);
  DX.setZero();

  // dX = dY·W, W dequantized in 64-row panels: dX += dY[:, panel] · W[panel, :]
  const std::vector<float> absmax = nf4::block_absmax(w);
  const auto& code = nf4::code();
  constexpr int64_t kPanel = 64;
  std::vector<float> buf(static_cast<size_t>(kPanel * K));
  for (int64_t r0 = 0; r0 < N; r0 += kPanel) {
    const int64_t rows = std::min(kPanel, N - r0);
    for (int64_t i = 0; i < rows * K; ++i) {
      const int64_t e = r0 * K + i;
      const uint8_t byte = w.packed[static_cast<size_t>(e / 2)];
      const uint8_t nib = (e & 1) ? (byte & 0x0f) : (byte >> 4);
      buf[static_cast<size_t>(i)] = code[nib] * absmax[static_cast<size_t>(e / w.blocksize)];
    }
    DX.noalias() += DY.middleCols(r0, rows) * MapC(buf.data(), rows, K);
  }

  if (!lora) {
    if (da) GRAFT_FAIL("", "nf4_matmul_bwd: da requested without LoRA weights");
    if (db) GRAFT_FAIL("", "nf4_matmul_bwd: db requested without LoRA weights");
    return;
  }
  MapC A(a.data<float>(), r, K), B(b.data<float>(), N, r);
  const RowMat DYB = DY * B;  // [T, r]
  DX.noalias() += scale * (DYB * A);
  if (da) {
    check2d(*da, "nf4_matmul_bwd: da", r, K);
    Map(da->data<float>(), r, K).noalias() = scale * (DYB.transpose() * X);
  }
  if (db) {
    check2d(*db, "nf4_matmul_bwd: db", N, r);
    const RowMat XA = X * A.transpose();  // [T, r]
    Map(db->data<float>(), N, r).noalias() = scale * (DY.transpose() * XA);
  }
}

}  // namespace graft::cpu
