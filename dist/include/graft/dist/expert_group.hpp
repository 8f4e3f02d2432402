// The expert-parallel group of a rank (docs/distributed.md): with W ranks and expert_parallel_size P,
// ranks [g·P, (g+1)·P) form expert group g; each group holds every expert once, sharded over its P ranks
// (model::expert_shard), and the W/P groups are replicas of each other (data_parallel_size = W/P).
#pragma once

#include <memory>

#include "graft/dist/communicator.hpp"
#include "graft/model/expert_parallel.hpp"

namespace graft::dist {

// The rank's expert group over `world` (a sub-communicator of `world`, made collectively: every rank of
// `world` must call this with the same expert_parallel_size, which must divide world.size()).
std::shared_ptr<model::ExpertParallel> make_expert_parallel(Communicator& world, int expert_parallel_size);

// Expert exchanges over one communicator (all its ranks form the group). `driven`: rank 0 alone runs
// the model, the others serve their experts' rows (model::serve_expert_rows; inference).
std::shared_ptr<model::ExpertParallel> expert_parallel_over(std::unique_ptr<Communicator> group, bool driven = false);

}  // namespace graft::dist
