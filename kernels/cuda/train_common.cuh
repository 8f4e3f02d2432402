// Helpers shared by the dense training kernels (rmsnorm, swiglu, cross_entropy, adamw .cu).
#pragma once

#include <algorithm>
#include <cstdint>

#include "nf4_common.cuh"
#include "warp_reduce.cuh"

namespace graft::cuda::traink {

constexpr int kThreads = 256;  // a multiple of the 32-lane warp; 8 warps per block

// Sum over the block, the same fixed order in every thread (deterministic). sh: __shared__ float[32].
__device__ __forceinline__ float block_sum(float v, float* sh) {
  v = warp_sum(v);
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  __syncthreads();  // sh may still be read by a previous call
  if (lane == 0) sh[w] = v;
  __syncthreads();
  float r = 0.0f;
  for (int i = 0; i < static_cast<int>(blockDim.x >> 5); ++i) r += sh[i];
  return r;
}

// Grid for a grid-stride loop over `work` items of kThreads each: enough blocks to fill every SM
// of the current device (read at run time) several times over, never more than the work needs.
inline unsigned grid_for(int64_t work_blocks) {
  const int64_t sms = nf4k::current_device_info().sm_count;
  return static_cast<unsigned>(std::clamp<int64_t>(work_blocks, 1, std::min<int64_t>(8 * sms, 65535)));
}

}  // namespace graft::cuda::traink
