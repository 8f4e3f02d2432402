// DeepSeek multi-head latent attention, forward with saved activations and backward, in the naive
// (expanded) form Model::forward uses when kv_b is adapted:
//   q    = q_b(rmsnorm(q_a(x), q_a_norm))  or  q_proj(x)                  [T, nh, dn + dr]
//   ckv  = kv_a_proj_with_mqa(x) = [c | k_pe]                             [T, kv_lora_rank + dr]
//   k_h  = [kv_b(rmsnorm(c, kv_a_norm))_h[0:dn], rope(k_pe)],  v_h = kv_b(..)_h[dn:dn+dv]
//   out  = o_proj(softmax(scale · [q_nope, rope(q_pe)] · kᵀ + mask) · v)
// with RoPE on the rope dims in the family's (interleaved) layout and the yarn-aware softmax scale
// of FamilySpec::attn_scale. Every projection may carry a LoRA (Q, QA, QB, KVA, KVB, O).
#include <cmath>
#include <vector>

#include "backward_internal.hpp"

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
void take_tail(Backend& be, const Tensor& src, int64_t w, Tensor& dst) { be.copy_cols(src, src.size(2) - w, w, dst, 0); }
void put_tail(Backend& be, const Tensor& src, int64_t w, Tensor& dst) { be.copy_cols(src, 0, w, dst, dst.size(2) - w); }
// Row t·nh + h -> t: the per-head broadcast of the one shared RoPE key (host metadata).   -> [T·nh]
std::vector<int32_t> head_rows(int64_t T, int64_t nh) {
  std::vector<int32_t> r(static_cast<size_t>(T * nh));
  for (int64_t i = 0; i < T * nh; ++i) r[static_cast<size_t>(i)] = static_cast<int32_t>(i / nh);
  return r;
}
// k[t, h] = [kv[t, h, 0:dn], kpe[t]], v[t, h] = kv[t, h, dn:dn+dv] (train::ref::mla_kv_fwd).
//   kv [T, nh·(dn+dv)], kpe [T, dr] -> k [T, nh, dn+dr], v [T, nh, dv] (=)
void mla_kv_fwd(Backend& be, const MlaDims& d, const Tensor& kv, const Tensor& kpe, Tensor& k, Tensor& v) {
  const int64_t T = kv.size(0);
  const Tensor kvh = kv.reshape({T * d.nh, d.dn + d.dv});
  be.copy_cols(kvh, 0, d.dn, k, 0);
  be.copy_cols(kvh, d.dn, d.dv, v, 0);
  Tensor kpe_h = be.empty({T * d.nh, d.dr}, be.activation_dtype());
  be.gather_rows(kpe.reshape({T, d.dr}), head_rows(T, d.nh), Tensor(), kpe_h);
  be.copy_cols(kpe_h, 0, d.dr, k, d.dn);
}
// Its transpose: dkv (=) takes dk's nope part and dv per head; dkpe (=) sums dk's rope part over the
// heads in head order (train::ref::mla_kv_bwd).   dk [T, nh, dn+dr], dv [T, nh, dv] -> dkv [T, nh·(dn+dv)], dkpe [T, dr]
void mla_kv_bwd(Backend& be, const MlaDims& d, const Tensor& dk, const Tensor& dv, Tensor& dkv, Tensor& dkpe) {
  const int64_t T = dk.size(0);
  Tensor dkvh = dkv.reshape({T * d.nh, d.dn + d.dv});
  be.copy_cols(dk, 0, d.dn, dkvh, 0);
  be.copy_cols(dv, 0, d.dv, dkvh, d.dn);
  Tensor dpe_h = be.empty({T * d.nh, d.dr}, be.activation_dtype());
  be.copy_cols(dk, d.dn, d.dr, dpe_h, 0);
  Tensor dkpe2 = dkpe.reshape({T, d.dr});
  be.fill(dkpe2, 0.0f);
  be.scatter_add_rows(dpe_h, head_rows(T, d.nh), Tensor(), dkpe2);
}
}  // namespace

Tensor mla_fwd(const Ctx& c, int l, const model::LayerWeights& L, const Tensor& x1, MlaActs& A) {
  const MlaDims d = dims(c);
  const int64_t T = c.T;
  Tensor q;
  if (L.attn.q_a.defined()) {
    A.qa = lin_fwd(c.be, x1, c.lin(l, L.attn.q_a, Module::QA));
    A.qa_n = act(c.be, T, A.qa.size(1));
    c.be.rmsnorm(A.qa, L.attn.q_a_norm, c.eps, A.qa_n);
    q = lin_fwd(c.be, A.qa_n, c.lin(l, L.attn.q_b, Module::QB));
  } else {
    q = lin_fwd(c.be, x1, c.lin(l, L.attn.q, Module::Q));
  }
  A.q = q.reshape({T, d.nh, d.dq});
  Tensor qpe = c.be.empty({T, d.nh, d.dr}, c.be.activation_dtype());
  take_tail(c.be, A.q, d.dr, qpe);
  c.rope(qpe, static_cast<int>(d.dr));
  put_tail(c.be, qpe, d.dr, A.q);
  Tensor ckv = lin_fwd(c.be, x1, c.lin(l, L.attn.kv_a, Module::KVA));  // [T, kvr + dr]
  A.c = act(c.be, T, d.kvr);
  c.be.copy_cols(ckv, 0, d.kvr, A.c, 0);
  A.c_n = act(c.be, T, d.kvr);
  c.be.rmsnorm(A.c, L.attn.kv_a_norm, c.eps, A.c_n);
  Tensor kpe = c.be.empty({T, 1, d.dr}, c.be.activation_dtype());
  c.be.copy_cols(ckv, d.kvr, d.dr, kpe, 0);
  c.rope(kpe, static_cast<int>(d.dr));
  Tensor kv = lin_fwd(c.be, A.c_n, c.lin(l, L.attn.kv_b, Module::KVB));  // [T, nh·(dn + dv)]
  A.k = c.be.empty({T, d.nh, d.dq}, c.be.activation_dtype());
  A.v = c.be.empty({T, d.nh, d.dv}, c.be.activation_dtype());
  mla_kv_fwd(c.be, d, kv, kpe, A.k, A.v);
  A.out = c.be.empty({T, d.nh, d.dv}, c.be.activation_dtype());
  c.be.attention(A.q, A.k, A.v, c.pos, c.pos, c.mask(L.kind), softmax_scale(c), A.out);
  return lin_fwd(c.be, A.out.reshape({T, d.nh * d.dv}), c.lin(l, L.attn.o, Module::O));
}

Tensor mla_bwd(const Ctx& c, int l, const model::LayerWeights& L, const Tensor& x1, const Tensor& dout, MlaActs& A) {
  const MlaDims d = dims(c);
  const int64_t T = c.T;
  Tensor dattn = lin_bwd(c.be, A.out.reshape({T, d.nh * d.dv}), dout, c.lin(l, L.attn.o, Module::O));
  Tensor dq = c.be.empty({T, d.nh, d.dq}, c.be.activation_dtype()), dk = c.be.empty({T, d.nh, d.dq}, c.be.activation_dtype()),
         dv = c.be.empty({T, d.nh, d.dv}, c.be.activation_dtype());
  c.be.attention_bwd(A.q, A.k, A.v, dattn.reshape({T, d.nh, d.dv}), c.pos, c.pos, c.mask(L.kind), softmax_scale(c), dq, dk, dv);
  // keys / values -> kv_b output and the shared RoPE key
  Tensor dkv = act(c.be, T, d.nh * (d.dn + d.dv)), dkpe = c.be.empty({T, 1, d.dr}, c.be.activation_dtype());
  mla_kv_bwd(c.be, d, dk, dv, dkv, dkpe);
  c.rope_bwd(dkpe, static_cast<int>(d.dr));
  Tensor dcn = lin_bwd(c.be, A.c_n, dkv, c.lin(l, L.attn.kv_b, Module::KVB));
  Tensor dc = act(c.be, T, d.kvr), dckv = act(c.be, T, d.kvr + d.dr);
  c.be.rmsnorm_bwd(A.c, L.attn.kv_a_norm, dcn, c.eps, dc);
  c.be.copy_cols(dc, 0, d.kvr, dckv, 0);
  c.be.copy_cols(dkpe, 0, d.dr, dckv, d.kvr);
  Tensor dx1 = lin_bwd(c.be, x1, dckv, c.lin(l, L.attn.kv_a, Module::KVA));
  // queries: undo RoPE on the rope dims
  Tensor dqpe = c.be.empty({T, d.nh, d.dr}, c.be.activation_dtype());
  take_tail(c.be, dq, d.dr, dqpe);
  c.rope_bwd(dqpe, static_cast<int>(d.dr));
  put_tail(c.be, dqpe, d.dr, dq);
  const Tensor dq2 = dq.reshape({T, d.nh * d.dq});
  if (L.attn.q_a.defined()) {
    Tensor dqan = lin_bwd(c.be, A.qa_n, dq2, c.lin(l, L.attn.q_b, Module::QB));
    Tensor dqa = act(c.be, T, A.qa.size(1));
    c.be.rmsnorm_bwd(A.qa, L.attn.q_a_norm, dqan, c.eps, dqa);
    c.be.add_acc(lin_bwd(c.be, x1, dqa, c.lin(l, L.attn.q_a, Module::QA)), dx1);
  } else {
    c.be.add_acc(lin_bwd(c.be, x1, dq2, c.lin(l, L.attn.q, Module::Q)), dx1);
  }
  return dx1;
}

}  // namespace graft::train::detail
