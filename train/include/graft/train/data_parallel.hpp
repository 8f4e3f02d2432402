// Data-parallel training over a dist::Communicator (docs/distributed.md): the recipe's parallel
// layout, the start-up handshake, each rank's share of a global batch, the gradient accumulation
// and bucketed all-reduce, and the replica check. The trainer calls these; with one rank every one is a no-op or
// the identity, so a single-process run is bit-identical to one without them.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "graft/dist/communicator.hpp"
#include "graft/tensor.hpp"
#include "graft/train/recipe.hpp"

namespace graft::train {

struct ParallelLayout {
  int world = 1;            // ranks started by the launcher
  int data_parallel = 1;    // recipe data_parallel_size (unset = every rank)
  int expert_parallel = 1;  // recipe expert_parallel_size: ranks sharing one copy of the experts
};

// Reads data_parallel_size / expert_parallel_size against the launched world. Every rank trains on its
// own share of each global batch; with expert_parallel_size P > 1 the routed experts are sharded over
// groups of P consecutive ranks (dist::make_expert_parallel) and data_parallel_size = world / P is the
// number of expert replicas. Throws on a size < 1, on P not dividing the number of ranks and when
// data_parallel_size x expert_parallel_size differs from it (naming both).
ParallelLayout resolve_parallel_layout(const Recipe& r, int world_size);

// Every rank states (graft version, recipe hash, effective recipe text); all must agree with rank 0,
// else every rank throws a message naming the ranks that differ and what differs. Collective.
void check_same_run(dist::Communicator& comm, const std::string& recipe_hash, const std::string& recipe_text,
                    const std::string& version);

// The part [begin, end) of `n` global items (micro-batch sequences of a step, eval sequences) that
// `rank` of `size` computes: contiguous, sizes differ by at most one, rank order = global order.
std::pair<int64_t, int64_t> shard_range(int64_t n, int rank, int size);

// A step's gradient sum in double precision. Each sequence's gradient is computed alone (float, in
// the LoRA tensors) and added here; the ranks' partial sums are then all-reduced in double, in buckets
// of at most `bucket_values` values, and rounded to float once. Double accumulation makes the sum's
// order (sequence order on one rank, the all-reduce's tree across ranks) vanish below float
// precision, so N ranks train the single-process adapter (docs/distributed.md).
//
// Overlap with the backward: give each tensor its stage — when its gradient is final in a backward
// (StepOptions::on_gradients_ready: the layer index, num_layers for lm_head, -1 for the embedding) —
// and list the tensors by decreasing stage, the order the backward finishes them. During a rank's last
// sequence of the step (begin_last), ready(stage) adds that stage's tensors and starts the all-reduce
// of every bucket now complete; finish() adds the rest, starts the remaining buckets and waits.
class GradientAccumulator {
 public:
  GradientAccumulator(std::vector<Tensor*> grads, int64_t bucket_values = int64_t{1} << 21,
                      std::vector<int> stages = {});  // 16 MiB buckets; stages: one per tensor, non-increasing
  void zero();
  void add();  // sum += the tensors (each [numel], f32)
  void add_and_zero(Tensor& grad);  // sum += one of the tensors, which is then zeroed (expert parallel)
  void allreduce_sum(dist::Communicator& comm);  // blocking: every bucket, in order
  // The overlapped reduction of a step (see above). begin_last before the rank's last forward/backward
  // of the step (never called when the rank has none); ready(stage) from its on_gradients_ready; then
  // finish on every rank. The sum must not be touched between a bucket's start and finish.
  void begin_last(dist::Communicator& comm);
  void ready(int stage);
  void finish(dist::Communicator& comm);
  void store();  // the tensors = float(sum)
  int64_t buckets() const { return static_cast<int64_t>(bucket_end_.size()); }
  int64_t values() const { return static_cast<int64_t>(sum_.size()); }
  int64_t buckets_started_early() const { return early_; }  // by ready() in the last step

 private:
  void add_tensor(size_t i);
  void start_ready_buckets();
  std::vector<Tensor*> grads_;
  std::vector<int> stages_;
  std::vector<int64_t> bucket_end_;  // one past the last value of each bucket (tensor boundaries)
  std::vector<size_t> bucket_last_;  // index of the last tensor of each bucket
  std::vector<double> sum_;
  std::unordered_map<const Tensor*, int64_t> offset_;  // of each tensor in sum_
  std::vector<int64_t> tensor_offset_;
  // the overlapped reduction in progress
  dist::Communicator* comm_ = nullptr;
  std::vector<char> added_;   // per tensor: added during the last sequence
  size_t added_prefix_ = 0;   // tensors [0, added_prefix_) are all added
  size_t started_ = 0;        // buckets started
  int64_t early_ = 0;
};

// 64-bit FNV-1a of the tensors' bytes (f32 parameters), to check that replicas hold the same weights.
uint64_t fingerprint(const std::vector<const Tensor*>& tensors);
// Throws on every rank when the ranks' fingerprints differ (names the step and the ranks). Collective.
void check_replicas_agree(dist::Communicator& comm, uint64_t fp, int64_t step);

}  // namespace graft::train
