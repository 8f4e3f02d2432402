// Scalar-templated reference forward and backward of the dense decoder ops, for training and as the
// oracle of CUDA backward kernels. Templated on the scalar type so tests can run them in double
// precision against central finite differences. Row-major raw arrays; shapes in the comments.
// Backward functions write (`=`) the input gradients; weights of the frozen base get no gradient.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <vector>

#include "graft/backend/ops_desc.hpp"

namespace graft::cpu::ref {

// ---------------------------------------------------------------- RMSNorm
// y = x · r · w, r = 1/sqrt(mean(x²) + eps).   x, y [T, H], w [H]
template <class S>
void rmsnorm_fwd(const S* x, const S* w, S eps, int64_t T, int64_t H, S* y) {
  for (int64_t t = 0; t < T; ++t) {
    S ss = 0;
    for (int64_t i = 0; i < H; ++i) ss += x[t * H + i] * x[t * H + i];
    const S r = S(1) / std::sqrt(ss / S(H) + eps);
    for (int64_t i = 0; i < H; ++i) y[t * H + i] = x[t * H + i] * r * w[i];
  }
}
// dx = r·(w⊙dy) − x·r³/H · Σ(w⊙dy⊙x).   dy, dx [T, H]
template <class S>
void rmsnorm_bwd(const S* x, const S* w, const S* dy, S eps, int64_t T, int64_t H, S* dx) {
  for (int64_t t = 0; t < T; ++t) {
    S ss = 0, dot = 0;
    for (int64_t i = 0; i < H; ++i) {
      ss += x[t * H + i] * x[t * H + i];
      dot += w[i] * dy[t * H + i] * x[t * H + i];
    }
    const S r = S(1) / std::sqrt(ss / S(H) + eps);
    for (int64_t i = 0; i < H; ++i) dx[t * H + i] = r * w[i] * dy[t * H + i] - x[t * H + i] * r * r * r / S(H) * dot;
  }
}

// ---------------------------------------------------------------- SwiGLU
// out = silu(g)·u.   g, u, out [n]
template <class S>
void swiglu_fwd(const S* g, const S* u, int64_t n, S* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = g[i] / (S(1) + std::exp(-g[i])) * u[i];
}
// dg = dout·u·σ(g)(1 + g(1 − σ(g))), du = dout·silu(g)
template <class S>
void swiglu_bwd(const S* g, const S* u, const S* dout, int64_t n, S* dg, S* du) {
  for (int64_t i = 0; i < n; ++i) {
    const S s = S(1) / (S(1) + std::exp(-g[i]));
    dg[i] = dout[i] * u[i] * s * (S(1) + g[i] * (S(1) - s));
    du[i] = dout[i] * g[i] * s;
  }
}

// ---------------------------------------------------------------- RoPE
// In place on the first rot dims of each head; backward = rotation by the opposite angle.
// x [T, heads, D], inv_freq [rot/2], pos [T]
template <class S>
void rope(S* x, int64_t T, int64_t heads, int64_t D, int rot, std::span<const float> inv_freq, float scaling,
          std::span<const int32_t> pos, bool interleaved, bool inverse) {
  const int half = rot / 2;
  for (int64_t t = 0; t < T; ++t)
    for (int i = 0; i < half; ++i) {
      const S ang = S(inv_freq[static_cast<size_t>(i)]) * S(pos[static_cast<size_t>(t)]);
      const S c = std::cos(ang) * S(scaling), s = (inverse ? -std::sin(ang) : std::sin(ang)) * S(scaling);
      for (int64_t h = 0; h < heads; ++h) {
        S* v = x + (t * heads + h) * D;
        const int a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + half;
        const S x1 = v[a], x2 = v[b];
        v[a] = x1 * c - x2 * s;
        v[b] = x2 * c + x1 * s;
      }
    }
}
// The transpose of the rotation (scaling s·Rᵀ): what the backward applies to dy.
template <class S>
void rope_bwd(S* dx, int64_t T, int64_t heads, int64_t D, int rot, std::span<const float> inv_freq, float scaling,
              std::span<const int32_t> pos, bool interleaved) {
  rope<S>(dx, T, heads, D, rot, inv_freq, scaling, pos, interleaved, /*inverse=*/true);
}

// ---------------------------------------------------------------- attention
inline bool visible(const ops::AttentionMask& m, int64_t t, int64_t j, int64_t qp, int64_t kp) {
  if (m.causal && kp > qp) return false;
  if (m.sliding_window > 0 && qp - kp >= m.sliding_window) return false;
  if (m.chunk_size > 0 && qp / m.chunk_size != kp / m.chunk_size) return false;
  if (!m.q_segments.empty() && m.q_segments[static_cast<size_t>(t)] != m.k_segments[static_cast<size_t>(j)]) return false;
  return true;
}
// out = softmax(scale·q·kᵀ + mask)·v with GQA.  q [T, Hq, D], k [S, Hkv, D], v [S, Hkv, Dv], out [T, Hq, Dv];
// P (optional) [Hq, T, S] receives the probabilities.
template <class S>
void attention_fwd(const S* q, const S* k, const S* v, int64_t T, int64_t Hq, int64_t D, int64_t Sn, int64_t Hkv,
                   int64_t Dv, std::span<const int32_t> qpos, std::span<const int32_t> kpos,
                   const ops::AttentionMask& m, S scale, S* out, S* P = nullptr) {
  const int64_t g = Hq / Hkv;
  std::vector<S> p(static_cast<size_t>(Sn));
  for (int64_t h = 0; h < Hq; ++h)
    for (int64_t t = 0; t < T; ++t) {
      S mx = -std::numeric_limits<S>::infinity();
      for (int64_t j = 0; j < Sn; ++j) {
        if (!visible(m, t, j, qpos[static_cast<size_t>(t)], kpos[static_cast<size_t>(j)])) {
          p[static_cast<size_t>(j)] = -std::numeric_limits<S>::infinity();
          continue;
        }
        S d = 0;
        for (int64_t i = 0; i < D; ++i) d += q[(t * Hq + h) * D + i] * k[(j * Hkv + h / g) * D + i];
        p[static_cast<size_t>(j)] = d * scale;
        mx = std::max(mx, p[static_cast<size_t>(j)]);
      }
      S z = 0;
      for (auto& e : p) z += (e = mx == -std::numeric_limits<S>::infinity() ? S(0) : std::exp(e - mx));
      for (auto& e : p) e = z > 0 ? e / z : S(0);
      for (int64_t i = 0; i < Dv; ++i) {
        S acc = 0;
        for (int64_t j = 0; j < Sn; ++j) acc += p[static_cast<size_t>(j)] * v[(j * Hkv + h / g) * Dv + i];
        out[(t * Hq + h) * Dv + i] = acc;
      }
      if (P)
        for (int64_t j = 0; j < Sn; ++j) P[(h * T + t) * Sn + j] = p[static_cast<size_t>(j)];
    }
}
// dq, dk, dv (=) from dout, recomputing P: dP = dout·vᵀ, dS = P⊙(dP − rowsum(dP⊙P)), dq = scale·dS·k,
// dk = scale·dSᵀ·q, dv = Pᵀ·dout (summed over the query heads sharing a kv head).
template <class S>
void attention_bwd(const S* q, const S* k, const S* v, const S* dout, int64_t T, int64_t Hq, int64_t D, int64_t Sn,
                   int64_t Hkv, int64_t Dv, std::span<const int32_t> qpos, std::span<const int32_t> kpos,
                   const ops::AttentionMask& m, S scale, S* dq, S* dk, S* dv) {
  const int64_t g = Hq / Hkv;
  std::vector<S> out(static_cast<size_t>(T * Hq * Dv)), P(static_cast<size_t>(Hq * T * Sn));
  attention_fwd<S>(q, k, v, T, Hq, D, Sn, Hkv, Dv, qpos, kpos, m, scale, out.data(), P.data());
  std::fill(dq, dq + T * Hq * D, S(0));
  std::fill(dk, dk + Sn * Hkv * D, S(0));
  std::fill(dv, dv + Sn * Hkv * Dv, S(0));
  std::vector<S> dP(static_cast<size_t>(Sn));
  for (int64_t h = 0; h < Hq; ++h)
    for (int64_t t = 0; t < T; ++t) {
      const S* p = P.data() + (h * T + t) * Sn;
      S rs = 0;
      for (int64_t j = 0; j < Sn; ++j) {
        S d = 0;
        for (int64_t i = 0; i < Dv; ++i) d += dout[(t * Hq + h) * Dv + i] * v[(j * Hkv + h / g) * Dv + i];
        dP[static_cast<size_t>(j)] = d;
        rs += d * p[j];
      }
      for (int64_t j = 0; j < Sn; ++j) {
        if (p[j] == S(0)) continue;
        const S ds = p[j] * (dP[static_cast<size_t>(j)] - rs) * scale;
        for (int64_t i = 0; i < D; ++i) {
          dq[(t * Hq + h) * D + i] += ds * k[(j * Hkv + h / g) * D + i];
          dk[(j * Hkv + h / g) * D + i] += ds * q[(t * Hq + h) * D + i];
        }
        for (int64_t i = 0; i < Dv; ++i) dv[(j * Hkv + h / g) * Dv + i] += p[j] * dout[(t * Hq + h) * Dv + i];
      }
    }
}

// ---------------------------------------------------------------- cross-entropy
// Mean over rows whose label != -100 of −log softmax(logits)[label]; returns the loss and writes
// dlogits (=) = (softmax − onehot)/n_valid (rows with label -100 get zeros). logits [T, V], labels [T]
template <class S>
S cross_entropy(const S* logits, std::span<const int32_t> labels, int64_t T, int64_t V, S* dlogits) {
  int64_t n = 0;
  for (int64_t t = 0; t < T; ++t) n += labels[static_cast<size_t>(t)] != -100;
  S loss = 0;
  for (int64_t t = 0; t < T; ++t) {
    const int32_t y = labels[static_cast<size_t>(t)];
    const S* l = logits + t * V;
    if (y == -100) {
      if (dlogits) std::fill(dlogits + t * V, dlogits + (t + 1) * V, S(0));
      continue;
    }
    S mx = *std::max_element(l, l + V), z = 0;
    for (int64_t i = 0; i < V; ++i) z += std::exp(l[i] - mx);
    loss += -(l[y] - mx - std::log(z));
    if (dlogits)
      for (int64_t i = 0; i < V; ++i) dlogits[t * V + i] = (std::exp(l[i] - mx) / z - (i == y ? S(1) : S(0))) / S(n);
  }
  return n ? loss / S(n) : S(0);
}

// ---------------------------------------------------------------- LoRA linear (frozen W)
// y = x·Wᵀ + s·((x ⊙ m)·Aᵀ)·Bᵀ, m an optional elementwise mask on the LoRA input only (the dropout
// scales of graft/train/lora_dropout.hpp; null = no mask). Backward: dx = dy·W + s·((dy·B)·A) ⊙ m,
// dA = s·(dy·B)ᵀ·(x ⊙ m), dB = s·dyᵀ·((x ⊙ m)·Aᵀ).
// x, m [T, K], W [N, K], A [r, K], B [N, r], dy [T, N]
template <class S>
void lora_linear_masked_fwd(const S* x, const S* m, const S* W, const S* A, const S* B, S s, int64_t T, int64_t K,
                            int64_t N, int64_t r, S* y) {
  std::vector<S> xa(static_cast<size_t>(T * r), S(0));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < r; ++j)
      for (int64_t i = 0; i < K; ++i)
        xa[static_cast<size_t>(t * r + j)] += (m ? x[t * K + i] * m[t * K + i] : x[t * K + i]) * A[j * K + i];
  for (int64_t t = 0; t < T; ++t)
    for (int64_t n = 0; n < N; ++n) {
      S acc = 0;
      for (int64_t i = 0; i < K; ++i) acc += x[t * K + i] * W[n * K + i];
      for (int64_t j = 0; j < r; ++j) acc += s * xa[static_cast<size_t>(t * r + j)] * B[n * r + j];
      y[t * N + n] = acc;
    }
}
template <class S>
void lora_linear_masked_bwd(const S* x, const S* m, const S* W, const S* A, const S* B, S s, const S* dy, int64_t T,
                            int64_t K, int64_t N, int64_t r, S* dx, S* dA, S* dB) {
  std::vector<S> xa(static_cast<size_t>(T * r), S(0)), dyb(static_cast<size_t>(T * r), S(0));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < r; ++j) {
      for (int64_t i = 0; i < K; ++i)
        xa[static_cast<size_t>(t * r + j)] += (m ? x[t * K + i] * m[t * K + i] : x[t * K + i]) * A[j * K + i];
      for (int64_t n = 0; n < N; ++n) dyb[static_cast<size_t>(t * r + j)] += dy[t * N + n] * B[n * r + j];
    }
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < K; ++i) {
      S acc = 0;
      for (int64_t n = 0; n < N; ++n) acc += dy[t * N + n] * W[n * K + i];
      if (m) {
        S lo = 0;
        for (int64_t j = 0; j < r; ++j) lo += dyb[static_cast<size_t>(t * r + j)] * A[j * K + i];
        dx[t * K + i] = acc + s * lo * m[t * K + i];
      } else {
        for (int64_t j = 0; j < r; ++j) acc += s * dyb[static_cast<size_t>(t * r + j)] * A[j * K + i];
        dx[t * K + i] = acc;
      }
    }
  for (int64_t j = 0; j < r; ++j)
    for (int64_t i = 0; i < K; ++i) {
      S acc = 0;
      for (int64_t t = 0; t < T; ++t) {
        const S g = dyb[static_cast<size_t>(t * r + j)] * x[t * K + i];
        acc += m ? g * m[t * K + i] : g;
      }
      dA[j * K + i] = s * acc;
    }
  for (int64_t n = 0; n < N; ++n)
    for (int64_t j = 0; j < r; ++j) {
      S acc = 0;
      for (int64_t t = 0; t < T; ++t) acc += dy[t * N + n] * xa[static_cast<size_t>(t * r + j)];
      dB[n * r + j] = s * acc;
    }
}
// The unmasked LoRA linear.
template <class S>
void lora_linear_fwd(const S* x, const S* W, const S* A, const S* B, S s, int64_t T, int64_t K, int64_t N, int64_t r,
                     S* y) {
  lora_linear_masked_fwd<S>(x, nullptr, W, A, B, s, T, K, N, r, y);
}
template <class S>
void lora_linear_bwd(const S* x, const S* W, const S* A, const S* B, S s, const S* dy, int64_t T, int64_t K, int64_t N,
                     int64_t r, S* dx, S* dA, S* dB) {
  lora_linear_masked_bwd<S>(x, nullptr, W, A, B, s, dy, T, K, N, r, dx, dA, dB);
}

}  // namespace graft::cpu::ref
