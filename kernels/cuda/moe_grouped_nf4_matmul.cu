// moe_grouped_nf4_matmul: per-expert GEMM with NF4 expert weights, per-expert LoRA, and the routed
// expert MLP forward (gate_up -> fused SwiGLU -> down).
//
// Contract (all device pointers, row-major, contiguous, 16-byte aligned):
//   grouped_nf4_matmul:  x [n, K] bf16 (expert-major rows, plan order), W NF4 [E, N, K] (bnb, block 64,
//     plain or double-quant absmax), LoRA A [E, r, K] / B [E, N, r] bf16, scale s.
//     z [n, r] bf16 (=) = s·x·A_eᵀ   (saved for backward; rounded to bf16 before the expand)
//     y [n, N] bf16 (=) = x·W_eᵀ + z·B_eᵀ   fp32 accumulate (tensor cores, mma.sync m16n8k16)
//   expert_mlp_fwd:  xp [n, H] -> gu [n, 2I] (=, pre-activation, bf16), h [n, I] (=) = silu(gate)·up
//     computed from the fp32 accumulators in the gate_up epilogue, z_gu / z_down (=), yp [n, H] (=).
// Limits: K % 16 == 0, N % 8 == 0 (H, I multiples of 16), rows·cols % 64 == 0 per expert,
//   rank ∈ {0, 8, 16, ..., 64}, E <= 1024, Σ row tiles <= 65535 (n up to ~8M rows).
// Rows of empty experts: none (no tile); rows past the last expert tile are never touched.
// W is dequantized tile by tile into shared memory inside the main loop; no bf16 copy of W is
// written to global memory. No host synchronisation (graph-capturable).
#include "moe_gemm.cuh"

namespace graft::cuda::moe {
using namespace detail;

void grouped_nf4_matmul(const GroupedMatmulArgs& a, cudaStream_t stream) {
  check_rows(a.n, a.E, a.offsets, a.tile_offsets);
  const int64_t N = a.w.rows, K = a.w.cols;
  check_nf4(a.w, N, K, "W");
  check_lora(a.lora, "W");
  GRAFT_CHECK(N % 8 == 0, "grouped_nf4_matmul: N = {} must be a multiple of 8", N);
  GRAFT_CHECK(a.x != nullptr && a.y != nullptr, "grouped_nf4_matmul: x / y are null");
  GRAFT_CHECK(a.lora.rank == 0 || a.z != nullptr, "grouped_nf4_matmul: LoRA needs the z buffer [n, r]");
  if (a.n == 0) return;
  const int r = a.lora.rank;
  if (r > 0) {  // z = s·x·Aᵀ
    GemmParams p = gemm_params(a.offsets, a.tile_offsets, a.E);
    p.ncols = r;
    p.a1 = a.x;
    p.k1 = K;
    p.d1 = a.lora.a;
    p.d1_stride = static_cast<int64_t>(r) * K;
    p.alpha1 = a.lora.scale;
    p.out = a.z;
    launch_gemm<BKind::DenseNT, Epi::Store>(p, a.n, stream);
  }
  GemmParams p = gemm_params(a.offsets, a.tile_offsets, a.E);
  p.ncols = N;
  p.a1 = a.x;
  p.k1 = K;
  p.w = view_of(a.w);
  p.a2 = a.z;
  p.k2 = r;
  p.d2 = a.lora.b;
  p.d2_stride = N * r;
  p.out = a.y;
  launch_gemm<BKind::Nf4NT, Epi::Store>(p, a.n, stream);
}

void expert_mlp_fwd(const ExpertMlpArgs& a, const bf16_t* xp, const ExpertMlpSaved& saved, bf16_t* yp,
                    cudaStream_t stream) {
  check_rows(a.n, a.E, a.offsets, a.tile_offsets);
  const int64_t H = a.H, I = a.I;
  GRAFT_CHECK(H % 16 == 0 && I % 16 == 0, "expert_mlp_fwd: H = {} and I = {} must be multiples of 16", H, I);
  check_nf4(a.w_gu, 2 * I, H, "gate_up");
  check_nf4(a.w_down, H, I, "down");
  check_lora(a.lora_gu, "gate_up");
  check_lora(a.lora_down, "down");
  GRAFT_CHECK(xp && yp && saved.h && saved.gu, "expert_mlp_fwd: xp, yp, saved.h and saved.gu are required");
  GRAFT_CHECK(a.lora_gu.rank == 0 || saved.z_gu, "expert_mlp_fwd: gate_up LoRA needs saved.z_gu [n, r]");
  GRAFT_CHECK(a.lora_down.rank == 0 || saved.z_down, "expert_mlp_fwd: down LoRA needs saved.z_down [n, r]");
  if (a.n == 0) return;
  const int rg = a.lora_gu.rank, rd = a.lora_down.rank;
  if (rg > 0) {
    GemmParams p = gemm_params(a.offsets, a.tile_offsets, a.E);
    p.ncols = rg;
    p.a1 = xp;
    p.k1 = H;
    p.d1 = a.lora_gu.a;
    p.d1_stride = static_cast<int64_t>(rg) * H;
    p.alpha1 = a.lora_gu.scale;
    p.out = saved.z_gu;
    launch_gemm<BKind::DenseNT, Epi::Store>(p, a.n, stream);
  }
  {  // h = silu(gate)·up, gu saved
    GemmParams p = gemm_params(a.offsets, a.tile_offsets, a.E);
    p.ncols = I;
    p.a1 = xp;
    p.k1 = H;
    p.w = view_of(a.w_gu);
    p.a2 = saved.z_gu;
    p.k2 = rg;
    p.d2 = a.lora_gu.b;
    p.d2_stride = 2 * I * rg;
    p.out = saved.h;
    p.aux = saved.gu;
    launch_gemm<BKind::Nf4NT, Epi::SwiGLU>(p, a.n, stream);
  }
  if (rd > 0) {
    GemmParams p = gemm_params(a.offsets, a.tile_offsets, a.E);
    p.ncols = rd;
    p.a1 = saved.h;
    p.k1 = I;
    p.d1 = a.lora_down.a;
    p.d1_stride = static_cast<int64_t>(rd) * I;
    p.alpha1 = a.lora_down.scale;
    p.out = saved.z_down;
    launch_gemm<BKind::DenseNT, Epi::Store>(p, a.n, stream);
  }
  GemmParams p = gemm_params(a.offsets, a.tile_offsets, a.E);
  p.ncols = H;
  p.a1 = saved.h;
  p.k1 = I;
  p.w = view_of(a.w_down);
  p.a2 = saved.z_down;
  p.k2 = rd;
  p.d2 = a.lora_down.b;
  p.d2_stride = H * rd;
  p.out = yp;
  launch_gemm<BKind::Nf4NT, Epi::Store>(p, a.n, stream);
}

}  // namespace graft::cuda::moe
