// attention_fwd.cu — dense masked softmax attention, forward (training and prefill).
// Contract (graft/cuda/attention.hpp, AttentionFwdDesc):
//   q [T, Hq, D], k [S, Hkv, D], v [S, Hkv, Dv] bf16; q_pos [T], k_pos [S] int32; mask (causal,
//   sliding window, chunk, packed segments: AttentionMaskDev, the rule of cpu::attention)
//   -> out[t, h] = Σ_j softmax_j(scale · q[t,h]·k[j,kv]) · v[j,kv] over the visible j (=, bf16),
//      kv = h / (Hq / Hkv); lse[t, h] = m + log Σ exp(s − m) (optional, fp32, -inf when nothing is
//      visible; then out = 0). Scores, P, the running (m, l) and O are fp32 (P is not rounded to
//      bf16); out is rounded once. Any T, S >= 0, 1 <= D, Dv <= 256.
//   Oracle: cpu::attention (tests/kernels/cuda_attention).
// Paths: attention_fwd_tc.cu (tensor cores) for D == Dv in {64, 80, 96, 128} unless desc.path says
//   otherwise; this kernel for every other call and for the backward's statistics pass.
// Design (flash-style, CUDA cores): block = kBM = 16 query rows of one query head, 128 threads.
//   Q tile fp32 in shared memory; per key tile of BN = 32 keys: the tile's visibility from the
//   positions / segments (skipped when no pair is visible: causal and window tiles cost nothing),
//   K and V tiles (fp32, K pitch D+1), S = scale·Q·Kᵀ (one thread per score, d ascending), then
//   each warp owns 4 rows with lane = key: row max and sum by butterfly (fixed order), P written
//   back, (m, l) updated and the rescale factor α kept; then O = α·O + P·V, each thread owning
//   fixed O elements (keys ascending). Deterministic, independent of the grid.
//   Shared memory: 4·(16·D + 32·(D+1) + 32·Dv + 16·Dv + 16·32·2 + 3·16 + 4) bytes (D = Dv = 128:
//   52 KiB; 256: 100 KiB; checked against the device's opt-in limit). Grid (ceil(T/16), Hq).
//   sm_90a: 40 registers, no spills (ptxas -v).
//   The same kernel in "statistics mode" (attention_bwd without a saved lse) writes lse and
//   delta[t,h] = Σ_c dout[t,h,c]·O[t,h,c] (O fp32) instead of out.
#include <cmath>

#include "attention_common.cuh"
#include "launch.cuh"
#include "warp_reduce.cuh"

namespace graft::cuda {
namespace attnk {
namespace {

constexpr int kBN = 32;  // keys per tile = warp width (lane = key in the softmax)
static_assert(kBM % kWarps == 0, "each warp owns kBM / kWarps rows");

struct Smem {
  int q, k, v, p, o, m, l, a, vis, flag, floats;
  __host__ __device__ Smem(int D, int Dv) {
    q = 0;
    k = q + kBM * D;
    v = k + kBN * (D + 1);
    p = v + kBN * Dv;
    o = p + kBM * kBN;
    m = o + kBM * Dv;
    l = m + kBM;
    a = l + kBM;
    vis = a + kBM;
    flag = vis + kBM * kBN;
    floats = flag + kWarps;
  }
  size_t bytes() const { return static_cast<size_t>(floats) * 4; }
};

__global__ void __launch_bounds__(kThreads) attention_fwd_kernel(FwdParams p) {
  GRAFT_EXTERN_SHARED(float, smem, 16);
  const int D = p.D, Dv = p.Dv;
  const Smem L(D, Dv);
  float* Qs = smem + L.q;
  float* Ks = smem + L.k;
  float* Vs = smem + L.v;
  float* Ps = smem + L.p;
  float* Os = smem + L.o;
  float* ms = smem + L.m;
  float* ls = smem + L.l;
  float* as = smem + L.a;
  int* vis = reinterpret_cast<int*>(smem + L.vis);
  int* wflag = reinterpret_cast<int*>(smem + L.flag);
  const int64_t t0 = static_cast<int64_t>(blockIdx.x) * kBM, h = blockIdx.y, kh = h / (p.Hq / p.Hkv);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

  load_rows(Qs, D, kBM, p.q, t0, p.T, p.Hq, h, D);
  for (int e = tid; e < kBM * Dv; e += kThreads) Os[e] = 0.0f;
  if (tid < kBM) {
    ms[tid] = -INFINITY;
    ls[tid] = 0.0f;
  }
  for (int64_t j0 = 0; j0 < p.S; j0 += kBN) {
    __syncthreads();  // the previous tile's vis / K / V / P are no longer read
    if (!tile_visibility<kBN>(p.vis, t0, p.T, j0, p.S, vis, wflag)) continue;
    load_rows(Ks, D + 1, kBN, p.k, j0, p.S, p.Hkv, kh, D);
    load_rows(Vs, Dv, kBN, p.v, j0, p.S, p.Hkv, kh, Dv);
    __syncthreads();
    for (int e = tid; e < kBM * kBN; e += kThreads) {
      const int r = e / kBN, c = e % kBN;
      float s = -INFINITY;
      if (vis[e]) {
        const float* qr = Qs + r * D;
        const float* kr = Ks + c * (D + 1);
        float acc = 0.0f;
        for (int d = 0; d < D; ++d) acc += qr[d] * kr[d];
        s = acc * p.scale;
      }
      Ps[e] = s;
    }
    __syncthreads();
    for (int i = 0; i < kBM / kWarps; ++i) {
      const int r = warp * (kBM / kWarps) + i;
      const float s = Ps[r * kBN + lane];
      const float m_old = ms[r], l_old = ls[r];
      const float m_new = fmaxf(m_old, warp_max(s));
      const float pr = s == -INFINITY ? 0.0f : expf(s - m_new);  // m_new = -inf implies s = -inf
      const float alpha = m_old == -INFINITY ? 0.0f : expf(m_old - m_new);
      const float sum = warp_sum(pr);
      Ps[r * kBN + lane] = pr;
      __syncwarp();
      if (lane == 0) {
        ms[r] = m_new;
        ls[r] = l_old * alpha + sum;
        as[r] = alpha;
      }
    }
    __syncthreads();
    for (int e = tid; e < kBM * Dv; e += kThreads) {
      const int r = e / Dv, c = e % Dv;
      const float* pr = Ps + r * kBN;
      float acc = Os[e] * as[r];
      for (int j = 0; j < kBN; ++j) acc += pr[j] * Vs[j * Dv + c];
      Os[e] = acc;
    }
  }
  __syncthreads();
  for (int e = tid; e < kBM * Dv; e += kThreads) {
    const int r = e / Dv, c = e % Dv;
    const int64_t t = t0 + r;
    const float l = ls[r];
    const float o = l > 0.0f ? Os[e] / l : 0.0f;
    Os[e] = o;
    if (p.out != nullptr && t < p.T) p.out[(t * p.Hq + h) * Dv + c] = __float2bfloat16(o);
  }
  if (p.lse != nullptr && tid < kBM && t0 + tid < p.T) {
    const float l = ls[tid];
    p.lse[(t0 + tid) * p.Hq + h] = l > 0.0f ? ms[tid] + logf(l) : -INFINITY;
  }
  if (p.delta != nullptr) {  // statistics mode: delta = dout · O (fp32 O), one warp per row
    __syncthreads();
    for (int i = 0; i < kBM / kWarps; ++i) {
      const int r = warp * (kBM / kWarps) + i;
      const int64_t t = t0 + r;
      if (t >= p.T) continue;  // warp-uniform
      const __nv_bfloat16* dor = p.dout + (t * p.Hq + h) * Dv;
      float acc = 0.0f;
      for (int c = lane; c < Dv; c += 32) acc += __bfloat162float(dor[c]) * Os[r * Dv + c];
      acc = warp_sum(acc);
      if (lane == 0) p.delta[t * p.Hq + h] = acc;
    }
  }
}

}  // namespace

void launch_fwd(const FwdParams& p, cudaStream_t stream) {
  if (p.T == 0) return;
  const Smem L(p.D, p.Dv);
  const AttentionDims dims{p.T, p.S, p.Hq, p.Hkv, p.D, p.Dv};
  prepare_smem(attention_fwd_kernel, L.bytes(), "attention_fwd", dims);
  const dim3 grid(static_cast<unsigned>((p.T + kBM - 1) / kBM), static_cast<unsigned>(p.Hq));
  GRAFT_LAUNCH(grid, kThreads, L.bytes(), stream, attention_fwd_kernel)(p);
  GRAFT_CUDA_CHECK_LAUNCH();
}

void validate_common(const char* who, const AttentionDims& d, const __nv_bfloat16* q, const __nv_bfloat16* k,
                     const __nv_bfloat16* v, const int32_t* q_pos, const int32_t* k_pos, const AttentionMaskDev& m) {
  GRAFT_CHECK(d.T >= 0 && d.S >= 0, "{}: dims.T = {} and dims.S = {} must be >= 0", who, d.T, d.S);
  GRAFT_CHECK_FIX(d.Hkv >= 1 && d.Hq >= 1 && d.Hq % d.Hkv == 0, "set dims.Hq to a multiple of dims.Hkv (GQA)",
                  "{}: dims.Hq = {} query heads must be a positive multiple of dims.Hkv = {} kv heads", who, d.Hq,
                  d.Hkv);
  GRAFT_CHECK_FIX(d.Hq <= 65535 && d.T / kBM < (int64_t{1} << 31) && d.S / kBM < (int64_t{1} << 31),
                  "split the call over heads or tokens",
                  "{}: dims.Hq = {} must be <= 65535 and dims.T = {}, dims.S = {} < 2^35 (grid limits)", who, d.Hq,
                  d.T, d.S);
  GRAFT_CHECK(d.D >= 1 && d.D <= kAttentionMaxHeadDim && d.Dv >= 1 && d.Dv <= kAttentionMaxHeadDim,
              "{}: head dims dims.D = {} and dims.Dv = {} must be in [1, {}]", who, d.D, d.Dv, kAttentionMaxHeadDim);
  GRAFT_CHECK(d.T == 0 || (q != nullptr && q_pos != nullptr),
              "{}: q [T, Hq, D] and q_pos [T] must be device pointers for T = {}, got null", who, d.T);
  GRAFT_CHECK(d.S == 0 || (k != nullptr && v != nullptr && k_pos != nullptr),
              "{}: k [S, Hkv, D], v [S, Hkv, Dv] and k_pos [S] must be device pointers for S = {}, got null", who, d.S);
  GRAFT_CHECK((m.q_segments == nullptr) == (m.k_segments == nullptr),
              "{}: mask.q_segments [T] and mask.k_segments [S] must be both set (packed samples) or both null", who);
  GRAFT_CHECK(m.sliding_window >= 0 && m.chunk_size >= 0,
              "{}: mask.sliding_window = {} and mask.chunk_size = {} must be >= 0 (0 = off)", who, m.sliding_window,
              m.chunk_size);
}

}  // namespace attnk

void AttentionFwdDesc::validate() const {
  const char* who = "attention_fwd";
  attnk::validate_common(who, dims, q, k, v, q_pos, k_pos, mask);
  GRAFT_CHECK(dims.T == 0 || out != nullptr, "{}: out [T, Hq, Dv] must be a device pointer for T = {}, got null", who,
              dims.T);
}

void attention_fwd(const AttentionFwdDesc& d, cudaStream_t stream) {
  d.validate();
  attnk::FwdParams p{};
  p.q = d.q;
  p.k = d.k;
  p.v = d.v;
  p.vis = attnk::make_visibility(d.q_pos, d.k_pos, d.mask);
  p.scale = d.scale;
  p.T = d.dims.T;
  p.S = d.dims.S;
  p.Hq = d.dims.Hq;
  p.Hkv = d.dims.Hkv;
  p.D = static_cast<int>(d.dims.D);
  p.Dv = static_cast<int>(d.dims.Dv);
  p.out = d.out;
  p.lse = d.lse;
  const char* why_not_tc = attnk::tc_ineligible(p);
  GRAFT_CHECK_FIX(d.path != AttentionPath::TensorCores || why_not_tc == nullptr,
                  "use AttentionPath::Auto (falls back to CUDA cores)", "attention_fwd: path = TensorCores, but {}",
                  why_not_tc ? why_not_tc : "");
  if (d.path != AttentionPath::CudaCores && why_not_tc == nullptr)
    attnk::launch_fwd_tc(p, stream);
  else
    attnk::launch_fwd(p, stream);
}

}  // namespace graft::cuda
