// attention_fwd_tc.cu — the tensor-core path of attention_fwd for D == Dv in {64, 80, 96, 128} (the
// head dims of Llama / Qwen / Mistral / Phi-class models); attention_fwd picks it (AttentionPath::Auto)
// when the call qualifies, the CUDA-core kernel (attention_fwd.cu) otherwise.
// Contract: attention_fwd's (graft/cuda/attention.hpp): same visibility rule per (query, key) pair
//   from the positions / segments, same GQA mapping, out (=, bf16), optional lse (fp32, -inf and
//   out = 0 for a row with no visible key). Differs from the CUDA-core path only in rounding: as in
//   flash-attention, P is rounded to bf16 as the P·V tensor-core operand (the row sum l uses the
//   unrounded fp32 values). q, k, v must be 16-byte aligned (cp.async).
//   Oracle: cpu::attention (tests/kernels/cuda_attention, both paths).
// Design (paged_prefill_attention.cu's pipeline with the general mask): block = 64 query rows of
//   one query head, 128 threads = 4 warps, warp w owns rows [16w, 16w + 16). Per key tile of 64:
//   key positions / segments to shared memory, a block vote skips tiles with no visible pair; K, V
//   tiles by 16-byte cp.async (zero-filled past S); S = Q·Kᵀ (wmma m16n16k16 bf16 -> f32) into
//   shared memory; each lane pair owns one row (32 columns each): mask, (m, l) update, P (bf16),
//   O row rescaled; then O += P·V (wmma, accumulators through shared memory). Fixed order
//   throughout: deterministic. Shared memory 113 KB (D = 128) / 72 KB (D = 64), checked against the
//   device's opt-in limit. Pitches keep every wmma pointer 32-byte aligned for all four D. Grid (ceil(T/64), Hq).
#include <mma.h>

#include <cmath>

#include "attention_common.cuh"
#include "cp_async.cuh"
#include "launch.cuh"

namespace graft::cuda::attnk {
namespace {
using namespace nvcuda;

constexpr int BM = 64;  // query rows per block
constexpr int BN = 64;  // keys per tile
static_assert(kThreads == 128, "4 warps of 16 rows cover BM = 64");

template <int D>
struct TcSmem {
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
  static constexpr size_t pos_off = l_off + align(sizeof(float) * BM);  // q_pos, q_seg, k_pos, k_seg: int[64] each
  static constexpr size_t flag_off = pos_off + align(sizeof(int) * 4 * 64);
  static constexpr size_t bytes = flag_off + align(sizeof(int) * kWarps);
};

template <int D>
__global__ void __launch_bounds__(kThreads) attention_fwd_tc_kernel(const FwdParams p) {
  using L = TcSmem<D>;
  GRAFT_EXTERN_SHARED(unsigned char, smem, 128);
  __nv_bfloat16* Qs = reinterpret_cast<__nv_bfloat16*>(smem + L::q_off);
  __nv_bfloat16* Ks = reinterpret_cast<__nv_bfloat16*>(smem + L::k_off);
  __nv_bfloat16* Vs = reinterpret_cast<__nv_bfloat16*>(smem + L::v_off);
  float* Ss = reinterpret_cast<float*>(smem + L::s_off);
  __nv_bfloat16* Ps = reinterpret_cast<__nv_bfloat16*>(smem + L::p_off);
  float* Os = reinterpret_cast<float*>(smem + L::o_off);
  float* Ms = reinterpret_cast<float*>(smem + L::m_off);
  float* Ls = reinterpret_cast<float*>(smem + L::l_off);
  int* qpos = reinterpret_cast<int*>(smem + L::pos_off);
  int* qseg = qpos + 64;
  int* kpos = qseg + 64;
  int* kseg = kpos + 64;
  int* wflag = reinterpret_cast<int*>(smem + L::flag_off);

  const int64_t t0 = static_cast<int64_t>(blockIdx.x) * BM, h = blockIdx.y, kh = h / (p.Hq / p.Hkv);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  constexpr int CH = D / 8;  // 16-byte chunks per row
  for (int c = tid; c < BM * CH; c += kThreads) {
    const int r = c / CH, dc = (c % CH) * 8;
    const bool ok = t0 + r < p.T;
    const __nv_bfloat16* src = ok ? p.q + ((t0 + r) * p.Hq + h) * D + dc : p.q;
    ptx::cp_async16(Qs + r * L::LDQ + dc, src, ok ? 16 : 0);
  }
  ptx::cp_async_commit();
  for (int e = tid; e < BM * D; e += kThreads) Os[(e / D) * L::LDO + e % D] = 0.0f;
  if (tid < BM) {
    Ms[tid] = -INFINITY;
    Ls[tid] = 0.0f;
    const int64_t t = t0 + tid;
    qpos[tid] = t < p.T ? p.vis.q_pos[t] : 0;
    qseg[tid] = t < p.T && p.vis.q_seg ? p.vis.q_seg[t] : 0;
  }

  for (int64_t kb = 0; kb < p.S; kb += BN) {
    __syncthreads();  // the previous tile's K / V / key positions / wflag are no longer read
    if (tid < BN) {
      const int64_t j = kb + tid;
      kpos[tid] = j < p.S ? p.vis.k_pos[j] : 0;
      kseg[tid] = j < p.S && p.vis.k_seg ? p.vis.k_seg[j] : 0;
    }
    __syncthreads();
    bool any = false;
    for (int e = tid; e < BM * BN; e += kThreads) {
      const int r = e / BN, c = e % BN;
      any = any || (t0 + r < p.T && kb + c < p.S && visible_at(p.vis, qpos[r], qseg[r], kpos[c], kseg[c]));
    }
    if (!block_any(any, wflag)) continue;
    for (int c = tid; c < BN * CH; c += kThreads) {
      const int r = c / CH, dc = (c % CH) * 8;
      const bool ok = kb + r < p.S;
      const int64_t off = ok ? ((kb + r) * p.Hkv + kh) * D + dc : 0;
      ptx::cp_async16(Ks + r * L::LDQ + dc, p.k + off, ok ? 16 : 0);
      ptx::cp_async16(Vs + r * L::LDQ + dc, p.v + off, ok ? 16 : 0);
    }
    ptx::cp_async_commit();
    ptx::cp_async_wait<0>();
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
        wmma::load_matrix_sync(a, Qs + (warp * 16) * L::LDQ + kk, L::LDQ);
        wmma::load_matrix_sync(b, Ks + (n * 16) * L::LDQ + kk, L::LDQ);
        wmma::mma_sync(sacc, a, b, sacc);
      }
      wmma::store_matrix_sync(Ss + (warp * 16) * L::LDSS + n * 16, sacc, L::LDSS, wmma::mem_row_major);
    }
    __syncwarp();

    // online softmax: lanes 2r, 2r+1 own row warp·16 + r, columns [32·half, 32·half + 32)
    {
      const int row = warp * 16 + (lane >> 1), half = lane & 1;
      const bool row_ok = t0 + row < p.T;
      float* srow = Ss + row * L::LDSS;
      float mx = -INFINITY;
      for (int c = half * 32; c < half * 32 + 32; ++c) {
        const bool ok = row_ok && kb + c < p.S && visible_at(p.vis, qpos[row], qseg[row], kpos[c], kseg[c]);
        const float s = ok ? srow[c] * p.scale : -INFINITY;
        srow[c] = s;
        mx = fmaxf(mx, s);
      }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      const float m_old = Ms[row];
      const float m_new = fmaxf(m_old, mx);
      float corr = 0.0f, sum = 0.0f;
      __nv_bfloat16* prow = Ps + row * L::LDP;
      if (m_new == -INFINITY) {
        for (int c = half * 32; c < half * 32 + 32; ++c) prow[c] = __float2bfloat16(0.0f);
      } else {
        corr = m_old == -INFINITY ? 0.0f : expf(m_old - m_new);
        for (int c = half * 32; c < half * 32 + 32; ++c) {
          const float e = srow[c] == -INFINITY ? 0.0f : expf(srow[c] - m_new);
          prow[c] = __float2bfloat16(e);
          sum += e;
        }
      }
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      float* orow = Os + row * L::LDO;
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
      wmma::load_matrix_sync(oacc, Os + (warp * 16) * L::LDO + dn * 16, L::LDO, wmma::mem_row_major);
#pragma unroll
      for (int kk = 0; kk < BN; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> b;
        wmma::load_matrix_sync(a, Ps + (warp * 16) * L::LDP + kk, L::LDP);
        wmma::load_matrix_sync(b, Vs + kk * L::LDQ + dn * 16, L::LDQ);
        wmma::mma_sync(oacc, a, b, oacc);
      }
      wmma::store_matrix_sync(Os + (warp * 16) * L::LDO + dn * 16, oacc, L::LDO, wmma::mem_row_major);
    }
    __syncwarp();
  }
  ptx::cp_async_wait<0>();  // the Q copy when no key tile ran
  __syncthreads();

  // out = O / l (0 for a row with no visible key), lse = m + log l
  for (int e = tid; e < BM * D; e += kThreads) {
    const int row = e / D, d = e % D;
    const int64_t t = t0 + row;
    if (t >= p.T) continue;
    const float l = Ls[row];
    p.out[(t * p.Hq + h) * D + d] = __float2bfloat16(l > 0.0f ? Os[row * L::LDO + d] / l : 0.0f);
  }
  if (p.lse != nullptr && tid < BM && t0 + tid < p.T) {
    const float l = Ls[tid];
    p.lse[(t0 + tid) * p.Hq + h] = l > 0.0f ? Ms[tid] + logf(l) : -INFINITY;
  }
}

template <int D>
void launch_d(const FwdParams& p, cudaStream_t stream) {
  constexpr size_t bytes = TcSmem<D>::bytes;
  prepare_smem(attention_fwd_tc_kernel<D>, bytes, "attention_fwd (tensor cores)",
               AttentionDims{p.T, p.S, p.Hq, p.Hkv, p.D, p.Dv});
  const dim3 grid(static_cast<unsigned>((p.T + BM - 1) / BM), static_cast<unsigned>(p.Hq));
  GRAFT_LAUNCH(grid, kThreads, bytes, stream, attention_fwd_tc_kernel<D>)(p);
  GRAFT_CUDA_CHECK_LAUNCH();
}

}  // namespace

const char* tc_ineligible(const FwdParams& p) {
  if (!tc_head_dims(p.D, p.Dv)) return kTcHeadDimsWhy;
  if (p.delta != nullptr) return "statistics mode runs on CUDA cores";
  const auto misaligned = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 != 0; };
  if (misaligned(p.q) || misaligned(p.k) || misaligned(p.v))
    return "the tensor-core path needs 16-byte aligned q, k, v";
  return nullptr;
}

void launch_fwd_tc(const FwdParams& p, cudaStream_t stream) {
  if (p.T == 0) return;
  switch (p.D) {
    case 64: launch_d<64>(p, stream); break;
    case 80: launch_d<80>(p, stream); break;
    case 96: launch_d<96>(p, stream); break;
    default: launch_d<128>(p, stream); break;
  }
}

}  // namespace graft::cuda::attnk
