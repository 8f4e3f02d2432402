// CPU reference: MoE routers (softmax-top-k with/without renorm, DeepSeek-V3 sigmoid group-limited
// with correction bias and routed scaling, DeepSeek-V2 group-limited greedy, Llama 4 top-k-sigmoid)
// and the token -> expert permutation plan. Formulas follow transformers' modeling code.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "graft/cpu/ops.hpp"
#include "graft/parallel.hpp"
#include "parallel_for.hpp"

namespace graft::cpu {
namespace {
// Indices of the k largest values, descending, ties to the lower index (torch.topk on CPU).
void topk(const float* v, int n, int k, std::vector<int>& idx) {
  idx.resize(static_cast<size_t>(n));
  std::iota(idx.begin(), idx.end(), 0);
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [v](int a, int b) {
    return v[a] > v[b] || (v[a] == v[b] && a < b);
  });
  idx.resize(static_cast<size_t>(k));
}
void softmax(const float* x, int n, float* y) {
  float m = x[0];
  for (int i = 1; i < n; ++i) m = std::max(m, x[i]);
  float s = 0.f;
  for (int i = 0; i < n; ++i) s += (y[i] = std::exp(x[i] - m));
  for (int i = 0; i < n; ++i) y[i] /= s;
}
}  // namespace

void moe_route(const Tensor& logits, const RouterParams& p, Tensor& ids, Tensor& weights) {
  GRAFT_CHECK(logits.dtype() == DType::F32 && logits.ndim() == 2 && logits.is_contiguous(),
              "moe_route: logits {} must be contiguous f32 [T, E]", logits.describe());
  const int64_t T = logits.size(0);
  const int E = static_cast<int>(logits.size(1));
  const int k = p.top_k;
  GRAFT_CHECK(k >= 1 && k <= E, "moe_route: top_k {} must be in [1, {}]", k, E);
  GRAFT_CHECK(ids.dtype() == DType::I32 && ids.numel() == T * k, "moe_route: ids {} must be i32 [{}, {}]", ids.describe(), T, k);
  GRAFT_CHECK(weights.dtype() == DType::F32 && weights.numel() == T * k, "moe_route: weights {} must be f32 [{}, {}]",
              weights.describe(), T, k);
  const bool grouped = p.kind == RouterKind::SigmoidGroupTopK || p.kind == RouterKind::SoftmaxGroupTopK;
  if (grouped)
    GRAFT_CHECK(p.n_group >= 1 && E % p.n_group == 0 && p.topk_group >= 1 && p.topk_group <= p.n_group &&
                    k <= p.topk_group * (E / p.n_group),
                "moe_route: {} experts cannot form {} groups keeping {} groups for top-{}", E, p.n_group, p.topk_group, k);
  const float* lp = logits.data<float>();
  int32_t* ip = ids.data<int32_t>();
  float* wp = weights.data<float>();
  parallel_for(T, graft::parallel_worth(T * E * 16), [&](int64_t t) {
    const float* l = lp + t * E;
    std::vector<float> scores(static_cast<size_t>(E)), choice;
    std::vector<int> top;
    switch (p.kind) {
      case RouterKind::SoftmaxTopK:
        softmax(l, E, scores.data());
        topk(scores.data(), E, k, top);
        break;
      case RouterKind::TopKSigmoid:
        topk(l, E, k, top);
        for (int e = 0; e < E; ++e) scores[static_cast<size_t>(e)] = 1.0f / (1.0f + std::exp(-l[e]));
        break;
      case RouterKind::SigmoidGroupTopK:
      case RouterKind::SoftmaxGroupTopK: {
        const bool sig = p.kind == RouterKind::SigmoidGroupTopK;
        if (sig) {
          for (int e = 0; e < E; ++e) scores[static_cast<size_t>(e)] = 1.0f / (1.0f + std::exp(-l[e]));
        } else {
          softmax(l, E, scores.data());
        }
        choice = scores;
        if (sig && p.correction_bias)
          for (int e = 0; e < E; ++e) choice[static_cast<size_t>(e)] += p.correction_bias[e];
        const int gs = E / p.n_group;
        std::vector<float> gscore(static_cast<size_t>(p.n_group));
        std::vector<int> gi;
        for (int g = 0; g < p.n_group; ++g) {
          const float* c = choice.data() + g * gs;
          if (sig) {  // V3: sum of the two best scores in the group (or the only one)
            topk(c, gs, std::min(2, gs), gi);
            float s = 0.f;
            for (int j : gi) s += c[j];
            gscore[static_cast<size_t>(g)] = s;
          } else {  // V2: best score in the group
            gscore[static_cast<size_t>(g)] = *std::max_element(c, c + gs);
          }
        }
        std::vector<int> keep;
        topk(gscore.data(), p.n_group, p.topk_group, keep);
        std::vector<float> masked(static_cast<size_t>(E), 0.0f);  // transformers masks with 0.0
        for (int g : keep)
          for (int j = 0; j < gs; ++j) masked[static_cast<size_t>(g * gs + j)] = choice[static_cast<size_t>(g * gs + j)];
        topk(masked.data(), E, k, top);
        break;
      }
    }
    float sum = 0.f;
    for (int j = 0; j < k; ++j) sum += scores[static_cast<size_t>(top[static_cast<size_t>(j)])];
    const bool renorm = p.renormalize && p.kind != RouterKind::TopKSigmoid;
    const float denom = p.kind == RouterKind::SoftmaxTopK ? sum : sum + 1e-20f;
    for (int j = 0; j < k; ++j) {
      const int e = top[static_cast<size_t>(j)];
      float w = scores[static_cast<size_t>(e)];
      if (renorm) w /= denom;
      ip[t * k + j] = e;
      wp[t * k + j] = w * p.routed_scaling_factor;
    }
  });
}

MoePermutation moe_permute_plan(const Tensor& ids, int num_experts) {
  GRAFT_CHECK(ids.dtype() == DType::I32 && ids.is_contiguous(), "moe_permute: ids {} must be contiguous i32", ids.describe());
  MoePermutation plan;
  const int64_t n = ids.numel();
  const int32_t* ip = ids.data<int32_t>();
  plan.counts.assign(static_cast<size_t>(num_experts), 0);
  for (int64_t i = 0; i < n; ++i) {
    GRAFT_CHECK(ip[i] >= 0 && ip[i] < num_experts, "moe_permute: expert id {} at {} outside [0, {})", ip[i], i, num_experts);
    ++plan.counts[static_cast<size_t>(ip[i])];
  }
  plan.offsets.assign(static_cast<size_t>(num_experts) + 1, 0);
  for (int e = 0; e < num_experts; ++e)
    plan.offsets[static_cast<size_t>(e) + 1] = plan.offsets[static_cast<size_t>(e)] + plan.counts[static_cast<size_t>(e)];
  plan.order.resize(static_cast<size_t>(n));
  std::vector<int32_t> cursor(plan.offsets.begin(), plan.offsets.end() - 1);
  for (int64_t i = 0; i < n; ++i) plan.order[static_cast<size_t>(cursor[static_cast<size_t>(ip[i])]++)] = static_cast<int32_t>(i);
  return plan;
}

}  // namespace graft::cpu
