// parallel_for(n, parallel, body[, schedule]): body(i) for every i in [0, n), split over the OpenMP threads
// (schedule static, or dynamic) when `parallel` (callers pass graft::parallel_worth(work)), more than one
// thread is available and no parallel region is active; otherwise a plain loop on the calling thread, with no
// OpenMP region at all: in libgomp even `#pragma omp parallel for if (false)` costs 0.4-0.5 us a call (measured
// 2026-12-07, Zen 3, 1 and 2 threads), and a stories260K decode step makes dozens of such calls of ~1-2 us each.
#pragma once

#include <omp.h>

#include <cstdint>

namespace graft::cpu {

inline bool run_parallel(int64_t n, bool parallel) {
  return parallel && n > 1 && !omp_in_parallel() && omp_get_max_threads() > 1;
}

enum class Schedule { Static, Dynamic };

template <class F>
void parallel_for(int64_t n, bool parallel, F&& body, Schedule schedule = Schedule::Static) {
  if (!run_parallel(n, parallel)) {
    for (int64_t i = 0; i < n; ++i) body(i);
  } else if (schedule == Schedule::Static) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) body(i);
  } else {
#pragma omp parallel for schedule(dynamic)
    for (int64_t i = 0; i < n; ++i) body(i);
  }
}

}  // namespace graft::cpu
