// One decoder layer of the training forward and its backward:
//   x1 = rmsnorm(h_in);  h_mid = h_in + attention(x1)  (standard or MLA);
//   x2 = rmsnorm(h_mid); h_out = h_mid + mlp(x2)       (dense SwiGLU or MoE).
#include "backward_internal.hpp"

namespace graft::train::detail {
namespace {
using model::Module;
}

Tensor layer_fwd(const Ctx& c, int l, const Tensor& h_in, LayerActs& A) {
  const auto& L = c.m.layers()[static_cast<size_t>(l)];
  const int64_t T = c.T, H = c.cfg.hidden_size;
  A.h_in = h_in;
  A.x1 = act(c.be, T, H);
  c.be.rmsnorm(h_in, L.input_norm, c.eps, A.x1);
  A.h_mid = c.spec.mla ? mla_fwd(c, l, L, A.x1, A.mla) : attention_fwd(c, l, L, A.x1, A.attn);
  c.be.add_acc(h_in, A.h_mid);  // h_mid = attention + h_in (a fresh tensor: no copy of h_in)
  A.x2 = act(c.be, T, H);
  c.be.rmsnorm(A.h_mid, L.post_norm, c.eps, A.x2);
  Tensor out;
  if (L.kind.moe) {
    out = moe_fwd(c, l, L, A.x2, A.moe);
  } else {
    A.g = lin_fwd(c.be, A.x2, c.lin(l, L.mlp.gate, Module::Gate));
    A.u = lin_fwd(c.be, A.x2, c.lin(l, L.mlp.up, Module::Up));
    A.a = act(c.be, T, A.g.size(1));
    c.be.swiglu(A.g, A.u, A.a);
    out = lin_fwd(c.be, A.a, c.lin(l, L.mlp.down, Module::Down));
  }
  c.be.add_acc(A.h_mid, out);  // h_out = mlp + h_mid
  return out;
}

Tensor layer_bwd(const Ctx& c, int l, Tensor dh, LayerActs& A) {
  const auto& L = c.m.layers()[static_cast<size_t>(l)];
  const int64_t T = c.T, H = c.cfg.hidden_size;
  Tensor dx2;
  if (L.kind.moe) {
    dx2 = moe_bwd(c, l, L, A.x2, dh, A.moe);
  } else {
    Tensor da = lin_bwd(c.be, A.a, dh, c.lin(l, L.mlp.down, Module::Down));
    Tensor dg = act(c.be, T, A.g.size(1)), du = act(c.be, T, A.g.size(1));
    c.be.swiglu_bwd(A.g, A.u, da, dg, du);
    dx2 = lin_bwd(c.be, A.x2, dg, c.lin(l, L.mlp.gate, Module::Gate));
    c.be.add_acc(lin_bwd(c.be, A.x2, du, c.lin(l, L.mlp.up, Module::Up)), dx2);
  }
  Tensor t = act(c.be, T, H);
  c.be.rmsnorm_bwd(A.h_mid, L.post_norm, dx2, c.eps, t);
  c.be.add_acc(t, dh);
  Tensor dx1 = c.spec.mla ? mla_bwd(c, l, L, A.x1, dh, A.mla) : attention_bwd(c, l, L, A.x1, dh, A.attn);
  c.be.rmsnorm_bwd(A.h_in, L.input_norm, dx1, c.eps, t);
  c.be.add_acc(t, dh);
  return dh;
}

}  // namespace graft::train::detail
