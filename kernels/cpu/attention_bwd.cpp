// CPU attention backward (fp32, Eigen, one query head per task): recomputes P = softmax(s·QKᵀ + mask)
// and forms dV = Pᵀ·dO, dP = dO·Vᵀ, dS = P ⊙ (dP − rowsum(dP ⊙ P)), dQ = s·dS·K, dK = s·dSᵀ·Q.
// Query heads sharing a kv head (GQA) accumulate into the same dK/dV.
#include <Eigen/Core>

#include <limits>
#include <vector>

#include "graft/cpu/ops.hpp"
#include "graft/parallel.hpp"
#include "masked_softmax_row.hpp"
#include "parallel_for.hpp"

namespace graft::cpu {

void attention_bwd(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& dout, std::span<const int32_t> q_pos,
                   std::span<const int32_t> k_pos, const AttentionMask& m, float scale, Tensor& dq, Tensor& dk, Tensor& dv) {
  using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using MapC = Eigen::Map<const RowMat, 0, Eigen::OuterStride<>>;
  using MapS = Eigen::Map<RowMat, 0, Eigen::OuterStride<>>;
  const int64_t T = q.size(0), Hq = q.size(1), D = q.size(2), S = k.size(0), Hkv = k.size(1), Dv = v.size(2);
  GRAFT_CHECK(dout.numel() == T * Hq * Dv && dq.numel() == q.numel() && dk.numel() == k.numel() && dv.numel() == v.numel(),
              "attention_bwd: gradient shapes do not match q {}, k {}, v {}", q.describe(), k.describe(), v.describe());
  const int64_t g = Hq / Hkv;
  // Visibility is shared by every head.
  Eigen::Matrix<bool, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> vis(T, S);
  visibility(q_pos, k_pos, m, vis.data());
  // Per query head: its dQ, and its contribution to dK/dV (summed over the group afterwards).
  std::vector<RowMat> dkh(static_cast<size_t>(Hq)), dvh(static_cast<size_t>(Hq));
  parallel_for(Hq, graft::parallel_worth(T * S * Hq * (D + Dv)), [&](int64_t h) {
    const int64_t kh = h / g;
    MapC Q(q.data<float>() + h * D, T, D, Eigen::OuterStride<>(Hq * D));
    MapC K(k.data<float>() + kh * D, S, D, Eigen::OuterStride<>(Hkv * D));
    MapC V(v.data<float>() + kh * Dv, S, Dv, Eigen::OuterStride<>(Hkv * Dv));
    MapC dO(dout.data<float>() + h * Dv, T, Dv, Eigen::OuterStride<>(Hq * Dv));
    RowMat P(T, S);
    P.noalias() = Q * K.transpose();
    P *= scale;
    for (int64_t t = 0; t < T; ++t) {
      const float z = masked_exp_row(P.data() + t * S, S, vis.data() + t * S).sum;
      if (z > 0) P.row(t) /= z;
    }
    RowMat dP = dO * V.transpose();
    Eigen::VectorXf rs = (dP.cwiseProduct(P)).rowwise().sum();
    RowMat dS = P.cwiseProduct(dP.colwise() - rs) * scale;
    MapS(dq.data<float>() + h * D, T, D, Eigen::OuterStride<>(Hq * D)) = dS * K;
    dkh[static_cast<size_t>(h)] = dS.transpose() * Q;
    dvh[static_cast<size_t>(h)] = P.transpose() * dO;
  }, Schedule::Dynamic);
  for (int64_t kh = 0; kh < Hkv; ++kh) {
    MapS dK(dk.data<float>() + kh * D, S, D, Eigen::OuterStride<>(Hkv * D));
    MapS dV(dv.data<float>() + kh * Dv, S, Dv, Eigen::OuterStride<>(Hkv * Dv));
    dK = dkh[static_cast<size_t>(kh * g)];
    dV = dvh[static_cast<size_t>(kh * g)];
    for (int64_t i = 1; i < g; ++i) {
      dK += dkh[static_cast<size_t>(kh * g + i)];
      dV += dvh[static_cast<size_t>(kh * g + i)];
    }
  }
}

}  // namespace graft::cpu
