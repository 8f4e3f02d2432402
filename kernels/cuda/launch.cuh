// launch.cuh — the two spellings that differ between nvcc and the SIMT build (the kernels compiled
// by the host compiler and run on the CPU, kernels/cuda/simt). With nvcc these expand to exactly
// the CUDA syntax (nvcc never sees the SIMT headers):
//   GRAFT_LAUNCH(grid, block, smem, stream, kernel<T...>)(args...)  is  kernel<T...><<<grid, block, smem, stream>>>(args...)
//   GRAFT_EXTERN_SHARED(T, name, align);                             is  extern __shared__ __align__(align) T name[];
#pragma once

#ifdef GRAFT_SIMT
#include "simt/launch.hpp"
#define GRAFT_LAUNCH(grid, block, smem, stream, ...) \
  ::graft::simt::launcher(#__VA_ARGS__, (grid), (block), (smem), (stream), __VA_ARGS__)
#define GRAFT_EXTERN_SHARED(T, name, align) T* const name = ::graft::simt::dynamic_shared<T>()
#else
#define GRAFT_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<(grid), (block), (smem), (stream)>>>
#define GRAFT_EXTERN_SHARED(T, name, align) extern __shared__ __align__(align) T name[]
#endif
