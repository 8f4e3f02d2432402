// paged_mla_decode: DeepSeek multi-head latent attention, one new token per sequence, absorbed
// form over a paged latent cache (the math of kernels/cpu/mla_attention.cpp).
//
// Contract (device pointers, graft/cuda/paged_attention.hpp):
//   q_abs [num_seqs, H, L] bf16 = q_nope·W_UK per head (16-byte aligned), q_pe [num_seqs, H, dr] bf16
//   (RoPE applied; 4-byte aligned); latent cache rows c at c_cache + (page·block_size + i)·c_stride
//   [L] bf16 (16-byte aligned rows: c_stride % 8 == 0), k_pe rows at pe_cache + (...)·pe_stride [dr]
//   bf16 (pe_stride even); block_table [num_seqs, max_blocks], context_lens [num_seqs]
//   -> out [num_seqs, H, L] bf16 (=): out[s, h] = Σ_{j < ctx} softmax_j(scale·(q_abs·c_j + q_pe·k_pe_j))·c_j
//      (the latent context; the caller multiplies by W_UV). ctx == 0 gives zeros. f32 math.
//   workspace: paged_mla_decode_workspace_bytes (m, l [num_seqs, H, P], acc [.., P, L] f32).
// Design: like paged_decode_attention with one kv head shared by all H heads: grid (P partitions,
//   H / HPB head groups, num_seqs), 4 warps per block, warp-per-key online softmax; lane l holds
//   latent dims [l·L/32, +L/32) (two 16-byte loads per row at L = 512) and rope dims [l·dr/32, +dr/32)
//   of q (pre-scaled, in registers), of the cache row and of its f32 accumulators. HPB = 4 heads per
//   block (the latent row is read H/4 times, from L2 after the first); partitions merged by
//   merge_partitions_kernel (paged_attention_common.cuh).
// Limits: L in {256, 512}, dr == 64, num_seqs <= 65535, max_context_len <= max_blocks·block_size,
//   at most 8192 partitions.
#include "paged_attention_common.cuh"
#include "launch.cuh"

namespace graft::cuda::serve {
namespace {

constexpr int kWarps = 4;

struct Params {
  const bf16_t* q_abs;
  const bf16_t* q_pe;
  const bf16_t* c;
  int64_t c_stride;
  const bf16_t* pe;
  int64_t pe_stride;
  int block_size;
  const int32_t* block_table;
  int max_blocks;
  const int32_t* context_lens;
  int num_seqs, heads;
  float scale;
  int psize, parts;
  float* ws;
};

template <int N>  // N = 8 or 16 bf16 at p (16-byte aligned)
__device__ __forceinline__ void load_lat(const bf16_t* p, float f[N]) {
#pragma unroll
  for (int i = 0; i < N / 8; ++i) detail::unpack8(__ldg(reinterpret_cast<const uint4*>(p) + i), f + 8 * i);
}
__device__ __forceinline__ void load_pe2(const bf16_t* p, float f[2]) {
  const uint32_t w = __ldg(reinterpret_cast<const uint32_t*>(p));
  f[0] = detail::lo_f(w);
  f[1] = detail::hi_f(w);
}

template <int LPL, int HPB>  // LPL = L / 32 latent dims per lane; dr = 64 (2 per lane)
__global__ void __launch_bounds__(kWarps * 32) paged_mla_decode_kernel(const Params p) {
  constexpr int L = 32 * LPL, RPL = 2, DR = 64;
  const int part = blockIdx.x, hg = blockIdx.y, seq = blockIdx.z;
  const int ctx = p.context_lens[seq];
  const int k_begin = part * p.psize;
  if (k_begin >= ctx) return;
  const int k_end = min(ctx, k_begin + p.psize);
  const int h0 = hg * HPB;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

  float qa[HPB][LPL], qp[HPB][RPL], m[HPB], l[HPB], acc[HPB][LPL];
#pragma unroll
  for (int h = 0; h < HPB; ++h) {
    const int64_t sh = static_cast<int64_t>(seq) * p.heads + h0 + h;
    load_lat<LPL>(p.q_abs + sh * L + lane * LPL, qa[h]);
    load_pe2(p.q_pe + sh * DR + lane * RPL, qp[h]);
#pragma unroll
    for (int i = 0; i < LPL; ++i) {
      qa[h][i] *= p.scale;
      acc[h][i] = 0.0f;
    }
    qp[h][0] *= p.scale;
    qp[h][1] *= p.scale;
    m[h] = -INFINITY;
    l[h] = 0.0f;
  }
  const int32_t* __restrict__ bt = p.block_table + static_cast<int64_t>(seq) * p.max_blocks;
  for (int j = k_begin + warp; j < k_end; j += kWarps) {
    const int64_t slot = static_cast<int64_t>(bt[j / p.block_size]) * p.block_size + j % p.block_size;
    float cf[LPL], pf[RPL];
    load_lat<LPL>(p.c + slot * p.c_stride + lane * LPL, cf);
    load_pe2(p.pe + slot * p.pe_stride + lane * RPL, pf);
#pragma unroll
    for (int h = 0; h < HPB; ++h) {
      float s = qp[h][0] * pf[0];
      s = fmaf(qp[h][1], pf[1], s);
#pragma unroll
      for (int i = 0; i < LPL; ++i) s = fmaf(qa[h][i], cf[i], s);
      s = detail::warp_sum(s);
      const float mn = fmaxf(m[h], s);
      const float c = __expf(m[h] - mn);
      const float e = __expf(s - mn);
      l[h] = l[h] * c + e;
#pragma unroll
      for (int i = 0; i < LPL; ++i) acc[h][i] = fmaf(acc[h][i], c, e * cf[i]);
      m[h] = mn;
    }
  }

  __shared__ float sm[kWarps][HPB], sl[kWarps][HPB];
  __shared__ float sacc[kWarps][HPB][L];
#pragma unroll
  for (int h = 0; h < HPB; ++h) {
    if (lane == 0) {
      sm[warp][h] = m[h];
      sl[warp][h] = l[h];
    }
#pragma unroll
    for (int i = 0; i < LPL; ++i) sacc[warp][h][lane * LPL + i] = acc[h][i];
  }
  __syncthreads();
  const int64_t P = p.parts, H = p.heads, NS = p.num_seqs;
  for (int e = threadIdx.x; e < HPB * L; e += kWarps * 32) {
    const int h = e / L, d = e % L;
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) M = fmaxf(M, sm[w][h]);
    float Ls = 0.0f, A = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float f = sm[w][h] == -INFINITY ? 0.0f : __expf(sm[w][h] - M);
      Ls = fmaf(f, sl[w][h], Ls);
      A = fmaf(f, sacc[w][h][d], A);
    }
    const int64_t sh = static_cast<int64_t>(seq) * H + h0 + h;
    p.ws[2 * NS * H * P + (sh * P + part) * L + d] = A;
    if (d == 0) {
      p.ws[sh * P + part] = M;
      p.ws[NS * H * P + sh * P + part] = Ls;
    }
  }
}

int heads_per_block(int heads) { return heads % 4 == 0 ? 4 : (heads % 2 == 0 ? 2 : 1); }

template <int LPL>
void launch_l(const Params& p, int hpb, dim3 grid, cudaStream_t st) {
  switch (hpb) {
    case 4: GRAFT_LAUNCH(grid, kWarps * 32, 0, st, paged_mla_decode_kernel<LPL, 4>)(p); break;
    case 2: GRAFT_LAUNCH(grid, kWarps * 32, 0, st, paged_mla_decode_kernel<LPL, 2>)(p); break;
    default: GRAFT_LAUNCH(grid, kWarps * 32, 0, st, paged_mla_decode_kernel<LPL, 1>)(p); break;
  }
}

}  // namespace

void PagedMlaDecodeDesc::validate() const {
  GRAFT_CHECK(kv_lora_rank == 256 || kv_lora_rank == 512, "paged_mla_decode: kv_lora_rank = {} must be 256 or 512",
              kv_lora_rank);
  GRAFT_CHECK(rope_dim == 64, "paged_mla_decode: rope_dim = {} must be 64", rope_dim);
  GRAFT_CHECK(c_stride >= kv_lora_rank && c_stride % 8 == 0,
              "paged_mla_decode: c_stride = {} must be >= kv_lora_rank and a multiple of 8", c_stride);
  GRAFT_CHECK(pe_stride >= rope_dim && pe_stride % 2 == 0, "paged_mla_decode: pe_stride = {} must be >= rope_dim and even",
              pe_stride);
  GRAFT_CHECK(heads >= 1 && heads <= 65535, "paged_mla_decode: heads = {} outside [1, 65535]", heads);
  GRAFT_CHECK(block_size >= 1 && num_blocks >= 1 && max_blocks >= 1,
              "paged_mla_decode: block_size = {}, num_blocks = {}, max_blocks = {} must be >= 1", block_size, num_blocks,
              max_blocks);
  GRAFT_CHECK(num_seqs >= 0 && num_seqs <= 65535, "paged_mla_decode: num_seqs = {} outside [0, 65535]", num_seqs);
  GRAFT_CHECK(max_context_len >= 0 && static_cast<int64_t>(max_context_len) <= static_cast<int64_t>(max_blocks) * block_size,
              "paged_mla_decode: max_context_len = {} must be in [0, max_blocks·block_size = {}]", max_context_len,
              static_cast<int64_t>(max_blocks) * block_size);
  GRAFT_CHECK(partition_size >= 0, "paged_mla_decode: partition_size = {} must be >= 0", partition_size);
  GRAFT_CHECK(scale > 0.0f, "paged_mla_decode: scale must be positive");
  if (num_seqs == 0) return;
  GRAFT_CHECK(q_abs && q_pe && c_cache && pe_cache && block_table && context_lens && out && workspace,
              "paged_mla_decode: q_abs / q_pe / c_cache / pe_cache / block_table / context_lens / out / workspace must not be null");
  GRAFT_CHECK(detail::host_aligned(q_abs, 16) && detail::host_aligned(c_cache, 16),
              "paged_mla_decode: q_abs and c_cache must be 16-byte aligned");
  GRAFT_CHECK(detail::host_aligned(q_pe, 4) && detail::host_aligned(pe_cache, 4),
              "paged_mla_decode: q_pe and pe_cache must be 4-byte aligned");
}

int paged_mla_decode_partition_size(const PagedMlaDecodeDesc& d) {
  const int64_t blocks = static_cast<int64_t>(d.num_seqs) * (d.heads / heads_per_block(std::max(1, d.heads)));
  return detail::resolve_partition_size(d.partition_size, d.max_context_len, blocks);
}

size_t paged_mla_decode_workspace_bytes(const PagedMlaDecodeDesc& d) {
  const int ps = paged_mla_decode_partition_size(d);
  return detail::partial_workspace_bytes(d.num_seqs, d.heads, detail::num_partitions(d.max_context_len, ps),
                                         d.kv_lora_rank);
}

void paged_mla_decode(const PagedMlaDecodeDesc& d, cudaStream_t stream) {
  d.validate();
  if (d.num_seqs == 0) return;
  Params p{};
  p.q_abs = d.q_abs;
  p.q_pe = d.q_pe;
  p.c = d.c_cache;
  p.c_stride = d.c_stride;
  p.pe = d.pe_cache;
  p.pe_stride = d.pe_stride;
  p.block_size = d.block_size;
  p.block_table = d.block_table;
  p.max_blocks = d.max_blocks;
  p.context_lens = d.context_lens;
  p.num_seqs = d.num_seqs;
  p.heads = d.heads;
  p.scale = d.scale;
  p.psize = paged_mla_decode_partition_size(d);
  p.parts = detail::num_partitions(d.max_context_len, p.psize);
  p.ws = d.workspace;
  const int hpb = heads_per_block(d.heads);
  const dim3 grid(static_cast<unsigned>(p.parts), static_cast<unsigned>(d.heads / hpb),
                  static_cast<unsigned>(d.num_seqs));
  if (d.kv_lora_rank == 512) launch_l<16>(p, hpb, grid, stream);
  else launch_l<8>(p, hpb, grid, stream);
  GRAFT_CUDA_CHECK_LAUNCH();
  detail::launch_merge(d.workspace, d.context_lens, d.num_seqs, d.heads, p.parts, p.psize, d.kv_lora_rank, d.out,
                       stream);
}

}  // namespace graft::cuda::serve
