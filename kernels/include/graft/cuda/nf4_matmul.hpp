// CUDA NF4 dequant-matmul (QLoRA base layer) with fused LoRA: forward, decode-shaped forward,
// backward-dX, LoRA weight gradients, and the plain NF4 -> bf16 dequant kernel (baseline).
//
// Conventions (every entry point):
//   * all matrices are row-major and contiguous; device pointers; bf16 = __nv_bfloat16;
//   * W is the frozen base weight [N, K] in the bitsandbytes NF4 layout (see graft/quant/nf4.hpp):
//     packed codes high nibble first, blocksize 64 along the flattened row-major weight, absmax
//     either fp32 or double-quantized (u8 codes into the signed dynamic map + fp32 nested absmax per
//     256 blocks + fp32 offset). The double-quantized absmax is decoded ON DEVICE inside the GEMM
//     (absmax = dmap[q] * nested[b/256] + offset, fp32, no FMA contraction: bit-exact with
//     nf4::block_absmax), so the device copy keeps bitsandbytes' 4.127 bits/parameter;
//   * LoRA: A [r, K], B [N, r] bf16 (PEFT lora_A.weight / lora_B.weight), scale s = alpha / r;
//   * launches are asynchronous on the given stream; nothing inside a launch synchronises the host
//     or allocates memory. Descriptors are validated on the host (validate() throws graft::Error
//     naming the violated condition).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "graft/quant/nf4.hpp"

namespace graft::cuda {

// Non-owning device view of one NF4 weight [n, k].
struct Nf4Weight {
  const uint8_t* packed = nullptr;        // [n*k/2] (allocation padded to a multiple of 16 bytes)
  const float* absmax = nullptr;          // [n*k/blocksize] fp32, when !double_quant
  const uint8_t* absmax_q = nullptr;      // [n*k/blocksize] u8 codes, when double_quant
  const float* nested_absmax = nullptr;   // [ceil(blocks/nested_blocksize)], when double_quant
  const float* dmap = nullptr;            // [256] signed dynamic map on the device, when double_quant
  float nested_offset = 0.0f;
  int64_t n = 0, k = 0;
  int blocksize = 64;
  int nested_blocksize = 256;
  bool double_quant = false;

  int64_t num_blocks() const { return (n * k + blocksize - 1) / blocksize; }
  void validate(const char* who) const;  // non-null pointers for the chosen representation, shape
};

// Owning device copy of an nf4::QuantizedWeight (cudaMalloc + synchronous cudaMemcpy at upload).
class Nf4WeightBuffer {
 public:
  Nf4WeightBuffer() = default;
  explicit Nf4WeightBuffer(const nf4::QuantizedWeight& q);  // q must be 2-d [n, k]
  ~Nf4WeightBuffer();
  Nf4WeightBuffer(Nf4WeightBuffer&& o) noexcept;
  Nf4WeightBuffer& operator=(Nf4WeightBuffer&& o) noexcept;
  Nf4WeightBuffer(const Nf4WeightBuffer&) = delete;
  Nf4WeightBuffer& operator=(const Nf4WeightBuffer&) = delete;

  const Nf4Weight& view() const { return view_; }
  size_t device_bytes() const { return bytes_; }

 private:
  void release() noexcept;
  Nf4Weight view_{};
  void* packed_ = nullptr;
  void* absmax_ = nullptr;   // fp32 absmax or u8 codes
  void* nested_ = nullptr;
  size_t bytes_ = 0;
};

// The signed 8-bit dynamic map (256 fp32) on the current device; allocated once per device.
const float* nf4_dynamic_map_device();

// Which kernel a forward uses. Auto: decode kernel for T <= 16, tensor-core GEMM otherwise.
enum class Nf4Path { Auto, Gemm, Decode };

// ---------------------------------------------------------------- forward
// Y[T, N] (=) X[T, K] · dequant(W)ᵀ (+ bias[N]) (+ s · (X·Aᵀ)·Bᵀ)
// xa_out [T, r] fp32 (=) X·Aᵀ (unscaled) — required when r > 0 (backward's dB needs it; the decode
// path also uses it as its workspace).
// Limits: K % 64 == 0, N even, blocksize 64, r <= 64 (larger ranks are rejected), X/Y/A 16-byte
// aligned, T < 65535*128.
struct Nf4MatmulDesc {
  const __nv_bfloat16* x = nullptr;     // [T, K]
  Nf4Weight w;                          // [N, K]
  const __nv_bfloat16* bias = nullptr;  // [N] or null
  const __nv_bfloat16* lora_a = nullptr;  // [r, K] or null (r == 0)
  const __nv_bfloat16* lora_b = nullptr;  // [N, r] or null
  int r = 0;
  float scale = 0.0f;
  float* xa_out = nullptr;              // [T, r] fp32, required when r > 0
  __nv_bfloat16* y = nullptr;           // [T, N]
  int64_t t = 0;
  Nf4Path path = Nf4Path::Auto;

  void validate() const;
};
void nf4_matmul(const Nf4MatmulDesc& d, cudaStream_t stream);

// ---------------------------------------------------------------- backward (input gradient)
// dX[T, K] (=) dY[T, N] · dequant(W) (+ s · (dY·B)·A)
// dyb_out [T, r] fp32 (=) dY·B (unscaled) — required when r > 0 (dA needs it).
// Limits: K % 64 == 0, N even, blocksize 64, r <= 64; dY rows need only 4-byte alignment (N even).
struct Nf4MatmulBwdDxDesc {
  const __nv_bfloat16* dy = nullptr;    // [T, N]
  Nf4Weight w;                          // [N, K]
  const __nv_bfloat16* lora_a = nullptr;  // [r, K]
  const __nv_bfloat16* lora_b = nullptr;  // [N, r]
  int r = 0;
  float scale = 0.0f;
  float* dyb_out = nullptr;             // [T, r] fp32, required when r > 0
  __nv_bfloat16* dx = nullptr;          // [T, K]
  int64_t t = 0;

  void validate() const;
};
void nf4_matmul_bwd_dx(const Nf4MatmulBwdDxDesc& d, cudaStream_t stream);

// ---------------------------------------------------------------- LoRA weight gradients
// dA[r, K] (= or +=) s · (dY·B)ᵀ · X      from dyb [T, r] fp32 (nf4_matmul_bwd_dx's dyb_out), X bf16
// dB[N, r] (= or +=) s · dYᵀ · (X·Aᵀ)     from dY bf16 [T, N] and xa [T, r] fp32 (nf4_matmul's xa_out)
// fp32 accumulation and fp32 outputs. Split over T with fp32 atomics when T is long (the summation
// order, hence the last bits, may vary from run to run).
struct LoraGradDesc {
  const __nv_bfloat16* x = nullptr;   // [T, K]
  const __nv_bfloat16* dy = nullptr;  // [T, N]
  const float* xa = nullptr;          // [T, r]
  const float* dyb = nullptr;         // [T, r]
  float* da = nullptr;                // [r, K] or null (skip)
  float* db = nullptr;                // [N, r] or null (skip)
  int64_t t = 0, n = 0, k = 0;
  int r = 0;
  float scale = 0.0f;
  bool accumulate = false;            // false: =, true: +=

  void validate() const;
};
void lora_grad(const LoraGradDesc& d, cudaStream_t stream);

// ---------------------------------------------------------------- dequant baseline
// out[n*k] (=) bf16(code[nibble] · absmax[block]) — bit-exact with bitsandbytes' dequantize_4bit
// to bf16. Any blocksize that is a multiple of 32; any numel.
void nf4_dequant_bf16(const Nf4Weight& w, __nv_bfloat16* out, cudaStream_t stream);

}  // namespace graft::cuda
