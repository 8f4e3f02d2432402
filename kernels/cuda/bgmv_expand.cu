// bgmv_expand: the LoRA up-projection with one adapter index per row (decode), CUDA cores,
// accumulated into the (fused) base output.
//
// Contract (device pointers, graft/cuda/serve_lora.hpp):
//   v [splits, num_slices, T, max_rank] f32 from sgmv_shrink / bgmv_shrink (same dims);
//   row_key [T] i32 (-1 / out of range = no adapter); table: per (key, slice) B [N_i, rank] bf16
//   row-major, scale f32, rank in [1, max_rank];
//   -> y [T, ldy] bf16 (+=): y[t, off_i + n] = bf16( y[t, off_i + n] + Σ_j (scale·Σ_s v[s, i, t, j])·B[n, j] )
//      with the scaled intermediate kept in f32 (no bf16 rounding, unlike sgmv_expand). Rows
//      without a key and slices not adapted are untouched; each y element has exactly one writer.
//   Requirements: N_i, y_offset_i, ldy even; y 4-byte aligned; slices disjoint.
// Design: block = (512 output columns, row, slice), 256 threads; the scaled intermediate (<= 256
//   f32) is staged in shared memory, each thread owns the column pair (n, n+1): it streams the two
//   adjacent B rows (2·rank contiguous bf16; 16-byte loads when rank % 8 == 0 and B is aligned,
//   scalar loads otherwise) and does one bf16x2 read-add-write of y. A warp reads 64·rank
//   contiguous elements of B. Grid: (ceil(max_i N_i / 512), T, num_slices).
// Limits: T <= 65535 (grid y), max_rank <= 256.
#include <algorithm>

#include "serve_common.cuh"
#include "launch.cuh"

namespace graft::cuda::serve {
namespace {

constexpr int kThreads = 256;
constexpr int kCols = 2 * kThreads;

struct Params {
  const float* v;
  int splits;
  int64_t T;
  int max_rank;
  const int32_t* row_key;
  const bf16_t* const* b;
  const int32_t* rank;
  const float* scale;
  int num_keys, num_slices;
  int64_t n[kMaxSlices];
  int64_t y_off[kMaxSlices];
  bf16_t* y;
  int64_t ldy;
};

__global__ void __launch_bounds__(kThreads) bgmv_expand_kernel(const Params p) {
  const int64_t t = blockIdx.y;
  const int slice = blockIdx.z;
  const int key = p.row_key[t];
  if (key < 0 || key >= p.num_keys) return;
  const int idx = key * p.num_slices + slice;
  const int r = p.rank[idx];
  const int64_t N = p.n[slice];
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kCols;
  const bf16_t* __restrict__ B = p.b[idx];
  if (r <= 0 || r > p.max_rank || n0 >= N || B == nullptr) return;
  const float s = p.scale[idx];

  __shared__ float vs[kMaxLoraRank];
  const int64_t vstride = static_cast<int64_t>(p.num_slices) * p.T * p.max_rank;
  const float* __restrict__ vr = p.v + (static_cast<int64_t>(slice) * p.T + t) * p.max_rank;
  for (int j = threadIdx.x; j < r; j += kThreads) {
    float sum = 0.0f;
    for (int sp = 0; sp < p.splits; ++sp) sum += vr[sp * vstride + j];
    vs[j] = s * sum;
  }
  __syncthreads();
  const int64_t n = n0 + 2 * threadIdx.x;
  if (n >= N) return;  // N even: n + 1 < N too
  const bf16_t* __restrict__ b0 = B + n * r;  // rows n and n+1: 2r contiguous elements
  float a0 = 0.0f, a1 = 0.0f;
  if ((r & 7) == 0 && detail::aligned16(B)) {
    for (int j = 0; j < r; j += 8) {
      float f0[8], f1[8];
      detail::unpack8(__ldg(reinterpret_cast<const uint4*>(b0 + j)), f0);
      detail::unpack8(__ldg(reinterpret_cast<const uint4*>(b0 + r + j)), f1);
#pragma unroll
      for (int u = 0; u < 8; ++u) {
        a0 = fmaf(vs[j + u], f0[u], a0);
        a1 = fmaf(vs[j + u], f1[u], a1);
      }
    }
  } else {
    for (int j = 0; j < r; ++j) {
      a0 = fmaf(vs[j], detail::bf2f(__ldg(b0 + j)), a0);
      a1 = fmaf(vs[j], detail::bf2f(__ldg(b0 + r + j)), a1);
    }
  }
  uint32_t* dst = reinterpret_cast<uint32_t*>(p.y + t * p.ldy + p.y_off[slice] + n);
  const uint32_t old = *dst;
  *dst = detail::pack_bf2(detail::lo_f(old) + a0, detail::hi_f(old) + a1);
}

}  // namespace

void BgmvExpandDesc::validate() const {
  dims.validate("bgmv_expand", true);
  GRAFT_CHECK(table.num_keys >= 1, "bgmv_expand: table.num_keys = {} must be >= 1", table.num_keys);
  GRAFT_CHECK(table.b && table.rank && table.scale, "bgmv_expand: table.b / table.rank / table.scale must not be null");
  GRAFT_CHECK(dims.T <= 65535, "bgmv_expand: T = {} rows exceed the grid limit 65535 (use sgmv_expand)", dims.T);
  int64_t width = 0;
  for (int i = 0; i < dims.num_slices; ++i) width = std::max(width, dims.slices[i].y_offset + dims.slices[i].n);
  const int64_t ld = ldy ? ldy : width;
  GRAFT_CHECK(ld >= width && ld % 2 == 0, "bgmv_expand: ldy = {} must be even and >= {} (the slices' last column)", ld,
              width);
  GRAFT_CHECK(dims.T == 0 || (v && y && row_key), "bgmv_expand: v / y / row_key must not be null");
  GRAFT_CHECK(detail::host_aligned(y, 4), "bgmv_expand: y must be 4-byte aligned");
}

void bgmv_expand(const BgmvExpandDesc& d, cudaStream_t stream) {
  d.validate();
  if (d.dims.T == 0) return;
  Params p{};
  p.v = d.v;
  p.splits = d.dims.splits;
  p.T = d.dims.T;
  p.max_rank = d.dims.max_rank;
  p.row_key = d.row_key;
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
  const dim3 grid(static_cast<unsigned>((max_n + kCols - 1) / kCols), static_cast<unsigned>(d.dims.T),
                  static_cast<unsigned>(d.dims.num_slices));
  GRAFT_LAUNCH(grid, kThreads, 0, stream, bgmv_expand_kernel)(p);
  GRAFT_CUDA_CHECK_LAUNCH();
}

}  // namespace graft::cuda::serve
