// rmsnorm.cu — RMSNorm forward and backward (dx, dw) of the dense decoder.
// Contract (graft/cuda/train_ops.hpp):
//   fwd: y[t] = bf16(x[t] · r_t · w), r_t = 1/sqrt(mean_i x[t,i]² + eps), rstd[t] = r_t (optional)
//   bwd: dx[t] = bf16(r_t·(w⊙dy[t]) − x[t]·r_t³/H · Σ_i w_i dy[t,i] x[t,i]) (=)
//        dw[i] = Σ_t dy[t,i] x[t,i] r_t (=, fp32), t ascending: deterministic, no atomics.
//   x, y, dy, dx bf16 [T, H]; w bf16 [H]; rstd fp32 [T]; fp32 accumulation. Any T >= 0, H >= 1.
//   Oracle: cpu::ref::rmsnorm_fwd / rmsnorm_bwd.
//   Launch: one 256-thread block per row in a grid-stride loop over rows; grid = min(T, 8·SMs of
//   the current device). dw: one thread per column, 256-column blocks, grid-stride likewise. The
//   row sums go through traink::block_sum (fixed order), so results do not depend on the grid.
#include "graft/cuda/check.hpp"
#include "graft/cuda/train_ops.hpp"
#include "launch.cuh"
#include "train_common.cuh"

namespace graft::cuda {
namespace {

using traink::kThreads;

__global__ void __launch_bounds__(kThreads) rmsnorm_fwd_kernel(const __nv_bfloat16* __restrict__ x,
                                                               const __nv_bfloat16* __restrict__ w, float eps,
                                                               int64_t T, int64_t H, __nv_bfloat16* __restrict__ y,
                                                               float* __restrict__ rstd) {
  __shared__ float sh[32];
  for (int64_t t = blockIdx.x; t < T; t += gridDim.x) {
    const __nv_bfloat16* xr = x + t * H;
    float ss = 0.0f;
    for (int64_t i = threadIdx.x; i < H; i += blockDim.x) {
      const float v = __bfloat162float(xr[i]);
      ss += v * v;
    }
    ss = traink::block_sum(ss, sh);
    const float r = 1.0f / sqrtf(ss / static_cast<float>(H) + eps);
    if (rstd != nullptr && threadIdx.x == 0) rstd[t] = r;
    for (int64_t i = threadIdx.x; i < H; i += blockDim.x)
      y[t * H + i] = __float2bfloat16(__bfloat162float(xr[i]) * r * __bfloat162float(w[i]));
  }
}

__global__ void __launch_bounds__(kThreads) rmsnorm_bwd_dx_kernel(const __nv_bfloat16* __restrict__ x,
                                                                  const __nv_bfloat16* __restrict__ w,
                                                                  const __nv_bfloat16* __restrict__ dy,
                                                                  const float* __restrict__ rstd, int64_t T,
                                                                  int64_t H, __nv_bfloat16* __restrict__ dx) {
  __shared__ float sh[32];
  for (int64_t t = blockIdx.x; t < T; t += gridDim.x) {
    float dot = 0.0f;
    for (int64_t i = threadIdx.x; i < H; i += blockDim.x)
      dot += __bfloat162float(w[i]) * __bfloat162float(dy[t * H + i]) * __bfloat162float(x[t * H + i]);
    dot = traink::block_sum(dot, sh);
    const float r = rstd[t];
    const float c = r * r * r / static_cast<float>(H) * dot;
    for (int64_t i = threadIdx.x; i < H; i += blockDim.x)
      dx[t * H + i] = __float2bfloat16(r * __bfloat162float(w[i]) * __bfloat162float(dy[t * H + i]) -
                                       __bfloat162float(x[t * H + i]) * c);
  }
}

__global__ void __launch_bounds__(kThreads) rmsnorm_bwd_dw_kernel(const __nv_bfloat16* __restrict__ x,
                                                                  const __nv_bfloat16* __restrict__ dy,
                                                                  const float* __restrict__ rstd, int64_t T,
                                                                  int64_t H, float* __restrict__ dw) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < H; i += stride) {
    float acc = 0.0f;
    for (int64_t t = 0; t < T; ++t) acc += __bfloat162float(dy[t * H + i]) * __bfloat162float(x[t * H + i]) * rstd[t];
    dw[i] = acc;
  }
}

}  // namespace

void rmsnorm_fwd(const __nv_bfloat16* x, const __nv_bfloat16* w, float eps, int64_t T, int64_t H, __nv_bfloat16* y,
                 float* rstd, cudaStream_t stream) {
  GRAFT_CHECK(T >= 0 && H >= 1, "rmsnorm_fwd: T = {} must be >= 0 and H = {} >= 1", T, H);
  if (T == 0) return;
  GRAFT_CHECK(x && w && y, "rmsnorm_fwd: x [T, H], w [H] and y [T, H] must be device pointers, got null");
  GRAFT_LAUNCH(traink::grid_for(T), kThreads, 0, stream, rmsnorm_fwd_kernel)(x, w, eps, T, H, y, rstd);
  GRAFT_CUDA_CHECK_LAUNCH();
}

void rmsnorm_bwd(const __nv_bfloat16* x, const __nv_bfloat16* w, const __nv_bfloat16* dy, const float* rstd, int64_t T,
                 int64_t H, __nv_bfloat16* dx, float* dw, cudaStream_t stream) {
  GRAFT_CHECK(T >= 0 && H >= 1, "rmsnorm_bwd: T = {} must be >= 0 and H = {} >= 1", T, H);
  if (T == 0) {  // empty sum: dw = 0
    if (dw) GRAFT_CUDA_CHECK(cudaMemsetAsync(dw, 0, static_cast<size_t>(H) * sizeof(float), stream));
    return;
  }
  GRAFT_CHECK(x && w && dy && rstd && dx,
              "rmsnorm_bwd: x, dy, dx [T, H], w [H] and rstd [T] (from rmsnorm_fwd) must be device pointers");
  GRAFT_LAUNCH(traink::grid_for(T), kThreads, 0, stream, rmsnorm_bwd_dx_kernel)(x, w, dy, rstd, T, H, dx);
  GRAFT_CUDA_CHECK_LAUNCH();
  if (dw != nullptr) {
    GRAFT_LAUNCH(traink::grid_for((H + kThreads - 1) / kThreads), kThreads, 0, stream, rmsnorm_bwd_dw_kernel)(
        x, dy, rstd, T, H, dw);
    GRAFT_CUDA_CHECK_LAUNCH();
  }
}

}  // namespace graft::cuda
