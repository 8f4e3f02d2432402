// adamw.cu — fused AdamW step and global gradient norm with clipping over flat fp32 buffers.
// Contract (graft/cuda/train_ops.hpp):
//   grad_norm_clip: norm = sqrt(Σ g²) accumulated in fp64 (train::clip_grad_norm accumulates in
//     double too), written to norm_out[0] on the device; if max_norm > 0 and
//     coef = max_norm / (norm + 1e-6) < 1 then g = float(double(g) · coef). Two passes: P blocks
//     write fp64 partials to workspace, one block sums them in index order; P = clamp(ceil(n /
//     4096), 1, 1024) depends on n only, so the norm is bit-identical across runs AND devices.
//     No host synchronisation: the clip pass reads the norm from device memory.
//   adamw_step: per element, exactly train::AdamW::step's fp32 operations in its order, every
//     multiply/add rounded separately (__fmul_rn/__fadd_rn: nvcc would otherwise contract to
//     FMA), IEEE division and sqrtf. Agreement with the CPU is to fp32 rounding, not bitwise: the
//     CPU build (x86-64-v3) lets GCC contract the moment updates into FMAs. Scalars (step size,
//     sqrt(bc2), decay) are computed on the host in double exactly as the CPU does.
//   g, p, m, v fp32 [n], n >= 0; workspace fp64 [grad_norm_workspace_size(n)]; norm_out fp64 [1].
//   Launch: 256 threads; adamw_step and the clip pass grid-stride with grid = min(ceil(n/256),
//   8·SMs of the current device); elementwise, so the grid does not change the result.
#include <cmath>

#include "graft/cuda/check.hpp"
#include "graft/cuda/train_ops.hpp"
#include "launch.cuh"
#include "train_common.cuh"

namespace graft::cuda {
namespace {

using traink::kThreads;
constexpr int64_t kPerBlock = 4096, kMaxPartials = 1024;

int64_t partials(int64_t n) { return std::clamp<int64_t>((n + kPerBlock - 1) / kPerBlock, 1, kMaxPartials); }

// Tree sum of sh[0..kThreads) in a fixed order; the result in sh[0].
__device__ __forceinline__ void tree_sum(double* sh) {
  for (int o = kThreads / 2; o > 0; o >>= 1) {
    __syncthreads();
    if (static_cast<int>(threadIdx.x) < o) sh[threadIdx.x] += sh[threadIdx.x + o];
  }
  __syncthreads();
}

__global__ void __launch_bounds__(kThreads) sumsq_partial_kernel(const float* __restrict__ g, int64_t n,
                                                                 double* __restrict__ part) {
  __shared__ double sh[kThreads];
  double acc = 0.0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const double v = g[i];
    acc += v * v;
  }
  sh[threadIdx.x] = acc;
  tree_sum(sh);
  if (threadIdx.x == 0) part[blockIdx.x] = sh[0];
}

__global__ void __launch_bounds__(kThreads) sumsq_final_kernel(const double* __restrict__ part, int64_t P,
                                                               double* __restrict__ norm_out) {
  __shared__ double sh[kThreads];
  double acc = 0.0;
  for (int64_t i = threadIdx.x; i < P; i += blockDim.x) acc += part[i];
  sh[threadIdx.x] = acc;
  tree_sum(sh);
  if (threadIdx.x == 0) norm_out[0] = sqrt(sh[0]);
}

__global__ void __launch_bounds__(kThreads) clip_kernel(float* __restrict__ g, int64_t n, double max_norm,
                                                        const double* __restrict__ norm) {
  const double coef = max_norm / (norm[0] + 1e-6);
  if (!(coef < 1.0)) return;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    g[i] = static_cast<float>(static_cast<double>(g[i]) * coef);
}

__global__ void __launch_bounds__(kThreads) adamw_kernel(float* __restrict__ p, const float* __restrict__ g,
                                                         float* __restrict__ m, float* __restrict__ v, int64_t n,
                                                         float b1, float b2, float step_size, float bc2_sqrt,
                                                         float decay, float eps) {
  const float omb1 = 1.0f - b1, omb2 = 1.0f - b2;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float gi = g[i];
    const float pi = __fmul_rn(p[i], decay);
    const float mi = __fadd_rn(__fmul_rn(b1, m[i]), __fmul_rn(omb1, gi));
    const float vi = __fadd_rn(__fmul_rn(b2, v[i]), __fmul_rn(__fmul_rn(omb2, gi), gi));
    const float denom = __fadd_rn(sqrtf(vi) / bc2_sqrt, eps);
    m[i] = mi;
    v[i] = vi;
    p[i] = __fsub_rn(pi, __fmul_rn(step_size, mi) / denom);
  }
}

}  // namespace

int64_t grad_norm_workspace_size(int64_t n) { return partials(n); }

void grad_norm_clip(float* g, int64_t n, double max_norm, double* workspace, double* norm_out, cudaStream_t stream) {
  GRAFT_CHECK(n >= 0, "grad_norm_clip: n = {} must be >= 0", n);
  GRAFT_CHECK(workspace && norm_out && (n == 0 || g),
              "grad_norm_clip: g [n], workspace [grad_norm_workspace_size(n)] and norm_out [1] must be device pointers");
  const int64_t P = partials(n);
  GRAFT_LAUNCH(static_cast<unsigned>(P), kThreads, 0, stream, sumsq_partial_kernel)(g, n, workspace);
  GRAFT_CUDA_CHECK_LAUNCH();
  GRAFT_LAUNCH(1, kThreads, 0, stream, sumsq_final_kernel)(workspace, P, norm_out);
  GRAFT_CUDA_CHECK_LAUNCH();
  if (max_norm > 0 && n > 0) {
    GRAFT_LAUNCH(traink::grid_for((n + kThreads - 1) / kThreads), kThreads, 0, stream, clip_kernel)(g, n, max_norm,
                                                                                                   norm_out);
    GRAFT_CUDA_CHECK_LAUNCH();
  }
}

void adamw_step(float* p, const float* g, float* m, float* v, int64_t n, const AdamWStep& s, cudaStream_t stream) {
  GRAFT_CHECK(n >= 0 && s.t >= 1, "adamw_step: n = {} must be >= 0 and step t = {} >= 1", n, s.t);
  if (n == 0) return;
  GRAFT_CHECK(p && g && m && v, "adamw_step: p, g, m, v [n] must be device pointers, got null");
  // Host scalars exactly as train::AdamW::step computes them.
  const double bc1 = 1.0 - std::pow(s.beta1, static_cast<double>(s.t));
  const double bc2 = 1.0 - std::pow(s.beta2, static_cast<double>(s.t));
  const float step_size = static_cast<float>(s.lr / bc1);
  const float bc2_sqrt = static_cast<float>(std::sqrt(bc2));
  const float decay = static_cast<float>(1.0 - s.lr * s.weight_decay);
  GRAFT_LAUNCH(traink::grid_for((n + kThreads - 1) / kThreads), kThreads, 0, stream, adamw_kernel)(
      p, g, m, v, n, static_cast<float>(s.beta1), static_cast<float>(s.beta2), step_size, bc2_sqrt, decay,
      static_cast<float>(s.eps));
  GRAFT_CUDA_CHECK_LAUNCH();
}

}  // namespace graft::cuda
