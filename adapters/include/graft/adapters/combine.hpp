// Several adapters applied at once, each at its own weight, as one LoraSource:
//   W + Σ_i w_i · s_i · B_i A_i     (s_i = the adapter's lora_alpha / r scale, w_i = the user's weight)
// Used by `graft generate --adapter DIR [--adapter-scale W]...`.
#pragma once

#include <span>

#include "graft/adapters/peft.hpp"

namespace graft::adapters {

// One adapter: a copy whose factors share the tensors, with every scale multiplied by weights[0].
// Several: one factor pair per module targeted by any of them, the ranks concatenated
// (A = [A_1; A_2; ...] of shape [Σ r_i, in], B = [w_1 s_1 B_1, w_2 s_2 B_2, ...] of shape [out, Σ r_i],
// scale 1), so one LoRA product computes the sum of the deltas. Throws when the sizes differ (the
// adapters were made for different bases) or the weights are not finite.
Adapter combine(std::span<const Adapter* const> adapters, std::span<const float> weights);

}  // namespace graft::adapters
