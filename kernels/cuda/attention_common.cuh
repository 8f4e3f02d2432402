// Pieces shared by the dense attention kernels (attention_fwd.cu, attention_bwd.cu): the
// visibility rule of cpu::attention, bf16 -> fp32 tile loads into shared memory, a block-wide "any
// visible pair in this tile" vote and the descriptor checks.
#pragma once

#include <cstdint>

#include "graft/cuda/attention.hpp"
#include "graft/cuda/check.hpp"
#include "train_common.cuh"

namespace graft::cuda::attnk {

constexpr int kThreads = 128;           // 4 warps
constexpr int kWarps = kThreads / 32;
constexpr int kBM = 16;                 // query rows per tile

// Positions and the mask of one call, passed by value to the kernels.
struct Visibility {
  const int32_t* q_pos;
  const int32_t* k_pos;
  const int32_t* q_seg;  // null: no segments
  const int32_t* k_seg;
  int64_t window, chunk;
  bool causal;
};

inline Visibility make_visibility(const int32_t* q_pos, const int32_t* k_pos, const AttentionMaskDev& m) {
  return {q_pos, k_pos, m.q_segments, m.k_segments, m.sliding_window, m.chunk_size, m.causal};
}

// Exactly kernels/cpu/attention.cpp's rule (int64 positions, C++ truncating division), on values
// (qs / ks: the segment ids, ignored when the call has none).
__device__ __forceinline__ bool visible_at(const Visibility& v, int64_t qp, int32_t qs, int64_t kp, int32_t ks) {
  if (v.causal && kp > qp) return false;
  if (v.window > 0 && qp - kp >= v.window) return false;
  if (v.chunk > 0 && qp / v.chunk != kp / v.chunk) return false;
  if (v.q_seg != nullptr && qs != ks) return false;
  return true;
}
// The same for query t and key j, read from global memory.
__device__ __forceinline__ bool visible(const Visibility& v, int64_t t, int64_t j) {
  return visible_at(v, v.q_pos[t], v.q_seg ? v.q_seg[t] : 0, v.k_pos[j], v.k_seg ? v.k_seg[j] : 0);
}

// Block-wide OR of one flag per thread (the same answer in every thread). wflag: __shared__
// int[kWarps]; the caller must have synchronised since the last read of wflag. Ends with a
// __syncthreads.
__device__ __forceinline__ bool block_any(bool any, int* wflag) {
  const unsigned b = __ballot_sync(0xffffffffu, any);
  if ((threadIdx.x & 31) == 0) wflag[threadIdx.x >> 5] = b != 0u;
  __syncthreads();
  int r = 0;
  for (int w = 0; w < kWarps; ++w) r |= wflag[w];
  return r != 0;
}

// vis[r·BN + c] = query t0 + r sees key j0 + c (false past T or S) for the [kBM, BN] tile; returns
// whether any pair of the tile is visible (the same answer in every thread). wflag: __shared__
// int[kWarps]. Ends with a __syncthreads (vis and wflag are then readable by every thread); the
// caller must have synchronised since the last reads of vis / wflag.
template <int BN>
__device__ __forceinline__ bool tile_visibility(const Visibility& v, int64_t t0, int64_t T, int64_t j0, int64_t S,
                                                int* vis, int* wflag) {
  bool any = false;
  for (int e = threadIdx.x; e < kBM * BN; e += blockDim.x) {
    const int64_t t = t0 + e / BN, j = j0 + e % BN;
    const bool ok = t < T && j < S && visible(v, t, j);
    vis[e] = ok;
    any = any || ok;
  }
  return block_any(any, wflag);
}

// dst[r · pitch + c] = float(src[((row0 + r) · heads + h) · dim + c]) for r < rows, c < dim; rows
// past n are zero. src: a [n, heads, dim] bf16 tensor.
__device__ __forceinline__ void load_rows(float* dst, int pitch, int rows, const __nv_bfloat16* __restrict__ src,
                                          int64_t row0, int64_t n, int64_t heads, int64_t h, int dim) {
  for (int e = threadIdx.x; e < rows * dim; e += blockDim.x) {
    const int r = e / dim, c = e % dim;
    const int64_t t = row0 + r;
    dst[r * pitch + c] = t < n ? __bfloat162float(src[(t * heads + h) * dim + c]) : 0.0f;
  }
}

// Dynamic shared memory for a kernel: checked against the current device's opt-in limit, and the
// kernel's limit raised when it needs more than the default 48 KiB.
template <class Kernel>
void prepare_smem(Kernel* kernel, size_t bytes, const char* who, const AttentionDims& d) {
  const auto& dev = nf4k::current_device_info();
  GRAFT_CHECK_FIX(bytes <= dev.smem_per_block_optin,
                  "use head dims of at most 128, or a device with more shared memory",
                  "{}: D = {}, Dv = {} need {} bytes of shared memory per block, device '{}' allows {}", who, d.D,
                  d.Dv, bytes, dev.name, dev.smem_per_block_optin);
  if (bytes > 48 * 1024)
    GRAFT_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

// Forward kernel parameters (attention_fwd.cu). Statistics mode (attention_bwd without a saved
// lse): out = null, dout and delta set -> delta[t,h] = Σ_c dout[t,h,c]·O[t,h,c] with fp32 O.
struct FwdParams {
  const __nv_bfloat16* q;
  const __nv_bfloat16* k;
  const __nv_bfloat16* v;
  Visibility vis;
  float scale;
  int64_t T, S, Hq, Hkv;
  int D, Dv;
  __nv_bfloat16* out;          // [T, Hq, Dv] or null
  float* lse;                  // [T, Hq] or null
  const __nv_bfloat16* dout;   // [T, Hq, Dv], statistics mode only
  float* delta;                // [T, Hq], statistics mode only
};
void launch_fwd(const FwdParams& p, cudaStream_t stream);  // no launch for T = 0
// Head dims of the tensor-core kernels (multiples of 16 whose tiles fit shared memory and registers).
inline bool tc_head_dims(int64_t D, int64_t Dv) { return D == Dv && (D == 64 || D == 80 || D == 96 || D == 128); }
inline constexpr const char* kTcHeadDimsWhy = "the tensor-core path needs D == Dv in {64, 80, 96, 128}";
// The tensor-core forward (attention_fwd_tc.cu): D == Dv in {64, 80, 96, 128}, q/k/v 16-byte aligned, not
// statistics mode; tc_ineligible returns why a call does not qualify (null: it does).
const char* tc_ineligible(const FwdParams& p);
void launch_fwd_tc(const FwdParams& p, cudaStream_t stream);
// The tensor-core passes 2-3 of the backward (attention_bwd_tc.cu): D == Dv in {64, 80, 96, 128}, q, k, v,
// dout 16-byte aligned; bwd_tc_ineligible returns why a call does not qualify (null: it does).
const char* bwd_tc_ineligible(int64_t D, int64_t Dv, const void* q, const void* k, const void* v, const void* dout);
void launch_bwd_tc(const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v, const __nv_bfloat16* dout,
                   const Visibility& vis, float scale, const AttentionDims& n, const float* lse, const float* delta,
                   __nv_bfloat16* dq, __nv_bfloat16* dk, __nv_bfloat16* dv, cudaStream_t stream);

// Checks shared by both descriptors (who names the entry point).
void validate_common(const char* who, const AttentionDims& d, const __nv_bfloat16* q, const __nv_bfloat16* k,
                     const __nv_bfloat16* v, const int32_t* q_pos, const int32_t* k_pos, const AttentionMaskDev& m);

}  // namespace graft::cuda::attnk
