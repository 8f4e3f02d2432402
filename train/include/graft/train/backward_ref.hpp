// Scalar-templated forward and backward of the training pieces that graft/cpu/reference_bwd.hpp does
// not cover: MoE router combine weights of every RouterKind for a fixed selection, DeepSeek MLA's
// per-head key/value assembly, per-row scaling (Llama 4 attention temperature, expert-input
// scaling), and the LoRA linear with a dropout mask on its LoRA input. The trainer runs them in
// float; tests/train runs them in double against central finite differences. Row-major raw arrays;
// shapes in the comments; backward functions write (`=`) unless the name says `_acc`.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "graft/backend/ops_desc.hpp"
#include "graft/cpu/reference_bwd.hpp"

namespace graft::train::ref {

// ---------------------------------------------------------------- router combine weights
// The selection `ids` (from cpu::moe_route) is piecewise constant in the logits, so the weights are
// a smooth function of the logits for a fixed selection; DeepSeek-V3's correction bias changes the
// selection only. With s = softmax(z) (SoftmaxTopK, SoftmaxGroupTopK) or σ(z) (SigmoidGroupTopK,
// TopKSigmoid), rsf = routed_scaling_factor and S = the selected set:
//   w_j = rsf · s_{e_j} / D,  D = Σ_S s (+1e-20 except SoftmaxTopK) when renormalised (never for
//   TopKSigmoid), else D = 1.
// The float instantiation computes exactly what cpu::moe_route returns.
//   logits [T, E], ids [T, k]  ->  w [T, k]
template <class S>
void router_scores(const S* z, int E, bool softmax, S* s) {
  if (softmax) {
    S m = z[0];
    for (int e = 1; e < E; ++e) m = std::max(m, z[e]);
    S sum = 0;
    for (int e = 0; e < E; ++e) sum += (s[e] = std::exp(z[e] - m));
    for (int e = 0; e < E; ++e) s[e] /= sum;
  } else {
    for (int e = 0; e < E; ++e) s[e] = S(1) / (S(1) + std::exp(-z[e]));
  }
}
inline bool router_softmax(const ops::RouterParams& p) {
  return p.kind == ops::RouterKind::SoftmaxTopK || p.kind == ops::RouterKind::SoftmaxGroupTopK;
}
inline bool router_renorm(const ops::RouterParams& p) { return p.renormalize && p.kind != ops::RouterKind::TopKSigmoid; }

template <class S>
void router_weights_fwd(const S* logits, const int32_t* ids, int64_t T, int E, const ops::RouterParams& p, S* w) {
  const int k = p.top_k;
  std::vector<S> s(static_cast<size_t>(E));
  for (int64_t t = 0; t < T; ++t) {
    router_scores(logits + t * E, E, router_softmax(p), s.data());
    S sum = 0;
    for (int j = 0; j < k; ++j) sum += s[static_cast<size_t>(ids[t * k + j])];
    const S denom = p.kind == ops::RouterKind::SoftmaxTopK ? sum : sum + S(1e-20f);
    for (int j = 0; j < k; ++j) {
      S v = s[static_cast<size_t>(ids[t * k + j])];
      if (router_renorm(p)) v /= denom;
      w[t * k + j] = v * S(p.routed_scaling_factor);
    }
  }
}
// dlogits (=) from dw [T, k]: ds_i = rsf·(dw_i − Σ_j dw_j s_j / D) / D for i ∈ S when renormalised,
// rsf·dw_i otherwise (0 off S); dz = s ⊙ (ds − <s, ds>) (softmax) or ds ⊙ s(1 − s) (sigmoid).
template <class S>
void router_weights_bwd(const S* logits, const int32_t* ids, const S* dw, int64_t T, int E, const ops::RouterParams& p,
                        S* dlogits) {
  const int k = p.top_k;
  const S rsf = S(p.routed_scaling_factor);
  std::vector<S> s(static_cast<size_t>(E)), ds(static_cast<size_t>(E));
  for (int64_t t = 0; t < T; ++t) {
    router_scores(logits + t * E, E, router_softmax(p), s.data());
    const int32_t* id = ids + t * k;
    const S* g = dw + t * k;
    std::fill(ds.begin(), ds.end(), S(0));
    if (router_renorm(p)) {
      S D = 0, gs = 0;
      for (int j = 0; j < k; ++j) {
        D += s[static_cast<size_t>(id[j])];
        gs += g[j] * s[static_cast<size_t>(id[j])];
      }
      if (p.kind != ops::RouterKind::SoftmaxTopK) D += S(1e-20f);
      for (int j = 0; j < k; ++j) ds[static_cast<size_t>(id[j])] += rsf * (g[j] - gs / D) / D;
    } else {
      for (int j = 0; j < k; ++j) ds[static_cast<size_t>(id[j])] += rsf * g[j];
    }
    S* dz = dlogits + t * E;
    if (router_softmax(p)) {
      S dot = 0;
      for (int e = 0; e < E; ++e) dot += s[static_cast<size_t>(e)] * ds[static_cast<size_t>(e)];
      for (int e = 0; e < E; ++e) dz[e] = s[static_cast<size_t>(e)] * (ds[static_cast<size_t>(e)] - dot);
    } else {
      for (int e = 0; e < E; ++e) dz[e] = ds[static_cast<size_t>(e)] * s[static_cast<size_t>(e)] * (S(1) - s[static_cast<size_t>(e)]);
    }
  }
}

// ---------------------------------------------------------------- DeepSeek MLA (naive form)
// Per-head keys and values from the kv_b output and the one shared RoPE key:
//   k[t, h] = [kv[t, h, 0:dn], kpe[t]],  v[t, h] = kv[t, h, dn:dn+dv].
//   kv [T, H·(dn+dv)], kpe [T, dr]  ->  k [T, H, dn+dr], v [T, H, dv]
template <class S>
void mla_kv_fwd(const S* kv, const S* kpe, int64_t T, int64_t H, int64_t dn, int64_t dr, int64_t dv, S* k, S* v) {
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < H; ++h) {
      const S* src = kv + (t * H + h) * (dn + dv);
      S* kd = k + (t * H + h) * (dn + dr);
      std::copy(src, src + dn, kd);
      std::copy(kpe + t * dr, kpe + (t + 1) * dr, kd + dn);
      std::copy(src + dn, src + dn + dv, v + (t * H + h) * dv);
    }
}
// dkv (=) gathers dk's nope part and dv per head; dkpe (=) sums dk's rope part over the heads.
//   dk [T, H, dn+dr], dv [T, H, dv]  ->  dkv [T, H·(dn+dv)], dkpe [T, dr]
template <class S>
void mla_kv_bwd(const S* dk, const S* dvv, int64_t T, int64_t H, int64_t dn, int64_t dr, int64_t dv, S* dkv, S* dkpe) {
  std::fill(dkpe, dkpe + T * dr, S(0));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < H; ++h) {
      const S* g = dk + (t * H + h) * (dn + dr);
      S* d = dkv + (t * H + h) * (dn + dv);
      std::copy(g, g + dn, d);
      std::copy(dvv + (t * H + h) * dv, dvv + (t * H + h + 1) * dv, d + dn);
      for (int64_t i = 0; i < dr; ++i) dkpe[t * dr + i] += g[dn + i];
    }
}

// ---------------------------------------------------------------- per-row scaling
// Llama 4 attention temperature of a NoPE layer at position `pos`, exactly as the forward computes it:
// log(floor((pos + 1) / floor_scale) + 1) · attn_scale + 1 (in double, rounded to float).
inline float attn_temperature(int32_t pos, double floor_scale, double attn_scale) {
  return static_cast<float>(std::log(std::floor((pos + 1.0) / floor_scale) + 1.0) * attn_scale + 1.0);
}
// y[t, :] = s[t] · x[t, :].   x, y [T, n], s [T]
template <class S>
void scale_rows_fwd(const S* x, const S* s, int64_t T, int64_t n, S* y) {
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < n; ++i) y[t * n + i] = x[t * n + i] * s[t];
}
// dx[t] = s[t]·dy[t] (=);  ds[t] = <x[t], dy[t]> (=, when ds != null).
template <class S>
void scale_rows_bwd(const S* x, const S* s, const S* dy, int64_t T, int64_t n, S* dx, S* ds) {
  for (int64_t t = 0; t < T; ++t) {
    S d = 0;
    for (int64_t i = 0; i < n; ++i) {
      dx[t * n + i] = dy[t * n + i] * s[t];
      d += x[t * n + i] * dy[t * n + i];
    }
    if (ds) ds[t] = d;
  }
}

// ---------------------------------------------------------------- LoRA linear with dropout
// y = x·Wᵀ + s·((x ⊙ m)·Aᵀ)·Bᵀ, m the dropout scales (0 or 1/(1−p); lora_dropout.hpp): the masked
// LoRA linear of graft/cpu/reference_bwd.hpp.
// x, m [T, K], W [N, K], A [r, K], B [N, r]  ->  y [T, N]
template <class S>
void lora_dropout_linear_fwd(const S* x, const S* m, const S* W, const S* A, const S* B, S s, int64_t T, int64_t K,
                             int64_t N, int64_t r, S* y) {
  cpu::ref::lora_linear_masked_fwd<S>(x, m, W, A, B, s, T, K, N, r, y);
}
// dx = dy·W + s·((dy·B)·A) ⊙ m, dA = s·(dy·B)ᵀ·(x ⊙ m), dB = s·dyᵀ·((x ⊙ m)·Aᵀ).   dy [T, N]
template <class S>
void lora_dropout_linear_bwd(const S* x, const S* m, const S* W, const S* A, const S* B, S s, const S* dy, int64_t T,
                             int64_t K, int64_t N, int64_t r, S* dx, S* dA, S* dB) {
  cpu::ref::lora_linear_masked_bwd<S>(x, m, W, A, B, s, dy, T, K, N, r, dx, dA, dB);
}

}  // namespace graft::train::ref
