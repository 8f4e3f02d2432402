// CPU reference: router backward (d logits from d combine weights) for every RouterKind. The
// selection (ids) comes from the forward and is treated as constant; see moe_ref.hpp for formulas.
#include <algorithm>
#include <cmath>
#include <vector>

#include "graft/cpu/moe_ref.hpp"
#include "graft/error.hpp"

namespace graft::cpu {

void moe_route_bwd(const Tensor& logits, const ops::RouterParams& p, const Tensor& ids, const Tensor& dweights,
                   Tensor& dlogits) {
  GRAFT_CHECK(logits.dtype() == DType::F32 && logits.ndim() == 2 && logits.is_contiguous(),
              "moe_route_bwd: logits {} must be contiguous f32 [T, E]", logits.describe());
  const int64_t T = logits.size(0);
  const int E = static_cast<int>(logits.size(1));
  const int k = p.top_k;
  GRAFT_CHECK(k >= 1 && k <= E, "moe_route_bwd: top_k {} must be in [1, {}]", k, E);
  GRAFT_CHECK(ids.dtype() == DType::I32 && ids.numel() == T * k, "moe_route_bwd: ids {} must be i32 [{}, {}]",
              ids.describe(), T, k);
  GRAFT_CHECK(dweights.dtype() == DType::F32 && dweights.numel() == T * k,
              "moe_route_bwd: dweights {} must be f32 [{}, {}]", dweights.describe(), T, k);
  GRAFT_CHECK(dlogits.dtype() == DType::F32 && dlogits.numel() == T * E, "moe_route_bwd: dlogits {} must be f32 [{}, {}]",
              dlogits.describe(), T, E);
  const float* lp = logits.data<float>();
  const int32_t* ip = ids.data<int32_t>();
  const float* gp = dweights.data<float>();
  float* dp = dlogits.data<float>();
  const bool softmax = p.kind == ops::RouterKind::SoftmaxTopK || p.kind == ops::RouterKind::SoftmaxGroupTopK;
  const bool renorm = p.renormalize && p.kind != ops::RouterKind::TopKSigmoid;
  const float eps = p.kind == ops::RouterKind::SoftmaxTopK ? 0.0f : 1e-20f;
  const float rsf = p.routed_scaling_factor;
  std::vector<float> s(static_cast<size_t>(E)), ds(static_cast<size_t>(E));
  for (int64_t t = 0; t < T; ++t) {
    const float* z = lp + t * E;
    if (softmax) {
      float m = z[0];
      for (int e = 1; e < E; ++e) m = std::max(m, z[e]);
      float sum = 0.f;
      for (int e = 0; e < E; ++e) sum += (s[static_cast<size_t>(e)] = std::exp(z[e] - m));
      for (int e = 0; e < E; ++e) s[static_cast<size_t>(e)] /= sum;
    } else {
      for (int e = 0; e < E; ++e) s[static_cast<size_t>(e)] = 1.0f / (1.0f + std::exp(-z[e]));
    }
    // w_j = rsf · s_{e_j} / D (D = Σ_S s + eps when renormalised, else 1).
    float D = 0.f, gw = 0.f;  // gw = Σ_j g_j · s_{e_j}
    for (int j = 0; j < k; ++j) {
      const int e = ip[t * k + j];
      GRAFT_CHECK(e >= 0 && e < E, "moe_route_bwd: expert id {} of token {} outside [0, {})", e, t, E);
      D += s[static_cast<size_t>(e)];
      gw += gp[t * k + j] * s[static_cast<size_t>(e)];
    }
    D += eps;
    std::fill(ds.begin(), ds.end(), 0.0f);
    for (int j = 0; j < k; ++j) {
      const size_t e = static_cast<size_t>(ip[t * k + j]);
      // renorm: d w_j / d s_i = rsf (δ_ij / D − s_j / D²)  ->  ds_i = rsf (g_i − Σ_j g_j s_j / D) / D
      ds[e] += renorm ? rsf * (gp[t * k + j] - gw / D) / D : rsf * gp[t * k + j];
    }
    float* dz = dp + t * E;
    if (softmax) {
      float dot = 0.f;
      for (int e = 0; e < E; ++e) dot += s[static_cast<size_t>(e)] * ds[static_cast<size_t>(e)];
      for (int e = 0; e < E; ++e) dz[e] = s[static_cast<size_t>(e)] * (ds[static_cast<size_t>(e)] - dot);
    } else {
      for (int e = 0; e < E; ++e) {
        const float se = s[static_cast<size_t>(e)];
        dz[e] = ds[static_cast<size_t>(e)] * se * (1.0f - se);
      }
    }
  }
}

}  // namespace graft::cpu
