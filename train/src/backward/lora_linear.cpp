// The trainer's linear: frozen base (dense f32 or NF4, optional bias) plus a trainable LoRA with
// optional dropout on the LoRA branch input (PEFT semantics, lora_dropout.hpp), and its backward.
// Every op runs on the step's Backend; the dropout mask is drawn there from its counter-based key.
#include "backward_internal.hpp"

namespace graft::train::detail {
namespace {
// The dropout scales of the LoRA input (0 or 1/(1-p)).   x [n, in]  ->  [n, in]
Tensor mask_of(Backend& be, const Tensor& x, const Lin& l) {
  Tensor m = f32(be, x.size(0), x.size(1));
  be.dropout_mask(l.key, l.rows, l.dropout, m);
  return m;
}
}  // namespace

Tensor f32(Backend& be, int64_t rows, int64_t cols) { return be.empty({rows, cols}, DType::F32); }

Tensor zeros(Backend& be, int64_t rows, int64_t cols) {
  Tensor t = f32(be, rows, cols);
  be.fill(t, 0.0f);
  return t;
}
Tensor act(Backend& be, int64_t rows, int64_t cols) { return be.empty({rows, cols}, be.activation_dtype()); }
Tensor act_zeros(Backend& be, int64_t rows, int64_t cols) {
  Tensor t = act(be, rows, cols);
  be.fill(t, 0.0f);
  return t;
}

Tensor lin_fwd(Backend& be, const Tensor& x, const Lin& l) {
  Tensor y = act(be, x.size(0), l.w->out);
  be.linear(x, *l.w, LoraBatch{}, y);  // base (+ bias)
  if (!l.p) return y;
  if (l.dropout <= 0.0) {
    be.lora_acc(x, l.p->f, y);
    return y;
  }
  Tensor xd = act(be, x.size(0), x.size(1));
  be.mul(x, mask_of(be, x, l), xd);  // x ⊙ mask (the mask is fp32 on every backend)
  be.lora_acc(xd, l.p->f, y);
  return y;
}

Tensor lin_bwd(Backend& be, const Tensor& x, const Tensor& dy, const Lin& l) {
  Tensor dx = act(be, x.size(0), l.w->in);
  if (!l.p) {
    be.linear_bwd(x, dy, *l.w, nullptr, Tensor(), dx, nullptr, nullptr);
    return dx;
  }
  if (l.dropout <= 0.0) {
    be.linear_bwd(x, dy, *l.w, &l.p->f, Tensor(), dx, &l.p->da, &l.p->db);
    return dx;
  }
  be.linear_bwd(x, dy, *l.w, &l.p->f, mask_of(be, x, l), dx, &l.p->da, &l.p->db);
  return dx;
}

}  // namespace graft::train::detail
