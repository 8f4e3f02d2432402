// CUDA multi-LoRA serving kernels: the per-batch adapter plan, SGMV shrink/expand (rows grouped by
// adapter, tensor cores), BGMV shrink/expand (one adapter index per row, CUDA cores) and the
// MoE-LoRA virtual-expert keys. CPU oracle: graft/cpu/serve_ref.hpp. Contracts: docs/kernels.md
// ("CUDA serving kernels") and the comment at the top of each .cu file.
//
// The LoRA delta of one linear layer, for every row t whose key (adapter slot, or virtual expert)
// is k >= 0, and every slice i (a fused projection: q/k/v, gate/up) that key adapts:
//
//   v[s, i, t, j]      (=)  Σ_{kk in split s} x[t, kk] · A_{k,i}[j, kk]                 (shrink, f32)
//   y[t, off_i + n]    (+=) Σ_j op(scale_{k,i} · Σ_s v[s, i, t, j]) · B_{k,i}[n, j]     (expand, bf16 out)
//
// op = round to bf16 in SGMV (tensor-core operand, like PEFT's bf16 lora_B(lora_A(x))), identity
// (f32) in BGMV. A_{k,i} [rank, K] and B_{k,i} [N_i, rank] are bf16 row-major (PEFT lora_A.weight /
// lora_B.weight) reached through per-(key, slice) DEVICE pointers, so adapters can live anywhere
// (paged adapter memory, separate allocations). Ranks 1..256 mix in one batch; nothing is padded
// to the max rank (blocks for rank columns past an adapter's rank exit at once). Rows with key -1
// (no adapter, or padding rows of a captured batch) and slices with rank 0 are left untouched.
//
// Every launch reads its metadata (keys, plan, table) on the device only: grids are sized from the
// host-known capacities in LoraBatchDims, never from metadata values, so a decode step can be
// captured in a CUDA graph once and replayed after the metadata buffers are rewritten in place.
// bf16 tensors are passed as their 16-bit patterns (bf16_t).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace graft::cuda::serve {

using bf16_t = uint16_t;  // bfloat16 bits

inline constexpr int kMaxSlices = 4;        // fused projections per launch (q/k/v, gate/up)
inline constexpr int kMaxLoraRank = 256;
inline constexpr int kSgmvTileM = 32;       // row tile of the SGMV kernels (LoraPlan::tile_offsets)
inline constexpr int kMaxPlanKeys = 1 << 20;

// Per-(key, slice) adapter factors: DEVICE arrays of num_keys * num_slices entries, entry
// key * num_slices + slice. Updating them in place between CUDA-graph replays is allowed.
struct LoraTable {
  const bf16_t* const* a = nullptr;  // A [rank, K] bf16 row-major (16-byte aligned for the fast path;
                                     // misaligned pointers take a scalar path), null = not adapted
  const bf16_t* const* b = nullptr;  // B [N_slice, rank] bf16 row-major, null = not adapted
  const int32_t* rank = nullptr;     // in [0, max_rank]; 0 or > max_rank = slice not adapted
  const float* scale = nullptr;      // lora_alpha / r (or rsLoRA's alpha / sqrt(r))
  int num_keys = 0;                  // adapter slots (or slots * E virtual experts for MoE-LoRA)
};

// One output slice of a (possibly fused) projection: columns [y_offset, y_offset + n) of y.
struct LoraSlice {
  int64_t n = 0;         // output features of the slice; even
  int64_t y_offset = 0;  // first column in y; even
};

// Host-known capacities shared by the four LoRA ops; they size the grids and v, so they must stay
// fixed for a captured graph. v layout: [splits, num_slices, T, max_rank] f32, row t = ORIGINAL row
// (not the sorted position), so an SGMV shrink can feed a BGMV expand and vice versa.
struct LoraBatchDims {
  int64_t T = 0;        // rows (tokens; permuted rows for MoE-LoRA)
  int64_t K = 0;        // input features, shared by every slice; multiple of 8
  int num_slices = 1;   // 1..kMaxSlices
  LoraSlice slices[kMaxSlices];
  int max_rank = 0;     // bound on every rank in the table, 1..kMaxLoraRank: v's row length
  int splits = 1;       // K partitions of the shrink (split-K); v holds one partial per split
  size_t v_elems() const {
    return static_cast<size_t>(splits) * static_cast<size_t>(num_slices) * static_cast<size_t>(T) *
           static_cast<size_t>(max_rank);
  }
  void validate(const char* who, bool need_slices) const;
};

// Split-K factor for the shrink, chosen from the device's SM count (device_info) so that few rows
// still fill the GPU: about 2 blocks per SM, each split covering at least 256 features.
// Pass the same value to the shrink and the expand (it is part of v's layout).
int lora_shrink_splits(int64_t T, int64_t K, int num_slices, int num_keys);

// ---------------------------------------------------------------- plan (lora_plan.cu)
// Rows grouped by key: the segments the SGMV kernels run over (vLLM's token_indices_sorted_by_lora_ids /
// num_tokens_per_lora / lora_token_start_loc, Punica's seg_indptr).
struct LoraPlan {
  int32_t* sorted_rows = nullptr;   // [n] rows of key 0, then key 1, ..., then rows without a key;
                                    // the order WITHIN a key is unspecified (atomics); no result depends on it
  int32_t* counts = nullptr;        // [num_keys + 1] rows per key; [num_keys] = rows without a key
  int32_t* offsets = nullptr;       // [num_keys + 2] exclusive prefix sum of counts; [num_keys + 1] = n
  int32_t* tile_offsets = nullptr;  // [num_keys + 1] exclusive prefix sum of ceil(counts[k] / kSgmvTileM)
  int32_t* cursor = nullptr;        // [num_keys + 1] scratch
};
struct LoraPlanDesc {
  const int32_t* keys = nullptr;  // [n] key per row in [-1, num_keys); anything else = no adapter
  int64_t n = 0;
  int num_keys = 0;
  LoraPlan plan;
  void validate() const;
};
// memset + 3 kernels (histogram, one-block scan, scatter); no host synchronisation.
void lora_plan(const LoraPlanDesc& d, cudaStream_t stream);

// Read-only view of a plan, as the SGMV kernels consume it.
struct LoraPlanView {
  const int32_t* sorted_rows = nullptr;   // [T]
  const int32_t* offsets = nullptr;       // [num_keys + 2]
  const int32_t* tile_offsets = nullptr;  // [num_keys + 1]
};
// Upper bound on Σ_k ceil(counts[k] / kSgmvTileM): the grid height of the SGMV kernels.
int64_t sgmv_max_row_tiles(int64_t T, int num_keys);

// ---------------------------------------------------------------- SGMV (sgmv_shrink.cu, sgmv_expand.cu)
struct SgmvShrinkDesc {
  LoraBatchDims dims;
  LoraTable table;
  LoraPlanView plan;
  const bf16_t* x = nullptr;  // [T, ldx] bf16, 16-byte aligned, ldx % 8 == 0
  int64_t ldx = 0;            // 0 = K
  float* v = nullptr;         // [splits, num_slices, T, max_rank] f32 (=) for adapted (row, slice) only
  void validate() const;
};
void sgmv_shrink(const SgmvShrinkDesc& d, cudaStream_t stream);

struct SgmvExpandDesc {
  LoraBatchDims dims;
  LoraTable table;
  LoraPlanView plan;
  const float* v = nullptr;  // as written by a shrink with the same dims
  bf16_t* y = nullptr;       // [T, ldy] bf16 (+=), 4-byte aligned, ldy even
  int64_t ldy = 0;           // 0 = max(y_offset + n) over slices
  void validate() const;
};
void sgmv_expand(const SgmvExpandDesc& d, cudaStream_t stream);

// ---------------------------------------------------------------- BGMV (bgmv_shrink.cu, bgmv_expand.cu)
struct BgmvShrinkDesc {
  LoraBatchDims dims;
  LoraTable table;
  const int32_t* row_key = nullptr;  // [T] key per row, -1 = none (no plan needed)
  const bf16_t* x = nullptr;
  int64_t ldx = 0;
  float* v = nullptr;
  void validate() const;
};
void bgmv_shrink(const BgmvShrinkDesc& d, cudaStream_t stream);

struct BgmvExpandDesc {
  LoraBatchDims dims;
  LoraTable table;
  const int32_t* row_key = nullptr;
  const float* v = nullptr;
  bf16_t* y = nullptr;
  int64_t ldy = 0;
  void validate() const;
};
void bgmv_expand(const BgmvExpandDesc& d, cudaStream_t stream);

// ---------------------------------------------------------------- MoE-LoRA keys (moe_lora_keys.cu)
// keys[p] (=) token_slot[t]·E + expert_ids[f] for permuted row p (f = order[p], t = f / k), or -1
// when the token has no adapter (slot < 0 or >= num_slots) or the expert id is out of range.
// `order` is the MoE plan's (graft::cuda::moe::Plan::order, = cpu::moe_permute_plan), so the LoRA
// plan built on these keys groups the permuted rows by (adapter slot, expert): every customer's
// per-expert adapters then run in ONE SGMV launch over xp / yp, with a LoraTable of
// num_slots·E keys (entry (slot·E + e)·num_slices + slice).
struct MoeLoraKeysDesc {
  const int32_t* order = nullptr;       // [n] permuted row -> flat index t*k + j
  const int32_t* expert_ids = nullptr;  // [n] router output, flat [T, k]
  const int32_t* token_slot = nullptr;  // [T] adapter slot per token, -1 = none
  int64_t T = 0;
  int k = 0;
  int E = 0;
  int num_slots = 0;
  int32_t* keys = nullptr;  // [n = T·k] (=)
  void validate() const;
};
void moe_lora_keys(const MoeLoraKeysDesc& d, cudaStream_t stream);

}  // namespace graft::cuda::serve
