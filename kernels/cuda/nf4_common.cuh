// nf4_common.cuh — device helpers shared by the NF4 kernels: the NF4 code table, per-block absmax
// decoding (plain fp32 or double-quantized), and thin wrappers over cp.async / ldmatrix /
// mma.sync m16n8k16 bf16 (sm_80+; also the path used on sm_90a). Under GRAFT_SIMT (the CPU build,
// kernels/cuda/simt) each wrapper calls the harness's emulation instead of its PTX.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cp_async.cuh"
#include "graft/cuda/nf4_matmul.hpp"

namespace graft::cuda::nf4k {

// bitsandbytes NF4 code (same values as nf4::code()).
static __constant__ float kNf4Code[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};

// Per-block absmax in two steps, so the global loads can be issued one k-tile ahead and the
// dependent dynamic-map lookup done only when the value is consumed.
struct ScaleRaw {
  float f = 0.0f;     // fp32 absmax, or nested absmax when double-quantized
  uint32_t q = 0;     // u8 code when double-quantized
  bool valid = false; // false: the block lies outside the weight (scale 0)
};
__device__ __forceinline__ ScaleRaw load_scale_raw(const Nf4Weight& w, int64_t block) {
  ScaleRaw s;
  s.valid = true;
  if (w.double_quant) {
    s.q = __ldg(w.absmax_q + block);
    s.f = __ldg(w.nested_absmax + block / w.nested_blocksize);
  } else {
    s.f = __ldg(w.absmax + block);
  }
  return s;
}
// dmap: the dynamic map (shared or global). Explicit rounding intrinsics keep nvcc from fusing the
// multiply-add into an FMA: the result is bit-identical to nf4::block_absmax on the CPU.
__device__ __forceinline__ float finish_scale(const Nf4Weight& w, ScaleRaw s, const float* dmap) {
  if (!s.valid) return 0.0f;
  if (!w.double_quant) return s.f;
  return __fadd_rn(__fmul_rn(dmap[s.q], s.f), w.nested_offset);
}

// One 32-bit word of packed codes (bytes b0..b3 = elements 0..7, high nibble first) -> 8 bf16
// values as 4 bf16x2 words (o[i] holds elements 2i (low half) and 2i+1 (high half)).
__device__ __forceinline__ void dequant_word(uint32_t word, float scale, const float* code, uint32_t (&o)[4]) {
#pragma unroll
  for (int b = 0; b < 4; ++b) {
    const uint32_t byte = (word >> (8 * b)) & 0xffu;  // little-endian: byte b of the word
    const __nv_bfloat162 v = __floats2bfloat162_rn(__fmul_rn(code[byte >> 4], scale), __fmul_rn(code[byte & 0xfu], scale));
    o[b] = *reinterpret_cast<const uint32_t*>(&v);
  }
}
// 16 packed bytes (32 elements) -> 16 bf16x2 words.
__device__ __forceinline__ void dequant16(uint4 p, float scale, const float* code, uint32_t (&o)[16]) {
  const uint32_t words[4] = {p.x, p.y, p.z, p.w};
#pragma unroll
  for (int w = 0; w < 4; ++w) {
    uint32_t t[4];
    dequant_word(words[w], scale, code, t);
#pragma unroll
    for (int i = 0; i < 4; ++i) o[w * 4 + i] = t[i];
  }
}

// ---------------------------------------------------------------- PTX wrappers
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
// 16-byte async copy; src_bytes == 0 zero-fills the destination (src is not read). cp_async.cuh.
using ptx::cp_async16;
using ptx::cp_async_commit;
using ptx::cp_async_wait;
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem) {
#ifdef GRAFT_SIMT
  ::graft::simt::ldmatrix_x4(r, smem);
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(smem)));
#endif
}
// D (fp32 16x8) += A (bf16 16x16, row) · B (bf16 16x8, col)
__device__ __forceinline__ void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#ifdef GRAFT_SIMT
  ::graft::simt::mma_m16n8k16_bf16(d, a, b0, b1);
#else
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

}  // namespace graft::cuda::nf4k

#include <map>
#include <mutex>

#include "graft/cuda/check.hpp"
#include "graft/cuda/device_info.hpp"

namespace graft::cuda::nf4k {
// device_info() of the current device, read once per device (launchers must not pay a
// cudaGetDeviceProperties per call). std::map keeps references stable.
inline const DeviceInfo& current_device_info() {
  static std::mutex mu;
  static std::map<int, DeviceInfo> infos;
  int dev = 0;
  GRAFT_CUDA_CHECK(cudaGetDevice(&dev));
  std::lock_guard<std::mutex> lock(mu);
  auto it = infos.find(dev);
  if (it == infos.end()) it = infos.emplace(dev, device_info(dev)).first;
  return it->second;
}
}  // namespace graft::cuda::nf4k

namespace graft::cuda::nf4k {
// Decode-shaped forward (nf4_matmul_decode.cu); nf4_matmul() dispatches to it. d is validated.
void launch_nf4_decode(const Nf4MatmulDesc& d, cudaStream_t stream);
constexpr int64_t kDecodeMaxT = 16;
}  // namespace graft::cuda::nf4k
