// Internal to the serving kernels (sgmv_*, bgmv_*, lora_plan, moe_lora_keys, paged_*): bf16 bit
// helpers, cp.async wrappers, the tile -> key search of the SGMV grids, and the cached device facts.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <mutex>

#include "cp_async.cuh"
#include "graft/cuda/check.hpp"
#include "graft/cuda/device_info.hpp"
#include "graft/cuda/serve_lora.hpp"

namespace graft::cuda::serve::detail {

__device__ __forceinline__ float bf2f(bf16_t v) { return __uint_as_float(static_cast<uint32_t>(v) << 16); }
__device__ __forceinline__ bf16_t f2bf(float f) { return __bfloat16_as_ushort(__float2bfloat16_rn(f)); }
__device__ __forceinline__ uint32_t pack_bf2(float lo, float hi) {
  return static_cast<uint32_t>(f2bf(lo)) | (static_cast<uint32_t>(f2bf(hi)) << 16);
}
__device__ __forceinline__ float lo_f(uint32_t w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float hi_f(uint32_t w) { return __uint_as_float(w & 0xffff0000u); }
// 8 bf16 (one 16-byte vector) -> 8 floats.
__device__ __forceinline__ void unpack8(const uint4 q, float f[8]) {
  f[0] = lo_f(q.x);
  f[1] = hi_f(q.x);
  f[2] = lo_f(q.y);
  f[3] = hi_f(q.y);
  f[4] = lo_f(q.z);
  f[5] = hi_f(q.z);
  f[6] = lo_f(q.w);
  f[7] = hi_f(q.w);
}
__device__ __forceinline__ bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }
// 8 bf16 from p: one 16-byte load when aligned, else 8 scalar loads.
__device__ __forceinline__ void load8(const bf16_t* p, bool al, float f[8]) {
  if (al) {
    unpack8(__ldg(reinterpret_cast<const uint4*>(p)), f);
  } else {
#pragma unroll
    for (int i = 0; i < 8; ++i) f[i] = bf2f(__ldg(p + i));
  }
}

// 16-byte global -> shared copy; valid == false writes 16 zero bytes (src is not read). cp_async.cuh.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  ptx::cp_async16(smem, gmem, valid ? 16 : 0);
}
using ptx::cp_async_commit;
using ptx::cp_async_wait;

// Key k whose row tiles contain grid tile ty: tile_offsets[k] <= ty < tile_offsets[k+1]
// (the largest k with tile_offsets[k] <= ty; keys without rows own no tile). ty < tile_offsets[num_keys].
__device__ __forceinline__ int find_tile_key(const int32_t* __restrict__ tile_offsets, int num_keys, int ty) {
  int lo = 0, hi = num_keys - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (tile_offsets[mid] <= ty) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Device facts of the current device, read once per device from the driver (device_info).
inline const DeviceInfo& current_device() {
  static std::mutex mu;
  static std::map<int, DeviceInfo> infos;
  int dev = 0;
  GRAFT_CUDA_CHECK(cudaGetDevice(&dev));
  std::lock_guard<std::mutex> lock(mu);
  auto it = infos.find(dev);
  if (it == infos.end()) it = infos.emplace(dev, device_info(dev)).first;
  return it->second;
}

inline bool host_aligned(const void* p, unsigned bytes) { return (reinterpret_cast<uintptr_t>(p) % bytes) == 0; }

}  // namespace graft::cuda::serve::detail
