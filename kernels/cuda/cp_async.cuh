// cp.async, the asynchronous 16-byte global -> shared copy (sm_80+), shared by the NF4 GEMMs and the serving
// kernels. On the GPU each wrapper is one PTX instruction; in the SIMT build (GRAFT_SIMT, kernels/cuda/simt) the
// copies are queued per thread and land only at the matching cp_async_wait<N>, so a missing wait reads stale data.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace graft::cuda::ptx {

// Copies 16 bytes gmem -> smem; src_bytes < 16 zero-fills the rest (0: gmem is not read). Both 16-byte aligned.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, int src_bytes) {
#ifdef GRAFT_SIMT
  ::graft::simt::cp_async(smem, gmem, 16, src_bytes);
#else
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(src_bytes));
#endif
}
// Closes the current group of cp.async copies.
__device__ __forceinline__ void cp_async_commit() {
#ifdef GRAFT_SIMT
  ::graft::simt::cp_async_commit();
#else
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}
// Waits until at most N committed groups of this thread are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#ifdef GRAFT_SIMT
  ::graft::simt::cp_async_wait(N);
#else
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

}  // namespace graft::cuda::ptx
