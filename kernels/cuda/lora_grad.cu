// lora_grad.cu — LoRA weight gradients of a (QLoRA) linear layer.
// Contract:
//   dA[r, K] (= or +=) s · Σ_t dyb[t, j] · X[t, k]     dyb fp32 [T, r] (nf4_matmul_bwd_dx's dyb_out), X bf16 [T, K]
//   dB[N, r] (= or +=) s · Σ_t dY[t, n] · xa[t, j]     dY bf16 [T, N], xa fp32 [T, r] (nf4_matmul's xa_out)
//   Outputs fp32 row-major; fp32 accumulation (FMA on CUDA cores — the rank side is small, so these
//   are thin GEMMs with a long reduction over T). Alignment: natural (4 bytes for fp32, 2 for bf16).
//   Long T is split across grid.z with fp32 atomicAdd into the output (zeroed first with
//   cudaMemsetAsync for `=`), so the last bits may differ from run to run.
//   Limits: any T, N, K, r >= 1.
#include <algorithm>

#include "graft/cuda/check.hpp"
#include "graft/cuda/nf4_matmul.hpp"
#include "nf4_common.cuh"
#include "launch.cuh"

namespace graft::cuda {
namespace {

constexpr int kTile = 64, kTc = 16, kThr = 256;

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

// C[I, J] (= or +=) s · Σ_{t in this split} P[t, i] · Q[t, j]
template <class TP, class TQ>
__global__ void __launch_bounds__(kThr) tn_gemm_kernel(const TP* __restrict__ P, const TQ* __restrict__ Q,
                                                       float* __restrict__ C, int64_t T, int64_t I, int64_t J,
                                                       int64_t t_per_split, float s, bool atomic, bool accumulate) {
  __shared__ float ps[kTc][kTile];
  __shared__ float qs[kTc][kTile];
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int64_t i0 = static_cast<int64_t>(blockIdx.y) * kTile, j0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int64_t tb = static_cast<int64_t>(blockIdx.z) * t_per_split;
  const int64_t te = std::min(T, tb + t_per_split);
  float acc[4][4] = {};
  for (int64_t t0 = tb; t0 < te; t0 += kTc) {
    for (int e = tid; e < kTc * kTile; e += kThr) {
      const int tt = e / kTile, c = e % kTile;
      const int64_t t = t0 + tt;
      const bool tok = t < te;
      ps[tt][c] = (tok && i0 + c < I) ? to_f32(P[t * I + i0 + c]) : 0.0f;
      qs[tt][c] = (tok && j0 + c < J) ? to_f32(Q[t * J + j0 + c]) : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int tt = 0; tt < kTc; ++tt) {
      float pv[4], qv[4];
#pragma unroll
      for (int a = 0; a < 4; ++a) pv[a] = ps[tt][ty + 16 * a];
#pragma unroll
      for (int b = 0; b < 4; ++b) qv[b] = qs[tt][tx + 16 * b];
#pragma unroll
      for (int a = 0; a < 4; ++a)
#pragma unroll
        for (int b = 0; b < 4; ++b) acc[a][b] = fmaf(pv[a], qv[b], acc[a][b]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int a = 0; a < 4; ++a) {
    const int64_t i = i0 + ty + 16 * a;
    if (i >= I) continue;
#pragma unroll
    for (int b = 0; b < 4; ++b) {
      const int64_t j = j0 + tx + 16 * b;
      if (j >= J) continue;
      float* c = C + i * J + j;
      const float v = s * acc[a][b];
      if (atomic) atomicAdd(c, v);
      else *c = accumulate ? *c + v : v;
    }
  }
}

template <class TP, class TQ>
void launch_tn(const TP* P, const TQ* Q, float* C, int64_t T, int64_t I, int64_t J, float s, bool accumulate,
               cudaStream_t stream) {
  const int64_t gx = (J + kTile - 1) / kTile, gy = (I + kTile - 1) / kTile;
  GRAFT_CHECK(gy <= 65535, "lora_grad: {} output rows exceed the grid limit", I);
  const int sms = nf4k::current_device_info().sm_count;
  const int64_t want = (4 * static_cast<int64_t>(sms) + gx * gy - 1) / (gx * gy);
  const int64_t max_splits = std::max<int64_t>(1, T / 256);  // keep >= 256 rows of T per split
  const int64_t splits = std::clamp<int64_t>(want, 1, std::min<int64_t>(max_splits, 65535));
  const int64_t per = (T + splits - 1) / splits;
  const bool atomic = splits > 1;
  if (atomic && !accumulate) GRAFT_CUDA_CHECK(cudaMemsetAsync(C, 0, static_cast<size_t>(I * J) * sizeof(float), stream));
  GRAFT_LAUNCH(dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy), static_cast<unsigned>(splits)),
                           kThr, 0, stream, tn_gemm_kernel<TP, TQ>)(P, Q, C, T, I, J, per, s, atomic, accumulate);
  GRAFT_CUDA_CHECK_LAUNCH();
}

}  // namespace

void LoraGradDesc::validate() const {
  const char* who = "lora_grad";
  GRAFT_CHECK(t >= 0 && r >= 1, "{}: T = {} must be >= 0 and r = {} >= 1", who, t, r);
  if (da != nullptr) {
    GRAFT_CHECK(k > 0, "{}: dA needs K > 0, K = {}", who, k);
    GRAFT_CHECK(t == 0 || (dyb != nullptr && x != nullptr), "{}: dA needs dyb [T, r] and x [T, K]", who);
  }
  if (db != nullptr) {
    GRAFT_CHECK(n > 0, "{}: dB needs N > 0, N = {}", who, n);
    GRAFT_CHECK(t == 0 || (dy != nullptr && xa != nullptr), "{}: dB needs dy [T, N] and xa [T, r]", who);
  }
}

void lora_grad(const LoraGradDesc& d, cudaStream_t stream) {
  d.validate();
  if (d.t == 0) {  // empty sum: = writes zeros, += leaves the gradient alone
    if (!d.accumulate && d.da) GRAFT_CUDA_CHECK(cudaMemsetAsync(d.da, 0, static_cast<size_t>(d.r * d.k) * sizeof(float), stream));
    if (!d.accumulate && d.db) GRAFT_CUDA_CHECK(cudaMemsetAsync(d.db, 0, static_cast<size_t>(d.n * d.r) * sizeof(float), stream));
    return;
  }
  if (d.da != nullptr) launch_tn(d.dyb, d.x, d.da, d.t, d.r, d.k, d.scale, d.accumulate, stream);
  if (d.db != nullptr) launch_tn(d.dy, d.xa, d.db, d.t, d.n, d.r, d.scale, d.accumulate, stream);
}

}  // namespace graft::cuda
