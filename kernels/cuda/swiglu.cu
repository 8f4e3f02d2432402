// swiglu.cu — SwiGLU forward and backward (elementwise).
// Contract (graft/cuda/train_ops.hpp):
//   fwd: out = bf16(silu(g)·u);  bwd: dg = bf16(dout·u·σ(g)(1 + g(1 − σ(g)))), du = bf16(dout·silu(g)) (=)
//   g, u, out, dout, dg, du bf16 [n], fp32 math (expf, not __expf). Any n >= 0. Deterministic (no reductions).
//   Oracle: cpu::ref::swiglu_fwd / swiglu_bwd.
//   Launch: grid-stride loop, 256 threads, grid = min(ceil(n/256), 8·SMs of the current device).
#include "graft/cuda/check.hpp"
#include "graft/cuda/train_ops.hpp"
#include "launch.cuh"
#include "train_common.cuh"

namespace graft::cuda {
namespace {

using traink::kThreads;

__global__ void __launch_bounds__(kThreads) swiglu_fwd_kernel(const __nv_bfloat16* __restrict__ g,
                                                              const __nv_bfloat16* __restrict__ u, int64_t n,
                                                              __nv_bfloat16* __restrict__ out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float gv = __bfloat162float(g[i]);
    out[i] = __float2bfloat16(gv / (1.0f + expf(-gv)) * __bfloat162float(u[i]));
  }
}

__global__ void __launch_bounds__(kThreads) swiglu_bwd_kernel(const __nv_bfloat16* __restrict__ g,
                                                              const __nv_bfloat16* __restrict__ u,
                                                              const __nv_bfloat16* __restrict__ dout, int64_t n,
                                                              __nv_bfloat16* __restrict__ dg,
                                                              __nv_bfloat16* __restrict__ du) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float gv = __bfloat162float(g[i]), uv = __bfloat162float(u[i]), d = __bfloat162float(dout[i]);
    const float s = 1.0f / (1.0f + expf(-gv));
    dg[i] = __float2bfloat16(d * uv * s * (1.0f + gv * (1.0f - s)));
    du[i] = __float2bfloat16(d * gv * s);
  }
}

}  // namespace

void swiglu_fwd(const __nv_bfloat16* g, const __nv_bfloat16* u, int64_t n, __nv_bfloat16* out, cudaStream_t stream) {
  GRAFT_CHECK(n >= 0, "swiglu_fwd: n = {} must be >= 0", n);
  if (n == 0) return;
  GRAFT_CHECK(g && u && out, "swiglu_fwd: g, u, out [n] must be device pointers, got null");
  GRAFT_LAUNCH(traink::grid_for((n + kThreads - 1) / kThreads), kThreads, 0, stream, swiglu_fwd_kernel)(g, u, n, out);
  GRAFT_CUDA_CHECK_LAUNCH();
}

void swiglu_bwd(const __nv_bfloat16* g, const __nv_bfloat16* u, const __nv_bfloat16* dout, int64_t n,
                __nv_bfloat16* dg, __nv_bfloat16* du, cudaStream_t stream) {
  GRAFT_CHECK(n >= 0, "swiglu_bwd: n = {} must be >= 0", n);
  if (n == 0) return;
  GRAFT_CHECK(g && u && dout && dg && du, "swiglu_bwd: g, u, dout, dg, du [n] must be device pointers, got null");
  GRAFT_LAUNCH(traink::grid_for((n + kThreads - 1) / kThreads), kThreads, 0, stream, swiglu_bwd_kernel)(
      g, u, dout, n, dg, du);
  GRAFT_CUDA_CHECK_LAUNCH();
}

}  // namespace graft::cuda
