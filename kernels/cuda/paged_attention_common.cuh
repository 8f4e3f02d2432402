// Internal to paged_decode_attention.cu and paged_mla_decode.cu: the context-partition choice
// (flash-decoding split) and the kernel that merges the per-partition softmax partials.
//
// Workspace layout (f32), P = partitions, dv = output head dim:
//   m   [num_seqs, heads, P]      running max of the scaled scores of the partition
//   l   [num_seqs, heads, P]      Σ exp(s - m)
//   acc [num_seqs, heads, P, dv]  Σ exp(s - m)·v
// Partition p covers keys [p·psize, min(ctx, (p+1)·psize)); partitions at or past ctx are neither
// written nor read (the merge uses ceil(ctx / psize) of them).
#pragma once

#include <algorithm>

#include "graft/cuda/paged_attention.hpp"
#include "serve_common.cuh"
#include "launch.cuh"

namespace graft::cuda::serve::detail {

constexpr int kPartitionQuantum = 64;  // partition sizes are multiples of this
constexpr int kMaxPartitions = 8192;

// Keys per partition: `requested` rounded up to 64, or (0) enough partitions for ~2 blocks per SM
// given `blocks_per_partition` blocks (seqs × head groups) per partition index.
inline int resolve_partition_size(int requested, int max_context_len, int64_t blocks_per_partition) {
  const int ctx = std::max(1, max_context_len);
  if (requested > 0) {
    int ps = (requested + kPartitionQuantum - 1) / kPartitionQuantum * kPartitionQuantum;
    const int min_ps = (ctx + kMaxPartitions - 1) / kMaxPartitions;
    return std::max(ps, (min_ps + kPartitionQuantum - 1) / kPartitionQuantum * kPartitionQuantum);
  }
  const int64_t sms = current_device().sm_count;
  const int64_t want = (2 * sms + std::max<int64_t>(1, blocks_per_partition) - 1) / std::max<int64_t>(1, blocks_per_partition);
  const int64_t most = (ctx + kPartitionQuantum - 1) / kPartitionQuantum;
  const int64_t parts = std::clamp<int64_t>(want, 1, std::min<int64_t>(most, kMaxPartitions));
  const int64_t per = (ctx + parts - 1) / parts;
  return static_cast<int>((per + kPartitionQuantum - 1) / kPartitionQuantum * kPartitionQuantum);
}
inline int num_partitions(int max_context_len, int psize) {
  return std::max(1, (std::max(1, max_context_len) + psize - 1) / psize);
}
inline size_t partial_workspace_bytes(int64_t num_seqs, int64_t heads, int parts, int dv) {
  return static_cast<size_t>(num_seqs) * static_cast<size_t>(heads) * static_cast<size_t>(parts) *
         (2 + static_cast<size_t>(dv)) * sizeof(float);
}

namespace {  // internal linkage: each including .cu gets its own copy of the kernel

// One block of 128 threads per (head, seq): out[s, h, :] (=) Σ_p w_p·acc_p / Σ_p w_p·l_p, w_p = exp(m_p - max m).
// Dynamic shared memory: parts floats.
__global__ void __launch_bounds__(128) merge_partitions_kernel(const float* __restrict__ ws, const int32_t* __restrict__ context_lens,
                                                               int num_seqs, int heads, int parts, int psize, int dv,
                                                               bf16_t* __restrict__ out) {
  GRAFT_EXTERN_SHARED(float, w, 16);
  __shared__ float red[4];
  const int h = blockIdx.x, s = blockIdx.y;
  const int ctx = context_lens[s];
  const int used = ctx > 0 ? min(parts, (ctx + psize - 1) / psize) : 0;
  const int64_t sh = static_cast<int64_t>(s) * heads + h;
  const float* __restrict__ m = ws + sh * parts;
  const float* __restrict__ l = ws + static_cast<int64_t>(num_seqs) * heads * parts + sh * parts;
  const float* __restrict__ acc = ws + 2 * static_cast<int64_t>(num_seqs) * heads * parts + sh * parts * dv;
  bf16_t* __restrict__ o = out + sh * dv;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float mx = -INFINITY;
  for (int p = threadIdx.x; p < used; p += blockDim.x) mx = fmaxf(mx, m[p]);
  mx = warp_max(mx);
  if (lane == 0) red[warp] = mx;
  __syncthreads();
  mx = fmaxf(fmaxf(red[0], red[1]), fmaxf(red[2], red[3]));
  __syncthreads();
  float lsum = 0.0f;
  for (int p = threadIdx.x; p < used; p += blockDim.x) {
    const float wp = m[p] == -INFINITY ? 0.0f : __expf(m[p] - mx);
    w[p] = wp;
    lsum += wp * l[p];
  }
  lsum = warp_sum(lsum);
  if (lane == 0) red[warp] = lsum;
  __syncthreads();
  const float L = red[0] + red[1] + red[2] + red[3];
  const float inv = L > 0.0f ? 1.0f / L : 0.0f;
  for (int d = threadIdx.x; d < dv; d += blockDim.x) {
    float a = 0.0f;
    for (int p = 0; p < used; ++p) a = fmaf(w[p], acc[static_cast<int64_t>(p) * dv + d], a);
    o[d] = f2bf(a * inv);
  }
}

inline void launch_merge(const float* ws, const int32_t* context_lens, int num_seqs, int heads, int parts, int psize,
                         int dv, bf16_t* out, cudaStream_t stream) {
  const size_t smem = static_cast<size_t>(parts) * sizeof(float);  // <= kMaxPartitions·4 = 32 KB
  GRAFT_LAUNCH(dim3(static_cast<unsigned>(heads), static_cast<unsigned>(num_seqs)), 128, smem, stream, merge_partitions_kernel)(
      ws, context_lens, num_seqs, heads, parts, psize, dv, out);
  GRAFT_CUDA_CHECK_LAUNCH();
}

}  // namespace
}  // namespace graft::cuda::serve::detail
