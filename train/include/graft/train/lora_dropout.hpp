// LoRA dropout with PEFT semantics: y = W·x + scale·B·A·dropout(x), the dropout on the LoRA branch's
// input only, inverted scaling (kept elements × 1/(1−p)); never applied in eval or inference.
//
// The mask is a pure function of (recipe seed, micro-batch draw, layer, site, token row, column)
// through a counter-based hash (splitmix64's finaliser), not of any RNG state: a run resumed from a
// checkpoint and the recomputation of gradient checkpointing draw exactly the same masks, and
// tools/ref/torch_lora_grads.py transcribes the same hash to check gradients with dropout on.
//   key       = mix(mix(mix(mix(seed) ^ draw) ^ layer) ^ site)
//   u(row, c) = (mix(key ^ (row << 32 | c)) >> 11) · 2⁻⁵³        (uniform in [0, 1))
//   keep      ⇔ u ≥ p
// site = the Module id for attention / dense / shared-expert projections, 64 + 3·expert + proj for
// routed experts; row = the token's index in the sequence (so an expert sees its tokens' rows).
#pragma once

#include <cstdint>
#include <span>

#include "graft/backend/dropout_hash.hpp"
#include "graft/model/model.hpp"

namespace graft::train {

using graft::mix64;

inline uint64_t dropout_key(uint64_t seed, uint64_t draw, int layer, int site) {
  return mix64(mix64(mix64(mix64(seed) ^ draw) ^ static_cast<uint64_t>(layer)) ^ static_cast<uint64_t>(site));
}
inline int dropout_site(model::Module m) { return static_cast<int>(m); }
inline int dropout_site(model::ExpertProj p, int expert) { return 64 + 3 * expert + static_cast<int>(p); }

// m[i, c] (=) 0 or 1/(1−p) (graft/backend/dropout_hash.hpp; Backend::dropout_mask runs the same on a device).
using graft::dropout_scales;

}  // namespace graft::train
