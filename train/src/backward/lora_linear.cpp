// The trainer's linear: frozen base (dense f32 or NF4, optional bias) plus a trainable LoRA with
// optional dropout on the LoRA branch input (PEFT semantics, lora_dropout.hpp), and its backward.
#include <Eigen/Core>

#include "backward_internal.hpp"
#include "graft/cpu/ops.hpp"
#include "graft/train/lora_dropout.hpp"

namespace graft::train::detail {
namespace {
using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using MapC = Eigen::Map<const RowMat>;
using Map = Eigen::Map<RowMat>;

// The dropout scales of the LoRA input (0 or 1/(1-p)).   x [n, in]  ->  [n, in]
RowMat mask_of(const Tensor& x, const Lin& l) {
  RowMat m(x.size(0), x.size(1));
  dropout_scales<float>(l.key, l.rows, x.size(0), x.size(1), l.dropout, m.data());
  return m;
}
}  // namespace

Tensor f32(int64_t rows, int64_t cols) { return Tensor::empty({rows, cols}, DType::F32); }

void add(Tensor& y, const Tensor& x) {
  GRAFT_CHECK(y.numel() == x.numel(), "add: {} += {}", y.describe(), x.describe());
  float* yp = y.data<float>();
  const float* xp = x.data<float>();
  for (int64_t i = 0; i < y.numel(); ++i) yp[i] += xp[i];
}

Tensor lin_fwd(const Tensor& x, const Lin& l) {
  Tensor y = f32(x.size(0), l.w->out);
  if (l.w->quantized()) cpu::linear_nf4(x, *l.w->nf4, y);
  else cpu::linear(x, l.w->dense, Tensor(), y);
  if (l.w->bias.defined()) {
    Map Y(y.data<float>(), y.size(0), y.size(1));
    Y.rowwise() += Eigen::Map<const Eigen::RowVectorXf>(l.w->bias.data<float>(), l.w->out);
  }
  if (!l.p) return y;
  if (l.dropout <= 0.0) {
    cpu::lora_acc(x, l.p->f.a, l.p->f.b, l.p->f.scale, y);
    return y;
  }
  RowMat xd = MapC(x.data<float>(), x.size(0), x.size(1)).cwiseProduct(mask_of(x, l));
  Tensor xdt = Tensor::wrap(xd.data(), {x.size(0), x.size(1)}, DType::F32);
  cpu::lora_acc(xdt, l.p->f.a, l.p->f.b, l.p->f.scale, y);
  return y;
}

Tensor lin_bwd(Backend& be, const Tensor& x, const Tensor& dy, const Lin& l) {
  Tensor dx = f32(x.size(0), l.w->in);
  if (!l.p) {
    be.linear_bwd(x, dy, *l.w, nullptr, Tensor(), dx, nullptr, nullptr);
    return dx;
  }
  if (l.dropout <= 0.0) {
    be.linear_bwd(x, dy, *l.w, &l.p->f, Tensor(), dx, &l.p->da, &l.p->db);
    return dx;
  }
  RowMat m = mask_of(x, l);
  const Tensor mask = Tensor::wrap(m.data(), {x.size(0), x.size(1)}, DType::F32);
  be.linear_bwd(x, dy, *l.w, &l.p->f, mask, dx, &l.p->da, &l.p->db);
  return dx;
}

}  // namespace graft::train::detail
