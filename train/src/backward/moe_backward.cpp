// MoE block of the training forward and its backward: router (router_backward.cpp), routed experts
// (SwiGLU, per-expert LoRA) combined with the router weights on their output — or, for Llama 4
// (FamilySpec::scale_expert_input), with the weight applied to the expert's INPUT and a plain sum
// of the outputs — plus the shared expert(s): Qwen2-MoE's sigmoid-gated one, DeepSeek's and
// Llama 4's ungated ones.
#include <cmath>

#include "backward_internal.hpp"
#include "graft/cpu/ops.hpp"
#include "graft/cpu/reference_bwd.hpp"

namespace graft::train::detail {
namespace {
using model::ExpertProj;
using model::Module;

// o[i] = x[tok[i]] · (scale ? scale[flat[i]] : 1).   x [T, H]  ->  [n, H]
Tensor gather_rows(const Tensor& x, const std::vector<int32_t>& tok, const std::vector<int64_t>& flat, const float* scale) {
  const int64_t H = x.size(1), n = static_cast<int64_t>(tok.size());
  Tensor o = f32(n, H);
  for (int64_t i = 0; i < n; ++i) {
    const float s = scale ? scale[flat[static_cast<size_t>(i)]] : 1.0f;
    const float* src = x.data<float>() + tok[static_cast<size_t>(i)] * H;
    for (int64_t h = 0; h < H; ++h) o.data<float>()[i * H + h] = src[h] * s;
  }
  return o;
}
}  // namespace

Tensor moe_fwd(const Ctx& c, int l, const model::LayerWeights& LW, const Tensor& x, MoeActs& A) {
  const int64_t T = c.T, H = x.size(1), E = LW.moe.experts.num_experts();
  router_fwd(c, LW, x, A);
  const int k = static_cast<int>(A.ids.size(1));
  const bool scale_in = c.spec.scale_expert_input;
  const auto plan = cpu::moe_permute_plan(A.ids, static_cast<int>(E));
  A.experts.assign(static_cast<size_t>(E), {});
  Tensor out = Tensor::zeros({T, H}, DType::F32);
  const float* w = A.w.data<float>();
  for (int64_t e = 0; e < E; ++e) {
    const int32_t n = plan.counts[static_cast<size_t>(e)];
    if (n == 0) continue;
    ExpertActs& X = A.experts[static_cast<size_t>(e)];
    for (int32_t i = 0; i < n; ++i) {
      X.flat.push_back(plan.order[static_cast<size_t>(plan.offsets[static_cast<size_t>(e)] + i)]);
      X.tok.push_back(static_cast<int32_t>(X.flat.back() / k));
    }
    X.x = gather_rows(x, X.tok, X.flat, scale_in ? w : nullptr);
    const int ei = static_cast<int>(e);
    const auto& ex = LW.moe.experts;
    X.g = lin_fwd(X.x, c.expert_lin(l, ex.gate[static_cast<size_t>(e)], ExpertProj::Gate, ei, X.tok));
    X.u = lin_fwd(X.x, c.expert_lin(l, ex.up[static_cast<size_t>(e)], ExpertProj::Up, ei, X.tok));
    X.a = f32(n, X.g.size(1));
    c.be.swiglu(X.g, X.u, X.a);
    X.y = lin_fwd(X.a, c.expert_lin(l, ex.down[static_cast<size_t>(e)], ExpertProj::Down, ei, X.tok));
    for (int32_t i = 0; i < n; ++i) {
      const int64_t t = X.tok[static_cast<size_t>(i)];
      const float wt = scale_in ? 1.0f : w[X.flat[static_cast<size_t>(i)]];
      for (int64_t h = 0; h < H; ++h) out.data<float>()[t * H + h] += wt * X.y.data<float>()[i * H + h];
    }
  }
  if (LW.moe.shared.defined()) {
    const auto& S = LW.moe.shared;
    A.sg = lin_fwd(x, c.lin(l, S.gate, Module::SharedGate));
    A.su = lin_fwd(x, c.lin(l, S.up, Module::SharedUp));
    A.sa = f32(T, A.sg.size(1));
    c.be.swiglu(A.sg, A.su, A.sa);
    A.sy = lin_fwd(A.sa, c.lin(l, S.down, Module::SharedDown));
    Tensor sy = A.sy.clone();
    if (LW.moe.shared_gate.defined()) {
      A.sgate = f32(T, 1);
      c.be.linear(x, dense_weight(LW.moe.shared_gate), LoraBatch{}, A.sgate);
      for (int64_t t = 0; t < T; ++t) {
        float& gt = A.sgate.data<float>()[t];
        gt = 1.0f / (1.0f + std::exp(-gt));
        for (int64_t h = 0; h < H; ++h) sy.data<float>()[t * H + h] *= gt;
      }
    }
    add(out, sy);
  }
  return out;
}

Tensor moe_bwd(const Ctx& c, int l, const model::LayerWeights& LW, const Tensor& x, const Tensor& dout, MoeActs& A) {
  const int64_t T = c.T, H = x.size(1), E = LW.moe.experts.num_experts();
  const int k = static_cast<int>(A.ids.size(1));
  const bool scale_in = c.spec.scale_expert_input;
  const float* w = A.w.data<float>();
  const float* dop = dout.data<float>();
  Tensor dx = Tensor::zeros({T, H}, DType::F32);
  Tensor dw = Tensor::zeros({T, k}, DType::F32);
  for (int64_t e = 0; e < E; ++e) {
    ExpertActs& X = A.experts[static_cast<size_t>(e)];
    const int64_t n = static_cast<int64_t>(X.flat.size());
    if (n == 0) continue;
    // combine: out[t] += (w or 1)·y  ->  dy, and dw from the output side
    Tensor dy = f32(n, H);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t f = X.flat[static_cast<size_t>(i)], t = X.tok[static_cast<size_t>(i)];
      const float wt = scale_in ? 1.0f : w[f];
      double d = 0;
      for (int64_t h = 0; h < H; ++h) {
        dy.data<float>()[i * H + h] = wt * dop[t * H + h];
        d += double(dop[t * H + h]) * X.y.data<float>()[i * H + h];
      }
      if (!scale_in) dw.data<float>()[f] = static_cast<float>(d);
    }
    const int ei = static_cast<int>(e);
    const auto& ex = LW.moe.experts;
    Tensor da = lin_bwd(c.be, X.a, dy, c.expert_lin(l, ex.down[static_cast<size_t>(e)], ExpertProj::Down, ei, X.tok));
    Tensor dg = f32(n, X.g.size(1)), du = f32(n, X.g.size(1));
    c.be.swiglu_bwd(X.g, X.u, da, dg, du);
    Tensor dxe = lin_bwd(c.be, X.x, dg, c.expert_lin(l, ex.gate[static_cast<size_t>(e)], ExpertProj::Gate, ei, X.tok));
    add(dxe, lin_bwd(c.be, X.x, du, c.expert_lin(l, ex.up[static_cast<size_t>(e)], ExpertProj::Up, ei, X.tok)));
    // input side: x_e = x[t]·(w or 1)  ->  dx[t] += (w or 1)·dx_e, and dw = <x[t], dx_e> for Llama 4
    for (int64_t i = 0; i < n; ++i) {
      const int64_t f = X.flat[static_cast<size_t>(i)], t = X.tok[static_cast<size_t>(i)];
      const float s = scale_in ? w[f] : 1.0f;
      double d = 0;
      for (int64_t h = 0; h < H; ++h) {
        const float g = dxe.data<float>()[i * H + h];
        dx.data<float>()[t * H + h] += s * g;
        d += double(x.data<float>()[t * H + h]) * g;
      }
      if (scale_in) dw.data<float>()[f] = static_cast<float>(d);
    }
  }
  add(dx, router_bwd(c, LW, x, A, dw));
  if (LW.moe.shared.defined()) {
    const auto& S = LW.moe.shared;
    Tensor dsy = dout.clone();
    if (LW.moe.shared_gate.defined()) {
      Tensor dgl = f32(T, 1);
      for (int64_t t = 0; t < T; ++t) {
        const float gt = A.sgate.data<float>()[t];
        double d = 0;
        for (int64_t h = 0; h < H; ++h) {
          d += double(dop[t * H + h]) * A.sy.data<float>()[t * H + h];
          dsy.data<float>()[t * H + h] *= gt;
        }
        dgl.data<float>()[t] = static_cast<float>(d * gt * (1.0f - gt));
      }
      const LinearWeight gw = dense_weight(LW.moe.shared_gate);
      add(dx, lin_bwd(c.be, x, dgl, Lin{&gw}));
    }
    Tensor da = lin_bwd(c.be, A.sa, dsy, c.lin(l, S.down, Module::SharedDown));
    Tensor dg = f32(T, A.sg.size(1)), du = f32(T, A.sg.size(1));
    c.be.swiglu_bwd(A.sg, A.su, da, dg, du);
    add(dx, lin_bwd(c.be, x, dg, c.lin(l, S.gate, Module::SharedGate)));
    add(dx, lin_bwd(c.be, x, du, c.lin(l, S.up, Module::SharedUp)));
  }
  return dx;
}

}  // namespace graft::train::detail
