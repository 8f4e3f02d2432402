// Helpers shared by the dense training kernels (rmsnorm, swiglu, cross_entropy, adamw .cu).
#pragma once

#include <algorithm>
#include <cstdint>

#include "nf4_common.cuh"
#include "warp_reduce.cuh"

namespace graft::cuda::traink {

constexpr int kThreads = 256;  // a multiple of the 32-lane warp; 8 warps per block

using cuda::block_sum;  // warp_reduce.cuh

// Grid for a grid-stride loop over `work` items of kThreads each: enough blocks to fill every SM
// of the current device (read at run time) several times over, never more than the work needs.
inline unsigned grid_for(int64_t work_blocks) {
  const int64_t sms = nf4k::current_device_info().sm_count;
  return static_cast<unsigned>(std::clamp<int64_t>(work_blocks, 1, std::min<int64_t>(8 * sms, 65535)));
}

}  // namespace graft::cuda::traink
