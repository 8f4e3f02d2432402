// CUDA kernels of the dense training step that are not GEMMs (kernels/cuda/{rmsnorm,swiglu,rope,
// cross_entropy,adamw}.cu). Conventions (docs/kernels.md): row-major contiguous device pointers,
// bf16 = __nv_bfloat16 activations, fp32 accumulation, fp32 optimizer state, `=` outputs unless a
// parameter says otherwise, every reduction in a fixed order (bit-identical from run to run).
// Oracles: graft::cpu::ref (kernels/include/graft/cpu/reference_bwd.hpp) and train/src/optimizer.cpp.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace graft::cuda {

// y = bf16(x · r · w), r = 1/sqrt(mean(x²) + eps) per row; rstd (optional, may be null) = r.
// x, y bf16 [T, H], w bf16 [H], rstd fp32 [T]. T >= 0, H >= 1.
void rmsnorm_fwd(const __nv_bfloat16* x, const __nv_bfloat16* w, float eps, int64_t T, int64_t H, __nv_bfloat16* y,
                 float* rstd, cudaStream_t stream);
// dx = bf16(r·(w⊙dy) − x·r³/H · Σ(w⊙dy⊙x)) (=); dw (optional, may be null) = Σ_t dy·x·r (=, fp32,
// summed over t in ascending order: deterministic). rstd fp32 [T] from rmsnorm_fwd.
void rmsnorm_bwd(const __nv_bfloat16* x, const __nv_bfloat16* w, const __nv_bfloat16* dy, const float* rstd, int64_t T,
                 int64_t H, __nv_bfloat16* dx, float* dw, cudaStream_t stream);

// out = bf16(silu(g)·u).  g, u, out bf16 [n], n >= 0.
void swiglu_fwd(const __nv_bfloat16* g, const __nv_bfloat16* u, int64_t n, __nv_bfloat16* out, cudaStream_t stream);
// dg = bf16(dout·u·σ(g)(1 + g(1 − σ(g)))), du = bf16(dout·silu(g)) (=).  all bf16 [n].
void swiglu_bwd(const __nv_bfloat16* g, const __nv_bfloat16* u, const __nv_bfloat16* dout, int64_t n,
                __nv_bfloat16* dg, __nv_bfloat16* du, cudaStream_t stream);

// Rotary position embeddings on the first rot_dim dims of each head (kernels/cpu/rope.cpp's
// formula): per token t and pair i, f = inv_freq[i]·float(positions[t]) in fp32, c = cos(f)·s_a,
// s = sin(f)·s_a with s_a = attention_scaling; pairs (i, i + rot_dim/2) when !interleaved (HF
// rotate-half), (2i, 2i+1) when interleaved (DeepSeek q_pe/k_pe). fwd rotates by +θ, bwd by −θ
// (the transpose: dx from dy). Dims [rot_dim, head_dim) are copied. (=); in place allowed.
// x, y, dy, dx bf16 [T, heads, head_dim]; positions int32 [T]; inv_freq fp32 [rot_dim/2] (device,
// ops::RopeTable::inv_freq) and attention_scaling (ops::RopeTable::attention_scaling).
// T >= 0, heads >= 1, 2 <= rot_dim <= head_dim, rot_dim even.
void rope_fwd(const __nv_bfloat16* x, const int32_t* positions, const float* inv_freq, float attention_scaling,
              int64_t T, int64_t heads, int64_t head_dim, int rot_dim, bool interleaved, __nv_bfloat16* y,
              cudaStream_t stream);
void rope_bwd(const __nv_bfloat16* dy, const int32_t* positions, const float* inv_freq, float attention_scaling,
              int64_t T, int64_t heads, int64_t head_dim, int rot_dim, bool interleaved, __nv_bfloat16* dx,
              cudaStream_t stream);

// Fused cross-entropy, one block per row: loss[t] = logsumexp(logits[t]) − logits[t, y_t] (fp32, =),
// dlogits[t] = bf16((softmax(logits[t]) − onehot(y_t)) · grad_scale) (=, may be null). Rows with
// label -100 (cpu::ref::cross_entropy's ignore index) get loss 0 and zero dlogits; a label outside
// [0, V) and not -100 gives loss NaN. The mean loss of cpu::ref::cross_entropy is Σ loss / n_valid
// with grad_scale = 1 / n_valid. logits bf16 [T, V], labels int32 [T], loss fp32 [T]. T >= 0, V >= 1.
void cross_entropy_fwd_bwd(const __nv_bfloat16* logits, const int32_t* labels, int64_t T, int64_t V, float grad_scale,
                           float* loss, __nv_bfloat16* dlogits, cudaStream_t stream);

// Global gradient norm with clipping over a flat fp32 buffer, like train::clip_grad_norm:
// norm = sqrt(Σ g²) in fp64, summed in a fixed order that depends on n only (two passes:
// per-block partials into workspace, then one block in index order). Writes *norm_out (device,
// fp64). If max_norm > 0 and coef = max_norm / (norm + 1e-6) < 1: g = float(g · coef) in fp64.
// g fp32 [n], workspace fp64 [grad_norm_workspace_size(n)], norm_out fp64 [1].
int64_t grad_norm_workspace_size(int64_t n);
void grad_norm_clip(float* g, int64_t n, double max_norm, double* workspace, double* norm_out, cudaStream_t stream);

// One AdamW step (train::AdamW::step, torch single-tensor formula, same fp32 operations in the
// same order with no FMA contraction; equal to the CPU to fp32 rounding, which may fuse FMAs). step t >= 1 (already incremented).
// p, g, m, v fp32 [n]; p, m, v updated in place.
struct AdamWStep {
  double lr = 0, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0;
  int64_t t = 1;
};
void adamw_step(float* p, const float* g, float* m, float* v, int64_t n, const AdamWStep& s, cudaStream_t stream);

}  // namespace graft::cuda
