// graft's CPU thread pool: the threads behind graft::cpu::parallel_for (parallel_for.hpp).
//
// Contract: pool_run(n, threads, schedule, range, ctx) calls range(ctx, i0, i1) over disjoint sub-ranges that cover
// [0, n) exactly once, on the calling thread and up to threads - 1 pool workers, and returns when every call has
// returned (rethrowing the first exception a call threw; sub-ranges not yet started are then skipped). It returns
// false, having run nothing, when it cannot take the job: one thread, a job of another caller in flight (the pool
// runs one job at a time; the second caller runs its loop itself), or a child process after fork().
//
// Why not OpenMP: an OpenMP team waits at its closing barrier for every thread, also one whose core another process
// holds, and its static schedule gives that thread's share to nobody else. Here nothing waits for a worker that has
// not started: every thread, the caller included, claims sub-ranges from atomic counters, its own block first, then
// the blocks of the others, so the caller finishes a descheduled worker's share itself. The caller waits only for
// sub-ranges a worker has already started.
//
// Schedules: Static splits [0, n) into one contiguous block per thread (as OpenMP's static schedule does; the caller
// owns block 0) and each block into up to kStaticSplits sub-ranges, so a thread works on the same indices from one
// call to the next unless it falls behind. Dynamic hands out single indices in order (0, 1, 2, ...) from one counter
// (up to 65,535 sub-ranges; larger n in runs of ceil(n / 65,535)).
//
// Waiting: an idle worker spins for spin_us (env GRAFT_CPU_SPIN_US, default kDefaultSpinUs) and then sleeps on a
// futex until the next job; the caller spins up to the same time for sub-ranges in flight, then sleeps. Inside a
// range call, omp_get_max_threads() is 1 on every thread (so a nested parallel_for and Eigen run on that thread).
#pragma once

#include <omp.h>

#include <cstdint>

namespace graft::cpu {

enum class Schedule { Static, Dynamic };

using RangeFn = void (*)(void* ctx, int64_t i0, int64_t i1);

inline constexpr int kStaticSplits = 4;
inline constexpr int kDefaultSpinUs = 300;

bool pool_run(int64_t n, int threads, Schedule schedule, RangeFn range, void* ctx);

// While alive, omp_get_max_threads() is 1 on this thread (restored after): what every body of a pool loop sees, so
// nested loops and Eigen stay on their thread.
class OneThreadScope {
 public:
  OneThreadScope() : saved_(omp_get_max_threads()) { omp_set_num_threads(1); }
  ~OneThreadScope() { omp_set_num_threads(saved_); }
  OneThreadScope(const OneThreadScope&) = delete;
  OneThreadScope& operator=(const OneThreadScope&) = delete;

 private:
  int saved_;
};

// How the pool waits, for `graft devices`: the spin time in microseconds (GRAFT_CPU_SPIN_US or the default).
int pool_spin_us();

}  // namespace graft::cpu
