// moe_unpermute: weighted combine of the expert outputs back to token order, + backward.
//
// Contract (device pointers):
//   unpermute: yp [n, H] bf16 -> out [T, H] bf16 (=): out[t] = Σ_j w[t*k+j]·yp[pos[t*k+j]]
//     (w null: weight 1, for routers that scale the expert input), fp32 sum in slot order.
//   unpermute_bwd: dout [T, H] bf16 -> dyp [n, H] bf16 (=) = w·dout[t];
//     dweights [T, k] f32 (=) = <yp[pos[f]], dout[t]> (the router's d combine weight), when requested.
// One block (256 threads) per token; no atomics (deterministic). Limits: H % 8 == 0, k <= 8.
#include "moe_gemm.cuh"
#include "launch.cuh"

namespace graft::cuda::moe {
using detail::bf2f;
using detail::pack_bf2;
namespace {

__device__ __forceinline__ void unpack8(const uint4& q, float v[8]) {
  const uint32_t w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    v[2 * i] = bf2f(static_cast<bf16_t>(w[i] & 0xffffu));
    v[2 * i + 1] = bf2f(static_cast<bf16_t>(w[i] >> 16));
  }
}
__device__ __forceinline__ uint4 pack8(const float v[8]) {
  return make_uint4(pack_bf2(v[0], v[1]), pack_bf2(v[2], v[3]), pack_bf2(v[4], v[5]), pack_bf2(v[6], v[7]));
}

__global__ void __launch_bounds__(256) unpermute_kernel(const bf16_t* __restrict__ yp, int64_t H, int k,
                                                        const int32_t* __restrict__ pos, const float* __restrict__ w,
                                                        bf16_t* __restrict__ out) {
  const int64_t t = blockIdx.x, nv = H / 8;
  for (int64_t v = threadIdx.x; v < nv; v += blockDim.x) {
    float acc[8] = {};
    for (int j = 0; j < k; ++j) {
      const int64_t f = t * k + j;
      const float c = w ? w[f] : 1.0f;
      float y[8];
      unpack8(reinterpret_cast<const uint4*>(yp + static_cast<int64_t>(pos[f]) * H)[v], y);
#pragma unroll
      for (int i = 0; i < 8; ++i) acc[i] += c * y[i];
    }
    reinterpret_cast<uint4*>(out + t * H)[v] = pack8(acc);
  }
}

__global__ void __launch_bounds__(256) unpermute_bwd_kernel(const bf16_t* __restrict__ yp, const bf16_t* __restrict__ dout,
                                                            int64_t H, int k, const int32_t* __restrict__ pos,
                                                            const float* __restrict__ w, bf16_t* __restrict__ dyp,
                                                            float* __restrict__ dw) {
  __shared__ float red[8];
  const int64_t t = blockIdx.x, nv = H / 8;
  for (int j = 0; j < k; ++j) {
    const int64_t f = t * k + j, p = pos[f];
    const float c = w ? w[f] : 1.0f;
    float dot = 0.f;
    for (int64_t v = threadIdx.x; v < nv; v += blockDim.x) {
      float d[8], o[8];
      unpack8(reinterpret_cast<const uint4*>(dout + t * H)[v], d);
#pragma unroll
      for (int i = 0; i < 8; ++i) o[i] = c * d[i];
      reinterpret_cast<uint4*>(dyp + p * H)[v] = pack8(o);
      if (dw) {
        float y[8];
        unpack8(reinterpret_cast<const uint4*>(yp + p * H)[v], y);
#pragma unroll
        for (int i = 0; i < 8; ++i) dot += y[i] * d[i];
      }
    }
    if (!dw) continue;  // block-uniform
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
    __syncthreads();  // red reused across j
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = dot;
    __syncthreads();
    if (threadIdx.x == 0) {
      float s = 0.f;
      for (int i = 0; i < static_cast<int>(blockDim.x >> 5); ++i) s += red[i];
      dw[f] = s;
    }
  }
}

}  // namespace

void unpermute(const UnpermuteArgs& a, cudaStream_t stream) {
  GRAFT_CHECK(a.H % 8 == 0 && a.H > 0, "moe unpermute: H = {} must be a positive multiple of 8", a.H);
  GRAFT_CHECK(a.k >= 1 && a.k <= kMaxTopK, "moe unpermute: k = {} outside [1, {}]", a.k, kMaxTopK);
  if (a.T == 0) return;
  GRAFT_CHECK(a.yp && a.pos && a.out, "moe unpermute: yp / pos / out are null");
  GRAFT_CHECK(a.T <= 0x7fffffff, "moe unpermute: {} tokens is too many", a.T);
  GRAFT_LAUNCH(static_cast<unsigned>(a.T), 256, 0, stream, unpermute_kernel)(a.yp, a.H, a.k, a.pos, a.weights, a.out);
  GRAFT_CUDA_CHECK_LAUNCH();
}

void unpermute_bwd(const UnpermuteBwdArgs& a, cudaStream_t stream) {
  GRAFT_CHECK(a.H % 8 == 0 && a.H > 0, "moe unpermute_bwd: H = {} must be a positive multiple of 8", a.H);
  GRAFT_CHECK(a.k >= 1 && a.k <= kMaxTopK, "moe unpermute_bwd: k = {} outside [1, {}]", a.k, kMaxTopK);
  if (a.T == 0) return;
  GRAFT_CHECK(a.dout && a.pos && a.dyp, "moe unpermute_bwd: dout / pos / dyp are null");
  GRAFT_CHECK(!a.dweights || a.yp, "moe unpermute_bwd: dweights needs yp");
  GRAFT_CHECK(a.T <= 0x7fffffff, "moe unpermute_bwd: {} tokens is too many", a.T);
  GRAFT_LAUNCH(static_cast<unsigned>(a.T), 256, 0, stream, unpermute_bwd_kernel)(a.yp, a.dout, a.H, a.k, a.pos, a.weights,
                                                                        a.dyp, a.dweights);
  GRAFT_CUDA_CHECK_LAUNCH();
}

}  // namespace graft::cuda::moe
