// Adapter origins (origin.hpp).
#include "graft/adapters/origin.hpp"

#include <nlohmann/json.hpp>

#include <vector>

#include "graft/adapters/combine.hpp"
#include "graft/error.hpp"

namespace graft::adapters {

std::string combined_origin(std::span<const Adapter* const> adapters, std::span<const float> weights) {
  nlohmann::json parts = nlohmann::json::array();
  for (size_t i = 0; i < adapters.size(); ++i) {
    if (adapters[i]->source.empty()) return {};
    parts.push_back({weights[i], adapters[i]->source});
  }
  return "combine:" + parts.dump();
}

Adapter load_origin(const std::string& origin, const config::ModelConfig& cfg) {
  constexpr const char* kFix = "serve adapters loaded from PEFT directories (or combinations of them)";
  if (origin.rfind("peft:", 0) == 0) return load_peft(origin.substr(5), cfg);
  GRAFT_CHECK_FIX(origin.rfind("combine:", 0) == 0, kFix, "adapter origin '{}' is not loadable by another rank", origin);
  const auto parts = nlohmann::json::parse(origin.substr(8), nullptr, false);
  GRAFT_CHECK_FIX(parts.is_array() && !parts.empty(), kFix, "adapter origin '{}' is malformed", origin);
  std::vector<Adapter> loaded;
  std::vector<float> w;
  for (const auto& p : parts) {
    GRAFT_CHECK_FIX(p.is_array() && p.size() == 2 && p[0].is_number() && p[1].is_string(), kFix,
                    "adapter origin '{}' is malformed", origin);
    w.push_back(p[0].get<float>());
    loaded.push_back(load_origin(p[1].get<std::string>(), cfg));
  }
  std::vector<const Adapter*> ptrs;
  for (const auto& a : loaded) ptrs.push_back(&a);
  return combine(ptrs, w);
}

}  // namespace graft::adapters
