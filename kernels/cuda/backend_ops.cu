// backend_ops.cu — the small device ops the CudaBackend composes (graft/cuda/backend_ops.hpp).
// Contract: every output element is computed by exactly one thread in fp32 and rounded once to its
// output dtype (bf16 round-to-nearest-even); dot products (LoRA shrink/expand) run in index order,
// so results are bit-identical from run to run. Inputs are validated on the host (null pointers,
// negative sizes) with graft::Error naming the argument. Any size >= 0; size 0 launches nothing.
// Launch: grid-stride loops of 256 threads, grid sized from the device's SM count (traink::grid_for).
// Oracles: the CPU backend (kernels/cpu/cpu_backend.cpp) through tests/kernels/cuda_backend.
#include "graft/backend/dropout_hash.hpp"
#include "graft/cuda/backend_ops.hpp"
#include "graft/cuda/check.hpp"
#include "launch.cuh"
#include "train_common.cuh"

namespace graft::cuda {
namespace {

using traink::kThreads;
using bf16 = __nv_bfloat16;

__device__ __forceinline__ int64_t gtid() { return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; }
__device__ __forceinline__ int64_t gstride() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

__global__ void __launch_bounds__(kThreads) embedding_kernel(const bf16* __restrict__ table, const int32_t* __restrict__ ids,
                                                             int64_t T, int64_t H, bf16* __restrict__ out) {
  for (int64_t i = gtid(); i < T * H; i += gstride()) {
    const int64_t t = i / H, h = i - t * H;
    out[i] = table[static_cast<int64_t>(ids[t]) * H + h];
  }
}
__global__ void __launch_bounds__(kThreads) f32_to_bf16_kernel(const float* __restrict__ x, int64_t n, bf16* __restrict__ o) {
  for (int64_t i = gtid(); i < n; i += gstride()) o[i] = __float2bfloat16(x[i]);
}
__global__ void __launch_bounds__(kThreads) bf16_to_f32_kernel(const bf16* __restrict__ x, int64_t n, float* __restrict__ o) {
  for (int64_t i = gtid(); i < n; i += gstride()) o[i] = __bfloat162float(x[i]);
}
__global__ void __launch_bounds__(kThreads) add_acc_kernel(const bf16* __restrict__ x, int64_t n, bf16* __restrict__ y) {
  for (int64_t i = gtid(); i < n; i += gstride()) y[i] = __float2bfloat16(__bfloat162float(y[i]) + __bfloat162float(x[i]));
}
__global__ void __launch_bounds__(kThreads) scale_rows_kernel(bf16* __restrict__ y, int64_t rows, int64_t cols,
                                                              const float* __restrict__ s, float scalar) {
  for (int64_t i = gtid(); i < rows * cols; i += gstride()) {
    const float c = s ? s[i / cols] : scalar;
    y[i] = __float2bfloat16(__bfloat162float(y[i]) * c);
  }
}
__global__ void __launch_bounds__(kThreads) add_bias_kernel(bf16* __restrict__ y, const bf16* __restrict__ b, int64_t T,
                                                            int64_t N) {
  for (int64_t i = gtid(); i < T * N; i += gstride())
    y[i] = __float2bfloat16(__bfloat162float(y[i]) + __bfloat162float(b[i % N]));
}
__global__ void __launch_bounds__(kThreads) copy_cols_kernel(CopyColsDesc d) {
  for (int64_t i = gtid(); i < d.rows * d.width; i += gstride()) {
    const int64_t r = i / d.width, c = i - r * d.width;
    d.out[r * d.out_ld + d.out_col0 + c] = d.src[(r / d.src_row_div) * d.src_ld + d.src_col0 + c];
  }
}
__global__ void __launch_bounds__(kThreads) gather_rows_kernel(const bf16* __restrict__ x, int64_t H,
                                                               const int32_t* __restrict__ rows,
                                                               const float* __restrict__ s, int64_t n, bf16* __restrict__ o) {
  for (int64_t i = gtid(); i < n * H; i += gstride()) {
    const int64_t r = i / H, h = i - r * H;
    const bf16 v = x[static_cast<int64_t>(rows[r]) * H + h];
    o[i] = s ? __float2bfloat16(__bfloat162float(v) * s[r]) : v;
  }
}
__global__ void __launch_bounds__(kThreads) scatter_rows_kernel(const bf16* __restrict__ y, int64_t H,
                                                                const int32_t* __restrict__ rows, int64_t n,
                                                                bf16* __restrict__ o) {
  for (int64_t i = gtid(); i < n * H; i += gstride()) {
    const int64_t r = i / H, h = i - r * H;
    o[static_cast<int64_t>(rows[r]) * H + h] = y[i];
  }
}
__global__ void __launch_bounds__(kThreads) moe_combine_kernel(const bf16* __restrict__ res, const float* __restrict__ w,
                                                               int64_t T, int64_t k, int64_t H, bf16* __restrict__ o) {
  for (int64_t i = gtid(); i < T * H; i += gstride()) {
    const int64_t t = i / H, h = i - t * H;
    float acc = 0.0f;
    for (int64_t j = 0; j < k; ++j) acc += (w ? w[t * k + j] : 1.0f) * __bfloat162float(res[(t * k + j) * H + h]);
    o[i] = __float2bfloat16(acc);
  }
}
__global__ void __launch_bounds__(kThreads) lora_shrink_kernel(const bf16* __restrict__ x, int64_t K,
                                                               const int32_t* __restrict__ rows, int64_t n,
                                                               const float* __restrict__ a, int r, float* __restrict__ xa) {
  for (int64_t i = gtid(); i < n * r; i += gstride()) {
    const int64_t row = i / r, j = i - row * r;
    const bf16* xr = x + (rows ? static_cast<int64_t>(rows[row]) : row) * K;
    const float* ar = a + j * K;
    float acc = 0.0f;
    for (int64_t c = 0; c < K; ++c) acc += __bfloat162float(xr[c]) * ar[c];
    xa[i] = acc;
  }
}
__global__ void __launch_bounds__(kThreads) lora_expand_kernel(const float* __restrict__ xa, const int32_t* __restrict__ rows,
                                                               int64_t n, const float* __restrict__ b, int64_t N, int r,
                                                               float scale, bf16* __restrict__ y) {
  for (int64_t i = gtid(); i < n * N; i += gstride()) {
    const int64_t row = i / N, o = i - row * N;
    const float* xr = xa + row * r;
    const float* br = b + o * r;
    float acc = 0.0f;
    for (int j = 0; j < r; ++j) acc += xr[j] * br[j];
    bf16& dst = y[(rows ? static_cast<int64_t>(rows[row]) : row) * N + o];
    dst = __float2bfloat16(__bfloat162float(dst) + scale * acc);
  }
}
__global__ void __launch_bounds__(kThreads) mul_mask_kernel(const bf16* __restrict__ x, const float* __restrict__ m, int64_t n,
                                                            float* __restrict__ o) {
  for (int64_t i = gtid(); i < n; i += gstride()) o[i] = __bfloat162float(x[i]) * (m ? m[i] : 1.0f);
}
__global__ void __launch_bounds__(kThreads) add_masked_kernel(const float* __restrict__ e, const float* __restrict__ m,
                                                              int64_t n, bf16* __restrict__ dx) {
  for (int64_t i = gtid(); i < n; i += gstride())
    dx[i] = __float2bfloat16(__bfloat162float(dx[i]) + e[i] * (m ? m[i] : 1.0f));
}

__global__ void __launch_bounds__(kThreads) fill_kernel(bf16* __restrict__ y, int64_t n, float v) {
  for (int64_t i = gtid(); i < n; i += gstride()) y[i] = __float2bfloat16(v);
}
__global__ void __launch_bounds__(kThreads) mul_kernel(const bf16* x, const float* __restrict__ m, int64_t n, bf16* y) {
  for (int64_t i = gtid(); i < n; i += gstride()) y[i] = __float2bfloat16(__bfloat162float(x[i]) * m[i]);
}
__global__ void __launch_bounds__(kThreads) sigmoid_kernel(const bf16* x, int64_t n, bf16* y) {
  for (int64_t i = gtid(); i < n; i += gstride()) y[i] = __float2bfloat16(1.0f / (1.0f + expf(-__bfloat162float(x[i]))));
}
__global__ void __launch_bounds__(kThreads) sigmoid_bwd_kernel(const bf16* __restrict__ y, const bf16* __restrict__ dy,
                                                               int64_t n, bf16* __restrict__ dx) {
  for (int64_t i = gtid(); i < n; i += gstride()) {
    const float s = __bfloat162float(y[i]);
    dx[i] = __float2bfloat16(__bfloat162float(dy[i]) * s * (1.0f - s));
  }
}
__global__ void __launch_bounds__(kThreads) dropout_kernel(uint64_t key, const int32_t* __restrict__ rows, int64_t n,
                                                           int64_t cols, double p, float keep, float* __restrict__ m) {
  for (int64_t i = gtid(); i < n * cols; i += gstride()) {
    const int64_t r = i / cols, c = i - r * cols;
    const uint64_t row = static_cast<uint64_t>(rows ? rows[r] : r);
    m[i] = dropout_keep(key, row, static_cast<uint64_t>(c), p) ? keep : 0.0f;
  }
}
__global__ void __launch_bounds__(kThreads) scatter_csr_kernel(const bf16* __restrict__ x, int64_t H,
                                                               const int32_t* __restrict__ dst, const int32_t* __restrict__ ptr,
                                                               const int32_t* __restrict__ src, int64_t G,
                                                               const float* __restrict__ scale, bf16* __restrict__ out) {
  for (int64_t i = gtid(); i < G * H; i += gstride()) {
    const int64_t g = i / H, h = i - g * H;
    bf16& o = out[static_cast<int64_t>(dst[g]) * H + h];
    float acc = __bfloat162float(o);
    for (int32_t j = ptr[g]; j < ptr[g + 1]; ++j) {
      const int64_t s = src[j];
      acc += __bfloat162float(x[s * H + h]) * (scale ? scale[s] : 1.0f);
    }
    o = __float2bfloat16(acc);
  }
}
__global__ void __launch_bounds__(kThreads) rows_dot_kernel(const bf16* __restrict__ x, const int32_t* __restrict__ rows,
                                                            const bf16* __restrict__ y, int64_t n, int64_t H,
                                                            float* __restrict__ out) {
  for (int64_t i = gtid(); i < n; i += gstride()) {
    const bf16* xr = x + static_cast<int64_t>(rows ? rows[i] : i) * H;
    const bf16* yr = y + i * H;
    float acc = 0.0f;
    for (int64_t h = 0; h < H; ++h) acc += __bfloat162float(xr[h]) * __bfloat162float(yr[h]);
    out[i] = acc;
  }
}

__global__ void __launch_bounds__(kThreads) fill_f32_kernel(float* __restrict__ y, int64_t n, float v) {
  for (int64_t i = gtid(); i < n; i += gstride()) y[i] = v;
}
__global__ void __launch_bounds__(kThreads) gather_rows_f32_kernel(const float* __restrict__ x, int64_t H,
                                                                   const int32_t* __restrict__ rows,
                                                                   const float* __restrict__ s, int64_t n,
                                                                   float* __restrict__ o) {
  for (int64_t i = gtid(); i < n * H; i += gstride()) {
    const int64_t r = i / H, h = i - r * H;
    const float v = x[static_cast<int64_t>(rows[r]) * H + h];
    o[i] = s ? v * s[r] : v;
  }
}
__global__ void __launch_bounds__(kThreads) scatter_csr_f32_kernel(const float* __restrict__ x, int64_t H,
                                                                   const int32_t* __restrict__ dst,
                                                                   const int32_t* __restrict__ ptr,
                                                                   const int32_t* __restrict__ src, int64_t G,
                                                                   const float* __restrict__ scale, float* __restrict__ out) {
  for (int64_t i = gtid(); i < G * H; i += gstride()) {
    const int64_t g = i / H, h = i - g * H;
    float& o = out[static_cast<int64_t>(dst[g]) * H + h];
    float acc = o;
    for (int32_t j = ptr[g]; j < ptr[g + 1]; ++j) {
      const int64_t s2 = src[j];
      acc += (scale ? scale[s2] : 1.0f) * x[s2 * H + h];  // the CPU's s[i] * src[h] order
    }
    o = acc;
  }
}

unsigned blocks_for(int64_t n) { return traink::grid_for((n + kThreads - 1) / kThreads); }

// Validates sizes and pointers on the host; returns false when there is nothing to do.
bool work(const char* who, int64_t n, std::initializer_list<const void*> ptrs) {
  GRAFT_CHECK(n >= 0, "{}: size {} must be >= 0", who, n);
  if (n == 0) return false;
  for (const void* p : ptrs) GRAFT_CHECK(p != nullptr, "{}: a required device pointer is null (size {})", who, n);
  return true;
}

}  // namespace

void embedding_fwd(const bf16* table, const int32_t* ids, int64_t T, int64_t H, bf16* out, cudaStream_t stream) {
  GRAFT_CHECK(H >= 1, "embedding_fwd: H = {} must be >= 1", H);
  if (!work("embedding_fwd", T * H, {table, ids, out})) return;
  GRAFT_LAUNCH(blocks_for(T * H), kThreads, 0, stream, embedding_kernel)(table, ids, T, H, out);
  GRAFT_CUDA_CHECK_LAUNCH();
}
void cast_f32_to_bf16(const float* x, int64_t n, bf16* out, cudaStream_t stream) {
  if (!work("cast_f32_to_bf16", n, {x, out})) return;
  GRAFT_LAUNCH(blocks_for(n), kThreads, 0, stream, f32_to_bf16_kernel)(x, n, out);
  GRAFT_CUDA_CHECK_LAUNCH();
}
void cast_bf16_to_f32(const bf16* x, int64_t n, float* out, cudaStream_t stream) {
  if (!work("cast_bf16_to_f32", n, {x, out})) return;
  GRAFT_LAUNCH(blocks_for(n), kThreads, 0, stream, bf16_to_f32_kernel)(x, n, out);
  GRAFT_CUDA_CHECK_LAUNCH();
}
void add_acc(const bf16* x, int64_t n, bf16* y, cudaStream_t stream) {
  if (!work("add_acc", n, {x, y})) return;
  GRAFT_LAUNCH(blocks_for(n), kThreads, 0, stream, add_acc_kernel)(x, n, y);
  GRAFT_CUDA_CHECK_LAUNCH();
}
void scale_rows(bf16* y, int64_t rows, int64_t cols, const float* row_scale, float scalar, cudaStream_t stream) {
  GRAFT_CHECK(rows >= 0 && cols >= 0, "scale_rows: [{}, {}] must be non-negative", rows, cols);
  if (!work("scale_rows", rows * cols, {y})) return;
  GRAFT_LAUNCH(blocks_for(rows * cols), kThreads, 0, stream, scale_rows_kernel)(y, rows, cols, row_scale, scalar);
  GRAFT_CUDA_CHECK_LAUNCH();
}
void add_bias_rows(bf16* y, const bf16* bias, int64_t T, int64_t N, cudaStream_t stream) {
  GRAFT_CHECK(T >= 0 && N >= 1, "add_bias_rows: [{}, {}] needs T >= 0, N >= 1", T, N);
  if (!work("add_bias_rows", T * N, {y, bias})) return;
  GRAFT_LAUNCH(blocks_for(T * N), kThreads, 0, stream, add_bias_kernel)(y, bias, T, N);
  GRAFT_CUDA_CHECK_LAUNCH();
}
void copy_cols(const CopyColsDesc& d, cudaStream_t stream) {
  GRAFT_CHECK(d.rows >= 0 && d.width >= 0 && d.src_row_div >= 1 && d.src_col0 >= 0 && d.out_col0 >= 0 &&
                  d.src_ld >= d.src_col0 + d.width && d.out_ld >= d.out_col0 + d.width,
              "copy_cols: rows {}, width {}, src_ld {}, src_col0 {}, src_row_div {}, out_ld {}, out_col0 {}: the "
              "copied columns must lie inside both rows", d.rows, d.width, d.src_ld, d.src_col0, d.src_row_div,
              d.out_ld, d.out_col0);
  if (!work("copy_cols", d.rows * d.width, {d.src, d.out})) return;
  GRAFT_LAUNCH(blocks_for(d.rows * d.width), kThreads, 0, stream, copy_cols_kernel)(d);
  GRAFT_CUDA_CHECK_LAUNCH();
}
void gather_rows(const bf16* x, int64_t H, const int32_t* rows, const float* row_scale, int64_t n, bf16* out,
                 cudaStream_t stream) {
  if (!work("gather_rows", n * H, {x, rows, out})) return;
  GRAFT_LAUNCH(blocks_for(n * H), kThreads, 0, stream, gather_rows_kernel)(x, H, rows, row_scale, n, out);
  GRAFT_CUDA_CHECK_LAUNCH();
}
void scatter_rows(const bf16* y, int64_t H, const int32_t* rows, int64_t n, bf16* out, cudaStream_t stream) {
  if (!work("scatter_rows", n * H, {y, rows, out})) return;
  GRAFT_LAUNCH(blocks_for(n * H), kThreads, 0, stream, scatter_rows_kernel)(y, H, rows, n, out);
  GRAFT_CUDA_CHECK_LAUNCH();
}
void moe_combine(const bf16* res, const float* weights, int64_t T, int64_t k, int64_t H, bf16* out, cudaStream_t stream) {
  GRAFT_CHECK(k >= 1, "moe_combine: top_k = {} must be >= 1", k);
  if (!work("moe_combine", T * H, {res, out})) return;
  GRAFT_LAUNCH(blocks_for(T * H), kThreads, 0, stream, moe_combine_kernel)(res, weights, T, k, H, out);
  GRAFT_CUDA_CHECK_LAUNCH();
}
void lora_rows_shrink(const bf16* x, int64_t K, const int32_t* rows, int64_t n, const float* a, int r, float* xa,
                      cudaStream_t stream) {
  GRAFT_CHECK(r >= 1 && K >= 1, "lora_rows_shrink: rank {} and K {} must be >= 1", r, K);
  if (!work("lora_rows_shrink", n * r, {x, a, xa})) return;
  GRAFT_LAUNCH(blocks_for(n * r), kThreads, 0, stream, lora_shrink_kernel)(x, K, rows, n, a, r, xa);
  GRAFT_CUDA_CHECK_LAUNCH();
}
void lora_rows_expand(const float* xa, const int32_t* rows, int64_t n, const float* b, int64_t N, int r, float scale,
                      bf16* y, cudaStream_t stream) {
  GRAFT_CHECK(r >= 1 && N >= 1, "lora_rows_expand: rank {} and N {} must be >= 1", r, N);
  if (!work("lora_rows_expand", n * N, {xa, b, y})) return;
  GRAFT_LAUNCH(blocks_for(n * N), kThreads, 0, stream, lora_expand_kernel)(xa, rows, n, b, N, r, scale, y);
  GRAFT_CUDA_CHECK_LAUNCH();
}
void mul_mask_to_f32(const bf16* x, const float* mask, int64_t n, float* out, cudaStream_t stream) {
  if (!work("mul_mask_to_f32", n, {x, out})) return;
  GRAFT_LAUNCH(blocks_for(n), kThreads, 0, stream, mul_mask_kernel)(x, mask, n, out);
  GRAFT_CUDA_CHECK_LAUNCH();
}
void add_masked_acc(const float* extra, const float* mask, int64_t n, bf16* dx, cudaStream_t stream) {
  if (!work("add_masked_acc", n, {extra, dx})) return;
  GRAFT_LAUNCH(blocks_for(n), kThreads, 0, stream, add_masked_kernel)(extra, mask, n, dx);
  GRAFT_CUDA_CHECK_LAUNCH();
}

void fill_bf16(bf16* y, int64_t n, float v, cudaStream_t stream) {
  if (!work("fill_bf16", n, {y})) return;
  GRAFT_LAUNCH(blocks_for(n), kThreads, 0, stream, fill_kernel)(y, n, v);
  GRAFT_CUDA_CHECK_LAUNCH();
}
void mul_f32_mask(const bf16* x, const float* m, int64_t n, bf16* y, cudaStream_t stream) {
  if (!work("mul_f32_mask", n, {x, m, y})) return;
  GRAFT_LAUNCH(blocks_for(n), kThreads, 0, stream, mul_kernel)(x, m, n, y);
  GRAFT_CUDA_CHECK_LAUNCH();
}
void sigmoid_fwd(const bf16* x, int64_t n, bf16* y, cudaStream_t stream) {
  if (!work("sigmoid_fwd", n, {x, y})) return;
  GRAFT_LAUNCH(blocks_for(n), kThreads, 0, stream, sigmoid_kernel)(x, n, y);
  GRAFT_CUDA_CHECK_LAUNCH();
}
void sigmoid_bwd(const bf16* y, const bf16* dy, int64_t n, bf16* dx, cudaStream_t stream) {
  if (!work("sigmoid_bwd", n, {y, dy, dx})) return;
  GRAFT_LAUNCH(blocks_for(n), kThreads, 0, stream, sigmoid_bwd_kernel)(y, dy, n, dx);
  GRAFT_CUDA_CHECK_LAUNCH();
}
void dropout_mask_f32(uint64_t key, const int32_t* rows, int64_t n, int64_t cols, double p, float* m, cudaStream_t stream) {
  GRAFT_CHECK(p >= 0.0 && p < 1.0, "dropout_mask_f32: p = {} must be in [0, 1)", p);
  if (!work("dropout_mask_f32", n * cols, {m})) return;
  const float keep = 1.0f / (1.0f - static_cast<float>(p));  // dropout_scales<float>'s S(1) / (S(1) - S(p))
  GRAFT_LAUNCH(blocks_for(n * cols), kThreads, 0, stream, dropout_kernel)(key, rows, n, cols, p, keep, m);
  GRAFT_CUDA_CHECK_LAUNCH();
}
void scatter_add_csr(const bf16* x, int64_t H, const int32_t* dst, const int32_t* ptr, const int32_t* src, int64_t G,
                     const float* scale, bf16* out, cudaStream_t stream) {
  if (!work("scatter_add_csr", G * H, {x, dst, ptr, src, out})) return;
  GRAFT_LAUNCH(blocks_for(G * H), kThreads, 0, stream, scatter_csr_kernel)(x, H, dst, ptr, src, G, scale, out);
  GRAFT_CUDA_CHECK_LAUNCH();
}
void rows_dot(const bf16* x, const int32_t* rows, const bf16* y, int64_t n, int64_t H, float* out, cudaStream_t stream) {
  if (!work("rows_dot", n, {x, y, out})) return;
  GRAFT_LAUNCH(blocks_for(n), kThreads, 0, stream, rows_dot_kernel)(x, rows, y, n, H, out);
  GRAFT_CUDA_CHECK_LAUNCH();
}

void fill_f32(float* y, int64_t n, float v, cudaStream_t stream) {
  if (!work("fill_f32", n, {y})) return;
  GRAFT_LAUNCH(blocks_for(n), kThreads, 0, stream, fill_f32_kernel)(y, n, v);
  GRAFT_CUDA_CHECK_LAUNCH();
}
void gather_rows_f32(const float* x, int64_t H, const int32_t* rows, const float* row_scale, int64_t n, float* out,
                     cudaStream_t stream) {
  if (!work("gather_rows_f32", n * H, {x, rows, out})) return;
  GRAFT_LAUNCH(blocks_for(n * H), kThreads, 0, stream, gather_rows_f32_kernel)(x, H, rows, row_scale, n, out);
  GRAFT_CUDA_CHECK_LAUNCH();
}
void scatter_add_csr_f32(const float* x, int64_t H, const int32_t* dst, const int32_t* ptr, const int32_t* src,
                         int64_t G, const float* scale, float* out, cudaStream_t stream) {
  if (!work("scatter_add_csr_f32", G * H, {x, dst, ptr, src, out})) return;
  GRAFT_LAUNCH(blocks_for(G * H), kThreads, 0, stream, scatter_csr_f32_kernel)(x, H, dst, ptr, src, G, scale, out);
  GRAFT_CUDA_CHECK_LAUNCH();
}

}  // namespace graft::cuda
