// When to fork OpenMP threads. Opening a parallel region costs microseconds when cores are idle and
// can cost milliseconds when they are oversubscribed (threads spin, then yield), so small ops run on
// one thread: every parallel loop in graft runs only when `graft::parallel_worth(work)`, where `work` is roughly
// the number of scalar operations the region performs. The CPU kernels go through graft::cpu::parallel_for
// (kernels/cpu/parallel_for.hpp), which then opens no OpenMP region at all (`if (false)` still costs ~0.4 us).
#pragma once

#include <cstdint>

namespace graft {

inline constexpr int64_t kParallelMinWork = int64_t{1} << 18;

constexpr bool parallel_worth(int64_t work) { return work >= kParallelMinWork; }

}  // namespace graft
