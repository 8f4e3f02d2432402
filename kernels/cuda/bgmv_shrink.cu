// bgmv_shrink: the LoRA down-projection with one adapter index per row (decode), CUDA cores.
//
// Contract (device pointers, graft/cuda/serve_lora.hpp):
//   x [T, ldx] bf16 row-major (16-byte aligned, ldx % 8 == 0, K % 8 == 0);
//   row_key [T] i32: key per row, -1 (or out of range) = no adapter; no plan needed;
//   table: per (key, slice) A [rank, K] bf16 row-major, rank in [1, max_rank] (0 / larger / null = skip);
//   -> v [splits, num_slices, T, max_rank] f32 (=), the same layout and values (up to f32 summation
//      order) as sgmv_shrink: v[s, i, t, j] = Σ_{kk in split s} x[t, kk]·A[j, kk], j < rank; entries of
//      rows without a key / slices not adapted / columns >= rank are not written.
//   Split s covers features [s·Ks, min(K, (s+1)·Ks)), Ks = ceil(K / splits) rounded up to 256; a
//   split past K writes zeros. Deterministic (fixed order, no atomics).
// Design: block = (row, slice, split), 128 threads = 4 warps; warp w computes rank rows j = w, w+4, ...
//   as a dot product: lane l reads 8 features at l·8 + 256·i (16-byte loads of x and of the A row,
//   coalesced 512 B per warp per step; x stays in L1 across the warp's rows), f32 FMA, warp
//   shuffle reduction. A rows that are not 16-byte aligned use scalar loads. Memory-bound on A
//   (rank·K·2 bytes per row): the split-K factor (lora_shrink_splits) spreads few rows over the SMs.
// Limits: T <= 2^31 - 1 (grid x), num_slices <= 4, splits <= 64.
#include "serve_common.cuh"
#include "launch.cuh"

namespace graft::cuda::serve {
namespace {

constexpr int kWarps = 4;
constexpr int kStep = 256;  // features per warp step (32 lanes × 8)

struct Params {
  const bf16_t* x;
  int64_t ldx, K, T;
  const int32_t* row_key;
  const bf16_t* const* a;
  const int32_t* rank;
  int num_keys, num_slices, max_rank;
  int64_t k_per_split;  // multiple of kStep
  float* v;
};

__global__ void __launch_bounds__(kWarps * 32) bgmv_shrink_kernel(const Params p) {
  const int64_t t = blockIdx.x;
  const int slice = blockIdx.y, split = blockIdx.z;
  const int key = p.row_key[t];
  if (key < 0 || key >= p.num_keys) return;
  const int idx = key * p.num_slices + slice;
  const int r = p.rank[idx];
  const bf16_t* __restrict__ A = p.a[idx];
  if (r <= 0 || r > p.max_rank || A == nullptr) return;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t k_lo = static_cast<int64_t>(split) * p.k_per_split;
  const int64_t k_hi = min(p.K, k_lo + p.k_per_split);
  const bf16_t* __restrict__ xr = p.x + t * p.ldx;
  float* __restrict__ vr = p.v + ((static_cast<int64_t>(split) * p.num_slices + slice) * p.T + t) * p.max_rank;
  const bool al = detail::aligned16(A);
  for (int j = warp; j < r; j += kWarps) {
    const bf16_t* __restrict__ ar = A + static_cast<int64_t>(j) * p.K;
    float acc = 0.0f;
#pragma unroll 4
    for (int64_t k = k_lo + lane * 8; k < k_hi; k += kStep) {
      float xf[8], af[8];
      detail::unpack8(__ldg(reinterpret_cast<const uint4*>(xr + k)), xf);
      detail::load8(ar + k, al, af);
#pragma unroll
      for (int u = 0; u < 8; ++u) acc = fmaf(xf[u], af[u], acc);
    }
    acc = detail::warp_sum(acc);
    if (lane == 0) vr[j] = acc;
  }
}

}  // namespace

void BgmvShrinkDesc::validate() const {
  dims.validate("bgmv_shrink", false);
  GRAFT_CHECK(table.num_keys >= 1, "bgmv_shrink: table.num_keys = {} must be >= 1", table.num_keys);
  GRAFT_CHECK(table.a && table.rank, "bgmv_shrink: table.a / table.rank must not be null");
  const int64_t ld = ldx ? ldx : dims.K;
  GRAFT_CHECK(ld >= dims.K && ld % 8 == 0, "bgmv_shrink: ldx = {} must be >= K = {} and a multiple of 8", ld, dims.K);
  GRAFT_CHECK(dims.T == 0 || (x && v && row_key), "bgmv_shrink: x / v / row_key must not be null");
  GRAFT_CHECK(detail::host_aligned(x, 16), "bgmv_shrink: x must be 16-byte aligned");
  GRAFT_CHECK(detail::host_aligned(v, 4), "bgmv_shrink: v must be 4-byte aligned");
}

void bgmv_shrink(const BgmvShrinkDesc& d, cudaStream_t stream) {
  d.validate();
  if (d.dims.T == 0) return;
  Params p{};
  p.x = d.x;
  p.ldx = d.ldx ? d.ldx : d.dims.K;
  p.K = d.dims.K;
  p.T = d.dims.T;
  p.row_key = d.row_key;
  p.a = d.table.a;
  p.rank = d.table.rank;
  p.num_keys = d.table.num_keys;
  p.num_slices = d.dims.num_slices;
  p.max_rank = d.dims.max_rank;
  const int64_t per = (d.dims.K + d.dims.splits - 1) / d.dims.splits;
  p.k_per_split = (per + kStep - 1) / kStep * kStep;
  p.v = d.v;
  const dim3 grid(static_cast<unsigned>(d.dims.T), static_cast<unsigned>(d.dims.num_slices),
                  static_cast<unsigned>(d.dims.splits));
  GRAFT_LAUNCH(grid, kWarps * 32, 0, stream, bgmv_shrink_kernel)(p);
  GRAFT_CUDA_CHECK_LAUNCH();
}

}  // namespace graft::cuda::serve
