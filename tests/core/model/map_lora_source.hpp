// A LoraSource over two maps (per-layer module factors, per-expert factors) that the model-forward
// tests fill by hand.
#pragma once

#include <map>
#include <tuple>
#include <utility>

#include "graft/model/model.hpp"

namespace graft::testutil {

class MapLoraSource : public model::LoraSource {
 public:
  std::map<std::pair<int, model::Module>, LoraFactors> mods;
  std::map<std::tuple<int, model::ExpertProj, int>, LoraFactors> experts;
  const LoraFactors* find(int l, model::Module m) const override {
    auto it = mods.find({l, m});
    return it == mods.end() ? nullptr : &it->second;
  }
  const LoraFactors* find_expert(int l, model::ExpertProj p, int e) const override {
    auto it = experts.find({l, p, e});
    return it == experts.end() ? nullptr : &it->second;
  }
};

}  // namespace graft::testutil
