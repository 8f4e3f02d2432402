// paged_decode_attention: one new query token per sequence attends to its paged KV cache (GQA).
//
// Contract (device pointers, graft/cuda/paged_attention.hpp; block-table layout there):
//   q [num_seqs, q_heads, D] bf16 (8-byte aligned), k/v pool [num_blocks, block_size, kv_heads, D]
//   bf16, block_table [num_seqs, max_blocks] i32, context_lens [num_seqs] i32 in [0, max_context_len]
//   -> out [num_seqs, q_heads, D] bf16 (=):
//        out[s, h] = Σ_{j < ctx_s} softmax_j(scale · q[s, h]·k[j, h / G]) · v[j, h / G],  G = q_heads / kv_heads
//      (the query is the last token, so every cached key is visible: causal by construction);
//      ctx_s == 0 gives zeros. f32 scores, online softmax and accumulation; out rounded to bf16.
//   workspace: paged_decode_workspace_bytes (m, l [num_seqs, q_heads, P], acc [.., P, D] f32).
// Design (flash-decoding): grid (P partitions of the context, kv_heads·G/HPB head groups, num_seqs);
//   block = 4 warps; a block serves HPB query heads sharing one kv head, so each K/V row is read
//   once per group. Warp w walks keys w, w+4, ... of its partition: lane l holds dims [l·D/32, +D/32)
//   of q (pre-scaled), of the key and of the value row (one coalesced D·2-byte read per row), the
//   HPB dot products are warp-shuffle sums, and each warp keeps its own online-softmax state
//   (m, l, acc). Warps are merged through shared memory; the partition's (m, l, acc) goes to the
//   workspace, and merge_partitions_kernel (paged_attention_common.cuh) combines the partitions.
//   The partition size (multiple of 64) is chosen from the device's SM count unless given.
// Limits: head_dim 64 or 128, q_heads % kv_heads == 0, num_seqs <= 65535, kv_heads·G/HPB <= 65535,
//   max_context_len <= max_blocks·block_size, at most 8192 partitions.
#include "paged_attention_common.cuh"
#include "launch.cuh"

namespace graft::cuda::serve {
namespace {

constexpr int kWarps = 4;

struct Params {
  const bf16_t* q;
  const bf16_t* k;
  const bf16_t* v;
  int block_size, kv_heads, group;  // group = q_heads / kv_heads
  const int32_t* block_table;
  int max_blocks;
  const int32_t* context_lens;
  int num_seqs, q_heads;
  float scale;
  int psize, parts;
  float* ws;
};

template <int DPL>
__device__ __forceinline__ void load_row(const bf16_t* p, float f[DPL]) {
  if constexpr (DPL == 2) {
    const uint32_t w = __ldg(reinterpret_cast<const uint32_t*>(p));
    f[0] = detail::lo_f(w);
    f[1] = detail::hi_f(w);
  } else {
    static_assert(DPL == 4, "head_dim 64 or 128");
    const uint2 w = __ldg(reinterpret_cast<const uint2*>(p));
    f[0] = detail::lo_f(w.x);
    f[1] = detail::hi_f(w.x);
    f[2] = detail::lo_f(w.y);
    f[3] = detail::hi_f(w.y);
  }
}

template <int D, int HPB>
__global__ void __launch_bounds__(kWarps * 32) paged_decode_kernel(const Params p) {
  constexpr int DPL = D / 32;
  const int part = blockIdx.x, hg = blockIdx.y, seq = blockIdx.z;
  const int ctx = p.context_lens[seq];
  const int k_begin = part * p.psize;
  if (k_begin >= ctx) return;
  const int k_end = min(ctx, k_begin + p.psize);
  const int h0 = hg * HPB, kvh = h0 / p.group;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

  float q[HPB][DPL], m[HPB], l[HPB], acc[HPB][DPL];
#pragma unroll
  for (int h = 0; h < HPB; ++h) {
    load_row<DPL>(p.q + (static_cast<int64_t>(seq) * p.q_heads + h0 + h) * D + lane * DPL, q[h]);
#pragma unroll
    for (int i = 0; i < DPL; ++i) {
      q[h][i] *= p.scale;
      acc[h][i] = 0.0f;
    }
    m[h] = -INFINITY;
    l[h] = 0.0f;
  }
  const int32_t* __restrict__ bt = p.block_table + static_cast<int64_t>(seq) * p.max_blocks;
  for (int j = k_begin + warp; j < k_end; j += kWarps) {
    const int64_t page = bt[j / p.block_size];
    const int64_t off = ((page * p.block_size + j % p.block_size) * p.kv_heads + kvh) * D + lane * DPL;
    float kf[DPL], vf[DPL];
    load_row<DPL>(p.k + off, kf);
    load_row<DPL>(p.v + off, vf);
#pragma unroll
    for (int h = 0; h < HPB; ++h) {
      float s = 0.0f;
#pragma unroll
      for (int i = 0; i < DPL; ++i) s = fmaf(q[h][i], kf[i], s);
      s = detail::warp_sum(s);
      const float mn = fmaxf(m[h], s);
      const float c = __expf(m[h] - mn);  // m = -inf on the first key: c = 0
      const float e = __expf(s - mn);
      l[h] = l[h] * c + e;
#pragma unroll
      for (int i = 0; i < DPL; ++i) acc[h][i] = fmaf(acc[h][i], c, e * vf[i]);
      m[h] = mn;
    }
  }

  __shared__ float sm[kWarps][HPB], sl[kWarps][HPB];
  __shared__ float sacc[kWarps][HPB][D];
#pragma unroll
  for (int h = 0; h < HPB; ++h) {
    if (lane == 0) {
      sm[warp][h] = m[h];
      sl[warp][h] = l[h];
    }
#pragma unroll
    for (int i = 0; i < DPL; ++i) sacc[warp][h][lane * DPL + i] = acc[h][i];
  }
  __syncthreads();
  const int64_t P = p.parts, HQ = p.q_heads, NS = p.num_seqs;
  for (int e = threadIdx.x; e < HPB * D; e += kWarps * 32) {
    const int h = e / D, d = e % D;
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) M = fmaxf(M, sm[w][h]);
    float L = 0.0f, A = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float f = sm[w][h] == -INFINITY ? 0.0f : __expf(sm[w][h] - M);
      L = fmaf(f, sl[w][h], L);
      A = fmaf(f, sacc[w][h][d], A);
    }
    const int64_t sh = static_cast<int64_t>(seq) * HQ + h0 + h;
    p.ws[2 * NS * HQ * P + (sh * P + part) * D + d] = A;
    if (d == 0) {
      p.ws[sh * P + part] = M;
      p.ws[NS * HQ * P + sh * P + part] = L;
    }
  }
}

int heads_per_block(int group) {
  for (int h : {8, 4, 2}) if (group % h == 0) return h;
  return 1;
}

template <int D>
void launch_d(const Params& p, int hpb, dim3 grid, cudaStream_t st) {
  switch (hpb) {
    case 8: GRAFT_LAUNCH(grid, kWarps * 32, 0, st, paged_decode_kernel<D, 8>)(p); break;
    case 4: GRAFT_LAUNCH(grid, kWarps * 32, 0, st, paged_decode_kernel<D, 4>)(p); break;
    case 2: GRAFT_LAUNCH(grid, kWarps * 32, 0, st, paged_decode_kernel<D, 2>)(p); break;
    default: GRAFT_LAUNCH(grid, kWarps * 32, 0, st, paged_decode_kernel<D, 1>)(p); break;
  }
}

}  // namespace

void PagedDecodeDesc::validate() const {
  GRAFT_CHECK(cache.head_dim == 64 || cache.head_dim == 128, "paged_decode_attention: head_dim = {} must be 64 or 128",
              cache.head_dim);
  GRAFT_CHECK(cache.kv_heads >= 1 && q_heads >= 1 && q_heads % cache.kv_heads == 0,
              "paged_decode_attention: q_heads = {} must be a positive multiple of kv_heads = {}", q_heads, cache.kv_heads);
  GRAFT_CHECK(cache.block_size >= 1 && cache.num_blocks >= 1 && max_blocks >= 1,
              "paged_decode_attention: block_size = {}, num_blocks = {}, max_blocks = {} must be >= 1", cache.block_size,
              cache.num_blocks, max_blocks);
  GRAFT_CHECK(num_seqs >= 0 && num_seqs <= 65535, "paged_decode_attention: num_seqs = {} outside [0, 65535]", num_seqs);
  GRAFT_CHECK(max_context_len >= 0 && static_cast<int64_t>(max_context_len) <= static_cast<int64_t>(max_blocks) * cache.block_size,
              "paged_decode_attention: max_context_len = {} must be in [0, max_blocks·block_size = {}]", max_context_len,
              static_cast<int64_t>(max_blocks) * cache.block_size);
  GRAFT_CHECK(partition_size >= 0, "paged_decode_attention: partition_size = {} must be >= 0", partition_size);
  GRAFT_CHECK(scale > 0.0f, "paged_decode_attention: scale must be positive");
  if (num_seqs == 0) return;
  GRAFT_CHECK(q && cache.k && cache.v && block_table && context_lens && out && workspace,
              "paged_decode_attention: q / k / v / block_table / context_lens / out / workspace must not be null");
  GRAFT_CHECK(detail::host_aligned(q, 8) && detail::host_aligned(cache.k, 8) && detail::host_aligned(cache.v, 8),
              "paged_decode_attention: q, k and v must be 8-byte aligned");
  GRAFT_CHECK(detail::host_aligned(workspace, 4), "paged_decode_attention: workspace must be 4-byte aligned");
}

int paged_decode_partition_size(const PagedDecodeDesc& d) {
  const int group = d.q_heads / std::max(1, d.cache.kv_heads);
  const int64_t blocks = static_cast<int64_t>(d.num_seqs) * d.cache.kv_heads * (group / heads_per_block(std::max(1, group)));
  return detail::resolve_partition_size(d.partition_size, d.max_context_len, blocks);
}

size_t paged_decode_workspace_bytes(const PagedDecodeDesc& d) {
  const int ps = paged_decode_partition_size(d);
  return detail::partial_workspace_bytes(d.num_seqs, d.q_heads, detail::num_partitions(d.max_context_len, ps),
                                         d.cache.head_dim);
}

void paged_decode_attention(const PagedDecodeDesc& d, cudaStream_t stream) {
  d.validate();
  if (d.num_seqs == 0) return;
  Params p{};
  p.q = d.q;
  p.k = d.cache.k;
  p.v = d.cache.v;
  p.block_size = d.cache.block_size;
  p.kv_heads = d.cache.kv_heads;
  p.group = d.q_heads / d.cache.kv_heads;
  p.block_table = d.block_table;
  p.max_blocks = d.max_blocks;
  p.context_lens = d.context_lens;
  p.num_seqs = d.num_seqs;
  p.q_heads = d.q_heads;
  p.scale = d.scale;
  p.psize = paged_decode_partition_size(d);
  p.parts = detail::num_partitions(d.max_context_len, p.psize);
  p.ws = d.workspace;
  const int hpb = heads_per_block(p.group);
  const int64_t head_groups = static_cast<int64_t>(d.q_heads) / hpb;
  GRAFT_CHECK(head_groups <= 65535, "paged_decode_attention: {} head groups exceed the grid limit", head_groups);
  const dim3 grid(static_cast<unsigned>(p.parts), static_cast<unsigned>(head_groups), static_cast<unsigned>(d.num_seqs));
  if (d.cache.head_dim == 64) launch_d<64>(p, hpb, grid, stream);
  else launch_d<128>(p, hpb, grid, stream);
  GRAFT_CUDA_CHECK_LAUNCH();
  detail::launch_merge(d.workspace, d.context_lens, d.num_seqs, d.q_heads, p.parts, p.psize, d.cache.head_dim, d.out,
                       stream);
}

}  // namespace graft::cuda::serve
