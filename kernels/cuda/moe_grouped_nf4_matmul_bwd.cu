// moe_grouped_nf4_matmul_bwd: backward of the grouped NF4 expert GEMMs and of the expert MLP.
//
// Contract (device pointers, row-major, contiguous, 16-byte aligned; shapes as in the forward):
//   grouped_nf4_matmul_bwd:  dy [n, N] bf16 ->
//     dz [n, r] bf16 (=) = s·dy·B_e                       (scratch, LoRA only)
//     dx [n, K] bf16 (=) = dy·W_e + dz·A_e                 (NF4 W read transposed, dequantized per tile)
//     dA [E, r, K] f32 (=) = dz_eᵀ·x_e,  dB [E, N, r] f32 (=) = dy_eᵀ·z_e   (z = s·x·Aᵀ saved by the forward)
//   expert_mlp_bwd:  dyp [n, H] ->
//     dgu [n, 2I] bf16 (=) = SwiGLU'(dyp·W_down + dz_down·A_down; gu)   (SwiGLU backward fused in the epilogue)
//     dxp [n, H] bf16 (=) = dgu·W_gu + dz_gu·A_gu
//     da_gu, db_gu, da_down, db_down f32 (=); experts without rows get exact zeros.
// fp32 accumulation everywhere; LoRA gradients are deterministic (no atomics: one block per
// (expert, 64x64 output tile) loops over the expert's rows). Limits as in the forward.
// Not tensor-core: the LoRA weight gradients (SIMT fp32, ~2·n·r·(H + 2I + I + H) FLOP per layer).
#include "moe_gemm.cuh"
#include "launch.cuh"

namespace graft::cuda::moe {
using namespace detail;
namespace {

constexpr int GT = 64, GK = 32;  // LoRA-grad output tile and row chunk

// out[e][a][b] (=) Σ_{p in expert e} L[p][a]·R[p][b].  L [n, P], R [n, Q] bf16 -> out [E, P, Q] f32
__global__ void __launch_bounds__(256) lora_grad_kernel(const bf16_t* __restrict__ L, int64_t P,
                                                        const bf16_t* __restrict__ R, int64_t Q,
                                                        const int32_t* __restrict__ offsets, float* __restrict__ out) {
  __shared__ float Ls[GK][GT], Rs[GK][GT];
  const int e = blockIdx.z;
  const int64_t a0 = static_cast<int64_t>(blockIdx.y) * GT, b0 = static_cast<int64_t>(blockIdx.x) * GT;
  const int64_t p0 = offsets[e], p1 = offsets[e + 1];
  const int tid = threadIdx.x, ta = tid >> 4, tb = tid & 15;  // outputs (ta + 16i, tb + 16j)
  float acc[4][4] = {};
  for (int64_t base = p0; base < p1; base += GK) {
#pragma unroll
    for (int i = 0; i < GK * GT / 256; ++i) {
      const int idx = tid + 256 * i, rr = idx / GT, cc = idx % GT;
      const int64_t row = base + rr;
      const bool rv = row < p1;
      Ls[rr][cc] = (rv && a0 + cc < P) ? bf2f(L[row * P + a0 + cc]) : 0.f;
      Rs[rr][cc] = (rv && b0 + cc < Q) ? bf2f(R[row * Q + b0 + cc]) : 0.f;
    }
    __syncthreads();
#pragma unroll 8
    for (int kk = 0; kk < GK; ++kk) {
      float la[4], rb[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        la[i] = Ls[kk][ta + 16 * i];
        rb[i] = Rs[kk][tb + 16 * i];
      }
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += la[i] * rb[j];
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t a = a0 + ta + 16 * i, b = b0 + tb + 16 * j;
      if (a < P && b < Q) out[(static_cast<int64_t>(e) * P + a) * Q + b] = acc[i][j];
    }
}

void lora_grad(const bf16_t* L, int64_t P, const bf16_t* R, int64_t Q, const int32_t* offsets, int E, float* out,
               cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((Q + GT - 1) / GT), static_cast<unsigned>((P + GT - 1) / GT),
                  static_cast<unsigned>(E));
  GRAFT_CHECK(grid.y <= 65535, "moe LoRA gradient: {} rows of output is too many", P);
  GRAFT_LAUNCH(grid, 256, 0, stream, lora_grad_kernel)(L, P, R, Q, offsets, out);
  GRAFT_CUDA_CHECK_LAUNCH();
}

// dz = s·dy·B_e  (B_e [N, r]: TN over the reduction N)
void launch_dz(const int32_t* off, const int32_t* toff, int E, int64_t n, const bf16_t* dy, int64_t N,
               const ExpertLoraDev& l, bf16_t* dz, cudaStream_t stream) {
  GemmParams p = gemm_params(off, toff, E);
  p.ncols = l.rank;
  p.a1 = dy;
  p.k1 = N;
  p.d1 = l.b;
  p.d1_stride = N * l.rank;
  p.alpha1 = l.scale;
  p.out = dz;
  launch_gemm<BKind::DenseTN, Epi::Store>(p, n, stream);
}

}  // namespace

void grouped_nf4_matmul_bwd(const GroupedMatmulBwdArgs& b, cudaStream_t stream) {
  const GroupedMatmulArgs& a = b.fwd;
  check_rows(a.n, a.E, a.offsets, a.tile_offsets);
  const int64_t N = a.w.rows, K = a.w.cols;
  check_nf4(a.w, N, K, "W");
  check_lora(a.lora, "W");
  const int r = a.lora.rank;
  GRAFT_CHECK(N % 8 == 0, "grouped_nf4_matmul_bwd: N = {} must be a multiple of 8", N);
  GRAFT_CHECK(b.dy != nullptr && b.dx != nullptr, "grouped_nf4_matmul_bwd: dy / dx are null");
  GRAFT_CHECK(r == 0 || (b.dz != nullptr && a.z != nullptr && a.x != nullptr),
              "grouped_nf4_matmul_bwd: LoRA needs x, the saved z and the dz scratch");
  // n == 0: the GEMM launches are skipped and dA / dB are written as zeros.
  if (r > 0) launch_dz(a.offsets, a.tile_offsets, a.E, a.n, b.dy, N, a.lora, b.dz, stream);
  GemmParams p = gemm_params(a.offsets, a.tile_offsets, a.E);
  p.ncols = K;
  p.a1 = b.dy;
  p.k1 = N;
  p.w = view_of(a.w);
  p.a2 = b.dz;
  p.k2 = r;
  p.d2 = a.lora.a;
  p.d2_stride = static_cast<int64_t>(r) * K;
  p.out = b.dx;
  launch_gemm<BKind::Nf4TN, Epi::Store>(p, a.n, stream);
  if (r > 0 && b.da) lora_grad(b.dz, r, a.x, K, a.offsets, a.E, b.da, stream);
  if (r > 0 && b.db) lora_grad(b.dy, N, a.z, r, a.offsets, a.E, b.db, stream);
}

void expert_mlp_bwd(const ExpertMlpArgs& a, const bf16_t* xp, const ExpertMlpSaved& saved, const bf16_t* dyp,
                    const ExpertMlpBwdScratch& scratch, const ExpertMlpGrads& grads, bf16_t* dxp, cudaStream_t stream) {
  check_rows(a.n, a.E, a.offsets, a.tile_offsets);
  const int64_t H = a.H, I = a.I;
  GRAFT_CHECK(H % 16 == 0 && I % 16 == 0, "expert_mlp_bwd: H = {} and I = {} must be multiples of 16", H, I);
  check_nf4(a.w_gu, 2 * I, H, "gate_up");
  check_nf4(a.w_down, H, I, "down");
  check_lora(a.lora_gu, "gate_up");
  check_lora(a.lora_down, "down");
  const int rg = a.lora_gu.rank, rd = a.lora_down.rank;
  GRAFT_CHECK(xp && dyp && dxp && saved.gu && saved.h && scratch.dgu,
              "expert_mlp_bwd: xp, dyp, dxp, saved.gu, saved.h and scratch.dgu are required");
  GRAFT_CHECK((rg == 0 || (saved.z_gu && scratch.dz)) && (rd == 0 || (saved.z_down && scratch.dz)),
              "expert_mlp_bwd: LoRA needs the saved z and scratch.dz [n, max rank]");
  // n == 0: the GEMM launches are skipped and the LoRA gradients are written as zeros.
  // down: dz_down = s·dyp·B_down; dgu = SwiGLU'(dyp·W_down + dz_down·A_down)
  if (rd > 0) launch_dz(a.offsets, a.tile_offsets, a.E, a.n, dyp, H, a.lora_down, scratch.dz, stream);
  {
    GemmParams p = gemm_params(a.offsets, a.tile_offsets, a.E);
    p.ncols = I;
    p.a1 = dyp;
    p.k1 = H;
    p.w = view_of(a.w_down);
    p.a2 = scratch.dz;
    p.k2 = rd;
    p.d2 = a.lora_down.a;
    p.d2_stride = static_cast<int64_t>(rd) * I;
    p.out = scratch.dgu;
    p.aux = saved.gu;
    launch_gemm<BKind::Nf4TN, Epi::SwiGLUBwd>(p, a.n, stream);
  }
  if (rd > 0 && grads.da_down) lora_grad(scratch.dz, rd, saved.h, I, a.offsets, a.E, grads.da_down, stream);
  if (rd > 0 && grads.db_down) lora_grad(dyp, H, saved.z_down, rd, a.offsets, a.E, grads.db_down, stream);
  // gate_up (scratch.dz is reused: the down gradients above are enqueued first on the same stream)
  if (rg > 0) launch_dz(a.offsets, a.tile_offsets, a.E, a.n, scratch.dgu, 2 * I, a.lora_gu, scratch.dz, stream);
  GemmParams p = gemm_params(a.offsets, a.tile_offsets, a.E);
  p.ncols = H;
  p.a1 = scratch.dgu;
  p.k1 = 2 * I;
  p.w = view_of(a.w_gu);
  p.a2 = scratch.dz;
  p.k2 = rg;
  p.d2 = a.lora_gu.a;
  p.d2_stride = static_cast<int64_t>(rg) * H;
  p.out = dxp;
  launch_gemm<BKind::Nf4TN, Epi::Store>(p, a.n, stream);
  if (rg > 0 && grads.da_gu) lora_grad(scratch.dz, rg, xp, H, a.offsets, a.E, grads.da_gu, stream);
  if (rg > 0 && grads.db_gu) lora_grad(scratch.dgu, 2 * I, saved.z_gu, rg, a.offsets, a.E, grads.db_gu, stream);
}

}  // namespace graft::cuda::moe
