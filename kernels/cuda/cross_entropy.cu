// cross_entropy.cu — fused cross-entropy: per-row loss and dlogits, one block per row.
// Contract (graft/cuda/train_ops.hpp):
//   loss[t] = log Σ_i exp(l[t,i] − m_t) + m_t − l[t, y_t] (fp32, =), m_t = max_i l[t,i]
//   dlogits[t,i] = bf16((exp(l[t,i] − m_t)/Z_t − [i == y_t]) · grad_scale) (=; optional)
//   label -100 (cpu::ref::cross_entropy's ignore index): loss 0, dlogits 0. Other labels outside
//   [0, V): loss NaN (the kernel cannot throw; a NaN loss cannot go unnoticed).
//   logits bf16 [T, V], labels int32 [T], loss fp32 [T], dlogits bf16 [T, V]. T >= 0, V >= 1.
//   One read of the row computes the max and Z together (online softmax: each thread keeps
//   (max, sum) over its strided elements, merged in a fixed order), a second read writes dlogits.
//   fp32 throughout, expf/logf. Deterministic (fixed-order merges, no atomics).
//   Oracle: cpu::ref::cross_entropy (its mean = Σ loss / n_valid with grad_scale = 1/n_valid).
//   Launch: one 256-thread block per row, grid-stride over rows, grid = min(T, 8·SMs of the device).
#include <cmath>

#include "graft/cuda/check.hpp"
#include "graft/cuda/train_ops.hpp"
#include "launch.cuh"
#include "train_common.cuh"

namespace graft::cuda {
namespace {

using traink::kThreads;

// (m, s) ⊕ (mo, so): the sum rescaled to the larger max. (-inf, 0) is the identity.
__device__ __forceinline__ void merge(float& m, float& s, float mo, float so) {
  if (so == 0.0f) return;
  if (s == 0.0f) {
    m = mo;
    s = so;
    return;
  }
  const float mn = fmaxf(m, mo);
  s = s * expf(m - mn) + so * expf(mo - mn);
  m = mn;
}

__global__ void __launch_bounds__(kThreads) cross_entropy_kernel(const __nv_bfloat16* __restrict__ logits,
                                                                 const int32_t* __restrict__ labels, int64_t T,
                                                                 int64_t V, float grad_scale,
                                                                 float* __restrict__ loss,
                                                                 __nv_bfloat16* __restrict__ dlogits) {
  __shared__ float shm[32], shs[32];
  for (int64_t t = blockIdx.x; t < T; t += gridDim.x) {
    const int32_t y = labels[t];
    const __nv_bfloat16* l = logits + t * V;
    if (y == -100) {
      if (threadIdx.x == 0) loss[t] = 0.0f;
      if (dlogits != nullptr)
        for (int64_t i = threadIdx.x; i < V; i += blockDim.x) dlogits[t * V + i] = __float2bfloat16(0.0f);
      continue;
    }
    float m = -INFINITY, s = 0.0f;
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
      const float v = __bfloat162float(l[i]);
      if (v > m) {
        s = s * expf(m - v) + 1.0f;
        m = v;
      } else {
        s += expf(v - m);
      }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float mo = __shfl_xor_sync(0xffffffffu, m, o), so = __shfl_xor_sync(0xffffffffu, s, o);
      merge(m, s, mo, so);
    }
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) {
      shm[w] = m;
      shs[w] = s;
    }
    __syncthreads();
    m = -INFINITY;
    s = 0.0f;
    for (int k = 0; k < static_cast<int>(blockDim.x >> 5); ++k) merge(m, s, shm[k], shs[k]);
    const bool ok = y >= 0 && y < V;
    if (threadIdx.x == 0) loss[t] = ok ? logf(s) + m - __bfloat162float(l[y]) : NAN;
    if (dlogits != nullptr) {
      const float inv = 1.0f / s;
      for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
        const float p = expf(__bfloat162float(l[i]) - m) * inv;
        dlogits[t * V + i] = __float2bfloat16(((ok ? p : NAN) - (i == y ? 1.0f : 0.0f)) * grad_scale);
      }
    }
  }
}

}  // namespace

void cross_entropy_fwd_bwd(const __nv_bfloat16* logits, const int32_t* labels, int64_t T, int64_t V, float grad_scale,
                           float* loss, __nv_bfloat16* dlogits, cudaStream_t stream) {
  GRAFT_CHECK(T >= 0 && V >= 1, "cross_entropy: T = {} must be >= 0 and V = {} >= 1", T, V);
  if (T == 0) return;
  GRAFT_CHECK(logits && labels && loss,
              "cross_entropy: logits [T, V], labels [T] and loss [T] must be device pointers, got null");
  GRAFT_LAUNCH(traink::grid_for(T), kThreads, 0, stream, cross_entropy_kernel)(logits, labels, T, V, grad_scale, loss,
                                                                               dlogits);
  GRAFT_CUDA_CHECK_LAUNCH();
}

}  // namespace graft::cuda
