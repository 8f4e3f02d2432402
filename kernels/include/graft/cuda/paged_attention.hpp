// CUDA paged attention for serving: decode (GQA, head_dim 64/128), DeepSeek MLA decode over the
// latent cache (absorbed form), and prefill of a chunk of new queries over paged KV (flash-style
// online softmax, causal). CPU oracle: graft/cpu/serve_ref.hpp. Contracts: the top of each .cu and
// docs/kernels.md ("CUDA serving kernels").
//
// Block-table layout (one layer; the same for the CPU reference):
//   K/V pool     k, v [num_blocks, block_size, kv_heads, head_dim] bf16 (a "block" = page of block_size tokens)
//   block_table  [num_seqs, max_blocks] i32: token position i of sequence s lives in page
//                block_table[s, i / block_size], slot i % block_size
//   context_lens [num_seqs] i32: tokens of s in the cache, INCLUDING the ones being decoded /
//                prefilled now (their K/V are written to the cache before attention runs)
// Positions are 0..context_len-1; a query at position p sees keys 0..p (causal by construction).
// Sequences with context_len 0 (padding entries of a captured batch) produce zeros.
// Metadata is read on the device only; grids come from host capacities (num_seqs, max_context_len,
// max_query_len), so a decode step can be captured in a CUDA graph and replayed after block
// tables / context lengths are rewritten in place.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace graft::cuda::serve {

using bf16_t = uint16_t;

struct PagedKv {
  const bf16_t* k = nullptr;  // [num_blocks, block_size, kv_heads, head_dim]
  const bf16_t* v = nullptr;  // same shape
  int64_t num_blocks = 0;
  int block_size = 0;
  int kv_heads = 0;
  int head_dim = 0;           // 64 or 128
};

// ---------------------------------------------------------------- decode (paged_decode_attention.cu)
// out[s, h] (=) softmax_j(scale · q[s, h]·k[j, h / (Hq/Hkv)]) · v[j, ...] over j < context_lens[s].
// Split over the context in partitions (flash-decoding) when few (seq, kv-head) pairs would leave
// SMs idle; partials go to `workspace` and a second kernel merges them.
struct PagedDecodeDesc {
  const bf16_t* q = nullptr;            // [num_seqs, q_heads, head_dim] bf16, 8-byte aligned
  PagedKv cache;
  const int32_t* block_table = nullptr;  // [num_seqs, max_blocks]
  int max_blocks = 0;
  const int32_t* context_lens = nullptr;  // [num_seqs], each in [0, max_context_len]
  int num_seqs = 0;
  int q_heads = 0;                       // multiple of kv_heads
  float scale = 0.0f;                    // softmax scale (1/sqrt(head_dim) usually)
  int max_context_len = 0;               // host bound: sizes the partition grid
  int partition_size = 0;                // keys per partition, multiple of 64; 0 = chosen from sm_count
  float* workspace = nullptr;            // paged_decode_workspace_bytes(*this)
  bf16_t* out = nullptr;                 // [num_seqs, q_heads, head_dim] (=)
  void validate() const;
};
int paged_decode_partition_size(const PagedDecodeDesc& d);  // the resolved partition_size
size_t paged_decode_workspace_bytes(const PagedDecodeDesc& d);
void paged_decode_attention(const PagedDecodeDesc& d, cudaStream_t stream);

// ---------------------------------------------------------------- MLA decode (paged_mla_decode.cu)
// DeepSeek MLA in the absorbed form over a paged latent cache (one "kv head" shared by all heads):
//   s[h, j]      = scale · (q_abs[s, h]·c[j] + q_pe[s, h]·k_pe[j])
//   out[s, h]    (=) Σ_j softmax(s)[j] · c[j]          (the latent; the caller applies W_UV)
// with q_abs = q_nope·W_UK computed by the caller (as in cpu::mla_attention_absorbed).
// Caches: c row of token slot (page, i) at c_cache + (page·block_size + i)·c_stride, k_pe row at
// pe_cache + (page·block_size + i)·pe_stride (a vLLM-style concatenated [.., L + dr] cache is
// c_cache = base, pe_cache = base + L, both strides L + dr).
struct PagedMlaDecodeDesc {
  const bf16_t* q_abs = nullptr;   // [num_seqs, heads, L] bf16 (16-byte aligned)
  const bf16_t* q_pe = nullptr;    // [num_seqs, heads, dr] bf16 (4-byte aligned)
  const bf16_t* c_cache = nullptr;
  int64_t c_stride = 0;            // elements between token slots; multiple of 8
  const bf16_t* pe_cache = nullptr;
  int64_t pe_stride = 0;           // multiple of 2
  int64_t num_blocks = 0;
  int block_size = 0;
  int kv_lora_rank = 0;            // L: 256 or 512
  int rope_dim = 0;                // dr: 64
  const int32_t* block_table = nullptr;
  int max_blocks = 0;
  const int32_t* context_lens = nullptr;
  int num_seqs = 0;
  int heads = 0;
  float scale = 0.0f;
  int max_context_len = 0;
  int partition_size = 0;          // 0 = chosen from sm_count
  float* workspace = nullptr;      // paged_mla_decode_workspace_bytes(*this)
  bf16_t* out = nullptr;           // [num_seqs, heads, L] (=)
  void validate() const;
};
int paged_mla_decode_partition_size(const PagedMlaDecodeDesc& d);
size_t paged_mla_decode_workspace_bytes(const PagedMlaDecodeDesc& d);
void paged_mla_decode(const PagedMlaDecodeDesc& d, cudaStream_t stream);

// ---------------------------------------------------------------- prefill (paged_prefill_attention.cu)
// New tokens of sequence s are rows query_start[s] .. query_start[s+1]-1 of q; new token i has
// position context_lens[s] - q_len_s + i and sees keys 0..that position (cached prefix + the new
// chunk, whose K/V are already in the cache).
//   out[row, h] (=) Σ_j softmax_j(scale · q[row, h]·k[j]) · v[j]
struct PagedPrefillDesc {
  const bf16_t* q = nullptr;             // [Tq, q_heads, head_dim] bf16, 16-byte aligned
  int64_t Tq = 0;
  const int32_t* query_start = nullptr;  // [num_seqs + 1] device, query_start[0] = 0, non-decreasing
  PagedKv cache;                         // k, v 16-byte aligned
  const int32_t* block_table = nullptr;
  int max_blocks = 0;
  const int32_t* context_lens = nullptr;  // [num_seqs], each >= that sequence's new-token count
  int num_seqs = 0;
  int q_heads = 0;
  float scale = 0.0f;
  int max_query_len = 0;                 // host bound on new tokens per sequence: sizes the grid
  bf16_t* out = nullptr;                 // [Tq, q_heads, head_dim] (=)
  void validate() const;
};
void paged_prefill_attention(const PagedPrefillDesc& d, cudaStream_t stream);

}  // namespace graft::cuda::serve
