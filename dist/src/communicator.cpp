// The single-process communicator and the choice of the process's communicator (communicator.hpp).
#include "graft/dist/communicator.hpp"

#include <cstdlib>
#include <vector>

#include "graft/error.hpp"

namespace graft::dist {

#ifdef GRAFT_HAVE_MPI
std::unique_ptr<Communicator> make_mpi_communicator();  // mpi_communicator.cpp
#endif

std::string Communicator::broadcast_string(const std::string& s, int root) {
  int64_t n = static_cast<int64_t>(s.size());
  broadcast(&n, sizeof n, root);
  std::string out = rank() == root ? s : std::string(static_cast<size_t>(n), '\0');
  if (n) broadcast(out.data(), n, root);
  return out;
}

namespace {
class SingleCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string transport() const override { return "single"; }
  void allreduce_sum(float*, int64_t) override {}
  void allreduce_sum(double*, int64_t) override {}
  void broadcast(void*, int64_t, int) override {}
  void barrier() override {}
  std::vector<std::string> allgather(const std::string& mine) override { return {mine}; }
  std::vector<std::string> alltoall(const std::vector<std::string>& send) override {
    GRAFT_CHECK(send.size() == 1, "alltoall: {} blocks for 1 rank", send.size());
    return send;
  }
  std::unique_ptr<Communicator> split(int, int) override { return std::make_unique<SingleCommunicator>(); }
};
}  // namespace

std::unique_ptr<Communicator> make_single_communicator() { return std::make_unique<SingleCommunicator>(); }

bool launched_by_mpi() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"})
    if (std::getenv(v)) return true;
  return false;
}

Communicator& world() {
  static std::unique_ptr<Communicator> w = [] {
    if (!launched_by_mpi()) return make_single_communicator();
#ifdef GRAFT_HAVE_MPI
    return make_mpi_communicator();
#else
    GRAFT_FAIL("install the MPI development package (Debian: libopenmpi-dev) and rebuild graft, or run without mpirun",
               "graft was started by an MPI launcher (OMPI_COMM_WORLD_SIZE / PMI_SIZE / PMIX_RANK is set) but was "
               "built without MPI");
#endif
  }();
  return *w;
}

}  // namespace graft::dist
