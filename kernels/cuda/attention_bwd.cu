// attention_bwd.cu — dense masked softmax attention, backward (dq, dk, dv), deterministic.
// Contract (graft/cuda/attention.hpp, AttentionBwdDesc): the forward's q, k, v, positions, mask and
// scale, dout [T, Hq, Dv] bf16 -> dq [T, Hq, D], dk [S, Hkv, D], dv [S, Hkv, Dv] (=, bf16):
//   P = softmax(scale·q·kᵀ) over the visible keys (recomputed: P = exp(s − lse)),
//   dP = dout·vᵀ, dS = P ⊙ (dP − delta) · scale with delta[t,h] = Σ_j P·dP = dout[t,h]·O[t,h],
//   dq = dS·k, dk = Σ_{h in group} dSᵀ·q, dv = Σ_{h in group} Pᵀ·dout — cpu::attention_bwd's math.
//   fp32 everywhere, each gradient rounded to bf16 once. Rows with no visible key: zero dq, no
//   contribution. T = 0 -> dk = dv = 0; S = 0 -> dq = 0.
//   Oracle: cpu::attention_bwd (tests/kernels/cuda_attention).
// Paths: passes 2-3 run on tensor cores (attention_bwd_tc.cu) for D == Dv in {64, 80, 96, 128} unless
//   desc.path says otherwise; the kernels below serve every other call.
// Passes (no atomics, every sum in a fixed order: bit-identical from run to run, grid-independent):
//   1. row statistics into the workspace: with the forward's lse and out (fast path) one warp per
//      (t, h) row computes delta = Σ_c dout·out; without them the forward kernel in statistics mode
//      recomputes lse and delta (from its fp32 O).
//   2. dk/dv: one block per (16-key tile, kv head), 128 threads, loops over the group's query heads
//      (ascending) and 16-row query tiles (ascending), skipping tiles with no visible pair; the
//      block owns its dk/dv rows (fp32 accumulators in shared memory, fixed element per thread).
//   3. dq: one block per (16-query tile, query head), loops over 16-key tiles (ascending).
//   Tiles are fp32 in shared memory (K, V pitch dim+1). Per block, D = Dv = 128 / 256: dk/dv
//   51 / 99 KiB (K, V, Q, dO, dk, dv tiles), dq 42 / 82 KiB; checked against the device's opt-in
//   limit (prepare_smem). 128 threads; sm_90a: 48 / 32 registers, no spills (ptxas -v).
#include <cmath>

#include "attention_common.cuh"
#include "launch.cuh"
#include "warp_reduce.cuh"

namespace graft::cuda {
namespace attnk {
namespace {

constexpr int kBN = 16;  // keys per tile in the backward

struct BwdParams {
  const __nv_bfloat16* q;
  const __nv_bfloat16* k;
  const __nv_bfloat16* v;
  const __nv_bfloat16* dout;
  Visibility vis;
  float scale;
  int64_t T, S, Hq, Hkv;
  int D, Dv;
  const float* lse;    // [T, Hq]
  const float* delta;  // [T, Hq]
  __nv_bfloat16* dq;
  __nv_bfloat16* dk;
  __nv_bfloat16* dv;
};

// dS (and P) for the pair (r, c) of a [kBM, kBN] tile whose Q / dO rows and K / V rows are in
// shared memory: P = exp(scale·q·k − lse), dS = P·(dO·v − delta)·scale. Zero when not visible.
__device__ __forceinline__ void pair_grad(const float* qr, const float* kr, const float* dor, const float* vr, int D,
                                          int Dv, float scale, float lse, float delta, float& P, float& dS) {
  float s = 0.0f;
  for (int d = 0; d < D; ++d) s += qr[d] * kr[d];
  float dp = 0.0f;
  for (int c = 0; c < Dv; ++c) dp += dor[c] * vr[c];
  P = lse == -INFINITY ? 0.0f : expf(s * scale - lse);
  dS = P * (dp - delta) * scale;
}

// Loads lse / delta of query rows t0 .. t0 + kBM of head h (rows past T: -inf / 0).
__device__ __forceinline__ void load_stats(const BwdParams& p, int64_t t0, int64_t h, float* lse_s, float* delta_s) {
  if (threadIdx.x < kBM) {
    const int64_t t = t0 + threadIdx.x;
    lse_s[threadIdx.x] = t < p.T ? p.lse[t * p.Hq + h] : -INFINITY;
    delta_s[threadIdx.x] = t < p.T ? p.delta[t * p.Hq + h] : 0.0f;
  }
}

struct DkvSmem {
  int k, v, q, o, dk, dv, P, dS, lse, delta, vis, flag, floats;
  __host__ __device__ DkvSmem(int D, int Dv) {
    k = 0;
    v = k + kBN * (D + 1);
    q = v + kBN * (Dv + 1);
    o = q + kBM * D;
    dk = o + kBM * Dv;
    dv = dk + kBN * D;
    P = dv + kBN * Dv;
    dS = P + kBM * kBN;
    lse = dS + kBM * kBN;
    delta = lse + kBM;
    vis = delta + kBM;
    flag = vis + kBM * kBN;
    floats = flag + kWarps;
  }
  size_t bytes() const { return static_cast<size_t>(floats) * 4; }
};

__global__ void __launch_bounds__(kThreads) attention_bwd_dkdv_kernel(BwdParams p) {
  GRAFT_EXTERN_SHARED(float, smem, 16);
  const int D = p.D, Dv = p.Dv;
  const DkvSmem L(D, Dv);
  float* Ks = smem + L.k;
  float* Vs = smem + L.v;
  float* Qs = smem + L.q;
  float* Os = smem + L.o;  // dout rows
  float* dKs = smem + L.dk;
  float* dVs = smem + L.dv;
  float* Ps = smem + L.P;
  float* dSs = smem + L.dS;
  float* lse_s = smem + L.lse;
  float* delta_s = smem + L.delta;
  int* vis = reinterpret_cast<int*>(smem + L.vis);
  int* wflag = reinterpret_cast<int*>(smem + L.flag);
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * kBN, kh = blockIdx.y, group = p.Hq / p.Hkv;
  const int tid = threadIdx.x;

  load_rows(Ks, D + 1, kBN, p.k, j0, p.S, p.Hkv, kh, D);
  load_rows(Vs, Dv + 1, kBN, p.v, j0, p.S, p.Hkv, kh, Dv);
  for (int e = tid; e < kBN * D; e += kThreads) dKs[e] = 0.0f;
  for (int e = tid; e < kBN * Dv; e += kThreads) dVs[e] = 0.0f;
  for (int64_t h = kh * group; h < (kh + 1) * group; ++h) {
    for (int64_t t0 = 0; t0 < p.T; t0 += kBM) {
      __syncthreads();  // the previous tile's vis / Q / dO / P / dS are no longer read
      if (!tile_visibility<kBN>(p.vis, t0, p.T, j0, p.S, vis, wflag)) continue;
      load_rows(Qs, D, kBM, p.q, t0, p.T, p.Hq, h, D);
      load_rows(Os, Dv, kBM, p.dout, t0, p.T, p.Hq, h, Dv);
      load_stats(p, t0, h, lse_s, delta_s);
      __syncthreads();
      for (int e = tid; e < kBM * kBN; e += kThreads) {
        const int r = e / kBN, c = e % kBN;
        float P = 0.0f, dS = 0.0f;
        if (vis[e])
          pair_grad(Qs + r * D, Ks + c * (D + 1), Os + r * Dv, Vs + c * (Dv + 1), D, Dv, p.scale, lse_s[r],
                    delta_s[r], P, dS);
        Ps[e] = P;
        dSs[e] = dS;
      }
      __syncthreads();
      for (int e = tid; e < kBN * Dv; e += kThreads) {  // dv[c] += Σ_r P[r][c]·dO[r]
        const int c = e / Dv, i = e % Dv;
        float acc = dVs[e];
        for (int r = 0; r < kBM; ++r) acc += Ps[r * kBN + c] * Os[r * Dv + i];
        dVs[e] = acc;
      }
      for (int e = tid; e < kBN * D; e += kThreads) {  // dk[c] += Σ_r dS[r][c]·q[r]
        const int c = e / D, i = e % D;
        float acc = dKs[e];
        for (int r = 0; r < kBM; ++r) acc += dSs[r * kBN + c] * Qs[r * D + i];
        dKs[e] = acc;
      }
    }
  }
  // Each thread writes the elements it accumulated: no barrier needed.
  for (int e = tid; e < kBN * D; e += kThreads) {
    const int64_t j = j0 + e / D;
    if (j < p.S) p.dk[(j * p.Hkv + kh) * D + e % D] = __float2bfloat16(dKs[e]);
  }
  for (int e = tid; e < kBN * Dv; e += kThreads) {
    const int64_t j = j0 + e / Dv;
    if (j < p.S) p.dv[(j * p.Hkv + kh) * Dv + e % Dv] = __float2bfloat16(dVs[e]);
  }
}

struct DqSmem {
  int q, o, k, v, dq, dS, lse, delta, vis, flag, floats;
  __host__ __device__ DqSmem(int D, int Dv) {
    q = 0;
    o = q + kBM * D;
    k = o + kBM * Dv;
    v = k + kBN * (D + 1);
    dq = v + kBN * (Dv + 1);
    dS = dq + kBM * D;
    lse = dS + kBM * kBN;
    delta = lse + kBM;
    vis = delta + kBM;
    flag = vis + kBM * kBN;
    floats = flag + kWarps;
  }
  size_t bytes() const { return static_cast<size_t>(floats) * 4; }
};

__global__ void __launch_bounds__(kThreads) attention_bwd_dq_kernel(BwdParams p) {
  GRAFT_EXTERN_SHARED(float, smem, 16);
  const int D = p.D, Dv = p.Dv;
  const DqSmem L(D, Dv);
  float* Qs = smem + L.q;
  float* Os = smem + L.o;  // dout rows
  float* Ks = smem + L.k;
  float* Vs = smem + L.v;
  float* dQs = smem + L.dq;
  float* dSs = smem + L.dS;
  float* lse_s = smem + L.lse;
  float* delta_s = smem + L.delta;
  int* vis = reinterpret_cast<int*>(smem + L.vis);
  int* wflag = reinterpret_cast<int*>(smem + L.flag);
  const int64_t t0 = static_cast<int64_t>(blockIdx.x) * kBM, h = blockIdx.y, kh = h / (p.Hq / p.Hkv);
  const int tid = threadIdx.x;

  load_rows(Qs, D, kBM, p.q, t0, p.T, p.Hq, h, D);
  load_rows(Os, Dv, kBM, p.dout, t0, p.T, p.Hq, h, Dv);
  load_stats(p, t0, h, lse_s, delta_s);
  for (int e = tid; e < kBM * D; e += kThreads) dQs[e] = 0.0f;
  for (int64_t j0 = 0; j0 < p.S; j0 += kBN) {
    __syncthreads();  // Q / dO / stats loaded; the previous tile's vis / K / V / dS no longer read
    if (!tile_visibility<kBN>(p.vis, t0, p.T, j0, p.S, vis, wflag)) continue;
    load_rows(Ks, D + 1, kBN, p.k, j0, p.S, p.Hkv, kh, D);
    load_rows(Vs, Dv + 1, kBN, p.v, j0, p.S, p.Hkv, kh, Dv);
    __syncthreads();
    for (int e = tid; e < kBM * kBN; e += kThreads) {
      const int r = e / kBN, c = e % kBN;
      float P = 0.0f, dS = 0.0f;
      if (vis[e])
        pair_grad(Qs + r * D, Ks + c * (D + 1), Os + r * Dv, Vs + c * (Dv + 1), D, Dv, p.scale, lse_s[r], delta_s[r],
                  P, dS);
      dSs[e] = dS;
    }
    __syncthreads();
    for (int e = tid; e < kBM * D; e += kThreads) {  // dq[r] += Σ_c dS[r][c]·k[c]
      const int r = e / D, i = e % D;
      float acc = dQs[e];
      for (int c = 0; c < kBN; ++c) acc += dSs[r * kBN + c] * Ks[c * (D + 1) + i];
      dQs[e] = acc;
    }
  }
  for (int e = tid; e < kBM * D; e += kThreads) {
    const int64_t t = t0 + e / D;
    if (t < p.T) p.dq[(t * p.Hq + h) * D + e % D] = __float2bfloat16(dQs[e]);
  }
}

// Fast path of pass 1: delta[row] = Σ_c dout[row, c]·out[row, c], one warp per (t, h) row.
__global__ void __launch_bounds__(kThreads) attention_bwd_delta_kernel(const __nv_bfloat16* __restrict__ dout,
                                                                        const __nv_bfloat16* __restrict__ out,
                                                                        int64_t rows, int Dv,
                                                                        float* __restrict__ delta) {
  const int lane = threadIdx.x & 31;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kWarps;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5); row < rows; row += stride) {
    float acc = 0.0f;
    for (int c = lane; c < Dv; c += 32)
      acc += __bfloat162float(dout[row * Dv + c]) * __bfloat162float(out[row * Dv + c]);
    acc = warp_sum(acc);
    if (lane == 0) delta[row] = acc;
  }
}

}  // namespace
}  // namespace attnk

size_t attention_bwd_workspace_bytes(int64_t T, int64_t Hq) {
  GRAFT_CHECK(T >= 0 && Hq >= 0, "attention_bwd_workspace_bytes: T = {} and Hq = {} must be >= 0", T, Hq);
  return static_cast<size_t>(2 * T * Hq) * sizeof(float);
}

void AttentionBwdDesc::validate() const {
  const char* who = "attention_bwd";
  attnk::validate_common(who, dims, q, k, v, q_pos, k_pos, mask);
  const int64_t T = dims.T, S = dims.S;
  GRAFT_CHECK(T == 0 || (dout != nullptr && dq != nullptr),
              "{}: dout [T, Hq, Dv] and dq [T, Hq, D] must be device pointers for T = {}, got null", who, T);
  GRAFT_CHECK(S == 0 || (dk != nullptr && dv != nullptr),
              "{}: dk [S, Hkv, D] and dv [S, Hkv, Dv] must be device pointers for S = {}, got null", who, S);
  GRAFT_CHECK_FIX((lse == nullptr) == (out == nullptr),
                  "pass attention_fwd's lse and out together (fast path), or neither (lse is recomputed)",
                  "{}: lse is {} but out is {}", who, lse ? "set" : "null", out ? "set" : "null");
  const size_t need = attention_bwd_workspace_bytes(T, dims.Hq);
  GRAFT_CHECK_FIX(workspace_bytes >= need && (need == 0 || workspace != nullptr),
                  "allocate attention_bwd_workspace_bytes(T, Hq) bytes of device memory",
                  "{}: workspace of {} bytes at {}, need {} for T = {}, Hq = {}", who, workspace_bytes, workspace, need,
                  T, dims.Hq);
  GRAFT_CHECK(reinterpret_cast<uintptr_t>(workspace) % 16 == 0, "{}: workspace must be 16-byte aligned", who);
}

void attention_bwd(const AttentionBwdDesc& d, cudaStream_t stream) {
  d.validate();
  const auto& n = d.dims;
  if (n.T == 0) {  // no query: empty sums
    if (n.S > 0) {
      GRAFT_CUDA_CHECK(cudaMemsetAsync(d.dk, 0, static_cast<size_t>(n.S * n.Hkv * n.D) * 2, stream));
      GRAFT_CUDA_CHECK(cudaMemsetAsync(d.dv, 0, static_cast<size_t>(n.S * n.Hkv * n.Dv) * 2, stream));
    }
    return;
  }
  float* lse_ws = static_cast<float*>(d.workspace);
  float* delta_ws = lse_ws + n.T * n.Hq;
  const attnk::Visibility vis = attnk::make_visibility(d.q_pos, d.k_pos, d.mask);
  // Pass 1: row statistics.
  const float* lse = d.lse;
  if (lse != nullptr) {
    const int64_t rows = n.T * n.Hq;
    GRAFT_LAUNCH(traink::grid_for((rows + attnk::kWarps - 1) / attnk::kWarps), attnk::kThreads, 0, stream,
                 attnk::attention_bwd_delta_kernel)(d.dout, d.out, rows, static_cast<int>(n.Dv), delta_ws);
    GRAFT_CUDA_CHECK_LAUNCH();
  } else {
    attnk::FwdParams f{};
    f.q = d.q;
    f.k = d.k;
    f.v = d.v;
    f.vis = vis;
    f.scale = d.scale;
    f.T = n.T;
    f.S = n.S;
    f.Hq = n.Hq;
    f.Hkv = n.Hkv;
    f.D = static_cast<int>(n.D);
    f.Dv = static_cast<int>(n.Dv);
    f.out = nullptr;
    f.lse = lse_ws;
    f.dout = d.dout;
    f.delta = delta_ws;
    attnk::launch_fwd(f, stream);
    lse = lse_ws;
  }
  const char* why_not_tc = attnk::bwd_tc_ineligible(n.D, n.Dv, d.q, d.k, d.v, d.dout);
  GRAFT_CHECK_FIX(d.path != AttentionPath::TensorCores || why_not_tc == nullptr,
                  "use AttentionPath::Auto (falls back to CUDA cores)", "attention_bwd: path = TensorCores, but {}",
                  why_not_tc ? why_not_tc : "");
  if (d.path != AttentionPath::CudaCores && why_not_tc == nullptr) {  // passes 2-3 on tensor cores
    attnk::launch_bwd_tc(d.q, d.k, d.v, d.dout, vis, d.scale, n, lse, delta_ws, d.dq, d.dk, d.dv, stream);
    return;
  }
  attnk::BwdParams p{};
  p.q = d.q;
  p.k = d.k;
  p.v = d.v;
  p.dout = d.dout;
  p.vis = vis;
  p.scale = d.scale;
  p.T = n.T;
  p.S = n.S;
  p.Hq = n.Hq;
  p.Hkv = n.Hkv;
  p.D = static_cast<int>(n.D);
  p.Dv = static_cast<int>(n.Dv);
  p.lse = lse;
  p.delta = delta_ws;
  p.dq = d.dq;
  p.dk = d.dk;
  p.dv = d.dv;
  // Pass 2: dk, dv.
  if (n.S > 0) {
    const attnk::DkvSmem L(p.D, p.Dv);
    attnk::prepare_smem(attnk::attention_bwd_dkdv_kernel, L.bytes(), "attention_bwd (dk/dv)", n);
    const dim3 grid(static_cast<unsigned>((n.S + attnk::kBN - 1) / attnk::kBN), static_cast<unsigned>(n.Hkv));
    GRAFT_LAUNCH(grid, attnk::kThreads, L.bytes(), stream, attnk::attention_bwd_dkdv_kernel)(p);
    GRAFT_CUDA_CHECK_LAUNCH();
  }
  // Pass 3: dq (zeros when S = 0: the key loop is empty).
  const attnk::DqSmem L(p.D, p.Dv);
  attnk::prepare_smem(attnk::attention_bwd_dq_kernel, L.bytes(), "attention_bwd (dq)", n);
  const dim3 grid(static_cast<unsigned>((n.T + attnk::kBM - 1) / attnk::kBM), static_cast<unsigned>(n.Hq));
  GRAFT_LAUNCH(grid, attnk::kThreads, L.bytes(), stream, attnk::attention_bwd_dq_kernel)(p);
  GRAFT_CUDA_CHECK_LAUNCH();
}

}  // namespace graft::cuda
