// nf4_gemm.cuh — the tensor-core GEMM engine shared by nf4_matmul.cu (forward) and
// nf4_matmul_bwd_dx.cu (input gradient). Included by exactly those two files; each instantiates
// its own mode.
//
//   out[M, nout] (=) act[M, red] · Wop (+ bias) (+ s · (act · Ldown) · Lup)
//     Fwd:   act = X [T, K],  red = K, nout = N, Wop[k][n] = W[n][k],   Ldown = Aᵀ, Lup = Bᵀ
//     BwdDx: act = dY [T, N], red = N, nout = K, Wop[n][k] = W[n][k],   Ldown = B,  Lup = A
//   shrink_out[M, r] (=) act · Ldown (fp32, unscaled), written by the blocks of output-tile column 0.
//
// Tiles: BM = 128 rows × BN = 128 output columns per block, BK = 64 along the reduction (exactly one
// NF4 block per weight row in the forward), 256 threads = 8 warps as 2 (M) × 4 (N), warp tile
// 64 × 32 = 4 × 4 mma.sync m16n8k16 (bf16 in, fp32 accumulate).
// Per k-tile: cp.async (16-byte, zero-fill at the edges) brings the activation tile, the raw packed
// NF4 bytes (4 KB) and the LoRA-down tile into a 2-stage ring; the absmax bytes of the next tile are
// loaded into registers one tile ahead. After the wait each thread dequantizes its own 16 packed
// bytes (32 codes) into the bf16 weight tile in shared memory (row-major [out col][red], transposed
// while writing in BwdDx), then the warps run ldmatrix + mma. The LoRA shrink act·Ldown uses the same
// A fragments (already in registers) against the LoRA-down tile: fused, no second pass over act.
// Epilogue: s·shrink is rounded to bf16 into shared memory, the LoRA-up tile is loaded, and the expand
// is r/16 more mma k-steps into the same accumulators; then + bias, bf16, guarded bf16x2 stores.
// The bf16 weight never exists in global memory.
#pragma once

#include "nf4_common.cuh"
#include "launch.cuh"

namespace graft::cuda::nf4k {

enum class Mode { Fwd, BwdDx };

constexpr int BM = 128, BN = 128, BK = 64, kThreads = 256, kMaxR = 64;
constexpr int LDS = BK + 8;        // padded row (elements): 144 bytes, conflict-free ldmatrix
constexpr int LDR = kMaxR + 8;     // epilogue LoRA tiles
constexpr int kXsBytes = BM * LDS * 2;
constexpr int kWpBytes = kThreads * 16;  // one 16-byte packed chunk per thread
constexpr int kLsBytes = kMaxR * LDS * 2;
constexpr int kStageBytes = kXsBytes + kWpBytes + kLsBytes;
constexpr int kWbfBytes = BN * LDS * 2;
constexpr int kSmemBytes = 2 * kStageBytes + kWbfBytes + (16 + 256) * 4;
static_assert(BM * LDR * 2 + BN * LDR * 2 <= 2 * kStageBytes, "epilogue tiles must fit in the stage ring");
static_assert(kStageBytes % 16 == 0 && kXsBytes % 16 == 0 && kWpBytes % 16 == 0, "16-byte aligned regions");

struct GemmParams {
  const __nv_bfloat16* act = nullptr;  // [M, red]
  int64_t m = 0, red = 0, nout = 0;
  Nf4Weight w;
  const __nv_bfloat16* lora_down = nullptr;  // Fwd: A [r, K]; BwdDx: B [N, r]
  const __nv_bfloat16* lora_up = nullptr;    // Fwd: B [N, r]; BwdDx: A [r, K]
  int r = 0, rp = 0;                         // rank, rank rounded up to 16
  float scale = 0.0f;
  float* shrink_out = nullptr;               // [M, r] or null
  const __nv_bfloat16* bias = nullptr;       // [nout] or null
  __nv_bfloat16* out = nullptr;              // [M, nout]
  bool act_vec = false;                      // act rows 16-byte aligned: cp.async path
};

__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

template <Mode kMode, bool kLora>
__global__ void __launch_bounds__(kThreads) nf4_gemm_kernel(const GemmParams p) {
  GRAFT_EXTERN_SHARED(unsigned char, smem, 16);
  __nv_bfloat16* const wbf = reinterpret_cast<__nv_bfloat16*>(smem + 2 * kStageBytes);
  float* const code = reinterpret_cast<float*>(smem + 2 * kStageBytes + kWbfBytes);
  float* const dmap = code + 16;
  auto xs = [&](int s) { return reinterpret_cast<__nv_bfloat16*>(smem + s * kStageBytes); };
  auto wp = [&](int s) { return smem + s * kStageBytes + kXsBytes; };
  auto ls = [&](int s) { return reinterpret_cast<__nv_bfloat16*>(smem + s * kStageBytes + kXsBytes + kWpBytes); };

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp >> 2, wn = warp & 3;
  const int g = lane >> 2, t4 = lane & 3;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * BM;
  const int64_t o0 = static_cast<int64_t>(blockIdx.x) * BN;
  const Nf4Weight& w = p.w;
  const int64_t K = w.k, N = w.n;

  if (tid < 16) code[tid] = kNf4Code[tid];
  if (w.double_quant) dmap[tid] = w.dmap[tid];  // kThreads == 256
  // (made visible by the first __syncthreads of the main loop, before any dequantization)

  const int64_t KT = (p.red + BK - 1) / BK;
  float acc[4][4][4];
  float sacc[4][2][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[i][j][c] = 0.0f;
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
#pragma unroll
      for (int c = 0; c < 4; ++c) sacc[i][j][c] = 0.0f;

  ScaleRaw sc_next, sc_cur;

  auto load_stage = [&](int64_t kt, int s) {
    const int64_t r0 = kt * BK;
    // activation tile [BM][BK]: 1024 chunks of 8 bf16, 4 per thread
    __nv_bfloat16* X = xs(s);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int c = tid + i * kThreads, row = c >> 3, col = (c & 7) * 8;
      const int64_t gm = m0 + row, gk = r0 + col;
      __nv_bfloat16* dst = X + row * LDS + col;
      if (p.act_vec) {  // red % 8 == 0: a chunk is entirely inside or outside
        const bool ok = gm < p.m && gk < p.red;
        cp_async16(dst, ok ? p.act + gm * p.red + gk : p.act, ok ? 16 : 0);
      } else {          // red even: 4-byte pairs, synchronous
        uint32_t v[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const bool ok = gm < p.m && gk + 2 * j < p.red;
          v[j] = ok ? *reinterpret_cast<const uint32_t*>(p.act + gm * p.red + gk + 2 * j) : 0u;
        }
        *reinterpret_cast<uint4*>(dst) = make_uint4(v[0], v[1], v[2], v[3]);
      }
    }
    // packed weight: one 16-byte chunk (32 codes of one weight row, inside one 64-block) per thread
    int64_t wrow, wcol;
    if constexpr (kMode == Mode::Fwd) {
      wrow = o0 + (tid >> 1);             // output column n
      wcol = r0 + (tid & 1) * 32;         // k (< K: K % 64 == 0)
    } else {
      wrow = r0 + (tid >> 2);             // reduction index n
      wcol = o0 + (tid & 3) * 32;         // output column k
    }
    const bool wok = wrow < N && wcol < K;
    const int64_t e = wrow * K + wcol;    // flattened element index, multiple of 32
    cp_async16(wp(s) + tid * 16, wok ? w.packed + e / 2 : w.packed, wok ? 16 : 0);
    sc_next = wok ? load_scale_raw(w, e / 64) : ScaleRaw{};
    // LoRA-down tile L[j][red] for j < rp
    if constexpr (kLora) {
      __nv_bfloat16* L = ls(s);
      if constexpr (kMode == Mode::Fwd) {  // L[j][kk] = A[j][r0 + kk]
        for (int c = tid; c < p.rp * 8; c += kThreads) {
          const int j = c >> 3, col = (c & 7) * 8;
          const bool ok = j < p.r;
          cp_async16(L + j * LDS + col, ok ? p.lora_down + j * K + r0 + col : p.lora_down, ok ? 16 : 0);
        }
      } else {  // L[j][nn] = B[r0 + nn][j]
        for (int c = tid; c < p.rp * BK; c += kThreads) {
          const int j = c / BK, nn = c % BK;
          const int64_t n = r0 + nn;
          L[j * LDS + nn] = (j < p.r && n < N) ? p.lora_down[n * p.r + j] : __float2bfloat16_rn(0.0f);
        }
      }
    }
  };

  load_stage(0, 0);
  cp_async_commit();
  sc_cur = sc_next;

  for (int64_t kt = 0; kt < KT; ++kt) {
    const int s = static_cast<int>(kt & 1);
    if (kt + 1 < KT) load_stage(kt + 1, s ^ 1);
    cp_async_commit();
    cp_async_wait<1>();  // everything but the group just committed has landed: stage s is ready
    __syncthreads();

    {  // dequantize this thread's own chunk into the bf16 weight tile
      const uint4 pk = *reinterpret_cast<const uint4*>(wp(s) + tid * 16);
      uint32_t o[16];
      dequant16(pk, finish_scale(w, sc_cur, dmap), code, o);
      if constexpr (kMode == Mode::Fwd) {
        uint4* dst = reinterpret_cast<uint4*>(wbf + (tid >> 1) * LDS + (tid & 1) * 32);
#pragma unroll
        for (int i = 0; i < 4; ++i) dst[i] = make_uint4(o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]);
      } else {  // transpose: wbf[out col k][reduction n]
        const int nl = tid >> 2, kl = (tid & 3) * 32;
        uint16_t* dst = reinterpret_cast<uint16_t*>(wbf);
#pragma unroll
        for (int i = 0; i < 16; ++i) {
          dst[(kl + 2 * i) * LDS + nl] = static_cast<uint16_t>(o[i] & 0xffffu);
          dst[(kl + 2 * i + 1) * LDS + nl] = static_cast<uint16_t>(o[i] >> 16);
        }
      }
    }
    __syncthreads();

    const __nv_bfloat16* X = xs(s);
    const __nv_bfloat16* L = ls(s);
#pragma unroll
    for (int ks = 0; ks < BK / 16; ++ks) {
      uint32_t a[4][4];
#pragma unroll
      for (int mi = 0; mi < 4; ++mi)
        ldmatrix_x4(a[mi], X + (wm * 64 + mi * 16 + (lane & 15)) * LDS + ks * 16 + (lane >> 4) * 8);
      uint32_t b[4][2];
#pragma unroll
      for (int nj = 0; nj < 2; ++nj) {
        uint32_t t[4];
        ldmatrix_x4(t, wbf + (wn * 32 + nj * 16 + (lane & 7) + ((lane >> 4) << 3)) * LDS + ks * 16 +
                           ((lane >> 3) & 1) * 8);
        b[2 * nj][0] = t[0];
        b[2 * nj][1] = t[1];
        b[2 * nj + 1][0] = t[2];
        b[2 * nj + 1][1] = t[3];
      }
#pragma unroll
      for (int mi = 0; mi < 4; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) mma_bf16_16816(acc[mi][ni], a[mi], b[ni][0], b[ni][1]);
      if constexpr (kLora) {
        if (wn * 16 < p.rp) {  // warp wn owns LoRA columns [wn*16, wn*16 + 16)
          uint32_t t[4];
          ldmatrix_x4(t, L + (wn * 16 + (lane & 7) + ((lane >> 4) << 3)) * LDS + ks * 16 + ((lane >> 3) & 1) * 8);
#pragma unroll
          for (int mi = 0; mi < 4; ++mi) {
            mma_bf16_16816(sacc[mi][0], a[mi], t[0], t[1]);
            mma_bf16_16816(sacc[mi][1], a[mi], t[2], t[3]);
          }
        }
      }
    }
    __syncthreads();  // stage s and wbf are rewritten next iteration
    sc_cur = sc_next;
  }
  cp_async_wait<0>();

  if constexpr (kLora) {
    __nv_bfloat16* S = reinterpret_cast<__nv_bfloat16*>(smem);               // [BM][LDR]: bf16(s · shrink)
    __nv_bfloat16* U = reinterpret_cast<__nv_bfloat16*>(smem + BM * LDR * 2);  // [BN][LDR]: up tile
    if (wn * 16 < p.rp) {
#pragma unroll
      for (int mi = 0; mi < 4; ++mi)
#pragma unroll
        for (int jj = 0; jj < 2; ++jj) {
          const int row = wm * 64 + mi * 16 + g, col = wn * 16 + jj * 8 + 2 * t4;
          const float* c = sacc[mi][jj];
          *reinterpret_cast<uint32_t*>(S + row * LDR + col) = pack_bf16x2(p.scale * c[0], p.scale * c[1]);
          *reinterpret_cast<uint32_t*>(S + (row + 8) * LDR + col) = pack_bf16x2(p.scale * c[2], p.scale * c[3]);
          if (p.shrink_out != nullptr && blockIdx.x == 0) {
            const int64_t gm = m0 + row;
            if (gm < p.m) {
              if (col < p.r) p.shrink_out[gm * p.r + col] = c[0];
              if (col + 1 < p.r) p.shrink_out[gm * p.r + col + 1] = c[1];
            }
            if (gm + 8 < p.m) {
              if (col < p.r) p.shrink_out[(gm + 8) * p.r + col] = c[2];
              if (col + 1 < p.r) p.shrink_out[(gm + 8) * p.r + col + 1] = c[3];
            }
          }
        }
    }
    for (int c = tid; c < BN * p.rp; c += kThreads) {
      const int o = c / p.rp, j = c % p.rp;
      const int64_t go = o0 + o;
      __nv_bfloat16 v = __float2bfloat16_rn(0.0f);
      if (j < p.r && go < p.nout) {
        if constexpr (kMode == Mode::Fwd) v = p.lora_up[go * p.r + j];  // B [N, r]
        else v = p.lora_up[static_cast<int64_t>(j) * K + go];          // A [r, K]
      }
      U[o * LDR + j] = v;
    }
    __syncthreads();
    for (int ks = 0; ks < p.rp / 16; ++ks) {
      uint32_t a[4][4];
#pragma unroll
      for (int mi = 0; mi < 4; ++mi)
        ldmatrix_x4(a[mi], S + (wm * 64 + mi * 16 + (lane & 15)) * LDR + ks * 16 + (lane >> 4) * 8);
#pragma unroll
      for (int nj = 0; nj < 2; ++nj) {
        uint32_t t[4];
        ldmatrix_x4(t, U + (wn * 32 + nj * 16 + (lane & 7) + ((lane >> 4) << 3)) * LDR + ks * 16 +
                           ((lane >> 3) & 1) * 8);
#pragma unroll
        for (int mi = 0; mi < 4; ++mi) {
          mma_bf16_16816(acc[mi][2 * nj], a[mi], t[0], t[1]);
          mma_bf16_16816(acc[mi][2 * nj + 1], a[mi], t[2], t[3]);
        }
      }
    }
  }

  // store: c0,c1 -> (row g, cols 2t4, 2t4+1), c2,c3 -> row g + 8
#pragma unroll
  for (int ni = 0; ni < 4; ++ni) {
    const int64_t col = o0 + wn * 32 + ni * 8 + 2 * t4;
    if (col >= p.nout) continue;  // nout even, col even: col + 1 < nout too
    float b0 = 0.0f, b1 = 0.0f;
    if (p.bias != nullptr) {
      b0 = __bfloat162float(p.bias[col]);
      b1 = __bfloat162float(p.bias[col + 1]);
    }
#pragma unroll
    for (int mi = 0; mi < 4; ++mi) {
      const int64_t row = m0 + wm * 64 + mi * 16 + g;
      const float* c = acc[mi][ni];
      if (row < p.m) *reinterpret_cast<uint32_t*>(p.out + row * p.nout + col) = pack_bf16x2(c[0] + b0, c[1] + b1);
      if (row + 8 < p.m)
        *reinterpret_cast<uint32_t*>(p.out + (row + 8) * p.nout + col) = pack_bf16x2(c[2] + b0, c[3] + b1);
    }
  }
}

// Host side: grid, opt-in shared memory, launch. No host synchronisation.
template <Mode kMode, bool kLora>
void launch_nf4_gemm(const GemmParams& p, cudaStream_t stream) {
  const DeviceInfo& dev = current_device_info();
  GRAFT_CHECK(static_cast<size_t>(kSmemBytes) <= dev.smem_per_block_optin,
              "nf4 GEMM needs {} bytes of shared memory per block, device {} allows {}", kSmemBytes, dev.name,
              dev.smem_per_block_optin);
  const int64_t gx = (p.nout + BN - 1) / BN, gy = (p.m + BM - 1) / BM;
  GRAFT_CHECK(gy <= 65535, "nf4 GEMM: {} rows exceed the grid limit ({} row tiles of {})", p.m, gy, BM);
  GRAFT_CHECK(gx <= 0x7fffffff, "nf4 GEMM: {} output columns exceed the grid limit", p.nout);
  auto kernel = nf4_gemm_kernel<kMode, kLora>;
  GRAFT_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes));
  GRAFT_LAUNCH(dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy)), kThreads, kSmemBytes, stream, kernel)(p);
  GRAFT_CUDA_CHECK_LAUNCH();
}

}  // namespace graft::cuda::nf4k
