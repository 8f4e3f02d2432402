// The small device ops the CudaBackend composes its Backend ops from (kernels/cuda/backend_ops.cu):
// gathers, casts, residual adds, row scaling, column copies and the row-grouped LoRA of a batch that
// mixes adapters. Conventions (docs/kernels.md): row-major contiguous device pointers, bf16 =
// __nv_bfloat16 activations, fp32 math, `=` outputs unless the name ends in `_acc`, no reductions
// across threads (every output element is written by one thread: deterministic). Any size >= 0.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace graft::cuda {

// out[t, :] = table[ids[t], :].  table bf16 [V, H], ids int32 [T] (host-validated to [0, V)), out bf16 [T, H]
void embedding_fwd(const __nv_bfloat16* table, const int32_t* ids, int64_t T, int64_t H, __nv_bfloat16* out,
                   cudaStream_t stream);
// out = bf16(x) / float(x).  [n]
void cast_f32_to_bf16(const float* x, int64_t n, __nv_bfloat16* out, cudaStream_t stream);
void cast_bf16_to_f32(const __nv_bfloat16* x, int64_t n, float* out, cudaStream_t stream);
// y = bf16(y + x).  x, y bf16 [n]
void add_acc(const __nv_bfloat16* x, int64_t n, __nv_bfloat16* y, cudaStream_t stream);
// y[t, :] = bf16(y[t, :] · s_t) with s_t = row_scale[t] (fp32 [rows]) or `scalar` when row_scale is null.
void scale_rows(__nv_bfloat16* y, int64_t rows, int64_t cols, const float* row_scale, float scalar, cudaStream_t stream);
// y[t, :] = bf16(y[t, :] + bias).  y bf16 [T, N], bias bf16 [N]
void add_bias_rows(__nv_bfloat16* y, const __nv_bfloat16* bias, int64_t T, int64_t N, cudaStream_t stream);
// Column block copy: out[r, out_col0 + c] = src[(r / src_row_div) · src_ld + src_col0 + c] for r < rows,
// c < width. out has row stride out_ld. src_row_div > 1 broadcasts one source row over consecutive rows
// (MLA's k_pe shared by every head).  bf16
struct CopyColsDesc {
  const __nv_bfloat16* src = nullptr;
  int64_t src_ld = 0, src_col0 = 0, src_row_div = 1;
  __nv_bfloat16* out = nullptr;
  int64_t out_ld = 0, out_col0 = 0;
  int64_t rows = 0, width = 0;
};
void copy_cols(const CopyColsDesc& d, cudaStream_t stream);
// Row gather: out[i, :] = bf16(x[rows[i], :] · (row_scale ? row_scale[i] : 1)).  x bf16 [*, H], rows int32 [n],
// row_scale fp32 [n] or null, out bf16 [n, H].
void gather_rows(const __nv_bfloat16* x, int64_t H, const int32_t* rows, const float* row_scale, int64_t n,
                 __nv_bfloat16* out, cudaStream_t stream);
// Row scatter: out[rows[i], :] = y[i, :] (=, each destination row written once).  y bf16 [n, H]
void scatter_rows(const __nv_bfloat16* y, int64_t H, const int32_t* rows, int64_t n, __nv_bfloat16* out,
                  cudaStream_t stream);
// MoE combine: out[t, :] = bf16(Σ_j c_tj · res[t·k + j, :]) in slot order j = 0..k-1, c_tj = weights[t, j]
// or 1 when weights is null.  res bf16 [T·k, H], weights fp32 [T, k], out bf16 [T, H]
void moe_combine(const __nv_bfloat16* res, const float* weights, int64_t T, int64_t k, int64_t H, __nv_bfloat16* out,
                 cudaStream_t stream);
// LoRA rows of one adapter (fp32 factors, bf16 activations):
//   shrink: xa[i, :] = x[rows[i], :] · Aᵀ          x bf16 [*, K], A fp32 [r, K] -> xa fp32 [n, r] (=)
//   expand: y[rows[i], :] = bf16(y[rows[i], :] + scale · xa[i, :] · Bᵀ)   B fp32 [N, r], y bf16 [*, N]
// rows int32 [n] distinct, or null for rows 0..n-1 (the whole batch on one adapter). fp32 dot products in
// index order.
void lora_rows_shrink(const __nv_bfloat16* x, int64_t K, const int32_t* rows, int64_t n, const float* a, int r,
                      float* xa, cudaStream_t stream);
void lora_rows_expand(const float* xa, const int32_t* rows, int64_t n, const float* b, int64_t N, int r, float scale,
                      __nv_bfloat16* y, cudaStream_t stream);
// out = float(x) · mask (fp32).  x bf16 [n], mask fp32 [n] or null (plain cast)
void mul_mask_to_f32(const __nv_bfloat16* x, const float* mask, int64_t n, float* out, cudaStream_t stream);
// dx = bf16(dx + extra · mask).  dx bf16 [n], extra fp32 [n], mask fp32 [n] or null
void add_masked_acc(const float* extra, const float* mask, int64_t n, __nv_bfloat16* dx, cudaStream_t stream);

// ---- the training step's extra ops (Backend "training step" section)
// y[:] = bf16(v).  [n]
void fill_bf16(__nv_bfloat16* y, int64_t n, float v, cudaStream_t stream);
// y = bf16(x · m); m fp32 [n]; y may alias x.
void mul_f32_mask(const __nv_bfloat16* x, const float* m, int64_t n, __nv_bfloat16* y, cudaStream_t stream);
// y = bf16(σ(x)); dx = bf16(dy · y · (1 − y)).  [n]; y may alias x.
void sigmoid_fwd(const __nv_bfloat16* x, int64_t n, __nv_bfloat16* y, cudaStream_t stream);
void sigmoid_bwd(const __nv_bfloat16* y, const __nv_bfloat16* dy, int64_t n, __nv_bfloat16* dx, cudaStream_t stream);
// Dropout scales of graft/backend/dropout_hash.hpp computed on the device (bit-identical to dropout_scales<float>):
// m[i, c] = keep(key, rows ? rows[i] : i, c, p) ? float(1/(1−p)) : 0.   rows int32 [n] or null, m fp32 [n, cols] (=)
void dropout_mask_f32(uint64_t key, const int32_t* rows, int64_t n, int64_t cols, double p, float* m, cudaStream_t stream);
// Deterministic scatter-add over a CSR of sources per destination row (built on the host from the row list):
// out[dst[g], h] = bf16(out[dst[g], h] + Σ_{i in src[ptr[g] .. ptr[g+1])} x[i, h] · (scale ? scale[i] : 1)),
// sources in increasing i.  x bf16 [n, H], dst int32 [G], ptr int32 [G+1], src int32 [ptr[G]], out bf16 [R, H]
void scatter_add_csr(const __nv_bfloat16* x, int64_t H, const int32_t* dst, const int32_t* ptr, const int32_t* src,
                     int64_t G, const float* scale, __nv_bfloat16* out, cudaStream_t stream);
// out[i] = Σ_h x[rows ? rows[i] : i, h] · y[i, h] (fp32, h ascending).  x bf16 [R, H], y bf16 [n, H], out fp32 [n]
void rows_dot(const __nv_bfloat16* x, const int32_t* rows, const __nv_bfloat16* y, int64_t n, int64_t H, float* out,
              cudaStream_t stream);

// fp32 versions of the row ops (router combine weights and their gradients stay fp32 on every backend).
void fill_f32(float* y, int64_t n, float v, cudaStream_t stream);
void gather_rows_f32(const float* x, int64_t H, const int32_t* rows, const float* row_scale, int64_t n, float* out,
                     cudaStream_t stream);
void scatter_add_csr_f32(const float* x, int64_t H, const int32_t* dst, const int32_t* ptr, const int32_t* src,
                         int64_t G, const float* scale, float* out, cudaStream_t stream);

}  // namespace graft::cuda
