// sgmv_expand: the LoRA up-projection of a serving batch, rows grouped by adapter, tensor cores,
// accumulated into the (fused) base output.
//
// Contract (device pointers, graft/cuda/serve_lora.hpp):
//   v [splits, num_slices, T, max_rank] f32 as written by sgmv_shrink / bgmv_shrink (same dims);
//   plan (lora_plan): sorted_rows [T], offsets [num_keys + 2], tile_offsets [num_keys + 1];
//   table: per (key, slice) B [N_i, rank] bf16 row-major, scale f32, rank in [1, max_rank];
//   -> y [T, ldy] bf16 (+=): for adapted rows t and slices i,
//        y[t, off_i + n] = bf16( y[t, off_i + n] + Σ_j bf16(scale·Σ_s v[s, i, t, j])·B[n, j] )
//      (the scaled intermediate is rounded to bf16 as the tensor-core operand, like PEFT's bf16
//      lora_B(lora_A(x)); the sum over j is f32). Rows without a key and slices a key does not
//      adapt are not touched; every y element is read and written by exactly one thread.
//   Requirements: N_i and y_offset_i even, slices disjoint, ldy even, y 4-byte aligned.
// Tiling: block = 32 sorted rows of one key × 128 output columns of one slice; 128 threads =
//   4 warps, warp w owns columns [32w, 32w+32) over all 32 rows (2×2 wmma m16n16k16 bf16 -> f32).
//   The rank runs in chunks of 64 (zero-padded to a multiple of 16; ranks 1..256, no padding to
//   max_rank). B tile loaders: rank <= 64 -> the tile is one contiguous run of rows·r elements
//   (16-byte loads for any r); rank > 64 with r % 8 == 0 -> 16-byte loads per row; otherwise (or a
//   misaligned B) scalar loads. Epilogue: accumulators -> shared f32 tile -> bf16x2 read-add-write.
//   Grid: x = ceil(max_i N_i / 128), y = sgmv_max_row_tiles(T, num_keys), z = num_slices; blocks past
//   the last tile, the slice's columns or with rank 0 exit. Static shared memory 40 KB.
// Limits: grid y <= 65535, max_rank <= 256.
#include <mma.h>

#include <algorithm>

#include "serve_common.cuh"
#include "launch.cuh"

namespace graft::cuda::serve {
namespace {
using namespace nvcuda;
using detail::bf2f;

constexpr int BM = kSgmvTileM;  // 32 sorted rows
constexpr int BN = 128;         // output columns
constexpr int RC = 64;          // rank chunk
constexpr int LDK = RC + 8;     // bf16 pitch of the v and B tiles
constexpr int LDO = BN + 4;     // f32 pitch of the output tile
constexpr int kThreads = 128;

struct Params {
  const float* v;
  int splits;
  int64_t T;
  int max_rank;
  const int32_t* sorted_rows;
  const int32_t* offsets;
  const int32_t* tile_offsets;
  const bf16_t* const* b;
  const int32_t* rank;
  const float* scale;
  int num_keys, num_slices;
  int64_t n[kMaxSlices];
  int64_t y_off[kMaxSlices];
  bf16_t* y;
  int64_t ldy;
};

__device__ __forceinline__ void put(__nv_bfloat16* dst, bf16_t bits) { *reinterpret_cast<bf16_t*>(dst) = bits; }

__global__ void __launch_bounds__(kThreads) sgmv_expand_kernel(const Params p) {
  const int ty = blockIdx.y;
  if (ty >= p.tile_offsets[p.num_keys]) return;
  const int key = detail::find_tile_key(p.tile_offsets, p.num_keys, ty);
  const int slice = blockIdx.z;
  const int idx = key * p.num_slices + slice;
  const int r = p.rank[idx];
  const int64_t N = p.n[slice];
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * BN;
  const bf16_t* __restrict__ B = p.b[idx];
  if (r <= 0 || r > p.max_rank || n0 >= N || B == nullptr) return;
  const float s = p.scale[idx];

  __shared__ __align__(128) __nv_bfloat16 vs[BM][LDK];
  __shared__ __align__(128) __nv_bfloat16 bs[BN][LDK];
  __shared__ __align__(128) float os[BM][LDO];
  __shared__ int32_t rows_s[BM];

  const int tid = threadIdx.x, warp = tid >> 5;
  const int row_base = p.offsets[key] + (ty - p.tile_offsets[key]) * BM;
  const int row_end = p.offsets[key + 1];
  if (tid < BM) rows_s[tid] = row_base + tid < row_end ? p.sorted_rows[row_base + tid] : -1;
  __syncthreads();

  const int nrows = static_cast<int>(min(static_cast<int64_t>(BN), N - n0));  // valid B rows (output columns)
  const bf16_t* __restrict__ B0 = B + n0 * r;
  const bool b_al = detail::aligned16(B);  // n0·r is a multiple of 128·r, so B0 is aligned iff B is
  const int64_t vstride = static_cast<int64_t>(p.num_slices) * p.T * p.max_rank;  // between splits
  const float* __restrict__ vbase = p.v + static_cast<int64_t>(slice) * p.T * p.max_rank;

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
  for (int m = 0; m < 2; ++m)
#pragma unroll
    for (int nn = 0; nn < 2; ++nn) wmma::fill_fragment(acc[m][nn], 0.0f);

  for (int j0 = 0; j0 < r; j0 += RC) {
    const int rc = min(RC, r - j0);
    const int kpad = (rc + 15) & ~15;
    // v tile: bf16(scale · Σ_splits v), zero for rows of other keys and columns past the rank.
    for (int e = tid; e < BM * RC; e += kThreads) {
      const int row = e / RC, j = e % RC;
      const int t = rows_s[row];
      float val = 0.0f;
      if (t >= 0 && j < rc) {
        const float* src = vbase + static_cast<int64_t>(t) * p.max_rank + j0 + j;
        float sum = 0.0f;
        for (int sp = 0; sp < p.splits; ++sp) sum += src[sp * vstride];
        val = s * sum;
      }
      put(&vs[row][j], detail::f2bf(val));
    }
    // B tile [BN rows (output columns)][rank chunk]
    if (r <= RC) {
      const int lim = nrows * r;  // the tile is the contiguous run B0[0 .. lim)
      for (int e = tid * 8; e < lim; e += kThreads * 8) {
        if (b_al && e + 8 <= lim) {
          const uint4 q = __ldg(reinterpret_cast<const uint4*>(B0 + e));
          const uint32_t w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
          for (int u = 0; u < 8; ++u) {
            const int ee = e + u;
            put(&bs[ee / r][ee % r], static_cast<bf16_t>((u & 1) ? (w[u >> 1] >> 16) : (w[u >> 1] & 0xffffu)));
          }
        } else {
          for (int ee = e; ee < min(lim, e + 8); ++ee) put(&bs[ee / r][ee % r], B0[ee]);
        }
      }
    } else if (b_al && (r & 7) == 0) {
      for (int c = tid; c < BN * (RC / 8); c += kThreads) {
        const int i = c / (RC / 8), jc = (c % (RC / 8)) * 8;
        if (i < nrows && jc < rc) {
          const uint4 q = __ldg(reinterpret_cast<const uint4*>(B0 + static_cast<int64_t>(i) * r + j0 + jc));
          *reinterpret_cast<uint4*>(&bs[i][jc]) = q;
        }
      }
    } else {
      for (int e = tid; e < BN * RC; e += kThreads) {
        const int i = e / RC, j = e % RC;
        if (i < nrows && j < rc) put(&bs[i][j], B0[static_cast<int64_t>(i) * r + j0 + j]);
      }
    }
    // zero the k padding [rc, kpad): 0·garbage could be NaN
    if (kpad > rc)
      for (int e = tid; e < BN * 16; e += kThreads) {
        const int i = e / 16, j = rc + e % 16;
        if (j < kpad) put(&bs[i][j], bf16_t{0});
      }
    __syncthreads();
    for (int kk = 0; kk < kpad; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a[2];
      wmma::load_matrix_sync(a[0], &vs[0][kk], LDK);
      wmma::load_matrix_sync(a[1], &vs[16][kk], LDK);
#pragma unroll
      for (int nn = 0; nn < 2; ++nn) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> b;
        wmma::load_matrix_sync(b, &bs[warp * 32 + nn * 16][kk], LDK);
        wmma::mma_sync(acc[0][nn], a[0], b, acc[0][nn]);
        wmma::mma_sync(acc[1][nn], a[1], b, acc[1][nn]);
      }
    }
    __syncthreads();
  }

#pragma unroll
  for (int m = 0; m < 2; ++m)
#pragma unroll
    for (int nn = 0; nn < 2; ++nn)
      wmma::store_matrix_sync(&os[m * 16][warp * 32 + nn * 16], acc[m][nn], LDO, wmma::mem_row_major);
  __syncthreads();
  bf16_t* __restrict__ yb = p.y + p.y_off[slice] + n0;
  for (int e = tid; e < BM * (BN / 2); e += kThreads) {
    const int row = e / (BN / 2), c = (e % (BN / 2)) * 2;
    const int t = rows_s[row];
    if (t < 0 || c >= nrows) continue;
    uint32_t* dst = reinterpret_cast<uint32_t*>(yb + static_cast<int64_t>(t) * p.ldy + c);
    const uint32_t old = *dst;
    *dst = detail::pack_bf2(detail::lo_f(old) + os[row][c], detail::hi_f(old) + os[row][c + 1]);
  }
}

}  // namespace

void SgmvExpandDesc::validate() const {
  dims.validate("sgmv_expand", true);
  GRAFT_CHECK(table.num_keys >= 1 && table.num_keys <= kMaxPlanKeys, "sgmv_expand: table.num_keys = {} outside [1, {}]",
              table.num_keys, kMaxPlanKeys);
  GRAFT_CHECK(table.b && table.rank && table.scale, "sgmv_expand: table.b / table.rank / table.scale must not be null");
  GRAFT_CHECK(plan.sorted_rows && plan.offsets && plan.tile_offsets,
              "sgmv_expand: plan.sorted_rows / offsets / tile_offsets must not be null");
  int64_t width = 0;
  for (int i = 0; i < dims.num_slices; ++i) width = std::max(width, dims.slices[i].y_offset + dims.slices[i].n);
  const int64_t ld = ldy ? ldy : width;
  GRAFT_CHECK(ld >= width && ld % 2 == 0, "sgmv_expand: ldy = {} must be even and >= {} (the slices' last column)", ld,
              width);
  GRAFT_CHECK(dims.T == 0 || (v && y), "sgmv_expand: v / y must not be null");
  GRAFT_CHECK(detail::host_aligned(y, 4), "sgmv_expand: y must be 4-byte aligned");
  GRAFT_CHECK(sgmv_max_row_tiles(dims.T, table.num_keys) <= 65535,
              "sgmv_expand: {} row tiles exceed the grid limit 65535 (fewer rows or keys per launch)",
              sgmv_max_row_tiles(dims.T, table.num_keys));
}

void sgmv_expand(const SgmvExpandDesc& d, cudaStream_t stream) {
  d.validate();
  if (d.dims.T == 0) return;
  Params p{};
  p.v = d.v;
  p.splits = d.dims.splits;
  p.T = d.dims.T;
  p.max_rank = d.dims.max_rank;
  p.sorted_rows = d.plan.sorted_rows;
  p.offsets = d.plan.offsets;
  p.tile_offsets = d.plan.tile_offsets;
  p.b = d.table.b;
  p.rank = d.table.rank;
  p.scale = d.table.scale;
  p.num_keys = d.table.num_keys;
  p.num_slices = d.dims.num_slices;
  int64_t max_n = 0, width = 0;
  for (int i = 0; i < d.dims.num_slices; ++i) {
    p.n[i] = d.dims.slices[i].n;
    p.y_off[i] = d.dims.slices[i].y_offset;
    max_n = std::max(max_n, p.n[i]);
    width = std::max(width, p.y_off[i] + p.n[i]);
  }
  p.y = d.y;
  p.ldy = d.ldy ? d.ldy : width;
  const dim3 grid(static_cast<unsigned>((max_n + BN - 1) / BN),
                  static_cast<unsigned>(sgmv_max_row_tiles(d.dims.T, d.table.num_keys)),
                  static_cast<unsigned>(d.dims.num_slices));
  GRAFT_LAUNCH(grid, kThreads, 0, stream, sgmv_expand_kernel)(p);
  GRAFT_CUDA_CHECK_LAUNCH();
}

}  // namespace graft::cuda::serve
