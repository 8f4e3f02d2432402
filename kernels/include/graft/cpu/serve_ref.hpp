// CPU references (the oracle) of the serving kernels: multi-LoRA over a batch with one adapter key
// per row (SGMV / BGMV semantics, fused slices, mixed ranks, rows without adapter), the per-batch
// plan (rows grouped by key), the MoE-LoRA virtual-expert keys, and paged attention (decode,
// MLA-latent decode, prefill) over block tables. Host f32 arrays, row-major, contiguous unless a
// leading dimension is given. Dot products accumulate in double. Shapes are checked (graft::Error).
//
// Block-table layout (identical to graft/cuda/paged_attention.hpp):
//   K/V pool     [num_blocks, block_size, kv_heads, head_dim] per layer
//   block_table  [num_seqs, max_blocks] i32; token position i of sequence s is in page
//                block_table[s, i / block_size], slot i % block_size
//   context_lens [num_seqs] i32: tokens in the cache including the ones being processed now
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace graft::cpu::serve {

// ---------------------------------------------------------------- multi-LoRA
// Factors of one (key, slice): A [rank, K], B [N_slice, rank] (PEFT lora_A / lora_B), scale.
// rank 0 (or null pointers) = the key does not adapt that slice.
struct LoraFactorsRef {
  const float* a = nullptr;
  const float* b = nullptr;
  int rank = 0;
  float scale = 1.0f;
};
// Output columns [y_offset, y_offset + n) of y belong to the slice.
struct LoraSliceRef {
  int64_t n = 0;
  int64_t y_offset = 0;
};

// y[t, off_i + n] += Σ_j op(scale · Σ_k x[t, k]·A[j, k]) · B[n, j]
// for every row t with row_key[t] in [0, num_keys) and every slice i with table[key·ns + i].rank > 0.
// op = identity, or round-to-bf16 when bf16_intermediate (what sgmv_expand feeds its tensor cores).
// x [T, ldx], y [T, ldy] (+=); table [num_keys · num_slices]. Other rows / columns are untouched.
void multi_lora_acc(const float* x, int64_t T, int64_t K, int64_t ldx, std::span<const int32_t> row_key,
                    int num_keys, std::span<const LoraFactorsRef> table, std::span<const LoraSliceRef> slices, float* y,
                    int64_t ldy, bool bf16_intermediate = false);

// v[i, t, j] (=) Σ_k x[t, k]·A_{key(t), i}[j, k] (unscaled) for adapted rows and j < rank; other
// entries untouched. v [num_slices, T, ldv].
void lora_shrink(const float* x, int64_t T, int64_t K, int64_t ldx, std::span<const int32_t> row_key, int num_keys,
                 std::span<const LoraFactorsRef> table, int num_slices, int64_t ldv, float* v);

// Rows grouped by key, STABLE (ascending row inside a key); rows whose key is outside [0, num_keys)
// form the last bucket. counts [num_keys + 1], offsets [num_keys + 2], tile_offsets [num_keys + 1]
// (prefix sum of ceil(counts[k] / tile_m) over the real keys) — the contract of cuda::serve::lora_plan,
// whose within-key order may differ.
struct LoraPlanRef {
  std::vector<int32_t> sorted_rows, counts, offsets, tile_offsets;
};
LoraPlanRef lora_plan(std::span<const int32_t> keys, int num_keys, int tile_m);

// MoE-LoRA virtual experts: keys[p] = token_slot[t]·E + expert_ids[f] for permuted row p
// (f = order[p], t = f / k), -1 when the slot is outside [0, num_slots) or the expert outside [0, E).
std::vector<int32_t> moe_lora_keys(std::span<const int32_t> order, std::span<const int32_t> expert_ids,
                                   std::span<const int32_t> token_slot, int k, int E, int num_slots);

// ---------------------------------------------------------------- paged attention
struct PagedKvRef {
  const float* k = nullptr;  // [num_blocks, block_size, kv_heads, head_dim]
  const float* v = nullptr;
  int64_t num_blocks = 0;
  int block_size = 0;
  int kv_heads = 0;
  int head_dim = 0;
};

// out[s, h] (=) softmax over j < context_lens[s] of scale·q[s, h]·k[j, h / (Hq/Hkv)], times v.
// q, out [num_seqs, q_heads, head_dim]. context_len 0 -> zeros.
void paged_decode_attention(const float* q, int num_seqs, int q_heads, const PagedKvRef& cache,
                            std::span<const int32_t> block_table, int max_blocks, std::span<const int32_t> context_lens,
                            float scale, float* out);

// New tokens of sequence s are rows query_start[s] .. query_start[s+1]-1 of q [Tq, q_heads, head_dim];
// row i of s has position context_lens[s] - q_len + i and sees keys 0..position. out like q (=).
void paged_prefill_attention(const float* q, std::span<const int32_t> query_start, int q_heads,
                             const PagedKvRef& cache, std::span<const int32_t> block_table, int max_blocks,
                             std::span<const int32_t> context_lens, float scale, float* out);

// MLA absorbed decode over a paged latent cache: out[s, h] (=) Σ_j softmax_j(scale·(q_abs·c_j +
// q_pe·pe_j))·c_j. q_abs [num_seqs, heads, L], q_pe [num_seqs, heads, dr], out [num_seqs, heads, L];
// latent row of slot (page, i) at c_cache + (page·block_size + i)·c_stride, rope key at
// pe_cache + (...)·pe_stride.
void paged_mla_decode(const float* q_abs, const float* q_pe, int num_seqs, int heads, int L, int dr,
                      const float* c_cache, int64_t c_stride, const float* pe_cache, int64_t pe_stride,
                      int64_t num_blocks, int block_size, std::span<const int32_t> block_table, int max_blocks,
                      std::span<const int32_t> context_lens, float scale, float* out);

}  // namespace graft::cpu::serve
