// lora_plan: groups the rows of a serving batch by adapter key, on the device.
//
// Contract (device pointers, graft/cuda/serve_lora.hpp):
//   keys [n] i32: key per row in [-1, num_keys) (adapter slot, or slot·E + expert for MoE-LoRA);
//     -1 and any out-of-range value mean "no adapter" and land in the extra bucket num_keys.
//   -> counts [num_keys + 1] (=), offsets [num_keys + 2] (=, exclusive prefix sum, offsets[num_keys + 1] = n),
//      tile_offsets [num_keys + 1] (=, exclusive prefix sum of ceil(counts[k] / kSgmvTileM) over the
//      real keys; tile_offsets[num_keys] = total SGMV row tiles), sorted_rows [n] (=, rows bucket by
//      bucket; the order inside a bucket is unspecified because the scatter uses atomics: every
//      consumer computes each row independently, so no numeric result depends on it),
//      cursor [num_keys + 1] scratch.
//   Launches: cudaMemsetAsync(counts) + histogram (n threads, global atomics) + one-block scan
//   (1024 threads, each owning a contiguous run of buckets) + scatter. No host synchronisation,
//   grid sizes from n and num_keys only: capturable in a CUDA graph.
// Limits: n < 2^31, 1 <= num_keys <= kMaxPlanKeys (2^20).
#include "serve_common.cuh"
#include "launch.cuh"

namespace graft::cuda::serve {
namespace {

constexpr int kThreads = 256;
constexpr int kScanThreads = 1024;

__device__ __forceinline__ int bucket_of(int32_t key, int num_keys) {
  return (key >= 0 && key < num_keys) ? key : num_keys;
}

__global__ void __launch_bounds__(kThreads) plan_hist_kernel(const int32_t* __restrict__ keys, int64_t n, int num_keys,
                                                             int32_t* __restrict__ counts) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i < n) atomicAdd(&counts[bucket_of(keys[i], num_keys)], 1);
}

__global__ void __launch_bounds__(kScanThreads) plan_scan_kernel(int num_keys, const int32_t* __restrict__ counts,
                                                                 int32_t* __restrict__ offsets,
                                                                 int32_t* __restrict__ tile_offsets,
                                                                 int32_t* __restrict__ cursor) {
  __shared__ int32_t s_rows[kScanThreads], s_tiles[kScanThreads];
  const int nb = num_keys + 1;  // buckets, the last one = rows without adapter
  const int per = (nb + kScanThreads - 1) / kScanThreads;
  const int b0 = threadIdx.x * per, b1 = min(nb, b0 + per);
  int32_t rows = 0, tiles = 0;
  for (int b = b0; b < b1; ++b) {
    const int32_t c = counts[b];
    rows += c;
    if (b < num_keys) tiles += (c + kSgmvTileM - 1) / kSgmvTileM;
  }
  s_rows[threadIdx.x] = rows;
  s_tiles[threadIdx.x] = tiles;
  __syncthreads();
  for (int o = 1; o < kScanThreads; o <<= 1) {  // inclusive Hillis-Steele scans
    const int32_t vr = threadIdx.x >= o ? s_rows[threadIdx.x - o] : 0;
    const int32_t vt = threadIdx.x >= o ? s_tiles[threadIdx.x - o] : 0;
    __syncthreads();
    s_rows[threadIdx.x] += vr;
    s_tiles[threadIdx.x] += vt;
    __syncthreads();
  }
  int32_t r = s_rows[threadIdx.x] - rows, t = s_tiles[threadIdx.x] - tiles;  // exclusive bases
  for (int b = b0; b < b1; ++b) {
    const int32_t c = counts[b];
    offsets[b] = r;
    cursor[b] = r;
    if (b <= num_keys) tile_offsets[b] = t;
    r += c;
    if (b < num_keys) t += (c + kSgmvTileM - 1) / kSgmvTileM;
    if (b == nb - 1) offsets[nb] = r;
  }
}

__global__ void __launch_bounds__(kThreads) plan_scatter_kernel(const int32_t* __restrict__ keys, int64_t n,
                                                                int num_keys, int32_t* __restrict__ cursor,
                                                                int32_t* __restrict__ sorted_rows) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= n) return;
  const int32_t p = atomicAdd(&cursor[bucket_of(keys[i], num_keys)], 1);
  sorted_rows[p] = static_cast<int32_t>(i);
}

}  // namespace

void LoraPlanDesc::validate() const {
  GRAFT_CHECK(n >= 0 && n < (int64_t{1} << 31), "lora_plan: n = {} rows must be in [0, 2^31)", n);
  GRAFT_CHECK(num_keys >= 1 && num_keys <= kMaxPlanKeys, "lora_plan: num_keys = {} outside [1, {}]", num_keys,
              kMaxPlanKeys);
  GRAFT_CHECK(plan.counts && plan.offsets && plan.tile_offsets && plan.cursor,
              "lora_plan: counts / offsets / tile_offsets / cursor must not be null");
  GRAFT_CHECK(n == 0 || (keys && plan.sorted_rows), "lora_plan: keys / sorted_rows must not be null when n > 0");
}

void lora_plan(const LoraPlanDesc& d, cudaStream_t stream) {
  d.validate();
  const size_t nb = static_cast<size_t>(d.num_keys) + 1;
  GRAFT_CUDA_CHECK(cudaMemsetAsync(d.plan.counts, 0, nb * sizeof(int32_t), stream));
  const unsigned blocks = static_cast<unsigned>((d.n + kThreads - 1) / kThreads);
  if (blocks > 0) {
    GRAFT_LAUNCH(blocks, kThreads, 0, stream, plan_hist_kernel)(d.keys, d.n, d.num_keys, d.plan.counts);
    GRAFT_CUDA_CHECK_LAUNCH();
  }
  GRAFT_LAUNCH(1, kScanThreads, 0, stream, plan_scan_kernel)(d.num_keys, d.plan.counts, d.plan.offsets, d.plan.tile_offsets,
                                                   d.plan.cursor);
  GRAFT_CUDA_CHECK_LAUNCH();
  if (blocks > 0) {
    GRAFT_LAUNCH(blocks, kThreads, 0, stream, plan_scatter_kernel)(d.keys, d.n, d.num_keys, d.plan.cursor, d.plan.sorted_rows);
    GRAFT_CUDA_CHECK_LAUNCH();
  }
}

}  // namespace graft::cuda::serve
