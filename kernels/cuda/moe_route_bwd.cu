// moe_route_bwd: d logits from d combine weights for a fixed selection (every RouterKind).
//
// Contract: logits [T, E] f32, ids [T, k] i32 (from route), dweights [T, k] f32 (device)
//   -> dlogits [T, E] f32 (=), dense over all E experts (softmax couples every logit).
// Math (research/training-anchors.md §6.6; same as cpu::moe_route_bwd):
//   scores s = softmax(z) or σ(z); D = Σ_S s (+1e-20 except SoftmaxTopK), gw = Σ_j g_j s_{e_j};
//   ds_{e_j} = rsf·(g_j − gw/D)/D when renormalised, else rsf·g_j; 0 off the selection;
//   softmax kinds: dz = s ⊙ (ds − <s, ds>); sigmoid kinds (V3, Llama 4): dz = ds ⊙ s(1 − s).
//   The selection and the V3 correction bias get no gradient.
// Limits: E <= 256, k <= 8. One warp per token.
#include <cfloat>

#include "graft/cuda/check.hpp"
#include "graft/cuda/moe.hpp"
#include "warp_reduce.cuh"
#include "launch.cuh"

namespace graft::cuda::moe {
namespace {

constexpr int kPerLane = kMaxRouteExperts / 32;
constexpr int kWarps = 4;


struct RouteBwdKernelArgs {
  const float* logits;
  int64_t T;
  int E, k;
  bool softmax, renorm;
  float eps, rsf;
  const int32_t* ids;
  const float* dw;
  float* dlogits;
};

__global__ void __launch_bounds__(kWarps * 32) route_bwd_kernel(const RouteBwdKernelArgs a) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  if (t >= a.T) return;
  const int E = a.E, k = a.k;
  const float* z = a.logits + t * E;
  float s[kPerLane];
  float m = 0.f, sum = 1.f;
  if (a.softmax) {
    m = -FLT_MAX;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i)
      if (lane + 32 * i < E) m = fmaxf(m, z[lane + 32 * i]);
    m = warp_max(m);
    sum = 0.f;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      s[i] = lane + 32 * i < E ? expf(z[lane + 32 * i] - m) : 0.f;
      sum += s[i];
    }
    sum = warp_sum(sum);
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) s[i] /= sum;
  } else {
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) s[i] = lane + 32 * i < E ? 1.0f / (1.0f + expf(-z[lane + 32 * i])) : 0.f;
  }
  // D and gw in slot order (every lane computes the same serial sums)
  float D = 0.f, gw = 0.f;
  for (int j = 0; j < k; ++j) {
    const int e = a.ids[t * k + j];
    const float se = a.softmax ? expf(z[e] - m) / sum : 1.0f / (1.0f + expf(-z[e]));
    D += se;
    gw += a.dw[t * k + j] * se;
  }
  D += a.eps;
  float ds[kPerLane];
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) ds[i] = 0.f;
  for (int j = 0; j < k; ++j) {
    const int e = a.ids[t * k + j];
    if ((e & 31) != lane) continue;
    const float g = a.dw[t * k + j];
    const float v = a.renorm ? a.rsf * (g - gw / D) / D : a.rsf * g;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i)
      if (i == (e >> 5)) ds[i] += v;
  }
  float* dz = a.dlogits + t * E;
  if (a.softmax) {
    float dot = 0.f;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) dot += s[i] * ds[i];
    dot = warp_sum(dot);
#pragma unroll
    for (int i = 0; i < kPerLane; ++i)
      if (lane + 32 * i < E) dz[lane + 32 * i] = s[i] * (ds[i] - dot);
  } else {
#pragma unroll
    for (int i = 0; i < kPerLane; ++i)
      if (lane + 32 * i < E) dz[lane + 32 * i] = ds[i] * s[i] * (1.0f - s[i]);
  }
}

}  // namespace

void route_bwd(const RouteBwdArgs& r, cudaStream_t stream) {
  const auto& p = r.params;
  GRAFT_CHECK(r.E >= 1 && r.E <= kMaxRouteExperts, "moe route_bwd: {} experts outside [1, {}]", r.E, kMaxRouteExperts);
  GRAFT_CHECK(p.top_k >= 1 && p.top_k <= kMaxTopK && p.top_k <= r.E, "moe route_bwd: top_k {} outside [1, min({}, {})]",
              p.top_k, kMaxTopK, r.E);
  GRAFT_CHECK(r.logits && r.ids && r.dweights && r.dlogits, "moe route_bwd: null pointer argument");
  if (r.T == 0) return;
  const bool softmax = p.kind == ops::RouterKind::SoftmaxTopK || p.kind == ops::RouterKind::SoftmaxGroupTopK;
  RouteBwdKernelArgs a{r.logits, r.T, r.E, p.top_k, softmax, p.renormalize && p.kind != ops::RouterKind::TopKSigmoid,
                       p.kind == ops::RouterKind::SoftmaxTopK ? 0.0f : 1e-20f, p.routed_scaling_factor,
                       r.ids, r.dweights, r.dlogits};
  const int64_t blocks = (r.T + kWarps - 1) / kWarps;
  GRAFT_CHECK(blocks <= 0x7fffffff, "moe route_bwd: {} tokens is too many", r.T);
  GRAFT_LAUNCH(static_cast<unsigned>(blocks), kWarps * 32, 0, stream, route_bwd_kernel)(a);
  GRAFT_CUDA_CHECK_LAUNCH();
}

}  // namespace graft::cuda::moe
