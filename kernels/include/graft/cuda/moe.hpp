// CUDA MoE training kernels: routing (+ backward), the device-built permutation plan, permute /
// unpermute (+ backward), and the grouped NF4 expert GEMMs with per-expert LoRA and fused SwiGLU
// (+ backward). Host entry points take descriptor structs of DEVICE pointers, validate them
// (throwing graft::Error naming the violated condition) and enqueue on `stream` without any host
// synchronisation, so a whole layer can be captured in a CUDA graph. CPU oracle: graft/cpu/moe_ref.hpp.
//
// Shapes: T tokens, k = top_k slots, n = T*k routed rows, E experts, H hidden, I expert
// intermediate, r LoRA rank. bf16 tensors are passed as their 16-bit patterns (bf16_t), row-major,
// contiguous, 16-byte aligned (cudaMalloc'd). Row-major widths H, I, r must be multiples of 8.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "graft/backend/ops_desc.hpp"

namespace graft::cuda::moe {

using bf16_t = uint16_t;  // bfloat16 bits

inline constexpr int kMaxRouteExperts = 256;  // moe_route / moe_route_bwd
inline constexpr int kMaxTopK = 8;
inline constexpr int kMaxPlanExperts = 1024;  // build_plan
inline constexpr int kTileM = 128;            // row tile of the grouped GEMMs (plan.tile_offsets)
inline constexpr int kMaxLoraRank = 64;

// ---------------------------------------------------------------- routing (moe_route.cu)
struct RouteArgs {
  const float* logits = nullptr;  // [T, E] f32
  int64_t T = 0;
  int E = 0;
  ops::RouterParams params;       // params.correction_bias is a DEVICE pointer [E] f32 (or null)
  int32_t* ids = nullptr;         // [T, k] (=), descending score order, ties -> lower index
  float* weights = nullptr;       // [T, k] (=)
};
void route(const RouteArgs& a, cudaStream_t stream);

// d logits from d weights (moe_route_bwd.cu); formulas: graft/cpu/moe_ref.hpp.
struct RouteBwdArgs {
  const float* logits = nullptr;    // [T, E] f32
  int64_t T = 0;
  int E = 0;
  ops::RouterParams params;         // correction_bias unused (it gets no gradient)
  const int32_t* ids = nullptr;     // [T, k] from route()
  const float* dweights = nullptr;  // [T, k]
  float* dlogits = nullptr;         // [T, E] (=)
};
void route_bwd(const RouteBwdArgs& a, cudaStream_t stream);

// ---------------------------------------------------------------- plan + permute (moe_permute.cu)
// Rows sorted by (expert, token, slot) exactly like cpu::moe_permute_plan, built on device.
struct Plan {
  int32_t* order = nullptr;         // [n]   order[p] = flat index f = t*k + j
  int32_t* pos = nullptr;           // [n]   pos[f] = p (inverse of order)
  int32_t* counts = nullptr;        // [E]
  int32_t* offsets = nullptr;       // [E+1] offsets[E] = n
  int32_t* tile_offsets = nullptr;  // [E+1] prefix sum of ceil(counts[e] / kTileM)
};
size_t plan_workspace_bytes(int64_t n, int E);
// ids [n] i32 in [0, E) (not checked on device) -> plan (=). workspace: plan_workspace_bytes.
void build_plan(const int32_t* ids, int64_t n, int E, const Plan& plan, void* workspace, cudaStream_t stream);
// Upper bound on Σ_e ceil(counts[e] / kTileM): the grid height of the grouped GEMMs.
int64_t max_row_tiles(int64_t n, int E);

// xp[p] = x[order[p] / k] · (scale ? scale[order[p]] : 1)   x [T, H] bf16 -> xp [n, H] bf16 (=)
struct PermuteArgs {
  const bf16_t* x = nullptr;
  int64_t T = 0, H = 0;
  int k = 0;
  const int32_t* order = nullptr;
  const float* scale = nullptr;  // [T, k] or null (Llama 4: combine weights scale the expert input)
  bf16_t* xp = nullptr;
};
void permute(const PermuteArgs& a, cudaStream_t stream);
// dx[t] = Σ_j scale·dxp[pos[t*k+j]] (=, bf16, fp32 sum);  dscale[f] = <x[t], dxp[pos[f]]> (=, f32) if dscale.
struct PermuteBwdArgs {
  const bf16_t* x = nullptr;    // [T, H] (needed only for dscale)
  const bf16_t* dxp = nullptr;  // [n, H]
  int64_t T = 0, H = 0;
  int k = 0;
  const int32_t* pos = nullptr;
  const float* scale = nullptr;  // [T, k] or null
  bf16_t* dx = nullptr;          // [T, H]
  float* dscale = nullptr;       // [T, k] or null
};
void permute_bwd(const PermuteBwdArgs& a, cudaStream_t stream);

// ---------------------------------------------------------------- unpermute (moe_unpermute.cu)
// out[t] = Σ_j (w ? w[t*k+j] : 1) · yp[pos[t*k+j]], fp32 sum in slot order.  yp [n, H] -> out [T, H] bf16 (=)
struct UnpermuteArgs {
  const bf16_t* yp = nullptr;
  int64_t T = 0, H = 0;
  int k = 0;
  const int32_t* pos = nullptr;
  const float* weights = nullptr;  // [T, k] or null
  bf16_t* out = nullptr;
};
void unpermute(const UnpermuteArgs& a, cudaStream_t stream);
// dyp[pos[f]] = w[f]·dout[t] (=, bf16);  dweights[f] = <yp[pos[f]], dout[t]> (=, f32) if dweights.
struct UnpermuteBwdArgs {
  const bf16_t* yp = nullptr;
  const bf16_t* dout = nullptr;  // [T, H]
  int64_t T = 0, H = 0;
  int k = 0;
  const int32_t* pos = nullptr;
  const float* weights = nullptr;  // [T, k] or null
  bf16_t* dyp = nullptr;           // [n, H]
  float* dweights = nullptr;       // [T, k] or null
};
void unpermute_bwd(const UnpermuteBwdArgs& a, cudaStream_t stream);

// ---------------------------------------------------------------- grouped NF4 GEMMs
// E experts of shape [rows, cols] each, quantized SEPARATELY with bitsandbytes NF4, blocksize 64
// (graft::nf4::quantize per expert), their buffers concatenated expert after expert.
// rows*cols must be a multiple of 64.
struct Nf4Experts {
  const uint8_t* packed = nullptr;         // [E, rows*cols/2]  high nibble = even element
  const float* absmax = nullptr;           // [E, nb] f32 (nb = rows*cols/64), or null when double-quantized:
  const uint8_t* absmax_q = nullptr;       // [E, nb]
  const float* nested_absmax = nullptr;    // [E, ceil(nb/256)]
  const float* nested_offset = nullptr;    // [E]
  const float* dynamic_map = nullptr;      // [256] nf4::dynamic_map_signed() (double quant only)
  int64_t rows = 0, cols = 0;
};
// Per-expert LoRA of one grouped GEMM: y += scale·(x·A_eᵀ)·B_eᵀ. rank 0 = none.
struct ExpertLoraDev {
  const bf16_t* a = nullptr;  // [E, r, in]
  const bf16_t* b = nullptr;  // [E, out, r]
  int rank = 0;               // multiple of 8, <= kMaxLoraRank
  float scale = 1.0f;
};

// One grouped GEMM (moe_grouped_nf4_matmul.cu): y[p] = x[p]·W_eᵀ + s·z[p]·B_eᵀ, z = x·A_eᵀ.
struct GroupedMatmulArgs {
  const bf16_t* x = nullptr;  // [n, K] expert-major rows (plan order)
  int64_t n = 0;
  int E = 0;
  const int32_t* offsets = nullptr;       // [E+1] (device)
  const int32_t* tile_offsets = nullptr;  // [E+1] (device)
  Nf4Experts w;                           // W [E, N, K]: rows = N, cols = K
  ExpertLoraDev lora;
  bf16_t* z = nullptr;  // [n, r] (=) s·x·Aᵀ, saved for backward; required when lora.rank > 0
  bf16_t* y = nullptr;  // [n, N] (=)
};
void grouped_nf4_matmul(const GroupedMatmulArgs& a, cudaStream_t stream);

// The routed expert MLP on permuted rows: h = silu(gate)·up with [gate | up] = xp·W_guᵀ (+LoRA),
// yp = h·W_downᵀ (+LoRA). SwiGLU is fused into the gate_up GEMM epilogue (the gate_up tile
// interleaves gate and up rows so each thread holds both).
struct ExpertMlpArgs {
  int E = 0;
  int64_t n = 0, H = 0, I = 0;
  const int32_t* offsets = nullptr;
  const int32_t* tile_offsets = nullptr;
  Nf4Experts w_gu;    // [E, 2I, H] rows 0..I-1 gate, I..2I-1 up
  Nf4Experts w_down;  // [E, H, I]
  ExpertLoraDev lora_gu, lora_down;  // A [E, r, H] / B [E, 2I, r];  A [E, r, I] / B [E, H, r]
};
struct ExpertMlpSaved {   // written by the forward, read by the backward
  bf16_t* gu = nullptr;      // [n, 2I] pre-activation
  bf16_t* h = nullptr;       // [n, I]
  bf16_t* z_gu = nullptr;    // [n, r_gu]   (LoRA only)
  bf16_t* z_down = nullptr;  // [n, r_down] (LoRA only)
};
// xp [n, H] -> yp [n, H] (=)
void expert_mlp_fwd(const ExpertMlpArgs& a, const bf16_t* xp, const ExpertMlpSaved& saved, bf16_t* yp,
                    cudaStream_t stream);

// Backward (moe_grouped_nf4_matmul_bwd.cu).
struct ExpertMlpBwdScratch {
  bf16_t* dgu = nullptr;  // [n, 2I]
  bf16_t* dz = nullptr;   // [n, max(r_gu, r_down)] (LoRA only)
};
struct ExpertMlpGrads {    // f32, (=); null when that LoRA is absent
  float* da_gu = nullptr;    // [E, r, H]
  float* db_gu = nullptr;    // [E, 2I, r]
  float* da_down = nullptr;  // [E, r, I]
  float* db_down = nullptr;  // [E, H, r]
};
// dyp [n, H] -> dxp [n, H] (=) and the LoRA gradients (=).
void expert_mlp_bwd(const ExpertMlpArgs& a, const bf16_t* xp, const ExpertMlpSaved& saved, const bf16_t* dyp,
                    const ExpertMlpBwdScratch& scratch, const ExpertMlpGrads& grads, bf16_t* dxp, cudaStream_t stream);

// Backward of one grouped GEMM: dx = dy·W_e + dz·A_e with dz = s·dy·B_e (=);
// dA_e = dzᵀ·x_e, dB_e = dy_eᵀ·z_e (z as saved by grouped_nf4_matmul) (=, f32).
struct GroupedMatmulBwdArgs {
  GroupedMatmulArgs fwd;  // x, z, w, lora, offsets as in the forward (y unused)
  const bf16_t* dy = nullptr;  // [n, N]
  bf16_t* dz = nullptr;        // [n, r] scratch (LoRA only)
  bf16_t* dx = nullptr;        // [n, K]
  float* da = nullptr;         // [E, r, K] or null
  float* db = nullptr;         // [E, N, r] or null
};
void grouped_nf4_matmul_bwd(const GroupedMatmulBwdArgs& a, cudaStream_t stream);

}  // namespace graft::cuda::moe
