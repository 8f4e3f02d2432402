// sgmv_shrink: the LoRA down-projection of a serving batch, rows grouped by adapter, tensor cores.
//
// Contract (device pointers, graft/cuda/serve_lora.hpp):
//   x [T, ldx] bf16 row-major (16-byte aligned, ldx % 8 == 0, K % 8 == 0);
//   plan (lora_plan over the rows' keys): sorted_rows [T], offsets [num_keys + 2], tile_offsets [num_keys + 1];
//   table: per (key, slice) A [rank, K] bf16 row-major, rank in [1, max_rank] (0 / larger / null A = skip);
//   -> v [splits, num_slices, T, max_rank] f32 (=):
//        v[s, i, t, j] = Σ_{kk in split s} x[t, kk]·A_{key(t), i}[j, kk]   for j < rank, adapted rows only
//      (unscaled; the expand applies the scale and sums the splits). Entries of rows without a key,
//      of slices a key does not adapt and columns j >= rank are not written.
//   Split s covers features [s·Ks, min(K, (s+1)·Ks)), Ks = ceil(K / splits) rounded up to 64; a split
//   past K writes zeros. Summation order is fixed (deterministic, no atomics).
// Tiling: block = 32 sorted rows of one key × 64 rank columns × one (split, slice); 128 threads =
//   4 warps, warp w owns rank columns [16w, 16w+16) of the tile over all 32 rows (2 wmma
//   m16n16k16 bf16 -> f32 accumulators). K in steps of 64 through a 2-stage cp.async ring
//   (16-byte copies, zero-fill for rows of other keys / ranks past r / features past the split).
//   Warps whose columns are all past the rank skip their MMAs; blocks whose first column is past
//   the rank exit. Grid: x = ceil(max_rank / 64), y = sgmv_max_row_tiles(T, num_keys) (a block
//   finds its key by binary search in tile_offsets and exits past the last tile), z = splits·slices.
//   Static shared memory 36.4 KB. A pointers that are not 16-byte aligned are read with scalar loads.
// Limits: T < 2^31, grid y <= 65535, splits·num_slices <= 65535, max_rank <= 256.
#include <mma.h>

#include "serve_common.cuh"
#include "launch.cuh"

namespace graft::cuda::serve {
namespace {
using namespace nvcuda;
using detail::bf2f;

constexpr int BM = kSgmvTileM;  // 32 sorted rows
constexpr int BN = 64;          // rank columns
constexpr int BK = 64;          // features per k tile
constexpr int LDS = BK + 8;     // bf16 row pitch (144 B: 16-byte chunks, 32-byte wmma alignment)
constexpr int LDO = BN + 4;     // f32 row pitch of the epilogue tile
constexpr int kThreads = 128;

struct Params {
  const bf16_t* x;
  int64_t ldx, K, T;
  const int32_t* sorted_rows;
  const int32_t* offsets;
  const int32_t* tile_offsets;
  const bf16_t* const* a;
  const int32_t* rank;
  int num_keys, num_slices, max_rank;
  int64_t k_per_split;  // multiple of BK
  float* v;
};

__global__ void __launch_bounds__(kThreads) sgmv_shrink_kernel(const Params p) {
  const int ty = blockIdx.y;
  if (ty >= p.tile_offsets[p.num_keys]) return;
  const int key = detail::find_tile_key(p.tile_offsets, p.num_keys, ty);
  const int slice = blockIdx.z % p.num_slices, split = blockIdx.z / p.num_slices;
  const int idx = key * p.num_slices + slice;
  const int r = p.rank[idx];
  const int n0 = blockIdx.x * BN;
  const bf16_t* __restrict__ A = p.a[idx];
  if (r <= 0 || r > p.max_rank || n0 >= r || A == nullptr) return;

  __shared__ __align__(128) __nv_bfloat16 xs[2][BM][LDS];
  __shared__ __align__(128) __nv_bfloat16 as[2][BN][LDS];
  __shared__ __align__(128) float os[BM][LDO];
  __shared__ int32_t rows_s[BM];

  const int tid = threadIdx.x, warp = tid >> 5;
  const int row_base = p.offsets[key] + (ty - p.tile_offsets[key]) * BM;
  const int row_end = p.offsets[key + 1];
  if (tid < BM) rows_s[tid] = row_base + tid < row_end ? p.sorted_rows[row_base + tid] : -1;
  __syncthreads();

  const int64_t k_lo = static_cast<int64_t>(split) * p.k_per_split;
  const int64_t k_hi = min(p.K, k_lo + p.k_per_split);
  const int ntiles = k_hi > k_lo ? static_cast<int>((k_hi - k_lo + BK - 1) / BK) : 0;
  const bool a_al = detail::aligned16(A);  // K % 8 == 0: every row then starts aligned

  auto load = [&](int stage, int64_t k0) {
    for (int c = tid; c < BM * (BK / 8); c += kThreads) {
      const int row = c / (BK / 8), kc = (c % (BK / 8)) * 8;
      const int t = rows_s[row];
      const int64_t kk = k0 + kc;
      const bool ok = t >= 0 && kk < k_hi;
      detail::cp_async16(&xs[stage][row][kc], ok ? p.x + static_cast<int64_t>(t) * p.ldx + kk : p.x, ok);
    }
    for (int c = tid; c < BN * (BK / 8); c += kThreads) {
      const int j = c / (BK / 8), kc = (c % (BK / 8)) * 8;
      const int64_t kk = k0 + kc;
      const bool ok = n0 + j < r && kk < k_hi;
      const bf16_t* src = ok ? A + static_cast<int64_t>(n0 + j) * p.K + kk : A;
      if (a_al) {
        detail::cp_async16(&as[stage][j][kc], src, ok);
      } else {
        bf16_t* dst = reinterpret_cast<bf16_t*>(&as[stage][j][kc]);
#pragma unroll
        for (int u = 0; u < 8; ++u) dst[u] = ok ? src[u] : bf16_t{0};
      }
    }
  };

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2];
  wmma::fill_fragment(acc[0], 0.0f);
  wmma::fill_fragment(acc[1], 0.0f);
  const bool warp_active = warp * 16 < r - n0;

  if (ntiles > 0) {
    load(0, k_lo);
    detail::cp_async_commit();
  }
  for (int kt = 0; kt < ntiles; ++kt) {
    if (kt + 1 < ntiles) {
      load((kt + 1) & 1, k_lo + static_cast<int64_t>(kt + 1) * BK);
      detail::cp_async_commit();
      detail::cp_async_wait<1>();
    } else {
      detail::cp_async_wait<0>();
    }
    __syncthreads();
    const int s = kt & 1;
    if (warp_active) {
#pragma unroll
      for (int kk = 0; kk < BK; kk += 16) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> b;
        wmma::load_matrix_sync(b, &as[s][warp * 16][kk], LDS);
#pragma unroll
        for (int m = 0; m < 2; ++m) {
          wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
          wmma::load_matrix_sync(a, &xs[s][m * 16][kk], LDS);
          wmma::mma_sync(acc[m], a, b, acc[m]);
        }
      }
    }
    __syncthreads();
  }

  wmma::store_matrix_sync(&os[0][warp * 16], acc[0], LDO, wmma::mem_row_major);
  wmma::store_matrix_sync(&os[16][warp * 16], acc[1], LDO, wmma::mem_row_major);
  __syncthreads();
  const int ncols = min(BN, r - n0);
  float* __restrict__ vb = p.v + (static_cast<int64_t>(split) * p.num_slices + slice) * p.T * p.max_rank;
  for (int e = tid; e < BM * BN; e += kThreads) {
    const int row = e / BN, c = e % BN;
    const int t = rows_s[row];
    if (t >= 0 && c < ncols) vb[static_cast<int64_t>(t) * p.max_rank + n0 + c] = os[row][c];
  }
}

}  // namespace

void SgmvShrinkDesc::validate() const {
  dims.validate("sgmv_shrink", false);
  GRAFT_CHECK(table.num_keys >= 1 && table.num_keys <= kMaxPlanKeys, "sgmv_shrink: table.num_keys = {} outside [1, {}]",
              table.num_keys, kMaxPlanKeys);
  GRAFT_CHECK(table.a && table.rank, "sgmv_shrink: table.a / table.rank must not be null");
  GRAFT_CHECK(plan.sorted_rows && plan.offsets && plan.tile_offsets,
              "sgmv_shrink: plan.sorted_rows / offsets / tile_offsets must not be null");
  const int64_t ld = ldx ? ldx : dims.K;
  GRAFT_CHECK(ld >= dims.K && ld % 8 == 0, "sgmv_shrink: ldx = {} must be >= K = {} and a multiple of 8", ld, dims.K);
  GRAFT_CHECK(dims.T == 0 || (x && v), "sgmv_shrink: x / v must not be null");
  GRAFT_CHECK(detail::host_aligned(x, 16), "sgmv_shrink: x must be 16-byte aligned");
  GRAFT_CHECK(detail::host_aligned(v, 4), "sgmv_shrink: v must be 4-byte aligned");
  GRAFT_CHECK(sgmv_max_row_tiles(dims.T, table.num_keys) <= 65535,
              "sgmv_shrink: {} row tiles exceed the grid limit 65535 (fewer rows or keys per launch)",
              sgmv_max_row_tiles(dims.T, table.num_keys));
  GRAFT_CHECK(static_cast<int64_t>(dims.splits) * dims.num_slices <= 65535, "sgmv_shrink: splits·num_slices too large");
}

void sgmv_shrink(const SgmvShrinkDesc& d, cudaStream_t stream) {
  d.validate();
  if (d.dims.T == 0) return;
  Params p{};
  p.x = d.x;
  p.ldx = d.ldx ? d.ldx : d.dims.K;
  p.K = d.dims.K;
  p.T = d.dims.T;
  p.sorted_rows = d.plan.sorted_rows;
  p.offsets = d.plan.offsets;
  p.tile_offsets = d.plan.tile_offsets;
  p.a = d.table.a;
  p.rank = d.table.rank;
  p.num_keys = d.table.num_keys;
  p.num_slices = d.dims.num_slices;
  p.max_rank = d.dims.max_rank;
  const int64_t per = (d.dims.K + d.dims.splits - 1) / d.dims.splits;
  p.k_per_split = (per + BK - 1) / BK * BK;
  p.v = d.v;
  const dim3 grid(static_cast<unsigned>((d.dims.max_rank + BN - 1) / BN),
                  static_cast<unsigned>(sgmv_max_row_tiles(d.dims.T, d.table.num_keys)),
                  static_cast<unsigned>(d.dims.splits * d.dims.num_slices));
  GRAFT_LAUNCH(grid, kThreads, 0, stream, sgmv_shrink_kernel)(p);
  GRAFT_CUDA_CHECK_LAUNCH();
}

}  // namespace graft::cuda::serve
