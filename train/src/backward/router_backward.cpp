// MoE router of the training forward and its backward, for every RouterKind: the selection is made
// by Backend::moe_route with the family's RouterParams (what Model::forward runs, DeepSeek-V3's
// correction bias included); the gradient flows through the selected combine weights only
// (Backend::moe_route_bwd, the same formulas as train::ref::router_weights_bwd,
// research/training-anchors.md §6.6) and on through the frozen router weight into the hidden states.
#include "backward_internal.hpp"

namespace graft::train::detail {

LinearWeight dense_weight(const Tensor& w) {
  LinearWeight lw;
  lw.out = w.size(0);
  lw.in = w.size(1);
  lw.dense = w;
  return lw;
}

ops::RouterParams router_params(const Ctx& c, const model::LayerWeights& L) {
  ops::RouterParams rp = c.spec.router_params;
  rp.correction_bias = L.moe.correction_bias.defined() ? L.moe.correction_bias.data<float>() : nullptr;
  return rp;
}

void router_fwd(const Ctx& c, const model::LayerWeights& L, const Tensor& x2, MoeActs& A) {
  const ops::RouterParams rp = router_params(c, L);
  const int64_t E = L.moe.experts.num_experts();
  A.logits = act(c.be, c.T, E);
  c.be.linear(x2, dense_weight(L.moe.router), LoraBatch{}, A.logits);
  A.ids = c.be.empty({c.T, rp.top_k}, DType::I32);
  A.w = f32(c.be, c.T, rp.top_k);  // combine weights: fp32 on every backend
  c.be.moe_route(A.logits, rp, A.ids, A.w);
}

Tensor router_bwd(const Ctx& c, const model::LayerWeights& L, const Tensor& x2, const MoeActs& A, const Tensor& dw) {
  const ops::RouterParams rp = router_params(c, L);
  Tensor dlogits = act(c.be, c.T, L.moe.experts.num_experts());
  c.be.moe_route_bwd(A.logits, rp, A.ids, dw, dlogits);
  const LinearWeight router = dense_weight(L.moe.router);
  return lin_bwd(c.be, x2, dlogits, Lin{&router});
}

}  // namespace graft::train::detail
