// The decoder forward pass, shared by every family: embeddings -> layers (attention variant + dense
// MLP or routed experts) -> final norm -> lm_head. Every projection goes through Backend::linear
// (the one LoRA-aware linear entry point); MoE layers go through Backend::moe_experts.
#include <cmath>
#include <algorithm>
#include <numeric>

#include "family_spec.hpp"
#include "graft/error.hpp"
#include "graft/model/model.hpp"
#include "graft/model/expert_parallel.hpp"

namespace graft::model {

const LinearWeight* dense_weight(const LayerWeights& L, Module m) {
  switch (m) {
    case Module::Q: return &L.attn.q;
    case Module::K: return &L.attn.k;
    case Module::V: return &L.attn.v;
    case Module::O: return &L.attn.o;
    case Module::QA: return &L.attn.q_a;
    case Module::QB: return &L.attn.q_b;
    case Module::KVA: return &L.attn.kv_a;
    case Module::KVB: return &L.attn.kv_b;
    case Module::Gate: return &L.mlp.gate;
    case Module::Up: return &L.mlp.up;
    case Module::Down: return &L.mlp.down;
    case Module::SharedGate: return &L.moe.shared.gate;
    case Module::SharedUp: return &L.moe.shared.up;
    case Module::SharedDown: return &L.moe.shared.down;
    default: return nullptr;
  }
}

std::string module_path(config::Family f, Module m) {
  const bool l4 = f == config::Family::Llama4;
  const std::string mlp = l4 ? "feed_forward" : "mlp";
  const std::string shared = l4 || f == config::Family::Qwen2Moe ? "shared_expert" : "shared_experts";
  switch (m) {
    case Module::Q: return "self_attn.q_proj";
    case Module::K: return "self_attn.k_proj";
    case Module::V: return "self_attn.v_proj";
    case Module::O: return "self_attn.o_proj";
    case Module::QA: return "self_attn.q_a_proj";
    case Module::QB: return "self_attn.q_b_proj";
    case Module::KVA: return "self_attn.kv_a_proj_with_mqa";
    case Module::KVB: return "self_attn.kv_b_proj";
    case Module::Gate: return mlp + ".gate_proj";
    case Module::Up: return mlp + ".up_proj";
    case Module::Down: return mlp + ".down_proj";
    case Module::SharedGate: return mlp + "." + shared + ".gate_proj";
    case Module::SharedUp: return mlp + "." + shared + ".up_proj";
    case Module::SharedDown: return mlp + "." + shared + ".down_proj";
    case Module::kCount: break;
  }
  GRAFT_FAIL("", "invalid module id {}", static_cast<int>(m));
}

KvCache Model::new_cache(int64_t capacity) const {
  KvCache c;
  c.capacity = capacity;
  const int64_t L = cfg_.num_hidden_layers;
  // MLA caches the compressed latent (k: [cap, 1, kv_lora_rank]) and the shared RoPE key
  // (v: [cap, 1, qk_rope_head_dim]) instead of per-head keys and values.
  const int64_t heads = cfg_.is_mla ? 1 : cfg_.num_key_value_heads;
  const int64_t kd = cfg_.is_mla ? cfg_.mla.kv_lora_rank : cfg_.head_dim;
  const int64_t vd = cfg_.is_mla ? cfg_.mla.qk_rope_head_dim : cfg_.head_dim;
  for (int64_t l = 0; l < L; ++l) {
    c.k.push_back(Tensor::zeros({capacity, heads, kd}, DType::F32));
    c.v.push_back(Tensor::zeros({capacity, heads, vd}, DType::F32));
  }
  c.positions.reserve(static_cast<size_t>(capacity));
  return c;
}

struct Forward {
  const Model& m;
  Backend& be;
  const Batch& b;
  KvCache* cache;
  FamilySpec spec;
  int64_t T;
  std::vector<int32_t> pos;
  std::vector<int32_t> row_slot;

  // Activations live on the backend's device in its compute dtype (f32 on the CPU, bf16 on CUDA).
  Tensor t2(int64_t rows, int64_t cols) { return be.empty({rows, cols}, be.activation_dtype()); }
  Tensor act(const Dims& shape) { return be.empty(shape, be.activation_dtype()); }
  // A cache tensor made by Model::new_cache / new_paged_cache on the host moves to the backend's device
  // (in its compute dtype) on first use; later forwards find it there.
  Tensor& on_device(Tensor& t) {
    if (t.device() != be.device() || t.dtype() != be.activation_dtype()) t = be.to_device(t, be.activation_dtype());
    return t;
  }

  // Builds the per-row LoRA batch of one module (empty when no adapter has it).
  struct LoraView {
    std::vector<const LoraFactors*> slots;
    LoraBatch batch() const { return slots.empty() ? LoraBatch{} : LoraBatch{slots, rows}; }
    std::span<const int32_t> rows;
  };
  LoraView lora(int layer, Module mod) {
    LoraView v;
    v.rows = row_slot;
    bool any = false;
    for (const LoraSource* a : b.adapters) {
      const LoraFactors* f = a ? a->find(layer, mod) : nullptr;
      any |= f != nullptr;
      v.slots.push_back(f);
    }
    if (!any) v.slots.clear();
    return v;
  }
  Tensor proj(const Tensor& x, const LinearWeight& w, int layer, Module mod) {
    Tensor y = t2(x.size(0), w.out);
    LoraView lv = lora(layer, mod);
    be.linear(x, w, lv.batch(), y);
    return y;
  }
  Tensor dense_proj(const Tensor& x, const Tensor& w) {  // routers: plain f32 matrices
    LinearWeight lw;
    lw.out = w.size(0);
    lw.in = w.size(1);
    lw.dense = w;
    Tensor y = t2(x.size(0), lw.out);
    be.linear(x, lw, {}, y);
    return y;
  }

  ops::AttentionMask mask_for(const config::LayerKind& k, std::span<const int32_t> kseg) const {
    ops::AttentionMask mk;
    if (k.sliding && m.cfg_.sliding_window) mk.sliding_window = *m.cfg_.sliding_window;
    if (k.chunked) mk.chunk_size = m.cfg_.attention_chunk_size;
    if (!b.segments.empty()) {
      mk.q_segments = b.segments;
      mk.k_segments = kseg;
    }
    return mk;
  }

  // Appends k/v rows to the cache (when present) and returns the key/value views to attend over.
  std::pair<Tensor, Tensor> kv_for(int layer, const Tensor& k, const Tensor& v, std::span<const int32_t>& kpos) {
    if (!cache) {
      kpos = pos;
      return {k, v};
    }
    Tensor& ck = on_device(cache->k[static_cast<size_t>(layer)]);
    Tensor& cv = on_device(cache->v[static_cast<size_t>(layer)]);
    const int64_t at = cache->len, kw = ck.size(1) * ck.size(2), vw = cv.size(1) * cv.size(2);
    if (T > 0) {
      Tensor kd = ck.slice(0, at, at + T).reshape({T, kw}), vd = cv.slice(0, at, at + T).reshape({T, vw});
      be.copy_cols(k.reshape({T, kw}), 0, kw, kd, 0);
      be.copy_cols(v.reshape({T, vw}), 0, vw, vd, 0);
    }
    kpos = std::span<const int32_t>(cache->positions.data(), static_cast<size_t>(at + T));
    return {ck.slice(0, 0, at + T), cv.slice(0, 0, at + T)};
  }

  Tensor attention(int l, const LayerWeights& L, const Tensor& x) {
    const auto& cfg = m.cfg_;
    const int64_t nh = cfg.num_attention_heads;
    std::span<const int32_t> kpos;
    if (spec.mla) return mla(l, L, x);
    const int64_t nkv = cfg.num_key_value_heads, D = cfg.head_dim;
    Tensor q = proj(x, L.attn.q, l, Module::Q).reshape({T, nh, D});
    Tensor k = proj(x, L.attn.k, l, Module::K).reshape({T, nkv, D});
    Tensor v = proj(x, L.attn.v, l, Module::V).reshape({T, nkv, D});
    const float eps = static_cast<float>(cfg.rms_norm_eps);
    if (spec.qk_norm) {
      be.rmsnorm(q, L.attn.q_norm, eps, q);
      be.rmsnorm(k, L.attn.k_norm, eps, k);
    }
    if (L.kind.rope) {
      be.rope(q, pos, *rope_, static_cast<int>(D), spec.rope_interleaved);
      be.rope(k, pos, *rope_, static_cast<int>(D), spec.rope_interleaved);
      if (spec.qk_l2_norm) {
        Tensor ones = Tensor::empty({D}, DType::F32);  // a frozen host weight, like the norms
        std::fill_n(ones.data<float>(), D, 1.0f);
        be.rmsnorm(q, ones, eps, q);
        be.rmsnorm(k, ones, eps, k);
      }
    } else if (spec.temperature_tuning) {
      Tensor s = Tensor::empty({T}, DType::F32);
      for (int64_t t = 0; t < T; ++t)
        s.data<float>()[t] = static_cast<float>(
            std::log(std::floor((pos[static_cast<size_t>(t)] + 1.0) / cfg.floor_scale) + 1.0) * cfg.attn_scale + 1.0);
      Tensor q2 = q.reshape({T, nh * D});
      be.scale_rows(q2, s);
    }
    Tensor out = act({T, nh, D});
    const float scale = spec.attn_scale != 0.0f ? spec.attn_scale : 1.0f / std::sqrt(static_cast<float>(D));
    if (paged) {
      for (const SeqChunk& sq : seqs) {
        if (sq.rows == 0) continue;
        auto [kk, vv] = paged_kv(l, sq, k, v);
        Tensor os = out.slice(0, sq.row_begin, sq.row_begin + sq.rows);
        be.attention(q.slice(0, sq.row_begin, sq.row_begin + sq.rows), kk, vv, seq_pos(sq), kpos_iota(sq),
                     mask_for(L.kind, {}), scale, os);
      }
      return proj(out.reshape({T, nh * D}), L.attn.o, l, Module::O);
    }
    auto [kk, vv] = kv_for(l, k, v, kpos);
    be.attention(q, kk.is_contiguous() ? kk : kk.contiguous(), vv.is_contiguous() ? vv : vv.contiguous(), pos, kpos,
                 mask_for(L.kind, kseg_), scale, out);
    return proj(out.reshape({T, nh * D}), L.attn.o, l, Module::O);
  }

  // Paged mode: the positions of a chunk's rows, and the key positions 0 .. context_len + rows - 1.
  std::span<const int32_t> seq_pos(const SeqChunk& sq) const {
    return std::span<const int32_t>(pos).subspan(static_cast<size_t>(sq.row_begin), static_cast<size_t>(sq.rows));
  }
  std::span<const int32_t> kpos_iota(const SeqChunk& sq) const {
    return std::span<const int32_t>(iota_).first(static_cast<size_t>(sq.context_len + sq.rows));
  }
  // Writes a chunk's new key/value rows (k [T, heads, kd], v [T, heads, vd], the whole batch) into its
  // blocks, and returns the sequence's keys/values [context_len + rows, heads, d] gathered contiguously.
  std::pair<Tensor, Tensor> paged_kv(int layer, const SeqChunk& sq, const Tensor& k, const Tensor& v) {
    Tensor& pk = on_device(paged->k[static_cast<size_t>(layer)]);
    Tensor& pv = on_device(paged->v[static_cast<size_t>(layer)]);
    const int64_t bs = paged->block_size, kw = pk.size(2) * pk.size(3), vw = pv.size(2) * pv.size(3);
    const int64_t S = sq.context_len + sq.rows, pool_rows = pk.size(0) * bs;
    // The chunk's pool rows (the same for every layer, built once in run()); the new rows are its tail.
    const std::vector<int32_t>& src = pool_rows_[static_cast<size_t>(&sq - seqs.data())];
    const auto dst = std::span<const int32_t>(src).subspan(static_cast<size_t>(sq.context_len));
    Tensor pk2 = pk.reshape({pool_rows, kw}), pv2 = pv.reshape({pool_rows, vw});
    if (sq.rows > 0) {
      be.set_rows(k.reshape({T, kw}).slice(0, sq.row_begin, sq.row_begin + sq.rows), dst, pk2);
      be.set_rows(v.reshape({T, vw}).slice(0, sq.row_begin, sq.row_begin + sq.rows), dst, pv2);
    }
    Tensor kk = act({S, pk.size(2), pk.size(3)}), vv = act({S, pv.size(2), pv.size(3)});
    Tensor kk2 = kk.reshape({S, kw}), vv2 = vv.reshape({S, vw});
    be.gather_rows(pk2, src, Tensor(), kk2);
    be.gather_rows(pv2, src, Tensor(), vv2);
    return {kk, vv};
  }

  // DeepSeek MLA. The cache holds the latent c and k_pe; attention runs in the absorbed form
  // unless an adapter targets kv_b, in which case keys/values are expanded from the latent through
  // the LoRA-aware projection (naive form).
  Tensor mla(int l, const LayerWeights& L, const Tensor& x) {
    const auto& cfg = m.cfg_;
    const auto& ml = cfg.mla;
    const int64_t nh = cfg.num_attention_heads, dn = ml.qk_nope_head_dim, dr = ml.qk_rope_head_dim, dv = ml.v_head_dim;
    const int64_t dq = dn + dr, kvr = ml.kv_lora_rank;
    const float eps = static_cast<float>(cfg.rms_norm_eps);
    Tensor q;
    if (L.attn.q_a.defined()) {
      Tensor qa = proj(x, L.attn.q_a, l, Module::QA);
      be.rmsnorm(qa, L.attn.q_a_norm, eps, qa);
      q = proj(qa, L.attn.q_b, l, Module::QB);
    } else {
      q = proj(x, L.attn.q, l, Module::Q);
    }
    q = q.reshape({T, nh, dq});
    Tensor ckv = proj(x, L.attn.kv_a, l, Module::KVA);  // [T, kvr + dr]
    Tensor c = t2(T, kvr), kpe2 = t2(T, dr);
    be.copy_cols(ckv, 0, kvr, c, 0);
    be.copy_cols(ckv, kvr, dr, kpe2, 0);
    be.rmsnorm(c, L.attn.kv_a_norm, eps, c);
    Tensor kpe = kpe2.reshape({T, 1, dr});
    Tensor qn = act({T, nh, dn}), qpe = act({T, nh, dr});
    {
      const Tensor q2 = q.reshape({T * nh, dq});
      Tensor qn2 = qn.reshape({T * nh, dn}), qpe2 = qpe.reshape({T * nh, dr});
      be.copy_cols(q2, 0, dn, qn2, 0);
      be.copy_cols(q2, dn, dr, qpe2, 0);
    }
    be.rope(qpe, pos, *rope_, static_cast<int>(dr), spec.rope_interleaved);
    be.rope(kpe, pos, *rope_, static_cast<int>(dr), spec.rope_interleaved);
    Tensor out = act({T, nh, dv});
    const float scale = spec.attn_scale != 0.0f ? spec.attn_scale : 1.0f / std::sqrt(static_cast<float>(dq));
    LoraView kvb_lora = lora(l, Module::KVB);
    if (paged) {
      for (const SeqChunk& sq : seqs) {
        if (sq.rows == 0) continue;
        auto [cc, kk] = paged_kv(l, sq, c.reshape({T, 1, kvr}), kpe);
        const int64_t S = cc.size(0), r0 = sq.row_begin, r1 = sq.row_begin + sq.rows;
        Tensor os = out.slice(0, r0, r1);
        const bool naive = !kvb_lora.slots.empty() && sq.slot >= 0 &&
                           kvb_lora.slots[static_cast<size_t>(sq.slot)] != nullptr;
        if (!naive) {
          be.mla_attention(qn.slice(0, r0, r1), qpe.slice(0, r0, r1), cc.reshape({S, kvr}), kk.reshape({S, dr}),
                           L.attn.kv_b, dv, seq_pos(sq), kpos_iota(sq), mask_for(L.kind, {}), scale, os);
        } else {
          std::vector<int32_t> krows(static_cast<size_t>(S), sq.slot);
          mla_naive(L, qn.slice(0, r0, r1), qpe.slice(0, r0, r1), cc.reshape({S, kvr}), kk.reshape({S, dr}), kvb_lora,
                    krows, seq_pos(sq), kpos_iota(sq), mask_for(L.kind, {}), scale, os);
        }
      }
      return proj(out.reshape({T, nh * dv}), L.attn.o, l, Module::O);
    }
    std::span<const int32_t> kpos;
    auto [cc, kk] = kv_for(l, c.reshape({T, 1, kvr}), kpe, kpos);
    const int64_t S = cc.size(0);
    Tensor call = cc.reshape({S, kvr});  // leading-dim slices of the cache: contiguous
    Tensor kall = kk.reshape({S, dr});
    if (kvb_lora.slots.empty()) {
      be.mla_attention(qn, qpe, call, kall, L.attn.kv_b, dv, pos, kpos, mask_for(L.kind, kseg_), scale, out);
      return proj(out.reshape({T, nh * dv}), L.attn.o, l, Module::O);
    }
    // A contiguous cache holds one sequence, so cached rows use the adapter slot of this batch's first row.
    std::vector<int32_t> krows(static_cast<size_t>(S), row_slot.empty() ? 0 : row_slot[0]);
    if (S == T) krows = row_slot;
    mla_naive(L, qn, qpe, call, kall, kvb_lora, krows, pos, kpos, mask_for(L.kind, kseg_), scale, out);
    return proj(out.reshape({T, nh * dv}), L.attn.o, l, Module::O);
  }

  // MLA in the naive form: expand every key row of the latent c [S, kvr] with the (adapter-aware)
  // kv_b projection (rows use krows' slots), then standard attention.
  // qn [Tq, H, dn], qpe [Tq, H, dr], kall [S, dr] -> out [Tq, H, dv] (=)
  void mla_naive(const LayerWeights& L, const Tensor& qn, const Tensor& qpe, const Tensor& call, const Tensor& kall,
                 LoraView kvb_lora, std::span<const int32_t> krows, std::span<const int32_t> qpos,
                 std::span<const int32_t> kpos, const ops::AttentionMask& mask, float scale, Tensor& out) {
    const auto& ml = m.cfg_.mla;
    const int64_t nh = m.cfg_.num_attention_heads, dn = ml.qk_nope_head_dim, dr = ml.qk_rope_head_dim, dv = ml.v_head_dim;
    const int64_t dq = dn + dr, Tq = qn.size(0), S = call.size(0);
    kvb_lora.rows = krows;
    Tensor kv = t2(S, nh * (dn + dv));
    be.linear(call, L.attn.kv_b, kvb_lora.batch(), kv);
    Tensor qf = act({Tq, nh, dq}), kf = act({S, nh, dq}), vf = act({S, nh, dv});
    Tensor qf2 = qf.reshape({Tq * nh, dq}), kf2 = kf.reshape({S * nh, dq}), vf2 = vf.reshape({S * nh, dv});
    const Tensor kv2 = kv.reshape({S * nh, dn + dv});
    be.copy_cols(qn.reshape({Tq * nh, dn}), 0, dn, qf2, 0);
    be.copy_cols(qpe.reshape({Tq * nh, dr}), 0, dr, qf2, dn);
    be.copy_cols(kv2, 0, dn, kf2, 0);
    be.copy_cols(kv2, dn, dv, vf2, 0);
    std::vector<int32_t> per_head(static_cast<size_t>(S * nh));  // k_pe row j shared by every head
    for (int64_t i = 0; i < S * nh; ++i) per_head[static_cast<size_t>(i)] = static_cast<int32_t>(i / nh);
    Tensor kpe_heads = t2(S * nh, dr);
    be.gather_rows(kall, per_head, Tensor(), kpe_heads);
    be.copy_cols(kpe_heads, 0, dr, kf2, dn);
    be.attention(qf, kf, vf, qpos, kpos, mask, scale, out);
  }

  Tensor mlp(int l, const MlpWeights& w, const Tensor& x, Module g, Module u, Module d) {
    Tensor gate = proj(x, w.gate, l, g);
    Tensor up = proj(x, w.up, l, u);
    be.swiglu(gate, up, gate);
    return proj(gate, w.down, l, d);
  }

  Tensor moe(int l, const LayerWeights& L, const Tensor& x) {
    const auto& mw = L.moe;
    Tensor logits = dense_proj(x, mw.router);
    ops::RouterParams rp = spec.router_params;
    rp.correction_bias = mw.correction_bias.defined() ? mw.correction_bias.data<float>() : nullptr;
    Tensor ids = be.empty({T, rp.top_k}, DType::I32), w = be.empty({T, rp.top_k}, DType::F32);
    be.moe_route(logits, rp, ids, w);
    bool any = false;
    const ExpertLora el = expert_lora(b.adapters, l, mw.experts.num_experts(), any);
    Tensor out = t2(T, x.size(1));
    if (ExpertParallel* ep = m.expert_parallel(); ep && ep->size() > 1) {  // experts sharded over ranks
      std::vector<std::string> origins;
      for (const LoraSource* a : b.adapters) origins.push_back(a ? a->origin() : std::string());
      moe_experts_sharded(be, *ep, l, x, ids, w, mw.experts, any ? &el : nullptr, origins, row_slot,
                          spec.scale_expert_input, out);
    }
    else
      be.moe_experts(x, ids, w, mw.experts, any ? &el : nullptr, row_slot, spec.scale_expert_input, out);
    if (mw.shared.defined()) {
      Tensor s = mlp(l, mw.shared, x, Module::SharedGate, Module::SharedUp, Module::SharedDown);
      if (mw.shared_gate.defined()) {
        Tensor gl = dense_proj(x, mw.shared_gate);  // [T, 1]
        be.sigmoid(gl, gl);
        be.scale_rows(s, gl);
      }
      be.add_acc(s, out);
    }
    return out;
  }

  PagedKvCache* paged = nullptr;
  std::span<const SeqChunk> seqs;
  std::span<const int32_t> logit_rows;
  std::vector<int32_t> iota_;  // 0 .. longest paged sequence - 1
  std::vector<std::vector<int32_t>> pool_rows_;  // per paged chunk: the pool row of positions 0 .. context + rows - 1

  std::vector<int32_t> kseg_store_;
  std::span<const int32_t> kseg_;
  ops::RopeTable rope_dyn_;
  const ops::RopeTable* rope_ = nullptr;  // the table for this batch (dynamic NTK depends on its length)

  Tensor run() {
    const auto& cfg = m.cfg_;
    T = static_cast<int64_t>(b.ids.size());
    GRAFT_CHECK(b.positions.empty() || b.positions.size() == b.ids.size(), "forward: {} positions for {} tokens",
                b.positions.size(), b.ids.size());
    GRAFT_CHECK(b.segments.empty() || (b.segments.size() == b.ids.size() && !cache),
                "forward: segment ids need one per token and no KV cache");
    const int64_t base = cache ? cache->len : 0;
    if (paged) {
      pos.assign(static_cast<size_t>(T), 0);
      row_slot.assign(static_cast<size_t>(T), -1);
      int64_t next = 0, longest = 0;
      for (const SeqChunk& sq : seqs) {
        GRAFT_CHECK(sq.row_begin == next && sq.rows >= 0 && sq.row_begin + sq.rows <= T && sq.context_len >= 0,
                    "forward_paged: chunk rows [{}, +{}) must follow row {} inside the batch of {}", sq.row_begin,
                    sq.rows, next, T);
        const int64_t len = sq.context_len + sq.rows;
        GRAFT_CHECK(static_cast<int64_t>(sq.block_table.size()) * paged->block_size >= len,
                    "forward_paged: block table of {} blocks cannot hold {} tokens", sq.block_table.size(), len);
        for (int32_t blk : sq.block_table)
          GRAFT_CHECK(blk >= 0 && blk < paged->num_blocks, "forward_paged: block id {} outside the pool of {}", blk,
                      paged->num_blocks);
        GRAFT_CHECK(sq.slot < static_cast<int32_t>(b.adapters.size()), "forward_paged: adapter slot {} of {}",
                    sq.slot, b.adapters.size());
        for (int64_t i = 0; i < sq.rows; ++i) {
          pos[static_cast<size_t>(sq.row_begin + i)] = static_cast<int32_t>(sq.context_len + i);
          row_slot[static_cast<size_t>(sq.row_begin + i)] = sq.slot;
        }
        longest = std::max(longest, len);
        next = sq.row_begin + sq.rows;
      }
      GRAFT_CHECK(next == T, "forward_paged: the chunks cover {} of {} rows", next, T);
      // Pool row (block · block_size + offset) of every cached position of every chunk, for all layers.
      pool_rows_.clear();
      for (const SeqChunk& sq : seqs) {
        auto& r = pool_rows_.emplace_back(static_cast<size_t>(sq.context_len + sq.rows));
        for (size_t i = 0; i < r.size(); ++i)
          r[i] = static_cast<int32_t>(int64_t{sq.block_table[i / static_cast<size_t>(paged->block_size)]} *
                                          paged->block_size +
                                      static_cast<int64_t>(i) % paged->block_size);
      }
      iota_.resize(static_cast<size_t>(longest));
      std::iota(iota_.begin(), iota_.end(), 0);
      for (int32_t r : logit_rows) GRAFT_CHECK(r >= 0 && r < T, "forward_paged: logit row {} of {}", r, T);
      if (b.adapters.empty()) row_slot.clear();
    } else if (b.positions.empty()) {
      pos.resize(static_cast<size_t>(T));
      std::iota(pos.begin(), pos.end(), static_cast<int32_t>(base));
    } else {
      pos.assign(b.positions.begin(), b.positions.end());
    }
    if (cache) {
      GRAFT_CHECK_FIX(cache->len + T <= cache->capacity, "start a new sequence or allocate a larger cache",
                      "KV cache full: {} + {} tokens exceed its capacity {}", cache->len, T, cache->capacity);
      cache->positions.insert(cache->positions.end(), pos.begin(), pos.end());
    }
    kseg_ = b.segments;
    rope_ = &m.rope_[0];
    if (m.rope_params_.kind == ops::RopeKind::Dynamic) {
      int64_t seq_len = 0;
      for (int32_t p : pos) seq_len = std::max<int64_t>(seq_len, p + 1);
      if (static_cast<double>(seq_len) > m.rope_params_.original_max_position) {
        rope_dyn_ = ops::rope_table_dynamic(m.rope_params_, seq_len);
        rope_ = &rope_dyn_;
      }
    }
    if (!b.adapters.empty() && !paged) {
      if (b.row_adapter.empty()) row_slot.assign(static_cast<size_t>(T), 0);
      else row_slot.assign(b.row_adapter.begin(), b.row_adapter.end());
      GRAFT_CHECK(static_cast<int64_t>(row_slot.size()) == T, "forward: {} adapter slots for {} rows", row_slot.size(), T);
    }
    const int64_t H = cfg.hidden_size;
    Tensor h = t2(T, H);
    be.embedding(b.ids, m.embed_, h);
    embed_copies(be, b, h);
    Tensor x = t2(T, H);
    const float eps = static_cast<float>(cfg.rms_norm_eps);
    for (int l = 0; l < static_cast<int>(m.layers_.size()); ++l) {
      const LayerWeights& L = m.layers_[static_cast<size_t>(l)];
      be.rmsnorm(h, L.input_norm, eps, x);
      be.add_acc(attention(l, L, x), h);
      be.rmsnorm(h, L.post_norm, eps, x);
      be.add_acc(L.kind.moe ? moe(l, L, x) : mlp(l, L.mlp, x, Module::Gate, Module::Up, Module::Down), h);
    }
    if (cache) cache->len += T;
    if (paged) {
      const int64_t n = static_cast<int64_t>(logit_rows.size());
      Tensor hl = t2(n, H), xl = t2(n, H);
      be.gather_rows(h, logit_rows, Tensor(), hl);
      be.rmsnorm(hl, m.final_norm_, eps, xl);
      Tensor logits = t2(n, m.lm_head_.out);
      if (n > 0) be.linear(xl, m.lm_head_, {}, logits);
      head_copies(be, b, xl, logits, [&](int64_t i) { return int64_t{logit_rows[static_cast<size_t>(i)]}; });
      return be.to_host(logits);
    }
    Tensor hl = b.last_logits_only && T > 0 ? h.slice(0, T - 1, T) : h;  // a leading-dim slice: contiguous
    Tensor xl = b.last_logits_only && T > 0 ? t2(1, cfg.hidden_size) : x;
    be.rmsnorm(hl, m.final_norm_, eps, xl);
    Tensor logits = t2(xl.size(0), m.lm_head_.out);
    be.linear(xl, m.lm_head_, {}, logits);
    const bool last = b.last_logits_only && T > 0;
    head_copies(be, b, xl, logits, [&](int64_t i) { return last ? T - 1 : i; });
    return be.to_host(logits);  // callers sample and score on the host: f32, contiguous
  }

  // PEFT modules_to_save: rows whose adapter carries its own embedding table take their input rows
  // from it.   h [T, H]
  void embed_copies(Backend& be, const Batch& b, Tensor& h) {
    const int64_t T = h.size(0), H = h.size(1);
    for (size_t s = 0; s < b.adapters.size(); ++s) {
      const Tensor* table = b.adapters[s] ? b.adapters[s]->embed_tokens() : nullptr;
      if (!table) continue;
      std::vector<int32_t> rows, ids;
      for (int64_t t = 0; t < T; ++t)
        if (slot_of(t) == static_cast<int32_t>(s)) {
          rows.push_back(static_cast<int32_t>(t));
          ids.push_back(b.ids[static_cast<size_t>(t)]);
        }
      if (rows.empty()) continue;
      Tensor mine = t2(static_cast<int64_t>(rows.size()), H);
      be.embedding(ids, *table, mine);
      be.set_rows(mine, rows, h);
    }
  }
  // Logit rows (batch row row_of(i) of logits row i) whose adapter carries its own lm_head are
  // recomputed with it.   xl [n, H], logits [n, V]
  template <class RowOf>
  void head_copies(Backend& be, const Batch& b, const Tensor& xl, Tensor& logits, RowOf row_of) {
    const int64_t n = xl.size(0), H = xl.size(1), V = logits.size(1);
    for (size_t s = 0; s < b.adapters.size(); ++s) {
      const LinearWeight* head = b.adapters[s] ? b.adapters[s]->lm_head() : nullptr;
      if (!head) continue;
      std::vector<int32_t> rows;
      for (int64_t i = 0; i < n; ++i)
        if (slot_of(row_of(i)) == static_cast<int32_t>(s)) rows.push_back(static_cast<int32_t>(i));
      if (rows.empty()) continue;
      Tensor xs = t2(static_cast<int64_t>(rows.size()), H), ls = t2(static_cast<int64_t>(rows.size()), V);
      be.gather_rows(xl, rows, Tensor(), xs);
      be.linear(xs, *head, {}, ls);
      be.set_rows(ls, rows, logits);
    }
  }
  // The adapter slot of batch row t (-1 = base).
  int32_t slot_of(int64_t t) const { return row_slot.empty() ? -1 : row_slot[static_cast<size_t>(t)]; }
};

PagedKvCache Model::new_paged_cache(int64_t num_blocks, int64_t block_size) const {
  GRAFT_CHECK_FIX(num_blocks > 0 && block_size > 0, "give the KV cache more memory or a smaller block size",
                  "paged KV cache of {} blocks x {} tokens", num_blocks, block_size);
  PagedKvCache c;
  c.num_blocks = num_blocks;
  c.block_size = block_size;
  const int64_t heads = cfg_.is_mla ? 1 : cfg_.num_key_value_heads;
  const int64_t kd = cfg_.is_mla ? cfg_.mla.kv_lora_rank : cfg_.head_dim;
  const int64_t vd = cfg_.is_mla ? cfg_.mla.qk_rope_head_dim : cfg_.head_dim;
  for (int64_t l = 0; l < cfg_.num_hidden_layers; ++l) {
    c.k.push_back(Tensor::zeros({num_blocks, block_size, heads, kd}, DType::F32));
    c.v.push_back(Tensor::zeros({num_blocks, block_size, heads, vd}, DType::F32));
  }
  return c;
}

size_t Model::block_bytes(int64_t block_size) const {
  const int64_t heads = cfg_.is_mla ? 1 : cfg_.num_key_value_heads;
  const int64_t kd = cfg_.is_mla ? cfg_.mla.kv_lora_rank : cfg_.head_dim;
  const int64_t vd = cfg_.is_mla ? cfg_.mla.qk_rope_head_dim : cfg_.head_dim;
  return static_cast<size_t>(block_size * heads * (kd + vd) * cfg_.num_hidden_layers) * sizeof(float);
}

Tensor Model::forward_paged(Backend& be, std::span<const int32_t> ids, std::span<const SeqChunk> seqs,
                            std::span<const LoraSource* const> adapters, PagedKvCache& cache,
                            std::span<const int32_t> logit_rows) const {
  check_runnable("forward_paged");
  GRAFT_CHECK(cache.k.size() == layers_.size(), "paged KV cache has {} layers, model has {}", cache.k.size(),
              layers_.size());
  Batch b;
  b.ids = ids;
  b.adapters = adapters;
  Forward f{*this, be, b, nullptr, family_spec(cfg_), 0, {}, {}, {}, {}};
  f.paged = &cache;
  f.seqs = seqs;
  f.logit_rows = logit_rows;
  return f.run();
}

void Model::check_runnable(const char* what) const {
  GRAFT_CHECK(!experts_only_, "Model::{}: this model holds only routed experts (LoadOptions::experts_only, an "
              "expert-parallel worker) and cannot run", what);
}

Tensor Model::forward(Backend& be, const Batch& batch, KvCache* cache) const {
  check_runnable("forward");
  Forward f{*this, be, batch, cache, family_spec(cfg_), 0, {}, {}, {}, {}};
  if (cache) {
    GRAFT_CHECK(cache->k.size() == layers_.size(), "KV cache has {} layers, model has {}", cache->k.size(), layers_.size());
  }
  return f.run();
}

}  // namespace graft::model
