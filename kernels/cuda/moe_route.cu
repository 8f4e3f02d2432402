// moe_route: router logits -> (expert ids, combine weights), every RouterKind.
//
// Contract: logits [T, E] f32 (device) -> ids [T, k] i32 (=), weights [T, k] f32 (=);
//   params.correction_bias: device [E] f32 or null (DeepSeek-V3 selection bias).
// Same math and order of operations as cpu::moe_route: scores in fp32 (softmax: exp(z − max) / Σ;
// sigmoid: 1 / (1 + exp(−z))); top-k by value, ties to the LOWER expert index (torch.topk), listed
// in descending order; group-limited selection (V3: group score = sum of the two best biased
// scores, V2: best score; keep topk_group groups; other experts masked to 0.0 like transformers);
// weights from the unbiased scores, renormalised over the selection when asked (denominator
// Σ + 1e-20 except for SoftmaxTopK), × routed_scaling_factor; Llama 4 (TopKSigmoid): top-k on
// the logits, sigmoid of the chosen logits, never renormalised.
// Limits: E <= 256, 1 <= k <= min(8, E), n_group <= 32, E % n_group == 0.
// One warp per token; lane l holds experts l, l+32, ... (8 per lane). The warp-wide softmax sum
// is a tree (the CPU sums serially): weights agree to ~1e-7 relative, ids exactly barring
// near-ties of a few ulps.
#include <cfloat>

#include "graft/cuda/check.hpp"
#include "graft/cuda/moe.hpp"
#include "warp_reduce.cuh"
#include "launch.cuh"

namespace graft::cuda::moe {
namespace {

constexpr int kPerLane = kMaxRouteExperts / 32;
constexpr int kWarps = 4;

// Arg-max over the warp: larger value wins, equal values -> lower index. Carries a payload.
__device__ __forceinline__ void warp_argmax(float& v, int& idx, float& pay) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, o);
    const int oi = __shfl_xor_sync(0xffffffffu, idx, o);
    const float op = __shfl_xor_sync(0xffffffffu, pay, o);
    if (ov > v || (ov == v && oi < idx)) {
      v = ov;
      idx = oi;
      pay = op;
    }
  }
}

struct RouteKernelArgs {
  const float* logits;
  int64_t T;
  int E, k;
  int kind;  // ops::RouterKind
  bool renorm;
  int n_group, topk_group;
  float rsf;
  const float* bias;
  int32_t* ids;
  float* weights;
};

__global__ void __launch_bounds__(kWarps * 32) route_kernel(const RouteKernelArgs a) {
  __shared__ float sh[kWarps][kMaxRouteExperts];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  if (t >= a.T) return;  // warp-uniform
  const int E = a.E;
  const float* z = a.logits + t * E;
  const auto kind = static_cast<ops::RouterKind>(a.kind);
  const bool softmax = kind == ops::RouterKind::SoftmaxTopK || kind == ops::RouterKind::SoftmaxGroupTopK;
  float s[kPerLane], ch[kPerLane];
  bool valid[kPerLane];
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int e = lane + 32 * i;
    valid[i] = e < E;
    s[i] = valid[i] ? z[e] : -FLT_MAX;
  }
  if (softmax) {
    float m = -FLT_MAX;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) m = fmaxf(m, s[i]);
    m = warp_max(m);
    float sum = 0.f;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      s[i] = valid[i] ? expf(s[i] - m) : 0.f;
      sum += s[i];
    }
    sum = warp_sum(sum);
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) s[i] = s[i] / sum;
  } else if (kind != ops::RouterKind::TopKSigmoid) {
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) s[i] = valid[i] ? 1.0f / (1.0f + expf(-s[i])) : 0.f;
  }
  // selection values
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int e = lane + 32 * i;
    if (kind == ops::RouterKind::TopKSigmoid) {
      ch[i] = s[i];  // raw logits; the weight is sigmoid of the chosen logit
    } else {
      ch[i] = s[i];
      if (kind == ops::RouterKind::SigmoidGroupTopK && a.bias && valid[i]) ch[i] += a.bias[e];
    }
  }
  if (kind == ops::RouterKind::SigmoidGroupTopK || kind == ops::RouterKind::SoftmaxGroupTopK) {
    const int gs = E / a.n_group;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i)
      if (valid[i]) sh[warp][lane + 32 * i] = ch[i];
    __syncwarp();
    float gscore = -FLT_MAX;
    if (lane < a.n_group) {
      const float* c = sh[warp] + lane * gs;
      if (kind == ops::RouterKind::SigmoidGroupTopK) {  // sum of the two best (or the only one)
        float b1 = -FLT_MAX, b2 = -FLT_MAX;
        for (int j = 0; j < gs; ++j) {
          const float v = c[j];
          if (v > b1) {
            b2 = b1;
            b1 = v;
          } else if (v > b2) {
            b2 = v;
          }
        }
        gscore = gs >= 2 ? (0.0f + b1) + b2 : 0.0f + b1;
      } else {
        float b1 = -FLT_MAX;
        for (int j = 0; j < gs; ++j) b1 = fmaxf(b1, c[j]);
        gscore = b1;
      }
    }
    unsigned keep = 0;  // bit g: group g kept
    for (int j = 0; j < a.topk_group; ++j) {
      float v = (lane < a.n_group && !((keep >> lane) & 1u)) ? gscore : -INFINITY;
      int idx = lane < a.n_group && !((keep >> lane) & 1u) ? lane : 1 << 30;
      float pay = 0.f;
      warp_argmax(v, idx, pay);
      keep |= 1u << idx;
    }
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int e = lane + 32 * i;
      if (valid[i] && !((keep >> (e / gs)) & 1u)) ch[i] = 0.0f;  // transformers masks with 0.0
    }
  }
  // top-k, ties to the lower index
  unsigned taken = 0;  // bit i: this lane's expert lane + 32 i chosen
  float sum = 0.f;
  int sel[kMaxTopK];
  float sc[kMaxTopK];
  for (int j = 0; j < a.k; ++j) {
    float v = -INFINITY, pay = 0.f;
    int idx = 1 << 30;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int e = lane + 32 * i;
      if (valid[i] && !((taken >> i) & 1u) && (ch[i] > v || idx == (1 << 30))) {
        v = ch[i];
        idx = e;
        pay = s[i];
      }
    }
    warp_argmax(v, idx, pay);
    if ((idx & 31) == lane) taken |= 1u << (idx >> 5);
    if (kind == ops::RouterKind::TopKSigmoid) pay = 1.0f / (1.0f + expf(-pay));
    sel[j] = idx;
    sc[j] = pay;
    sum += pay;
  }
  if (lane == 0) {
    const bool renorm = a.renorm && kind != ops::RouterKind::TopKSigmoid;
    const float denom = kind == ops::RouterKind::SoftmaxTopK ? sum : sum + 1e-20f;
    for (int j = 0; j < a.k; ++j) {
      float w = sc[j];
      if (renorm) w /= denom;
      a.ids[t * a.k + j] = sel[j];
      a.weights[t * a.k + j] = w * a.rsf;
    }
  }
}

}  // namespace

void route(const RouteArgs& r, cudaStream_t stream) {
  const auto& p = r.params;
  GRAFT_CHECK(r.E >= 1 && r.E <= kMaxRouteExperts, "moe route: {} experts outside [1, {}]", r.E, kMaxRouteExperts);
  GRAFT_CHECK(p.top_k >= 1 && p.top_k <= kMaxTopK && p.top_k <= r.E, "moe route: top_k {} outside [1, min({}, {})]",
              p.top_k, kMaxTopK, r.E);
  const bool grouped = p.kind == ops::RouterKind::SigmoidGroupTopK || p.kind == ops::RouterKind::SoftmaxGroupTopK;
  if (grouped)
    GRAFT_CHECK(p.n_group >= 1 && p.n_group <= 32 && r.E % p.n_group == 0 && p.topk_group >= 1 &&
                    p.topk_group <= p.n_group && p.top_k <= p.topk_group * (r.E / p.n_group),
                "moe route: {} experts cannot form {} groups (<= 32) keeping {} groups for top-{}", r.E, p.n_group,
                p.topk_group, p.top_k);
  GRAFT_CHECK(r.logits && r.ids && r.weights, "moe route: logits / ids / weights are null");
  if (r.T == 0) return;
  RouteKernelArgs a{r.logits, r.T, r.E, p.top_k, static_cast<int>(p.kind), p.renormalize,
                    grouped ? p.n_group : 1, grouped ? p.topk_group : 1, p.routed_scaling_factor,
                    p.correction_bias, r.ids, r.weights};
  const int64_t blocks = (r.T + kWarps - 1) / kWarps;
  GRAFT_CHECK(blocks <= 0x7fffffff, "moe route: {} tokens is too many", r.T);
  GRAFT_LAUNCH(static_cast<unsigned>(blocks), kWarps * 32, 0, stream, route_kernel)(a);
  GRAFT_CUDA_CHECK_LAUNCH();
}

}  // namespace graft::cuda::moe
