// parallel_for(n, parallel, body[, schedule]): body(i) for every i in [0, n), split over graft's CPU thread pool
// (graft/cpu/thread_pool.hpp: omp_get_max_threads() threads, the caller included; schedule static, or dynamic) when
// `parallel` (callers pass graft::parallel_worth(work)), more than one thread is available, and neither an OpenMP
// region nor another pool job is active on this thread; otherwise a plain loop on the calling thread. The pool hands
// a descheduled thread's share to the others, where an OpenMP team would wait for it at its barrier
// (docs/performance.md, "Another process on a core"). body must not depend on which thread runs an index.
#pragma once

#include <omp.h>

#include <cstdint>
#include <memory>
#include <type_traits>

#include "graft/cpu/thread_pool.hpp"

namespace graft::cpu {

inline bool run_parallel(int64_t n, bool parallel) {
  return parallel && n > 1 && !omp_in_parallel() && omp_get_max_threads() > 1;
}

template <class F>
void parallel_for(int64_t n, bool parallel, F&& body, Schedule schedule = Schedule::Static) {
  using Body = std::remove_reference_t<F>;
  if (run_parallel(n, parallel)) {
    const RangeFn range = [](void* ctx, int64_t i0, int64_t i1) {
      Body& f = *static_cast<Body*>(ctx);
      for (int64_t i = i0; i < i1; ++i) f(i);
    };
    void* ctx = const_cast<void*>(static_cast<const void*>(std::addressof(body)));
    if (pool_run(n, omp_get_max_threads(), schedule, range, ctx)) return;
    // The pool is running another caller's loop: run this one here, with the thread count a pool job's body sees
    // (1), so that what the body computes (e.g. a nested linear's slicing) does not depend on whether the pool was
    // free.
    const OneThreadScope one;
    for (int64_t i = 0; i < n; ++i) body(i);
    return;
  }
  for (int64_t i = 0; i < n; ++i) body(i);
}

}  // namespace graft::cpu
