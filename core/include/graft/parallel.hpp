// When to fork OpenMP threads. Opening a parallel region costs microseconds when cores are idle and
// can cost milliseconds when they are oversubscribed (threads spin, then yield), so small ops run on
// one thread: every `#pragma omp parallel` in graft carries `if(graft::parallel_worth(work))`, where
// `work` is roughly the number of scalar operations the region performs.
#pragma once

#include <cstdint>

namespace graft {

inline constexpr int64_t kParallelMinWork = int64_t{1} << 18;

constexpr bool parallel_worth(int64_t work) { return work >= kParallelMinWork; }

}  // namespace graft
