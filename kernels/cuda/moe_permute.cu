// moe_permute: the token -> expert plan (built on device) and the permute gather, + backward.
//
// Contract (device pointers):
//   build_plan: ids [n] i32 in [0, E) -> order [n], pos [n], counts [E], offsets [E+1],
//     tile_offsets [E+1] (all =). Rows sorted by (expert, flat index f = t*k + j), i.e. stable
//     by token then slot: identical to cpu::moe_permute_plan. workspace: plan_workspace_bytes(n, E)
//     (chunk-by-expert counts). Three kernels, no host synchronisation, no atomics on the output
//     order (deterministic): (1) per-chunk histograms (256 ids per chunk), (2) one block turns them
//     into counts, offsets, tile_offsets and per-chunk bases (exclusive scans), (3) each chunk
//     ranks its ids stably (warp match + per-warp counts) and scatters.
//   permute: x [T, H] bf16 -> xp [n, H] bf16 (=): xp[p] = x[order[p]/k]·(scale ? scale[order[p]] : 1)
//   permute_bwd: dxp [n, H] -> dx [T, H] bf16 (=) = Σ_j scale·dxp[pos[t*k+j]] (fp32 sum, slot order);
//     dscale [T, k] f32 (=) = <x[t], dxp[pos[f]]> when requested.
// Limits: E <= 1024, H % 8 == 0, ids must be valid (not checked on device).
#include <algorithm>

#include "moe_gemm.cuh"
#include "launch.cuh"
#include "warp_reduce.cuh"

namespace graft::cuda::moe {
using detail::bf2f;
using detail::f2bf;
namespace {

constexpr int kChunk = 256;  // ids per chunk == threads per block

int64_t num_chunks(int64_t n) { return (n + kChunk - 1) / kChunk; }

__global__ void __launch_bounds__(kChunk) chunk_hist_kernel(const int32_t* __restrict__ ids, int64_t n, int E,
                                                            int32_t* __restrict__ chunk_counts) {
  GRAFT_EXTERN_SHARED(int32_t, hist, 16);
  for (int e = threadIdx.x; e < E; e += blockDim.x) hist[e] = 0;
  __syncthreads();
  const int64_t f = static_cast<int64_t>(blockIdx.x) * kChunk + threadIdx.x;
  if (f < n) atomicAdd(&hist[ids[f]], 1);
  __syncthreads();
  for (int e = threadIdx.x; e < E; e += blockDim.x) chunk_counts[static_cast<int64_t>(blockIdx.x) * E + e] = hist[e];
}

// One block of 1024 threads: thread e owns expert e.
__global__ void __launch_bounds__(1024) plan_scan_kernel(int64_t nchunks, int E, int32_t* __restrict__ chunk_counts,
                                                         int32_t* __restrict__ counts, int32_t* __restrict__ offsets,
                                                         int32_t* __restrict__ tile_offsets) {
  __shared__ int32_t sa[1024], sb[1024];
  const int e = threadIdx.x;
  int32_t c = 0;
  if (e < E)
    for (int64_t b = 0; b < nchunks; ++b) c += chunk_counts[b * E + e];
  const int32_t tiles = (c + kTileM - 1) / kTileM;
  sa[e] = e < E ? c : 0;
  sb[e] = e < E ? tiles : 0;
  __syncthreads();
  for (int o = 1; o < 1024; o <<= 1) {  // inclusive Hillis-Steele scans
    const int32_t va = e >= o ? sa[e - o] : 0, vb = e >= o ? sb[e - o] : 0;
    __syncthreads();
    sa[e] += va;
    sb[e] += vb;
    __syncthreads();
  }
  if (e < E) {
    counts[e] = c;
    offsets[e] = sa[e] - c;
    tile_offsets[e] = sb[e] - tiles;
    if (e == E - 1) {
      offsets[E] = sa[e];
      tile_offsets[E] = sb[e];
    }
    int32_t base = sa[e] - c;  // chunk_counts[b][e] becomes the first row of chunk b's ids for e
    for (int64_t b = 0; b < nchunks; ++b) {
      const int32_t cnt = chunk_counts[b * E + e];
      chunk_counts[b * E + e] = base;
      base += cnt;
    }
  }
}

__global__ void __launch_bounds__(kChunk) plan_scatter_kernel(const int32_t* __restrict__ ids, int64_t n, int E,
                                                              const int32_t* __restrict__ chunk_base,
                                                              int32_t* __restrict__ order, int32_t* __restrict__ pos) {
  GRAFT_EXTERN_SHARED(int32_t, warp_counts, 16);  // [kChunk / 32][E]
  constexpr int kW = kChunk / 32;
  for (int i = threadIdx.x; i < kW * E; i += blockDim.x) warp_counts[i] = 0;
  __syncthreads();
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  const int64_t f = static_cast<int64_t>(blockIdx.x) * kChunk + threadIdx.x;
  const bool valid = f < n;
  const int e = valid ? ids[f] : -1 - lane;  // invalid lanes get unique keys
  const unsigned peers = __match_any_sync(0xffffffffu, e);
  const unsigned lower = peers & ((1u << lane) - 1u);
  if (valid && lower == 0) warp_counts[w * E + e] = __popc(peers);  // the lowest peer reports
  __syncthreads();
  if (!valid) return;
  int32_t rank = __popc(lower);
  for (int v = 0; v < w; ++v) rank += warp_counts[v * E + e];
  const int32_t p = chunk_base[static_cast<int64_t>(blockIdx.x) * E + e] + rank;
  order[p] = static_cast<int32_t>(f);
  pos[f] = p;
}

__global__ void permute_kernel(const bf16_t* __restrict__ x, int64_t H, int k, const int32_t* __restrict__ order,
                               const float* __restrict__ scale, bf16_t* __restrict__ xp) {
  const int64_t p = blockIdx.x;
  const int32_t f = order[p];
  const int64_t t = f / k;
  const uint4* src = reinterpret_cast<const uint4*>(x + t * H);
  uint4* dst = reinterpret_cast<uint4*>(xp + p * H);
  const int64_t nv = H / 8;
  if (!scale) {
    for (int64_t v = threadIdx.x; v < nv; v += blockDim.x) dst[v] = src[v];
    return;
  }
  const float c = scale[f];
  for (int64_t v = threadIdx.x; v < nv; v += blockDim.x) {
    uint4 q = src[v];
    uint32_t* w = reinterpret_cast<uint32_t*>(&q);
#pragma unroll
    for (int i = 0; i < 4; ++i)
      w[i] = detail::pack_bf2(bf2f(static_cast<bf16_t>(w[i] & 0xffffu)) * c, bf2f(static_cast<bf16_t>(w[i] >> 16)) * c);
    dst[v] = q;
  }
}

__global__ void __launch_bounds__(256) permute_bwd_kernel(const bf16_t* __restrict__ x, const bf16_t* __restrict__ dxp,
                                                          int64_t H, int k, const int32_t* __restrict__ pos,
                                                          const float* __restrict__ scale, bf16_t* __restrict__ dx,
                                                          float* __restrict__ dscale) {
  __shared__ float red[8];
  const int64_t t = blockIdx.x;
  const int64_t nv = H / 8;
  float dots[kMaxTopK];
#pragma unroll
  for (int j = 0; j < kMaxTopK; ++j) dots[j] = 0.f;
  for (int64_t v = threadIdx.x; v < nv; v += blockDim.x) {
    float acc[8] = {};
    float xv[8] = {};
    if (dscale) {
      const uint4 q = reinterpret_cast<const uint4*>(x + t * H)[v];
      const uint32_t w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        xv[2 * i] = bf2f(static_cast<bf16_t>(w[i] & 0xffffu));
        xv[2 * i + 1] = bf2f(static_cast<bf16_t>(w[i] >> 16));
      }
    }
#pragma unroll
    for (int j = 0; j < kMaxTopK; ++j) {
      if (j >= k) break;
      const int64_t f = t * k + j;
      const float c = scale ? scale[f] : 1.0f;
      const uint4 q = reinterpret_cast<const uint4*>(dxp + static_cast<int64_t>(pos[f]) * H)[v];
      const uint32_t w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float d0 = bf2f(static_cast<bf16_t>(w[i] & 0xffffu)), d1 = bf2f(static_cast<bf16_t>(w[i] >> 16));
        acc[2 * i] += c * d0;
        acc[2 * i + 1] += c * d1;
        if (dscale) dots[j] += xv[2 * i] * d0 + xv[2 * i + 1] * d1;
      }
    }
    uint4 o;
    o.x = detail::pack_bf2(acc[0], acc[1]);
    o.y = detail::pack_bf2(acc[2], acc[3]);
    o.z = detail::pack_bf2(acc[4], acc[5]);
    o.w = detail::pack_bf2(acc[6], acc[7]);
    reinterpret_cast<uint4*>(dx + t * H)[v] = o;
  }
  if (!dscale) return;  // block-uniform
  for (int j = 0; j < k; ++j) {
    const float s = block_sum(dots[j], red);
    if (threadIdx.x == 0) dscale[t * k + j] = s;
  }
}

}  // namespace

size_t plan_workspace_bytes(int64_t n, int E) {
  return static_cast<size_t>(num_chunks(n)) * static_cast<size_t>(E) * sizeof(int32_t);
}

int64_t max_row_tiles(int64_t n, int E) {
  return (n + kTileM - 1) / kTileM + std::min<int64_t>(E, n);
}

void build_plan(const int32_t* ids, int64_t n, int E, const Plan& plan, void* workspace, cudaStream_t stream) {
  GRAFT_CHECK(E >= 1 && E <= kMaxPlanExperts, "moe build_plan: {} experts outside [1, {}]", E, kMaxPlanExperts);
  GRAFT_CHECK(n >= 0 && n < (int64_t{1} << 31), "moe build_plan: {} rows do not fit int32 indices", n);
  GRAFT_CHECK(plan.counts && plan.offsets && plan.tile_offsets, "moe build_plan: counts / offsets / tile_offsets are null");
  GRAFT_CHECK(n == 0 || (ids && plan.order && plan.pos && workspace), "moe build_plan: ids / order / pos / workspace are null");
  const int64_t nc = num_chunks(n);
  auto* cc = static_cast<int32_t*>(workspace);
  const size_t hist_smem = static_cast<size_t>(E) * sizeof(int32_t);
  if (nc > 0) {
    GRAFT_LAUNCH(static_cast<unsigned>(nc), kChunk, hist_smem, stream, chunk_hist_kernel)(ids, n, E, cc);
    GRAFT_CUDA_CHECK_LAUNCH();
  }
  GRAFT_LAUNCH(1, 1024, 0, stream, plan_scan_kernel)(nc, E, cc, plan.counts, plan.offsets, plan.tile_offsets);
  GRAFT_CUDA_CHECK_LAUNCH();
  if (nc > 0) {
    const size_t smem = static_cast<size_t>(kChunk / 32) * static_cast<size_t>(E) * sizeof(int32_t);
    GRAFT_LAUNCH(static_cast<unsigned>(nc), kChunk, smem, stream, plan_scatter_kernel)(ids, n, E, cc, plan.order, plan.pos);
    GRAFT_CUDA_CHECK_LAUNCH();
  }
}

void permute(const PermuteArgs& a, cudaStream_t stream) {
  GRAFT_CHECK(a.H % 8 == 0 && a.H > 0, "moe permute: H = {} must be a positive multiple of 8", a.H);
  GRAFT_CHECK(a.k >= 1 && a.k <= kMaxTopK, "moe permute: k = {} outside [1, {}]", a.k, kMaxTopK);
  const int64_t n = a.T * a.k;
  if (n == 0) return;
  GRAFT_CHECK(a.x && a.order && a.xp, "moe permute: x / order / xp are null");
  GRAFT_CHECK(n <= 0x7fffffff, "moe permute: {} rows is too many", n);
  GRAFT_LAUNCH(static_cast<unsigned>(n), 256, 0, stream, permute_kernel)(a.x, a.H, a.k, a.order, a.scale, a.xp);
  GRAFT_CUDA_CHECK_LAUNCH();
}

void permute_bwd(const PermuteBwdArgs& a, cudaStream_t stream) {
  GRAFT_CHECK(a.H % 8 == 0 && a.H > 0, "moe permute_bwd: H = {} must be a positive multiple of 8", a.H);
  GRAFT_CHECK(a.k >= 1 && a.k <= kMaxTopK, "moe permute_bwd: k = {} outside [1, {}]", a.k, kMaxTopK);
  if (a.T == 0) return;
  GRAFT_CHECK(a.dxp && a.pos && a.dx, "moe permute_bwd: dxp / pos / dx are null");
  GRAFT_CHECK(!a.dscale || a.x, "moe permute_bwd: dscale needs x");
  GRAFT_CHECK(a.T <= 0x7fffffff, "moe permute_bwd: {} tokens is too many", a.T);
  GRAFT_LAUNCH(static_cast<unsigned>(a.T), 256, 0, stream, permute_bwd_kernel)(a.x, a.dxp, a.H, a.k, a.pos, a.scale, a.dx,
                                                                      a.dscale);
  GRAFT_CUDA_CHECK_LAUNCH();
}

}  // namespace graft::cuda::moe
