// rope.cu — rotary position embeddings, forward and backward, for q and k of the dense decoder.
// Contract (graft/cuda/train_ops.hpp):
//   x, y (fwd) / dy, dx (bwd) bf16 [T, heads, head_dim], row-major contiguous; positions int32 [T];
//   the table is graft's ops::RopeTable (ops::rope_table / rope_table_dynamic, as transformers'
//   ROPE_INIT_FUNCTIONS): inv_freq fp32 [rot_dim/2] on the device plus the host scalar
//   attention_scaling. Per token t and pair i < rot_dim/2, exactly like kernels/cpu/rope.cpp:
//     f = inv_freq[i] · float(positions[t])   (fp32 product, transformers' convention)
//     c = cosf(f) · attention_scaling,  s = sinf(f) · attention_scaling   (fp32, not __cosf/__sinf)
//   Pair (a, b): rotate-half (HF Llama, interleaved = false) a = i, b = i + rot_dim/2;
//                interleaved (DeepSeek q_pe/k_pe, interleaved = true) a = 2i, b = 2i + 1.
//   fwd: y[a] = bf16(x[a]·c − x[b]·s),   y[b] = bf16(x[b]·c + x[a]·s)        (rotation by +θ)
//   bwd: dx[a] = bf16(dy[a]·c + dy[b]·s), dx[b] = bf16(dy[b]·c − dy[a]·s)     (rotation by −θ:
//        the transpose of the scaled rotation, cpu::ref::rope_bwd)
//   Dims [rot_dim, head_dim) of every head are copied unchanged (partial rotary, e.g. rot_dim =
//   head_dim · partial_rotary_factor). `=` outputs; in place (y == x, dx == dy) is allowed, any
//   other overlap is not. 2 <= rot_dim <= head_dim, rot_dim even, T >= 0, heads >= 1. Deterministic
//   (no reductions). Oracle: cpu::ref::rope / rope_bwd (reference_bwd.hpp), cpu::rope_rotate_half /
//   cpu::rope_interleaved.
//   Launch: grid-stride loop, 256 threads, one item per (t, head, pair) plus one per copied tail dim;
//   grid = min(ceil(items/256), 8·SMs of the current device). A thread reads both elements of its
//   pair before writing either, so in place is race-free.
#include "graft/cuda/check.hpp"
#include "graft/cuda/train_ops.hpp"
#include "launch.cuh"
#include "train_common.cuh"

namespace graft::cuda {
namespace {

using traink::kThreads;

// sign = +1: forward (rotate by +θ); sign = −1: backward (rotate by −θ). No __restrict__: in and
// out may be the same buffer.
__global__ void __launch_bounds__(kThreads) rope_kernel(const __nv_bfloat16* in, const int32_t* __restrict__ positions,
                                                        const float* __restrict__ inv_freq, float scaling, int64_t T,
                                                        int64_t heads, int64_t D, int rot, bool interleaved,
                                                        float sign, __nv_bfloat16* out) {
  const int64_t half = rot / 2, per_row = half + (D - rot);  // pairs, then tail dims to copy
  const int64_t n = T * heads * per_row;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < n; k += stride) {
    const int64_t row = k / per_row, j = k - row * per_row;  // row = t·heads + h
    const int64_t base = row * D;
    if (j >= half) {  // tail dim rot + (j − half): unchanged
      const int64_t e = base + rot + (j - half);
      if (out != in) out[e] = in[e];
      continue;
    }
    const int64_t t = row / heads;
    const float f = inv_freq[j] * static_cast<float>(positions[t]);
    const float c = cosf(f) * scaling, s = sign * (sinf(f) * scaling);
    const int64_t a = base + (interleaved ? 2 * j : j), b = base + (interleaved ? 2 * j + 1 : j + half);
    const float x1 = __bfloat162float(in[a]), x2 = __bfloat162float(in[b]);
    out[a] = __float2bfloat16(x1 * c - x2 * s);
    out[b] = __float2bfloat16(x2 * c + x1 * s);
  }
}

void rope_launch(const char* name, const __nv_bfloat16* in, const int32_t* positions, const float* inv_freq,
                 float scaling, int64_t T, int64_t heads, int64_t head_dim, int rot_dim, bool interleaved, float sign,
                 __nv_bfloat16* out, cudaStream_t stream) {
  GRAFT_CHECK(T >= 0 && heads >= 1 && head_dim >= 1, "{}: T = {} must be >= 0, heads = {} and head_dim = {} >= 1", name,
              T, heads, head_dim);
  GRAFT_CHECK(rot_dim >= 2 && rot_dim % 2 == 0 && rot_dim <= head_dim,
              "{}: rot_dim = {} must be even and in [2, head_dim = {}] (inv_freq holds rot_dim/2 frequencies)", name,
              rot_dim, head_dim);
  if (T == 0) return;
  GRAFT_CHECK(in && positions && inv_freq && out,
              "{}: input and output [T, heads, head_dim], positions [T] and inv_freq [rot_dim/2] must be device "
              "pointers, got null",
              name);
  const int64_t items = T * heads * (rot_dim / 2 + (head_dim - rot_dim));
  GRAFT_LAUNCH(traink::grid_for((items + kThreads - 1) / kThreads), kThreads, 0, stream, rope_kernel)(
      in, positions, inv_freq, scaling, T, heads, head_dim, rot_dim, interleaved, sign, out);
  GRAFT_CUDA_CHECK_LAUNCH();
}

}  // namespace

void rope_fwd(const __nv_bfloat16* x, const int32_t* positions, const float* inv_freq, float attention_scaling,
              int64_t T, int64_t heads, int64_t head_dim, int rot_dim, bool interleaved, __nv_bfloat16* y,
              cudaStream_t stream) {
  rope_launch("rope_fwd", x, positions, inv_freq, attention_scaling, T, heads, head_dim, rot_dim, interleaved, 1.0f, y,
              stream);
}

void rope_bwd(const __nv_bfloat16* dy, const int32_t* positions, const float* inv_freq, float attention_scaling,
              int64_t T, int64_t heads, int64_t head_dim, int rot_dim, bool interleaved, __nv_bfloat16* dx,
              cudaStream_t stream) {
  rope_launch("rope_bwd", dy, positions, inv_freq, attention_scaling, T, heads, head_dim, rot_dim, interleaved, -1.0f,
              dx, stream);
}

}  // namespace graft::cuda
