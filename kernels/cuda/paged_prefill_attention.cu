// paged_prefill_attention: a chunk of new query tokens per sequence attends, causally, to the
// sequence's cached prefix plus the chunk itself, all read through the block table (chunked
// prefill / prefix caching). Flash-attention style: online softmax over key tiles, tensor cores.
//
// Contract (device pointers, graft/cuda/paged_attention.hpp; block-table layout there):
//   q [Tq, q_heads, D] bf16 (16-byte aligned), D in {64, 128}; query_start [num_seqs + 1] (sequence
//   s owns rows query_start[s] .. query_start[s+1]-1, q_len_s of them); k/v pool [num_blocks,
//   block_size, kv_heads, D] bf16 (16-byte aligned); block_table [num_seqs, max_blocks];
//   context_lens [num_seqs] >= q_len_s (the new tokens' K/V are already in the cache)
//   -> out [Tq, q_heads, D] bf16 (=): new token i of s has position p = ctx_s - q_len_s + i and
//      out = Σ_{j <= p} softmax_j(scale · q·k_j)·v_j with kv head = h / (q_heads / kv_heads).
//      Scores and the softmax statistics are f32; P is rounded to bf16 as the P·V tensor-core
//      operand (as flash-attention does); O accumulates in f32 and is rounded to bf16 once.
//      A row with no visible key (q_len > ctx: contract violation) gives zeros.
// Design: block = 64 query rows of one (sequence, head), 128 threads = 4 warps, warp w owns rows
//   [16w, 16w+16). Per key tile of 64: K and V tiles gathered from the pages with 16-byte cp.async
//   (zero-fill past the last visible key), S = Q·Kᵀ (wmma m16n16k16 bf16 -> f32) into shared memory,
//   each lane pair updates one row's (m, l), writes P (bf16) and rescales that row of O (f32,
//   shared), then O += P·V (wmma, accumulators loaded from / stored to shared memory). Key tiles
//   stop at the tile's last query position (causal). Dynamic shared memory: 113 KB (D = 128) /
//   72 KB (D = 64), checked against the device's opt-in limit (device_info).
//   Grid: (ceil(max_query_len / 64), q_heads, num_seqs); blocks past a sequence's rows exit.
// Limits: q_heads % kv_heads == 0, q_heads <= 65535, num_seqs <= 65535, Tq < 2^31.
#include <mma.h>

#include "graft/cuda/paged_attention.hpp"
#include "serve_common.cuh"
#include "launch.cuh"

namespace graft::cuda::serve {
namespace {
using namespace nvcuda;

constexpr int BM = 64;  // query rows per block
constexpr int BN = 64;  // keys per tile
constexpr int kThreads = 128;

template <int D>
struct Smem {
  static constexpr int LDQ = D + 8;    // bf16 pitch of Q, K, V tiles
  static constexpr int LDSS = BN + 4;  // f32 pitch of S
  static constexpr int LDP = BN + 8;   // bf16 pitch of P
  static constexpr int LDO = D + 4;    // f32 pitch of O
  static constexpr size_t align(size_t b) { return (b + 127) / 128 * 128; }
  static constexpr size_t q_off = 0;
  static constexpr size_t k_off = q_off + align(sizeof(__nv_bfloat16) * BM * LDQ);
  static constexpr size_t v_off = k_off + align(sizeof(__nv_bfloat16) * BN * LDQ);
  static constexpr size_t s_off = v_off + align(sizeof(__nv_bfloat16) * BN * LDQ);
  static constexpr size_t p_off = s_off + align(sizeof(float) * BM * LDSS);
  static constexpr size_t o_off = p_off + align(sizeof(__nv_bfloat16) * BM * LDP);
  static constexpr size_t m_off = o_off + align(sizeof(float) * BM * LDO);
  static constexpr size_t l_off = m_off + align(sizeof(float) * BM);
  static constexpr size_t bytes = l_off + align(sizeof(float) * BM);
};

struct Params {
  const bf16_t* q;
  const int32_t* query_start;
  const bf16_t* k;
  const bf16_t* v;
  int block_size, kv_heads, group;
  const int32_t* block_table;
  int max_blocks;
  const int32_t* context_lens;
  int q_heads;
  float scale;
  bf16_t* out;
};

template <int D>
__global__ void __launch_bounds__(kThreads) paged_prefill_kernel(const Params p) {
  using S = Smem<D>;
  const int qt = blockIdx.x, h = blockIdx.y, seq = blockIdx.z;
  const int qs = p.query_start[seq], qlen = p.query_start[seq + 1] - qs;
  const int i0 = qt * BM;
  if (i0 >= qlen) return;
  const int ctx = p.context_lens[seq];
  const int pos0 = ctx - qlen;  // position of new token 0
  const int kvh = h / p.group;

  GRAFT_EXTERN_SHARED(unsigned char, smem, 128);
  __nv_bfloat16* Qs = reinterpret_cast<__nv_bfloat16*>(smem + S::q_off);
  __nv_bfloat16* Ks = reinterpret_cast<__nv_bfloat16*>(smem + S::k_off);
  __nv_bfloat16* Vs = reinterpret_cast<__nv_bfloat16*>(smem + S::v_off);
  float* Ss = reinterpret_cast<float*>(smem + S::s_off);
  __nv_bfloat16* Ps = reinterpret_cast<__nv_bfloat16*>(smem + S::p_off);
  float* Os = reinterpret_cast<float*>(smem + S::o_off);
  float* Ms = reinterpret_cast<float*>(smem + S::m_off);
  float* Ls = reinterpret_cast<float*>(smem + S::l_off);

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  constexpr int CH = D / 8;  // 16-byte chunks per row
  for (int c = tid; c < BM * CH; c += kThreads) {
    const int r = c / CH, dc = (c % CH) * 8;
    const bool ok = i0 + r < qlen;
    const bf16_t* src = ok ? p.q + (static_cast<int64_t>(qs + i0 + r) * p.q_heads + h) * D + dc : p.q;
    detail::cp_async16(Qs + r * S::LDQ + dc, src, ok);
  }
  detail::cp_async_commit();
  for (int e = tid; e < BM * D; e += kThreads) Os[(e / D) * S::LDO + e % D] = 0.0f;
  if (tid < BM) {
    Ms[tid] = -INFINITY;
    Ls[tid] = 0.0f;
  }
  const int last = min(qlen, i0 + BM) - 1;           // last valid query row of the tile
  const int kv_end = max(0, min(ctx, pos0 + last + 1));  // keys [0, kv_end) can be visible
  const int32_t* __restrict__ bt = p.block_table + static_cast<int64_t>(seq) * p.max_blocks;

  for (int kb = 0; kb < kv_end; kb += BN) {
    __syncthreads();  // the previous tile's K/V are no longer read
    for (int c = tid; c < BN * CH; c += kThreads) {
      const int r = c / CH, dc = (c % CH) * 8;
      const int j = kb + r;
      const bool ok = j < kv_end;
      int64_t off = 0;
      if (ok) off = ((static_cast<int64_t>(bt[j / p.block_size]) * p.block_size + j % p.block_size) * p.kv_heads + kvh) * D + dc;
      detail::cp_async16(Ks + r * S::LDQ + dc, p.k + off, ok);
      detail::cp_async16(Vs + r * S::LDQ + dc, p.v + off, ok);
    }
    detail::cp_async_commit();
    detail::cp_async_wait<0>();
    __syncthreads();

    // S = Q·Kᵀ for this warp's 16 rows
#pragma unroll
    for (int n = 0; n < BN / 16; ++n) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> sacc;
      wmma::fill_fragment(sacc, 0.0f);
#pragma unroll
      for (int kk = 0; kk < D; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> b;
        wmma::load_matrix_sync(a, Qs + (warp * 16) * S::LDQ + kk, S::LDQ);
        wmma::load_matrix_sync(b, Ks + (n * 16) * S::LDQ + kk, S::LDQ);
        wmma::mma_sync(sacc, a, b, sacc);
      }
      wmma::store_matrix_sync(Ss + (warp * 16) * S::LDSS + n * 16, sacc, S::LDSS, wmma::mem_row_major);
    }
    __syncwarp();

    // online softmax: lanes 2r, 2r+1 own row warp·16 + r, columns [32·half, 32·half + 32)
    {
      const int row = warp * 16 + (lane >> 1), half = lane & 1;
      const int i = i0 + row;
      const int qp = i < qlen ? pos0 + i : -1;
      float* srow = Ss + row * S::LDSS;
      float mx = -INFINITY;
      for (int c = half * 32; c < half * 32 + 32; ++c) {
        const float s = (kb + c <= qp) ? srow[c] * p.scale : -INFINITY;
        srow[c] = s;
        mx = fmaxf(mx, s);
      }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      const float m_old = Ms[row];
      const float m_new = fmaxf(m_old, mx);
      float corr = 1.0f, sum = 0.0f;
      __nv_bfloat16* prow = Ps + row * S::LDP;
      if (m_new == -INFINITY) {
        for (int c = half * 32; c < half * 32 + 32; ++c) prow[c] = __float2bfloat16_rn(0.0f);
      } else {
        corr = __expf(m_old - m_new);  // m_old = -inf: 0
        for (int c = half * 32; c < half * 32 + 32; ++c) {
          const float e = __expf(srow[c] - m_new);  // masked: exp(-inf) = 0
          prow[c] = __float2bfloat16_rn(e);
          sum += e;
        }
      }
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      float* orow = Os + row * S::LDO;
      for (int d = half * (D / 2); d < (half + 1) * (D / 2); ++d) orow[d] *= corr;
      __syncwarp();  // both lanes have read Ms[row] / Ls[row]
      if (half == 0) {
        Ms[row] = m_new;
        Ls[row] = Ls[row] * corr + sum;
      }
    }
    __syncwarp();

    // O += P·V for this warp's rows
#pragma unroll
    for (int dn = 0; dn < D / 16; ++dn) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> oacc;
      wmma::load_matrix_sync(oacc, Os + (warp * 16) * S::LDO + dn * 16, S::LDO, wmma::mem_row_major);
#pragma unroll
      for (int kk = 0; kk < BN; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> b;
        wmma::load_matrix_sync(a, Ps + (warp * 16) * S::LDP + kk, S::LDP);
        wmma::load_matrix_sync(b, Vs + kk * S::LDQ + dn * 16, S::LDQ);
        wmma::mma_sync(oacc, a, b, oacc);
      }
      wmma::store_matrix_sync(Os + (warp * 16) * S::LDO + dn * 16, oacc, S::LDO, wmma::mem_row_major);
    }
    __syncwarp();
  }
  detail::cp_async_wait<0>();  // the Q copy when no key tile ran
  __syncthreads();

  // out = O / l for this warp's rows (bf16x2 stores)
  for (int e = lane; e < 16 * (D / 2); e += 32) {
    const int rr = e / (D / 2), d = (e % (D / 2)) * 2;
    const int row = warp * 16 + rr, i = i0 + row;
    if (i >= qlen) continue;
    const float L = Ls[row];
    const float inv = L > 0.0f ? 1.0f / L : 0.0f;
    const float* orow = Os + row * S::LDO;
    *reinterpret_cast<uint32_t*>(p.out + (static_cast<int64_t>(qs + i) * p.q_heads + h) * D + d) =
        detail::pack_bf2(orow[d] * inv, orow[d + 1] * inv);
  }
}

template <int D>
void launch_d(const Params& p, dim3 grid, cudaStream_t stream) {
  constexpr size_t bytes = Smem<D>::bytes;
  const auto& dev = detail::current_device();
  GRAFT_CHECK(bytes <= dev.smem_per_block_optin,
              "paged_prefill_attention: head_dim {} needs {} bytes of shared memory per block, device {} allows {}", D,
              bytes, dev.name, dev.smem_per_block_optin);
  GRAFT_CUDA_CHECK(cudaFuncSetAttribute(paged_prefill_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(bytes)));
  GRAFT_LAUNCH(grid, kThreads, bytes, stream, paged_prefill_kernel<D>)(p);
  GRAFT_CUDA_CHECK_LAUNCH();
}

}  // namespace

void PagedPrefillDesc::validate() const {
  GRAFT_CHECK(cache.head_dim == 64 || cache.head_dim == 128, "paged_prefill_attention: head_dim = {} must be 64 or 128",
              cache.head_dim);
  GRAFT_CHECK(cache.kv_heads >= 1 && q_heads >= 1 && q_heads % cache.kv_heads == 0 && q_heads <= 65535,
              "paged_prefill_attention: q_heads = {} must be a positive multiple of kv_heads = {} (<= 65535)", q_heads,
              cache.kv_heads);
  GRAFT_CHECK(cache.block_size >= 1 && cache.num_blocks >= 1 && max_blocks >= 1,
              "paged_prefill_attention: block_size = {}, num_blocks = {}, max_blocks = {} must be >= 1",
              cache.block_size, cache.num_blocks, max_blocks);
  GRAFT_CHECK(num_seqs >= 0 && num_seqs <= 65535, "paged_prefill_attention: num_seqs = {} outside [0, 65535]", num_seqs);
  GRAFT_CHECK(Tq >= 0 && Tq < (int64_t{1} << 31), "paged_prefill_attention: Tq = {} must be in [0, 2^31)", Tq);
  GRAFT_CHECK(max_query_len >= 0 && max_query_len <= Tq,
              "paged_prefill_attention: max_query_len = {} must be in [0, Tq = {}]", max_query_len, Tq);
  GRAFT_CHECK(scale > 0.0f, "paged_prefill_attention: scale must be positive");
  if (num_seqs == 0 || Tq == 0) return;
  GRAFT_CHECK(q && query_start && cache.k && cache.v && block_table && context_lens && out,
              "paged_prefill_attention: q / query_start / k / v / block_table / context_lens / out must not be null");
  GRAFT_CHECK(detail::host_aligned(q, 16) && detail::host_aligned(cache.k, 16) && detail::host_aligned(cache.v, 16),
              "paged_prefill_attention: q, k and v must be 16-byte aligned");
  GRAFT_CHECK(detail::host_aligned(out, 4), "paged_prefill_attention: out must be 4-byte aligned");
}

void paged_prefill_attention(const PagedPrefillDesc& d, cudaStream_t stream) {
  d.validate();
  if (d.num_seqs == 0 || d.Tq == 0 || d.max_query_len == 0) return;
  Params p{};
  p.q = d.q;
  p.query_start = d.query_start;
  p.k = d.cache.k;
  p.v = d.cache.v;
  p.block_size = d.cache.block_size;
  p.kv_heads = d.cache.kv_heads;
  p.group = d.q_heads / d.cache.kv_heads;
  p.block_table = d.block_table;
  p.max_blocks = d.max_blocks;
  p.context_lens = d.context_lens;
  p.q_heads = d.q_heads;
  p.scale = d.scale;
  p.out = d.out;
  const dim3 grid(static_cast<unsigned>((d.max_query_len + BM - 1) / BM), static_cast<unsigned>(d.q_heads),
                  static_cast<unsigned>(d.num_seqs));
  if (d.cache.head_dim == 64) launch_d<64>(p, grid, stream);
  else launch_d<128>(p, grid, stream);
}

}  // namespace graft::cuda::serve
