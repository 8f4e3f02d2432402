// Adapter origins: a string that says how to load an adapter again in another process (Adapter::source,
// model::LoraSource::origin). Expert-parallel inference sends it with the rows of each adapter slot so
// that the ranks holding other experts use the same adapter (docs/distributed.md).
//   "peft:<absolute dir>"                       load_peft(dir)
//   "combine:[[w1, origin1], [w2, origin2]...]"  combine() of those origins with weights w_i (JSON)
#pragma once

#include <span>
#include <string>

#include "graft/adapters/peft.hpp"

namespace graft::adapters {

// The origin of combine(adapters, weights); empty when one of them has no origin.
std::string combined_origin(std::span<const Adapter* const> adapters, std::span<const float> weights);
// Loads the adapter an origin names, for the base `cfg`. Throws graft::Error naming the origin when it
// is malformed or empty, and load_peft's errors for the files.
Adapter load_origin(const std::string& origin, const config::ModelConfig& cfg);

}  // namespace graft::adapters
