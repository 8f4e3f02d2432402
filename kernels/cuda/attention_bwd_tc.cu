// attention_bwd_tc.cu — the tensor-core passes 2 and 3 of attention_bwd (dk/dv and dq) for D == Dv
// in {64, 80, 96, 128}; attention_bwd picks them (AttentionPath::Auto) when the call qualifies, the
// CUDA-core kernels (attention_bwd.cu) otherwise. Pass 1 (lse, delta) is shared.
// Contract: attention_bwd's (graft/cuda/attention.hpp). Differs from the CUDA-core path only in
//   rounding: as in flash-attention 2, P and dS are rounded to bf16 as the tensor-core operands of
//   dv += Pᵀ·dO, dk += dSᵀ·Q and dq += dS·K; scores, P, dP and every accumulator are fp32 and each
//   gradient is rounded to bf16 once. Deterministic: no atomics, fixed loop orders, wmma.
//   q, k, v, dout 16-byte aligned (cp.async). Oracle: cpu::attention_bwd (tests/kernels/cuda_attention).
// Design: 128 threads = 4 warps, 64 x 64 tiles, positions / segments of both tiles in shared
//   memory, tiles with no visible pair skipped (block vote).
//   dk/dv: block = 64 keys of one kv head, warp w owns keys [16w, 16w + 16) and keeps their dk and dv
//     as wmma accumulator fragments in registers across the loop over the group's query heads
//     (ascending) and 64-row query tiles (ascending). Per tile: Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ (wmma into
//     shared memory), per (key, query) P = exp(scale·s − lse), dS = P·(dP − delta)·scale (0 when
//     not visible) as bf16, then dv += Pᵀ·dO and dk += dSᵀ·Q (wmma).
//   dq: block = 64 query rows of one query head, warp w owns rows [16w, 16w + 16), dq fragments in
//     registers over the 64-key tiles (ascending): S = Q·Kᵀ, dP = dO·Vᵀ, dS (bf16), dq += dS·K.
//   Shared memory (both kernels): 122 KB at D = 128, 90 KB at 64; checked against the device's
//   opt-in limit. Grids (ceil(S/64), Hkv) and (ceil(T/64), Hq).
#include <mma.h>

#include <cmath>

#include "attention_common.cuh"
#include "cp_async.cuh"
#include "launch.cuh"

namespace graft::cuda::attnk {
namespace {
using namespace nvcuda;

constexpr int BT = 64;  // rows of both tiles
static_assert(kThreads == 128, "4 warps of 16 rows cover a 64-row tile");

template <int D>
struct BwdTcSmem {
  static constexpr int LDQ = D + 8;    // bf16 pitch of the Q, dO, K, V tiles
  static constexpr int LDSS = BT + 4;  // f32 pitch of S and dP
  static constexpr int LDP = BT + 8;   // bf16 pitch of P and dS
  static constexpr int LDO = D + 4;    // f32 pitch of the final gradient staging
  static constexpr size_t align(size_t b) { return (b + 127) / 128 * 128; }
  static constexpr size_t tile = align(sizeof(__nv_bfloat16) * BT * LDQ);
  static constexpr size_t a_off = 0;           // the block's own rows: Q (dq) or K (dk/dv)
  static constexpr size_t b_off = a_off + tile;  // dO (dq) or V (dk/dv)
  static constexpr size_t c_off = b_off + tile;  // the streamed tile: K (dq) or Q (dk/dv)
  static constexpr size_t d_off = c_off + tile;  // V (dq) or dO (dk/dv)
  static constexpr size_t s_off = d_off + tile;
  static constexpr size_t dp_off = s_off + align(sizeof(float) * BT * LDSS);
  static constexpr size_t p_off = dp_off + align(sizeof(float) * BT * LDSS);
  static constexpr size_t ds_off = p_off + align(sizeof(__nv_bfloat16) * BT * LDP);
  static constexpr size_t stat_off = ds_off + align(sizeof(__nv_bfloat16) * BT * LDP);  // lse, delta [64]
  static constexpr size_t pos_off = stat_off + align(sizeof(float) * 2 * BT);  // q_pos, q_seg, k_pos, k_seg
  static constexpr size_t flag_off = pos_off + align(sizeof(int) * 4 * BT);
  static constexpr size_t bytes = flag_off + align(sizeof(int) * kWarps);
  // The final fp32 staging of one gradient [64][LDO] reuses the four bf16 tiles.
  static_assert(sizeof(float) * BT * LDO <= 4 * tile, "staging fits the tiles");
};

struct TcArgs {
  const __nv_bfloat16* q;
  const __nv_bfloat16* k;
  const __nv_bfloat16* v;
  const __nv_bfloat16* dout;
  Visibility vis;
  float scale;
  int64_t T, S, Hq, Hkv;
  const float* lse;
  const float* delta;
  __nv_bfloat16* dq;
  __nv_bfloat16* dk;
  __nv_bfloat16* dv;
};

// 64 rows of a [n, heads, D] bf16 tensor at head h into a tile (pitch LDQ), zero past n.
template <int D, int LDQ>
__device__ __forceinline__ void load_tile(__nv_bfloat16* dst, const __nv_bfloat16* __restrict__ src, int64_t row0,
                                          int64_t n, int64_t heads, int64_t h) {
  constexpr int CH = D / 8;
  for (int c = threadIdx.x; c < BT * CH; c += kThreads) {
    const int r = c / CH, dc = (c % CH) * 8;
    const bool ok = row0 + r < n;
    const __nv_bfloat16* s = ok ? src + ((row0 + r) * heads + h) * D + dc : src;
    ptx::cp_async16(dst + r * LDQ + dc, s, ok ? 16 : 0);
  }
}

// Positions / segments of 64 queries (t0..) or keys (j0..) into shared memory (0 past the end).
__device__ __forceinline__ void load_pos(int* pos, int* seg, const int32_t* p, const int32_t* s, int64_t r0,
                                         int64_t n) {
  if (threadIdx.x < BT) {
    const int64_t r = r0 + threadIdx.x;
    pos[threadIdx.x] = r < n ? p[r] : 0;
    seg[threadIdx.x] = r < n && s ? s[r] : 0;
  }
}

// out[16 x 64] (f32, ld LDSS) = A[16 rows, D] · B[64 rows, D]ᵀ, both bf16 tiles of pitch LDQ.
template <int D, int LDQ, int LDSS>
__device__ __forceinline__ void mm_abt(float* out, const __nv_bfloat16* A, const __nv_bfloat16* B) {
#pragma unroll
  for (int n = 0; n < BT / 16; ++n) {
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::fill_fragment(acc, 0.0f);
#pragma unroll
    for (int kk = 0; kk < D; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
      wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> b;
      wmma::load_matrix_sync(a, A + kk, LDQ);
      wmma::load_matrix_sync(b, B + (n * 16) * LDQ + kk, LDQ);
      wmma::mma_sync(acc, a, b, acc);
    }
    wmma::store_matrix_sync(out + n * 16, acc, LDSS, wmma::mem_row_major);
  }
}

template <int D>
using GradFrags = wmma::fragment<wmma::accumulator, 16, 16, 16, float>[D / 16];

// acc[dn] += P[16 x 64] (bf16, ld LDP) · B[64 rows, D] (bf16 tile, pitch LDQ), columns dn·16..
template <int D, int LDQ, int LDP>
__device__ __forceinline__ void mm_acc(GradFrags<D>& acc, const __nv_bfloat16* P, const __nv_bfloat16* B) {
#pragma unroll
  for (int dn = 0; dn < D / 16; ++dn) {
#pragma unroll
    for (int kk = 0; kk < BT; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
      wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> b;
      wmma::load_matrix_sync(a, P + kk, LDP);
      wmma::load_matrix_sync(b, B + kk * LDQ + dn * 16, LDQ);
      wmma::mma_sync(acc[dn], a, b, acc[dn]);
    }
  }
}

// Writes the 64 x D gradient held as fragments by the 4 warps (rows [16w, 16w+16) each) to
// dst[((r0 + r) · heads + h) · D + d] for r0 + r < n, through the fp32 staging area.
template <int D, int LDO>
__device__ __forceinline__ void store_grad(GradFrags<D>& acc, float* stage, __nv_bfloat16* __restrict__ dst,
                                           int64_t r0, int64_t n, int64_t heads, int64_t h) {
  const int warp = threadIdx.x >> 5;
#pragma unroll
  for (int dn = 0; dn < D / 16; ++dn)
    wmma::store_matrix_sync(stage + (warp * 16) * LDO + dn * 16, acc[dn], LDO, wmma::mem_row_major);
  __syncthreads();
  for (int e = threadIdx.x; e < BT * D; e += kThreads) {
    const int r = e / D, d = e % D;
    if (r0 + r < n) dst[((r0 + r) * heads + h) * D + d] = __float2bfloat16(stage[r * LDO + d]);
  }
}

template <int D>
__global__ void __launch_bounds__(kThreads) attention_bwd_dkdv_tc_kernel(const TcArgs p) {
  using L = BwdTcSmem<D>;
  GRAFT_EXTERN_SHARED(unsigned char, smem, 128);
  __nv_bfloat16* Ks = reinterpret_cast<__nv_bfloat16*>(smem + L::a_off);
  __nv_bfloat16* Vs = reinterpret_cast<__nv_bfloat16*>(smem + L::b_off);
  __nv_bfloat16* Qs = reinterpret_cast<__nv_bfloat16*>(smem + L::c_off);
  __nv_bfloat16* Os = reinterpret_cast<__nv_bfloat16*>(smem + L::d_off);  // dout rows
  float* St = reinterpret_cast<float*>(smem + L::s_off);                   // [key][query]
  float* dPt = reinterpret_cast<float*>(smem + L::dp_off);
  __nv_bfloat16* Pt = reinterpret_cast<__nv_bfloat16*>(smem + L::p_off);
  __nv_bfloat16* dSt = reinterpret_cast<__nv_bfloat16*>(smem + L::ds_off);
  float* lse_s = reinterpret_cast<float*>(smem + L::stat_off);
  float* delta_s = lse_s + BT;
  int* qpos = reinterpret_cast<int*>(smem + L::pos_off);
  int* qseg = qpos + BT;
  int* kpos = qseg + BT;
  int* kseg = kpos + BT;
  int* wflag = reinterpret_cast<int*>(smem + L::flag_off);

  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * BT, kh = blockIdx.y, group = p.Hq / p.Hkv;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  load_tile<D, L::LDQ>(Ks, p.k, j0, p.S, p.Hkv, kh);
  load_tile<D, L::LDQ>(Vs, p.v, j0, p.S, p.Hkv, kh);
  ptx::cp_async_commit();
  load_pos(kpos, kseg, p.vis.k_pos, p.vis.k_seg, j0, p.S);
  GradFrags<D> dk, dv;
#pragma unroll
  for (int i = 0; i < D / 16; ++i) {
    wmma::fill_fragment(dk[i], 0.0f);
    wmma::fill_fragment(dv[i], 0.0f);
  }
  for (int64_t h = kh * group; h < (kh + 1) * group; ++h) {
    for (int64_t t0 = 0; t0 < p.T; t0 += BT) {
      __syncthreads();  // the previous tile's Q / dO / stats / positions / wflag are no longer read
      load_pos(qpos, qseg, p.vis.q_pos, p.vis.q_seg, t0, p.T);
      if (tid < BT) {
        const int64_t t = t0 + tid;
        lse_s[tid] = t < p.T ? p.lse[t * p.Hq + h] : -INFINITY;
        delta_s[tid] = t < p.T ? p.delta[t * p.Hq + h] : 0.0f;
      }
      __syncthreads();
      bool any = false;
      for (int e = tid; e < BT * BT; e += kThreads) {
        const int r = e / BT, c = e % BT;  // key r, query c
        any = any || (j0 + r < p.S && t0 + c < p.T && visible_at(p.vis, qpos[c], qseg[c], kpos[r], kseg[r]));
      }
      if (!block_any(any, wflag)) continue;
      load_tile<D, L::LDQ>(Qs, p.q, t0, p.T, p.Hq, h);
      load_tile<D, L::LDQ>(Os, p.dout, t0, p.T, p.Hq, h);
      ptx::cp_async_commit();
      ptx::cp_async_wait<0>();
      __syncthreads();
      const int w0 = warp * 16;
      mm_abt<D, L::LDQ, L::LDSS>(St + w0 * L::LDSS, Ks + w0 * L::LDQ, Qs);
      mm_abt<D, L::LDQ, L::LDSS>(dPt + w0 * L::LDSS, Vs + w0 * L::LDQ, Os);
      __syncwarp();
      {  // lanes 2r, 2r+1 own key w0 + r, queries [32·half, 32·half + 32)
        const int r = w0 + (lane >> 1), half = lane & 1;
        const bool key_ok = j0 + r < p.S;
        for (int c = half * 32; c < half * 32 + 32; ++c) {
          float P = 0.0f, dS = 0.0f;
          if (key_ok && t0 + c < p.T && lse_s[c] != -INFINITY &&
              visible_at(p.vis, qpos[c], qseg[c], kpos[r], kseg[r])) {
            P = expf(St[r * L::LDSS + c] * p.scale - lse_s[c]);
            dS = P * (dPt[r * L::LDSS + c] - delta_s[c]) * p.scale;
          }
          Pt[r * L::LDP + c] = __float2bfloat16(P);
          dSt[r * L::LDP + c] = __float2bfloat16(dS);
        }
      }
      __syncwarp();
      mm_acc<D, L::LDQ, L::LDP>(dv, Pt + w0 * L::LDP, Os);
      mm_acc<D, L::LDQ, L::LDP>(dk, dSt + w0 * L::LDP, Qs);
    }
  }
  ptx::cp_async_wait<0>();  // the K / V copies when no query tile ran
  __syncthreads();          // every warp is done with the tiles: the staging area reuses them
  float* stage = reinterpret_cast<float*>(smem + L::a_off);
  store_grad<D, L::LDO>(dk, stage, p.dk, j0, p.S, p.Hkv, kh);
  __syncthreads();
  store_grad<D, L::LDO>(dv, stage, p.dv, j0, p.S, p.Hkv, kh);
}

template <int D>
__global__ void __launch_bounds__(kThreads) attention_bwd_dq_tc_kernel(const TcArgs p) {
  using L = BwdTcSmem<D>;
  GRAFT_EXTERN_SHARED(unsigned char, smem, 128);
  __nv_bfloat16* Qs = reinterpret_cast<__nv_bfloat16*>(smem + L::a_off);
  __nv_bfloat16* Os = reinterpret_cast<__nv_bfloat16*>(smem + L::b_off);  // dout rows
  __nv_bfloat16* Ks = reinterpret_cast<__nv_bfloat16*>(smem + L::c_off);
  __nv_bfloat16* Vs = reinterpret_cast<__nv_bfloat16*>(smem + L::d_off);
  float* Ss = reinterpret_cast<float*>(smem + L::s_off);
  float* dPs = reinterpret_cast<float*>(smem + L::dp_off);
  __nv_bfloat16* dSs = reinterpret_cast<__nv_bfloat16*>(smem + L::ds_off);
  float* lse_s = reinterpret_cast<float*>(smem + L::stat_off);
  float* delta_s = lse_s + BT;
  int* qpos = reinterpret_cast<int*>(smem + L::pos_off);
  int* qseg = qpos + BT;
  int* kpos = qseg + BT;
  int* kseg = kpos + BT;
  int* wflag = reinterpret_cast<int*>(smem + L::flag_off);

  const int64_t t0 = static_cast<int64_t>(blockIdx.x) * BT, h = blockIdx.y, kh = h / (p.Hq / p.Hkv);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  load_tile<D, L::LDQ>(Qs, p.q, t0, p.T, p.Hq, h);
  load_tile<D, L::LDQ>(Os, p.dout, t0, p.T, p.Hq, h);
  ptx::cp_async_commit();
  load_pos(qpos, qseg, p.vis.q_pos, p.vis.q_seg, t0, p.T);
  if (tid < BT) {
    const int64_t t = t0 + tid;
    lse_s[tid] = t < p.T ? p.lse[t * p.Hq + h] : -INFINITY;
    delta_s[tid] = t < p.T ? p.delta[t * p.Hq + h] : 0.0f;
  }
  GradFrags<D> dq;
#pragma unroll
  for (int i = 0; i < D / 16; ++i) wmma::fill_fragment(dq[i], 0.0f);
  for (int64_t j0 = 0; j0 < p.S; j0 += BT) {
    __syncthreads();  // the previous tile's K / V / key positions / wflag are no longer read
    load_pos(kpos, kseg, p.vis.k_pos, p.vis.k_seg, j0, p.S);
    __syncthreads();
    bool any = false;
    for (int e = tid; e < BT * BT; e += kThreads) {
      const int r = e / BT, c = e % BT;  // query r, key c
      any = any || (t0 + r < p.T && j0 + c < p.S && visible_at(p.vis, qpos[r], qseg[r], kpos[c], kseg[c]));
    }
    if (!block_any(any, wflag)) continue;
    load_tile<D, L::LDQ>(Ks, p.k, j0, p.S, p.Hkv, kh);
    load_tile<D, L::LDQ>(Vs, p.v, j0, p.S, p.Hkv, kh);
    ptx::cp_async_commit();
    ptx::cp_async_wait<0>();
    __syncthreads();
    const int w0 = warp * 16;
    mm_abt<D, L::LDQ, L::LDSS>(Ss + w0 * L::LDSS, Qs + w0 * L::LDQ, Ks);
    mm_abt<D, L::LDQ, L::LDSS>(dPs + w0 * L::LDSS, Os + w0 * L::LDQ, Vs);
    __syncwarp();
    {  // lanes 2r, 2r+1 own query w0 + r, keys [32·half, 32·half + 32)
      const int r = w0 + (lane >> 1), half = lane & 1;
      const bool row_ok = t0 + r < p.T && lse_s[r] != -INFINITY;
      for (int c = half * 32; c < half * 32 + 32; ++c) {
        float dS = 0.0f;
        if (row_ok && j0 + c < p.S && visible_at(p.vis, qpos[r], qseg[r], kpos[c], kseg[c])) {
          const float P = expf(Ss[r * L::LDSS + c] * p.scale - lse_s[r]);
          dS = P * (dPs[r * L::LDSS + c] - delta_s[r]) * p.scale;
        }
        dSs[r * L::LDP + c] = __float2bfloat16(dS);
      }
    }
    __syncwarp();
    mm_acc<D, L::LDQ, L::LDP>(dq, dSs + w0 * L::LDP, Ks);
  }
  ptx::cp_async_wait<0>();  // the Q / dO copies when no key tile ran
  __syncthreads();
  store_grad<D, L::LDO>(dq, reinterpret_cast<float*>(smem + L::a_off), p.dq, t0, p.T, p.Hq, h);
}

template <int D>
void launch_d(const TcArgs& a, cudaStream_t stream) {
  constexpr size_t bytes = BwdTcSmem<D>::bytes;
  const AttentionDims dims{a.T, a.S, a.Hq, a.Hkv, D, D};
  if (a.S > 0) {
    prepare_smem(attention_bwd_dkdv_tc_kernel<D>, bytes, "attention_bwd (dk/dv, tensor cores)", dims);
    const dim3 grid(static_cast<unsigned>((a.S + BT - 1) / BT), static_cast<unsigned>(a.Hkv));
    GRAFT_LAUNCH(grid, kThreads, bytes, stream, attention_bwd_dkdv_tc_kernel<D>)(a);
    GRAFT_CUDA_CHECK_LAUNCH();
  }
  prepare_smem(attention_bwd_dq_tc_kernel<D>, bytes, "attention_bwd (dq, tensor cores)", dims);
  const dim3 grid(static_cast<unsigned>((a.T + BT - 1) / BT), static_cast<unsigned>(a.Hq));
  GRAFT_LAUNCH(grid, kThreads, bytes, stream, attention_bwd_dq_tc_kernel<D>)(a);
  GRAFT_CUDA_CHECK_LAUNCH();
}

}  // namespace

const char* bwd_tc_ineligible(int64_t D, int64_t Dv, const void* q, const void* k, const void* v, const void* dout) {
  if (!tc_head_dims(D, Dv)) return kTcHeadDimsWhy;
  for (const void* ptr : {q, k, v, dout})
    if (reinterpret_cast<uintptr_t>(ptr) % 16 != 0) return "the tensor-core path needs 16-byte aligned q, k, v, dout";
  return nullptr;
}

void launch_bwd_tc(const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v, const __nv_bfloat16* dout,
                   const Visibility& vis, float scale, const AttentionDims& n, const float* lse, const float* delta,
                   __nv_bfloat16* dq, __nv_bfloat16* dk, __nv_bfloat16* dv, cudaStream_t stream) {
  if (n.T == 0) return;
  const TcArgs a{q, k, v, dout, vis, scale, n.T, n.S, n.Hq, n.Hkv, lse, delta, dq, dk, dv};
  switch (n.D) {
    case 64: launch_d<64>(a, stream); break;
    case 80: launch_d<80>(a, stream); break;
    case 96: launch_d<96>(a, stream); break;
    default: launch_d<128>(a, stream); break;
  }
}

}  // namespace graft::cuda::attnk
