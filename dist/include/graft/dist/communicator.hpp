// The process group of a run: rank, size and the collectives the trainer needs. One interface for
// every transport (a single process, MPI on CPUs; NCCL on GPUs later), so training code is written
// once. Collectives are blocking and must be called by every rank in the same order.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace graft::dist {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string transport() const = 0;  // "single" | "mpi"
  // In place: data[i] = sum over ranks of data[i]. Every rank gets the same bits.
  virtual void allreduce_sum(float* data, int64_t n) = 0;   // data [n]
  virtual void allreduce_sum(double* data, int64_t n) = 0;  // data [n]
  // Non-blocking all-reduce (MPI_Iallreduce): starts data[i] = Σ ranks data[i]; data must stay untouched
  // until wait_all(). Every rank starts the same reductions in the same order. progress() lets started
  // reductions advance while the caller computes (call it now and then); wait_all() completes them all.
  // Defaults: the blocking allreduce_sum, nothing to progress or wait for.
  virtual void start_allreduce_sum(double* data, int64_t n) { allreduce_sum(data, n); }
  virtual void progress() {}
  virtual void wait_all() {}
  // data [bytes] of `root` copied to every rank.
  virtual void broadcast(void* data, int64_t bytes, int root) = 0;
  virtual void barrier() = 0;
  // Every rank's `mine`, in rank order (lengths may differ).
  virtual std::vector<std::string> allgather(const std::string& mine) = 0;
  // All-to-all of byte blocks: send[r] goes to rank r (send.size() == size()); returns the block each
  // rank sent here, in rank order (MPI_Alltoallv). Blocks may be empty and differ in length.
  virtual std::vector<std::string> alltoall(const std::vector<std::string>& send) = 0;
  // The sub-group of the ranks that pass the same `color`, ranked by `key` (MPI_Comm_split). Collective
  // over this group. The result's collectives involve only its members.
  virtual std::unique_ptr<Communicator> split(int color, int key) = 0;
  // Ends the group after a successful run (MPI_Finalize). Not called on errors: a rank that fails
  // exits without it and the launcher stops the others.
  virtual void finalize() {}

  bool is_root() const { return rank() == 0; }
  std::string broadcast_string(const std::string& s, int root = 0);
};

// One process: rank 0 of 1, every collective a no-op.
std::unique_ptr<Communicator> make_single_communicator();

// The communicator of this process: MPI when the environment says an MPI launcher started it
// (OMPI_COMM_WORLD_SIZE, PMI_SIZE or PMIX_RANK set), else single. MPI is initialised only then, so a
// plain `graft train` never touches MPI at run time. Throws when launched by mpirun but built without
// MPI. The first call decides; later calls return the same object.
Communicator& world();

// True when an MPI launcher started this process (see world()).
bool launched_by_mpi();

}  // namespace graft::dist
