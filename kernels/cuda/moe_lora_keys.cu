// moe_lora_keys: the MoE-LoRA virtual expert id of every permuted MoE row.
//
// Contract (device pointers, graft/cuda/serve_lora.hpp):
//   order [n] i32 (the MoE plan: permuted row p holds flat index f = t·k + j, n = T·k),
//   expert_ids [n] i32 (router output, flat [T, k]), token_slot [T] i32 (adapter slot, -1 = none)
//   -> keys [n] i32 (=): keys[p] = token_slot[t]·E + expert_ids[f], or -1 when the slot is outside
//      [0, num_slots) or the expert outside [0, E) (the device cannot throw; such rows get no LoRA).
//   The LoRA plan over these keys (lora_plan with num_keys = num_slots·E) groups the permuted rows
//   by (slot, expert), so the per-expert adapters of every customer run in one SGMV launch.
// Limits: k in [1, 8], E >= 1, num_slots >= 1, num_slots·E <= kMaxPlanKeys. One thread per row.
#include "serve_common.cuh"
#include "launch.cuh"

namespace graft::cuda::serve {
namespace {

__global__ void __launch_bounds__(256) moe_lora_keys_kernel(const int32_t* __restrict__ order,
                                                            const int32_t* __restrict__ expert_ids,
                                                            const int32_t* __restrict__ token_slot, int64_t n, int k,
                                                            int E, int num_slots, int32_t* __restrict__ keys) {
  const int64_t p = static_cast<int64_t>(blockIdx.x) * 256 + threadIdx.x;
  if (p >= n) return;
  const int32_t f = order[p];
  int32_t key = -1;
  if (f >= 0 && f < n) {
    const int32_t slot = token_slot[f / k], e = expert_ids[f];
    if (slot >= 0 && slot < num_slots && e >= 0 && e < E) key = slot * E + e;
  }
  keys[p] = key;
}

}  // namespace

void MoeLoraKeysDesc::validate() const {
  GRAFT_CHECK(k >= 1 && k <= 8, "moe_lora_keys: k = {} outside [1, 8]", k);
  GRAFT_CHECK(E >= 1 && num_slots >= 1, "moe_lora_keys: E = {} and num_slots = {} must be >= 1", E, num_slots);
  GRAFT_CHECK(static_cast<int64_t>(E) * num_slots <= kMaxPlanKeys,
              "moe_lora_keys: num_slots·E = {} exceeds the plan's {} keys", static_cast<int64_t>(E) * num_slots,
              kMaxPlanKeys);
  GRAFT_CHECK(T >= 0 && T * k < (int64_t{1} << 31), "moe_lora_keys: T·k = {} must be < 2^31", T * k);
  GRAFT_CHECK(T == 0 || (order && expert_ids && token_slot && keys),
              "moe_lora_keys: order / expert_ids / token_slot / keys must not be null");
}

void moe_lora_keys(const MoeLoraKeysDesc& d, cudaStream_t stream) {
  d.validate();
  const int64_t n = d.T * d.k;
  if (n == 0) return;
  GRAFT_LAUNCH(static_cast<unsigned>((n + 255) / 256), 256, 0, stream, moe_lora_keys_kernel)(d.order, d.expert_ids, d.token_slot,
                                                                                    n, d.k, d.E, d.num_slots, d.keys);
  GRAFT_CUDA_CHECK_LAUNCH();
}

}  // namespace graft::cuda::serve
