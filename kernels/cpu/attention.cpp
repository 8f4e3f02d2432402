// CPU reference: masked softmax attention with grouped-query heads (causal, sliding window,
// chunked, packed segments). One task per query head and block of 32 query rows: S = scale·Q·Kᵀ (Eigen) over the keys
// the block sees, masked, softmax with max subtraction, O = P·V.
#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <limits>
#include <vector>

#include "graft/cpu/ops.hpp"
#include "graft/parallel.hpp"
#include "masked_softmax_row.hpp"
#include "parallel_for.hpp"

namespace graft::cpu {

void attention(const Tensor& q, const Tensor& k, const Tensor& v, std::span<const int32_t> q_pos,
               std::span<const int32_t> k_pos, const AttentionMask& mask, float scale, Tensor& out, Tensor* lse) {
  using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using MapC = Eigen::Map<const RowMat, 0, Eigen::OuterStride<>>;
  using MapS = Eigen::Map<RowMat, 0, Eigen::OuterStride<>>;
  for (const Tensor* t : std::initializer_list<const Tensor*>{&q, &k, &v, &out})
    GRAFT_CHECK(t->dtype() == DType::F32 && t->ndim() == 3 && t->is_contiguous(),
                "attention: {} must be contiguous f32 [tokens, heads, dim]", t->describe());
  const int64_t T = q.size(0), Hq = q.size(1), D = q.size(2);
  const int64_t S = k.size(0), Hkv = k.size(1), Dv = v.size(2);
  GRAFT_CHECK(k.size(2) == D, "attention: q {} and k {} head dims differ", q.describe(), k.describe());
  GRAFT_CHECK(v.size(0) == S && v.size(1) == Hkv, "attention: v {} does not match k {}", v.describe(), k.describe());
  GRAFT_CHECK(Hkv > 0 && Hq % Hkv == 0, "attention: {} query heads not a multiple of {} kv heads", Hq, Hkv);
  GRAFT_CHECK(out.size(0) == T && out.size(1) == Hq && out.size(2) == Dv, "attention: out {} must be [{}, {}, {}]",
              out.describe(), T, Hq, Dv);
  GRAFT_CHECK(static_cast<int64_t>(q_pos.size()) == T && static_cast<int64_t>(k_pos.size()) == S,
              "attention: {} query / {} key positions for {} / {} tokens", q_pos.size(), k_pos.size(), T, S);
  const bool seg = !mask.q_segments.empty();
  GRAFT_CHECK(!seg || (static_cast<int64_t>(mask.q_segments.size()) == T && static_cast<int64_t>(mask.k_segments.size()) == S),
              "attention: segment ids must cover every query and key");
  if (lse) GRAFT_CHECK(lse->dtype() == DType::F32 && lse->numel() == T * Hq, "attention: lse {} must be [{}, {}]",
                       lse->describe(), T, Hq);
  if (T == 0) return;
  const int64_t group = Hq / Hkv;
  Eigen::Matrix<bool, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> vis(T, S);
  visibility(q_pos, k_pos, mask, vis.data());
  float* lp = lse ? lse->data<float>() : nullptr;
  // Each query row's visible keys lie in its visible_span [lo, hi) (lo == hi: none). Queries go in blocks of kBlock rows and
  // a block multiplies only the keys some row of it sees: a causal prefill skips the keys past the block's last
  // query, 3/8 of Q·Kᵀ and P·V at 4 blocks (the whole [T, S] product computed the hidden half too).
  constexpr int64_t kBlock = 32;
  std::vector<VisibleSpan> span(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) span[static_cast<size_t>(t)] = visible_span(vis.data() + t * S, S);
  const int64_t blocks = (T + kBlock - 1) / kBlock;
  parallel_for(Hq * blocks, graft::parallel_worth(T * Hq * S * (D + Dv)), [&](int64_t task) {
    const int64_t h = task / blocks, t0 = task % blocks * kBlock, tn = std::min(kBlock, T - t0);
    const int64_t kh = h / group;
    int64_t lo = S, hi = 0;
    for (int64_t t = t0; t < t0 + tn; ++t)
      if (const VisibleSpan& r = span[static_cast<size_t>(t)]; r.lo < r.hi) {
        lo = std::min(lo, r.lo);
        hi = std::max(hi, r.hi);
      }
    MapS O(out.data<float>() + t0 * Hq * Dv + h * Dv, tn, Dv, Eigen::OuterStride<>(Hq * Dv));
    if (lo >= hi) {  // no row of the block sees a key: zeros, lse = -inf
      O.setZero();
      if (lp)
        for (int64_t t = t0; t < t0 + tn; ++t) lp[t * Hq + h] = -std::numeric_limits<float>::infinity();
      return;
    }
    const int64_t n = hi - lo;
    MapC Q(q.data<float>() + t0 * Hq * D + h * D, tn, D, Eigen::OuterStride<>(Hq * D));
    MapC K(k.data<float>() + lo * Hkv * D + kh * D, n, D, Eigen::OuterStride<>(Hkv * D));
    MapC V(v.data<float>() + lo * Hkv * Dv + kh * Dv, n, Dv, Eigen::OuterStride<>(Hkv * Dv));
    RowMat P(tn, n);  // [rows of the block, keys lo..hi)
    P.noalias() = Q * K.transpose();  // a GEMM (the scaled product expression was evaluated coefficient-wise)
    P *= scale;
    for (int64_t r = 0; r < tn; ++r) {
      const int64_t t = t0 + r;
      const SoftmaxRowStats st = masked_exp_row(P.data() + r * n, n, vis.data() + t * S + lo);
      if (st.sum == 0.0f) {  // nothing visible: zeros, lse = -inf
        if (lp) lp[t * Hq + h] = -std::numeric_limits<float>::infinity();
        continue;
      }
      P.row(r) /= st.sum;
      if (lp) lp[t * Hq + h] = st.max + std::log(st.sum);
    }
    O.noalias() = P * V;
  }, Schedule::Dynamic);
}

}  // namespace graft::cpu
