// Inference with the routed experts sharded over the ranks of `mpirun -np N graft generate|eval|serve`
// (docs/distributed.md, "Expert-parallel inference"). Rank r loads only expert shard r of N; rank 0 runs
// the command as usual (the HTTP front, the scheduler, sampling) and sends each MoE layer's rows to the
// ranks holding their experts; ranks 1..N-1 hold only their experts (LoadOptions::experts_only) and answer
// those rows (model::serve_expert_rows), loading the adapters rank 0 names by their origin, until rank 0
// is done. Without mpirun (or with one rank) it is a
// plain Model::load.
#pragma once

#include <cstdio>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "device_option.hpp"
#include "graft/adapters/origin.hpp"
#include "graft/config/model_config.hpp"
#include "graft/dist/communicator.hpp"
#include "graft/dist/expert_group.hpp"
#include "graft/error.hpp"
#include "graft/model/expert_parallel.hpp"
#include "graft/model/model.hpp"

namespace graft::cli {

class InferenceGroup {
 public:
  // Loads the model (rank 0 of N, or the only process) or serves expert rows until rank 0 finishes
  // (ranks > 0: model() is then empty and the command returns). `what` names the command in messages.
  InferenceGroup(const std::string& dir, model::LoadOptions lo, const std::string& device, const std::string& what) {
    if (!dist::launched_by_mpi() || dist::world().size() == 1) {
      model_.emplace(model::Model::load(dir, lo));
      return;
    }
    dist::Communicator& w = dist::world();
    const auto cfg = config::load_model_config(dir, lo.config_overrides_json);
    GRAFT_CHECK_FIX(cfg.is_moe_model(), fmt::format("run graft {} without mpirun", what),
                    "{} ranks were started, but {} has no routed experts to shard (expert-parallel inference needs an "
                    "MoE model)", w.size(), dir);
    GRAFT_CHECK_FIX(cfg.moe.num_experts >= w.size(), fmt::format("start at most {} ranks", cfg.moe.num_experts),
                    "{} ranks for {} routed experts per layer", w.size(), cfg.moe.num_experts);
    lo.expert_shard_rank = w.rank();
    lo.expert_shard_count = w.size();
    lo.experts_only = w.rank() > 0;  // a worker needs its experts only
    auto m = model::Model::load(dir, lo);
    ep_ = dist::expert_parallel_over(w.split(0, w.rank()), /*driven=*/true);
    m.set_expert_parallel(ep_);
    if (w.rank() == 0) {
      const int64_t E = cfg.moe.num_experts, least = E / w.size(), most = (E + w.size() - 1) / w.size();
      std::fprintf(stderr, "expert parallel: %d ranks; each holds %s of %lld experts per MoE layer; rank 0 runs the model\n",
                   w.size(), (least == most ? std::to_string(most) : fmt::format("{}-{}", least, most)).c_str(),
                   static_cast<long long>(E));
      model_.emplace(std::move(m));
      return;
    }
    auto be = backend_for(device);
    std::map<std::string, adapters::Adapter> loaded;  // by origin, kept for the run
    const auto& mcfg = m.config();
    model::serve_expert_rows(m, *be, *ep_, [&](const std::string& origin) -> const model::LoraSource* {
      auto it = loaded.find(origin);
      if (it == loaded.end()) it = loaded.emplace(origin, adapters::load_origin(origin, mcfg)).first;
      return &it->second;
    });
    ep_.reset();
    w.finalize();
  }
  ~InferenceGroup() {
    if (!model_ || !ep_) return;
    try {  // release the workers, then end MPI on every rank together
      model::stop_expert_workers(*ep_);
      dist::world().finalize();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "graft: error: stopping the expert-parallel ranks: %s\n", e.what());
    }
  }
  InferenceGroup(const InferenceGroup&) = delete;
  InferenceGroup& operator=(const InferenceGroup&) = delete;

  // The model on rank 0 (or the only process); empty on the worker ranks, which are done.
  std::optional<model::Model>& model() { return model_; }
  bool sharded() const { return ep_ != nullptr; }

 private:
  std::optional<model::Model> model_;
  std::shared_ptr<model::ExpertParallel> ep_;
};

}  // namespace graft::cli
