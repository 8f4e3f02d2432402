// Expert parallelism (docs/distributed.md): the routed experts of every MoE layer are sharded over a
// group of ranks; rank r of the group holds experts [expert_shard(E, r, P)) — contiguous shards whose
// sizes differ by at most one — with their frozen weights and their LoRA. Attention, routers and shared
// experts stay replicated. A MoE layer sends each (token, slot) row to the rank owning its expert and
// gets the expert's output back (all-to-all), forward and backward.
//
// core knows only this interface (the transport is in graft_dist: dist::make_expert_parallel wraps a
// Communicator). Every member of the group must run the same sequence of MoE layers in lockstep: one
// exchange per layer per forward (and per backward in training), with any number of own tokens (0 too).
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "graft/backend/backend.hpp"

namespace graft::model {

// [first, last) experts of `num_experts` that `rank` of `size` holds.
std::pair<int64_t, int64_t> expert_shard(int64_t num_experts, int rank, int size);
// The rank of `size` that holds `expert` of `num_experts`.
int expert_owner(int64_t expert, int64_t num_experts, int size);

class ExpertParallel {
 public:
  virtual ~ExpertParallel() = default;
  virtual int rank() const = 0;  // in the expert group
  virtual int size() const = 0;
  // Symmetric (false, training): every rank runs its own forwards and they meet at each MoE layer.
  // Driven (true, inference): rank 0 alone runs the model; the others sit in serve_expert_rows and
  // answer the rows of their experts until stop_expert_workers.
  virtual bool driven() const { return false; }
  // send[r] goes to rank r of the group; returns the block each rank sent here, in rank order. Collective.
  virtual std::vector<std::string> exchange(const std::vector<std::string>& send) = 0;
  // Bytes this rank has sent to the other ranks of the group so far (its own block not counted).
  virtual int64_t bytes_sent() const { return 0; }

  std::pair<int64_t, int64_t> shard(int64_t num_experts) const { return expert_shard(num_experts, rank(), size()); }
  bool owns(int64_t expert, int64_t num_experts) const { return expert_owner(expert, num_experts, size()) == rank(); }
};

class Model;
class LoraSource;

// Backend::moe_experts of MoE layer `layer` with the experts sharded over `ep` (inference): each
// (token, slot) row of x goes to its expert's owner with its combine weight and adapter slot, the owner
// runs Backend::moe_experts on the rows it received (one expert each), and the weighted outputs come
// back and are summed per token in slot order. Same contract and result as be.moe_experts over unsharded
// experts up to float rounding; `experts` needs only this rank's shard (the others may be undefined).
// adapter_origins[s] = LoraSource::origin() of slot s: in a driven group the worker ranks load those
// adapters for their experts' LoRA (a slot with expert LoRA and no origin is refused). Collective.
//   x [T, H], ids [T, k] i32, weights [T, k] f32, row_slot [T] or empty  ->  out [T, H]
void moe_experts_sharded(Backend& be, ExpertParallel& ep, int layer, const Tensor& x, const Tensor& ids,
                         const Tensor& weights, const ExpertWeights& experts, const ExpertLora* lora,
                         std::span<const std::string> adapter_origins, std::span<const int32_t> row_slot,
                         bool scale_input, Tensor& out);

// A worker rank of a driven group: answers rank 0's expert rows for `m`'s shard of experts, layer after
// layer, until rank 0 calls stop_expert_workers. `adapter` maps an adapter origin to the adapter (the
// worker loads and caches it; it is called once per origin and slot use). Returns the number of MoE
// layers served.
int64_t serve_expert_rows(const Model& m, Backend& be, ExpertParallel& ep,
                          const std::function<const LoraSource*(const std::string& origin)>& adapter);
// Rank 0 of a driven group: releases the workers from serve_expert_rows. Collective with them.
void stop_expert_workers(ExpertParallel& ep);

}  // namespace graft::model
