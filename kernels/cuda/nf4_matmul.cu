// nf4_matmul.cu — forward of a QLoRA linear layer with the NF4 dequantization fused into the GEMM.
// Contract:
//   Y[T, N] (=) X[T, K] · dequant(W[N, K])ᵀ (+ bias[N]) (+ s · (X·Aᵀ)·Bᵀ),  xa_out[T, r] (=) X·Aᵀ (fp32).
//   X, Y, A, B, bias: bf16 row-major contiguous; W: bitsandbytes NF4 (blocksize 64, fp32 absmax or
//   double-quantized, decoded on device); fp32 accumulation; the LoRA shrink is rounded to bf16
//   (after scaling by s) before the expand, like PEFT's bf16 lora_B(lora_A(x)).
//   Alignment: X, A 16-byte aligned; Y, B, bias 4-byte aligned; xa_out 4-byte aligned.
//   Limits: K % 64 == 0, N even, r <= 64, T < 65535·128. T <= 16 runs the decode kernel
//   (nf4_matmul_decode.cu) unless desc.path == Nf4Path::Gemm.
//   Tensor-core path: mma.sync m16n8k16 (sm_80 and sm_90a); no wgmma path yet.
#include "graft/cuda/check.hpp"
#include "graft/cuda/nf4_matmul.hpp"
#include "nf4_gemm.cuh"

namespace graft::cuda {

void Nf4MatmulDesc::validate() const {
  const char* who = "nf4_matmul";
  w.validate(who);
  GRAFT_CHECK(w.blocksize == 64, "{}: NF4 blocksize must be 64 (the K tile is one block), got {}", who, w.blocksize);
  GRAFT_CHECK(w.k % 64 == 0, "{}: K % 64 == 0 required, K = {}", who, w.k);
  GRAFT_CHECK(w.n % 2 == 0, "{}: N must be even (bf16x2 stores), N = {}", who, w.n);
  GRAFT_CHECK(t >= 0, "{}: T = {} must be >= 0", who, t);
  GRAFT_CHECK(t == 0 || (x != nullptr && y != nullptr), "{}: x and y must be non-null", who);
  GRAFT_CHECK(reinterpret_cast<uintptr_t>(x) % 16 == 0, "{}: x must be 16-byte aligned", who);
  GRAFT_CHECK(reinterpret_cast<uintptr_t>(y) % 4 == 0, "{}: y must be 4-byte aligned", who);
  GRAFT_CHECK(reinterpret_cast<uintptr_t>(bias) % 4 == 0, "{}: bias must be 4-byte aligned", who);
  GRAFT_CHECK(r >= 0 && r <= nf4k::kMaxR, "{}: LoRA rank r = {} must be in [0, {}]", who, r, nf4k::kMaxR);
  if (r > 0) {
    GRAFT_CHECK(lora_a != nullptr && lora_b != nullptr, "{}: r = {} needs lora_a and lora_b", who, r);
    GRAFT_CHECK(xa_out != nullptr, "{}: r = {} needs xa_out [T, r] fp32", who, r);
    GRAFT_CHECK(reinterpret_cast<uintptr_t>(lora_a) % 16 == 0, "{}: lora_a must be 16-byte aligned", who);
  }
  GRAFT_CHECK(path != Nf4Path::Decode || t <= nf4k::kDecodeMaxT, "{}: the decode path takes T <= {}, T = {}", who,
              nf4k::kDecodeMaxT, t);
}

void nf4_matmul(const Nf4MatmulDesc& d, cudaStream_t stream) {
  d.validate();
  if (d.t == 0) return;
  const bool decode = d.path == Nf4Path::Decode || (d.path == Nf4Path::Auto && d.t <= nf4k::kDecodeMaxT);
  if (decode) {
    nf4k::launch_nf4_decode(d, stream);
    return;
  }
  nf4k::GemmParams p;
  p.act = d.x;
  p.m = d.t;
  p.red = d.w.k;
  p.nout = d.w.n;
  p.w = d.w;
  p.lora_down = d.lora_a;
  p.lora_up = d.lora_b;
  p.r = d.r;
  p.rp = (d.r + 15) / 16 * 16;
  p.scale = d.scale;
  p.shrink_out = d.xa_out;
  p.bias = d.bias;
  p.out = d.y;
  p.act_vec = true;  // K % 64 == 0 and x 16-byte aligned
  if (d.r > 0) nf4k::launch_nf4_gemm<nf4k::Mode::Fwd, true>(p, stream);
  else nf4k::launch_nf4_gemm<nf4k::Mode::Fwd, false>(p, stream);
}

}  // namespace graft::cuda
