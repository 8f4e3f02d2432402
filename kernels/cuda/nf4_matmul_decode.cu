// nf4_matmul_decode.cu — decode-shaped forward (T <= 16) of the NF4 linear layer: memory-bound,
// streams the packed weight exactly once with 16-byte loads.
// Contract (same as nf4_matmul): Y[T, N] (=) X[T, K] · dequant(W[N, K])ᵀ (+ bias) (+ s · (X·Aᵀ)·Bᵀ);
//   xa_out[T, r] (=) X·Aᵀ fp32 (computed first by a small shrink kernel; the expand is done in fp32
//   in the epilogue, so no bf16 rounding of the LoRA intermediate on this path).
//   X [T, K] bf16 16-byte aligned, Y [T, N] bf16, W NF4 blocksize 64; K % 64 == 0, N even,
//   1 <= T <= 16, r <= 64.
// Design: a block owns 32 output rows of W (4 n8 tiles) and its 8 warps split K in 128-wide chunks
//   (split-K inside the block, reduced through shared memory). Tensor cores do the math: T (<= 16)
//   tokens are the M = 16 side of mma.sync m16n8k16, and the K order inside a 128-chunk is permuted
//   so that each lane's B fragments come straight from ONE 16-byte load of its own weight row
//   (lane (g, t4) holds k = chunk·128 + t4·32 + [0, 32) of row g; mma step s uses its elements
//   4s..4s+3 as k-slots {2t4, 2t4+1, 2t4+8, 2t4+9}; the A fragments (X) use the same permutation, so
//   the dot products are unchanged). X chunks come from L1/L2 (X is at most 16·K bf16).
#include "graft/cuda/check.hpp"
#include "graft/cuda/nf4_matmul.hpp"
#include "nf4_common.cuh"
#include "launch.cuh"

namespace graft::cuda::nf4k {
namespace {

constexpr int kDecThreads = 256, kDecWarps = kDecThreads / 32, kDecTiles = 4, kDecRows = kDecTiles * 8;

// xa[t][j] = Σ_k X[t][k]·A[j][k] (fp32), one warp per (t, j).
__global__ void lora_shrink_small_kernel(const __nv_bfloat16* __restrict__ x, const __nv_bfloat16* __restrict__ a,
                                         float* __restrict__ xa, int64_t T, int64_t K, int r) {
  const int64_t wid = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (wid >= T * r) return;
  const int64_t t = wid / r, j = wid % r;
  const uint4* xr = reinterpret_cast<const uint4*>(x + t * K);
  const uint4* ar = reinterpret_cast<const uint4*>(a + j * K);
  float s = 0.0f;
  for (int64_t i = lane; i < K / 8; i += 32) {
    const uint4 xv = __ldg(xr + i), av = __ldg(ar + i);
    const uint32_t xw[4] = {xv.x, xv.y, xv.z, xv.w}, aw[4] = {av.x, av.y, av.z, av.w};
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const float2 xf = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&xw[q]));
      const float2 af = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&aw[q]));
      s = fmaf(xf.x, af.x, s);
      s = fmaf(xf.y, af.y, s);
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  if (lane == 0) xa[t * r + j] = s;
}

__global__ void __launch_bounds__(kDecThreads) nf4_decode_kernel(const Nf4MatmulDesc d) {
  __shared__ float code[16];
  __shared__ float dmap[256];
  __shared__ float red[kDecWarps][kDecTiles][32][4];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t4 = lane & 3;
  const Nf4Weight& w = d.w;
  const int64_t K = w.k, N = w.n, T = d.t;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kDecRows;
  if (tid < 16) code[tid] = kNf4Code[tid];
  if (w.double_quant) dmap[tid] = w.dmap[tid];
  __syncthreads();

  float acc[kDecTiles][4];
#pragma unroll
  for (int i = 0; i < kDecTiles; ++i)
#pragma unroll
    for (int c = 0; c < 4; ++c) acc[i][c] = 0.0f;

  const bool lo_ok = g < T, hi_ok = g + 8 < T;
  const __nv_bfloat16* xlo = d.x + static_cast<int64_t>(g) * K;
  const __nv_bfloat16* xhi = d.x + static_cast<int64_t>(g + 8) * K;

  for (int64_t c = warp; c * 128 < K; c += kDecWarps) {
    const int64_t kb = c * 128 + t4 * 32;
    const bool kok = kb < K;  // K % 32 == 0: the lane's 32 elements are all in or all out
    uint32_t xa[16], xb[16];
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const uint4 va = (kok && lo_ok) ? __ldg(reinterpret_cast<const uint4*>(xlo + kb) + q) : make_uint4(0, 0, 0, 0);
      const uint4 vb = (kok && hi_ok) ? __ldg(reinterpret_cast<const uint4*>(xhi + kb) + q) : make_uint4(0, 0, 0, 0);
      xa[4 * q] = va.x, xa[4 * q + 1] = va.y, xa[4 * q + 2] = va.z, xa[4 * q + 3] = va.w;
      xb[4 * q] = vb.x, xb[4 * q + 1] = vb.y, xb[4 * q + 2] = vb.z, xb[4 * q + 3] = vb.w;
    }
    uint4 pk[kDecTiles];
    ScaleRaw sr[kDecTiles];
#pragma unroll
    for (int nt = 0; nt < kDecTiles; ++nt) {
      const int64_t n = n0 + nt * 8 + g;
      const bool ok = kok && n < N;
      const int64_t e = n * K + kb;
      pk[nt] = ok ? __ldg(reinterpret_cast<const uint4*>(w.packed + e / 2)) : make_uint4(0, 0, 0, 0);
      sr[nt] = ok ? load_scale_raw(w, e / 64) : ScaleRaw{};
    }
#pragma unroll
    for (int nt = 0; nt < kDecTiles; ++nt) {
      uint32_t wq[16];
      dequant16(pk[nt], finish_scale(w, sr[nt], dmap), code, wq);
#pragma unroll
      for (int s = 0; s < 8; ++s) {
        const uint32_t a[4] = {xa[2 * s], xb[2 * s], xa[2 * s + 1], xb[2 * s + 1]};
        mma_bf16_16816(acc[nt], a, wq[2 * s], wq[2 * s + 1]);
      }
    }
  }

#pragma unroll
  for (int nt = 0; nt < kDecTiles; ++nt)
#pragma unroll
    for (int c = 0; c < 4; ++c) red[warp][nt][lane][c] = acc[nt][c];
  __syncthreads();
  for (int i = tid; i < kDecTiles * 32 * 4; i += kDecThreads) {
    const int nt = i / 128, ln = (i / 4) % 32, c = i % 4;
    float v = 0.0f;
#pragma unroll
    for (int wi = 0; wi < kDecWarps; ++wi) v += red[wi][nt][ln][c];
    const int64_t t = (ln >> 2) + (c >= 2 ? 8 : 0);
    const int64_t n = n0 + nt * 8 + 2 * (ln & 3) + (c & 1);
    if (t >= T || n >= N) continue;
    if (d.bias != nullptr) v += __bfloat162float(d.bias[n]);
    if (d.r > 0) {
      float l = 0.0f;
      for (int j = 0; j < d.r; ++j) l = fmaf(d.xa_out[t * d.r + j], __bfloat162float(d.lora_b[n * d.r + j]), l);
      v = fmaf(d.scale, l, v);
    }
    d.y[t * N + n] = __float2bfloat16_rn(v);
  }
}

}  // namespace

void launch_nf4_decode(const Nf4MatmulDesc& d, cudaStream_t stream) {
  GRAFT_CHECK(d.t >= 1 && d.t <= kDecodeMaxT, "nf4 decode: T = {} must be in [1, {}]", d.t, kDecodeMaxT);
  if (d.r > 0) {
    const int64_t threads = d.t * d.r * 32;
    GRAFT_LAUNCH(static_cast<unsigned>((threads + 255) / 256), 256, 0, stream, lora_shrink_small_kernel)(
        d.x, d.lora_a, d.xa_out, d.t, d.w.k, d.r);
    GRAFT_CUDA_CHECK_LAUNCH();
  }
  const int64_t blocks = (d.w.n + kDecRows - 1) / kDecRows;
  GRAFT_CHECK(blocks <= 0x7fffffff, "nf4 decode: N = {} too large", d.w.n);
  GRAFT_LAUNCH(static_cast<unsigned>(blocks), kDecThreads, 0, stream, nf4_decode_kernel)(d);
  GRAFT_CUDA_CHECK_LAUNCH();
}

}  // namespace graft::cuda::nf4k
