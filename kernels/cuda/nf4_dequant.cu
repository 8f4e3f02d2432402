// nf4_dequant.cu — NF4 (+ double quant) -> bf16, the "dequantize, then cuBLAS" baseline.
// Contract: out[e] (=) bf16_rn(code[nibble(e)] · absmax[e / blocksize]) for e in [0, n·k), nibble(e)
//   = high nibble of packed[e/2] for even e, low nibble for odd e. Bit-exact with bitsandbytes'
//   dequantize_4bit(..., quant_type="nf4") to bf16 and with nf4::dequantize rounded to bf16.
//   Layout: packed u8 [ceil(n·k/2)], out bf16 [n·k], out 16-byte aligned. Any n·k; blocksize % 32 == 0.
//   One thread per 32 elements (one 16-byte load, four 16-byte stores); the tail chunk goes scalar.
#include "graft/cuda/check.hpp"
#include "graft/cuda/nf4_matmul.hpp"
#include "nf4_common.cuh"
#include "launch.cuh"

namespace graft::cuda {
namespace {

__global__ void nf4_dequant_kernel(Nf4Weight w, __nv_bfloat16* __restrict__ out, int64_t numel) {
  __shared__ float code[16];
  __shared__ float dmap[256];
  for (int i = threadIdx.x; i < 16; i += blockDim.x) code[i] = nf4k::kNf4Code[i];
  if (w.double_quant)
    for (int i = threadIdx.x; i < 256; i += blockDim.x) dmap[i] = w.dmap[i];
  __syncthreads();
  const int64_t chunk = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t e0 = chunk * 32;
  if (e0 >= numel) return;
  if (e0 + 32 <= numel) {
    // 32 elements all in one absmax block (blocksize is a multiple of 32 and e0 % 32 == 0).
    const float scale = nf4k::finish_scale(w, nf4k::load_scale_raw(w, e0 / w.blocksize), dmap);
    const uint4 p = __ldg(reinterpret_cast<const uint4*>(w.packed) + chunk);
    uint32_t o[16];
    nf4k::dequant16(p, scale, code, o);
    uint4* dst = reinterpret_cast<uint4*>(out + e0);
#pragma unroll
    for (int i = 0; i < 4; ++i) dst[i] = make_uint4(o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]);
  } else {
    for (int64_t e = e0; e < numel; ++e) {
      const float scale = nf4k::finish_scale(w, nf4k::load_scale_raw(w, e / w.blocksize), dmap);
      const uint32_t byte = w.packed[e / 2];
      const uint32_t nib = (e & 1) ? (byte & 0xfu) : (byte >> 4);
      out[e] = __float2bfloat16_rn(__fmul_rn(code[nib], scale));
    }
  }
}

}  // namespace

void nf4_dequant_bf16(const Nf4Weight& w, __nv_bfloat16* out, cudaStream_t stream) {
  w.validate("nf4_dequant_bf16");
  GRAFT_CHECK(out != nullptr, "nf4_dequant_bf16: out is null");
  GRAFT_CHECK(reinterpret_cast<uintptr_t>(out) % 16 == 0, "nf4_dequant_bf16: out must be 16-byte aligned");
  const int64_t numel = w.n * w.k;
  const int64_t chunks = (numel + 31) / 32;
  constexpr int kThreads = 256;
  const int64_t blocks = (chunks + kThreads - 1) / kThreads;
  GRAFT_CHECK(blocks < (int64_t{1} << 31), "nf4_dequant_bf16: {} elements is too many for one launch", numel);
  GRAFT_LAUNCH(static_cast<unsigned>(blocks), kThreads, 0, stream, nf4_dequant_kernel)(w, out, numel);
  GRAFT_CUDA_CHECK_LAUNCH();
}

}  // namespace graft::cuda
