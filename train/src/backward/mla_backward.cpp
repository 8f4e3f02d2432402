// DeepSeek multi-head latent attention, forward with saved activations and backward, in the naive
// (expanded) form Model::forward uses when kv_b is adapted:
//   q    = q_b(rmsnorm(q_a(x), q_a_norm))  or  q_proj(x)                  [T, nh, dn + dr]
//   ckv  = kv_a_proj_with_mqa(x) = [c | k_pe]                             [T, kv_lora_rank + dr]
//   k_h  = [kv_b(rmsnorm(c, kv_a_norm))_h[0:dn], rope(k_pe)],  v_h = kv_b(..)_h[dn:dn+dv]
//   out  = o_proj(softmax(scale · [q_nope, rope(q_pe)] · kᵀ + mask) · v)
// with RoPE on the rope dims in the family's (interleaved) layout and the yarn-aware softmax scale
// of FamilySpec::attn_scale. Every projection may carry a LoRA (Q, QA, QB, KVA, KVB, O).
#include <algorithm>
#include <cmath>

#include "backward_internal.hpp"
#include "graft/cpu/ops.hpp"
#include "graft/cpu/reference_bwd.hpp"
#include "graft/train/backward_ref.hpp"

namespace graft::train::detail {
namespace {
using model::Module;

struct MlaDims {
  int64_t nh, dn, dr, dv, dq, kvr;
};
MlaDims dims(const Ctx& c) {
  const auto& ml = c.cfg.mla;
  return {c.cfg.num_attention_heads, ml.qk_nope_head_dim, ml.qk_rope_head_dim, ml.v_head_dim, ml.qk_head_dim(), ml.kv_lora_rank};
}
float softmax_scale(const Ctx& c) {
  return c.spec.attn_scale != 0.0f ? c.spec.attn_scale : 1.0f / std::sqrt(static_cast<float>(c.cfg.mla.qk_head_dim()));
}
// Copies the last `w` dims of each head of src [T, nh, D] into / out of dst [T, nh, w].
void take_tail(const Tensor& src, int64_t w, Tensor& dst) {
  const int64_t rows = src.size(0) * src.size(1), D = src.size(2);
  for (int64_t i = 0; i < rows; ++i) std::copy_n(src.data<float>() + i * D + D - w, w, dst.data<float>() + i * w);
}
void put_tail(const Tensor& src, int64_t w, Tensor& dst) {
  const int64_t rows = dst.size(0) * dst.size(1), D = dst.size(2);
  for (int64_t i = 0; i < rows; ++i) std::copy_n(src.data<float>() + i * w, w, dst.data<float>() + i * D + D - w);
}
}  // namespace

Tensor mla_fwd(const Ctx& c, int l, const model::LayerWeights& L, const Tensor& x1, MlaActs& A) {
  const MlaDims d = dims(c);
  const int64_t T = c.T;
  Tensor q;
  if (L.attn.q_a.defined()) {
    A.qa = lin_fwd(x1, c.lin(l, L.attn.q_a, Module::QA));
    A.qa_n = f32(T, A.qa.size(1));
    c.be.rmsnorm(A.qa, L.attn.q_a_norm, c.eps, A.qa_n);
    q = lin_fwd(A.qa_n, c.lin(l, L.attn.q_b, Module::QB));
  } else {
    q = lin_fwd(x1, c.lin(l, L.attn.q, Module::Q));
  }
  A.q = q.reshape({T, d.nh, d.dq});
  Tensor qpe = Tensor::empty({T, d.nh, d.dr}, DType::F32);
  take_tail(A.q, d.dr, qpe);
  c.rope(qpe, static_cast<int>(d.dr));
  put_tail(qpe, d.dr, A.q);
  Tensor ckv = lin_fwd(x1, c.lin(l, L.attn.kv_a, Module::KVA));  // [T, kvr + dr]
  A.c = ckv.slice(1, 0, d.kvr).contiguous();
  A.c_n = f32(T, d.kvr);
  c.be.rmsnorm(A.c, L.attn.kv_a_norm, c.eps, A.c_n);
  Tensor kpe = ckv.slice(1, d.kvr, d.kvr + d.dr).contiguous().reshape({T, 1, d.dr});
  c.rope(kpe, static_cast<int>(d.dr));
  Tensor kv = lin_fwd(A.c_n, c.lin(l, L.attn.kv_b, Module::KVB));  // [T, nh·(dn + dv)]
  A.k = Tensor::empty({T, d.nh, d.dq}, DType::F32);
  A.v = Tensor::empty({T, d.nh, d.dv}, DType::F32);
  ref::mla_kv_fwd<float>(kv.data<float>(), kpe.data<float>(), T, d.nh, d.dn, d.dr, d.dv, A.k.data<float>(), A.v.data<float>());
  A.out = Tensor::empty({T, d.nh, d.dv}, DType::F32);
  c.be.attention(A.q, A.k, A.v, c.pos, c.pos, c.mask(L.kind), softmax_scale(c), A.out);
  return lin_fwd(A.out.reshape({T, d.nh * d.dv}), c.lin(l, L.attn.o, Module::O));
}

Tensor mla_bwd(const Ctx& c, int l, const model::LayerWeights& L, const Tensor& x1, const Tensor& dout, MlaActs& A) {
  const MlaDims d = dims(c);
  const int64_t T = c.T;
  Tensor dattn = lin_bwd(c.be, A.out.reshape({T, d.nh * d.dv}), dout, c.lin(l, L.attn.o, Module::O));
  Tensor dq = Tensor::empty({T, d.nh, d.dq}, DType::F32), dk = Tensor::empty({T, d.nh, d.dq}, DType::F32),
         dv = Tensor::empty({T, d.nh, d.dv}, DType::F32);
  c.be.attention_bwd(A.q, A.k, A.v, dattn.reshape({T, d.nh, d.dv}), c.pos, c.pos, c.mask(L.kind), softmax_scale(c), dq, dk, dv);
  // keys / values -> kv_b output and the shared RoPE key
  Tensor dkv = f32(T, d.nh * (d.dn + d.dv)), dkpe = Tensor::empty({T, 1, d.dr}, DType::F32);
  ref::mla_kv_bwd<float>(dk.data<float>(), dv.data<float>(), T, d.nh, d.dn, d.dr, d.dv, dkv.data<float>(), dkpe.data<float>());
  c.rope_bwd(dkpe, static_cast<int>(d.dr));
  Tensor dcn = lin_bwd(c.be, A.c_n, dkv, c.lin(l, L.attn.kv_b, Module::KVB));
  Tensor dc = f32(T, d.kvr), dckv = f32(T, d.kvr + d.dr);
  c.be.rmsnorm_bwd(A.c, L.attn.kv_a_norm, dcn, c.eps, dc);
  for (int64_t t = 0; t < T; ++t) {
    std::copy_n(dc.data<float>() + t * d.kvr, d.kvr, dckv.data<float>() + t * (d.kvr + d.dr));
    std::copy_n(dkpe.data<float>() + t * d.dr, d.dr, dckv.data<float>() + t * (d.kvr + d.dr) + d.kvr);
  }
  Tensor dx1 = lin_bwd(c.be, x1, dckv, c.lin(l, L.attn.kv_a, Module::KVA));
  // queries: undo RoPE on the rope dims
  Tensor dqpe = Tensor::empty({T, d.nh, d.dr}, DType::F32);
  take_tail(dq, d.dr, dqpe);
  c.rope_bwd(dqpe, static_cast<int>(d.dr));
  put_tail(dqpe, d.dr, dq);
  const Tensor dq2 = dq.reshape({T, d.nh * d.dq});
  if (L.attn.q_a.defined()) {
    Tensor dqan = lin_bwd(c.be, A.qa_n, dq2, c.lin(l, L.attn.q_b, Module::QB));
    Tensor dqa = f32(T, A.qa.size(1));
    c.be.rmsnorm_bwd(A.qa, L.attn.q_a_norm, dqan, c.eps, dqa);
    add(dx1, lin_bwd(c.be, x1, dqa, c.lin(l, L.attn.q_a, Module::QA)));
  } else {
    add(dx1, lin_bwd(c.be, x1, dq2, c.lin(l, L.attn.q, Module::Q)));
  }
  return dx1;
}

}  // namespace graft::train::detail
