// MoE block of the training forward and its backward: router (router_backward.cpp), routed experts
// (SwiGLU, per-expert LoRA) combined with the router weights on their output — or, for Llama 4
// (FamilySpec::scale_expert_input), with the weight applied to the expert's INPUT and a plain sum
// of the outputs — plus the shared expert(s): Qwen2-MoE's sigmoid-gated one, DeepSeek's and
// Llama 4's ungated ones.
#include "backward_internal.hpp"
#include "graft/model/expert_parallel.hpp"

namespace graft::train::detail {
namespace {
using model::ExpertProj;
using model::Module;
void shared_fwd(const Ctx& c, int l, const model::LayerWeights& LW, const Tensor& x, MoeActs& A, Tensor& out);
}  // namespace

Tensor expert_rows(const Ctx& c, const ops::MoePermutation& plan, int64_t e, int k, const Tensor& x, const Tensor& w_flat,
                   ExpertActs& X) {
  const int32_t n = plan.counts[static_cast<size_t>(e)];
  for (int32_t i = 0; i < n; ++i) {
    X.flat.push_back(plan.order[static_cast<size_t>(plan.offsets[static_cast<size_t>(e)] + i)]);
    X.tok.push_back(X.flat.back() / k);
  }
  X.w = f32(c.be, n, 1);
  c.be.gather_rows(w_flat, X.flat, Tensor(), X.w);  // combine weight of each row
  Tensor xe = act(c.be, n, x.size(1));
  c.be.gather_rows(x, X.tok, c.spec.scale_expert_input ? X.w : Tensor(), xe);
  return xe;
}

Tensor moe_fwd(const Ctx& c, int l, const model::LayerWeights& LW, const Tensor& x, MoeActs& A) {
  const int64_t T = c.T, H = x.size(1), E = LW.moe.experts.num_experts();
  router_fwd(c, LW, x, A);
  const int k = static_cast<int>(A.ids.size(1));
  const bool scale_in = c.spec.scale_expert_input;
  if (const model::ExpertParallel* ep = c.m.expert_parallel(); ep && ep->size() > 1) {
    Tensor out = moe_routed_fwd_sharded(c, l, LW, x, A);
    shared_fwd(c, l, LW, x, A, out);
    return out;
  }
  // Host metadata: which (token, slot) rows each expert gets; the per-expert tensors are sized by it.
  const ops::MoePermutation plan = c.be.moe_permute_plan(A.ids, static_cast<int>(E));
  A.experts.assign(static_cast<size_t>(E), {});
  Tensor out = act_zeros(c.be, T, H);
  const Tensor w_flat = A.w.reshape({T * k, 1});
  for (int64_t e = 0; e < E; ++e) {
    const int32_t n = plan.counts[static_cast<size_t>(e)];
    if (n == 0) continue;
    ExpertActs& X = A.experts[static_cast<size_t>(e)];
    X.x = expert_rows(c, plan, e, k, x, w_flat, X);
    const int ei = static_cast<int>(e);
    const auto& ex = LW.moe.experts;
    X.g = lin_fwd(c.be, X.x, c.expert_lin(l, ex.gate[static_cast<size_t>(e)], ExpertProj::Gate, ei, X.tok));
    X.u = lin_fwd(c.be, X.x, c.expert_lin(l, ex.up[static_cast<size_t>(e)], ExpertProj::Up, ei, X.tok));
    X.a = act(c.be, n, X.g.size(1));
    c.be.swiglu(X.g, X.u, X.a);
    X.y = lin_fwd(c.be, X.a, c.expert_lin(l, ex.down[static_cast<size_t>(e)], ExpertProj::Down, ei, X.tok));
    c.be.scatter_add_rows(X.y, X.tok, scale_in ? Tensor() : X.w, out);  // out[t] += (w or 1)·y
  }
  shared_fwd(c, l, LW, x, A, out);
  return out;
}

namespace {
// The shared expert(s) of the block: out += (sigmoid gate or 1)·shared(x).
void shared_fwd(const Ctx& c, int l, const model::LayerWeights& LW, const Tensor& x, MoeActs& A, Tensor& out) {
  const int64_t T = c.T;
  if (LW.moe.shared.defined()) {
    const auto& S = LW.moe.shared;
    A.sg = lin_fwd(c.be, x, c.lin(l, S.gate, Module::SharedGate));
    A.su = lin_fwd(c.be, x, c.lin(l, S.up, Module::SharedUp));
    A.sa = act(c.be, T, A.sg.size(1));
    c.be.swiglu(A.sg, A.su, A.sa);
    A.sy = lin_fwd(c.be, A.sa, c.lin(l, S.down, Module::SharedDown));
    if (LW.moe.shared_gate.defined()) {
      A.sgate = act(c.be, T, 1);
      c.be.linear(x, dense_weight(LW.moe.shared_gate), LoraBatch{}, A.sgate);
      c.be.sigmoid(A.sgate, A.sgate);
      c.be.scatter_add_rows(A.sy, {}, A.sgate, out);  // out += sigmoid(gate)·sy
    } else {
      c.be.add_acc(A.sy, out);
    }
  }
}
}  // namespace

Tensor moe_bwd(const Ctx& c, int l, const model::LayerWeights& LW, const Tensor& x, const Tensor& dout, MoeActs& A) {
  const int64_t T = c.T, H = x.size(1), E = LW.moe.experts.num_experts();
  const int k = static_cast<int>(A.ids.size(1));
  const bool scale_in = c.spec.scale_expert_input;
  Tensor dx = act_zeros(c.be, T, H);
  Tensor dw = zeros(c.be, T * k, 1);  // each (token, slot) row belongs to one expert: written once
  if (const model::ExpertParallel* ep = c.m.expert_parallel(); ep && ep->size() > 1)
    dx = moe_routed_bwd_sharded(c, l, LW, x, dout, A, dw);
  else for (int64_t e = 0; e < E; ++e) {
    ExpertActs& X = A.experts[static_cast<size_t>(e)];
    const int64_t n = static_cast<int64_t>(X.flat.size());
    if (n == 0) continue;
    Tensor dwe = f32(c.be, n, 1);
    // combine: out[t] += (w or 1)·y  ->  dy = (w or 1)·dout[t], and dw = <dout[t], y> from the output side
    Tensor dy = act(c.be, n, H);
    c.be.gather_rows(dout, X.tok, scale_in ? Tensor() : X.w, dy);
    if (!scale_in) {
      c.be.rows_dot(dout, X.tok, X.y, dwe);
      c.be.scatter_add_rows(dwe, X.flat, Tensor(), dw);
    }
    const int ei = static_cast<int>(e);
    const auto& ex = LW.moe.experts;
    Tensor da = lin_bwd(c.be, X.a, dy, c.expert_lin(l, ex.down[static_cast<size_t>(e)], ExpertProj::Down, ei, X.tok));
    Tensor dg = act(c.be, n, X.g.size(1)), du = act(c.be, n, X.g.size(1));
    c.be.swiglu_bwd(X.g, X.u, da, dg, du);
    Tensor dxe = lin_bwd(c.be, X.x, dg, c.expert_lin(l, ex.gate[static_cast<size_t>(e)], ExpertProj::Gate, ei, X.tok));
    c.be.add_acc(lin_bwd(c.be, X.x, du, c.expert_lin(l, ex.up[static_cast<size_t>(e)], ExpertProj::Up, ei, X.tok)), dxe);
    // input side: x_e = x[t]·(w or 1)  ->  dx[t] += (w or 1)·dx_e, and dw = <x[t], dx_e> for Llama 4
    c.be.scatter_add_rows(dxe, X.tok, scale_in ? X.w : Tensor(), dx);
    if (scale_in) {
      c.be.rows_dot(x, X.tok, dxe, dwe);
      c.be.scatter_add_rows(dwe, X.flat, Tensor(), dw);
    }
  }
  c.be.add_acc(router_bwd(c, LW, x, A, dw.reshape({T, k})), dx);
  if (LW.moe.shared.defined()) {
    const auto& S = LW.moe.shared;
    Tensor dsy = dout;
    if (LW.moe.shared_gate.defined()) {
      // out += g·sy, g = sigmoid(x·w_gate):  dsy = g·dout,  d(gate logit) = <dout, sy>·g(1 − g)
      Tensor dot = f32(c.be, T, 1);  // rows_dot is fp32 on every backend
      c.be.rows_dot(dout, {}, A.sy, dot);
      Tensor dg1 = c.be.to_device(dot, c.be.activation_dtype());  // the same tensor on the CPU
      c.be.sigmoid_bwd(A.sgate, dg1, dg1);
      const LinearWeight gw = dense_weight(LW.moe.shared_gate);
      c.be.add_acc(lin_bwd(c.be, x, dg1, Lin{&gw}), dx);
      dsy = act(c.be, T, H);
      c.be.gather_rows(dout, {}, A.sgate, dsy);
    }
    Tensor da = lin_bwd(c.be, A.sa, dsy, c.lin(l, S.down, Module::SharedDown));
    Tensor dg = act(c.be, T, A.sg.size(1)), du = act(c.be, T, A.sg.size(1));
    c.be.swiglu_bwd(A.sg, A.su, da, dg, du);
    c.be.add_acc(lin_bwd(c.be, x, dg, c.lin(l, S.gate, Module::SharedGate)), dx);
    c.be.add_acc(lin_bwd(c.be, x, du, c.lin(l, S.up, Module::SharedUp)), dx);
  }
  return dx;
}

}  // namespace graft::train::detail
