// Adapters applied together (sum of weighted deltas) as one adapter with concatenated ranks.
#include <cmath>
#include <cstring>
#include <map>
#include <vector>

#include "graft/adapters/combine.hpp"
#include "graft/adapters/origin.hpp"
#include "graft/error.hpp"

namespace graft::adapters {

namespace {
// [A_1; A_2; ...] and [c_1 B_1, c_2 B_2, ...] with c_i = w_i · s_i.
LoraFactors concat(const std::vector<std::pair<const LoraFactors*, float>>& parts, const std::string& what) {
  const int64_t in = parts[0].first->a.size(1), out = parts[0].first->b.size(0);
  int64_t R = 0;
  for (const auto& [f, w] : parts) {
    GRAFT_CHECK_FIX(f->a.size(1) == in && f->b.size(0) == out, "combine adapters trained on the same base model",
                    "{}: LoRA factors {} x {} do not match {} x {} of the first adapter", what, f->b.describe(),
                    f->a.describe(), out, in);
    R += f->rank();
  }
  LoraFactors c{Tensor::empty({R, in}, DType::F32), Tensor::empty({out, R}, DType::F32), 1.0f};
  float* A = c.a.data<float>();
  float* B = c.b.data<float>();
  int64_t k0 = 0;
  for (const auto& [f, w] : parts) {
    const int64_t r = f->rank();
    Tensor a = f->a.to(DType::F32), b = f->b.to(DType::F32);
    std::memcpy(A + k0 * in, a.data<float>(), static_cast<size_t>(r * in) * sizeof(float));
    const float s = w * f->scale;
    const float* bs = b.data<float>();
    for (int64_t o = 0; o < out; ++o)
      for (int64_t k = 0; k < r; ++k) B[o * R + k0 + k] = s * bs[o * r + k];
    k0 += r;
  }
  return c;
}

template <class Key>
void combine_map(std::map<Key, LoraFactors>& dst, std::span<const Adapter* const> ads, std::span<const float> w,
                 std::map<Key, LoraFactors> Adapter::*member, const char* what) {
  std::map<Key, std::vector<std::pair<const LoraFactors*, float>>> parts;
  for (size_t i = 0; i < ads.size(); ++i)
    for (const auto& [k, f] : ads[i]->*member) parts[k].push_back({&f, w[i]});
  for (const auto& [k, p] : parts) dst[k] = concat(p, what);
}
}  // namespace

Adapter combine(std::span<const Adapter* const> adapters, std::span<const float> weights) {
  GRAFT_CHECK(!adapters.empty() && adapters.size() == weights.size(), "combine: {} adapters and {} weights",
              adapters.size(), weights.size());
  for (float w : weights)
    GRAFT_CHECK_FIX(std::isfinite(w), "give each adapter a finite scale", "adapter scale {} is not finite", w);
  // modules_to_save copies replace the base's embedding / lm_head: they cannot be scaled or summed.
  for (const Adapter* a : adapters)
    GRAFT_CHECK_FIX(!(a->embed_tokens() || a->lm_head()) || (adapters.size() == 1 && weights[0] == 1.0f),
                    "run an adapter with modules_to_save alone, at scale 1",
                    "an adapter with trained copies of embed_tokens/lm_head (PEFT modules_to_save) cannot be {}",
                    adapters.size() == 1 ? "scaled" : "combined with other adapters");
  Adapter out;
  out.source = combined_origin(adapters, weights);
  out.config = adapters[0]->config;
  out.prefix = adapters[0]->prefix;
  out.embed_tokens_weight = adapters[0]->embed_tokens_weight;
  out.lm_head_weight = adapters[0]->lm_head_weight;
  if (adapters.size() == 1) {
    out.modules = adapters[0]->modules;
    out.experts = adapters[0]->experts;
    for (auto& [k, f] : out.modules) f.scale *= weights[0];
    for (auto& [k, f] : out.experts) f.scale *= weights[0];
    return out;
  }
  combine_map(out.modules, adapters, weights, &Adapter::modules, "module");
  combine_map(out.experts, adapters, weights, &Adapter::experts, "expert projection");
  return out;
}

}  // namespace graft::adapters
