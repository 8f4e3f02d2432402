// CPU reference: DeepSeek multi-head latent attention in the absorbed form, over the compressed
// KV cache (latent c and the shared RoPE key), never expanding per-head keys and values:
//   q_abs[t,h] = q_nope[t,h] · W_UK[h]                       W_UK[h] = kv_b rows h·(dn+dv) + [0, dn)
//   s[t,h,j]   = (q_abs[t,h] · c[j] + q_pe[t,h] · k_pe[j]) · scale
//   out[t,h]   = W_UV[h] · Σ_j softmax(s)[j] · c[j]          W_UV[h] = kv_b rows h·(dn+dv) + [dn, dn+dv)
// Mathematically equal to the naive form (k = [W_UK c, k_pe], v = W_UV c).
#include <Eigen/Core>

#include <cmath>
#include <limits>

#include "graft/cpu/ops.hpp"
#include "graft/parallel.hpp"
#include "parallel_for.hpp"

namespace graft::cpu {

void mla_attention_absorbed(const Tensor& q_nope, const Tensor& q_pe, const Tensor& c, const Tensor& k_pe,
                            const Tensor& w_kvb, int64_t v_head_dim, std::span<const int32_t> q_pos,
                            std::span<const int32_t> k_pos, const AttentionMask& mask, float scale, Tensor& out) {
  using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using MapC = Eigen::Map<const RowMat, 0, Eigen::OuterStride<>>;
  for (const Tensor* t : std::initializer_list<const Tensor*>{&q_nope, &q_pe, &c, &k_pe, &w_kvb, &out})
    GRAFT_CHECK(t->dtype() == DType::F32 && t->is_contiguous(), "mla_attention: {} must be contiguous f32", t->describe());
  const int64_t T = q_nope.size(0), H = q_nope.size(1), dn = q_nope.size(2), dr = q_pe.size(2);
  const int64_t S = c.size(0), kvr = c.numel() / std::max<int64_t>(S, 1), dv = v_head_dim;
  GRAFT_CHECK(q_pe.size(0) == T && q_pe.size(1) == H, "mla_attention: q_pe {} does not match q_nope {}", q_pe.describe(),
              q_nope.describe());
  GRAFT_CHECK(k_pe.numel() == S * dr, "mla_attention: k_pe {} must hold [{}, {}]", k_pe.describe(), S, dr);
  GRAFT_CHECK(w_kvb.ndim() == 2 && w_kvb.size(0) == H * (dn + dv) && w_kvb.size(1) == kvr,
              "mla_attention: kv_b {} must be [{}, {}]", w_kvb.describe(), H * (dn + dv), kvr);
  GRAFT_CHECK(out.numel() == T * H * dv, "mla_attention: out {} must be [{}, {}, {}]", out.describe(), T, H, dv);
  GRAFT_CHECK(static_cast<int64_t>(q_pos.size()) == T && static_cast<int64_t>(k_pos.size()) == S,
              "mla_attention: {} / {} positions for {} / {} rows", q_pos.size(), k_pos.size(), T, S);
  const bool seg = !mask.q_segments.empty();
  Eigen::Map<const RowMat> C(c.data<float>(), S, kvr), KPE(k_pe.data<float>(), S, dr);
  parallel_for(H, graft::parallel_worth(T * H * S * (kvr + dr)), [&](int64_t h) {
    MapC Wuk(w_kvb.data<float>() + h * (dn + dv) * kvr, dn, kvr, Eigen::OuterStride<>(kvr));
    MapC Wuv(w_kvb.data<float>() + (h * (dn + dv) + dn) * kvr, dv, kvr, Eigen::OuterStride<>(kvr));
    MapC Qn(q_nope.data<float>() + h * dn, T, dn, Eigen::OuterStride<>(H * dn));
    MapC Qp(q_pe.data<float>() + h * dr, T, dr, Eigen::OuterStride<>(H * dr));
    RowMat qabs = Qn * Wuk;                                       // [T, kvr]
    RowMat s = (qabs * C.transpose() + Qp * KPE.transpose()) * scale;  // [T, S]
    for (int64_t t = 0; t < T; ++t) {
      float mx = -std::numeric_limits<float>::infinity();
      for (int64_t j = 0; j < S; ++j) {
        const int64_t qp = q_pos[static_cast<size_t>(t)], kp = k_pos[static_cast<size_t>(j)];
        bool vis = !(mask.causal && kp > qp) && !(mask.sliding_window > 0 && qp - kp >= mask.sliding_window) &&
                   !(mask.chunk_size > 0 && qp / mask.chunk_size != kp / mask.chunk_size) &&
                   !(seg && mask.q_segments[static_cast<size_t>(t)] != mask.k_segments[static_cast<size_t>(j)]);
        if (!vis) s(t, j) = -std::numeric_limits<float>::infinity();
        mx = std::max(mx, s(t, j));
      }
      if (mx == -std::numeric_limits<float>::infinity()) {
        s.row(t).setZero();
        continue;
      }
      float z = 0;
      for (int64_t j = 0; j < S; ++j) z += (s(t, j) = std::exp(s(t, j) - mx));
      s.row(t) /= z;
    }
    RowMat o = (s * C) * Wuv.transpose();  // [T, dv]
    for (int64_t t = 0; t < T; ++t)
      for (int64_t d = 0; d < dv; ++d) out.data<float>()[(t * H + h) * dv + d] = o(t, d);
  }, Schedule::Dynamic);
}

}  // namespace graft::cpu
