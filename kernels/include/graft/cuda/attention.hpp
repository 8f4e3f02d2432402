// Dense softmax attention for training and prefill (kernels/cuda/attention_{fwd,bwd}.cu): the CUDA
// side of graft::Backend::attention / attention_bwd. Oracle: cpu::attention / cpu::attention_bwd
// (kernels/cpu/attention.cpp, attention_bwd.cpp) — the same visibility rule, GQA mapping, scale and
// "a row with no visible key gives zeros" convention.
// Conventions: row-major contiguous device pointers, bf16 = __nv_bfloat16 tensors, fp32 scores,
// softmax statistics and accumulators, every output written (=) and rounded to bf16 once, every sum
// in a fixed order (results are bit-identical from run to run and do not depend on the grid; the
// backward uses no atomics).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace graft::cuda {

// ops::AttentionMask with its segment ids on the device. Key j is visible to query t iff
//   !(causal && k_pos[j] > q_pos[t]) && !(sliding_window > 0 && q_pos[t] − k_pos[j] >= sliding_window)
//   && !(chunk_size > 0 && q_pos[t] / chunk_size != k_pos[j] / chunk_size)
//   && !(q_segments && q_segments[t] != k_segments[j])          (positions as int64, C++ division)
struct AttentionMaskDev {
  bool causal = true;
  int64_t sliding_window = 0;            // > 0: window in positions
  int64_t chunk_size = 0;                // > 0: Llama 4 chunked attention
  const int32_t* q_segments = nullptr;   // [T] packed-sample ids, or null (then k_segments must be null)
  const int32_t* k_segments = nullptr;   // [S]
};

// Sizes shared by the forward and the backward. Query head h reads kv head h / (Hq / Hkv).
// T >= 0 queries, S >= 0 keys (prefill with a cache: S >= T, positions say who sees whom),
// Hq % Hkv == 0, 1 <= D, Dv <= kAttentionMaxHeadDim (Dv may differ from D: MLA 192/128).
constexpr int64_t kAttentionMaxHeadDim = 256;
struct AttentionDims {
  int64_t T = 0, S = 0, Hq = 0, Hkv = 0, D = 0, Dv = 0;
};

// Which kernels run. Auto: tensor cores when D == Dv in {64, 80, 96, 128} and the bf16 tensors are
// 16-byte aligned (P, and in the backward dS, rounded to bf16 as the tensor-core operands, as in
// flash-attention 2), else CUDA cores (fp32 P and dS, any D, Dv <= 256). TensorCores throws when
// the call does not qualify.
enum class AttentionPath { Auto, CudaCores, TensorCores };

// out[t, h] = Σ_j softmax_j(scale · q[t, h]·k[j, kv(h)] over visible j) · v[j, kv(h)] (=, bf16);
// lse[t, h] = m + log Σ_j exp(s_j − m) over the visible keys (optional, fp32, -inf for a row with
// no visible key, whose output is 0) — the backward's fast path takes it.
struct AttentionFwdDesc {
  const __nv_bfloat16* q = nullptr;   // [T, Hq, D]
  const __nv_bfloat16* k = nullptr;   // [S, Hkv, D]
  const __nv_bfloat16* v = nullptr;   // [S, Hkv, Dv]
  const int32_t* q_pos = nullptr;     // [T]
  const int32_t* k_pos = nullptr;     // [S]
  AttentionMaskDev mask;
  float scale = 0.0f;                 // usually 1/sqrt(D)
  AttentionDims dims;
  __nv_bfloat16* out = nullptr;       // [T, Hq, Dv] (=)
  float* lse = nullptr;               // [T, Hq] fp32 (=), optional
  AttentionPath path = AttentionPath::Auto;

  void validate() const;              // throws graft::Error naming the field and the fix
};
void attention_fwd(const AttentionFwdDesc& d, cudaStream_t stream);

// dq [T, Hq, D], dk [S, Hkv, D], dv [S, Hkv, Dv] (=, bf16) of the forward above given dout
// [T, Hq, Dv]; dk/dv sum over the query heads of a kv group. P is recomputed from q, k and the row
// statistics lse and delta[t, h] = Σ_c dout[t, h, c] · out[t, h, c]:
//   - fast path: the caller passes `lse` (attention_fwd's) and `out` (its bf16 output) -> one
//     small pass computes delta; the backward then costs two passes over the scores.
//   - without them (both null) a forward-like pass recomputes lse and delta from the fp32 output
//     (one extra forward's work, no bf16 rounding of out inside delta).
// Either way a row with no visible key gets zero dq and contributes nothing to dk/dv; T = 0 gives
// dk = dv = 0, S = 0 gives dq = 0.
// workspace: attention_bwd_workspace_bytes(T, Hq) bytes of device memory (fp32 lse + delta rows),
// 16-byte aligned, owned by the caller, not used after the call's kernels finish on `stream`.
size_t attention_bwd_workspace_bytes(int64_t T, int64_t Hq);
struct AttentionBwdDesc {
  const __nv_bfloat16* q = nullptr;     // [T, Hq, D]
  const __nv_bfloat16* k = nullptr;     // [S, Hkv, D]
  const __nv_bfloat16* v = nullptr;     // [S, Hkv, Dv]
  const __nv_bfloat16* dout = nullptr;  // [T, Hq, Dv]
  const int32_t* q_pos = nullptr;       // [T]
  const int32_t* k_pos = nullptr;       // [S]
  AttentionMaskDev mask;
  float scale = 0.0f;
  AttentionDims dims;
  const float* lse = nullptr;           // [T, Hq] from attention_fwd, or null (fast path: with out)
  const __nv_bfloat16* out = nullptr;   // [T, Hq, Dv] from attention_fwd, or null (fast path: with lse)
  __nv_bfloat16* dq = nullptr;          // [T, Hq, D] (=)
  __nv_bfloat16* dk = nullptr;          // [S, Hkv, D] (=)
  __nv_bfloat16* dv = nullptr;          // [S, Hkv, Dv] (=)
  void* workspace = nullptr;            // attention_bwd_workspace_bytes(T, Hq) bytes
  size_t workspace_bytes = 0;
  AttentionPath path = AttentionPath::Auto;  // passes 2-3 (dk/dv, dq); pass 1 always on CUDA cores

  void validate() const;
};
void attention_bwd(const AttentionBwdDesc& d, cudaStream_t stream);

}  // namespace graft::cuda
