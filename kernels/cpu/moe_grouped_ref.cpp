// CPU reference: grouped (per-expert) GEMM with per-expert LoRA, and the routed expert MLP
// (gate_up -> SwiGLU -> down) forward and backward. Plain loops, parallel over rows; templated on
// the scalar (float: the oracle; double: finite-difference tests). Layouts: graft/cpu/moe_ref.hpp.
#include <algorithm>
#include <cmath>

#include "graft/cpu/moe_ref.hpp"
#include "graft/error.hpp"

namespace graft::cpu {
namespace {
template <class S>
void check_offsets(std::span<const int32_t> offsets, int E) {
  GRAFT_CHECK(static_cast<int>(offsets.size()) == E + 1 && offsets[0] == 0, "moe_grouped: {} offsets for {} experts",
              offsets.size(), E);
  for (int e = 0; e < E; ++e)
    GRAFT_CHECK(offsets[static_cast<size_t>(e) + 1] >= offsets[static_cast<size_t>(e)], "moe_grouped: offsets decrease at {}", e);
}

// y[p, 0:N] (=) x[p, 0:K] · M_eᵀ, M_e [N, K], for rows [p0, p1).
template <class S>
void mm_nt(const S* x, int64_t K, const S* m, int64_t N, int64_t p0, int64_t p1, S* y, S alpha, bool acc) {
#pragma omp parallel for schedule(static) if ((p1 - p0) * N * K > (1 << 18))
  for (int64_t p = p0; p < p1; ++p)
    for (int64_t o = 0; o < N; ++o) {
      S s = 0;
      const S* xr = x + p * K;
      const S* mr = m + o * K;
      for (int64_t i = 0; i < K; ++i) s += xr[i] * mr[i];
      y[p * N + o] = (acc ? y[p * N + o] : S(0)) + alpha * s;
    }
}
// dx[p, 0:K] (+=) alpha · dy[p, 0:N] · M_e, M_e [N, K], rows [p0, p1).
template <class S>
void mm_nn_acc(const S* dy, int64_t N, const S* m, int64_t K, int64_t p0, int64_t p1, S* dx, S alpha) {
#pragma omp parallel for schedule(static) if ((p1 - p0) * N * K > (1 << 18))
  for (int64_t p = p0; p < p1; ++p)
    for (int64_t o = 0; o < N; ++o) {
      const S c = alpha * dy[p * N + o];
      const S* mr = m + o * K;
      S* d = dx + p * K;
      for (int64_t i = 0; i < K; ++i) d[i] += c * mr[i];
    }
}
// out[P, Q] (=) alpha · Σ_{p in [p0, p1)} l[p, :]ᵀ r[p, :]
template <class S>
void outer(const S* l, int64_t P, const S* r, int64_t Q, int64_t p0, int64_t p1, S* out, S alpha) {
  std::fill(out, out + P * Q, S(0));
  for (int64_t p = p0; p < p1; ++p)
    for (int64_t a = 0; a < P; ++a) {
      const S c = alpha * l[p * P + a];
      for (int64_t b = 0; b < Q; ++b) out[a * Q + b] += c * r[p * Q + b];
    }
}

}  // namespace

template <class S>
void moe_grouped_matmul_bwd(const S* x, int64_t K, const S* w, int64_t N, std::span<const int32_t> off, const GroupedLoraRef<S>& l,
                 const S* dy, S* dx, std::vector<S>& da, std::vector<S>& db) {
  const int E = static_cast<int>(off.size()) - 1;
  const int64_t n = off[static_cast<size_t>(E)], r = l.rank;
  std::fill(dx, dx + n * K, S(0));
  if (r > 0) {
    da.assign(static_cast<size_t>(E * r * K), S(0));
    db.assign(static_cast<size_t>(E * N * r), S(0));
  } else {
    da.clear();
    db.clear();
  }
  std::vector<S> z, dz;
  for (int e = 0; e < E; ++e) {
    const int64_t p0 = off[static_cast<size_t>(e)], p1 = off[static_cast<size_t>(e) + 1];
    if (p1 == p0) continue;
    mm_nn_acc(dy, N, w + e * N * K, K, p0, p1, dx, S(1));
    if (r == 0) continue;
    const S* A = l.a + e * r * K;
    const S* B = l.b + e * N * r;
    z.assign(static_cast<size_t>(n * r), S(0));
    dz.assign(static_cast<size_t>(n * r), S(0));
    mm_nt(x, K, A, r, p0, p1, z.data(), S(1), false);     // z = x·Aᵀ
    mm_nn_acc(dy, N, B, r, p0, p1, dz.data(), l.scale);   // dz = s·dy·B
    mm_nn_acc(dz.data(), r, A, K, p0, p1, dx, S(1));      // dx += dz·A
    outer(dz.data(), r, x, K, p0, p1, da.data() + e * r * K, S(1));       // dA = dzᵀ·x
    outer(dy, N, z.data(), r, p0, p1, db.data() + e * N * r, l.scale);    // dB = s·dyᵀ·z
  }
}

template <class S>
void moe_grouped_matmul(const S* x, int64_t K, const S* w, int64_t N, std::span<const int32_t> offsets,
                        const GroupedLoraRef<S>& l, S* y) {
  const int E = static_cast<int>(offsets.size()) - 1;
  check_offsets<S>(offsets, E);
  const int64_t n = offsets[static_cast<size_t>(E)], r = l.rank;
  std::vector<S> z(static_cast<size_t>(r > 0 ? n * r : 0));
  for (int e = 0; e < E; ++e) {
    const int64_t p0 = offsets[static_cast<size_t>(e)], p1 = offsets[static_cast<size_t>(e) + 1];
    if (p1 == p0) continue;
    mm_nt(x, K, w + e * N * K, N, p0, p1, y, S(1), false);
    if (r == 0) continue;
    mm_nt(x, K, l.a + e * r * K, r, p0, p1, z.data(), S(1), false);
    mm_nt(z.data(), r, l.b + e * N * r, N, p0, p1, y, l.scale, true);
  }
}

template <class S>
void moe_expert_mlp_fwd(const ExpertMlpRef<S>& m, const S* xp, std::span<const int32_t> offsets, ExpertMlpCache<S>& c) {
  check_offsets<S>(offsets, m.E);
  const int64_t n = offsets[static_cast<size_t>(m.E)], H = m.H, I = m.I;
  c.gu.assign(static_cast<size_t>(n * 2 * I), S(0));
  c.h.assign(static_cast<size_t>(n * I), S(0));
  c.y.assign(static_cast<size_t>(n * H), S(0));
  moe_grouped_matmul(xp, H, m.w_gu, 2 * I, offsets, m.lora_gu, c.gu.data());
  for (int64_t p = 0; p < n; ++p)
    for (int64_t i = 0; i < I; ++i) {
      const S g = c.gu[static_cast<size_t>(p * 2 * I + i)], u = c.gu[static_cast<size_t>(p * 2 * I + I + i)];
      c.h[static_cast<size_t>(p * I + i)] = silu_ref(g) * u;
    }
  moe_grouped_matmul(c.h.data(), I, m.w_down, H, offsets, m.lora_down, c.y.data());
}

template <class S>
void moe_expert_mlp_bwd(const ExpertMlpRef<S>& m, const S* xp, std::span<const int32_t> offsets,
                        const ExpertMlpCache<S>& c, const S* dyp, ExpertMlpGrads<S>& g) {
  check_offsets<S>(offsets, m.E);
  const int64_t n = offsets[static_cast<size_t>(m.E)], H = m.H, I = m.I;
  std::vector<S> dh(static_cast<size_t>(n * I)), dgu(static_cast<size_t>(n * 2 * I));
  moe_grouped_matmul_bwd(c.h.data(), I, m.w_down, H, offsets, m.lora_down, dyp, dh.data(), g.da_down, g.db_down);
  for (int64_t p = 0; p < n; ++p)
    for (int64_t i = 0; i < I; ++i) {
      const S gt = c.gu[static_cast<size_t>(p * 2 * I + i)], u = c.gu[static_cast<size_t>(p * 2 * I + I + i)];
      const S sg = S(1) / (S(1) + std::exp(-gt));
      const S d = dh[static_cast<size_t>(p * I + i)];
      dgu[static_cast<size_t>(p * 2 * I + i)] = d * u * sg * (S(1) + gt * (S(1) - sg));
      dgu[static_cast<size_t>(p * 2 * I + I + i)] = d * gt * sg;
    }
  g.dxp.assign(static_cast<size_t>(n * H), S(0));
  moe_grouped_matmul_bwd(xp, H, m.w_gu, 2 * I, offsets, m.lora_gu, dgu.data(), g.dxp.data(), g.da_gu, g.db_gu);
}

#define GRAFT_MOE_GROUPED_INSTANTIATE(S)                                                                          \
  template void moe_grouped_matmul<S>(const S*, int64_t, const S*, int64_t, std::span<const int32_t>,              \
                                      const GroupedLoraRef<S>&, S*);                                               \
  template void moe_grouped_matmul_bwd<S>(const S*, int64_t, const S*, int64_t, std::span<const int32_t>,          \
                                          const GroupedLoraRef<S>&, const S*, S*, std::vector<S>&, std::vector<S>&); \
  template void moe_expert_mlp_fwd<S>(const ExpertMlpRef<S>&, const S*, std::span<const int32_t>, ExpertMlpCache<S>&); \
  template void moe_expert_mlp_bwd<S>(const ExpertMlpRef<S>&, const S*, std::span<const int32_t>,                  \
                                      const ExpertMlpCache<S>&, const S*, ExpertMlpGrads<S>&);
GRAFT_MOE_GROUPED_INSTANTIATE(float)
GRAFT_MOE_GROUPED_INSTANTIATE(double)
#undef GRAFT_MOE_GROUPED_INSTANTIATE

}  // namespace graft::cpu
