// Expert groups over a Communicator (expert_group.hpp).
#include "graft/dist/expert_group.hpp"

#include "graft/error.hpp"

namespace graft::dist {
namespace {

class CommExpertParallel final : public model::ExpertParallel {
 public:
  CommExpertParallel(std::unique_ptr<Communicator> c, bool driven) : c_(std::move(c)), driven_(driven) {}
  int rank() const override { return c_->rank(); }
  bool driven() const override { return driven_; }
  int size() const override { return c_->size(); }
  std::vector<std::string> exchange(const std::vector<std::string>& send) override {
    for (size_t r = 0; r < send.size(); ++r)
      if (static_cast<int>(r) != c_->rank()) sent_ += static_cast<int64_t>(send[r].size());
    return c_->alltoall(send);
  }
  int64_t bytes_sent() const override { return sent_; }

 private:
  std::unique_ptr<Communicator> c_;
  bool driven_;
  int64_t sent_ = 0;
};

}  // namespace

std::shared_ptr<model::ExpertParallel> expert_parallel_over(std::unique_ptr<Communicator> group, bool driven) {
  GRAFT_CHECK(group != nullptr, "expert_parallel_over: no communicator");
  return std::make_shared<CommExpertParallel>(std::move(group), driven);
}

std::shared_ptr<model::ExpertParallel> make_expert_parallel(Communicator& world, int expert_parallel_size) {
  const int P = expert_parallel_size;
  GRAFT_CHECK_FIX(P >= 1 && world.size() % P == 0,
                  "set expert_parallel_size to a divisor of the number of ranks (mpirun -np N)",
                  "expert_parallel_size {} does not divide the {} ranks started", P, world.size());
  // Group g = ranks [g·P, (g+1)·P), ranked in world order.
  return expert_parallel_over(world.split(world.rank() / P, world.rank() % P));
}

}  // namespace graft::dist
