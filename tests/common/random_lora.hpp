// A TrainableAdapter for tests: LoRA (r 4 / alpha 8) on every dense module and (r 3 / alpha 6) on every
// expert projection of `m`, PEFT's A init from a fixed seed and B ~ N(0, 0.05) so that the LoRA path is
// not zero. The values depend only on the modules' shapes, so a model loaded with a shard of the experts
// (expert parallel) gets the same adapter.
#pragma once

#include <random>

#include "graft/model/model.hpp"
#include "graft/train/lora_train.hpp"

namespace graft::testing {

inline train::TrainableAdapter random_lora(const model::Model& m) {
  using model::ExpertProj;
  train::TrainableAdapter ad;
  std::mt19937_64 rng(3);
  std::normal_distribution<float> gb(0, 0.05f);
  auto fill_b = [&](train::LoraParam& p) {
    for (int64_t i = 0; i < p.f.b.numel(); ++i) p.f.b.data<float>()[i] = gb(rng);
  };
  for (int l = 0; l < static_cast<int>(m.layers().size()); ++l) {
    const auto& L = m.layers()[static_cast<size_t>(l)];
    for (model::Module mod : model::kDenseModules) {
      const LinearWeight* w = model::dense_weight(L, mod);
      if (w && w->defined()) fill_b(ad.add(l, mod, w->in, w->out, 4, 8.0f, rng));
    }
    if (!L.kind.moe) continue;
    const auto& ex = L.moe.experts;
    for (int e = 0; e < static_cast<int>(ex.num_experts()); ++e)
      for (ExpertProj pj : {ExpertProj::Gate, ExpertProj::Up, ExpertProj::Down}) {
        const LinearWeight& w = pj == ExpertProj::Gate ? ex.gate[static_cast<size_t>(e)]
                                : pj == ExpertProj::Up ? ex.up[static_cast<size_t>(e)]
                                                       : ex.down[static_cast<size_t>(e)];
        fill_b(ad.add_expert(l, pj, e, w.in, w.out, 3, 6.0f, rng));
      }
  }
  return ad;
}

}  // namespace graft::testing
