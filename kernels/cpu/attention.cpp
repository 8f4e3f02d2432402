// CPU reference: masked softmax attention with grouped-query heads (causal, sliding window,
// chunked, packed segments). Exact two-pass softmax in fp32 with an fp64-free max-subtraction.
#include <cmath>
#include <initializer_list>
#include <limits>
#include <vector>

#include "graft/cpu/ops.hpp"
#include "graft/parallel.hpp"

namespace graft::cpu {

void attention(const Tensor& q, const Tensor& k, const Tensor& v, std::span<const int32_t> q_pos,
               std::span<const int32_t> k_pos, const AttentionMask& mask, float scale, Tensor& out, Tensor* lse) {
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
  const int64_t group = Hq / Hkv;
  const float* qp = q.data<float>();
  const float* kp = k.data<float>();
  const float* vp = v.data<float>();
  float* op = out.data<float>();
  float* lp = lse ? lse->data<float>() : nullptr;
#pragma omp parallel if (graft::parallel_worth(T * Hq * S * (D + Dv)))
  {
    std::vector<float> sc(static_cast<size_t>(S));
#pragma omp for collapse(2) schedule(dynamic)
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t h = 0; h < Hq; ++h) {
        const int64_t kh = h / group;
        const float* qv = qp + (t * Hq + h) * D;
        const int64_t qpos = q_pos[static_cast<size_t>(t)];
        float m = -std::numeric_limits<float>::infinity();
        for (int64_t s = 0; s < S; ++s) {
          const int64_t kpos = k_pos[static_cast<size_t>(s)];
          bool visible = true;
          if (mask.causal && kpos > qpos) visible = false;
          if (mask.sliding_window > 0 && qpos - kpos >= mask.sliding_window) visible = false;
          if (mask.chunk_size > 0 && (qpos / mask.chunk_size) != (kpos / mask.chunk_size)) visible = false;
          if (seg && mask.q_segments[static_cast<size_t>(t)] != mask.k_segments[static_cast<size_t>(s)]) visible = false;
          if (!visible) {
            sc[static_cast<size_t>(s)] = -std::numeric_limits<float>::infinity();
            continue;
          }
          const float* kv = kp + (s * Hkv + kh) * D;
          float dot = 0.f;
          for (int64_t d = 0; d < D; ++d) dot += qv[d] * kv[d];
          sc[static_cast<size_t>(s)] = dot * scale;
          m = std::max(m, sc[static_cast<size_t>(s)]);
        }
        float* o = op + (t * Hq + h) * Dv;
        for (int64_t d = 0; d < Dv; ++d) o[d] = 0.f;
        if (m == -std::numeric_limits<float>::infinity()) {
          if (lp) lp[t * Hq + h] = m;
          continue;
        }
        float sum = 0.f;
        for (int64_t s = 0; s < S; ++s) {
          const float e = std::exp(sc[static_cast<size_t>(s)] - m);
          sc[static_cast<size_t>(s)] = e;
          sum += e;
        }
        const float inv = 1.0f / sum;
        for (int64_t s = 0; s < S; ++s) {
          const float w = sc[static_cast<size_t>(s)];
          if (w == 0.f) continue;
          const float* vv = vp + (s * Hkv + kh) * Dv;
          for (int64_t d = 0; d < Dv; ++d) o[d] += w * vv[d];
        }
        for (int64_t d = 0; d < Dv; ++d) o[d] *= inv;
        if (lp) lp[t * Hq + h] = m + std::log(sum);
      }
    }
  }
}

}  // namespace graft::cpu
