// The per-step context of the training forward/backward (which LoRA, dropout stream, mask and RoPE
// layout each piece uses) and the byte count of saved activations.
#include "backward_internal.hpp"
#include "graft/train/lora_dropout.hpp"

namespace graft::train::detail {

Lin Ctx::lin(int layer, const LinearWeight& w, model::Module mod) const {
  Lin l{&w, ad.param(layer, mod)};
  if (l.p && opt.lora_dropout > 0.0) {
    l.dropout = opt.lora_dropout;
    l.key = dropout_key(opt.dropout_seed, opt.dropout_draw, layer, dropout_site(mod));
  }
  return l;
}

Lin Ctx::expert_lin(int layer, const LinearWeight& w, model::ExpertProj pj, int expert, std::span<const int32_t> rows) const {
  return expert_lin(layer, w, pj, expert, rows, opt.dropout_draw);
}
Lin Ctx::expert_lin(int layer, const LinearWeight& w, model::ExpertProj pj, int expert, std::span<const int32_t> rows,
                    uint64_t draw) const {
  Lin l{&w, ad.expert_param(layer, pj, expert)};
  if (l.p && opt.lora_dropout > 0.0) {
    l.dropout = opt.lora_dropout;
    l.key = dropout_key(opt.dropout_seed, draw, layer, dropout_site(pj, expert));
    l.rows = rows;
  }
  return l;
}

ops::AttentionMask Ctx::mask(const config::LayerKind& k) const {
  ops::AttentionMask mk;
  if (k.sliding && cfg.sliding_window) mk.sliding_window = *cfg.sliding_window;
  if (k.chunked) mk.chunk_size = cfg.attention_chunk_size;
  if (!seg.empty()) {
    mk.q_segments = seg;
    mk.k_segments = seg;
  }
  return mk;
}

void Ctx::rope(Tensor& x, int rot_dim) const {
  be.rope(x, pos, rt, rot_dim, spec.rope_interleaved);
}

void Ctx::rope_bwd(Tensor& dx, int rot_dim) const {
  be.rope_bwd(dx, pos, rt, rot_dim, spec.rope_interleaved);
}

size_t AttnActs::bytes() const {
  size_t b = 0;
  for (const Tensor* t : {&q0, &k0, &qr, &kr, &q, &k, &v, &out}) b += bytes_of(*t);
  return b;
}
size_t MlaActs::bytes() const {
  size_t b = 0;
  for (const Tensor* t : {&qa, &qa_n, &c, &c_n, &q, &k, &v, &out}) b += bytes_of(*t);
  return b;
}
size_t MoeActs::bytes() const {
  size_t b = bytes_of(logits) + bytes_of(ids) + bytes_of(w);
  for (const auto& e : experts) {
    b += (e.flat.size() + e.tok.size()) * sizeof(int32_t);
    for (const Tensor* t : {&e.w, &e.x, &e.g, &e.u, &e.a, &e.y}) b += bytes_of(*t);
  }
  for (const Tensor* t : {&sg, &su, &sa, &sy, &sgate}) b += bytes_of(*t);
  for (const auto& r : remote) {
    b += r.acts.tok.size() * sizeof(int32_t);
    for (const Tensor* t : {&r.acts.w, &r.acts.x, &r.acts.g, &r.acts.u, &r.acts.a, &r.acts.y}) b += bytes_of(*t);
  }
  return b;
}
size_t LayerActs::bytes() const {
  size_t b = attn.bytes() + mla.bytes() + moe.bytes();
  for (const Tensor* t : {&x1, &h_mid, &x2, &g, &u, &a}) b += bytes_of(*t);
  return b;
}

}  // namespace graft::train::detail
