// nf4_matmul_bwd_dx.cu — input gradient of a QLoRA linear layer, NF4 dequantized inside the GEMM.
// Contract:
//   dX[T, K] (=) dY[T, N] · dequant(W[N, K]) (+ s · (dY·B)·A),  dyb_out[T, r] (=) dY·B (fp32, unscaled).
//   dY, dX, A, B bf16 row-major contiguous; W bitsandbytes NF4 (blocksize 64, fp32 or double-quantized
//   absmax); fp32 accumulation; s·(dY·B) rounded to bf16 before the expand.
//   Same engine as the forward (nf4_gemm.cuh) with the weight tile dequantized transposed: the
//   reduction runs over N in 64-row slabs; each thread dequantizes 32 consecutive k of one row n.
//   Alignment: dY, dX, B 4-byte aligned (dY rows take the cp.async path when N % 8 == 0 and dY is
//   16-byte aligned, else synchronous 4-byte loads); A 4-byte aligned.
//   Limits: K % 64 == 0, N even, r <= 64, T < 65535·128.
#include "graft/cuda/check.hpp"
#include "graft/cuda/nf4_matmul.hpp"
#include "nf4_gemm.cuh"

namespace graft::cuda {

void Nf4MatmulBwdDxDesc::validate() const {
  const char* who = "nf4_matmul_bwd_dx";
  w.validate(who);
  GRAFT_CHECK(w.blocksize == 64, "{}: NF4 blocksize must be 64, got {}", who, w.blocksize);
  GRAFT_CHECK(w.k % 64 == 0, "{}: K % 64 == 0 required, K = {}", who, w.k);
  GRAFT_CHECK(w.n % 2 == 0, "{}: N must be even, N = {}", who, w.n);
  GRAFT_CHECK(t >= 0, "{}: T = {} must be >= 0", who, t);
  GRAFT_CHECK(t == 0 || (dy != nullptr && dx != nullptr), "{}: dy and dx must be non-null", who);
  GRAFT_CHECK(reinterpret_cast<uintptr_t>(dy) % 4 == 0 && reinterpret_cast<uintptr_t>(dx) % 4 == 0,
              "{}: dy and dx must be 4-byte aligned", who);
  GRAFT_CHECK(r >= 0 && r <= nf4k::kMaxR, "{}: LoRA rank r = {} must be in [0, {}]", who, r, nf4k::kMaxR);
  if (r > 0) {
    GRAFT_CHECK(lora_a != nullptr && lora_b != nullptr, "{}: r = {} needs lora_a and lora_b", who, r);
    GRAFT_CHECK(dyb_out != nullptr, "{}: r = {} needs dyb_out [T, r] fp32", who, r);
  }
}

void nf4_matmul_bwd_dx(const Nf4MatmulBwdDxDesc& d, cudaStream_t stream) {
  d.validate();
  if (d.t == 0) return;
  nf4k::GemmParams p;
  p.act = d.dy;
  p.m = d.t;
  p.red = d.w.n;
  p.nout = d.w.k;
  p.w = d.w;
  p.lora_down = d.lora_b;
  p.lora_up = d.lora_a;
  p.r = d.r;
  p.rp = (d.r + 15) / 16 * 16;
  p.scale = d.scale;
  p.shrink_out = d.dyb_out;
  p.out = d.dx;
  p.act_vec = d.w.n % 8 == 0 && reinterpret_cast<uintptr_t>(d.dy) % 16 == 0;
  if (d.r > 0) nf4k::launch_nf4_gemm<nf4k::Mode::BwdDx, true>(p, stream);
  else nf4k::launch_nf4_gemm<nf4k::Mode::BwdDx, false>(p, stream);
}

}  // namespace graft::cuda
